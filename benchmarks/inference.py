"""Inference latency, side by side: our PyTorch, TorchScript, torch.compile, ONNX Runtime, OpenVINO, ExecuTorch,
LiteRT (XNNPACK) and ncnn paths against torchvision's mobilenet_v3_large/small in eager PyTorch and exported by hand
to ONNX Runtime, to OpenVINO and to ncnn (pnnx), on one core and on all cores, plus the physical floor.

    python benchmarks/inference.py                 # the full table, one core then all (long: exports, torch.compile)
    python benchmarks/inference.py --quick         # a smoke run
    python benchmarks/inference.py --cores all --threads 4    # all-core figures only, with 4 threads
    python benchmarks/inference.py --int8-checkpoint runs/x/best.pt   # INT8 agreement on that run's eval set

Ratios are a reference's time over each path's (higher is faster): torchvision eager's, and the fastest of the
by-hand exports' in the same model/batch/threads group. The one-core run is a process of its own pinned to one core
with CPU affinity, one thread everywhere; the all-core run gives torch, ONNX Runtime (no spinning) and OpenVINO
(latency hint) the same thread count. A load average above the core count at the start prints a warning: timings
on a busy machine are not meaningful. The INT8 path's top-1 agreement with fp32 is measured on a real evaluation
set: the eval split of the dataset a trained checkpoint was trained on (latency figures use random weights and
inputs, which do not change the arithmetic).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from mobilenetv3.benchmarking import (
    CORE_MODES,
    INFERENCE_VARIANTS,
    affinity,
    core_modes,
    default_variants,
    inference_groups,
    inference_preamble,
    machine_info,
    peak_gflops,
    physical_floor,
)
from mobilenetv3.errors import UsageError

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "inference.json"


def int8_agreement(checkpoint: Path, limit: int = 0) -> dict:
    """Top-1 agreement between the fp32 and INT8 ONNX exports of a trained checkpoint on its eval split."""
    import itertools

    from mobilenetv3.build import build_datasets
    from mobilenetv3.config import Config
    from mobilenetv3.data import eval_loader
    from mobilenetv3.data.transforms import Preprocessing
    from mobilenetv3.export import OnnxModule, export_onnx, quantize_onnx
    from mobilenetv3.weights import model_from_weights, read_weights

    weights = read_weights(checkpoint)
    model = model_from_weights(weights)
    config = Config.from_dict(weights.checkpoint.config)
    pre = Preprocessing.from_dict(model.preprocessing)
    train, val = build_datasets(config.data, config.run.seed, model.num_classes)
    eval_batches = eval_loader(val, pre, batch_size=256)
    calibration = [b.images for b in itertools.islice(eval_loader(train, pre, batch_size=64), 5)]
    with tempfile.TemporaryDirectory() as folder:
        fp32 = export_onnx(model, Path(folder) / "m.onnx", calibration[0][:2])
        int8 = quantize_onnx(fp32, Path(folder) / "m.int8.onnx", calibration)
        runtimes = dict(pytorch=model, fp32=OnnxModule(fp32), int8=OnnxModule(int8))
        predictions = {name: [] for name in runtimes}
        labels = []
        with torch.inference_mode():
            for batch in (itertools.islice(eval_batches, limit) if limit else eval_batches):
                labels.append(batch.labels)
                for name, runtime in runtimes.items():
                    predictions[name].append(runtime(batch.images).argmax(1))
    labels = torch.cat(labels)
    top1 = {name: torch.cat(p).eq(labels).float().mean().item() for name, p in predictions.items()}
    agree = torch.cat(predictions["int8"]).eq(torch.cat(predictions["fp32"])).float().mean().item()
    return dict(checkpoint=str(checkpoint), dataset=config.data.dataset, images=len(labels), top1=top1,
                int8_fp32_top1_agreement=agree, target_agreement=0.995)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["mobilenetv3_large", "mobilenetv3_small"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--variants", nargs="+", choices=INFERENCE_VARIANTS, metavar="VARIANT",
                   help="paths to time, each quoted (default: all, less torch.compile with --quick, less those this "
                        "machine cannot run); choose from: " + ", ".join(INFERENCE_VARIANTS))
    p.add_argument("--threads", type=int, help="threads of the all-core run in every runtime (default: one per "
                                               f"core this process may run on, here {len(affinity())})")
    p.add_argument("--cores", choices=CORE_MODES, default="both",
                   help="one core (pinned, one thread), all cores, or both in turn (default both)")
    p.add_argument("--one-core", dest="cores", action="store_const", const="one", default=argparse.SUPPRESS,
                   help="the same as --cores one")
    p.add_argument("--int8-checkpoint", type=Path, help="a trained checkpoint: INT8 agreement on its eval split")
    p.add_argument("--quick", action="store_true", help="small and fast: checks the script runs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the result JSON (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.size, args.repeats = ["mobilenetv3_small"], [1], 64, 2
    try:
        modes = core_modes(args.cores, args.threads)
    except UsageError as err:
        p.error(str(err))
    machine = machine_info()
    print(f"{machine['cpu']}, flags {' '.join(machine['cpu_flags']) or 'n/a'}, {machine['cores']} cores, "
          f"load average {machine['load_average_1min']:.2f}", flush=True)
    result = dict(benchmark="inference", quick=args.quick, machine=machine,
                  **inference_preamble(machine, args.variants or default_variants(args.quick)))
    for line in filter(None, [result["busy_warning"], *result["notes"]]):
        print(line, flush=True)
    result.update(peak=peak_gflops(512 if args.quick else 2048), thread_settings={}, rows=[], floor=[])
    for settings, rows in inference_groups(args.models, args.batches, args.size, result["variants"], modes,
                                           args.threads, args.repeats, warmup=1 if args.quick else 5):
        result["thread_settings"].setdefault(settings["cores"], settings)
        result["rows"] += rows
        for row in rows:
            print(f"{row['model']:<18} batch {row['batch']:>3} {row['cores']} core(s), {row['threads']} thread(s) "
                  f"{row['variant']:<24} {row['ms']:9.2f} ms {_times(row['speedup_vs_torchvision_eager'])} eager "
                  f"{_times(row['speedup_vs_best_by_hand'])} by hand", flush=True)
    result["floor"] = [physical_floor(name, batch, args.size, result["peak"]) for name in args.models
                       for batch in args.batches]
    if args.int8_checkpoint:
        result["int8_agreement"] = int8_agreement(args.int8_checkpoint, limit=2 if args.quick else 0)
        print(json.dumps(result["int8_agreement"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


def _times(ratio) -> str:
    return f"{ratio:6.2f}x" if ratio else f"{'n/a':>7}"


if __name__ == "__main__":
    sys.exit(main())
