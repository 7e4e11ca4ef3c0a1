"""Datasets in the formats users have: ImageFolder trees, CIFAR-10 (binary and pickle), (Fashion-)MNIST IDX.

Small datasets are read whole into one uint8 tensor (``InMemoryImages``) so augmentation can run on
whole batches; folders of image files stay on disk (``ImageFiles``). Readers for CIFAR binary and
gzipped IDX are written here because torchvision has none (its MNIST reader takes only raw IDX and
asserts on bad input; its CIFAR class checks MD5 sums of the full release and reads only pickles).
Every problem with a file is a ``ValueError``/``FileNotFoundError`` naming the file.
"""
from __future__ import annotations

import gzip
import io
import logging
import math
import pickle
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import UsageError

log = logging.getLogger(__name__)

DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagenet", "synthetic")
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
MNIST_CLASSES = [str(digit) for digit in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Per-channel mean/std on [0, 1] pixels: the seed's CIFAR figures, the usual ones for the rest.
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": IMAGENET_STATS,
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


@dataclass
class InMemoryImages:
    """A whole split in memory: ``images`` (N, C, H, W) uint8, ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]


@dataclass
class ImageFiles:
    """An ImageFolder split on disk: ``samples`` is [(path, label)], read when a batch asks for them."""

    samples: list[tuple[str, int]]
    classes: list[str]
    source: str
    channels: int = 3

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)


Dataset = Union[InMemoryImages, ImageFiles]


def build_dataset(name: str, path: Optional[str], split: str, *, download: bool = False,
                  synthetic_samples: int = 512, synthetic_classes: int = 10, synthetic_size: int = 32,
                  seed: int = 0) -> Dataset:
    """Split ``"train"`` or ``"val"`` of dataset ``name`` read from ``path``."""
    if split not in ("train", "val"):
        raise UsageError(f"split must be 'train' or 'val', got {split!r}")
    if name in ("fashion-mnist", "mnist"):
        return _mnist_like(name, path, split, download)
    if name == "cifar10":
        if download and path is not None:
            Path(path).expanduser().mkdir(parents=True, exist_ok=True)
        return _cifar10(_existing(path, name), split, download)
    if name == "imagenet":
        return image_folder(_existing(path, name), split)
    if name == "synthetic":
        count = synthetic_samples if split == "train" else max(1, synthetic_samples // 4)
        return synthetic(count, synthetic_classes, synthetic_size, seed=seed + (split == "val"))
    raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def _existing(path: Optional[str], name: str) -> Path:
    if path is None:
        raise UsageError(f"dataset {name} needs --data-path")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist")
    return folder


# ---------------------------------------------------------------------------------------- synthetic
def synthetic(count: int, num_classes: int, size: int, seed: int = 0) -> InMemoryImages:
    """Random RGB images whose class shifts the mean colour (learnable, for smoke tests and benchmarks)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    noise = torch.randint(0, 128, (count, 3, size, size), generator=generator)
    offset = (labels * 127 // max(1, num_classes - 1)).view(-1, 1, 1, 1)
    images = (noise + offset).clamp(0, 255).to(torch.uint8)
    return InMemoryImages(images, labels, [f"class_{i}" for i in range(num_classes)], f"synthetic(seed={seed})")


# ------------------------------------------------------------------------------------------- IDX
_IDX_DTYPES = {0x08: torch.uint8}


def read_idx(path: Path) -> torch.Tensor:
    """One IDX file (``*-idx3-ubyte`` images or ``*-idx1-ubyte`` labels), gzipped or not (told by its first bytes)."""
    try:
        data = path.read_bytes()
        data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise UsageError(f"{path}: cannot read ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] not in (1, 3):
        raise UsageError(f"{path}: not an IDX file of unsigned bytes (wrong magic number {data[:4].hex() or 'none'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UsageError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise UsageError(f"{path}: holds {len(data) - header} bytes of data, its header {list(dims)} says {expected}")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / "raw" / stem, folder / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{folder} has no {stem}[.gz]")


def _mnist_like(name: str, path: Optional[str], split: str, download: bool) -> InMemoryImages:
    folder = _mnist_folder(name, path, download)
    prefix = "train" if split == "train" else "t10k"
    images_file = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_file = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.dim() != 3:
        raise UsageError(f"{images_file}: expected 3 dimensions (count, rows, cols), found {images.dim()}")
    if labels.dim() != 1:
        raise UsageError(f"{labels_file}: expected 1 dimension (count), found {labels.dim()}")
    if len(images) != len(labels):
        raise UsageError(f"{images_file} holds {len(images)} images but {labels_file} {len(labels)} labels")
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    labels = labels.long()
    _check_label_range(labels, len(classes), labels_file)
    return InMemoryImages(images.unsqueeze(1).contiguous(), labels, list(classes), str(folder))


def _mnist_folder(name: str, path: Optional[str], download: bool) -> Path:
    torchvision_name = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    if path is None and name == "fashion-mnist" and FASHION_MNIST_SYSTEM_DIR.is_dir() and not download:
        return FASHION_MNIST_SYSTEM_DIR
    root = Path(path or Path.home() / ".cache" / "mobilenetv3").expanduser()
    if download:
        import torchvision.datasets as tv_datasets

        getattr(tv_datasets, torchvision_name)(str(root), train=True, download=True)
        getattr(tv_datasets, torchvision_name)(str(root), train=False, download=True)
    for folder in (root, root / torchvision_name):
        if (folder / "train-images-idx3-ubyte").exists() or (folder / "train-images-idx3-ubyte.gz").exists() \
                or (folder / "raw").is_dir():
            return folder
    if path is not None:
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        return root
    hint = "install the Debian/Ubuntu package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), " \
        if name == "fashion-mnist" else ""
    raise FileNotFoundError(f"{name} not found{' in ' + str(FASHION_MNIST_SYSTEM_DIR) if hint else ''}: "
                            f"{hint}pass --data-path DIR, or add --download (needs internet)")


# ----------------------------------------------------------------------------------------- CIFAR-10
_CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar_bin(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A CIFAR-10 binary batch: records of 1 label byte + 3072 bytes of CHW RGB."""
    data = path.read_bytes()
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise UsageError(f"{path}: {len(data)} bytes is not a whole number of {_CIFAR_RECORD}-byte CIFAR records "
                         "(truncated or not a CIFAR-10 binary batch)")
    records = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(-1, _CIFAR_RECORD)
    labels = records[:, 0].long()
    _check_label_range(labels, 10, path)
    return records[:, 1:].reshape(-1, 3, 32, 32).contiguous(), labels


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches (dicts, lists, bytes, numpy arrays) and nothing that runs code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),  # numpy ints as labels
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_pickle(path: Path) -> dict:
    """A CIFAR-10 python batch (or ``batches.meta``) with str keys: the release's, written by Python 2, load
    with str keys; batches written back by Python 3 after ``pickle.load(encoding="bytes")`` have bytes keys."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - any failure of a foreign pickle is a bad file
        raise UsageError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict):
        raise UsageError(f"{path}: not a CIFAR-10 python batch (holds {type(batch).__name__})")
    return {_text(key): value for key, value in batch.items()}


def _text(value):
    """``b"labels"`` -> ``"labels"``; anything else as it is."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _cifar_pickle_split(folder: Path, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for path in files:
        batch = read_cifar_pickle(path)
        if "data" not in batch or "labels" not in batch:
            raise UsageError(f"{path}: a CIFAR-10 python batch needs 'data' and 'labels' (it has "
                             f"{', '.join(repr(key) for key in list(batch)[:6]) or 'no keys'})")
        data = torch.as_tensor(batch["data"])
        if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != 3072 or len(data) != len(batch["labels"]):
            raise UsageError(f"{path}: 'data' must be N x 3072 uint8 with N labels, got {tuple(data.shape)} "
                             f"{data.dtype} and {len(batch['labels'])} labels")
        images.append(data.view(-1, 3, 32, 32))
        labels.append(torch.as_tensor(batch["labels"], dtype=torch.int64))
        _check_label_range(labels[-1], 10, path)
    return torch.cat(images), torch.cat(labels)


def _cifar10(path: Path, split: str, download: bool) -> InMemoryImages:
    """Binary layout (``cifar-10-batches-bin``, as the seed reads) or pickle (``cifar-10-batches-py``).

    Training reads only ``data_batch_*``: the seed also trains on ``test_batch.bin``, leaking the
    test set into training; that is not repeated here.
    """
    if download:
        import torchvision.datasets as tv_datasets

        tv_datasets.CIFAR10(str(path), train=True, download=True)
    for folder in (path, path / "cifar-10-batches-bin", path / "cifar-10-batches-py"):
        binary = sorted(folder.glob("data_batch_*.bin"))
        pickled = sorted(p for p in folder.glob("data_batch_*") if p.suffix == "")
        if binary or pickled:
            break
    else:
        raise FileNotFoundError(f"{path} holds no CIFAR-10 batches (data_batch_1.bin ... in cifar-10-batches-bin, "
                                "or data_batch_1 ... in cifar-10-batches-py)")
    if binary:
        files = binary if split == "train" else [folder / "test_batch.bin"]
        _require(files)
        parts = [read_cifar_bin(f) for f in files]
        images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        classes = _cifar_bin_classes(folder / "batches.meta.txt")
    else:
        files = pickled if split == "train" else [folder / "test_batch"]
        _require(files)
        images, labels = _cifar_pickle_split(folder, files)
        meta = folder / "batches.meta"
        classes = read_cifar_pickle(meta).get("label_names", CIFAR10_CLASSES) if meta.is_file() else CIFAR10_CLASSES
        classes = [_text(name) for name in classes]
    return InMemoryImages(images, labels, list(classes), str(folder))


def _cifar_bin_classes(meta: Path) -> list[str]:
    if meta.is_file():
        names = [line.strip() for line in meta.read_text(errors="replace").splitlines() if line.strip()]
        if len(names) == 10:
            return names
    return list(CIFAR10_CLASSES)


def _require(files: list[Path]) -> None:
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f} does not exist")


# ------------------------------------------------------------------------------------- ImageFolder
_VAL_FOLDERS = ("val", "validation", "test")


def split_folder(path: Path, split: str) -> Path:
    """``path/train`` or ``path/val`` (also ``validation``, ``test``); a path without them is itself one split
    (used for both training and validation)."""
    names = ("train",) if split == "train" else _VAL_FOLDERS
    for name in names:
        if (path / name).is_dir():
            return path / name
    if split == "val" and (path / "train").is_dir():  # else the folder "train" would become the only class
        raise FileNotFoundError(f"{path} has a train folder but no val folder (nor validation or test)")
    return path


def image_folder(path: Path, split: str) -> ImageFiles:
    """An ImageFolder split: class folders of images, named classes sorted as torchvision does.

    Validation labels index the training split's classes, so a class missing from ``val`` does not
    shift the labels of the classes after it.
    """
    import torchvision.datasets.folder as tv_folder  # here: torchvision takes seconds to import

    folder = split_folder(path, split)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    classes, class_to_idx = _class_folders(folder)
    if split == "val" and folder != path and (path / "train").is_dir():
        classes, class_to_idx = _val_classes(folder, path / "train", classes)
    samples = tv_folder.make_dataset(str(folder), class_to_idx, extensions=tv_folder.IMG_EXTENSIONS,
                                     allow_empty=True)
    if not samples:
        raise UsageError(f"{folder} has class folders but no images in any of them "
                         f"(looked for {', '.join(tv_folder.IMG_EXTENSIONS)})")
    present = {label for _, label in samples}
    empty = [name for name, label in class_to_idx.items() if label not in present]
    if empty:
        log.warning("%s: class folder(s) without images: %s", folder, ", ".join(empty[:5]))
    return ImageFiles(samples, classes, str(folder))


def _class_folders(folder: Path) -> tuple[list[str], dict[str, int]]:
    import torchvision.datasets.folder as tv_folder

    try:
        return tv_folder.find_classes(str(folder))
    except FileNotFoundError:
        raise UsageError(f"{folder} has no class folders (expected {folder}/<class>/<image>)") from None


def _val_classes(folder: Path, train_folder: Path, val_classes: list[str]) -> tuple[list[str], dict[str, int]]:
    """The training classes and index, checked against the validation folder's class folders."""
    classes, class_to_idx = _class_folders(train_folder)
    unknown = [name for name in val_classes if name not in class_to_idx]
    if unknown:
        raise UsageError(f"{folder} has class folder(s) that {train_folder} lacks: {', '.join(unknown[:5])}")
    return classes, {name: class_to_idx[name] for name in val_classes}


def _check_label_range(labels: torch.Tensor, num_classes: int, source) -> None:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise UsageError(f"{source}: label {int(bad[0])} is out of range for {num_classes} classes "
                         f"(labels must be 0 to {num_classes - 1})")


TRAINING_ADVICE = "raise --num-classes, or leave it out to use the dataset's class count"


def check_labels(dataset: Dataset, num_classes: int, advice: str = TRAINING_ADVICE) -> None:
    """Every label must index the model's classifier; else a ``UsageError`` ending in ``advice`` (what the
    command that reads the data can do about it)."""
    labels = dataset.labels
    if len(labels) and int(labels.max()) >= num_classes:
        raise UsageError(f"{dataset.source}: label {int(labels.max())} is out of range for num_classes={num_classes} "
                         f"({advice})")


def draw_sample(data: Dataset, count: int, seed: int) -> Dataset:
    """``count`` samples of ``data`` drawn at random without replacement with ``seed`` (all, shuffled, if fewer)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count]
    return subset(data, order.tolist())


def subset(data: Dataset, indices: list[int]) -> Dataset:
    """The samples of ``data`` at ``indices``, in that order: a dataset of the same kind, so every loader and
    sampler (which see only its length) takes it as it takes a whole split."""
    if isinstance(data, InMemoryImages):
        index = torch.as_tensor(indices, dtype=torch.int64)
        return replace(data, images=data.images[index], labels=data.labels[index])
    return replace(data, samples=[data.samples[i] for i in indices])


def draw_holdout(size: int, count: int, seed: int) -> list[int]:
    """``count`` of the indices ``0 .. size - 1``, drawn without replacement with ``seed``, sorted."""
    if not 0 < count < size:
        raise UsageError(f"--val-split {count} must hold out fewer images than the training set has ({size}) "
                         "and at least one")
    return sorted(torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count].tolist())


def split_holdout(data: Dataset, held_out: list[int]) -> tuple[Dataset, Dataset]:
    """``data`` without the samples at ``held_out``, and those samples (the validation set), each in
    ``data``'s order."""
    if len(set(held_out)) != len(held_out) or any(not 0 <= i < len(data) for i in held_out):
        raise UsageError(f"the held-out indices do not fit {data.source} ({len(data)} images): "
                         "repeated or out of range")
    held = set(held_out)
    rest = [i for i in range(len(data)) if i not in held]
    return subset(data, rest), subset(data, sorted(held_out))
