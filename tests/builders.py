"""The small inputs tests are made of, written in the real formats: image folders, CIFAR-10 and IDX files,
weights files, and the settings of a tiny training run. One place, so that a test file never copies another's.

Writers return what they wrote (the arrays, the path), so a test can compare what is read with it.
"""
import gzip
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from mobilenetv3.data.datasets import CIFAR10_CLASSES

CLASSES = ("cat", "dog")
# (PIL mode, file type): every mode load_image must convert rather than reject
IMAGE_MODES = [("RGB", "JPEG"), ("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG")]
CIFAR_TRAIN_COUNTS = (3, 2, 3, 2, 3)  # records in data_batch_1 ... data_batch_5
CIFAR_TEST_COUNT = 4
CIFAR_RECORD = 1 + 3072  # a label byte, then 3 x 32 x 32 pixels
IDX_COUNTS = {"train": 12, "t10k": 5}


# ------------------------------------------------------------------------------------------- images
def write_image(path: Path, mode: str = "RGB", fmt: str = "PNG", size=(40, 36), seed: int = 0) -> Path:
    """A noise image saved in ``mode`` (converted from RGB, as an editor would save it)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt)
    return path


def write_image_folder(root: Path, per_class: dict, classes=CLASSES) -> Path:
    """``root/<split>/<class>/<i>_<mode>.jpg|png`` cycling through IMAGE_MODES; returns root."""
    seed = 0
    for split, count in per_class.items():
        for name in classes:
            for i in range(count):
                mode, fmt = IMAGE_MODES[i % len(IMAGE_MODES)]
                ext = "jpg" if fmt == "JPEG" else "png"
                write_image(root / split / name / f"{i}_{mode}.{ext}", mode, fmt, seed=seed)
                seed += 1
    return root


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` to the first ``keep`` of its bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


# ----------------------------------------------------------------------------------------- CIFAR-10
def cifar_arrays(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 3072), dtype=np.uint8), rng.integers(0, 10, count).astype(np.uint8)


def write_cifar_bin(root: Path) -> dict:
    """``cifar-10-batches-bin`` as the release lays it out; returns the arrays written per split."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    written = {"train": [], "val": []}
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for seed, (name, count) in enumerate(zip(names, CIFAR_TRAIN_COUNTS + (CIFAR_TEST_COUNT,))):
        data, labels = cifar_arrays(count, seed)
        (folder / name).write_bytes(np.concatenate([labels[:, None], data], 1).tobytes())
        written["val" if name == "test_batch.bin" else "train"].append((data, labels))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    return {split: (np.concatenate([d for d, _ in parts]), np.concatenate([lab for _, lab in parts]))
            for split, parts in written.items()}


