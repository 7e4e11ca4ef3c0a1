"""The export task: weights (any format) -> an exported file, verified in its runtime on random and real images.

With a dataset at hand (the training run's, or the one given), the file is also checked on real
validation images, INT8 is calibrated on training images, and INT8's accuracy and its agreement with fp32 are
scored on the whole validation split. OpenVINO INT8's accuracy control validates on training images apart from
the calibration images: the ones the run held out (``--val-split``, its ``val_indices.json`` beside the
checkpoint), else ones it trained on. Every set of images is drawn at random (seeded) from its pool: in file
order, an ImageFolder's first images are all one class.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..build import build_dataset_split
from ..config import Config, DataConfig, apply_over_run
from ..data import Dataset, check_labels, eval_loader
from ..data.classes import class_mismatch
from ..data.datasets import subset
from ..data.transforms import Preprocessing
from ..engine import top_classes
from ..errors import SettingError, UsageError
from ..export import TABLE, Format, Int8Settings, export_verified, int8_source_path, open_exported, read_int8_info
from ..export.formats import get as format_row
from ..files import check_writable
from ..progress import Stages, tracked
from ..rundir import VAL_INDICES, read_holdout
from ..weights import model_from_weights, read_weights
from .common import renamed, required_source

SPLIT_NAMES = {"train": "training", "val": "validation"}


@dataclass
class ImageSample:
    """Images drawn at random, without replacement, from a dataset's split (all of it when it holds no more)."""

    dataset: str
    source: str
    split: str  # "train" or "val"
    images: int  # drawn
    of: int  # in the split (or in ``pool``)
    seed: int
    pool: Optional[str] = None  # the images of the split drawn from, when not all: "held out from training, ..."

    def describe(self) -> str:
        """``"128 of 2,000 validation images, drawn at random with seed 0"``."""
        split = SPLIT_NAMES[self.split] + (f" images {self.pool}" if self.pool else " images")
        if self.images == self.of:
            return f"all {self.of:,} {split}"
        return f"{self.images:,} of {self.of:,} {split}, drawn at random with seed {self.seed}"

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass
class ExportResult:
    """The file written and how it compared with PyTorch (``max_abs_diff``, ``top1_agreement``, ``compared``)."""

    format: str
    path: str
    softmax: bool
    random: dict  # on random inputs (batch 1 and 3)
    real: Optional[dict] = None  # on real validation images, when a dataset was at hand
    fp32_path: Optional[str] = None  # INT8: the fp32 model it was quantised from
    accuracy: Optional[dict] = None  # INT8: dataset, count, int8_top1, fp32_top1, agreement (same top-1 answer)
    real_sample: Optional[ImageSample] = None  # the validation images behind ``real``
    calibration_sample: Optional[ImageSample] = None  # INT8: the training images it was calibrated on
    delegation: Optional[dict] = None  # ExecuTorch: operators run by XNNPACK and by the portable runtime
    validation_sample: Optional[ImageSample] = None  # OpenVINO INT8 with accuracy control: the images it checked
    int8: Optional[dict] = None  # OpenVINO INT8: how it was quantised (the IR's ``INT8_KEY`` record)
    dataset: Optional[dict] = None  # the data the model was trained on, recorded in the file (None: unknown)
    operators: Optional[dict] = None  # LiteRT, ncnn: the file's operators by type (hard activations checked)
    fp16: Optional[dict] = None  # ncnn: the comparison in ncnn's default fp16 storage and arithmetic
    coreml: Optional[dict] = None  # Core ML: what was checked of the package (``export.coreml.spec_summary``)


@dataclass
class ExportData:
    """The real images an export is checked (and INT8 calibrated) with, batched, and where they came from."""

    val: Optional[Dataset] = None  # the whole validation split (INT8's accuracy)
    real: tuple = ()  # batches of validation images to compare with PyTorch
    real_sample: Optional[ImageSample] = None
    calibration: Optional[list] = None  # batches of training images (INT8)
    calibration_sample: Optional[ImageSample] = None
    validation: Optional[list] = None  # batches of training images apart from those (INT8's accuracy control)
    validation_sample: Optional[ImageSample] = None


