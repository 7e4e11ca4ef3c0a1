"""``--decode gpu``: ImageFolder batches whose JPEGs are decoded together on the run's GPU.

The workers only read files (``torchvision.io.read_file``), so a batch reaches the main process as the
files' bytes (``EncodedBatch``). There ``decode_images`` decodes every JPEG of the batch in one
``torchvision.io.decode_jpeg(list, device=...)`` call, and the batch takes the CPU loader's steps on the
device: the per-image geometry (``ImageGeometry`` on tensors: the same crops and flips from the same seeds)
and the batch steps (``BatchAugment.finish``: jitter, normalisation, cutout, erasing; then mixup/cutmix).
Files that are not JPEGs (PNG, ...), and JPEGs that are not plain 8-bit sRGB upright images (an EXIF rotation,
CMYK, an ICC profile: ``images.is_plain``, read from the header), are decoded in the worker by the CPU loader's
decoder (``images.load_image``), and the log says so once. ``device`` may be the CPU: that is how the tests run
this path, against the CPU loader.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import NamedTuple, Optional, Union

import torch
from torch.utils.data import Dataset as TorchDataset

from ..errors import UsageError
from .batches import Batch, BatchRequest, MixCut, finish_batch, image_seeds, read_samples
from .datasets import ImageFiles
from .images import Conversions, is_plain, load_image, open_image
from .transforms import BatchAugment, ImageGeometry

log = logging.getLogger(__name__)

JPEG_MAGIC = (0xFF, 0xD8, 0xFF)  # SOI and the first marker's prefix


class EncodedBatch(NamedTuple):
    """One batch as a worker sends it: per image its JPEG bytes (uint8 (N,)), or for another format the image
    decoded on the CPU (uint8 (C, H, W)); the batch's generator state after drawing the per-image seeds."""

    items: list[torch.Tensor]
    encoded: list[bool]  # True: JPEG bytes, still to decode
    paths: list[str]
    labels: list[int]
    seeds: list[int]  # each image's geometry seed, as the CPU loader draws them
    generator_state: torch.Tensor
    skipped: int  # files that could not be read
    converted: Conversions  # what the CPU decoder converted


@contextmanager
def _torchvision_io():
    """torchvision.io's image functions warn on every call that TorchCodec supersedes them (torchvision 0.29);
    they are what --decode gpu is built on, so once is enough: here, never."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
        yield


def is_jpeg(data: torch.Tensor) -> bool:
    """Whether the bytes ``data`` (uint8 (N,)) start as a JPEG file does."""
    return data.numel() >= 3 and tuple(data[:3].tolist()) == JPEG_MAGIC


class FileBytes(TorchDataset):
    """``BatchRequest`` -> ``EncodedBatch``: reads the files of one batch (in a worker process)."""

    def __init__(self, data: ImageFiles, channels: int, skip_bad_images: bool = False):
        self.data, self.channels, self.skip_bad_images = data, channels, skip_bad_images

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, request: BatchRequest) -> EncodedBatch:
        generator, seeds = image_seeds(request)  # the same draws as the CPU loader's FileBatches
        batch = EncodedBatch([], [], [], [], [], generator.get_state(), 0, Conversions())
        for path, label, seed, (item, jpeg) in read_samples(self.data.samples, request.indices, seeds,
                                                            lambda file: self.read(file, batch.converted),
                                                            self.skip_bad_images):
            batch.items.append(item)
            batch.encoded.append(jpeg)
            batch.paths.append(path)
            batch.labels.append(label)
            batch.seeds.append(seed)
        return batch._replace(skipped=len(request.indices) - len(batch.items))

    def read(self, path: str, converted: Conversions) -> tuple[torch.Tensor, bool]:
        """A plain JPEG's bytes and ``True``, or any other image decoded as the CPU loader does and ``False``."""
        from torchvision.io import read_file
        from torchvision.transforms.v2.functional import pil_to_tensor

        try:
            with _torchvision_io():
                data = read_file(path).clone()  # its own memory: a file-backed storage cannot go to another process
        except (OSError, RuntimeError) as err:
            raise UsageError(f"{path}: unreadable image ({' '.join(str(err).split())})") from None
        if is_jpeg(data) and _plain_jpeg(data):
            return data, True
        return pil_to_tensor(load_image(data.numpy().tobytes(), self.channels, converted, name=path)), False