def write_cifar_records(root: Path, records: bytes, test_records: bytes = None) -> Path:
    """``cifar-10-batches-bin`` whose five training batches hold ``records`` and whose test batch holds
    ``test_records`` (the same when not given), bytes as given: for batches that are wrong on purpose."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(records)
    (folder / "test_batch.bin").write_bytes(records if test_records is None else test_records)
    return root


def write_cifar_py(root: Path, protocol: int = 2, text=str) -> dict:
    """``cifar-10-batches-py``: pickled dicts of N x 3072 uint8 ``data`` and a ``labels`` list, as released.
    ``text=bytes``: every key and name as bytes, as Python 3 writes back the release's batches once it has read
    them with ``pickle.load(f, encoding="bytes")`` (``b"data"``, ``b"labels"``, ``b"label_names"``)."""
    def t(value: str):
        return value.encode() if text is bytes else value

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {"train": [], "val": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, (name, count) in enumerate(zip(names, CIFAR_TRAIN_COUNTS + (CIFAR_TEST_COUNT,))):
        data, labels = cifar_arrays(count, 100 + seed)
        batch = {t("batch_label"): t(name), t("labels"): labels.tolist(), t("data"): data,
                 t("filenames"): [t(f"img_{i}.png") for i in range(count)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written["val" if name == "test_batch" else "train"].append((data, labels))
    meta = {t("num_cases_per_batch"): 10000, t("label_names"): [t(n) for n in CIFAR10_CLASSES], t("num_vis"): 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return {split: (np.concatenate([d for d, _ in parts]), np.concatenate([lab for _, lab in parts]))
            for split, parts in written.items()}


# ---------------------------------------------------------------------------------- (Fashion-)MNIST
def idx_bytes(array: np.ndarray, magic_type: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, magic_type, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(root: Path, gz: bool, seed: int = 0) -> dict:
    """(Fashion-)MNIST: ``{train,t10k}-images-idx3-ubyte`` and ``-labels-idx1-ubyte``, gzipped or plain."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for prefix, count in IDX_COUNTS.items():
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            (root / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
        written["train" if prefix == "train" else "val"] = (images, labels)
    return written


# ------------------------------------------------------------------------------------- weights files
def write_weights(path: Path, num_classes: int = 3, bias=None, preprocessing: dict = None,
                  responsive: bool = False, trained_on: dict = None, in_chans: int = 3, classes=None) -> Path:
    """Our weights file (format ``mobilenetv3``) of a fresh MobileNetV3-Small at width 0.5; with ``bias``
    (one number per class) a model that ignores its input: zero classifier weights, that bias. With
    ``preprocessing`` (resize=..., crop=..., mean=...) the file names its classes c0, c1, ... too.
    ``responsive``: batch-norm statistics measured on random images and a wider classifier, seeded, so that
    the outputs differ from image to image (a fresh network's hardly do). ``trained_on``: settings of the run
    that saved it (``dict(dataset=..., data_path=...)``), kept as a training checkpoint keeps its config: what
    an export records as its training data. ``in_chans``: input channels; ``classes``: names instead of c0, c1, ...
    (with ``preprocessing``)."""
    import torch

    from mobilenetv3 import weights as wts
    from mobilenetv3.models import create_model

    model = create_model("mobilenetv3_small", num_classes=num_classes, width_mult=0.5,
                         **(dict(in_chans=in_chans) if in_chans != 3 else {}))
    if responsive:
        _make_responsive(model, torch.Generator().manual_seed(0))
    if bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(bias))
    names = list(classes) if classes else [f"c{i}" for i in range(num_classes)]
    extra = dict(classes=names, preprocessing=preprocessing) if preprocessing else {}
    weights = wts.Weights(model.model_name, model.model_kwargs, model.state_dict(), "mobilenetv3", **extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    if trained_on is None:
        wts.write_weights(weights, path, "mobilenetv3")
        return path
    from mobilenetv3.checkpoint import Checkpoint
    from mobilenetv3.config import Config

    config = Config()
    config.update(trained_on)
    Checkpoint(**weights.card(), model=weights.state_dict, config=config.to_dict()).save(path)
    return path


def _make_responsive(model, generator) -> None:
    import torch

    channels = model.model_kwargs.get("in_chans", 3)
    images = torch.rand(64, channels, 64, 64, generator=generator) * torch.rand(64, channels, 1, 1,
                                                                                generator=generator) * 4 - 2
    norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = None  # a plain average over the one batch
        norm.reset_running_stats()
    with torch.no_grad():
        model.train()(images)
        fan_in = model.classifier.weight.shape[1]
        model.classifier.weight.normal_(0, 4 / fan_in**0.5, generator=generator)  # logits of a few units
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


def write_random_bytes(path: Path, count: int, seed: int) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, count, dtype=np.uint8).tobytes())
    return path


def write_crc_ckpt(path: Path, body: bytes, wrong: bool = False) -> Path:
    """A MindSpore ``.ckpt`` with the CRC-32 trailer MindSpore appends (``crc_num`` + 10 bytes); ``wrong``
    flips a bit of the checksum."""
    crc = zlib.crc32(body) ^ (1 if wrong else 0)
    path.write_bytes(body + b"crc_num" + crc.to_bytes(10, "big"))
    return path


class CodeRunningPayload:
    """Unpickling this object creates ``marker``: the proof that code from a file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# ---------------------------------------------------------------------------------- a tiny training run
TINY = dict(dataset="synthetic", synthetic_samples=48, image_size=32, batch_size=8, model="mobilenetv3_small",
            width_mult=0.5, epochs=2, warmup_epochs=1, lr=0.05, workers=0, progress=False, seed=3, stem_stride=2)


def tiny_config(run_dir, **overrides):
    """The ``Config`` of a tiny run (48 synthetic 32x32 images, 6 steps an epoch) into ``run_dir``."""
    from mobilenetv3.config import load_config

    return load_config(None, dict(TINY, run_dir=str(run_dir), **overrides))


def tiny_flags(run_dir, **overrides) -> list:
    """``train`` and the flags of the same tiny run; ``run_dir=None`` leaves --run-dir out."""
    values = dict(TINY, **overrides)
    if run_dir is not None:
        values["run_dir"] = str(run_dir)
    flags = ["train"]
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags
