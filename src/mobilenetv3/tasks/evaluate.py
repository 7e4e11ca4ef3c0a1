"""The evaluation task: score weights (any format) or an exported ONNX model on a validation split.

Every sample is scored exactly once, in one process or under ``torchrun`` (the same numbers). Rank 0
writes the report: ``report.json``, the confusion matrix as CSV and PNG.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..build import build_dataset_split, build_eval_loader, device_type, pick_device, preprocessing_for
from ..config import Config, validate
from ..data import check_labels
from ..data.transforms import Preprocessing
from ..dist import destroy_distributed, init_distributed
from ..engine import evaluate as score
from ..errors import RunError, UsageError
from ..files import file_sha256
from ..reports import write_eval_report
from ..weights import model_from_weights, read_weights

PREPROCESSING_FIELDS = ("transform", "image_size", "eval_resize", "interpolation")


@dataclass
class EvalResult:
    """Top-1/top-k over every sample, how they were measured, and where the report went."""

    top1: float
    top5: float  # top-k with k = min(5, classes)
    topk: int
    loss: float
    count: int  # samples scored
    skipped: int  # unreadable images left out (with skip_bad_images)
    per_class_accuracy: list[float]
    classes: list[str]
    time: float
    weights: str
    weights_sha256: str
    ema: bool
    runtime: str  # "pytorch" or "onnxruntime"
    dataset: str
    data_path: str
    dataset_size: int
    split: str
    preprocessing: dict
    world_size: int
    reports: dict = field(default_factory=dict)  # json, csv, png paths
    confusion: Optional[torch.Tensor] = None  # [true, predicted] counts

    def to_dict(self) -> dict:
        """Everything but the confusion matrix (which is in the report's CSV), as plain data."""
        return {k: v for k, v in asdict(self).items() if k != "confusion"}


@dataclass
class _Scored:
    """What is evaluated: a model, the config of the run that made it, where it came from."""

    model: nn.Module
    config: Config
    source: str
    runtime: str


def evaluate(weights: Optional[str] = None, *, onnx: Optional[str] = None, ema: bool = False,
             out_dir: Optional[str] = None, **settings) -> Optional[EvalResult]:
    """Score ``weights`` (any format ``load_model`` reads) or an exported ``onnx`` model on the dataset's
    validation split. ``settings`` are config fields (``dataset``, ``data_path``, ``batch_size``, ``device``,
    ...) over the training run's own config when the weights carry one. The preprocessing is the one saved
    with the model unless a preprocessing setting (``transform``, ``image_size``, ``eval_resize``,
    ``interpolation``) is given. Returns ``None`` in the processes other than rank 0.
    """
    scored = _open(weights, onnx, ema, settings)
    config = scored.config
    info = init_distributed(device_type(config.run.device))
    try:
        device = pick_device(config.run.device, info)
        model = scored.model.to(device)
        val = build_dataset_split(config.data, "val", config.run.seed, model.num_classes)
        check_labels(val, model.num_classes)
        preprocessing = _preprocessing(model, config, val, overridden=any(k in settings for k in PREPROCESSING_FIELDS))
        loader = build_eval_loader(config.data, val, preprocessing, info, pin_memory=device.type == "cuda")
        metrics = score(model, loader, num_classes=model.num_classes, device=device)
        expected = len(val) - metrics["skipped"]
        if metrics["count"] != expected:
            raise RunError(f"evaluation scored {metrics['count']} samples, the dataset has {expected}")
        if not info.is_main:
            return None
        classes = getattr(model, "classes", None) or val.classes
        if len(classes) != model.num_classes:
            classes = [str(i) for i in range(model.num_classes)]
        result = EvalResult(**{k: metrics[k] for k in ("top1", "top5", "topk", "loss", "count", "skipped",
                                                       "per_class_accuracy", "time", "confusion")},
                            classes=list(classes), weights=scored.source, weights_sha256=file_sha256(scored.source),
                            ema=ema, runtime=scored.runtime, dataset=config.data.dataset, data_path=str(val.source),
                            dataset_size=len(val), split="val", preprocessing=preprocessing.to_dict(),
                            world_size=info.world_size)
        out = Path(out_dir) if out_dir else Path(scored.source).parent / f"eval-{config.data.dataset}"
        meta = {k: v for k, v in result.to_dict().items() if k in _META}
        result.reports = write_eval_report(out, metrics, result.classes, meta)
        return result
    finally:
        destroy_distributed()


_META = ("weights", "weights_sha256", "ema", "runtime", "dataset", "data_path", "dataset_size", "split",
         "preprocessing", "world_size")


def _open(weights: Optional[str], onnx: Optional[str], ema: bool, settings: dict) -> _Scored:
    """Read the model once; its training config (when it has one) under the settings given now."""
    if not weights and not onnx:
        raise UsageError("give --checkpoint PATH (or --onnx FILE)")
    saved = None
    if onnx:
        from ..export import OnnxModule

        model: nn.Module = OnnxModule(onnx)
        source, runtime = str(onnx), "onnxruntime"
    else:
        read = read_weights(weights, ema=ema)
        try:
            model = model_from_weights(read)
        except ValueError as err:
            raise UsageError(f"{weights}: {err}") from None
        saved = read.checkpoint.config if read.checkpoint is not None else None
        source, runtime = str(weights), "pytorch"
    config = Config.from_dict(saved) if saved else Config()
    config.update(settings, source="flag")
    validate(config)
    return _Scored(model, config, source, runtime)


def _preprocessing(model: nn.Module, config: Config, val, overridden: bool) -> Preprocessing:
    """The protocol asked for with the settings, else the one saved with the model, else the config's."""
    saved = getattr(model, "preprocessing", None)
    if overridden or not saved:
        preprocessing = preprocessing_for(config.data, val, model.in_chans)
    else:
        preprocessing = Preprocessing.from_dict(saved)
    if preprocessing.in_chans != model.in_chans:
        raise UsageError(f"the model takes {model.in_chans}-channel images, the preprocessing gives "
                         f"{preprocessing.in_chans}")
    return preprocessing
