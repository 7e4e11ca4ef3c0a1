"""--decode gpu: the workers read the files, the main process decodes a batch's JPEGs in one
torchvision.io.decode_jpeg call on a device and runs the CPU loader's steps there. The same code runs here with
device="cpu", checked against the CPU loader; tests/test_gpu.py checks it on a GPU.

Tolerances, measured on noise images and photographs at 32, 64 and 224 px: torchvision.io and PIL decode these
JPEGs identically (the same libjpeg-turbo; 0 levels apart), and the eval protocol's resize of a uint8 tensor rounds
differently from PIL's resize by at most 2 levels of 255 (1 at most sizes). In training the crop boxes and flips are
the same draws; PIL's box resize filters with the pixels just outside the box, the tensor path (as torchvision's
RandomResizedCrop on tensors) stays inside it, so the 2 pixels at the edges differ and the interior is within 2
levels (1.6 measured, colour jitter included).
"""
import logging
from pathlib import Path

import pytest
import torch

from mobilenetv3.data import build_loader, build_preset
from mobilenetv3.data.datasets import IMAGENET_STATS, image_folder
from mobilenetv3.data.gpu_decode import decode_images, is_jpeg
from mobilenetv3.data.images import load_image

from builders import tiny_flags, truncate, write_image
from conftest import run_cli

MEAN, STD = IMAGENET_STATS
CPU = torch.device("cpu")
LEVELS = torch.tensor(STD).view(1, 3, 1, 1) * 255  # normalised units -> levels of 255


def image_tree(root: Path, count: int = 10, png_every: int = 0, split: str = "train") -> Path:
    """``root/<split>/c{0,1}/*.jpg`` noise images of several sizes (every ``png_every``-th a PNG); returns root."""
    for i in range(count):
        png = png_every and i % png_every == png_every - 1
        write_image(root / split / f"c{i % 2}" / f"{i}.{'png' if png else 'jpg'}", "RGB", "PNG" if png else "JPEG",
                    size=(40 + 9 * i, 36 + 5 * i), seed=i)
    return root


def batches(data, preset: str, size: int, train: bool, device=None, **kwargs) -> list:
    recipe, pre = build_preset(preset, size, MEAN, STD, 3)
    return list(build_loader(data, recipe, pre, train=train, batch_size=4, workers=kwargs.pop("workers", 0), seed=5,
                             decode_device=device, **kwargs))


def levels_apart(cpu: list, device: list, border: int = 0) -> float:
    assert len(cpu) == len(device)
    edge = slice(border, -border or None)
    return max(((a.images - b.images) * LEVELS)[..., edge, edge].abs().max().item() for a, b in zip(cpu, device))


def test_batched_decoding_gives_the_images_pil_decodes(tmp_path):
    paths = [write_image(tmp_path / f"{mode}.jpg", mode, "JPEG", size=(45, 31), seed=i)
             for i, mode in enumerate(("RGB", "L", "CMYK"))]
    from torchvision.io import read_file
    from torchvision.transforms.v2.functional import pil_to_tensor

    encoded = [read_file(str(p)) for p in paths]
    assert all(is_jpeg(data) for data in encoded)
    decoded = decode_images(encoded, [True] * 3, "cpu")
    for path, image in zip(paths, decoded):
        expected = pil_to_tensor(load_image(str(path), 3))
        assert image.dtype == torch.uint8 and image.shape == (3, 31, 45)
        assert (image.int() - expected.int()).abs().max() <= 1  # the same libjpeg-turbo: 0 measured


@pytest.mark.parametrize("preset, size", [("seed-imagenet", 64), ("small", 32)])
def test_eval_batches_match_the_cpu_loader(tmp_path, preset, size):
    data = image_folder(image_tree(tmp_path), "train")
    cpu, device = batches(data, preset, size, False), batches(data, preset, size, False, CPU)
    assert all(torch.equal(a.labels, b.labels) for a, b in zip(cpu, device))
    assert levels_apart(cpu, device) <= 2


def test_train_batches_draw_the_same_crops_flips_jitter_and_mixup(tmp_path):
    data = image_folder(image_tree(tmp_path), "train")
    settings = dict(mixup_alpha=0.4, num_classes=2)
    cpu, device = (batches(data, "seed-imagenet", 64, True, dev, **settings) for dev in (None, CPU))
    assert all(torch.allclose(a.labels, b.labels) for a, b in zip(cpu, device))  # the same mixup weights
    assert levels_apart(cpu, device, border=2) <= 2


def test_a_worker_process_reads_the_files(tmp_path):
    data = image_folder(image_tree(tmp_path, count=8), "train")
    in_process, in_worker = (batches(data, "seed-imagenet", 32, False, CPU, workers=w) for w in (0, 1))
    assert all(torch.equal(a.images, b.images) for a, b in zip(in_process, in_worker))


def test_other_formats_are_decoded_on_the_cpu_and_said_once(tmp_path, caplog):
    data = image_tree(tmp_path, png_every=3)
    data = image_folder(data, "train")
    caplog.set_level(logging.INFO, logger="mobilenetv3")
    recipe, pre = build_preset("seed-imagenet", 32, MEAN, STD, 3)
    loader = build_loader(data, recipe, pre, train=False, batch_size=4, workers=0, decode_device=CPU)
    device = list(loader) + list(loader)
    said = [r for r in caplog.records if "not plain JPEGs" in r.getMessage()]
    assert len(said) == 1 and ".png" in said[0].getMessage()
    assert levels_apart(batches(data, "seed-imagenet", 32, False) * 2, device) <= 2


def test_an_unreadable_jpeg_is_named_or_skipped(tmp_path):
    root = image_tree(tmp_path, count=6)
    bad = truncate(root / "train" / "c1" / "3.jpg")
    data = image_folder(root, "train")
    with pytest.raises(ValueError, match="3.jpg: unreadable image"):
        batches(data, "seed-imagenet", 32, False, CPU)
    skipped = batches(data, "seed-imagenet", 32, False, CPU, skip_bad_images=True)
    assert sum(b.skipped for b in skipped) == 1 and sum(len(b.labels) for b in skipped) == 5
    bad.unlink()
    with pytest.raises(ValueError, match="3.jpg: unreadable image"):  # listed, then gone: read_file fails
        batches(data, "seed-imagenet", 32, False, CPU)


@pytest.mark.parametrize("flags, named", [
    (dict(dataset="synthetic"), "--decode gpu decodes the files of an ImageFolder"),
    (dict(dataset="imagenet", device="cpu"), "--decode gpu needs a CUDA device"),
])
def test_decode_gpu_without_image_files_or_cuda_is_one_line(tmp_path, flags, named):
    image_tree(tmp_path / "data", count=8)
    image_tree(tmp_path / "data", count=4, split="val")
    settings = dict(flags, decode="gpu", data_path=str(tmp_path / "data")) if flags["dataset"] == "imagenet" \
        else dict(flags, decode="gpu")
    result = run_cli(*tiny_flags(tmp_path / "run", **settings))
    assert result.returncode == 2 and named in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
