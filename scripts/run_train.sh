#!/usr/bin/env bash
# The seed's launcher:  bash run_train.sh GPU DEVICE_NUM VISIBLE_DEVICES DATASET_PATH
#                       bash run_train.sh CPU DATASET_PATH
# Runs in ./train (checkpoints in ./train/checkpoint, output in ./train/train.log); several GPUs go
# through torchrun where the seed used mpirun.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
usage() {
  echo "usage: bash $0 GPU DEVICE_NUM VISIBLE_DEVICES(0,1,...) DATASET_PATH  |  bash $0 CPU DATASET_PATH" >&2
  exit 2
}
case "${1:-}" in
  GPU) [ $# -eq 4 ] || usage
       [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "error: DEVICE_NUM must be a positive integer, got '$2'" >&2; exit 2; }
       data=$4 ;;
  CPU) [ $# -eq 2 ] || usage
       data=$2 ;;
  *) usage ;;
esac
[ -e "$data" ] || { echo "error: DATASET_PATH $data does not exist" >&2; exit 2; }
data=$(cd "$data" && pwd)
if [ "$1" = GPU ] && [ "$2" -gt 1 ]; then
  export CUDA_VISIBLE_DEVICES=$3
  cmd=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$2" "$ROOT/train.py"
       --dataset_path="$data" --device_target=GPU --run_distribute=True)
elif [ "$1" = GPU ]; then
  export CUDA_VISIBLE_DEVICES=$3
  cmd=("$PYTHON" "$ROOT/train.py" --dataset_path="$data" --device_target=GPU)
else
  cmd=("$PYTHON" "$ROOT/train.py" --dataset_path="$data" --device_target=CPU)
fi
mkdir -p "$ROOT/train"
cd "$ROOT/train"
launch "$ROOT/train/train.log" "${cmd[@]}"
