#!/usr/bin/env bash
# The whole benchmark suite on this machine, then BENCHMARKS.md. Run it on an otherwise idle machine.
#   bash benchmarks/run_all.sh [RUN_DIR]   RUN_DIR: a finished fashion-mnist-95 run (INT8 agreement, time to accuracy)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
run=${1:-}
if [ -n "$run" ]; then
  "$PY" benchmarks/inference.py --int8-checkpoint "$run/best.pt"
  "$PY" benchmarks/time_to_accuracy.py "$run"
else
  "$PY" benchmarks/inference.py
fi
"$PY" benchmarks/training.py
"$PY" benchmarks/loader.py
"$PY" benchmarks/serve.py
"$PY" benchmarks/serve.py --reload
"$PY" benchmarks/report.py
