import subprocess

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
