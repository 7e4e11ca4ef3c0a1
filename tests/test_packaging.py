"""A wheel built from the repository works outside the checkout: it ships the presets, and `mobilenetv3 train` runs.

The wheel goes into a new virtual environment in a temporary folder. That venv sees this interpreter's
site-packages (torch and the other dependencies) through one ``.pth`` file, so nothing is downloaded or
installed twice. A folder named in a ``.pth`` file is not a site dir: the ``.pth`` files inside it, among them
the editable install's ``__editable__`` line that puts the checkout's ``src`` on ``sys.path``, are not read.
The tests check that the package imported is the wheel's copy all the same.
"""
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the build reads. It runs on a copy: setuptools builds in the source tree, and a build/ or *.egg-info
# left there by an earlier build goes into the wheel, which would hide a preset missing from the package data.
SOURCES = ("pyproject.toml", "README.md", "src")
PRESETS = sorted(p.stem for p in (REPO / "src" / "mobilenetv3" / "configs").glob("*.yaml"))
PROBE = """
import json, os, sys
import mobilenetv3
from mobilenetv3.config import list_presets, load_config
presets = list_presets()
copies = [p for p in sys.path if os.path.isdir(os.path.join(p or ".", "mobilenetv3"))]
print(json.dumps(dict(file=mobilenetv3.__file__, copies=copies, presets=presets,
                      loaded=[load_config(name).name for name in presets])))
"""


def run(*command, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``command`` in ``cwd`` with no PYTHONPATH or PYTHONHOME, which could put the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """``result``, once its command exited 0; else a failure that shows the command and its output."""
    code = result.returncode
    assert code == 0, f"{' '.join(result.args)}\nexited {code}:\n{result.stdout}{result.stderr}"
    return result


def require_venv() -> None:
    """Skip where this Python cannot make a venv with pip (Debian without python3-venv); on CI, fail instead."""
    missing = [name for name in ("venv", "ensurepip") if find_spec(name) is None]
    if missing:
        reason = f"this Python has no {' or '.join(missing)}, so no fresh venv to install the wheel into"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason)
        pytest.skip(reason)


def copy_sources(to: Path) -> Path:
    """The files a build reads, copied from the checkout without caches or build leftovers."""
    leftovers = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, to / name, ignore=leftovers)
        else:
            to.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, to / name)
    return to


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The repository's wheel, built offline with this interpreter's setuptools (no build isolation)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = copy_sources(tmp / "source")
    check(run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
              "--no-cache-dir", "-w", tmp / "dist", source, cwd=tmp))
    (built,) = (tmp / "dist").glob("mobilenetv3-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory) -> Path:
    """A new venv outside the checkout with the wheel installed; its dependencies are this interpreter's."""
    require_venv()
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    assert not venv.is_relative_to(REPO)
    check(run(sys.executable, "-m", "venv", venv, cwd=venv.parent))
    python = venv / "bin" / "python"
    check(run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir", wheel, cwd=venv.parent))
    purelib = check(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                        cwd=venv.parent)).stdout.strip()
    dependencies = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    Path(purelib, "test-packaging-dependencies.pth").write_text("".join(f"{path}\n" for path in dependencies))
    return venv


@pytest.fixture(scope="module")
def installed(fresh) -> dict:
    """In the fresh venv: the package's file, the sys.path folders holding a copy of it, the presets, their names."""
    result = check(run(fresh / "bin" / "python", "-c", PROBE, cwd=fresh.parent))
    return json.loads(result.stdout)


def test_wheel_ships_the_presets(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "mobilenetv3/configs/fashion-mnist.yaml" in names
    assert [n for n in PRESETS if f"mobilenetv3/configs/{n}.yaml" not in names] == []


def test_fresh_venv_imports_the_wheel_not_the_checkout(fresh, installed):
    assert Path(installed["file"]).is_relative_to(fresh), installed["file"]
    assert [Path(p).is_relative_to(fresh) for p in installed["copies"]] == [True], installed["copies"]  # no src/


def test_every_preset_resolves_in_the_fresh_venv(installed):
    assert "fashion-mnist" in PRESETS  # the repository's own list, which the installed one must equal
    assert installed["presets"] == PRESETS
    assert installed["loaded"] == PRESETS  # load_config names the config after its preset


def test_train_runs_from_the_installed_wheel(fresh, tmp_path):
    result = run(fresh / "bin" / "mobilenetv3", "train", "--config", "fashion-mnist", "--epochs", "1",
                 "--dataset", "synthetic", "--synthetic-samples", "64", "--batch-size", "16", "--workers", "0",
                 "--device", "cpu", "--run-dir", tmp_path / "run", "--no-progress", cwd=tmp_path)
    check(result)
    assert (tmp_path / "run" / "last.pt").is_file()