def export_model(source: Optional[str] = None, *, format: str = "onnx", output: Optional[str] = None,
                 softmax: bool = False, ema: bool = False, calibration_images: int = 300, verify_images: int = 128,
                 sample_seed: int = 0, use_dataset: bool = True, keep_fp32: Optional[Sequence[str]] = None,
                 int8_overflow_fix: Optional[str] = None, int8_ranges: Optional[str] = None,
                 int8_max_drop: Optional[float] = None, int8_validation_images: Optional[int] = None,
                 checkpoint: Optional[str] = None, precision: Optional[str] = None, nhwc: bool = False,
                 **settings) -> ExportResult:
    """Export ``source`` (weights of any format; ``checkpoint`` is the older name) as ``format`` and verify the file
    in its runtime.

    ``output`` defaults to a file beside ``source``. ``settings`` are config fields over the training
    run's own config (``dataset``, ``data_path``, ``batch_size``, ``workers``, ``image_size``): the data used
    to verify on real images and to calibrate INT8 (``use_dataset=False``: random inputs only). The file is
    verified on ``verify_images`` validation images (0: all of them) and INT8 calibrated on
    ``calibration_images`` training images, each drawn at random with ``sample_seed``. An OpenVINO IR is the
    ``.xml`` path; its weights go to the ``.bin`` beside it. An ExecuTorch program is a ``.pte``;
    ``executorch-int8`` writes the fp32 program beside it too (its accuracy is compared with it).

    ``openvino-int8``'s settings (``None``: the default): ``keep_fp32``, ``int8_overflow_fix``, ``int8_ranges``,
    ``int8_max_drop`` and ``int8_validation_images``, the fields of ``export.Int8Settings`` that say what each is
    (accuracy control validates on training images held out by the run when it held some out)."""
    source = Path(required_source(renamed("export_model", "source", source, checkpoint=checkpoint),
                                  "the weights to export"))
    row = format_row(format)
    _check_counts(calibration_images, verify_images)
    int8 = _int8_settings(row, keep_fp32, int8_overflow_fix, int8_ranges, int8_max_drop, int8_validation_images)
    _check_format_options(row, precision, nhwc)
    row.extra()  # before the weights and the data are read
    weights = read_weights(source, ema=ema)
    model = model_from_weights(weights)
    pre = Preprocessing.from_dict(model.preprocessing)
    path = _output_path(source, row, output)
    config = Config.from_dict(weights.checkpoint.config) if weights.checkpoint and weights.checkpoint.config \
        else Config()
    apply_over_run(config, settings)
    d = config.data
    has_data = use_dataset and (d.dataset in ("fashion-mnist", "synthetic") or d.data_path)
    guessed = model.dataset is None and "dataset" not in settings  # the default dataset, not the model's own
    stages = Stages(f"export {format}", enabled=row.int8 or row.slow)
    data = _export_data(config, model.num_classes, pre, row.int8, calibration_images, verify_images,
                        sample_seed, int8.images_to_validate if int8 else 0, source,
                        check_classes=lambda val: _check_classes(model, val, guessed)) if has_data else ExportData()
    if int8 and int8.images_to_validate:
        int8 = replace(int8, validation=data.validation or (),
                       validation_info=data.validation_sample.to_dict() if data.validation_sample else None)
    size = d.image_size if "image_size" in settings else pre.crop
    return _export_and_score(model, format, path, torch.randn(2, model.in_chans, size, size), softmax, data, int8,
                             pre, config, stages, precision=precision, nhwc=nhwc)


def _check_counts(calibration_images: int, verify_images: int) -> None:
    if calibration_images < 1:
        raise SettingError("calibration_images", "must be at least 1")
    if verify_images < 0:
        raise SettingError("verify_images", "must be at least 0 (0: all)")


def _output_path(source: Path, row: Format, output: Optional[str]) -> Path:
    """The file to write (default: beside ``source``), checked writable before the data is read and the model
    exported, with what is written beside it (INT8: its fp32 file); none may overwrite what it is made from."""
    path = Path(output) if output else source.with_name(source.stem + row.suffix)
    check_writable(path.with_name(path.name + ".probe") if row.kind == "coreml" else path)  # a package is a folder
    row.check_output(path)
    for written in (path, int8_source_path(path)) if row.int8 else (path,):
        for companion in row.companions(written):
            if companion.resolve() == source.resolve():
                raise SettingError("output", f"{written}: the {row.what.split(' ', 1)[1]}'s weights file "
                                   f"{companion} would overwrite {source}; name it another way")
            check_writable(companion)
        if written != path:
            check_writable(written)
    return path


