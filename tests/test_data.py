"""Datasets, transforms and loaders, built from small files these tests write in the real formats.

Reference values come from the fixture arrays themselves (what was written is what must be read)
and from torchvision (its IDX reader, its CIFAR-10 pickle loader, its v2 eval transforms).
Bad input through the command line (one line, exit code 2, no traceback) is in test_bad_input.py.
"""
import gzip
import itertools
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenetv3.data import (
    PRESETS,
    STATS,
    BatchAugment,
    EvalBatches,
    InMemoryImages,
    TrainBatches,
    build_dataset,
    build_loader,
    build_preset,
    datasets,
)
from mobilenetv3.data.datasets import CIFAR10_CLASSES, FASHION_MNIST_CLASSES
from mobilenetv3.data.loader import check_scored_once, worker_error_message

from builders import (
    CIFAR_TRAIN_COUNTS,
    CLASSES,
    idx_bytes,
    truncate,
    write_cifar_bin,
    write_cifar_py,
    write_idx,
    write_image_folder,
)
from conftest import run_cli


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imagefolder"), {"train": 5, "val": 3})


@pytest.fixture(scope="module")
def cifar_bin(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_bin")
    return root, write_cifar_bin(root)


@pytest.fixture(scope="module")
def cifar_py(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_py")
    return root, write_cifar_py(root)


@pytest.fixture(scope="module", params=[True, False], ids=["gz", "plain"])
def idx(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("idx_gz" if request.param else "idx_plain")
    return root, write_idx(root, gz=request.param)


# --------------------------------------------------------------------------------------- formats
def test_image_folder_classes_labels_and_modes(image_folder):
    train = build_dataset("imagenet", str(image_folder), "train")
    val = build_dataset("imagenet", str(image_folder), "val")
    assert train.classes == val.classes == list(CLASSES)
    assert len(train) == 10 and len(val) == 6
    assert train.labels.tolist() == [0] * 5 + [1] * 5
    assert train.labels.dtype == torch.int64
    assert {Path(p).parent.name for p, _ in val.samples} == set(CLASSES)


def test_image_folder_val_labels_follow_train_classes(tmp_path):
    """A class missing from val must not shift the labels of the classes after it."""
    write_image_folder(tmp_path, {"train": 1}, classes=("ant", "bee", "cow"))
    write_image_folder(tmp_path, {"val": 1}, classes=("ant", "cow"))
    val = build_dataset("imagenet", str(tmp_path), "val")
    assert val.classes == ["ant", "bee", "cow"]
    assert val.labels.tolist() == [0, 2]


def test_image_folder_val_class_unknown_to_train(tmp_path):
    write_image_folder(tmp_path, {"train": 1}, classes=("ant", "bee"))
    write_image_folder(tmp_path, {"val": 1}, classes=("ant", "emu"))
    with pytest.raises(ValueError, match="emu"):
        build_dataset("imagenet", str(tmp_path), "val")


def test_image_folder_train_without_val_folder(tmp_path):
    """Without this check the folder ``train`` itself became the only validation class."""
    write_image_folder(tmp_path, {"train": 1})
    with pytest.raises(FileNotFoundError, match="no val folder"):
        build_dataset("imagenet", str(tmp_path), "val")


def test_image_folder_without_splits_is_both_splits(tmp_path):
    write_image_folder(tmp_path, {"all": 2})
    train = build_dataset("imagenet", str(tmp_path / "all"), "train")
    val = build_dataset("imagenet", str(tmp_path / "all"), "val")
    assert train.samples == val.samples and len(train) == 4


def test_image_folder_empty_class_folder_is_a_warning(tmp_path, caplog):
    write_image_folder(tmp_path, {"train": 2})
    (tmp_path / "train" / "emu").mkdir()
    train = build_dataset("imagenet", str(tmp_path), "train")
    assert train.classes == ["cat", "dog", "emu"] and len(train) == 4
    assert "emu" in caplog.text


def test_cifar_binary_reads_what_was_written(cifar_bin):
    root, written = cifar_bin
    for split in ("train", "val"):
        data = build_dataset("cifar10", str(root), split)
        images, labels = written[split]
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(labels), 3, 32, 32)
        assert torch.equal(data.images, torch.from_numpy(images).view(-1, 3, 32, 32))
        assert torch.equal(data.labels, torch.from_numpy(labels).long())
        assert data.classes == CIFAR10_CLASSES
    # the seed trained on test_batch.bin too; training here is data_batch_1..5 only
    assert len(build_dataset("cifar10", str(root), "train")) == sum(CIFAR_TRAIN_COUNTS)


def test_cifar_binary_class_names_come_from_meta(tmp_path):
    write_cifar_bin(tmp_path)
    names = [f"kind{i}" for i in range(10)]
    (tmp_path / "cifar-10-batches-bin" / "batches.meta.txt").write_text("\n".join(names) + "\n")
    assert build_dataset("cifar10", str(tmp_path), "val").classes == names


def _torchvision_cifar10(root: Path, train: bool, monkeypatch):
    """torchvision's own CIFAR-10 pickle loader on our files (its MD5 checks are for the real release)."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    return tv_cifar.CIFAR10(str(root), train=train)


def test_cifar_pickle_matches_torchvision(cifar_py, monkeypatch):
    root, written = cifar_py
    for split in ("train", "val"):
        ours = build_dataset("cifar10", str(root), split)
        reference = _torchvision_cifar10(root, split == "train", monkeypatch)
        assert torch.equal(ours.images.permute(0, 2, 3, 1), torch.from_numpy(reference.data))  # theirs is HWC
        assert ours.labels.tolist() == reference.targets == written[split][1].tolist()
        assert ours.classes == reference.classes == CIFAR10_CLASSES
    assert len(build_dataset("cifar10", str(root), "train")) == sum(CIFAR_TRAIN_COUNTS)


def test_cifar_pickle_protocol_5(tmp_path):
    """Batches re-saved by Python 3 (pickle protocol 5 stores numpy arrays via ``_frombuffer``)."""
    written = write_cifar_py(tmp_path, protocol=5)
    data = build_dataset("cifar10", str(tmp_path), "train")
    assert torch.equal(data.images.view(len(data), -1), torch.from_numpy(written["train"][0]))


@pytest.mark.parametrize("text", [str, bytes], ids=["str-keys", "bytes-keys"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_pickle_written_by_python_3(tmp_path, text, protocol):
    """Batches written back by Python 3: keys (and class names) as str, or as bytes (b'data', b'labels'), as a
    batch read with pickle.load(encoding='bytes') keeps them; both were refused ("needs 'data' and 'labels'")."""
    written = write_cifar_py(tmp_path, protocol=protocol, text=text)
    for split in ("train", "val"):
        data = build_dataset("cifar10", str(tmp_path), split)
        assert torch.equal(data.images.view(len(data), -1), torch.from_numpy(written[split][0]))
        assert data.labels.tolist() == written[split][1].tolist()
        assert data.classes == CIFAR10_CLASSES


def test_cifar_pickle_refuses_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    write_cifar_py(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({"data": Payload()}))
    with pytest.raises(ValueError, match="data_batch_2: not a CIFAR-10 python batch .*refusing to load"):
        build_dataset("cifar10", str(tmp_path), "train")


def test_idx_reads_what_was_written(idx):
    root, written = idx
    for split in ("train", "val"):
        data = build_dataset("mnist", str(root), split)
        images, labels = written[split]
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(labels), 1, 28, 28)
        assert torch.equal(data.images[:, 0], torch.from_numpy(images))
        assert torch.equal(data.labels, torch.from_numpy(labels).long())
        assert data.classes == [str(i) for i in range(10)]
    assert build_dataset("fashion-mnist", str(root), "train").classes == FASHION_MNIST_CLASSES


def test_idx_reader_matches_torchvision(tmp_path):
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    write_idx(tmp_path, gz=False, seed=3)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert torch.equal(datasets.read_idx(tmp_path / name), read_sn3_pascalvincent_tensor(str(tmp_path / name)))


def test_idx_gzip_told_by_content_not_name(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(gzip.compress(idx_bytes(array)))  # gzipped, no .gz
    assert torch.equal(datasets.read_idx(tmp_path / "a-idx3-ubyte"), torch.from_numpy(array))


def test_synthetic():
    data = build_dataset("synthetic", None, "train", synthetic_samples=40, synthetic_classes=4, synthetic_size=32)
    val = build_dataset("synthetic", None, "val", synthetic_samples=40, synthetic_classes=4, synthetic_size=32)
    again = build_dataset("synthetic", None, "train", synthetic_samples=40, synthetic_classes=4, synthetic_size=32)
    assert data.images.shape == (40, 3, 32, 32) and data.images.dtype == torch.uint8
    assert len(val) == 10 and data.classes == [f"class_{i}" for i in range(4)]
    assert 0 <= int(data.labels.min()) and int(data.labels.max()) < 4
    assert torch.equal(data.images, again.images) and not torch.equal(data.images[:10], val.images)


# --------------------------------------------------------------------------------------- transforms
def _preset(name: str, data, in_chans: int, size: int = 32):
    mean, std = STATS["cifar10"] if data.channels == 3 else STATS["fashion-mnist"]
    native = data.images.shape[-1] if isinstance(data, InMemoryImages) else None
    return build_preset(name, size, mean, std, in_chans, native)


def _datasets(cifar_bin, image_folder, idx_root):
    return {"cifar10": build_dataset("cifar10", str(cifar_bin[0]), "train"),
            "mnist": build_dataset("mnist", str(idx_root), "train"),
            "imagefolder": build_dataset("imagenet", str(image_folder), "train")}


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_on_every_kind_of_dataset(preset, in_chans, cifar_bin, image_folder, tmp_path):
    write_idx(tmp_path, gz=True)
    for name, data in _datasets(cifar_bin, image_folder, tmp_path).items():
        recipe, pre = _preset(preset, data, in_chans)
        for train in (True, False):
            loader = build_loader(data, recipe, pre, train=train, batch_size=4, workers=0, num_classes=10)
            batch = next(iter(loader))
            assert batch.images.shape == (4, in_chans, 32, 32), (name, train)
            assert batch.images.dtype == torch.float32 and torch.isfinite(batch.images).all()
            assert batch.labels.dtype == torch.int64 and batch.labels.shape == (4,)
            assert 0 <= int(batch.labels.min()) and int(batch.labels.max()) < len(data.classes)
            assert batch.skipped == 0


@pytest.mark.parametrize("shape", [(28, 28), (28, 45)], ids=["square", "wide"])
@pytest.mark.parametrize("size", [16, 32, 160])  # seed-imagenet at 160: resize 183, an odd crop margin
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("channels", [1, 3])
def test_eval_protocol_matches_torchvision(preset, size, channels, shape):
    """In-memory eval == torchvision v2 Resize + CenterCrop + ToDtype + Normalize on the same uint8 images."""
    from torchvision.transforms import InterpolationMode, v2

    images = torch.randint(0, 256, (6, channels, *shape), dtype=torch.uint8)
    mean, std = STATS["cifar10"] if channels == 3 else STATS["fashion-mnist"]
    recipe, pre = build_preset(preset, size, mean, std, channels, native_size=28)
    resize = v2.Resize(pre.resize, interpolation=InterpolationMode.BILINEAR, antialias=True)
    to_float, normalize = v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))
    on_uint8 = v2.Compose([resize, v2.CenterCrop(pre.crop), to_float, normalize])(images)
    on_float = v2.Compose([to_float, resize, v2.CenterCrop(pre.crop), normalize])(images)
    ours = BatchAugment(recipe, pre, train=False)(images, torch.Generator())
    assert ours.shape == on_uint8.shape == (6, channels, size, size)
    assert torch.allclose(ours, on_float, atol=1e-5)
    # torchvision's uint8 resize (fixed-point kernel, rounded to uint8) is within a grey level of the exact one
    assert torch.allclose(ours, on_uint8, atol=1 / 255 / min(pre.std) + 1e-5)


def test_gray_to_rgb_and_rgb_to_gray():
    """RGB -> gray as PIL's convert("L") (ITU-R 601 luma; PIL rounds in fixed point: off by one at most)."""
    from mobilenetv3.data.transforms import to_channels

    rgb = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    gray = to_channels(rgb, 1)
    reference = torch.stack([torch.from_numpy(np.array(Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L")))
                             for image in rgb])[:, None]
    assert gray.shape == (2, 1, 16, 16) and gray.dtype == torch.uint8
    assert (gray.int() - reference.int()).abs().max() <= 1
    assert torch.equal(to_channels(gray, 3), gray.expand(-1, 3, -1, -1))


def test_small_preset_pads_an_eighth_for_image_files():
    """For image files the crop padding is scaled from 32 px: size/8, not size * size / 256."""
    from mobilenetv3.data.transforms import image_transform

    for size in (32, 64, 224):
        recipe, pre = build_preset("small", size, (0.5,), (0.5,), 3)
        crop = [step for step in image_transform(recipe, pre, train=True).transforms
                if type(step).__name__ == "RandomCrop"][0]
        assert crop.padding == [size // 8] * 4


def test_mixup_cutmix_soft_targets(cifar_bin):
    data = build_dataset("cifar10", str(cifar_bin[0]), "train")
    recipe, pre = _preset("small", data, 3)
    for mixup, cutmix in ((0.2, 0.0), (0.0, 1.0), (0.2, 1.0)):
        loader = build_loader(data, recipe, pre, train=True, batch_size=4, workers=0, mixup_alpha=mixup,
                              cutmix_alpha=cutmix, num_classes=10)
        for batch in loader:
            assert batch.labels.shape == (4, 10) and batch.labels.dtype == torch.float32
            assert torch.allclose(batch.labels.sum(1), torch.ones(4))
            assert (batch.labels >= 0).all()


# ------------------------------------------------------------------------------------------ loaders
def _indexed(count: int, channels: int = 1) -> InMemoryImages:
    """Sample i has label i: the labels of the batches say which samples were served."""
    images = torch.randint(0, 256, (count, channels, 28, 28), dtype=torch.uint8)
    return InMemoryImages(images, torch.arange(count), [str(i) for i in range(count)], "indexed")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_loader_covers_every_sample_once(world_size):
    data = _indexed(23)  # 23 is a multiple of neither the batch size nor 2 or 3
    recipe, pre = _preset("small", data, 1)
    served = []
    for rank in range(world_size):
        loader = build_loader(data, recipe, pre, train=False, batch_size=4, workers=0, rank=rank,
                              world_size=world_size)
        served += [label for batch in loader for label in batch.labels.tolist()]
    assert sorted(served) == list(range(23))


@pytest.mark.parametrize("world_size", [2, 3])
def test_eval_shards_are_disjoint(world_size):
    shards = [{i for request in EvalBatches(10, 3, rank=rank, world_size=world_size) for i in request.indices}
              for rank in range(world_size)]
    assert sum(len(s) for s in shards) == 10 and set().union(*shards) == set(range(10))


def test_a_count_that_misses_samples_is_a_run_error():
    from mobilenetv3.errors import RunError

    data = _indexed(10)
    check_scored_once(dict(count=8, skipped=2), data, "validation")  # the two skipped: every other sample once
    with pytest.raises(RunError, match="validation scored 9 samples, the dataset has 10"):
        check_scored_once(dict(count=9, skipped=0), data, "validation")
    with pytest.raises(RunError, match="the test split scored 11 samples, the dataset has 10"):
        check_scored_once(dict(count=11, skipped=0), data, "the test split")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_train_batches_deterministic_and_resumable(world_size):
    def batches(rank, epoch, start=0):
        sampler = TrainBatches(48, 4, rank=rank, world_size=world_size, seed=5)
        sampler.set_epoch(epoch, start_batch=start)
        return list(sampler)

    per_rank = [batches(rank, 3) for rank in range(world_size)]
    for rank, epoch_batches in enumerate(per_rank):
        assert len(epoch_batches) == 48 // world_size // 4
        assert epoch_batches == batches(rank, 3)  # same (seed, epoch): same batches, same seeds
        assert epoch_batches != batches(rank, 4)
        for k in (1, len(epoch_batches) - 1):
            assert batches(rank, 3, start=k) == epoch_batches[k:]
    served = [i for epoch_batches in per_rank for request in epoch_batches for i in request.indices]
    assert sorted(served) == list(range(48))  # ranks split the epoch without overlap
    seeds = [request.seed for epoch_batches in per_rank for request in epoch_batches]
    assert len(set(seeds)) == len(seeds)


def _first_batches(loader, count: int):
    return [(batch.images.clone(), batch.labels.clone()) for batch in itertools.islice(loader, count)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (images_a, labels_a), (images_b, labels_b) in zip(a, b):
        assert torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)


def test_augmentation_is_independent_of_worker_count(cifar_bin, image_folder):
    cifar = build_dataset("cifar10", str(cifar_bin[0]), "train")
    files = build_dataset("imagenet", str(image_folder), "train")
    for data, preset in ((cifar, "seed-cifar10"), (cifar, "seed-imagenet"), (files, "seed-cifar10")):
        recipe, pre = _preset(preset, data, 3)
        runs = []
        for workers in (0, 2):
            loader = build_loader(data, recipe, pre, train=True, batch_size=2, workers=workers, seed=3,
                                  mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=10)
            loader.sampler.set_epoch(1)
            runs.append(_first_batches(loader, 3))
        _assert_same_batches(*runs)


def test_resumed_epoch_serves_the_same_batches(cifar_bin):
    data = build_dataset("cifar10", str(cifar_bin[0]), "train")
    recipe, pre = _preset("seed-cifar10", data, 3)
    loader = build_loader(data, recipe, pre, train=True, batch_size=2, workers=0, seed=9)
    loader.sampler.set_epoch(2)
    whole = _first_batches(loader, len(loader))
    loader.sampler.set_epoch(2, start_batch=3)
    _assert_same_batches(_first_batches(loader, len(loader)), whole[3:])


def test_skipped_images_are_counted(tmp_path):
    write_image_folder(tmp_path, {"train": 2})
    bad = tmp_path / "train" / "cat" / "0_RGB.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    data = build_dataset("imagenet", str(tmp_path), "train")
    recipe, pre = _preset("small", data, 3)
    loader = build_loader(data, recipe, pre, train=False, batch_size=4, workers=0, skip_bad_images=True)
    batches = list(loader)
    assert sum(b.skipped for b in batches) == 1 and sum(len(b.labels) for b in batches) == 3
    loader = build_loader(data, recipe, pre, train=False, batch_size=4, workers=0)
    with pytest.raises(ValueError, match="0_RGB.jpg: unreadable image"):
        list(loader)


def test_worker_errors_keep_their_one_line_message(tmp_path):
    """A DataLoader worker's error arrives as the worker raised it, not wrapped in its traceback."""
    write_image_folder(tmp_path, {"train": 2})
    (tmp_path / "train" / "dog" / "1_L.png").write_bytes(b"not a png")
    data = build_dataset("imagenet", str(tmp_path), "train")
    recipe, pre = _preset("small", data, 3)
    loader = build_loader(data, recipe, pre, train=False, batch_size=4, workers=1)
    with pytest.raises(ValueError) as caught:
        list(loader)
    assert str(caught.value).startswith(str(tmp_path / "train" / "dog" / "1_L.png") + ": unreadable image")
    assert "Traceback" not in str(caught.value)
    wrapped = ("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\nValueError: /a/b.jpg: unreadable image (truncated)\n')
    assert worker_error_message(wrapped) == "/a/b.jpg: unreadable image (truncated)"
    assert worker_error_message("/a/b.jpg: unreadable image") is None


# ------------------------------------------------------------------------------------ Fashion-MNIST
needs_fashion_mnist = pytest.mark.skipif(not (datasets.FASHION_MNIST_SYSTEM_DIR / "train-labels-idx1-ubyte.gz")
                                         .is_file(), reason="dataset-fashion-mnist is not installed")


@needs_fashion_mnist
def test_fashion_mnist_found_without_a_path():
    from torchvision.datasets import FashionMNIST

    train = build_dataset("fashion-mnist", None, "train")
    val = build_dataset("fashion-mnist", None, "val")
    assert len(train) == 60000 and len(val) == 10000
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert int(train.labels[0]) == 9 and train.classes[9] == "Ankle boot"  # the first training image is a boot
    assert train.classes == FashionMNIST.classes
    assert torch.bincount(val.labels).tolist() == [1000] * 10


def test_fashion_mnist_absent_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/mobilenetv3 download either
    with pytest.raises(FileNotFoundError) as caught:
        build_dataset("fashion-mnist", None, "train")
    message = str(caught.value)
    assert "\n" not in message
    assert "dataset-fashion-mnist" in message and "--download" in message and "--data-path" in message


# ------------------------------------------------------------------------------------- bad images
def test_skip_bad_images_trains_and_counts(tmp_path):
    """The way past an unreadable image (which is one error line: test_bad_input.py): skip and count it."""
    write_image_folder(tmp_path / "data", {"train": 4, "val": 2})
    truncate(tmp_path / "data" / "train" / "cat" / "0_RGB.jpg")
    run_dir = tmp_path / "run"
    result = run_cli("train", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4", "--no-progress",
                     "--run-dir", run_dir, "--model", "mobilenetv3_small", "--image-size", "32", "--workers", "0",
                     "--dataset", "imagenet", "--data-path", tmp_path / "data", "--skip-bad-images", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "skipping unreadable image" in result.stderr and "0_RGB.jpg" in result.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped"] == 1
