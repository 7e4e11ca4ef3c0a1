"""Config sections -> objects: the model, the datasets, the augmentation and eval protocol, the loaders.

Below the tasks and above everything else. Each function takes config sections (``ModelConfig``,
``DataConfig``) or plain values, never the whole ``Config`` and never parsed arguments, so a task
and a test build things the same way.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from .config import DataConfig, ModelConfig
from .convert import check_shapes
from .data import STATS, build_dataset, build_loader, build_preset, eval_loader
from .data.datasets import Dataset
from .data.transforms import Preprocessing, Recipe
from .dist import DistInfo
from .errors import UsageError
from .models import create_model
from .weights import Weights

log = logging.getLogger(__name__)

__all__ = ["build_model", "build_dataset_split", "build_datasets", "recipe_for", "preprocessing_for",
           "build_train_loader", "build_eval_loader", "pick_device", "device_type"]


# ------------------------------------------------------------------------------------------- model
def build_model(m: ModelConfig, num_classes: int, in_chans: int, weights: Optional[Weights] = None) -> nn.Module:
    """The configured network; with pretrained ``weights``, their architecture and values.

    A classifier of another size starts fresh (logged); RGB weights on grayscale input sum the stem
    filters over the colour channels.
    """
    if weights is None:
        model = create_model(m.model, num_classes=num_classes, width_mult=m.width_mult, dropout=m.dropout,
                             head_channels=m.head_channels, in_chans=in_chans, bn_eps=m.bn_eps,
                             bn_momentum=m.bn_momentum)
    else:
        model = _pretrained_model(m, num_classes, in_chans, weights)
    if m.freeze_backbone:
        model.freeze_backbone()
    return model


def _pretrained_model(m: ModelConfig, num_classes: int, in_chans: int, weights: Weights) -> nn.Module:
    if weights.model_name != m.model:
        raise UsageError(f"{m.pretrained} holds {weights.model_name} weights, but --model is {m.model}")
    model = create_model(m.model, **dict(weights.model_kwargs, num_classes=num_classes, dropout=m.dropout,
                                         in_chans=in_chans))
    state = dict(weights.state_dict)
    if state["classifier.weight"].shape[0] != num_classes:
        log.info("the pretrained classifier has %d classes, the data %d: the classifier starts fresh",
                 state["classifier.weight"].shape[0], num_classes)
        state.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
    if state["stem.conv.weight"].shape[1] == 3 and in_chans == 1:
        state["stem.conv.weight"] = state["stem.conv.weight"].sum(1, keepdim=True)
    try:
        check_shapes(state, model)
    except ValueError as err:
        raise UsageError(f"--pretrained {m.pretrained}: {err}") from None
    model.load_state_dict(state)
    return model


# ----------------------------------------------------------------------------------------- datasets
def build_dataset_split(d: DataConfig, split: str, seed: int, num_classes: Optional[int] = None) -> Dataset:
    """Split ``"train"`` or ``"val"`` of the configured dataset (synthetic data sized as configured)."""
    return build_dataset(d.dataset, d.data_path, split, download=d.download, synthetic_samples=d.synthetic_samples,
                         synthetic_classes=num_classes or 10, synthetic_size=d.image_size, seed=seed)


def build_datasets(d: DataConfig, seed: int, num_classes: Optional[int] = None) -> tuple[Dataset, Dataset]:
    """The training and validation splits."""
    return build_dataset_split(d, "train", seed, num_classes), build_dataset_split(d, "val", seed, num_classes)


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
def build_train_loader(d: DataConfig, dataset: Dataset, recipe: Recipe, preprocessing: Preprocessing,
                       num_classes: int, info: DistInfo, seed: int, pin_memory: bool = False):
    """Shuffled, augmented batches of this process's share of ``dataset``."""
    return build_loader(dataset, recipe, preprocessing, train=True, batch_size=d.batch_size,
                        mixup_alpha=d.mixup_alpha, cutmix_alpha=d.cutmix_alpha, num_classes=num_classes,
                        rank=info.rank, world_size=info.world_size, seed=seed, workers=d.workers,
                        pin_memory=pin_memory, skip_bad_images=d.skip_bad_images)


def build_eval_loader(d: DataConfig, dataset: Dataset, preprocessing: Preprocessing,
                      info: DistInfo = DistInfo(), pin_memory: bool = False):
    """Every sample of ``dataset`` once (this process's shard), at the configured eval batch size."""
    return eval_loader(dataset, preprocessing, batch_size=d.eval_batch_size or 2 * d.batch_size, rank=info.rank,
                       world_size=info.world_size, workers=d.workers, pin_memory=pin_memory,
                       skip_bad_images=d.skip_bad_images)


# ------------------------------------------------------------------------------------------- device
def device_type(name: str) -> str:
    """``"cuda"`` or ``"cpu"``: what ``--device`` asks for (``auto``: a GPU when there is one)."""
    return "cuda" if name.startswith("cuda") or (name == "auto" and torch.cuda.is_available()) else "cpu"


def pick_device(name: str, info: DistInfo = DistInfo()) -> torch.device:
    """The device of this process: ``auto`` takes its local GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA GPU is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    return device
