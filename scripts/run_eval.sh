#!/usr/bin/env bash
# The seed's evaluation launcher:  bash run_eval.sh GPU|CPU DATASET_PATH CHECKPOINT_PATH  (alias run_infer.sh)
# Output, with the seed's "result: {'acc': ...} ckpt= ..." line, in ./eval/val.log.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
usage() { echo "usage: bash $0 GPU|CPU DATASET_PATH CHECKPOINT_PATH" >&2; exit 2; }
[ $# -eq 3 ] || usage
case "$1" in GPU|CPU) ;; *) usage ;; esac
[ -e "$2" ] || { echo "error: DATASET_PATH $2 does not exist" >&2; exit 2; }
[ -f "$3" ] || { echo "error: CHECKPOINT_PATH $3 does not exist" >&2; exit 2; }
data=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
ckpt=$(cd "$(dirname "$3")" && pwd)/$(basename "$3")
mkdir -p "$ROOT/eval"
cd "$ROOT/eval"
launch "$ROOT/eval/val.log" "$PYTHON" "$ROOT/eval.py" --dataset_path="$data" --checkpoint_path="$ckpt" --device_target="$1"