def _export_and_score(model: nn.Module, format: str, path: Path, example: torch.Tensor, softmax: bool,
                      data: ExportData, int8: Optional[Int8Settings], pre: Preprocessing, config: Config,
                      stages: Stages, **options) -> ExportResult:
    """Write and verify the file; an INT8 one is then scored beside its fp32 file on the validation split.
    ``options``: ``export_verified``'s ``precision`` (Core ML) and ``nhwc`` (LiteRT)."""
    calibration_info = data.calibration_sample.to_dict() if data.calibration_sample else None
    figures = export_verified(model, format, path, example, softmax=softmax, real_inputs=data.real,
                              calibration=data.calibration, calibration_info=calibration_info, int8=int8,
                              stages=stages, **options)
    result = ExportResult(format, figures["path"], softmax, figures.get("random"), figures.get("real"),
                          figures.get("fp32_path"), real_sample=data.real_sample,
                          calibration_sample=data.calibration_sample, delegation=figures.get("delegation"),
                          validation_sample=data.validation_sample, dataset=model.dataset,
                          operators=figures.get("operators"), fp16=figures.get("fp16"), coreml=figures.get("coreml"))
    if "int8_settings" in format_row(format).options:
        result.int8 = read_int8_info(path)
    if format_row(format).int8 and data.val is not None:
        stages.begin(f"scoring INT8 and fp32 on the {len(data.val):,} validation images")
        result.accuracy = _int8_accuracy(result, data.val, pre, config)
    return result


def _check_format_options(row: Format, precision: Optional[str], nhwc: bool) -> None:
    """``precision`` and ``nhwc`` are options of the formats whose row lists them (Core ML's, LiteRT's)."""
    for option, given in (("precision", precision is not None), ("nhwc", nhwc)):
        if given and option not in row.options:
            owners = [each for each in TABLE if option in each.options]
            what = f" ({' or '.join(owners[0].precisions)})" if option == "precision" else ""
            raise SettingError(option, f"{precision + ': ' if option == 'precision' else ''}a setting of "
                               f"--format {' and '.join(each.name for each in owners)}{what}")
    if precision is not None and precision not in row.precisions:
        raise SettingError("precision", f"{precision!r}: {row.runtime} computes in {' or '.join(row.precisions)}")


def _check_classes(model, val: Dataset, guessed: bool) -> None:
    """INT8 is calibrated and scored on ``val``'s dataset: its classes must be the model's, as eval checks them
    (``data.class_mismatch``); where the weights record no data and none was given (``guessed``: the default
    dataset), names are compared even when they only number the classes."""
    problem = class_mismatch(model.classes, model.num_classes, val.classes, str(val.source),
                             names_known=model.dataset is not None or guessed)
    if problem:
        why = " (the weights do not record their data: that is the default dataset)" if guessed else ""
        raise UsageError(f"{problem}{why}; INT8 is calibrated and scored on it: give --dataset and --data-path of "
                         "the model's own data")


def _int8_settings(row: Format, keep_fp32: Optional[Sequence[str]], overflow_fix: Optional[str],
                   ranges: Optional[str], max_drop: Optional[float],
                   validation_images: Optional[int]) -> Optional[Int8Settings]:
    """OpenVINO INT8's settings given (``None``: the default each), checked once; ``None`` for other formats,
    which take none of them."""
    given = {"--keep-fp32": keep_fp32, "--int8-overflow-fix": overflow_fix, "--int8-ranges": ranges,
             "--int8-max-drop": max_drop, "--int8-validation-images": validation_images}
    if "int8_settings" not in row.options:
        named = [flag for flag, value in given.items() if value is not None]
        if named:
            owners = " and ".join(each.name for each in TABLE if "int8_settings" in each.options)
            raise UsageError(f"{', '.join(named)}: a setting of --format {owners}")
        return None
    settings = dict(keep_fp32=keep_fp32, overflow_fix=overflow_fix, activation_ranges=ranges, max_drop=max_drop,
                    validation_images=validation_images)
    return Int8Settings(**{key: value for key, value in settings.items() if value is not None})


