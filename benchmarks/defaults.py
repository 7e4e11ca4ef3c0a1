"""Do the bare command's defaults learn on any data? The table of the README's "Defaults that fit the data".

Three ImageFolders made from the real Fashion-MNIST files, unlike the demo's data in size and image size, of
its classes 5-9 (sandal, shirt, sneaker, bag, ankle boot):

  hundreds   400 training images, 224 px RGB JPEG (upscaled), 500 validation images
  thousands  2,000 training images, 8 px grayscale PNG (downscaled: the model sees them upscaled), 1,000 val
  10k        10,000 training images, 32 px RGB PNG, 1,000 val

On each, from scratch and from torchvision-layout weights (torchvision's own ``mobilenet_v3_small`` trained in a
plain torchvision loop on classes 0-4, the classes the targets do not have), the bare command
(``mobilenetv3.train(dataset="imagenet", data_path=...)``, data settings only) is run, then the same run with
0.3x and 3x its learning rate and everything else as the defaults chose it (epochs, batch, warmup, image size).
The bare run should be within 3 points of the best of the three, and none may diverge. Scored on the folder's
val split at the last epoch (no choice is made on it: the rules were fixed before this script ran).

    python benchmarks/defaults.py --out /tmp/defaults          # about 25 minutes on 2 cores (one thread each:
                                                               # OMP_NUM_THREADS=1 keeps it steady beside other work)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

import mobilenetv3
from mobilenetv3.benchmarking import machine_info
from mobilenetv3.engine import NonFiniteLoss

sys.path.insert(0, str(Path(__file__).parent))
from finetune import train_torchvision_source, write_image_folder  # noqa: E402 - the same source model and folders

# name: (training images per class, val images per class, side in pixels, mode, file format)
DATASETS = {
    "hundreds-224px-jpeg": (80, 100, 224, "RGB", "JPEG"),
    "thousands-8px-png": (400, 200, 8, "L", "PNG"),
    "10k-32px-png": (2000, 200, 32, "RGB", "PNG"),
}
LR_FACTORS = (0.3, 3.0)


def run(folder: Path, run_dir: Path, **settings) -> dict:
    """One training run; its last validation top-1, what it chose, and whether it diverged."""
    start = time.perf_counter()
    try:
        result = mobilenetv3.train(None, dataset="imagenet", data_path=str(folder), run_dir=str(run_dir),
                                   progress=False, **settings)
        top1, steps = result.top1, result.global_step
    except NonFiniteLoss as err:
        top1, steps = None, err.step
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    return dict(top1=top1, diverged=top1 is None, steps=steps, seconds=round(time.perf_counter() - start, 1),
                peak_lr=resolved["resolved"]["peak_lr"], global_batch=resolved["resolved"]["global_batch"],
                epochs=resolved["optim"]["epochs"], warmup_epochs=resolved["optim"]["warmup_epochs"],
                image_size=resolved["data"]["image_size"], choices=resolved["resolved"].get("choices", {}))


def sweep(folder: Path, out: Path, name: str, pretrained: str | None) -> dict:
    """The bare run, then 0.3x and 3x its LR with everything else as it chose."""
    extra = dict(pretrained=pretrained) if pretrained else {}
    bare = run(folder, out / f"{name}-bare", **extra)
    fixed = dict(epochs=bare["epochs"], batch_size=bare["global_batch"], warmup_epochs=bare["warmup_epochs"],
                 image_size=bare["image_size"], lr_reference_batch=bare["global_batch"], **extra)
    rows = {"1x (bare)": bare}
    for factor in LR_FACTORS:
        rows[f"{factor:g}x"] = run(folder, out / f"{name}-lr{factor:g}", lr=bare["peak_lr"] * factor, **fixed)
    scores = [r["top1"] for r in rows.values() if r["top1"] is not None]
    best = max(scores) if scores else None
    return dict(rows=rows, best=best, bare_gap=None if best is None or bare["top1"] is None else best - bare["top1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the data, the weights and the runs")
    parser.add_argument("--only", nargs="*", choices=list(DATASETS), help="these datasets only")
    parser.add_argument("--source-epochs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "defaults.json")
    parser.add_argument("--table", action="store_true", help="print the table of the --json results and stop")
    args = parser.parse_args()
    if args.table:
        return print_table(json.loads(args.json.read_text()))
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "tv_small_classes0-4.pth"
    source = train_torchvision_source(weights, args.source_epochs) if not weights.exists() else {"reused": True}
    results = dict(machine=machine_info(), source=source, datasets={})
    for name in args.only or DATASETS:
        folder = args.out / name
        if not (folder / "val").is_dir():
            write_image_folder(folder, *DATASETS[name])
        for start, pretrained in (("scratch", None), ("torchvision-weights", str(weights))):
            key = f"{name} / {start}"
            results["datasets"][key] = sweep(folder, args.out / "runs", f"{name}-{start}", pretrained)
            print_sweep(key, results["datasets"][key])
            args.json.parent.mkdir(parents=True, exist_ok=True)
            results["load_average_end"] = os.getloadavg()[0]
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_table(results)


def print_sweep(key: str, sweep_result: dict) -> None:
    for label, row in sweep_result["rows"].items():
        top1 = "diverged" if row["diverged"] else f"{100 * row['top1']:.2f}%"
        print(f"{key:<40} LR {label:<10} {top1:>9}  peak LR {row['peak_lr']:.4g} batch {row['global_batch']} "
              f"{row['epochs']} epochs {row['steps']} steps {row['image_size']} px  {row['seconds']:.0f} s", flush=True)


def print_table(results: dict) -> None:
    m = results["machine"]
    print(f"\n{m.get('cpu')} ({', '.join(m.get('cpu_flags', []))}), {m.get('cores')} cores, torch threads "
          f"{m.get('torch_threads')}, load average {m.get('load_average_1min')} at the start, "
          f"{results.get('load_average_end')} at the end")
    print("| data / start | bare (LR) | 0.3x LR | 3x LR | bare - best |")
    print("|---|---|---|---|---|")
    for key, s in results["datasets"].items():
        cells = ["diverged" if r["diverged"] else f"{100 * r['top1']:.2f}%" for r in s["rows"].values()]
        bare = s["rows"]["1x (bare)"]
        gap = "n/a" if s["bare_gap"] is None else f"{0.0 - 100 * s['bare_gap'] + 0.0:+.2f} pt"
        print(f"| {key} | {cells[0]} ({bare['peak_lr']:.3g}, batch {bare['global_batch']}, {bare['epochs']} ep) | "
              f"{cells[1]} | {cells[2]} | {gap} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
