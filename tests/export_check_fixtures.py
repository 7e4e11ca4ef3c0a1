"""What the OpenVINO and ExecuTorch check runners (``openvino_checks.py``, ``executorch_checks.py``) share: a tiny
checkpoint that records the run that trained it, a folder of images to predict on, the export of the checkpoint
by the CLI, and the figures they are checked against. The runners load the fixtures with
``pytest_plugins = ["export_check_fixtures"]`` and import the rest.
"""
from pathlib import Path

import pytest
import torch
from PIL import Image

from builders import write_weights
from conftest import CliResult, run_cli

CLASSES = 4
PREPROCESSING = dict(resize=32, crop=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3, in_chans=3)
SYNTHETIC = ["--dataset", "synthetic", "--synthetic-samples", "40", "--seed", "2"]  # no --image-size: the file's own
TRAINED_ON = dict(dataset="synthetic", synthetic_samples=40, seed=2, image_size=32)  # the checkpoint's run
# what every file exported from it records of that data (beside the card; eval --exported scores it there)
RECORD = dict(dataset="synthetic", data_path=None, classes=[f"c{k}" for k in range(CLASSES)], synthetic_samples=40,
              image_size=32, seed=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model whose outputs differ from image to image, with class names, preprocessing and the config of
    the run that trained it."""
    return write_weights(tmp_path_factory.mktemp("weights") / "tiny.pt", num_classes=CLASSES, responsive=True,
                         preprocessing=PREPROCESSING, trained_on=TRAINED_ON)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder of three noise images (40 x 36, RGB PNG)."""
    folder = tmp_path_factory.mktemp("images")
    for i in range(3):
        pixels = torch.randint(0, 256, (40, 36, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"img{i}.png")
    return folder


def export_checkpoint(checkpoint: Path, fmt: str, suffix: str) -> tuple[Path, CliResult]:
    """``mobilenetv3 export --format FMT`` of ``checkpoint`` beside it (``tiny<suffix>``), checked on synthetic
    validation images; the file and what the command said."""
    out = checkpoint.with_name(f"tiny{suffix}")
    result = run_cli("export", "--checkpoint", checkpoint, "--format", fmt, "--output", out, *SYNTHETIC[:2])
    assert result.returncode == 0, result.stderr
    return out, result
