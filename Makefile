# The two set-up commands of the README. Each creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

# make demo ARGS="--epochs 1": extra flags for the training command
demo: $(VENV)/.installed
	BIN=$(abspath $(BIN)) bash scripts/demo.sh $(ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

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
