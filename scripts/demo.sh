#!/usr/bin/env bash
# The README's main job: train the fashion-mnist preset, evaluate the checkpoint, export it to ONNX.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/.venv/bin}
cd "$ROOT"

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "Fashion-MNIST is not installed: installing the Debian package dataset-fashion-mnist"
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist
  else
    echo "error: cannot install it here; run 'apt-get install dataset-fashion-mnist' as root," \
         "or train with '$BIN/mobilenetv3 train --config fashion-mnist --download' on a machine with internet" >&2
    exit 2
  fi
fi

run="runs/demo-$(date +%Y%m%d-%H%M%S)"
"$BIN/mobilenetv3" train --config fashion-mnist --run-dir "$run" "$@"
"$BIN/mobilenetv3" eval --checkpoint "$run/last.pt"
"$BIN/mobilenetv3" export --checkpoint "$run/last.pt" --format onnx --output "$run/model.onnx"
echo "demo done: $run (checkpoint $run/last.pt, log $run/train.log, ONNX $run/model.onnx)"
echo "serve it: $BIN/mobilenetv3 serve $run/last.pt   (then open http://127.0.0.1:8000/)"
