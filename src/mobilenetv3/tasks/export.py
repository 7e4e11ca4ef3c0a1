"""The export task: weights (any format) -> an exported file, verified in its runtime on random and real images.

With a dataset at hand (the training run's, or the one given), the file is also checked on real
validation images, INT8 is calibrated on training images, and INT8's accuracy is scored next to fp32's.
Both sets of images are drawn at random (seeded) from their split: in file order, an ImageFolder's first
images are all one class.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..build import build_dataset_split
from ..config import Config, DataConfig
from ..data import Dataset, check_labels, draw_sample, eval_loader
from ..data.transforms import Preprocessing
from ..engine import evaluate
from ..errors import UsageError
from ..export import FORMATS, INT8_FORMATS, KEEP_FP32, SUFFIXES, export_verified, int8_source_path, open_exported
from ..files import check_writable
from ..weights import model_from_weights, read_weights

SPLIT_NAMES = {"train": "training", "val": "validation"}


@dataclass
class ImageSample:
    """Images drawn at random, without replacement, from a dataset's split (all of it when it holds no more)."""

    dataset: str
    source: str
    split: str  # "train" or "val"
    images: int  # drawn
    of: int  # in the split
    seed: int

    def describe(self) -> str:
        """``"128 of 2,000 validation images, drawn at random with seed 0"``."""
        split = SPLIT_NAMES[self.split]
        if self.images == self.of:
            return f"all {self.of:,} {split} images"
        return f"{self.images:,} of {self.of:,} {split} images, drawn at random with seed {self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExportResult:
    """The file written and how it compared with PyTorch (``max_abs_diff``, ``top1_agreement``, ``compared``)."""

    format: str
    path: str
    softmax: bool
    random: dict  # on random inputs (batch 1 and 3)
    real: Optional[dict] = None  # on real validation images, when a dataset was at hand
    fp32_path: Optional[str] = None  # INT8: the fp32 model it was quantised from
    accuracy: Optional[dict] = None  # INT8: dataset, count, int8_top1, fp32_top1
    real_sample: Optional[ImageSample] = None  # the validation images behind ``real``
    calibration_sample: Optional[ImageSample] = None  # INT8: the training images it was calibrated on
    delegation: Optional[dict] = None  # ExecuTorch: operators run by XNNPACK and by the portable runtime


@dataclass
class ExportData:
    """The real images an export is checked (and INT8 calibrated) with, batched, and where they came from."""

    val: Optional[Dataset] = None  # the whole validation split (INT8's accuracy)
    real: tuple = ()  # batches of validation images to compare with PyTorch
    real_sample: Optional[ImageSample] = None
    calibration: Optional[list] = None  # batches of training images (INT8)
    calibration_sample: Optional[ImageSample] = None


def export_model(checkpoint: str, *, format: str = "onnx", output: Optional[str] = None, softmax: bool = False,
                 ema: bool = False, calibration_images: int = 300, verify_images: int = 128, sample_seed: int = 0,
                 use_dataset: bool = True, keep_fp32: Optional[Sequence[str]] = None, **settings) -> ExportResult:
    """Export ``checkpoint`` (any weights format) as ``format`` and verify the file in its runtime.

    ``output`` defaults to a file beside the checkpoint. ``settings`` are config fields over the training
    run's own config (``dataset``, ``data_path``, ``batch_size``, ``workers``, ``image_size``): the data used
    to verify on real images and to calibrate INT8 (``use_dataset=False``: random inputs only). The file is
    verified on ``verify_images`` validation images (0: all of them) and INT8 calibrated on
    ``calibration_images`` training images, each drawn at random with ``sample_seed``. ``keep_fp32``: the layer
    kinds ``openvino-int8`` leaves in fp32 (``export.KEEP_FP32``; default ``export.DEFAULT_KEEP_FP32``). An
    OpenVINO IR is the ``.xml`` path; its weights go to the ``.bin`` beside it. An ExecuTorch program is a
    ``.pte``; ``executorch-int8`` writes the fp32 program beside it too (its accuracy is compared with it).
    """
    if format not in FORMATS:
        raise UsageError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if calibration_images < 1 or verify_images < 0:
        raise UsageError("--calibration-images must be at least 1 and --verify-images at least 0 (0: all)")
    if keep_fp32 is not None and format != "openvino-int8":
        raise UsageError("--keep-fp32 is a setting of --format openvino-int8")
    unknown = sorted(set(keep_fp32 or ()) - set(KEEP_FP32))
    if unknown:
        raise UsageError(f"cannot keep {', '.join(unknown)} in fp32; choose from: {', '.join(KEEP_FP32)} (or none)")
    weights = read_weights(checkpoint, ema=ema)
    model = model_from_weights(weights)
    pre = Preprocessing.from_dict(model.preprocessing)
    source = Path(checkpoint)
    path = Path(output) if output else source.with_name(source.stem + SUFFIXES[format])
    check_writable(path)  # before the data is read and the model exported
    if format.startswith("openvino"):
        for ir in (path, int8_source_path(path)) if format in INT8_FORMATS else (path,):
            _check_ir_output(ir, source)
    if format.startswith("executorch"):
        _check_pte_output(path, int8_source_path(path) if format in INT8_FORMATS else None)
    config = Config.from_dict(weights.checkpoint.config) if weights.checkpoint and weights.checkpoint.config \
        else Config()
    config.update(settings, source="flag")
    d = config.data
    has_data = use_dataset and (d.dataset in ("fashion-mnist", "synthetic") or d.data_path)
    data = _export_data(config, model.num_classes, pre, format in INT8_FORMATS, calibration_images, verify_images,
                        sample_seed) if has_data else ExportData()
    size = d.image_size if "image_size" in settings else pre.crop
    example = torch.randn(2, model.in_chans, size, size)
    calibration_info = data.calibration_sample.to_dict() if data.calibration_sample else None
    figures = export_verified(model, format, path, example, softmax=softmax, real_inputs=data.real,
                              calibration=data.calibration, calibration_info=calibration_info, keep_fp32=keep_fp32)
    result = ExportResult(format, figures["path"], softmax, figures["random"], figures.get("real"),
                          figures.get("fp32_path"), real_sample=data.real_sample,
                          calibration_sample=data.calibration_sample, delegation=figures.get("delegation"))
    if format in INT8_FORMATS and data.val is not None:
        result.accuracy = _int8_accuracy(result, data.val, pre, config)
    return result


