#!/usr/bin/env bash
# The GPU check on one GPU, under 8 minutes: tests/test_gpu.py, training and inference images/s of MobileNetV3-Large
# next to torchvision's, JPEG loading with --decode gpu next to the CPU loader; one table, and
# benchmarks/results/gpu_check.json. The work is benchmarks/gpu_check.py.
#   bash benchmarks/gpu_check.sh             on a GPU machine
#   bash benchmarks/gpu_check.sh --dry-run   the same code paths on the CPU at tiny sizes, in well under a minute
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" benchmarks/gpu_check.py "$@"
