"""Fine-tuning from torchvision-layout weights on an ImageFolder: the figures of the README's "Fine-tuning".

The source is torchvision's own ``mobilenet_v3_small`` (its code, its BatchNorm momentum 0.01 and eps 1e-3),
trained in a bare torchvision loop on Fashion-MNIST's first five classes, saved as a plain state dict. The
target is an ImageFolder of PNG files of the other five classes. ``mobilenetv3.train(pretrained=...)`` then
fine-tunes it with the project's BatchNorm momentum (0.1, the default) and with torchvision's 0.01 (what the
project did before), next to training from scratch; each is scored on the ImageFolder's val split.

    python benchmarks/finetune.py --out /tmp/finetune        # about 10 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import mobilenetv3
from mobilenetv3.benchmarking import machine_info
from mobilenetv3.data import build_dataset

SOURCE_CLASSES, TARGET_CLASSES = range(0, 5), range(5, 10)


def rgb32(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalised float (N, 3, 32, 32), as torchvision's ImageNet-style input."""
    x = F.interpolate(images[:, None].float() / 255, size=32, mode="bilinear", align_corners=False)
    return ((x - 0.286) / 0.353).expand(-1, 3, -1, -1)


def train_torchvision_source(path: Path, epochs: int) -> dict:
    """torchvision's mobilenet_v3_small on classes 0-4, in the plain loop a torchvision user writes."""
    import torchvision

    train = build_dataset("fashion-mnist", None, "train")
    keep = torch.isin(train.labels, torch.tensor(list(SOURCE_CLASSES)))
    images, labels = train.images[keep].squeeze(1), train.labels[keep]
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=len(SOURCE_CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    steps, start = 0, time.perf_counter()
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels)).split(128):
            loss = F.cross_entropy(model(rgb32(images[batch])), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    torch.save(model.state_dict(), path)
    return dict(images=len(labels), epochs=epochs, steps=steps, seconds=time.perf_counter() - start)


def write_image_folder(root: Path, per_class_train: int, per_class_val: int, side: int = 28, mode: str = "L",
                       fmt: str = "PNG") -> dict:
    """Files of classes 5-9: ``root/{train,val}/<class name>/<n>.<ext>`` (by default grayscale 28 px PNG, the
    images as they are; else resized to ``side`` px by Pillow, converted to ``mode``, saved as ``fmt``). Training
    images come from the training split, validation images from the test split."""
    from PIL import Image

    counts = {}
    for split, per_class in (("train", per_class_train), ("val", per_class_val)):
        data = build_dataset("fashion-mnist", None, split)
        for label in TARGET_CLASSES:
            folder = root / split / data.classes[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            for n, index in enumerate((data.labels == label).nonzero().flatten()[:per_class].tolist()):
                image = Image.fromarray(data.images[index, 0].numpy()).convert(mode)
                if side != image.width:
                    image = image.resize((side, side), Image.LANCZOS if side < image.width else Image.BILINEAR)
                suffix = "jpg" if fmt == "JPEG" else fmt.lower()
                image.save(folder / f"{n}.{suffix}", fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        counts[split] = per_class * len(TARGET_CLASSES)
    return counts


def finetune(folder: Path, out: Path, name: str, epochs: int, **settings) -> dict:
    start = time.perf_counter()
    run = mobilenetv3.train(None, dataset="imagenet", data_path=str(folder), model="mobilenetv3_small",
                            image_size=32, transform="small", batch_size=64, epochs=epochs, lr=0.05,
                            warmup_epochs=0.2, progress=False, run_dir=str(out / name), **settings)
    return dict(run=name, settings={k: v for k, v in settings.items() if k != "pretrained"},
                pretrained="pretrained" in settings, top1=run.top1, top5=run.top5, images=run.val_count,
                seconds=time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the weights, the ImageFolder, the runs")
    parser.add_argument("--source-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    parser.add_argument("--per-class", type=int, default=1000, help="training images per class of the ImageFolder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    source = train_torchvision_source(args.out / "tv_small.pth", args.source_epochs)
    counts = write_image_folder(args.out / "folder", args.per_class, 200)
    weights = str(args.out / "tv_small.pth")
    rows = [finetune(args.out / "folder", args.out, "finetune", args.epochs, pretrained=weights),
            finetune(args.out / "folder", args.out, "finetune-bn-momentum-0.01", args.epochs, pretrained=weights,
                     bn_momentum=0.01),
            finetune(args.out / "folder", args.out, "scratch", args.epochs)]
    result = dict(machine=machine_info(), source=source, folder=counts, rows=rows)
    (args.out / "finetune.json").write_text(json.dumps(result, indent=2))
    for row in rows:
        print(f"{row['run']:<28} top-1 {100 * row['top1']:.2f}%  ({row['images']} val images, {row['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
