"""Does the data loader keep up with training? Images/s of the train loader against the training step.

Measures, on Fashion-MNIST at 32 px with the ``small`` augmentation and batch 128 (the fashion-mnist config's
model and optimizer; its data settings at 28 px without augmentation leave a loader nothing to do):
  (a) images/s the project's train loader delivers (``build_loader(train=True)``), with the default
      worker count and with none, median of ``--repeats`` runs of ``--batches`` batches after warm-up;
  (b) images/s of the project's training step (``engine.train_one_epoch``: mobilenetv3_small, SGD,
      ``optim.smoothed_cross_entropy``), median step time after warm-up, channels-last and contiguous;
  (c) their ratio, against a target of 5x (the loader should be far from the bottleneck);
and, for comparison, torchvision's stock per-image pipeline (PIL RandomCrop(28, padding=4), flip,
Resize(32), ToTensor, Normalize) in a DataLoader with the same worker counts over the same images.

    python benchmarks/loader.py                     # about a minute or two on 2 cores
    python benchmarks/loader.py --quick --out /tmp/loader.json

Each measurement runs alone; during training the loader's workers and the step share the CPU.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from mobilenetv3.benchmarking import machine_info
from mobilenetv3.config import load_config
from mobilenetv3.data import STATS, build_dataset, build_loader, build_preset, default_workers
from mobilenetv3.engine import TrainOptions, train_one_epoch
from mobilenetv3.models import create_model
from mobilenetv3.optim import build_optimizer, param_groups, smoothed_cross_entropy

TARGET_RATIO = 5.0
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "loader.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="fashion-mnist", help="config preset giving model, data and optimizer")
    p.add_argument("--dataset", help="override the config's dataset (fashion-mnist, mnist, cifar10, synthetic)")
    p.add_argument("--data-path", help="dataset folder (fashion-mnist: found in /usr/share/datasets if omitted)")
    p.add_argument("--batch-size", type=int, help="override the config's batch size (128)")
    p.add_argument("--threads", type=int, help="torch threads in this process (default: torch's choice)")
    p.add_argument("--batches", type=int, default=50, help="timed batches per loader run")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches (and training steps) first")
    p.add_argument("--repeats", type=int, default=3, help="loader runs per setting; the median is reported")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--jpeg-images", type=int, default=400, help="JPEGs in the generated ImageFolder")
    p.add_argument("--quick", action="store_true", help="a few small batches and steps: checks the script runs; "
                                                     "its figures mean nothing")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON result (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.warmup, args.repeats, args.steps = 2, 1, 1, 1
        args.batch_size = args.batch_size or 32
    return args


def machine() -> dict:
    import torchvision

    return dict(machine_info(), torchvision=torchvision.__version__)


# ------------------------------------------------------------------------------------------- loaders
def images_per_second(make_batches, warmup: int, batches: int) -> float:
    """Images/s over ``batches`` batches of a fresh iterator, after ``warmup`` untimed ones."""
    iterator = make_batches()
    for _ in range(warmup):
        next(iterator)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        images += len(next(iterator)[1])  # (images, labels, ...) for ours and torchvision's alike
    return images / (time.perf_counter() - start)


def ours(data, recipe, preprocessing, batch_size: int, workers: int, seed: int, decode_device=None):
    loader = build_loader(data, recipe, preprocessing, train=True, batch_size=batch_size, workers=workers,
                          seed=seed, decode_device=decode_device)

    epochs = itertools.count(1)

    def epoch():  # a new epoch per run: a fresh shuffle, the same persistent workers
        loader.sampler.set_epoch(next(epochs))
        return iter(loader)

    return epoch


class PILImages(torch.utils.data.Dataset):
    """Our uint8 (N, C, H, W) images as PIL images, one per item, as torchvision's datasets return them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        image = self.images[index]
        pil = Image.fromarray(image[0].numpy(), "L") if image.shape[0] == 1 else \
            Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB")
        return self.transform(pil), int(self.labels[index])


