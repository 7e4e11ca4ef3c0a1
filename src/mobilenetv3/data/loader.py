"""Data loaders: batches are requested whole, each with its own seed.

The sampler yields ``BatchRequest(indices, seed)``; a batch dataset turns one request into one
``Batch`` (augmented in a worker process, or in the main process with ``workers=0``). Because the
randomness of a batch depends only on (seed, epoch, batch index, rank), a run resumed in the middle
of an epoch sees exactly the batches an uninterrupted run would, whatever the worker count.

Training order comes from ``DistributedSampler`` (one process is a world of size 1). Evaluation
shards ``range(rank, N, world_size)`` without padding, so every sample is scored exactly once.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torch.utils.data import Dataset as TorchDataset

from ..errors import RunError, UsageError
from .batches import Batch, BatchRequest, MixCut, finish_batch, image_seeds, read_samples
from .datasets import Dataset, ImageFiles, InMemoryImages
from .gpu_decode import DeviceDecodedBatches, FileBytes
from .images import Conversions, load_image
from .transforms import BatchAugment, ImageGeometry, Preprocessing, Recipe

log = logging.getLogger(__name__)


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


class TrainBatches(Sampler):
    """Shuffled batches of this process's share of an epoch; ``set_epoch(epoch, start_batch)`` to resume."""

    def __init__(self, dataset_size: int, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 drop_last: bool = True):
        self.order = DistributedSampler(range(dataset_size), num_replicas=world_size, rank=rank, shuffle=True,
                                        seed=seed)
        self.batch_size, self.rank, self.seed, self.drop_last = batch_size, rank, seed, drop_last
        self.epoch, self.start_batch = 0, 0
        if len(self) == 0:
            raise UsageError(f"the training set has {dataset_size} images, fewer than one batch of {batch_size} "
                             f"per process; lower --batch-size")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        per_rank = self.order.num_samples
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self):
        self.order.set_epoch(self.epoch)
        indices = list(self.order)
        for batch in range(self.start_batch, len(self)):
            chunk = indices[batch * self.batch_size:(batch + 1) * self.batch_size]
            yield BatchRequest(chunk, batch_seed(self.seed, self.epoch, batch, self.rank))


class EvalBatches(Sampler):
    """Samples ``rank, rank + world_size, ...`` in order, in batches; no padding, no drop."""

    def __init__(self, dataset_size: int, batch_size: int, *, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, dataset_size, world_size))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.indices), self.batch_size):
            yield BatchRequest(self.indices[start:start + self.batch_size], 0)


class InMemoryBatches(TorchDataset):
    """Turns a ``BatchRequest`` into an augmented batch of an in-memory dataset, all samples at once."""

    def __init__(self, data: InMemoryImages, augment: BatchAugment, mix: Optional[MixCut] = None):
        self.data, self.augment, self.mix = data, augment, mix

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, request: BatchRequest) -> Batch:
        generator = torch.Generator().manual_seed(request.seed)
        index = torch.as_tensor(request.indices, dtype=torch.int64)
        images, labels = self.augment(self.data.images[index], generator), self.data.labels[index]
        if self.mix is not None:
            images, labels = self.mix(images, labels, generator)
        return Batch(images, labels, 0)


class FileBatches(TorchDataset):
    """Turns a ``BatchRequest`` into a batch of decoded, transformed image files."""

    def __init__(self, data: ImageFiles, transform, augment: BatchAugment, channels: int,
                 skip_bad_images: bool = False, mix: Optional[MixCut] = None):
        self.data, self.transform, self.augment, self.mix = data, transform, augment, mix
        self.channels, self.skip_bad_images = channels, skip_bad_images

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, request: BatchRequest) -> Batch:
        generator, seeds = image_seeds(request)
        images, labels, converted = [], [], Conversions()
        for _, label, seed, image in read_samples(self.data.samples, request.indices, seeds,
                                                  lambda file: load_image(file, self.channels, converted),
                                                  self.skip_bad_images):
            images.append(self.transform(image, seed))
            labels.append(label)
        return finish_batch(images, labels, len(request.indices) - len(images), self.augment, self.mix, generator,
                            self.channels, converted=converted)


