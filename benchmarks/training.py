"""Training throughput, side by side: the project's training step (the code `mobilenetv3 train` runs:
model, smoothed loss, SGD with the seed's decay groups, the warmup-cosine schedule, the log) against a bare
torchvision model + SGD + cross-entropy loop, on the same in-memory tensors; and end to end on Fashion-MNIST
with each side's data pipeline.

    python benchmarks/training.py          # Large 224/32, Large 32/256, Small 32/256, end to end
    python benchmarks/training.py --quick
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from mobilenetv3.benchmarking import machine_info
from mobilenetv3.tasks.bench import bench_training

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "training.json"
# (model, batch, size, options): ImageNet-like, small images, and the fashion-mnist presets' step (grayscale
# 28 px, stride-1 stem, contiguous layout: channels-last was slower there since the small-map depthwise path).
CASES = [("mobilenetv3_large", 32, 224, {}), ("mobilenetv3_large", 256, 32, {}), ("mobilenetv3_small", 256, 32, {}),
         ("mobilenetv3_small", 128, 28, dict(in_chans=1, stem_stride=1, channels_last=False))]


def end_to_end(steps: int, batch_size: int = 128) -> list[dict]:
    """Images/s of loader + step on Fashion-MNIST at 32 px: ours (the fashion-mnist preset's loader and step)
    against torchvision's per-image PIL pipeline feeding a bare torchvision loop."""
    import torch.nn.functional as F
    import torchvision
    from torchvision import transforms as T

    from mobilenetv3.build import build_data, build_model, pick_device
    from mobilenetv3.config import load_config
    from mobilenetv3.data import STATS
    from mobilenetv3.dist import DistInfo
    from mobilenetv3.engine import TrainOptions, train_one_epoch
    from mobilenetv3.optim import build_optimizer, param_groups, smoothed_cross_entropy, warmup_cosine_lr

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loader import PILImages

    config = load_config("fashion-mnist", dict(batch_size=batch_size, channels_last=True))
    data = build_data(config, DistInfo(), pick_device("cpu", DistInfo()))
    model = build_model(config.model, 10, 1).to(memory_format=torch.channels_last)
    optimizer = build_optimizer("sgd", param_groups(model, 5e-5), 0.1)
    rows = []

    def timed(label, run):
        start = time.perf_counter()
        images = run()
        elapsed = time.perf_counter() - start
        rows.append(dict(kind="end-to-end", variant=label, model=config.model.model, batch=batch_size, size=32,
                         images_per_s=images / elapsed, ms=1000 * elapsed * batch_size / images))

    def ours():
        options = TrainOptions(loss_fn=lambda lo, t: smoothed_cross_entropy(lo, t, 0.1),
                               lr_at=lambda s: warmup_cosine_lr(s, 1000, 10, 0.1), channels_last=True)
        return train_one_epoch(model, itertools.islice(data.train_loader, steps), optimizer, options,
                               global_step=0).images

    mean, std = STATS["fashion-mnist"]
    stock = T.Compose([T.RandomCrop(28, padding=4), T.RandomHorizontalFlip(), T.Resize(32), T.ToTensor(),
                       T.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(PILImages(data.train.images, data.train.labels, stock),
                                         batch_size=batch_size, shuffle=True, drop_last=True, num_workers=1)
    reference = torchvision.models.mobilenet_v3_small(num_classes=10)
    reference.features[0][0] = torch.nn.Conv2d(1, 16, 3, 2, 1, bias=False)  # grayscale input, as ours
    reference_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)

    def bare():
        images = 0
        for x, y in itertools.islice(loader, steps):
            loss = F.cross_entropy(reference(x), y)
            reference_opt.zero_grad()
            loss.backward()
            reference_opt.step()
            images += len(y)
        return images

    for label, fn in (("torchvision pipeline + loop", bare), ("mobilenetv3 loader + train step", ours)):
        timed(label, fn)
    rows[1]["speedup_vs_torchvision_loop"] = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    rows[0]["speedup_vs_torchvision_loop"] = 1.0
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per case (median step time)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each case; the median ratio is reported")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    cases = [("mobilenetv3_small", 16, 32, dict(in_chans=1, stem_stride=1))] if args.quick else CASES
    steps, repeats = (1, 1) if args.quick else (args.steps, args.repeats)
    result = dict(benchmark="training", quick=args.quick, machine=machine_info(), rows=[])
    for name, batch, size, options in cases:
        runs = [bench_training(name, batch, size, steps=steps, **options) for _ in range(repeats)]
        median_run = sorted(runs, key=lambda rows: rows[1]["speedup_vs_torchvision_loop"])[len(runs) // 2]
        for row in median_run:
            row.update(options, repeat_speedups=[r[1]["speedup_vs_torchvision_loop"] for r in runs])
        result["rows"] += median_run
        print(f"{name} batch {batch} at {size} px {options or ''}: " + ", ".join(
            f"{r['variant']} {r['images_per_s']:.1f} img/s" for r in median_run)
              + f" -> {median_run[1]['speedup_vs_torchvision_loop']:.2f}x "
                f"(repeats {statistics.median(median_run[1]['repeat_speedups']):.2f})", flush=True)
    result["end_to_end"] = end_to_end(2 if args.quick else 60, batch_size=16 if args.quick else 128)
    for row in result["end_to_end"]:
        print(f"end to end, fashion-mnist: {row['variant']} {row['images_per_s']:.0f} img/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