def _check_ir_output(path: Path, source: Path) -> None:
    """An IR is an ``.xml`` and the ``.bin`` of the same name, which must be writable and must not be the
    weights being exported (``pytorch_model.bin`` -> ``pytorch_model.xml`` would overwrite them)."""
    if path.suffix != ".xml":
        raise UsageError(f"an OpenVINO IR is an .xml file (and its .bin): {path} does not end in .xml")
    weights = path.with_suffix(".bin")
    if weights.resolve() == source.resolve():
        raise UsageError(f"the IR's weights file {weights} would overwrite {source}: give --output NAME.xml")
    check_writable(weights)


def _check_pte_output(path: Path, fp32_path: Optional[Path]) -> None:
    """A ``.pte`` (the runtime is picked by suffix when it is run); ``executorch-int8``'s fp32 program beside it
    must be writable too, before either is exported."""
    if path.suffix != ".pte":
        raise UsageError(f"an ExecuTorch program is a .pte file: {path} does not end in .pte")
    if fp32_path is not None:
        check_writable(fp32_path)


def _export_data(config: Config, num_classes: int, pre: Preprocessing, int8: bool, calibration_images: int,
                 verify_images: int = 128, seed: int = 0) -> ExportData:
    """Validation images to verify on and (INT8) training images to calibrate with, each drawn at random."""
    d = config.data
    val = build_dataset_split(d, "val", config.run.seed, num_classes)
    check_labels(val, num_classes)
    real, real_sample = _sample_batches(val, "val", verify_images or len(val), seed, d, pre)
    data = ExportData(val, tuple(real), real_sample)
    if int8:
        train = build_dataset_split(d, "train", config.run.seed, num_classes)
        data.calibration, data.calibration_sample = _sample_batches(train, "train", calibration_images, seed, d, pre)
    return data


def _sample_batches(split: Dataset, name: str, count: int, seed: int, d: DataConfig,
                    pre: Preprocessing) -> tuple[list[torch.Tensor], ImageSample]:
    """``count`` images of ``split`` drawn at random with ``seed``, in eval-protocol batches; how they were drawn."""
    sample = draw_sample(split, count, seed)
    batches = [b.images for b in eval_loader(sample, pre, batch_size=min(d.batch_size, 64))]
    return batches, ImageSample(d.dataset, split.source, name, len(sample), len(split), seed)


def _int8_accuracy(result: ExportResult, val, pre: Preprocessing, config: Config) -> dict:
    """Top-1 of the INT8 file and of the fp32 file it came from, on the whole validation split."""
    scores = {}
    for name, path in (("fp32", result.fp32_path), ("int8", result.path)):
        model = open_exported(path)
        loader = eval_loader(val, pre, batch_size=config.data.batch_size)
        scores[name] = evaluate(model, loader, num_classes=model.num_classes, device=torch.device("cpu"))
    return dict(dataset=config.data.dataset, count=scores["int8"]["count"], int8_top1=scores["int8"]["top1"],
                fp32_top1=scores["fp32"]["top1"])
