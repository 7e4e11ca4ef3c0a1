"""Settings chosen for the run's data: what the user left at its built-in default, fitted to this run.

The built-in recipe (``config.py``) is the demo's, tuned on Fashion-MNIST: 60,000 images of 28 px, batch 256,
LR 0.8, 3 epochs (705 steps). Applied unchanged to 1,500 images it makes 18 steps and ends at chance; applied
to pretrained weights it blows them up. These rules fit it to any data, the way the references do:

- **LR with the batch** (the linear rule of Goyal et al. 2017, as timm's ``--lr-base`` and torchvision's
  references): the built-in LR 0.8 is given for a global batch of 256 and scaled to the real one. An LR the user
  gives is used as given, unless ``lr_reference_batch`` says which batch it is for.
- **Fine-tuning** from pretrained weights: a tenth of the from-scratch LR and a tenth of its warmup (small
  steps keep what the weights know; ultralytics and timm fine-tune at 0.1x too).
- **Image size**: the data's own (the median shorter side of its images) within 28-224 px; tiny images are
  upscaled, large ones scaled down.
- **Batch**: at least ``MIN_STEPS_PER_EPOCH`` steps an epoch (a power of two, 16 to 256): a small dataset
  gets smaller batches, hence more (and linearly smaller) steps.
- **Length**: at least ``MIN_STEPS`` optimizer steps in all (ultralytics picks its optimizer from the run's
  length for the same reason): the default 3 epochs lengthen; a length the user gave is kept, with a warning.

A setting is chosen only where its value is the built-in default (no flag, no preset, no keyword). Each choice
is one log line with its reason, and the run's ``config.yaml`` records them (``resolved.choices``).
"""
from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from typing import Optional

from .config import FIELD_SECTION, Config
from .data.datasets import Dataset, ImageFiles

log = logging.getLogger(__name__)

REFERENCE_BATCH = 256  # the global batch the built-in LR is given for
FINE_TUNE_LR = 0.1  # fine-tuning LR and warmup: this fraction of the from-scratch ones
MIN_STEPS = 300  # fewer optimizer steps rarely learn from scratch (15-18 steps: chance)
MIN_STEPS_PER_EPOCH = 64
BATCH_RANGE = (16, 256)
IMAGE_SIZE_RANGE = (28, 224)
SIZE_SAMPLE = 64  # image files whose headers are read to find the data's size
SETTLE_STEPS = MIN_STEPS  # a run shorter than this re-estimates BatchNorm statistics before validating
CHANCE_MARGIN = 0.05  # validation top-1 within this of chance ends a run with a warning
# The built-in LR is SGD's; the others' at the same reference batch: AdamW PyTorch's 1e-3, RMSProp the paper's
# 0.1 at batch 4096 (Howard et al. 2019, section 6.1.1) scaled linearly to 256.
OPTIMIZER_LR = {"adamw": 1e-3, "rmsprop": 0.1 * REFERENCE_BATCH / 4096}
BUILT_IN = Config()


@dataclass(frozen=True)
class Choice:
    """One setting chosen for this run, and why."""

    key: str
    value: object
    reason: str

    def line(self) -> str:
        return f"{self.key} {self.value:g}: {self.reason}" if isinstance(self.value, float) else \
            f"{self.key} {self.value}: {self.reason}"


def _default(config: Config, key: str) -> bool:
    """The field still holds its built-in default: nobody (flag, preset, keyword, saved run, an assignment in
    Python) set it."""
    section = FIELD_SECTION[key]
    return config.source_of(key) is None and getattr(getattr(config, section), key) == getattr(
        getattr(BUILT_IN, section), key)


def _set(config: Config, section: str, choice: Choice, chosen: list) -> None:
    setattr(getattr(config, section), choice.key, choice.value)
    config._sources[choice.key] = "auto: " + choice.reason
    chosen.append(choice)


# -------------------------------------------------------------------------------------- the data's size
def native_size(data: Dataset) -> Optional[int]:
    """The shorter side of the data's images in pixels (the median of a sample of files for an ImageFolder)."""
    return sample_images(data)[0]