def _plain_jpeg(data: torch.Tensor) -> bool:
    """Whether ``decode_jpeg`` gets a JPEG's bytes (uint8 (N,)) right: ``images.is_plain``, from the header (a
    header PIL cannot read is left to ``decode_jpeg``, which names what is wrong)."""
    from PIL import Image

    try:
        with open_image(data.numpy().tobytes()) as image:
            return is_plain(image)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return True


def decode_images(items: list[torch.Tensor], encoded: list[bool], device: Union[str, torch.device],
                  channels: int = 3) -> list[Union[torch.Tensor, str]]:
    """Each image as uint8 (``channels``, H, W) on ``device``: the JPEG bytes (``encoded``) in one batched
    ``decode_jpeg`` call, the images decoded already moved there; for a JPEG that does not decode, the reason."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    jpegs = [item for item, is_encoded in zip(items, encoded) if is_encoded]
    with _torchvision_io():
        try:
            decoded = list(decode_jpeg(jpegs, mode=mode, device=device)) if jpegs else []
        except RuntimeError:  # one bad file fails the whole call: decode one by one to find it
            decoded = [_decode_one(item, mode, device) for item in jpegs]
    found = iter(decoded)
    return [next(found) if is_encoded else item.to(device) for item, is_encoded in zip(items, encoded)]


def _decode_one(data: torch.Tensor, mode, device) -> Union[torch.Tensor, str]:
    from torchvision.io import decode_jpeg

    try:
        return decode_jpeg(data, mode=mode, device=device)
    except RuntimeError as err:  # "decode_jpeg, <source file>:<line>, <reason>"
        return " ".join(str(err).split(", ")[-1].split())


class DeviceDecodedBatches:
    """The ``Batch``es of a loader of ``EncodedBatch``, decoded and transformed on ``device`` in this process.

    Stands in for the DataLoader: ``sampler`` (``set_epoch``) and ``len`` are the inner loader's.
    """

    def __init__(self, loader, geometry: ImageGeometry, augment: BatchAugment, channels: int,
                 device: Union[str, torch.device], skip_bad_images: bool = False, mix: Optional[MixCut] = None):
        self.loader, self.geometry, self.augment, self.mix = loader, geometry, augment, mix
        self.channels, self.device, self.skip_bad_images = channels, torch.device(device), skip_bad_images
        self.said_cpu_decoded = False

    @property
    def sampler(self):
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for encoded in self.loader:
            yield self.batch(encoded)

    def batch(self, encoded: EncodedBatch) -> Batch:
        """One ``EncodedBatch`` -> a ``Batch`` on the device, as the CPU loader makes it from the same request."""
        if not all(encoded.encoded) and not self.said_cpu_decoded:
            log.info("--decode gpu: files that are not plain JPEGs (other formats, an EXIF rotation, CMYK, an ICC "
                     "profile: %s, ...) are decoded on the CPU",
                     next(p for p, e in zip(encoded.paths, encoded.encoded) if not e))
            self.said_cpu_decoded = True
        images, labels, skipped = [], [], encoded.skipped
        decoded = decode_images(encoded.items, encoded.encoded, self.device, self.channels)
        for image, path, label, seed in zip(decoded, encoded.paths, encoded.labels, encoded.seeds):
            if isinstance(image, str):
                if not self.skip_bad_images:
                    raise UsageError(f"{path}: unreadable image ({image})")
                log.warning("skipping unreadable image %s", path)
                skipped += 1
                continue
            images.append(self.geometry(image, seed))
            labels.append(label)
        generator = torch.Generator()
        generator.set_state(encoded.generator_state)
        return finish_batch(images, labels, skipped, self.augment, self.mix, generator, self.channels, self.device,
                            encoded.converted)