def torchvision_stock(data, size: int, mean, std, batch_size: int, workers: int, seed: int):
    """The usual torchvision recipe: per-image PIL transforms, batches collated by the DataLoader."""
    from torchvision import transforms as T

    native = data.images.shape[-1]
    transform = T.Compose([T.RandomCrop(native, padding=4), T.RandomHorizontalFlip(), T.Resize(size),
                           T.ToTensor(), T.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(PILImages(data.images, data.labels, transform), batch_size=batch_size,
                                         shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(seed))
    return lambda: iter(loader)


def measure_loader(make_batches, args) -> dict:
    runs = [images_per_second(make_batches, args.warmup, args.batches) for _ in range(args.repeats)]
    return dict(images_per_s=statistics.median(runs), runs=runs)


# ------------------------------------------------------------------------------------- JPEG folders
def make_jpeg_folder(folder: Path, count: int, classes: int = 4, seed: int = 0) -> Path:
    """``count`` JPEGs of about 500x375 in ``classes`` class folders: random crops of real photographs
    (the sample images matplotlib ships), rescaled and re-encoded at quality 90."""
    import random

    import matplotlib
    from PIL import Image

    sample_dir = Path(matplotlib.get_data_path()) / "sample_data"
    photos = [Image.open(sample_dir / name).convert("RGB") for name in ("grace_hopper.jpg",
                                                                          "Minduka_Present_Blue_Pack.png")]
    rng = random.Random(seed)
    for index in range(count):
        photo = photos[index % len(photos)]
        w, h = photo.size
        cw, ch = rng.randint(w // 3, w), rng.randint(h // 3, h)
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = photo.crop((left, top, left + cw, top + ch)).resize((rng.randint(450, 520), rng.randint(330, 400)))
        target = folder / "train" / f"class_{index % classes}"
        target.mkdir(parents=True, exist_ok=True)
        image.save(target / f"{index:05d}.jpg", quality=90)
    return folder


def jpeg_loaders(folder: Path, size: int, batch_size: int, workers: int, seed: int):
    """Ours (seed-imagenet preset: per-image crop and flip, colour jitter and normalisation on the batch)
    and torchvision's stock ImageFolder with the same recipe as per-image PIL transforms."""
    from torchvision import datasets as tv_datasets
    from torchvision import transforms as T

    from mobilenetv3.data.datasets import IMAGENET_STATS, image_folder

    mean, std = IMAGENET_STATS
    data = image_folder(folder, "train")
    recipe, preprocessing = build_preset("seed-imagenet", size, mean, std, 3)
    stock = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4),
                       T.ToTensor(), T.Normalize(mean, std)])
    reference = torch.utils.data.DataLoader(tv_datasets.ImageFolder(str(folder / "train"), stock),
                                            batch_size=batch_size, shuffle=True, drop_last=True,
                                            num_workers=workers, persistent_workers=workers > 0,
                                            generator=torch.Generator().manual_seed(seed))
    return ours(data, recipe, preprocessing, batch_size, workers, seed), lambda: iter(reference)


