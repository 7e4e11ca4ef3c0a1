"""Bad input of every kind, through the command line: one clear line on stderr, exit code 2 for the user's
mistake (1 for a fault of the run itself), and nothing half-written left behind.

One table, one test. Each case gets a folder of its own: its files are made there, its command runs there,
and afterwards the folder must hold what it held before (no run directory, no output, no temporary file,
every file as it was), except what a run that had started leaves (its log), and never what ``absent`` names.
"""
import gzip
import hashlib
import os
import re
import struct
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pytest
import torch
from PIL import Image

from builders import (
    IDX_COUNTS,
    CodeRunningPayload,
    idx_bytes,
    tiny_config,
    tiny_flags,
    truncate,
    write_cifar_bin,
    write_cifar_records,
    write_crc_ckpt,
    write_idx,
    write_image,
    write_image_folder,
    write_random_bytes,
    write_weights,
)
from conftest import mindspore_fixture, run_cli

# how the error line starts, by exit code ("mobilenetv3: error: ..." when no command was recognised)
ERROR_LINE = {2: r"mobilenetv3( [a-z]+)?: error: ", 1: r"mobilenetv3 [a-z]+: failed: "}


@dataclass(frozen=True)
class Case:
    name: str
    argv: list  # after `mobilenetv3`; "{d}" stands for the case's folder
    says: Union[str, tuple]  # what the error line holds ("{d}" as in argv)
    make: Union[Callable, tuple] = ()  # writers of the case's files: each takes the folder; one may return a
    #                                    context manager, held while the command runs (a lock, a read-only folder)
    code: int = 2  # 2: the user's mistake; 1: a fault of the run
    absent: tuple = ()  # what must not exist afterwards, relative to the folder
    mid_run: bool = False  # found once training has started: the run's log lines come first, the error line last
    whole_line: bool = False  # ``says`` is the whole error line
    process: bool = False  # needs a real process: DataLoader workers, a fresh interpreter


def tiny(run_dir: Optional[str] = "{d}/run", **overrides) -> list:
    """The flags of a one-epoch tiny training run (``None``: no --run-dir)."""
    return tiny_flags(run_dir, **{"epochs": 1, **overrides})


# ------------------------------------------------------------------------------------ the case's files
def weights(d: Path) -> None:
    write_weights(d / "weights.pt", num_classes=3)  # a 3-class MobileNetV3-Small, no EMA


def weights_10(d: Path) -> None:
    write_weights(d / "weights10.pt", num_classes=10)


def truncated_weights(d: Path) -> None:
    path = write_weights(d / "truncated.pt", num_classes=3)
    path.write_bytes(path.read_bytes()[:20000])


def torchscript_file(d: Path) -> None:
    """``m.torchscript.pt``: a traced 3-class model, as ``export --format torchscript`` writes it."""
    from mobilenetv3.models import create_model

    model = create_model("mobilenetv3_small", num_classes=3, width_mult=0.5).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation
        torch.jit.trace(model, torch.zeros(1, 3, 32, 32)).save(str(d / "m.torchscript.pt"))


def random_pt(d: Path) -> None:
    write_random_bytes(d / "random.pt", 5000, seed=1)


def random_ckpt(d: Path) -> None:
    write_random_bytes(d / "random.ckpt", 5000, seed=1)


def not_a_jpeg(d: Path) -> None:
    (d / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")


def not_a_png(d: Path) -> None:
    (d / "bad.png").write_bytes(b"not an image")


def plain_file(d: Path) -> None:
    (d / "plain_file").write_text("x")


def yaml_files(d: Path) -> None:
    (d / "bad.yaml").write_text("optim:\n  lr: [1, 2\n")
    (d / "typo.yaml").write_text("optim:\n  lrr: 0.1\n")
    (d / "batchsize.yaml").write_text("data:\n  batchsize: 4\n")
    (d / "zero_batch.yaml").write_text("data:\n  batch_size: 0\n")  # a YAML file's setting keeps its key


def no_class_folders(d: Path) -> None:
    (d / "empty_folder").mkdir()
    (d / "empty_folder" / "readme.txt").write_text("no class folders here")


def loose_images(d: Path) -> None:  # images right under train/ and val/, no class folders
    write_image(d / "loose" / "train" / "a.png")
    write_image(d / "loose" / "val" / "b.png")


def class_folders_without_images(d: Path) -> None:
    for split in ("train", "val"):
        (d / "empty" / split / "cat").mkdir(parents=True)
        (d / "empty" / split / "cat" / "notes.txt").write_text("no images here")


def truncated_image(d: Path) -> None:
    write_image_folder(d / "data", {"train": 4, "val": 2})
    truncate(d / "data" / "train" / "cat" / "0_RGB.jpg")


def cifar(d: Path) -> None:
    write_cifar_bin(d / "cifar")


def cifar_batch_cut_short(d: Path) -> None:
    write_cifar_bin(d / "cifar")
    short = d / "cifar" / "cifar-10-batches-bin" / "data_batch_3.bin"
    short.write_bytes(short.read_bytes()[:-100])


def cifar_label_10(d: Path) -> None:
    write_cifar_bin(d / "cifar")
    test_batch = d / "cifar" / "cifar-10-batches-bin" / "test_batch.bin"
    records = bytearray(test_batch.read_bytes())
    records[3073] = 10  # the second record's label
    test_batch.write_bytes(bytes(records))


def cifar_test_batch_cut_short(d: Path) -> None:
    write_cifar_records(d / "cifar", bytes(3073 * 2), bytes(3073 * 2 - 100))


def cifar_label_7(d: Path) -> None:  # label 7: beyond a 3-class model
    write_cifar_records(d / "cifar_ok", (bytes([7]) + bytes(3072)) * 3)


def idx_wrong_magic(d: Path) -> None:
    write_idx(d / "idx", gz=True)
    magic = d / "idx" / "train-images-idx3-ubyte.gz"
    magic.write_bytes(gzip.compress(b"\x08\x03\x00\x00" + gzip.decompress(magic.read_bytes())[4:]))


def idx_wrong_magic_in_val(d: Path) -> None:  # a good training split, a val split with magic 0x999
    idx = d / "idx"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((2, 28, 28)))))
    (idx / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(2))))
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (idx / f"{stem}.gz").write_bytes(gzip.compress(struct.pack(">II", 0x00000999, 2) + bytes(10)))


