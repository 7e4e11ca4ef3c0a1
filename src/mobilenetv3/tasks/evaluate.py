"""The evaluation task: score weights (any format) or an exported model (ONNX, OpenVINO IR, ExecuTorch .pte) on a
validation split.

Every sample is scored exactly once, in one process or under ``torchrun`` (the same numbers). The
dataset's classes are checked against the weights' before anything is scored. ``write_report`` (rank 0)
writes ``report.json`` and the confusion matrix as CSV and PNG; ``evaluate`` calls it last unless told not
to, so a caller (the CLI) can show the metrics before the report is written, or fails to be.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..build import build_dataset_split, build_eval_loader, device_type, pick_device, preprocessing_for
from ..config import FIELD_SECTION, Config, DataConfig, apply_over_run, validate
from ..data import check_labels, check_scored_once
from ..data.classes import class_mismatch, names_are_indices
from ..data.transforms import Preprocessing
from ..dist import destroy_distributed, init_distributed
from ..engine import evaluate as score
from ..errors import SettingError, UsageError
from ..export import check_pytorch_options, exported_kind, open_exported
from ..export.formats import kinds
from ..files import file_sha256
from ..progress import tracked
from ..reports import write_eval_report
from ..weights import model_from_weights, read_weights
from .common import is_exported, renamed, required_source

PREPROCESSING_FIELDS = ("transform", "image_size", "eval_resize", "interpolation")
# The seed's eval protocol per data set (configs/cifar10-cpu.yaml, configs/imagenet-gpu.yaml): what weights
# that carry no preprocessing of their own are scored with.
SEED_PROTOCOLS = {"cifar10": ("seed-cifar10", 224), "imagenet": ("seed-imagenet", 224)}


@dataclass
class EvalResult:
    """Top-1/top-k over every sample, how they were measured, and where the report goes."""

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
    runtime: str  # "pytorch", "onnxruntime", "openvino", "executorch", "torchscript" or "torch.export"
    precision: str  # what it ran in: "fp32", "bf16" (OpenVINO), "int8" (a quantised file)
    dataset: str
    data_path: str
    dataset_size: int
    split: str
    preprocessing: dict
    preprocessing_source: str  # which protocol and why: "seed-cifar10 protocol (the weights carry none)"
    world_size: int
    report_dir: str
    notes: list[str] = field(default_factory=list)  # what was converted or assumed, one line each
    reports: dict = field(default_factory=dict)  # json, csv, png paths, once written
    confusion: Optional[torch.Tensor] = None  # [true, predicted] counts

    def to_dict(self) -> dict:
        """Everything but the confusion matrix (which is in the report's CSV), as plain data."""
        return {k: v for k, v in asdict(self).items() if k != "confusion"}


@dataclass
class _Scored:
    """What is evaluated: a model, the config it is scored under, what its file says about it."""

    model: nn.Module
    config: Config
    source: str
    runtime: str
    precision: str
    kind: str  # what the file is: "weights", "ONNX file", "OpenVINO IR", "ExecuTorch program"
    classes: Optional[list]  # as the file has them (None: it has none)
    preprocessing: Optional[dict]  # as the file has it (None: it has none; not the registry default)
    trained_config: bool  # the file carries its training run's config
    ema: bool
    dataset_from: str = "default"  # "given" (flags), "recorded" (the run's config, an exported file's record), or
    #                                "default" (neither: the default dataset is a guess)
    names_known: bool = False  # its class names are those of the data it was trained on (recorded with it)


def evaluate(source: Optional[str] = None, *, runtime: Optional[str] = None, precision: Optional[str] = None,
             ema: bool = False, out_dir: Optional[str] = None, by_index: bool = False, report: bool = True,
             weights: Optional[str] = None, onnx: Optional[str] = None, exported: Optional[str] = None,
             **settings) -> Optional[EvalResult]:
    """Score ``source`` on the dataset's validation split: weights (any format ``load_model`` reads) or an exported
    model (``.onnx``, an OpenVINO IR ``.xml``, an ExecuTorch ``.pte``, a TorchScript ``.torchscript.pt`` or a
    ``.pt2``; ``weights``, ``onnx`` and ``exported`` are the older names). An
    exported file runs in its own runtime unless ``runtime="openvino"`` (an ONNX file in OpenVINO); ``precision``
    is ``fp32`` (default) or ``bf16`` (OpenVINO, on a CPU with native bf16); the result says which ran.
    ``settings`` are config fields (``dataset``, ``data_path``, ``batch_size``, ``device``, ...) over the training
    run's own config when the weights carry one; ``skip_bad_images`` is only ever the one given here.

    The dataset's classes must be the weights' (their count, and their names where both have names that
    are more than indices); ``by_index=True`` scores dataset label i as the model's class i anyway. The
    preprocessing is the one saved with the model unless a preprocessing setting (``transform``,
    ``image_size``, ``eval_resize``, ``interpolation``) is given; weights without one get the data set's
    seed protocol (``SEED_PROTOCOLS``) or, for other data sets, the config's. The report goes to ``out_dir``
    (default: ``default_report_dir``, one folder per file scored); ``report=False`` leaves it to ``write_report``.
    Returns ``None`` in the processes other than rank 0.
    """
    source = renamed("evaluate", "source", source, weights=weights, onnx=onnx, exported=exported)
    source = required_source(source, "the weights or the exported model to score")
    scored = _open(source, ema, settings, runtime, precision)
    report_dir = Path(out_dir) if out_dir else default_report_dir(scored.source, scored.config.data.dataset, ema,
                                                                  runtime, precision)
    info = init_distributed(device_type(scored.config.run.device))
    try:
        result = _score(scored, info, by_index, [k for k in PREPROCESSING_FIELDS if k in settings], report_dir)
    finally:
        destroy_distributed()
    if result is not None and report:
        write_report(result)
    return result


def default_report_dir(source: str, dataset: str, ema: bool = False, runtime: Optional[str] = None,
                       precision: Optional[str] = None) -> Path:
    """``eval-<dataset>-<file name>`` beside the file scored (``-ema``, ``-<runtime>``, ``-<precision>`` added
    when asked for): the reports of each file, format and runtime compared side by side, none over another."""
    asked = ["ema"] * ema + [value for value in (runtime, precision) if value]
    return Path(source).parent / "-".join([f"eval-{dataset}", Path(source).name, *asked])


def write_report(result: EvalResult) -> dict:
    """Write ``result``'s ``report.json``, ``confusion.csv`` and ``confusion.png`` into ``result.report_dir``;
    returns their paths (also set as ``result.reports``). A folder that cannot be written is a ``UsageError``."""
    metrics = {k: getattr(result, k) for k in ("count", "top1", "top5", "topk", "loss", "skipped",
                                               "per_class_accuracy", "confusion")}
    meta = {k: v for k, v in result.to_dict().items() if k in _META}
    out = Path(result.report_dir)
    try:
        result.reports = write_eval_report(out, metrics, result.classes, meta)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise SettingError("out_dir", f"{out}: cannot write the report to this folder ({reason}: "
                                      f"{err.filename or out}); give a folder that can be written") from None
    return result.reports


_META = ("weights", "weights_sha256", "ema", "runtime", "precision", "dataset", "data_path", "dataset_size",
         "split", "preprocessing", "preprocessing_source", "notes", "world_size")


def _score(scored: _Scored, info, by_index: bool, asked: list[str], report_dir: Path) -> Optional[EvalResult]:
    """Check the data against the model, score every sample once; the result on rank 0 (report not written)."""
    config = scored.config
    device = pick_device(config.run.device, info)
    model = scored.model.to(device)
    val = build_dataset_split(config.data, "val", config.run.seed, model.num_classes)
    check_labels(val, model.num_classes, f"the model has {model.num_classes} classes: score it on a dataset of "
                                         "those classes, with --dataset and --data-path")
    classes, notes = _class_names(scored, model.num_classes, val, by_index)
    preprocessing, source = _preprocessing(scored, config.data, val, model.in_chans, asked)
    notes += _channel_notes(val.channels, model.in_chans)
    loader = build_eval_loader(config.data, val, preprocessing, info, pin_memory=device.type == "cuda")
    batches = tracked(loader, len(loader), f"eval {config.data.dataset} val", enabled=info.is_main)
    metrics = score(model, batches, num_classes=model.num_classes, device=device)
    check_scored_once(metrics, val, "evaluation")
    if not info.is_main:
        return None
    return EvalResult(**{k: metrics[k] for k in ("top1", "top5", "topk", "loss", "count", "skipped",
                                                 "per_class_accuracy", "time", "confusion")},
                      classes=classes, weights=scored.source, weights_sha256=file_sha256(scored.source),
                      ema=scored.ema, runtime=scored.runtime, precision=scored.precision,
                      dataset=config.data.dataset, data_path=str(val.source), dataset_size=len(val), split="val",
                      preprocessing=preprocessing.to_dict(),
                      preprocessing_source=source, world_size=info.world_size, report_dir=str(report_dir),
                      notes=notes)


def _open(source: str, ema: bool, settings: dict, runtime: Optional[str] = None,
          precision: Optional[str] = None) -> _Scored:
    """Read the model once; its training config (when it has one) under the settings given now."""
    saved, record = None, None
    if is_exported(source):
        model: nn.Module = open_exported(source, runtime, precision)
        classes, preprocessing = model.classes, model.preprocessing
        record = model.dataset  # the data it was trained on, as export recorded it (None: an older file)
        runtime, precision = model.runtime, model.precision
        kind = kinds()[exported_kind(Path(source))].what.split(" ", 1)[1]  # "ONNX model", "OpenVINO IR", ...
    else:
        check_pytorch_options(runtime, precision)
        read = read_weights(source, ema=ema)
        try:
            model = model_from_weights(read)
        except ValueError as err:
            raise UsageError(f"{source}: {err}") from None
        saved = read.checkpoint.config if read.checkpoint is not None else None
        classes, preprocessing = read.classes, read.preprocessing
        runtime, precision, kind = "pytorch", "fp32", "weights"
    config = Config.from_dict(saved) if saved else Config()
    config.data.skip_bad_images = False  # an evaluation setting: the eval command's own, never the training run's
    config.data.decode = "cpu"  # the training run's --decode gpu would tie evaluation to a GPU
    if record:
        config.update(_recorded_settings(record), source=f"{source}'s dataset record")
    apply_over_run(config, settings)
    validate(config)
    dataset_from = "given" if "dataset" in settings else "recorded" if saved or record else "default"
    return _Scored(model, config, source, runtime, precision, kind, classes, preprocessing,
                   trained_config=bool(saved), ema=ema, dataset_from=dataset_from, names_known=bool(saved or record))


def _recorded_settings(record: dict) -> dict:
    """The settings an exported file's dataset record gives (``dataset``, ``data_path``; synthetic data: what
    makes its images), as a checkpoint's training config gives them; its class names are checked, not set."""
    return {key: value for key, value in record.items() if key in FIELD_SECTION and value is not None}


# ------------------------------------------------------------------------------------------ classes
def _class_names(scored: _Scored, num_classes: int, val, by_index: bool) -> tuple[list[str], list[str]]:
    """The class names to report and the notes to make, once the dataset's classes are checked against the
    weights' (``data.class_mismatch``): a class-count or class-name mismatch is a ``UsageError`` unless
    ``by_index``; on the default dataset of a file that records none, always (it was a guess). The names are the
    weights' unless they only number classes the dataset names."""
    data = [str(name) for name in val.classes]
    fits = scored.classes is not None and len(scored.classes) == num_classes
    named = [str(name) for name in scored.classes] if fits else None
    guessed = scored.dataset_from == "default"
    problem = class_mismatch(named, num_classes, data, val.source, names_known=scored.names_known or guessed)
    if problem and guessed:
        raise UsageError(f"{scored.source} does not record the data it was trained on, and the default dataset "
                         f"({scored.config.data.dataset}) is not it: {problem}; give --dataset and --data-path")
    notes = []
    if problem and not by_index:
        raise UsageError(f"{problem}; add --by-index to score dataset label i as the model's class i")
    if problem:
        notes.append(f"{problem}; scored by index (--by-index): dataset label i as the model's class i")
    if len(data) != num_classes:  # scored by index
        data = [str(i) for i in range(num_classes)]
    if named is None or (names_are_indices(named) and not names_are_indices(data)):
        return data, notes
    return named, notes


def _channel_notes(data_channels: int, in_chans: int) -> list[str]:
    """What the loader does when the dataset's images have other channels than the model takes."""
    if data_channels == in_chans:
        return []
    how = f"repeated to {in_chans} channels" if data_channels == 1 else \
        "converted to luma (0.299 R + 0.587 G + 0.114 B)"
    return [f"the model takes {in_chans}-channel images; the dataset's {data_channels}-channel images are {how}"]


# ------------------------------------------------------------------------------------ preprocessing
def _preprocessing(scored: _Scored, d: DataConfig, val, in_chans: int,
                   asked: list[str]) -> tuple[Preprocessing, str]:
    """The eval protocol and where it comes from: the settings ``asked`` for, else the file's own, else the
    training run's config, else the data set's seed protocol, else the config's defaults (said so)."""
    own, none = (f"the {scored.kind}'s own (saved in it)", f"the {scored.kind} carries none") \
        if scored.kind != "weights" else ("the weights' own (saved with them)", "the weights carry none")
    if scored.preprocessing and not asked:
        return _checked(Preprocessing.from_dict(scored.preprocessing), in_chans), own
    why = [f"{', '.join('--' + k.replace('_', '-') for k in asked)} given to eval"] if asked else []
    why += [] if scored.preprocessing else [none]
    if scored.trained_config:
        what = f"{d.transform} protocol of the training run's config"
    elif not scored.preprocessing and d.dataset in SEED_PROTOCOLS:
        transform, size = SEED_PROTOCOLS[d.dataset]
        d = replace(d, **{k: v for k, v in (("transform", transform), ("image_size", size)) if k not in asked})
        what = f"{d.transform} protocol"
    else:
        what = f"{d.transform} protocol at {d.image_size} px"
        if not scored.preprocessing:
            what += ", the default"
            why.append(f"{d.dataset} has no seed protocol")
    return _checked(preprocessing_for(d, val, in_chans), in_chans), f"{what} ({'; '.join(why)})"


def _checked(preprocessing: Preprocessing, in_chans: int) -> Preprocessing:
    if preprocessing.in_chans != in_chans:
        raise UsageError(f"the model takes {in_chans}-channel images, the preprocessing gives "
                         f"{preprocessing.in_chans}")
    return preprocessing