def default_workers(world_size: int = 1) -> int:
    """One worker per spare core: the training step keeps the rest busy (the seed's fixed 8 crashed on 2 cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // max(1, world_size) - 1))


def build_loader(data: Dataset, recipe: Optional[Recipe], preprocessing: Preprocessing, *, train: bool, batch_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, workers: Optional[int] = None,
                 pin_memory: bool = False, skip_bad_images: bool = False, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, num_classes: int = 0, decode_device: Optional[torch.device] = None):
    """A DataLoader of ``Batch`` for training (shuffled, drop_last, augmented by ``recipe``) or evaluation
    (every sample once, ``preprocessing`` only; ``recipe`` may be ``None``). With ``decode_device``, image
    files are read by the workers and decoded and transformed on that device (``gpu_decode``)."""
    augment = BatchAugment(recipe, preprocessing, train=train)
    mix = MixCut(mixup_alpha, cutmix_alpha, num_classes) if train and (mixup_alpha or cutmix_alpha) else None
    if decode_device is not None and not isinstance(data, ImageFiles):
        raise UsageError(f"--decode gpu decodes image files (an ImageFolder: --dataset imagenet); {data.source} "
                         "is held in memory")
    if isinstance(data, InMemoryImages):
        batches: TorchDataset = InMemoryBatches(data, augment, mix)
    elif decode_device is not None:
        batches = FileBytes(data, preprocessing.in_chans, skip_bad_images)
    else:
        batches = FileBatches(data, ImageGeometry(recipe, preprocessing, train), augment, preprocessing.in_chans,
                              skip_bad_images, mix)
    if train:
        sampler: Sampler = TrainBatches(len(data), batch_size, rank=rank, world_size=world_size, seed=seed)
    else:
        sampler = EvalBatches(len(data), batch_size, rank=rank, world_size=world_size)
    if workers is None:
        # In-memory batches augment at tens of thousands of images/s on one core: on a CPU run a worker
        # process would only compete with the training step for cores. Files need decoding in workers.
        in_memory_on_cpu = isinstance(data, InMemoryImages) and not pin_memory
        workers = 0 if in_memory_on_cpu else default_workers(world_size)
    loader = BatchLoader(batches, batch_size=None, sampler=sampler, num_workers=workers,
                         pin_memory=pin_memory and decode_device is None, persistent_workers=workers > 0,
                         worker_init_fn=_seed_worker, generator=torch.Generator().manual_seed(seed))
    if decode_device is None:
        return loader
    return DeviceDecodedBatches(loader, ImageGeometry(recipe, preprocessing, train), augment, preprocessing.in_chans,
                                decode_device, skip_bad_images, mix)


def eval_loader(data: Dataset, preprocessing: Preprocessing, *, batch_size: int, rank: int = 0, world_size: int = 1,
                workers: Optional[int] = 0, pin_memory: bool = False, skip_bad_images: bool = False,
                decode_device: Optional[torch.device] = None):
    """Every sample of ``data`` once, in order (this process's shard under torchrun), with the eval protocol."""
    return build_loader(data, None, preprocessing, train=False, batch_size=batch_size, rank=rank,
                        world_size=world_size, workers=workers, pin_memory=pin_memory,
                        skip_bad_images=skip_bad_images, decode_device=decode_device)


def check_scored_once(metrics: Mapping[str, int], data: Dataset, what: str) -> None:
    """Every sample of ``data`` scored once by an evaluation over ``eval_loader`` (``metrics``: its ``count`` and
    the unreadable images it ``skipped``); else a ``RunError``, a fault of the loader's sharding."""
    expected = len(data) - metrics["skipped"]
    if metrics["count"] != expected:
        raise RunError(f"{what} scored {metrics['count']} samples, the dataset has {expected}")


class BatchLoader(DataLoader):
    """A DataLoader whose worker errors read as the worker raised them.

    PyTorch re-raises a worker's exception with the worker's whole traceback as its message
    ("Caught ValueError in DataLoader worker process 0. Original Traceback ..."); for the errors
    that name a bad file the message should stay the one line that names it.
    """

    def __iter__(self):
        return _report_conversions(self, _plain_worker_errors(super().__iter__()))


def _report_conversions(loader: BatchLoader, batches):
    """The batches, passed on; at the end of a whole pass (a training run's first epoch, an evaluation), one
    log line of what the decoder converted in it, once per dataset folder in a process (a command): the worker
    processes count it in their batches, as they cannot log it together. A pass cut short (``--max-steps``, a
    few batches for BatchNorm statistics) says nothing."""
    seen = Conversions()
    for batch in batches:
        seen.add(getattr(batch, "converted", None))
        yield batch
    source = loader.dataset.data.source
    if seen and source not in _CONVERSIONS_SAID:
        _CONVERSIONS_SAID.add(source)
        log.info("%s: %s (decoded as an image viewer shows them)", source, seen)


_CONVERSIONS_SAID: set[str] = set()  # the dataset folders whose conversions this process has logged


def _plain_worker_errors(batches):
    try:
        yield from batches
    except (ValueError, OSError) as err:
        message = worker_error_message(str(err))
        if message is None:
            raise
        raise type(err)(message) from err


def worker_error_message(text: str) -> Optional[str]:
    """The original message inside a DataLoader worker's re-raised error; ``None`` for any other text."""
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return None
    last = text.rstrip().splitlines()[-1]
    name, sep, message = last.partition(": ")
    return message if sep and name.replace(".", "").replace("_", "").isalnum() else last


def _seed_worker(worker_id: int) -> None:
    """NumPy and ``random`` in each worker follow torch's per-worker seed (which follows --seed)."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
