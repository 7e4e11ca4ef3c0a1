"""What both image-file loaders share: the batch types, the per-image seeds of a request, the reading of a
request's files (an unreadable one skipped with ``skip_bad_images``) and ``finish_batch``.

The CPU loader (``loader.FileBatches``) and ``--decode gpu`` (``gpu_decode``) make the same batch from the same
request: the same seeds, the same files skipped, the same batch steps; both take those from here.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator, NamedTuple, Optional, Sequence, TypeVar

import torch

from .images import Conversions
from .transforms import BatchAugment

log = logging.getLogger(__name__)

Item = TypeVar("Item")


class BatchRequest(NamedTuple):
    indices: list[int]
    seed: int


class Batch(NamedTuple):
    images: torch.Tensor  # (B, C, H, W) float32, normalised
    labels: torch.Tensor  # (B,) int64, or (B, num_classes) float32 with mixup/cutmix
    skipped: int  # unreadable images left out (with skip_bad_images)
    converted: Optional[Conversions] = None  # what the decoder converted (image files only)


class MixCut:
    """mixup and/or cutmix (torchvision's batch transforms; one picked per batch when both are on)."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int):
        from torchvision.transforms import v2

        ops = ([v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha else []) + \
              ([v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha else [])
        self.op = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)

    def __call__(self, images, labels, generator: torch.Generator):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            return self.op(images, labels)


def image_seeds(request: BatchRequest) -> tuple[torch.Generator, list[int]]:
    """The batch's generator, seeded by the request, and each image's geometry seed drawn from it (the batch
    steps and mixup/cutmix draw from the generator after these)."""
    generator = torch.Generator().manual_seed(request.seed)
    return generator, torch.randint(0, 2**62, (len(request.indices),), generator=generator).tolist()


def read_samples(samples: Sequence[tuple[str, int]], indices: list[int], seeds: list[int],
                 read: Callable[[str], Item], skip_bad_images: bool) -> Iterator[tuple[str, int, int, Item]]:
    """(path, label, seed, ``read(path)``) of each sample ``samples[index]``, in order. A file ``read`` cannot
    read (a ``ValueError``) is logged and left out with ``skip_bad_images``, else its error raised: the caller
    counts the skipped as the samples that did not come."""
    for index, seed in zip(indices, seeds):
        path, label = samples[index]
        try:
            item = read(path)
        except ValueError:
            if not skip_bad_images:
                raise
            log.warning("skipping unreadable image %s", path)
            continue
        yield path, label, seed, item


def finish_batch(images: list[torch.Tensor], labels: list[int], skipped: int, augment: BatchAugment,
                 mix: Optional[MixCut], generator: torch.Generator, channels: int, device=None,
                 converted: Optional[Conversions] = None) -> Batch:
    """Per-image uint8 tensors (on ``device``) -> the batch: colour, normalisation and erasing on all of them at
    once, then mixup/cutmix; an empty batch of the right shape when every image was skipped."""
    if not images:
        size = augment.pre.crop
        return Batch(torch.empty(0, channels, size, size, device=device),
                     torch.empty(0, dtype=torch.int64, device=device), skipped, converted)
    batch = augment.finish(torch.stack(images), generator if augment.train else None)
    targets = torch.tensor(labels, dtype=torch.int64, device=device)
    if mix is not None:
        batch, targets = mix(batch, targets, generator)
    return Batch(batch, targets, skipped, converted)
