import functools
import os
import subprocess
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, whatever ran before it."""
    torch.manual_seed(0)


@pytest.fixture
def run_cli(capsys):
    """Run ``mobilenetv3 ARGV`` in this process (no interpreter start-up): exit code, stdout, stderr."""
    from types import SimpleNamespace

    from mobilenetv3.cli import main

    def run(*argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (torchrun's workers: they run in sessions of their own)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


# ------------------------------------------------------------------------- files made by real MindSpore
MINDSPORE_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mindspore"
ON_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")


def needs_mindspore_fixture(test):
    """Run ``test`` with the MindSpore fixtures of ``../shared``; without them skip it, except under CI, which
    always has ``../shared``: there a missing fixture fails the test instead of hiding it."""
    if (MINDSPORE_FIXTURES / "small_10_calib.ckpt").exists():
        return test
    if not ON_CI:
        return pytest.mark.skip(reason=f"MindSpore fixtures not found in {MINDSPORE_FIXTURES}")(test)

    @functools.wraps(test)
    def missing(*args, **kwargs):
        pytest.fail(f"MindSpore fixtures not found in {MINDSPORE_FIXTURES}: CI always has ../shared, so these tests "
                    "must run there")

    return missing