def idx_one_label_short(d: Path) -> None:
    write_idx(d / "idx", gz=False)
    (d / "idx" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(IDX_COUNTS["train"] - 1)))


def idx_label_12(d: Path) -> None:
    write_idx(d / "idx", gz=False)
    (d / "idx" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 12, 3, 4, 5])))


def code_running_pickle(d: Path) -> None:
    """``evil.pt``: loading it with pickle would create ``pwned``; and an image to predict."""
    from mobilenetv3 import checkpoint as ckpt

    torch.save({"model": CodeRunningPayload(d / "pwned"), "format": ckpt.FORMAT}, d / "evil.pt")
    Image.new("RGB", (8, 8)).save(d / "image.png")


def a_finished_run(d: Path) -> None:
    from mobilenetv3.tasks import train

    train(tiny_config(d / "run", epochs=1))


def a_run_in_progress(d: Path):
    from mobilenetv3.rundir import run_lock

    return run_lock(d / "busy", resuming=False)  # what a training in another process holds


def a_copied_run(d: Path) -> None:
    """A run's files copied elsewhere: checkpoints, but no .lock."""
    a_finished_run(d)
    (d / "run" / ".lock").unlink()


def a_resumed_run_in_progress(d: Path):
    """A run with checkpoints, being continued right now (by another process)."""
    from mobilenetv3.rundir import run_lock

    a_finished_run(d)
    return run_lock(d / "run", resuming=True)


