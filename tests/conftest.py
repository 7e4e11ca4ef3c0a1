import contextlib
import functools
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

# The suite's process holds many native thread pools (torch, ONNX Runtime, OpenVINO, the servers') when later
# tests start subprocesses; twice, late in a full run, that process died with SIGSEGV right after a vfork()
# (gdb: "Detaching after vfork", then the main thread crashed). fork+exec instead, as CPython's documented switch
# for vfork trouble allows.
subprocess._USE_VFORK = False
import torch  # noqa: E402 - after the switch above, which must come before anything starts a process

# The export check runners load export_check_fixtures.py as a plugin (pytest_plugins) and import names from it, so
# it is imported before pytest would load it: registered here, its asserts are rewritten as a test's.
pytest.register_assert_rewrite("export_check_fixtures")


# One intra-op thread in this process and in every process the tests start (they inherit OMP_NUM_THREADS). The
# models here are tiny and gain nothing from a second thread, while on two cores that anything else keeps busy,
# two OpenMP threads wait for each other: the tiny 3-epoch run of test_train.py takes 2 s with one thread and
# 20-50 s with two. Runs compared bitwise need the same thread count anyway, in this process or another.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, whatever ran before it."""
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------ the command line
@dataclass
class CliResult:
    """What ``mobilenetv3 ARGV`` did, the same whether it ran in this process or in another."""

    returncode: int
    stdout: str
    stderr: str


# Lines of ours that a command writes to stderr as it works (``mobilenetv3/progress.py``): a slow export's stages
# ("export executorch-int8, 41 s: quantising ..."), a long loop's progress ("eval fashion-mnist val: 12 of 20
# batches, 31 s").
PROGRESS_LINE = re.compile(r"export \S+, \d+ s: .+|.+: \d+ of \d+ \w+, \d+ s")


def not_progress(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not progress lines of ours: what a test of a quiet command checks."""
    return [line for line in stderr.splitlines() if not PROGRESS_LINE.fullmatch(line)]


def cli_command(*argv, nproc: Optional[int] = None, max_restarts: int = 0) -> list[str]:
    """The command line of ``python -m mobilenetv3 ARGV``; with ``nproc``, under torchrun with that many processes
    (restarted ``max_restarts`` times). For the tests that start it with ``subprocess.Popen``, to signal it
    mid-run; the others use run_cli."""
    launcher = [sys.executable]
    if nproc is not None:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        launcher += [f"--max-restarts={max_restarts}"] if max_restarts else []
    return [*launcher, "-m", "mobilenetv3", *map(str, argv)]


def _environment(extra: Optional[dict]) -> dict:
    """This process's environment without MOBILENETV3_DEBUG (it turns error lines into tracebacks), plus
    ``extra``."""
    env = {key: value for key, value in os.environ.items() if key != "MOBILENETV3_DEBUG"}
    env.update(extra or {})
    return env


def run_cli(*argv, process: bool = False, nproc: Optional[int] = None, env: Optional[dict] = None, cwd=None,
            timeout: float = 600) -> CliResult:
    """Run ``mobilenetv3 ARGV`` (arguments may be paths or numbers) and return its exit code and output.

    In this process by default, through ``mobilenetv3.cli.main``: no interpreter start-up, so fast; the
    global torch settings a run changes (deterministic algorithms) are put back afterwards. ``process=True``
    runs a fresh ``python -m mobilenetv3``, and ``nproc=N`` runs it under torchrun with N processes: for what
    needs a real process (worker processes, a fresh interpreter, ranks). ``env`` (extra variables) applies to
    a real process only; ``cwd`` is where the command runs either way.
    """
    if process or nproc is not None:
        done = subprocess.run(cli_command(*argv, nproc=nproc), capture_output=True, text=True, cwd=cwd,
                              env=_environment(env), timeout=timeout)
        return CliResult(done.returncode, done.stdout, done.stderr)
    assert env is None, "env applies to a real process: run_cli(..., process=True, env=...)"
    from mobilenetv3.cli import main

    out, err = io.StringIO(), io.StringIO()
    deterministic = torch.are_deterministic_algorithms_enabled()
    debug = os.environ.pop("MOBILENETV3_DEBUG", None)
    try:
        with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exit_:  # argparse's own exits (--help, usage errors)
                code = exit_.code
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if debug is not None:
            os.environ["MOBILENETV3_DEBUG"] = debug
    return CliResult(code, out.getvalue(), err.getvalue())


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (torchrun's workers: they run in sessions of their own)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


# ------------------------------------------------------------------------- files made by real MindSpore
MINDSPORE_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mindspore"
ON_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
_MISSING = f"MindSpore fixtures not found in {MINDSPORE_FIXTURES}"


def needs_mindspore_fixture(test):
    """Run ``test`` with the MindSpore fixtures of ``../shared``; without them skip it, except under CI, which
    always has ``../shared``: there a missing fixture fails the test instead of hiding it."""
    if (MINDSPORE_FIXTURES / "small_10_calib.ckpt").exists():
        return test
    if not ON_CI:
        return pytest.mark.skip(reason=_MISSING)(test)

    @functools.wraps(test)
    def missing(*args, **kwargs):
        pytest.fail(f"{_MISSING}: CI always has ../shared, so these tests must run there")

    return missing


def mindspore_fixture(name: str) -> Path:
    """The path of one MindSpore fixture, for a test that needs it only for some of its cases: without
    ``../shared`` that case is skipped, or under CI fails, as ``needs_mindspore_fixture`` does."""
    path = MINDSPORE_FIXTURES / name
    if not path.exists():
        if ON_CI:
            pytest.fail(f"{_MISSING}: CI always has ../shared, so these tests must run there")
        pytest.skip(_MISSING)
    return path
