"""The OpenVINO checks (``openvino_checks.py``) in a pytest process of their own.

Run in the suite's process, after the rest of the suite, NNCF's INT8 quantisation and OpenVINO's runtime left
the process to crash with a segmentation fault in a later test (``test_packaging``), reproducibly, while
either file alone passed. A process of their own keeps OpenVINO's state out of the other tests' process.
"""
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino")
CHECKS = Path(__file__).with_name("openvino_checks.py")


# The checks' own ``slow`` ones run in the ``slow`` run: a marker of this test, passed on to the process.
@pytest.mark.parametrize("markers", ["not slow", pytest.param("slow", marks=pytest.mark.slow)])
def test_openvino_checks_pass_in_a_process_of_their_own(markers):
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", markers,
                           str(CHECKS)], capture_output=True, text=True, cwd=CHECKS.parent.parent, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