@contextmanager
def read_only_run_dir(d: Path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    (d / "ro").mkdir()
    (d / "ro").chmod(0o500)
    try:
        yield
    finally:
        (d / "ro").chmod(0o700)


def malformed_ckpt(kind: str) -> Callable:
    """A writer of ``bad.ckpt``, malformed as ``kind`` says."""
    def make(d: Path) -> None:
        path = d / "bad.ckpt"
        if kind == "random":
            write_random_bytes(path, 4096, seed=0)
        elif kind == "truncated":
            body = mindspore_fixture("small_10_calib.ckpt").read_bytes()
            path.write_bytes(body[: len(body) // 3])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "wrong-crc":
            write_crc_ckpt(path, mindspore_fixture("small_10_calib.ckpt").read_bytes(), wrong=True)
        elif kind == "other-model":
            from mobilenetv3.convert import write_ckpt

            write_ckpt({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, path)
        elif kind == "pickle-as-ckpt":
            torch.save({"a": 1}, path)
    return make


# ----------------------------------------------------------------------------------------------- the table
SYNTHETIC = ["--dataset", "synthetic", "--synthetic-samples", "86", "--image-size", "32", "--seed", "5"]
BUSY_PORT = 47391  # held by the case's context manager (if another program holds it, the error is the same)


@contextmanager
def port_in_use(d: Path):
    import socket

    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        try:
            held.bind(("127.0.0.1", BUSY_PORT))
            held.listen()
        except OSError:
            pass  # busy already
        yield


def tiny_ir_file(d: Path) -> None:
    (d / "model.xml").write_text("<net/>")


def onnx_named_file(d: Path) -> None:
    write_random_bytes(d / "model.onnx", 3000, seed=2)


@contextmanager
def modules_missing(*names):
    """``import NAME`` fails for each of ``names`` as if it were not installed. Only those keys of sys.modules
    change, and only they are put back: ``mock.patch.dict(sys.modules)`` would also drop every module imported
    meanwhile (torch's among them), and their second import later crashed the test process."""
    import sys

    absent = object()
    saved = {name: sys.modules.get(name, absent) for name in names}
    sys.modules.update(dict.fromkeys(names))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is absent:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def serve_extra_missing(d: Path):
    return modules_missing("uvicorn")


def openvino_extra_missing(d: Path):
    return modules_missing("openvino", "nncf")


def openvino_ir(d: Path) -> None:
    """``model.xml`` + ``model.bin``: the IR of a 3-class model with its card, and an image to predict."""
    pytest.importorskip("openvino")
    from mobilenetv3.export import export_openvino
    from mobilenetv3.weights import load_model

    path = write_weights(d / "w.pt", num_classes=3, preprocessing=dict(resize=32, crop=32, interpolation="bilinear",
                                                                       mean=(0.5,) * 3, std=(0.25,) * 3, in_chans=3))
    export_openvino(load_model(path), d / "model.xml", torch.zeros(1, 3, 32, 32))
    write_image(d / "image.png")


def net_without_version(d: Path) -> None:
    """``model.xml`` of ``<net/>``: XML with the IR's root, but no IR version (OpenVINO then tried every frontend,
    and TensorFlow's wrote three lines of absl log to the terminal); and an image to predict."""
    pytest.importorskip("openvino")
    tiny_ir_file(d)
    write_image(d / "image.png")


def empty_ir(d: Path) -> None:
    """``model.xml``: an IR of version 11 with no layers (read, it was an IndexError: exit 1, no file named)."""
    pytest.importorskip("openvino")
    (d / "model.xml").write_text('<?xml version="1.0"?>\n<net name="x" version="11"><layers></layers></net>')
    write_image(d / "image.png")


def garbage_ir(d: Path) -> None:
    openvino_ir(d)
    (d / "model.xml").write_text("garbage <net> not xml")


def ir_bin_cut_short(d: Path) -> None:
    openvino_ir(d)
    truncate(d / "model.bin", keep=0.3)


def ir_without_bin(d: Path) -> None:
    openvino_ir(d)
    (d / "model.bin").unlink()


def torch_program_of_random_bytes(d: Path) -> None:
    """``model.torchscript.pt`` and ``model.pt2``: random bytes under the names export gives those programs."""
    write_random_bytes(d / "model.torchscript.pt", 3000, seed=4)
    write_random_bytes(d / "model.pt2", 3000, seed=5)


def an_image(d: Path) -> None:
    write_image(d / "image.png")


def a_folder_named_m_bin(d: Path) -> None:
    (d / "m.bin").mkdir()


def weights_named_bin(d: Path) -> None:  # as Hugging Face names them: pytorch_model.bin
    write_weights(d / "weights.bin", num_classes=3)


def executorch_extra_missing(d: Path):
    return modules_missing("executorch")


def random_pte(d: Path) -> None:
    """``model.pte`` of random bytes, and an image to predict."""
    write_random_bytes(d / "model.pte", 5000, seed=3)
    write_image(d / "image.png")


def pte_of_garbage(d: Path) -> None:
    """``model.pte`` with a .pte's first eight bytes (root offset, identifier ``ET12``), random bytes after them."""
    pytest.importorskip("executorch")
    random_pte(d)
    (d / "model.pte").write_bytes(b"\x3c\x00\x00\x00ET12" + (d / "model.pte").read_bytes()[8:])


def executorch_installed(d: Path) -> None:
    pytest.importorskip("executorch")


def a_folder_named_m_pte(d: Path) -> None:
    (d / "m.pte").mkdir()


IR_EXTRA = "OpenVINO needs the openvino extra: pip install 'mobilenetv3[openvino]'"
PTE_EXTRA = "ExecuTorch needs the executorch extra: pip install 'mobilenetv3[executorch]'"
INT8_EXPORT = ["export", "--checkpoint", "{d}/weights.pt", "--no-dataset", "--format", "openvino-int8"]
REFUSED = "refused to load: it holds Python objects that could run code"

CASES = [
    # ---- the command and its flags
    Case("unknown command", ["fly"], "invalid choice: 'fly'"),
    Case("unknown flag", ["info", "mobilenetv3_large", "--colour"], "unrecognized arguments: --colour"),
    Case("unknown training flag", ["train", "--learning-rate", "0.1"], "unrecognized arguments: --learning-rate"),
    Case("a prefix of a flag is not the flag", ["train", "--epoch", "1"], "unrecognized arguments: --epoch 1"),
    Case("a prefix of an eval flag is not the flag", ["eval", "--check", "x.pt"],  # once taken as --checkpoint
         "unrecognized arguments: --check x.pt"),
    # ---- info
    Case("info: no model named", ["info"], "name a model: one of mobilenetv3_large, mobilenetv3_small"),
    Case("info: unknown model", ["info", "mobilenetv3_huge"],
         "unknown model 'mobilenetv3_huge'; choose one of: mobilenetv3_large"),
    Case("info: unknown model, another one", ["info", "mobilenetv4"], "unknown model 'mobilenetv4'"),
    Case("info: unknown model in a real process", ["info", "nope"], process=True, whole_line=True,
         says="mobilenetv3 info: error: unknown model 'nope'; choose one of: mobilenetv3_large, mobilenetv3_small"),
    Case("info: negative width", ["info", "mobilenetv3_large", "--width-mult", "-0.5"],
         "error: --width-mult must be a positive number, got -0.5"),
    Case("info: zero classes", ["info", "mobilenetv3_large", "--num-classes", "0"],
         "error: --num-classes must be a positive integer, got 0"),
    Case("info: width that is no number", ["info", "mobilenetv3_large", "--width-mult", "wide"],
         "argument --width-mult: invalid float value"),
    Case("info: image too small, old flag spelling", ["info", "mobilenetv3_large", "--img-size", "8"],
         "--image-size must be at least 32"),
    # ---- train: settings
    *[Case(f"train: {flags[0]} {' '.join(flags[1:])}".strip(),
           ["train", "--dataset", "synthetic", "--run-dir", "{d}/r", *flags], says, absent=("r",))
      for flags, says in [
          # a setting is named as the flag the user typed, not as its config field (batch_size)
          (["--lr", "-1"], "error: --lr must be positive, got -1.0"),
          (["--epochs", "0"], "error: --epochs must be at least 1, got 0"),
          (["--batch-size", "x"], "error: --batch-size must be an integer, got 'x'"),
          (["--optimizer", "lamb"], "error: --optimizer must be one of sgd, rmsprop, adamw"),
          (["--config", "nope"], "unknown config 'nope'; presets: cifar10-cpu, fashion-mnist"),
          (["--ema-decay", "1.5"], "error: --ema-decay must be in (0, 1), got 1.5"),
          (["--momentum", "1.5"], "error: --momentum must be in [0, 1), got 1.5"),
          (["--weight-decay=-1e-4"], "error: --weight-decay must be 0 or more"),
          (["--nesterov", "--optimizer", "rmsprop"], "error: --nesterov needs the sgd optimizer with momentum above 0"),
          (["--nesterov", "--momentum", "0"], "error: --nesterov needs the sgd optimizer with momentum above 0"),
          (["--mixup-alpha=-1"], "error: --mixup-alpha must be 0 or more"),
      ]],
    Case("train: negative learning rate", [*tiny("{d}/r3"), "--lr", "-0.1"], "error: --lr must be positive",
         absent=("r3",)),
    Case("train: epochs that are no number", [*tiny("{d}/r4"), "--epochs", "two"],
         "error: --epochs must be an integer, got 'two'", absent=("r4",)),
    Case("train: zero classes", [*tiny("{d}/r7"), "--num-classes", "0"], "error: --num-classes must be at least 1",
         absent=("r7",)),
    Case("train: unknown preset", ["train", "--config", "imagenet-tpu"], "unknown config 'imagenet-tpu'"),
    Case("train: YAML that does not parse", ["train", "--config", "{d}/bad.yaml"], "is not valid YAML",
         make=yaml_files),
    Case("train: unknown YAML key", ["train", "--config", "{d}/typo.yaml"], "unknown setting optim.lrr",
         make=yaml_files),
    Case("train: a YAML value out of range", ["train", "--config", "{d}/zero_batch.yaml"], make=yaml_files,
         says="mobilenetv3 train: error: {d}/zero_batch.yaml: batch_size must be at least 1, got 0", whole_line=True),
    Case("train: unknown YAML key in data", ["train", "--config", "{d}/batchsize.yaml"],
         "unknown setting data.batchsize", make=yaml_files),
    # ---- train: the run directory
    Case("train: run directory under a file", tiny("{d}/plain_file/run"), make=plain_file, whole_line=True,
         says="mobilenetv3 train: error: --run-dir {d}/plain_file/run: cannot make the folder (Not a directory: "
              "{d}/plain_file/run)"),
    Case("train: a second run into the same directory", tiny(), make=a_finished_run,
         says="already holds a run (checkpoints); continue it with --resume auto"),
    Case("train: the run directory is in use", tiny("{d}/busy"), "is in use by a running training (pid",
         make=a_run_in_progress),
    Case("train: a second run into a copied run's directory", tiny(), make=a_copied_run,  # and no .lock left
         says="already holds a run (checkpoints); continue it with --resume auto"),
    *[Case(f"train: {what} into a run directory in use, with checkpoints", tiny(**resume),
           make=a_resumed_run_in_progress,  # "in use", not "continue it with --resume auto", which is refused too
           says="is in use by a running training (pid")
      for what, resume in (("a new run", {}), ("a resume", dict(resume="auto")))],
    Case("train: read-only run directory", tiny("{d}/ro"), "--run-dir {d}/ro: cannot write in it (Permission denied",
         make=read_only_run_dir),
    # ---- train: weights to start from or resume
    Case("train: weights of another architecture", tiny("{d}/r2", model="mobilenetv3_large",
                                                          pretrained="{d}/weights.pt"),
         "holds mobilenetv3_small weights, but --model is mobilenetv3_large", make=weights, absent=("r2",)),
    Case("train: resume from a missing file", tiny(None, resume="{d}/gone.pt"), "gone.pt does not exist"),
    Case("train: --resume auto into a folder without last.pt", tiny("{d}/typo", resume="auto"),
         "mobilenetv3 train: error: --resume auto: {d}/typo holds no last.pt to continue; leave out --resume to start "
         "a new run", whole_line=True, absent=("typo",)),
    Case("train: --resume auto with no run found", tiny(None, resume="auto"),
         "--resume auto: no runs/custom-*/last.pt in {d} to continue; give the run's --run-dir, or leave out",
         absent=("runs",)),
    Case("train: resume from weights only", tiny("{d}/r6", resume="{d}/weights.pt"),
         "holds weights only, not a training state", make=weights, absent=("r6",)),
    Case("train: pretrained weights that would run code", tiny("{d}/a", pretrained="{d}/evil.pt"), REFUSED,
         make=code_running_pickle, absent=("pwned", "a")),
    Case("train: resume from a checkpoint that would run code", tiny("{d}/b", resume="{d}/evil.pt"), REFUSED,
         make=code_running_pickle, absent=("pwned", "b")),
    # ---- train: the data
    Case("train: data path that does not exist", [*tiny(), "--dataset", "imagenet", "--data-path", "{d}/nowhere"],
         ("{d}/nowhere", "does not exist"), absent=("run",)),
    Case("train: data path is a file", [*tiny("{d}/r5"), "--dataset", "imagenet", "--data-path", "{d}/plain_file"],
         "plain_file is not a folder", make=plain_file, absent=("r5",)),
    Case("train: folder without class folders", [*tiny("{d}/r1"), "--dataset", "imagenet", "--data-path",
                                                 "{d}/empty_folder"], "has no class folders",
         make=no_class_folders, absent=("r1",)),
    Case("train: images without class folders", [*tiny(), "--dataset", "imagenet", "--data-path", "{d}/loose"],
         ("{d}/loose/train", "no class folders"), make=loose_images, absent=("run",)),
    Case("train: class folders without images", [*tiny(), "--dataset", "imagenet", "--data-path", "{d}/empty"],
         ("{d}/empty/train", "no images"), make=class_folders_without_images, absent=("run",)),
    Case("train: truncated image", [*tiny(), "--dataset", "imagenet", "--data-path", "{d}/data"],
         ("{d}/data/train/cat/0_RGB.jpg", "unreadable image", "truncated"), make=truncated_image, mid_run=True),
    Case("train: truncated image read by a worker process", [*tiny(workers=1), "--dataset", "imagenet",
                                                             "--data-path", "{d}/data"],
         ("{d}/data/train/cat/0_RGB.jpg", "unreadable image", "truncated"), make=truncated_image, mid_run=True,
         process=True),
    Case("train: CIFAR batch cut short", [*tiny(), "--dataset", "cifar10", "--data-path", "{d}/cifar"],
         ("{d}/cifar/cifar-10-batches-bin/data_batch_3.bin", "3073"), make=cifar_batch_cut_short, absent=("run",)),
    Case("train: CIFAR label out of range", [*tiny(), "--dataset", "cifar10", "--data-path", "{d}/cifar"],
         ("{d}/cifar/cifar-10-batches-bin/test_batch.bin", "label 10", "out of range"), make=cifar_label_10,
         absent=("run",)),
    Case("train: labels beyond --num-classes", [*tiny(), "--dataset", "cifar10", "--data-path", "{d}/cifar",
                                                "--num-classes", "3"],
         ("{d}/cifar", "out of range for num_classes=3"), make=cifar, absent=("run",)),
    Case("train: IDX with a wrong magic number", [*tiny(), "--dataset", "fashion-mnist", "--data-path", "{d}/idx"],
         ("{d}/idx/train-images-idx3-ubyte.gz", "magic number"), make=idx_wrong_magic, absent=("run",)),
    Case("train: IDX images and labels that do not pair", [*tiny(), "--dataset", "mnist", "--data-path", "{d}/idx"],
         ("{d}/idx/train-images-idx3-ubyte", "{d}/idx/train-labels-idx1-ubyte", f"{IDX_COUNTS['train']} images",
          f"{IDX_COUNTS['train'] - 1} labels"), make=idx_one_label_short, absent=("run",)),
    Case("train: IDX label out of range", [*tiny(), "--dataset", "mnist", "--data-path", "{d}/idx"],
         ("{d}/idx/t10k-labels-idx1-ubyte", "label 12", "out of range"), make=idx_label_12, absent=("run",)),
    # ---- train: faults of the run itself
    Case("train: a learning rate that makes the loss NaN", tiny("{d}/r8", lr=1e12, warmup_epochs=0), "the loss is",
         code=1, mid_run=True),
    # ---- eval
    Case("eval: no checkpoint given", ["eval", *SYNTHETIC], "give --checkpoint PATH"),
    Case("eval: the checkpoint does not exist", ["eval", "--checkpoint", "{d}/none.pt", *SYNTHETIC],
         "mobilenetv3 eval: error: {d}/none.pt does not exist", whole_line=True),
    Case("eval: --ema of weights without EMA", ["eval", "--checkpoint", "{d}/weights10.pt", "--ema", *SYNTHETIC],
         "has no EMA weights", make=weights_10),
    Case("eval: random bytes as checkpoint", ["eval", "--checkpoint", "{d}/random.pt", "--dataset", "synthetic"],
         "not a readable PyTorch checkpoint", make=random_pt),
    Case("eval: a truncated checkpoint", ["eval", "--checkpoint", "{d}/truncated.pt", "--dataset", "synthetic"],
         "mobilenetv3 eval: error: {d}/truncated.pt: not a readable PyTorch checkpoint (truncated: its zip archive is "
         "cut short)", whole_line=True, make=truncated_weights),  # not torch's cut-off "internal miniz error" note
    Case("eval: a TorchScript file as checkpoint", ["eval", "--checkpoint", "{d}/m.torchscript.pt", *SYNTHETIC],
         "mobilenetv3 eval: error: {d}/m.torchscript.pt is a TorchScript program, not weights: eval and predict run "
         "it with --exported {d}/m.torchscript.pt; weights are a checkpoint of ours, safetensors or a state dict",
         whole_line=True, make=torchscript_file),  # not PyTorch's history of weights_only
    *[Case(f"eval: {kind} as checkpoint", ["eval", "--checkpoint", f"{{d}}/{name}", *SYNTHETIC],
           f"mobilenetv3 eval: error: {{d}}/{name} is {kind}, not weights: eval and predict run it with --exported "
           f"{{d}}/{name}", whole_line=True, make=make)
      for kind, name, make in (("an ONNX model", "model.onnx", onnx_named_file),
                               ("an OpenVINO IR", "model.xml", tiny_ir_file))],
    Case("eval: a checkpoint that would run code", ["eval", "--checkpoint", "{d}/evil.pt", "--dataset", "synthetic"],
         REFUSED, make=code_running_pickle, absent=("pwned",)),
    Case("eval: CIFAR test batch cut short", ["eval", "--checkpoint", "{d}/weights.pt", "--dataset", "cifar10",
                                              "--data-path", "{d}/cifar"],
         "is not a whole number of 3073-byte", make=(weights, cifar_test_batch_cut_short)),
    Case("eval: labels beyond the model's classes", ["eval", "--checkpoint", "{d}/weights.pt", "--dataset", "cifar10",
                                                     "--data-path", "{d}/cifar_ok"],
         "out of range for num_classes=3", make=(weights, cifar_label_7)),
    Case("eval: missing dataset folder", ["eval", "--checkpoint", "{d}/weights.pt", "--dataset", "cifar10",
                                          "--data-path", "{d}/nowhere"], "nowhere does not exist", make=weights),
    Case("eval: IDX with a wrong magic number", ["eval", "--checkpoint", "{d}/weights.pt", "--dataset", "mnist",
                                                 "--data-path", "{d}/idx"],
         "wrong magic number", make=(weights, idx_wrong_magic_in_val)),
    # ---- export
    Case("export: truncated checkpoint", ["export", "--checkpoint", "{d}/truncated.pt", "--output", "{d}/m.onnx"],
         "not a readable PyTorch checkpoint", make=truncated_weights, absent=("m.onnx",)),
    Case("export: output next to a file", ["export", "--checkpoint", "{d}/weights.pt", "--no-dataset", "--output",
                                           "{d}/plain_file/m.onnx"], "plain_file", make=(weights, plain_file)),
    Case("export: --ema of weights without EMA", ["export", "--checkpoint", "{d}/weights.pt", "--ema",
                                                  "--no-dataset"], "EMA", make=weights),
    # ---- predict
    Case("predict: not an image", ["predict", "{d}/photo.jpg", "--checkpoint", "{d}/weights.pt"],
         "photo.jpg: unreadable image", make=(weights, not_a_jpeg)),
    Case("predict: not an image, named .png", ["predict", "{d}/bad.png", "--checkpoint", "{d}/weights.pt"],
         "{d}/bad.png: unreadable image", make=(weights, not_a_png)),
    Case("predict: no file matches", ["predict", "{d}/*.jpg", "--checkpoint", "{d}/weights.pt"], "no file matches",
         make=weights),
    Case("predict: no weights given", ["predict", "{d}/photo.jpg"], "give exactly one of --checkpoint",
         make=not_a_jpeg),
    Case("predict: a checkpoint that would run code", ["predict", "{d}/image.png", "--checkpoint", "{d}/evil.pt"],
         REFUSED, make=code_running_pickle, absent=("pwned",)),
    # ---- OpenVINO
    Case("export: openvino without the openvino extra", ["export", "--checkpoint", "{d}/weights.pt", "--no-dataset",
                                                         "--format", "openvino", "--output", "{d}/m.xml"],
         f"mobilenetv3 export: error: {IR_EXTRA}", whole_line=True, make=(weights, openvino_extra_missing),
         absent=("m.xml", "m.bin")),
    Case("eval: an IR without the openvino extra", ["eval", "--exported", "{d}/model.xml", *SYNTHETIC],
         IR_EXTRA, make=(openvino_ir, openvino_extra_missing)),
    Case("predict: an ONNX file in OpenVINO without the extra", ["predict", "{d}/image.png", "--exported",
                                                                 "{d}/model.onnx", "--runtime", "openvino"],
         IR_EXTRA, make=(onnx_named_file, openvino_extra_missing, an_image)),
    Case("export: openvino to a folder that is not there", ["export", "--checkpoint", "{d}/weights.pt",
                                                           "--no-dataset", "--format", "openvino", "--output",
                                                           "{d}/nowhere/m.xml"],
         "cannot write {d}/nowhere/m.xml: folder {d}/nowhere does not exist", make=weights),
    Case("export: openvino whose .bin is in the way", ["export", "--checkpoint", "{d}/weights.pt", "--no-dataset",
                                                       "--format", "openvino", "--output", "{d}/m.xml"],
         "cannot write {d}/m.bin: it is a folder", make=(weights, a_folder_named_m_bin)),
    Case("export: openvino to a name without .xml", ["export", "--checkpoint", "{d}/weights.pt", "--no-dataset",
                                                     "--format", "openvino", "--output", "{d}/m.onnx"],
         "an OpenVINO IR is an .xml file", make=weights, absent=("m.onnx",)),
    Case("export: openvino over the checkpoint's own .bin", ["export", "--checkpoint", "{d}/weights.bin",
                                                             "--no-dataset", "--format", "openvino"],
         "would overwrite {d}/weights.bin", make=weights_named_bin),
    Case("export: openvino-int8 without images", ["export", "--checkpoint", "{d}/weights.pt", "--no-dataset",
                                                  "--format", "openvino-int8", "--output", "{d}/m.int8.xml"],
         "openvino-int8 needs images to calibrate", make=weights, absent=("m.xml", "m.int8.xml")),
    Case("export: --keep-fp32 of an unknown layer kind", ["export", "--checkpoint", "{d}/weights.pt", "--no-dataset",
                                                          "--format", "openvino-int8", "--keep-fp32", "se,stem"],
         "cannot keep stem in fp32; choose from: se, classifier, head", make=weights),
    Case("export: --keep-fp32 with another format", ["export", "--checkpoint", "{d}/weights.pt", "--no-dataset",
                                                     "--keep-fp32", "se"], "a setting of --format openvino-int8",
         make=weights),
    *[Case(f"export: {what}", [*INT8_EXPORT, *flags], says, make=weights) for what, flags, says in (
        ("--int8-max-drop of 0", ["--int8-max-drop", "0"], "--int8-max-drop must be a fraction between 0 and 1"),
        ("--int8-max-drop above 1", ["--int8-max-drop", "1.5"], "--int8-max-drop must be a fraction between 0 and 1"),
        ("--int8-max-drop that is not a number", ["--int8-max-drop", "half"],
         "argument --int8-max-drop: invalid float value: 'half'"),
        ("--int8-validation-images of 0", ["--int8-max-drop", "0.01", "--int8-validation-images", "0"],
         "--int8-validation-images must be at least 1, got 0"),
        ("--int8-validation-images without --int8-max-drop", ["--int8-validation-images", "100"],
         "--int8-validation-images is a setting of accuracy control: give --int8-max-drop too"),
        ("an unknown --int8-overflow-fix", ["--int8-overflow-fix", "all"],
         ("argument --int8-overflow-fix: invalid choice: 'all'", "enable", "first-layer", "disable")),
        ("an unknown --int8-ranges", ["--int8-ranges", "minmax"],
         ("argument --int8-ranges: invalid choice: 'minmax'", "histogram", "mean-minmax")))],
    Case("export: --int8-max-drop with another format", ["export", "--checkpoint", "{d}/weights.pt", "--no-dataset",
                                                         "--format", "onnx-int8", "--int8-max-drop", "0.01",
                                                         "--int8-ranges", "histogram"],
         "--int8-ranges, --int8-max-drop: a setting of --format openvino-int8", make=weights),
    Case("export: accuracy control without images", [*INT8_EXPORT, "--int8-max-drop", "0.01", "--output",
                                                      "{d}/m.int8.xml"],
         "openvino-int8 needs images to calibrate", make=weights, absent=("m.xml", "m.int8.xml")),
    *[Case(f"{command}: {what}", argv, says, make=make)
      for what, make, says in (("a garbage IR .xml", garbage_ir, "{d}/model.xml: not an OpenVINO IR (not XML"),
                               ("an IR whose .bin is cut short", ir_bin_cut_short,
                                "{d}/model.xml: not a loadable OpenVINO IR (Incorrect weights in bin file!)"),
                               ("an IR without its .bin", ir_without_bin, "{d}/model.xml: not a loadable OpenVINO IR"))
      for command, argv in (("eval", ["eval", "--exported", "{d}/model.xml", *SYNTHETIC]),
                            ("predict", ["predict", "{d}/image.png", "--exported", "{d}/model.xml"]))],
    *[Case(f"{command}: {what}", argv, says, make=make, process=process)
      for what, make, says, process in (
          # in a process of its own: TensorFlow's frontend wrote to the terminal, below Python's sys.stderr
          ("an XML <net> without an IR version", net_without_version,
           "{d}/model.xml: not an OpenVINO IR (its <net> has no IR version that OpenVINO reads: version=None)", True),
          ("an IR without layers", empty_ir,
           "{d}/model.xml: not an image classifier's IR (0 inputs, 0 outputs; one of each expected)", False))
      for command, argv in (("eval", ["eval", "--exported", "{d}/model.xml", *SYNTHETIC]),
                            ("predict", ["predict", "{d}/image.png", "--exported", "{d}/model.xml"]))],
    Case("eval: an IR in ONNX Runtime", ["eval", "--exported", "{d}/model.xml", "--runtime", "onnxruntime",
                                         *SYNTHETIC], "is an OpenVINO IR: it runs in OpenVINO", make=openvino_ir),
    Case("predict: --precision bf16 in ONNX Runtime", ["predict", "{d}/image.png", "--onnx", "{d}/model.onnx",
                                                       "--precision", "bf16"],
         "--precision bf16 is OpenVINO's: add --runtime openvino",
         make=(onnx_named_file, an_image)),
    Case("eval: --runtime openvino with a checkpoint", ["eval", "--checkpoint", "{d}/weights.pt", "--runtime",
                                                        "openvino", *SYNTHETIC], "export the weights first",
         make=weights),
    Case("predict: random bytes as ONNX in OpenVINO", ["predict", "{d}/image.png", "--exported", "{d}/model.onnx",
                                                       "--runtime", "openvino"], "not a loadable ONNX model",
         make=(onnx_named_file, an_image)),
    Case("predict: an exported file of another kind", ["predict", "{d}/image.png", "--exported", "{d}/weights.pt"],
         "not an exported model (an .onnx file, an OpenVINO IR .xml, an ExecuTorch .pte, a LiteRT .tflite, a Core "
         "ML .mlpackage, an ncnn .ncnn.param, a TorchScript .torchscript.pt or a torch.export .pt2)",
         make=(weights, an_image)),
    *[Case(f"{command}: random bytes as a {suffix}", argv, f"{{d}}/model{suffix}: not a loadable {what} (",
           make=(torch_program_of_random_bytes, an_image))
      for suffix, what in ((".torchscript.pt", "TorchScript program"), (".pt2", "torch.export program (.pt2)"))
      for command, argv in (("eval", ["eval", "--exported", f"{{d}}/model{suffix}", *SYNTHETIC]),
                            ("predict", ["predict", "{d}/image.png", "--exported", f"{{d}}/model{suffix}"]))],
    Case("predict: --runtime with a .pt2", ["predict", "{d}/image.png", "--exported", "{d}/model.pt2", "--runtime",
                                            "onnxruntime"],
         "{d}/model.pt2 is a torch.export program: it runs in PyTorch (leave --runtime out)",
         make=(torch_program_of_random_bytes, an_image)),
    Case("eval: --exported and --onnx both", ["eval", "--exported", "{d}/a.onnx", "--onnx", "{d}/b.onnx",
                                              *SYNTHETIC], "give --exported FILE or --onnx FILE, not both"),
    # ---- ExecuTorch
    Case("export: executorch without the executorch extra", ["export", "--checkpoint", "{d}/weights.pt",
                                                             "--no-dataset", "--format", "executorch", "--output",
                                                             "{d}/m.pte"],
         f"mobilenetv3 export: error: {PTE_EXTRA}", whole_line=True, make=(weights, executorch_extra_missing),
         absent=("m.pte",)),
    *[Case(f"{command}: a .pte without the executorch extra", argv, f"mobilenetv3 {command}: error: {PTE_EXTRA}",
           whole_line=True, make=(random_pte, executorch_extra_missing))
      for command, argv in (("eval", ["eval", "--exported", "{d}/model.pte", *SYNTHETIC]),
                            ("predict", ["predict", "{d}/image.png", "--exported", "{d}/model.pte"]))],
    *[Case(f"{command}: {what}", argv, says, make=make, process=process)
      for what, make, says, process in (
          ("random bytes as a .pte", (executorch_installed, random_pte),
           "{d}/model.pte: not an ExecuTorch program (no ETnn file identifier at byte 4)", False),
          # the runtime reads it: in a process of its own, as test_executorch.py keeps ExecuTorch out of this one
          ("a .pte whose body is garbage", pte_of_garbage,
           "{d}/model.pte: not a loadable ExecuTorch program (Verification failed; data may be truncated or corrupt)",
           True))
      for command, argv in (("eval", ["eval", "--exported", "{d}/model.pte", *SYNTHETIC]),
                            ("predict", ["predict", "{d}/image.png", "--exported", "{d}/model.pte"]))],
    Case("export: executorch to a folder that is not there", ["export", "--checkpoint", "{d}/weights.pt",
                                                             "--no-dataset", "--format", "executorch", "--output",
                                                             "{d}/nowhere/m.pte"],
         "cannot write {d}/nowhere/m.pte: folder {d}/nowhere does not exist", make=weights),
    Case("export: executorch to a name without .pte", ["export", "--checkpoint", "{d}/weights.pt", "--no-dataset",
                                                       "--format", "executorch", "--output", "{d}/m.onnx"],
         "an ExecuTorch program is a .pte file: {d}/m.onnx does not end in .pte", make=weights, absent=("m.onnx",)),
    Case("export: executorch-int8 whose fp32 program cannot be written", ["export", "--checkpoint", "{d}/weights.pt",
                                                                          "--no-dataset", "--format",
                                                                          "executorch-int8", "--output",
                                                                          "{d}/m.int8.pte"],
         "cannot write {d}/m.pte: it is a folder", make=(weights, a_folder_named_m_pte), absent=("m.int8.pte",)),
    Case("export: executorch-int8 without images", ["export", "--checkpoint", "{d}/weights.pt", "--no-dataset",
                                                    "--format", "executorch-int8", "--output", "{d}/m.int8.pte"],
         "executorch-int8 needs images to calibrate", make=weights, absent=("m.pte", "m.int8.pte")),
    Case("eval: a .pte in ONNX Runtime", ["eval", "--exported", "{d}/model.pte", "--runtime", "onnxruntime",
                                          *SYNTHETIC], "is an ExecuTorch program: it runs in ExecuTorch (--runtime "
                                                       "executorch)", make=random_pte),
    Case("predict: an ONNX file in ExecuTorch", ["predict", "{d}/image.png", "--exported", "{d}/model.onnx",
                                                 "--runtime", "executorch"],
         "--runtime executorch runs ExecuTorch programs (.pte), not {d}/model.onnx", make=(onnx_named_file, an_image)),
    Case("predict: --precision bf16 of a .pte", ["predict", "{d}/image.png", "--exported", "{d}/model.pte",
                                                 "--precision", "bf16"],
         "--precision bf16 is OpenVINO's: ExecuTorch runs {d}/model.pte as exported", make=random_pte),
    # ---- serve
    Case("serve: no such model file", ["serve", "{d}/nothing.pt"], "{d}/nothing.pt does not exist"),
    Case("serve: random bytes as a checkpoint", ["serve", "{d}/random.pt"], "not a readable PyTorch checkpoint",
         make=random_pt),
    Case("serve: random bytes as ONNX", ["serve", "{d}/model.onnx"], "not a loadable ONNX model", make=onnx_named_file),
    Case("serve: an ONNX file with --runtime torch", ["serve", "{d}/model.onnx", "--runtime", "torch"],
         "--runtime onnxruntime", make=onnx_named_file),
    Case("serve: an OpenVINO IR with --runtime torch", ["serve", "{d}/model.xml", "--runtime", "torch"],
         "--runtime openvino", make=tiny_ir_file),
    Case("serve: bf16 in PyTorch", ["serve", "{d}/weights.pt", "--precision", "bf16"], "--precision bf16",
         make=weights),
    Case("serve: a checkpoint that would run code", ["serve", "{d}/evil.pt"], REFUSED, make=code_running_pickle,
         absent=("pwned",)),
    Case("serve: the port is taken", ["serve", "{d}/weights.pt", "--port", str(BUSY_PORT)],
         f"cannot listen on 127.0.0.1:{BUSY_PORT}", make=(weights, port_in_use)),
    Case("serve: port out of range", ["serve", "{d}/weights.pt", "--port", "70000"], "--port must be between",
         make=weights),
    Case("serve: --max-batch 0", ["serve", "{d}/weights.pt", "--max-batch", "0"], "must be at least 1", make=weights),
    Case("serve: --grace-s 0", ["serve", "{d}/weights.pt", "--grace-s", "0"], "--grace-s must be above 0",
         make=weights),
    Case("serve: --max-queue 0", ["serve", "{d}/weights.pt", "--max-queue", "0"], "--max-queue must be at least 1",
         make=weights),
    Case("serve: a preferred batch over --max-batch", ["serve", "{d}/weights.pt", "--preferred-batch", "8", "64"],
         "--preferred-batch sizes must be between 1 and --max-batch 32, not 64", make=weights),
    Case("serve: an unknown host", ["serve", "{d}/weights.pt", "--host", "no-such-host.invalid"],
         "cannot listen on no-such-host.invalid", make=weights),
    Case("serve: the serve extra is not installed", ["serve", "{d}/weights.pt"],
         "pip install 'mobilenetv3[serve]'", make=(weights, serve_extra_missing)),
    # ---- convert
    Case("convert: to an unknown format", ["convert", "{d}/weights.pt", "{d}/w.bin"], "--to is needed", make=weights,
         absent=("w.bin",)),
    Case("convert: to .pth, which could be torchvision's or timm's", ["convert", "{d}/weights.pt", "{d}/x.pth"],
         "--to is needed", make=weights, absent=("x.pth",)),
    Case("convert: random bytes as a MindSpore ckpt", ["convert", "{d}/random.ckpt", "{d}/o.pt"],
         "not a MindSpore checkpoint", make=random_ckpt, absent=("o.pt",)),
    Case("convert: a checkpoint that would run code", ["convert", "{d}/evil.pt", "{d}/out.safetensors"], REFUSED,
         make=code_running_pickle, absent=("pwned", "out.safetensors")),
    *[Case(f"{command}: malformed .ckpt ({kind})", argv, "{d}/bad.ckpt", make=malformed_ckpt(kind),
           absent=("out.pt",))
      for kind in ("random", "truncated", "empty", "wrong-crc", "other-model", "pickle-as-ckpt")
      for command, argv in (("convert", ["convert", "{d}/bad.ckpt", "{d}/out.pt"]),
                            ("eval", ["eval", "--checkpoint", "{d}/bad.ckpt", "--dataset", "synthetic"]))],
]


# ------------------------------------------------------------------------------------------------ the test
def contents(folder: Path) -> dict:
    """Every path under ``folder`` -> the SHA-256 of its bytes (None for a folder)."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}


def fill(template: Union[str, tuple, list], folder: Path):
    """``template`` with the case's folder in place of "{d}"."""
    if isinstance(template, str):
        return template.replace("{d}", str(folder))
    return [fill(part, folder) for part in template]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_and_leaves_nothing_half_written(case, tmp_path):
    with ExitStack() as held:
        for make in case.make if isinstance(case.make, tuple) else (case.make,):
            during = make(tmp_path)
            if during is not None:
                held.enter_context(during)
        before = contents(tmp_path)
        result = run_cli(*fill(case.argv, tmp_path), process=case.process, cwd=tmp_path)
        after = contents(tmp_path)

    assert result.returncode == case.code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    error = lines[-1] if lines else ""
    assert re.match(ERROR_LINE[case.code], error), result.stderr
    says = fill((case.says,) if isinstance(case.says, str) else case.says, tmp_path)
    if case.whole_line:
        assert error == says[0]
    for text in says:
        assert text in error, (text, error)
    if case.mid_run:  # the run's log lines, then the one line that ends it
        assert not any("error" in line for line in lines[:-1]), result.stderr
    else:
        assert len(lines) == 1 and result.stdout == "", (result.stdout, result.stderr)

    for name in case.absent:
        assert not (tmp_path / name).exists(), name
    assert not [name for name in after if ".tmp" in Path(name).name], after
    if case.mid_run:  # what was there is as it was; the run may have left its log
        assert {name: after.get(name) for name in before} == before
    else:  # nothing made, nothing changed
        assert after == before


def test_the_table_keeps_every_case():
    assert len(CASES) == len({case.name for case in CASES}) >= 118
