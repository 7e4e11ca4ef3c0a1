"""The export task: weights (any format) -> an exported file, verified in its runtime on random and real images.

With a dataset at hand (the training run's, or the one given), the file is also checked on real
validation images, INT8 is calibrated on training images, and INT8's accuracy is scored next to fp32's.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..build import build_dataset_split
from ..config import Config
from ..data import check_labels, eval_loader
from ..data.transforms import Preprocessing
from ..engine import evaluate
from ..errors import UsageError
from ..export import FORMATS, SUFFIXES, OnnxModule, export_verified
from ..weights import model_from_weights, read_weights

VERIFY_BATCHES = 2


@dataclass
class ExportResult:
    """The file written and how it compared with PyTorch (``max_abs_diff``, ``top1_agreement``, ``compared``)."""

    format: str
    path: str
    softmax: bool
    random: dict  # on random inputs (batch 1 and 3)
    real: Optional[dict] = None  # on real validation images, when a dataset was at hand
    fp32_path: Optional[str] = None  # onnx-int8: the fp32 model it was quantised from
    accuracy: Optional[dict] = None  # onnx-int8: dataset, count, int8_top1, fp32_top1


def export_model(checkpoint: str, *, format: str = "onnx", output: Optional[str] = None, softmax: bool = False,
                 ema: bool = False, calibration_images: int = 300, use_dataset: bool = True,
                 **settings) -> ExportResult:
    """Export ``checkpoint`` (any weights format) as ``format`` and verify the file in its runtime.

    ``output`` defaults to a file beside the checkpoint. ``settings`` are config fields over the training
    run's own config (``dataset``, ``data_path``, ``batch_size``, ``workers``, ``image_size``): the data used
    to verify on real images and to calibrate INT8 (``use_dataset=False``: random inputs only).
    """
    if format not in FORMATS:
        raise UsageError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    weights = read_weights(checkpoint, ema=ema)
    model = model_from_weights(weights)
    pre = Preprocessing.from_dict(model.preprocessing)
    source = Path(checkpoint)
    path = Path(output) if output else source.with_name(source.stem + SUFFIXES[format])
    config = Config.from_dict(weights.checkpoint.config) if weights.checkpoint and weights.checkpoint.config \
        else Config()
    config.update(settings, source="flag")
    d = config.data
    has_data = use_dataset and (d.dataset in ("fashion-mnist", "synthetic") or d.data_path)
    val = real = calibration = None
    if has_data:
        val, real, calibration = _export_data(config, model.num_classes, pre, format == "onnx-int8",
                                              calibration_images)
    size = settings.get("image_size") or pre.crop
    example = torch.randn(2, model.in_chans, size, size)
    figures = export_verified(model, format, path, example, softmax=softmax, real_inputs=real or (),
                              calibration=calibration)
    result = ExportResult(format, figures["path"], softmax, figures["random"], figures.get("real"),
                          figures.get("fp32_path"))
    if format == "onnx-int8" and val is not None:
        result.accuracy = _int8_accuracy(result, val, pre, config)
    return result


def _export_data(config: Config, num_classes: int, pre: Preprocessing, int8: bool, calibration_images: int):
    """A few real validation batches to verify on, and (INT8) training images to calibrate with."""
    d = config.data
    val = build_dataset_split(d, "val", config.run.seed, num_classes)
    check_labels(val, num_classes)
    batch = min(d.batch_size, 64)
    real = [b.images for b in itertools.islice(eval_loader(val, pre, batch_size=batch), VERIFY_BATCHES)]
    calibration = None
    if int8:
        train = build_dataset_split(d, "train", config.run.seed, num_classes)
        count = max(1, -(-calibration_images // batch))
        calibration = [b.images for b in itertools.islice(eval_loader(train, pre, batch_size=batch), count)]
    return val, real, calibration


def _int8_accuracy(result: ExportResult, val, pre: Preprocessing, config: Config) -> dict:
    """Top-1 of the INT8 file and of the fp32 file it came from, on the whole validation split."""
    scores = {}
    for name, path in (("fp32", result.fp32_path), ("int8", result.path)):
        model = OnnxModule(path)
        loader = eval_loader(val, pre, batch_size=config.data.batch_size)
        scores[name] = evaluate(model, loader, num_classes=model.num_classes, device=torch.device("cpu"))
    return dict(dataset=config.data.dataset, count=scores["int8"]["count"], int8_top1=scores["int8"]["top1"],
                fp32_top1=scores["fp32"]["top1"])