def sample_images(data: Dataset) -> tuple[Optional[int], set]:
    """The median shorter side of the data's images and the PIL modes of its files (read from the headers of
    up to ``SIZE_SAMPLE`` files of an ImageFolder; an in-memory dataset's tensor shape)."""
    if isinstance(data, ImageFiles):
        from PIL import Image

        step = max(1, len(data) // SIZE_SAMPLE)
        sides, modes = [], set()
        for path, _ in data.samples[::step][:SIZE_SAMPLE]:
            try:
                with Image.open(path) as image:  # reads the header only
                    sides.append(min(image.size))
                    modes.add(image.mode)
            except Exception:  # noqa: BLE001 - any unreadable header: the loader says so, or skips the file
                continue
        return (int(statistics.median(sides)) if sides else None), modes
    images = getattr(data, "images", None)
    if images is None or images.dim() != 4:
        return None, set()
    return int(min(images.shape[-2:])), {"L" if images.shape[1] == 1 else "RGB"}


# ------------------------------------------------------------------------------------------- the rules
def choose_for_data(config: Config, train: Dataset, pretrained: bool, world_size: int = 1) -> list[Choice]:
    """Fit the settings left at their defaults to ``train`` (the images the run trains on); returns the choices.

    Runs before the loaders are built (it sets ``image_size`` and ``batch_size``); ``choose_length`` follows
    once the steps per epoch are known.
    """
    chosen: list[Choice] = []
    d, o = config.data, config.optim
    side = native_size(train) if d.dataset != "synthetic" else None
    if _default(config, "image_size") and side is not None:
        size = min(max(side, IMAGE_SIZE_RANGE[0]), IMAGE_SIZE_RANGE[1])
        if size != d.image_size:
            how = "as they are" if size == side else ("upscaled" if side < size else "scaled down") + f" from {side} px"
            _set(config, "data", Choice("image_size", size, f"the data's images are {side} px: trained {how} "
                                        f"(within {IMAGE_SIZE_RANGE[0]}-{IMAGE_SIZE_RANGE[1]} px)"), chosen)
            stride = 1 if size <= 32 else 2  # config.validate's rule for a stride nobody gave
            if (config.source_of("stem_stride") or "").startswith("the default for") and \
                    stride != config.model.stem_stride:
                _set(config, "model", Choice("stem_stride", stride, f"the default for {size} px images"), chosen)
    if _default(config, "batch_size"):
        per_process = len(train) // (MIN_STEPS_PER_EPOCH * world_size)
        largest = max(BATCH_RANGE[0], BATCH_RANGE[1] // world_size)  # the global batch stays the recipe's
        batch = min(max(2 ** int(math.log2(per_process)) if per_process >= 1 else 1, BATCH_RANGE[0]), largest)
        if batch != d.batch_size:
            reason = f"{len(train)} training images: at least {MIN_STEPS_PER_EPOCH} steps an epoch" + (
                f", a global batch of at most {BATCH_RANGE[1]} over {world_size} processes" if world_size > 1 else "")
            _set(config, "data", Choice("batch_size", batch, reason), chosen)
    if _default(config, "lr") and o.optimizer in OPTIMIZER_LR:
        _set(config, "optim", Choice("lr", OPTIMIZER_LR[o.optimizer], f"the default LR of {o.optimizer} at a "
                                     f"batch of {REFERENCE_BATCH} (the built-in {o.lr:g} is SGD's)"), chosen)
    lr_chosen = _default(config, "lr") or (config.source_of("lr") or "").startswith("auto")
    if _default(config, "lr_reference_batch") and lr_chosen:
        _set(config, "optim", Choice("lr_reference_batch", REFERENCE_BATCH, f"the default LR {o.lr:g} is given for "
                                     f"a global batch of {REFERENCE_BATCH}, scaled linearly to the run's"), chosen)
    fine_tuning = pretrained and not config.model.freeze_backbone  # a linear probe trains a fresh classifier
    if fine_tuning and lr_chosen:
        _set(config, "optim", Choice("lr", o.lr * FINE_TUNE_LR, f"fine-tuning pretrained weights: {FINE_TUNE_LR:g}x "
                                     f"the from-scratch LR {o.lr:g}"), chosen)
        if _default(config, "warmup_epochs"):
            _set(config, "optim", Choice("warmup_epochs", o.warmup_epochs * FINE_TUNE_LR, f"fine-tuning: "
                                         f"{FINE_TUNE_LR:g}x the from-scratch warmup"), chosen)
    elif fine_tuning and config.source_of("lr") not in (None, "flag"):
        log.warning("fine-tuning pretrained weights at %s's LR %g, a from-scratch LR: give --lr (a tenth of it, "
                    "%g, is this toolkit's fine-tuning default) if the loss climbs", config.source_of("lr"), o.lr,
                    o.lr * FINE_TUNE_LR)
    return chosen


CHOSEN_KEYS = ("image_size", "stem_stride", "batch_size", "lr", "lr_reference_batch", "warmup_epochs", "epochs")


def keep_saved_choices(config: Config, saved: dict) -> None:
    """A run resumed with a ``Config`` built in Python: the settings it leaves at their defaults are what the
    saved run chose (``saved`` is the checkpoint's config dict), not chosen again on the data."""
    for key in CHOSEN_KEYS:
        section = FIELD_SECTION[key]
        value = (saved.get(section) or {}).get(key)
        if _default(config, key) and value is not None and value != getattr(getattr(config, section), key):
            setattr(getattr(config, section), key, value)
            config._sources[key] = "the resumed run's"


def choose_length(config: Config, steps_per_epoch: int) -> list[Choice]:
    """At least ``MIN_STEPS`` steps: lengthen the default epochs (the warmup keeps its share of the run), or warn
    at the start that a length the user gave is too short to learn."""
    o, chosen = config.optim, []
    steps = o.epochs * steps_per_epoch
    if steps >= MIN_STEPS or config.run.max_steps:
        return chosen
    epochs = math.ceil(MIN_STEPS / steps_per_epoch)
    if _default(config, "epochs"):
        warmup = o.warmup_epochs * epochs / o.epochs
        reason = f"{o.epochs} epochs of {steps_per_epoch} steps are {steps} steps, too few to learn: at least " \
                 f"{MIN_STEPS}"
        _set(config, "optim", Choice("epochs", epochs, reason), chosen)
        if not config.source_of("warmup_epochs") or config.source_of("warmup_epochs").startswith("auto"):
            _set(config, "optim", Choice("warmup_epochs", round(warmup, 4), "the same share of the longer run"),
                 chosen)
    else:
        log.warning("this run is %d steps (%d epoch%s of %d): runs under %d steps rarely learn; give --epochs %d or "
                    "more (or leave --epochs and --batch-size out to have them chosen)", steps, o.epochs,
                    "s" if o.epochs > 1 else "", steps_per_epoch, MIN_STEPS, epochs)
    return chosen


def log_choices(choices: list[Choice]) -> None:
    for choice in choices:
        log.info("chosen for this run: %s", choice.line())


def describe_pipeline(train: Dataset, image_size: int, model_in_chans: int, data_in_chans: int) -> str:
    """One line: what the data pipeline does to the user's images on their way into the model."""
    side, modes = sample_images(train)
    parts = []
    if side is not None and side != image_size:
        parts.append(f"{side} px images {'upscaled' if side < image_size else 'scaled down'} to {image_size} px")
    elif side is not None:
        parts.append(f"{side} px images at their size")
    mode = {1: "grayscale", 3: "RGB"}.get(data_in_chans, f"{data_in_chans}-channel")
    converted = sorted(modes - {"RGB" if data_in_chans == 3 else "L"})
    parts.append(f"read as {mode}" + (f" (files in mode {', '.join(converted)} converted)" if converted else "")
                 + ("" if model_in_chans == data_in_chans else
                    f"; the model's stem takes {model_in_chans} channel(s)"))
    return "; ".join(parts)


def chance_warning(top1: Optional[float], num_classes: int, total_steps: int, loss_first: Optional[float],
                   loss_last: Optional[float], peak_lr: float) -> Optional[str]:
    """A finished run at chance: the warning naming the likely cause, or ``None``."""
    if top1 is None or num_classes < 2:
        return None
    chance = 1 / num_classes
    if top1 > chance + CHANCE_MARGIN:
        return None
    if total_steps < MIN_STEPS:
        cause = f"too few steps: {total_steps} in all (runs under {MIN_STEPS} rarely learn); raise --epochs or lower " \
                "--batch-size"
    elif loss_first is not None and loss_last is not None and loss_last >= loss_first:
        cause = f"the learning rate: the training loss went from {loss_first:.3f} to {loss_last:.3f} at a peak LR " \
                f"of {peak_lr:g}; try --lr {peak_lr / 10:g}"
    else:
        cause = "the data: the training loss fell but validation did not follow; check that the class folders " \
                "hold the right images and that training and validation images come from the same source"
    return (f"validation top-1 {100 * top1:.2f}% is within {100 * CHANCE_MARGIN:.0f} points of chance "
            f"({100 * chance:.2f}% for {num_classes} classes); likely cause: {cause}")
