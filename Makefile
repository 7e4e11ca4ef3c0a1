# The two set-up commands of the README. Each creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

# make demo ARGS="--epochs 1": extra flags for the training command
demo: $(VENV)/.installed
	BIN=$(abspath $(BIN)) bash scripts/demo.sh $(ARGS)

# The suite in three processes, by test file name. In one process, three full runs of 2026-12-05 out of five died
# with a silent SIGSEGV after about 790 tests (in subprocess tests: test_train's kill tests, the serve benchmark);
# each group passes (925 tests, 7 min 43 s). The native cause is not found yet (README, first section).
TEST_GROUPS := 'tests/test_[a-d]*.py' 'tests/test_[e-q]*.py' 'tests/test_[r-z]*.py'

test: $(VENV)/.installed-dev
	@for group in $(TEST_GROUPS); do echo "pytest $$group"; $(BIN)/python -m pytest -q $$group || exit 1; done

# ruff, configured in pyproject.toml ([tool.ruff]); .ci/run runs it before the tests
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[serve]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
