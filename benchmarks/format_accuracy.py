"""Top-1 of every export format on the same real evaluation set: a trained checkpoint exported (and verified)
in each format, each file run in its own runtime over the whole eval split (Fashion-MNIST: the 10,000 test
images), next to the PyTorch model it came from.

    python benchmarks/format_accuracy.py runs/a/last.pt runs/b/last.pt      # every format this machine runs
    python benchmarks/format_accuracy.py CKPT --formats onnx openvino-int8   # some of them

Targets (issue 19): fp32 formats within 0.1 pt of eager, bf16 within 0.2 pt, INT8 at most 0.5 pt below its
fp32 and agreeing with it on at least 99.0% of the images. bf16 runs only on a CPU with native bf16.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from mobilenetv3.benchmarking import machine_info

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "format_accuracy.json"
TARGETS = {"fp32": 0.001, "bf16": 0.002}  # most top-1 below eager; INT8: below its fp32 and agreement
INT8_DROP, INT8_AGREEMENT = 0.005, 0.99


def eval_batches(checkpoint: Path):
    """The PyTorch model of ``checkpoint`` and its eval split in batches, with the model's preprocessing."""
    from mobilenetv3.build import build_dataset_split
    from mobilenetv3.config import Config
    from mobilenetv3.data import eval_loader
    from mobilenetv3.data.transforms import Preprocessing
    from mobilenetv3.weights import model_from_weights, read_weights

    weights = read_weights(checkpoint)
    model = model_from_weights(weights).eval()
    config = Config.from_dict(weights.checkpoint.config)
    val = build_dataset_split(config.data, "val", config.run.seed, model.num_classes)
    batches = list(eval_loader(val, Preprocessing.from_dict(model.preprocessing), batch_size=250))
    return model, config, batches


@torch.inference_mode()
def predictions(run, batches) -> torch.Tensor:
    return torch.cat([torch.as_tensor(run(b.images)).argmax(1) for b in batches])


def runners(checkpoint: Path, formats, folder: Path):
    """(name, precision, callable) for each format of the table of formats (or those named) that runs on this
    machine with its extra installed: exported, verified and opened in its own runtime."""
    from mobilenetv3.export import TABLE
    from mobilenetv3.export.formats import get, installed
    from mobilenetv3.tasks.export import export_model

    for row in [get(name) for name in formats] if formats else TABLE:
        if not row.runs_here() or not installed(row):
            why = "does not run on this machine" if not row.runs_here() else "its extra is not installed"
            print(f"  {row.name:<16} left out: {why}", flush=True)
            continue
        path = folder / f"model{row.suffix}"
        export_model(str(checkpoint), format=row.name, output=str(path))
        fmt, precision = row.name, "int8" if row.int8 else "fp32"
        yield fmt, precision, row.open(path, None, None, None)
        if fmt == "openvino" and _native_bf16():
            from mobilenetv3.export.openvino import OpenVinoModule

            yield "openvino bf16", "bf16", OpenVinoModule(path, precision="bf16")


def _native_bf16() -> bool:
    from mobilenetv3.benchmarking import _native_bf16 as native

    return native()


def fp32_formats() -> dict:
    """``{"onnx-int8": "onnx", ...}``: each INT8 format and the fp32 format it is compared with (the table's)."""
    from mobilenetv3.export import TABLE

    return {row.name: row.fp32_of for row in TABLE if row.int8}


def score(checkpoint: Path, formats=None) -> dict:
    model, config, batches = eval_batches(checkpoint)
    labels = torch.cat([b.labels for b in batches])
    eager = predictions(model, batches)
    rows = [dict(format="eager (PyTorch)", precision="fp32", top1=eager.eq(labels).float().mean().item())]
    fp32_of = fp32_formats()
    found = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, precision, run in runners(checkpoint, formats, Path(folder)):
            found[name] = predictions(run, batches)
            row = dict(format=name, precision=precision, top1=found[name].eq(labels).float().mean().item(),
                       agreement_with_eager=found[name].eq(eager).float().mean().item())
            reference = found.get(fp32_of.get(name))
            if reference is not None:
                row["fp32_top1"] = reference.eq(labels).float().mean().item()
                row["agreement_with_fp32"] = found[name].eq(reference).float().mean().item()
            rows.append(_judged(row, rows[0]["top1"]))
            print(f"  {name:<16} {precision:<5} top-1 {100 * row['top1']:.2f}%  {row['verdict']}", flush=True)
    return dict(checkpoint=str(checkpoint), model=model.model_name, dataset=config.data.dataset,
                images=len(labels), rows=rows)


def _judged(row: dict, eager_top1: float) -> dict:
    if row["precision"] == "int8":
        if "fp32_top1" not in row:
            row["verdict"] = "no fp32 file to compare"
            return row
        drop, agree = row["fp32_top1"] - row["top1"], row["agreement_with_fp32"]
        met = drop <= INT8_DROP and agree >= INT8_AGREEMENT
        row["verdict"] = (f"{'met' if met else 'missed'}: {100 * drop:+.2f} pt below its fp32 (<= 0.5), "
                          f"{100 * agree:.2f}% agreement (>= 99.0)")
    else:
        drop = eager_top1 - row["top1"]
        met = drop <= TARGETS[row["precision"]] + 1e-9
        row["verdict"] = (f"{'met' if met else 'missed'}: {100 * drop:+.2f} pt below eager "
                          f"(<= {100 * TARGETS[row['precision']]:.1f})")
    row["met"] = met
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--formats", nargs="+", help="export formats (default: all of them)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    result = dict(benchmark="format_accuracy", machine=machine_info(), models=[])
    for checkpoint in args.checkpoints:
        print(f"{checkpoint}:", flush=True)
        result["models"].append(score(checkpoint, args.formats))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