def measure_jpeg(args) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        count = 64 if args.quick else args.jpeg_images
        make_jpeg_folder(Path(folder), count)
        batch_size = 8 if args.quick else 32
        workers = default_workers()
        ours_batches, torchvision_batches = jpeg_loaders(Path(folder), 224, batch_size, workers, 0)
        batches = max(1, min(args.batches, count // batch_size - args.warmup - 1))
        settings = argparse.Namespace(warmup=args.warmup, batches=batches, repeats=args.repeats)
        rows = [dict(pipeline="mobilenetv3", workers=workers, **measure_loader(ours_batches, settings)),
                dict(pipeline="torchvision", workers=workers, **measure_loader(torchvision_batches, settings))]
    return dict(images=count, size=224, batch_size=batch_size, preset="seed-imagenet", loaders=rows,
                ratio_to_torchvision=rows[0]["images_per_s"] / rows[1]["images_per_s"], target_ratio=1.5)


# ------------------------------------------------------------------------------------ training step
def training_step_rate(config, batch, num_classes: int, in_chans: int, channels_last: bool, args) -> dict:
    """Images/s of ``train_one_epoch`` steps on one batch: the median step time after warm-up."""
    m, o = config.model, config.optim
    torch.manual_seed(0)
    model = create_model(m.model, num_classes=num_classes, in_chans=in_chans, dropout=m.dropout)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(o.optimizer, param_groups(model, o.weight_decay, o.decay_bias), o.lr, o.momentum)
    step_times = []
    options = TrainOptions(loss_fn=lambda logits, targets: smoothed_cross_entropy(logits, targets, o.label_smoothing,
                                                                               o.smoothing),
                           lr_at=lambda step: o.lr, channels_last=channels_last)
    train_one_epoch(model, [batch] * (args.warmup + args.steps), optimizer, options, global_step=0,
                    on_step=lambda step: step_times.append(step.step_time))
    median = statistics.median(step_times[args.warmup:])
    return dict(images_per_s=len(batch.labels) / median, step_s=median)


# -------------------------------------------------------------------------------------------- report
def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    # The augmenting pipeline at 32 px (crop + flip + resize), which torchvision's stock pipeline below matches:
    # the demo preset itself trains without augmentation at 28 px now, a loader with nothing to do.
    overrides = {"dataset": args.dataset, "data_path": args.data_path, "batch_size": args.batch_size or 128,
                 "transform": "small", "image_size": 32, "stem_stride": 2}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    config = load_config(args.config, overrides)
    d, seed = config.data, config.run.seed
    data = build_dataset(d.dataset, d.data_path, "train", synthetic_samples=4096, synthetic_size=d.image_size,
                         seed=seed)
    if not hasattr(data, "images"):
        raise SystemExit("benchmarks/loader.py measures in-memory datasets (fashion-mnist, mnist, cifar10, synthetic)")
    mean, std = STATS[d.dataset]
    in_chans, native = data.channels, data.images.shape[-1]
    recipe, preprocessing = build_preset(d.transform, d.image_size, mean, std, in_chans, native,
                                         eval_resize=d.eval_resize, interpolation=d.interpolation, cutout=d.cutout,
                                         hflip=d.dataset != "mnist", auto_augment=d.auto_augment,
                                         random_erasing=d.random_erasing)
    worker_counts = sorted({default_workers(), 0}, reverse=True)
    loaders = []
    for workers in worker_counts:
        loaders.append(dict(pipeline="mobilenetv3", workers=workers, **measure_loader(
            ours(data, recipe, preprocessing, d.batch_size, workers, seed), args)))
        loaders.append(dict(pipeline="torchvision", workers=workers, **measure_loader(
            torchvision_stock(data, d.image_size, mean, std, d.batch_size, workers, seed), args)))
    batch = next(ours(data, recipe, preprocessing, d.batch_size, 0, seed)())
    steps = {name: training_step_rate(config, batch, len(data.classes), in_chans, channels_last, args)
             for name, channels_last in (("channels_last", True), ("contiguous", False))}
    best = {loader["pipeline"]: loader for loader in loaders if loader["workers"] == worker_counts[0]}
    fastest_step = max(step["images_per_s"] for step in steps.values())
    ratio = best["mobilenetv3"]["images_per_s"] / fastest_step
    return dict(
        benchmark="loader", quick=args.quick, time=time.strftime("%Y-%m-%dT%H:%M:%S"), machine=machine(),
        settings=dict(config=args.config, dataset=d.dataset, images=len(data), native_size=native,
                      image_size=d.image_size, preset=d.transform, batch_size=d.batch_size, model=config.model.model,
                      optimizer=config.optim.optimizer,
                      default_workers=worker_counts[0], batches=args.batches, warmup=args.warmup,
                      repeats=args.repeats, steps=args.steps),
        loaders=loaders, train_step=steps, loader_to_train_ratio=ratio, target_ratio=TARGET_RATIO,
        verdict="PASS" if ratio >= TARGET_RATIO else "MISS",
        ratio_to_torchvision=best["mobilenetv3"]["images_per_s"] / best["torchvision"]["images_per_s"],
        jpeg=measure_jpeg(args))


def print_report(result: dict) -> None:
    m, s = result["machine"], result["settings"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
          f"torchvision {m['torchvision']}, load average {m['load_average_1min']}")
    print(f"data: {s['dataset']} train, {s['images']} images at {s['native_size']} px -> {s['image_size']} px, "
          f"preset {s['preset']}, batch {s['batch_size']}{' (quick run)' if result['quick'] else ''}")
    print(f"training step: engine.train_one_epoch, {s['model']}, {s['optimizer']}, smoothed cross-entropy, on the CPU")
    print()
    print(f"{'what':<58} {'workers':>7} {'images/s':>10}")
    for loader in result["loaders"]:
        name = "train loader (ours: whole-batch augmentation)" if loader["pipeline"] == "mobilenetv3" \
            else "torchvision per-image PIL pipeline"
        print(f"{name:<58} {loader['workers']:>7} {loader['images_per_s']:>10.0f}")
    for name, step in result["train_step"].items():
        label = f"training step, {name.replace('_', '-')}"
        print(f"{label:<58} {'':>7} {step['images_per_s']:>10.0f}")
    print()
    print(f"loader / fastest training step: {result['loader_to_train_ratio']:.1f}x "
          f"(target >= {result['target_ratio']:.0f}x): {result['verdict']}")
    print(f"ours / torchvision with {s['default_workers']} worker(s): {result['ratio_to_torchvision']:.1f}x")
    jpeg = result["jpeg"]
    print(f"\nJPEG ImageFolder, {jpeg['images']} images of ~500x375, {jpeg['preset']} at {jpeg['size']} px, "
          f"batch {jpeg['batch_size']}:")
    for loader in jpeg["loaders"]:
        print(f"  {loader['pipeline']:<12} {loader['workers']} worker(s): {loader['images_per_s']:8.1f} images/s")
    verdict = "PASS" if jpeg["ratio_to_torchvision"] >= jpeg["target_ratio"] else "MISS"
    print(f"  ours / torchvision: {jpeg['ratio_to_torchvision']:.2f}x (target >= {jpeg['target_ratio']}x): {verdict}")


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
