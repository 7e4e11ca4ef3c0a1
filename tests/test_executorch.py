"""The ExecuTorch checks (``executorch_checks.py``) in a pytest process of their own.

ExecuTorch's compiler patches torch's export machinery as it imports (its own pytree nodes and operator
libraries, torchao's quantisation ops) and its runtime starts a native thread pool: a process of their own
keeps both out of the other tests' process, as for OpenVINO (``test_openvino.py``).
"""
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("executorch")
CHECKS = Path(__file__).with_name("executorch_checks.py")


# The checks' own ``slow`` ones run in the ``slow`` run: a marker of this test, passed on to the process.
@pytest.mark.parametrize("markers", ["not slow", pytest.param("slow", marks=pytest.mark.slow)])
def test_executorch_checks_pass_in_a_process_of_their_own(markers):
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", markers,
                           str(CHECKS)], capture_output=True, text=True, cwd=CHECKS.parent.parent, timeout=1800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
