"""Config sections -> objects: the model, the datasets, the augmentation and eval protocol, the loaders.

Below the tasks and above everything else. Each function takes config sections (``ModelConfig``,
``DataConfig``) or plain values, never the whole ``Config`` and never parsed arguments, so a task
and a test build things the same way.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Collection, Optional

import torch
from torch import nn

from . import auto
from .checkpoint import Trainable
from .config import Config, DataConfig, ModelConfig, validate
from .convert import check_shapes
from .data import STATS, build_dataset, build_loader, build_preset, check_labels, eval_loader
from .data.datasets import Dataset, ImageFiles, draw_holdout, split_holdout
from .data.transforms import Preprocessing, Recipe
from .dist import ONE_PROCESS, DistInfo
from .engine import TrainOptions
from .errors import UsageError
from .models import create_model
from .optim import Schedule, build_optimizer, param_groups, smoothed_cross_entropy
from .rundir import VAL_INDICES
from .weights import Weights

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["build_model", "pretrained_kwargs", "record_architecture", "build_dataset_split", "build_datasets",
           "hold_out", "recipe_for", "preprocessing_for",
           "decode_device", "build_train_loader", "build_eval_loader", "pick_device", "device_type"]


# ------------------------------------------------------------------------------------------- model
def build_model(m: ModelConfig, num_classes: int, in_chans: int, weights: Optional[Weights] = None,
                given: Collection[str] = ()) -> nn.Module:
    """The configured network; with pretrained ``weights``, their architecture and values.

    ``given`` names the model settings the user set (a flag or a preset): those win over what the weights
    imply, where the weights' shapes allow. A classifier of another size starts fresh (logged); RGB weights
    on grayscale input sum the stem filters over the colour channels.
    """
    if weights is None:
        model = create_model(m.model, num_classes=num_classes, width_mult=m.width_mult, dropout=m.dropout,
                             head_channels=m.head_channels, in_chans=in_chans, bn_eps=m.bn_eps,
                             bn_momentum=m.bn_momentum, head_bias=m.head_bias, stem_stride=m.stem_stride)
    else:
        model = _pretrained_model(m, num_classes, in_chans, weights, given)
    if m.freeze_backbone:
        model.freeze_backbone()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("backbone frozen: %s of %s parameters train (the classifier)", f"{trainable:,}",
                 f"{sum(p.numel() for p in model.parameters()):,}")
    return model


def pretrained_kwargs(m: ModelConfig, weights: Weights, given: Collection[str]) -> dict:
    """The constructor arguments for fine-tuning from ``weights``, each logged with where it came from.

    Shapes (width, head) are the weights'; a different one given is a mistake. BatchNorm eps is part of
    the function the weights compute: the weights' unless given. BatchNorm momentum is a training setting:
    the configured one (PyTorch's 0.1 by default, as timm fine-tunes), not the 0.01 torchvision trains with,
    under which the running statistics would barely move towards the new data in a short fine-tune.
    """
    kwargs, origin = dict(dict(head_bias=True), **weights.model_kwargs), {}  # files before head_bias had one
    for key in ("width_mult", "head_channels", "head_bias"):
        if key in given and getattr(m, key) is not None and getattr(m, key) != kwargs[key]:
            raise UsageError(f"--{key.replace('_', '-')} is {getattr(m, key)}, but the pretrained weights "
                             f"{m.pretrained} have {key} {kwargs[key]}")
        origin[key] = "the weights'"
    if "bn_eps" in given and m.bn_eps != kwargs.get("bn_eps"):
        origin["bn_eps"] = f"given; the weights were made with {kwargs.get('bn_eps')}"
        kwargs["bn_eps"] = m.bn_eps
    else:
        origin["bn_eps"] = "the weights'"
    if "stem_stride" in given or "stem_stride" not in kwargs:  # a stride is no shape: foreign weights have none
        origin["stem_stride"] = "given" if "stem_stride" in given else "the default for the image size"
        kwargs["stem_stride"] = m.stem_stride or 2
    else:
        origin["stem_stride"] = "the weights'"
    was = kwargs.get("bn_momentum")
    kwargs["bn_momentum"] = m.bn_momentum
    origin["bn_momentum"] = ("given" if "bn_momentum" in given else "the default") + (
        f"; {weights.source} trains with {was}" if was is not None and was != m.bn_momentum else "")
    log.info("fine-tuning %s from %s (%s layout): %s", weights.model_name, m.pretrained, weights.source,
             ", ".join(f"{key} {kwargs[key]} ({origin[key]})" for key in origin))
    return kwargs


def _pretrained_model(m: ModelConfig, num_classes: int, in_chans: int, weights: Weights,
                      given: Collection[str]) -> nn.Module:
    if "model" in given and weights.model_name != m.model:
        raise UsageError(f"{m.pretrained} holds {weights.model_name} weights, but --model is {m.model}")
    model = create_model(weights.model_name, **dict(pretrained_kwargs(m, weights, given), num_classes=num_classes,
                                                    dropout=m.dropout, in_chans=in_chans))
    state = dict(weights.state_dict)
    if state["classifier.weight"].shape[0] != num_classes:
        log.info("the pretrained classifier has %d classes, the data %d: the classifier starts fresh",
                 state["classifier.weight"].shape[0], num_classes)
        state.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
    if state["stem.conv.weight"].shape[1] == 3 and in_chans == 1:
        log.info("the pretrained stem takes RGB, the data is grayscale: its filters are summed over the colours")
        state["stem.conv.weight"] = state["stem.conv.weight"].sum(1, keepdim=True)
    try:
        check_shapes(state, model)
    except ValueError as err:
        raise UsageError(f"--pretrained {m.pretrained}: {err}") from None
    model.load_state_dict(state)
    return model


def record_architecture(m: ModelConfig, model: nn.Module) -> None:
    """Write into ``m`` what the built model really has, so that the run's config says the truth."""
    kwargs = model.model_kwargs
    m.model = model.model_name
    for key in ("num_classes", "width_mult", "head_channels", "head_bias", "stem_stride", "in_chans", "bn_eps",
                "bn_momentum"):
        if key in kwargs:
            setattr(m, key, kwargs[key])


# ----------------------------------------------------------------------------------------- datasets
def build_dataset_split(d: DataConfig, split: str, seed: int, num_classes: Optional[int] = None) -> Dataset:
    """Split ``"train"`` or ``"val"`` of the configured dataset (synthetic data sized as configured)."""
    return build_dataset(d.dataset, d.data_path, split, download=d.download, synthetic_samples=d.synthetic_samples,
                         synthetic_classes=num_classes or 10, synthetic_size=d.image_size, seed=seed)


def build_datasets(d: DataConfig, seed: int, num_classes: Optional[int] = None) -> tuple[Dataset, Dataset]:
    """The training and validation splits."""
    return build_dataset_split(d, "train", seed, num_classes), build_dataset_split(d, "val", seed, num_classes)


def hold_out(d: DataConfig, train: Dataset, seed: int,
             indices: Optional[list[int]] = None) -> tuple[Dataset, Dataset, list[int]]:
    """``--val-split``: the training images left to train on, the ``d.val_split`` held out to validate on, and
    their indices in ``train`` (drawn with ``seed``, or ``indices`` as a run saved them)."""
    if indices is None:
        indices = draw_holdout(len(train), d.val_split, seed)
    elif len(indices) != d.val_split:
        raise UsageError(f"--val-split {d.val_split}, but the run held out {len(indices)} images; a run keeps its "
                         "validation set (start a new run to change it)")
    rest, val = split_holdout(train, indices)
    return rest, val, list(indices)


# ---------------------------------------------------------------------------------- preprocessing
def recipe_for(d: DataConfig, dataset: Dataset, in_chans: int) -> tuple[Recipe, Preprocessing]:
    """The configured augmentation recipe and eval protocol for ``dataset`` (its native size sets the padding)."""
    mean, std = STATS[d.dataset]
    native = dataset.images.shape[-1] if hasattr(dataset, "images") else None
    return build_preset(d.transform, d.image_size, mean, std, in_chans, native, eval_resize=d.eval_resize,
                        interpolation=d.interpolation, cutout=d.cutout, hflip=d.dataset != "mnist",
                        auto_augment=d.auto_augment, random_erasing=d.random_erasing)


def preprocessing_for(d: DataConfig, dataset: Dataset, in_chans: int) -> Preprocessing:
    """The configured eval protocol (resize, crop, interpolation, the dataset's mean and std)."""
    return recipe_for(d, dataset, in_chans)[1]


# ------------------------------------------------------------------------------------------ loaders
def decode_device(d: DataConfig, dataset: Dataset, device: Optional[torch.device]) -> Optional[torch.device]:
    """Where the loader decodes images: ``None`` for the CPU loader (``--decode cpu``), the run's GPU for
    ``--decode gpu``, which needs image files and a CUDA device."""
    if d.decode == "cpu":
        return None
    if not isinstance(dataset, ImageFiles):
        raise UsageError(f"--decode gpu decodes the files of an ImageFolder (--dataset imagenet); {d.dataset} is "
                         "read into memory, leave --decode at cpu")
    if device is None or device.type != "cuda":
        raise UsageError("--decode gpu needs a CUDA device" + (f" (the run's device is {device})" if device else ""))
    return device


def build_train_loader(d: DataConfig, dataset: Dataset, recipe: Recipe, preprocessing: Preprocessing,
                       num_classes: int, info: DistInfo, seed: int, pin_memory: bool = False,
                       device: Optional[torch.device] = None):
    """Shuffled, augmented batches of this process's share of ``dataset`` (decoded on ``device`` with
    ``--decode gpu``)."""
    return build_loader(dataset, recipe, preprocessing, train=True, batch_size=d.batch_size,
                        mixup_alpha=d.mixup_alpha, cutmix_alpha=d.cutmix_alpha, num_classes=num_classes,
                        rank=info.rank, world_size=info.world_size, seed=seed, workers=d.workers,
                        pin_memory=pin_memory, skip_bad_images=d.skip_bad_images,
                        decode_device=decode_device(d, dataset, device))


def build_eval_loader(d: DataConfig, dataset: Dataset, preprocessing: Preprocessing,
                      info: DistInfo = ONE_PROCESS, pin_memory: bool = False, device: Optional[torch.device] = None):
    """Every sample of ``dataset`` once (this process's shard), at the configured eval batch size."""
    return eval_loader(dataset, preprocessing, batch_size=d.eval_batch_size or 2 * d.batch_size, rank=info.rank,
                       world_size=info.world_size, workers=d.workers, pin_memory=pin_memory,
                       skip_bad_images=d.skip_bad_images, decode_device=decode_device(d, dataset, device))


# ------------------------------------------------------------------------------------------- device
def device_type(name: str) -> str:
    """``"cuda"`` or ``"cpu"``: what ``--device`` asks for (``auto``: a GPU when there is one)."""
    return "cuda" if name.startswith("cuda") or (name == "auto" and torch.cuda.is_available()) else "cpu"


def pick_device(name: str, info: DistInfo = ONE_PROCESS) -> torch.device:
    """The device of this process: ``auto`` takes its local GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA GPU is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    return device


@dataclass
class RunData:
    train: Dataset
    val: Dataset  # validated on each epoch: the test split, or with --val-split the held-out training images
    preprocessing: Preprocessing
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    num_classes: int
    classes: list[str]
    test: Optional[Dataset] = None  # with --val-split: the test split, scored once at the end
    test_loader: Optional[torch.utils.data.DataLoader] = None
    holdout: Optional[dict] = None  # with --val-split: what val_indices.json holds
    choices: list = field(default_factory=list)  # auto.Choice: the settings chosen for this data


def build_data(config: Config, info: DistInfo, device: torch.device, in_chans: Optional[int] = None,
               holdout: Optional[dict] = None, pretrained: bool = False, fit_defaults: bool = True) -> RunData:
    """Datasets and loaders; ``in_chans`` defaults to the dataset's own channel count. With ``val_split``, the
    held-out images are drawn with the run's seed, or taken from ``holdout`` (a resumed run's val_indices.json).
    Settings left at their defaults are first fitted to the training images (``auto.choose_for_data``), unless
    ``fit_defaults`` is off (a resumed run: its config holds what it chose when it started)."""
    d, seed = config.data, config.run.seed
    train, test = build_datasets(d, seed, config.model.num_classes)
    num_classes = config.model.num_classes or len(train.classes)
    check_labels(train, num_classes)
    check_labels(test, num_classes)
    val = test
    if d.val_split:
        if holdout is not None and holdout["train_images"] != len(train):
            raise UsageError(f"{VAL_INDICES}: the run held out images of a training set of {holdout['train_images']} "
                             f"images, {train.source} has {len(train)}; resume it with the data it started with")
        train_images = len(train)
        train, val, indices = hold_out(d, train, seed, holdout["indices"] if holdout else None)
        holdout = dict(val_split=d.val_split, seed=seed, train_images=train_images, indices=indices)
    choices = auto.choose_for_data(config, train, pretrained, info.world_size) if fit_defaults else []
    if choices:
        validate(config)  # settings that follow the chosen ones (the stem stride follows the image size)
    recipe, preprocessing = recipe_for(d, train, in_chans or train.channels)
    pin = device.type == "cuda"
    train_loader = build_train_loader(d, train, recipe, preprocessing, num_classes, info, seed, pin, device)
    val_loader = build_eval_loader(d, val, preprocessing, info, pin, device)
    test_loader = build_eval_loader(d, test, preprocessing, info, pin, device) if d.val_split else None
    classes = train.classes if len(train.classes) == num_classes else [str(i) for i in range(num_classes)]
    return RunData(train, val, preprocessing, train_loader, val_loader, num_classes, classes,
                   test if d.val_split else None, test_loader, holdout if d.val_split else None, choices)


def build_trainable(config: Config, model: nn.Module, lr: float, device: torch.device) -> Trainable:
    """The optimizer, the fp16 loss scaler and the EMA of the weights, as configured."""
    o, run = config.optim, config.run
    optimizer = build_optimizer(o.optimizer, param_groups(model, o.weight_decay, o.decay_bias), lr, o.momentum,
                                o.nesterov)
    scaler = torch.amp.GradScaler(device.type) if run.amp == "fp16" and device.type == "cuda" else None
    ema = None
    if run.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # Parameters only: an average of BatchNorm statistics taken while the weights move fits neither the live
        # weights nor the averaged ones; they are recomputed for the averaged weights at each epoch's end.
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(run.ema_decay), use_buffers=False)
    return Trainable(model, optimizer, scaler, ema)


def train_options(config: Config, schedule: Schedule, trainable: Trainable, device: torch.device) -> TrainOptions:
    """What ``engine.train_one_epoch`` needs of the run: its loss, schedule, precision, EMA and clipping."""
    o, run = config.optim, config.run
    return TrainOptions(
        loss_fn=lambda logits, targets: smoothed_cross_entropy(logits, targets, o.label_smoothing, o.smoothing),
        lr_at=schedule.lr_at, device=device, amp_dtype=AMP_DTYPES[run.amp], scaler=trainable.scaler,
        ema=trainable.ema, ema_warmup_steps=schedule.warmup_steps, grad_clip=o.grad_clip,
        channels_last=run.channels_last)