def _export_data(config: Config, num_classes: int, pre: Preprocessing, int8: bool, calibration_images: int,
                 verify_images: int = 128, seed: int = 0, validation_images: int = 0,
                 checkpoint: Optional[Path] = None,
                 check_classes: Optional[Callable[[Dataset], None]] = None) -> ExportData:
    """Validation images to verify on and (INT8) training images to calibrate with, each drawn at random, and
    ``validation_images`` training images apart from the calibration images for accuracy control. INT8:
    ``check_classes`` is given the validation split first (INT8's accuracy is scored on it)."""
    d = config.data
    val = build_dataset_split(d, "val", config.run.seed, num_classes)
    if int8 and check_classes is not None:
        check_classes(val)
    check_labels(val, num_classes, f"the model has {num_classes} classes: give --dataset and --data-path of data "
                                   "with those classes")
    real, real_sample = _sample_batches(val, "val", _draw(range(len(val)), verify_images or len(val), seed), seed, d,
                                        pre)
    data = ExportData(val, tuple(real), real_sample)
    if int8:
        train = build_dataset_split(d, "train", config.run.seed, num_classes)
        calibration = _draw(range(len(train)), calibration_images, seed)
        data.calibration, data.calibration_sample = _sample_batches(train, "train", calibration, seed, d, pre)
        if validation_images:
            held_out = _held_out(checkpoint, config, len(train)) if checkpoint else None
            pool = sorted(set(range(len(train)) if held_out is None else held_out) - set(calibration))
            where = ("trained on (its run held none out), less the calibration images" if held_out is None
                     else f"held out from training ({VAL_INDICES}), less the calibration images")
            data.validation, data.validation_sample = _sample_batches(
                train, "train", _draw(pool, validation_images, seed), seed, d, pre, len(pool), where)
    return data


def _draw(pool, count: int, seed: int) -> list[int]:
    """``count`` of the indices in ``pool`` drawn at random without replacement with ``seed`` (all, shuffled, if
    fewer): for ``range(n)``, the images ``data.draw_sample`` draws."""
    pool = list(pool)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:count]
    return [pool[i] for i in order.tolist()]


def _sample_batches(split: Dataset, name: str, indices: list[int], seed: int, d: DataConfig, pre: Preprocessing,
                    of: Optional[int] = None, pool: Optional[str] = None) -> tuple[list[torch.Tensor], ImageSample]:
    """The images of ``split`` at ``indices`` (drawn with ``seed``), in eval-protocol batches, and how they were
    drawn: ``of`` images of ``pool`` (default: of the whole split)."""
    batches = [b.images for b in eval_loader(subset(split, indices), pre, batch_size=min(d.batch_size, 64))]
    return batches, ImageSample(d.dataset, split.source, name, len(indices), len(split) if of is None else of, seed,
                                pool)


def _held_out(checkpoint: Path, config: Config, train_images: int) -> Optional[list[int]]:
    """The training images the checkpoint's run held out (``val_indices.json`` beside it, written by
    ``--val-split``); ``None`` when the run held none out, or held them out of another training set."""
    holdout = read_holdout(checkpoint.parent) if config.data.val_split else None
    if holdout is None:
        return None
    indices, size = holdout["indices"], holdout["train_images"]
    if size != train_images or not all(0 <= i < size for i in indices):
        return None
    return indices


@torch.no_grad()
def _int8_accuracy(result: ExportResult, val, pre: Preprocessing, config: Config) -> dict:
    """Top-1 of the INT8 file and of the fp32 file it came from, on the whole validation split, and their
    agreement: the share of images on which both give the same top-1 answer, each taken as eval takes it
    (``engine.top_classes``: equal scores in class order)."""
    fp32, int8 = open_exported(result.fp32_path), open_exported(result.path)
    count, fp32_correct, int8_correct, same = 0, 0, 0, 0
    batches = eval_loader(val, pre, batch_size=config.data.batch_size)
    for batch in tracked(batches, len(batches), "INT8 and fp32 on the validation images"):
        if len(batch.labels) == 0:  # every image of the batch unreadable (and skipped)
            continue
        fp32_answers, int8_answers = (top_classes(model(batch.images), 1)[1][:, 0] for model in (fp32, int8))
        count += len(batch.labels)
        fp32_correct += (fp32_answers == batch.labels).sum().item()
        int8_correct += (int8_answers == batch.labels).sum().item()
        same += (int8_answers == fp32_answers).sum().item()
    return dict(dataset=config.data.dataset, count=count, int8_top1=int8_correct / max(1, count),
                fp32_top1=fp32_correct / max(1, count), agreement=same / max(1, count))
