"""Faults and hostile input: bad input of every kind is one line and no partial output; checkpoints never
run code; a failed checkpoint write stops training with the previous one intact; torchrun restarts resume;
the parsers of untrusted bytes survive fuzzing (slow)."""
import gzip
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import child_pids
from mobilenetv3 import checkpoint as ckpt
from mobilenetv3 import weights as wts
from mobilenetv3.config import load_config
from mobilenetv3.models import create_model
from mobilenetv3.errors import RunError
from mobilenetv3.tasks import train

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mindspore"
TINY = ["--dataset", "synthetic", "--synthetic-samples", "32", "--image-size", "32", "--batch-size", "8",
        "--model", "mobilenetv3_small", "--width-mult", "0.5", "--epochs", "1", "--workers", "0", "--no-progress"]


def cli(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "mobilenetv3", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd)


# ------------------------------------------------------------------------------- hostile pickles
class _Payload:
    """Unpickling this object creates a marker file: the proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path, run_cli):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker), "format": ckpt.FORMAT}, evil)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "image.png")
    for argv in (["eval", "--checkpoint", evil, "--dataset", "synthetic"],
                 ["predict", tmp_path / "image.png", "--checkpoint", evil],
                 ["convert", evil, tmp_path / "out.safetensors"],
                 ["train", *TINY, "--pretrained", evil, "--run-dir", tmp_path / "a"],
                 ["train", *TINY, "--resume", evil, "--run-dir", tmp_path / "b"]):
        result = run_cli(*argv)
        assert result.returncode == 2, result.stderr
        assert "refused to load: it holds Python objects that could run code" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    with pytest.raises(ValueError, match="refused to load"):
        wts.load_model(evil)
    assert not marker.exists()


# --------------------------------------------------------------------------- bad input, table-driven
def _files(tmp: Path) -> dict:
    """The broken inputs the table refers to, made once per test."""
    files = {}
    files["not_image"] = tmp / "photo.jpg"
    files["not_image"].write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    cifar = tmp / "cifar" / "cifar-10-batches-bin"
    cifar.mkdir(parents=True)
    for i in range(1, 6):
        (cifar / f"data_batch_{i}.bin").write_bytes(bytes(3073 * 2))
    (cifar / "test_batch.bin").write_bytes(bytes(3073 * 2 - 100))
    files["cifar"] = tmp / "cifar"
    files["no_classes"] = tmp / "empty_folder"
    files["no_classes"].mkdir()
    (files["no_classes"] / "readme.txt").write_text("no class folders here")
    files["random_pt"] = tmp / "random.pt"
    files["random_pt"].write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    model = create_model("mobilenetv3_small", num_classes=3, width_mult=0.5)
    weights = wts.Weights(model.model_name, model.model_kwargs, model.state_dict(), "mobilenetv3")
    files["three_class"] = tmp / "three.pt"
    wts.write_weights(weights, files["three_class"], "mobilenetv3")
    files["truncated_pt"] = tmp / "truncated.pt"
    files["truncated_pt"].write_bytes(files["three_class"].read_bytes()[:20000])
    files["random_ckpt"] = tmp / "random.ckpt"
    files["random_ckpt"].write_bytes(files["random_pt"].read_bytes())
    idx = tmp / "idx"
    idx.mkdir()
    for stem, header in (("train-images-idx3-ubyte", struct.pack(">IIII", 0x00000803, 2, 28, 28)),
                         ("train-labels-idx1-ubyte", struct.pack(">II", 0x00000801, 2))):
        size = 2 * 28 * 28 if "images" in stem else 2
        (idx / f"{stem}.gz").write_bytes(gzip.compress(header + bytes(size)))
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (idx / f"{stem}.gz").write_bytes(gzip.compress(struct.pack(">II", 0x00000999, 2) + bytes(10)))
    files["idx"] = idx
    files["a_file"] = tmp / "plain_file"
    files["a_file"].write_text("x")
    files["bad_yaml"] = tmp / "typo.yaml"
    files["bad_yaml"].write_text("data:\n  batchsize: 4\n")
    return files


# (name, argv builder, exit code, message, outputs that must not exist afterwards)
CASES = [
    ("unreadable image", lambda f, t: ["predict", f["not_image"], "--checkpoint", f["three_class"]], 2,
     "photo.jpg: unreadable image", []),
    ("truncated CIFAR batch", lambda f, t: ["eval", "--checkpoint", f["three_class"], "--dataset", "cifar10",
                                            "--data-path", f["cifar"]], 2, "is not a whole number of 3073-byte", []),
    ("folder without class folders", lambda f, t: ["train", *TINY, "--dataset", "imagenet", "--data-path",
                                                   f["no_classes"], "--run-dir", t / "r1"], 2, "has no class folders",
     ["r1"]),
    ("random bytes as checkpoint", lambda f, t: ["eval", "--checkpoint", f["random_pt"], "--dataset", "synthetic"], 2,
     "not a readable PyTorch checkpoint", []),
    ("truncated checkpoint", lambda f, t: ["export", "--checkpoint", f["truncated_pt"], "--output", t / "m.onnx"], 2,
     "not a readable PyTorch checkpoint", ["m.onnx"]),
    ("random bytes as MindSpore ckpt", lambda f, t: ["convert", f["random_ckpt"], t / "o.pt"], 2,
     "not a MindSpore checkpoint", ["o.pt"]),
    ("wrong architecture", lambda f, t: ["train", *TINY, "--model", "mobilenetv3_large", "--pretrained",
                                         f["three_class"], "--run-dir", t / "r2"], 2,
     "holds mobilenetv3_small weights, but --model is mobilenetv3_large", ["r2"]),
    ("class-count mismatch", lambda f, t: ["eval", "--checkpoint", f["three_class"], "--dataset", "cifar10",
                                           "--data-path", t / "cifar_ok"], 2, "out of range for num_classes=3", []),
    ("negative learning rate", lambda f, t: ["train", *TINY, "--lr", "-0.1", "--run-dir", t / "r3"], 2,
     "lr must be positive", ["r3"]),
    ("bad number", lambda f, t: ["train", *TINY, "--epochs", "two", "--run-dir", t / "r4"], 2,
     "epochs must be an integer, got 'two'", ["r4"]),
    ("unknown flag", lambda f, t: ["train", "--learning-rate", "0.1"], 2, "unrecognized arguments: --learning-rate",
     []),
    ("unknown preset", lambda f, t: ["train", "--config", "imagenet-tpu"], 2, "unknown config 'imagenet-tpu'", []),
    ("unknown YAML key", lambda f, t: ["train", "--config", f["bad_yaml"]], 2, "unknown setting data.batchsize", []),
    ("run dir under a file", lambda f, t: ["train", *TINY, "--run-dir", f["a_file"] / "run"], 2, "plain_file", []),
    ("export next to a file", lambda f, t: ["export", "--checkpoint", f["three_class"], "--no-dataset", "--output",
                                            f["a_file"] / "m.onnx"], 2, "plain_file", []),
    ("missing dataset folder", lambda f, t: ["eval", "--checkpoint", f["three_class"], "--dataset", "cifar10",
                                             "--data-path", t / "nowhere"], 2, "nowhere does not exist", []),
    ("IDX with a wrong magic number", lambda f, t: ["eval", "--checkpoint", f["three_class"], "--dataset", "mnist",
                                                    "--data-path", f["idx"]], 2, "wrong magic number", []),
    ("data path is a file", lambda f, t: ["train", *TINY, "--dataset", "imagenet", "--data-path", f["a_file"],
                                          "--run-dir", t / "r5"], 2, "plain_file is not a folder", ["r5"]),
    ("resume from a missing file", lambda f, t: ["train", *TINY, "--resume", t / "gone.pt"], 2,
     "gone.pt does not exist", []),
    ("resume from weights only", lambda f, t: ["train", *TINY, "--resume", f["three_class"], "--run-dir", t / "r6"],
     2, "holds weights only, not a training state", ["r6"]),
    ("EMA that is not there", lambda f, t: ["export", "--checkpoint", f["three_class"], "--ema", "--no-dataset"], 2,
     "EMA", []),
    ("zero classes", lambda f, t: ["train", *TINY, "--num-classes", "0", "--run-dir", t / "r7"], 2,
     "num_classes must be at least 1", ["r7"]),
    ("unknown model", lambda f, t: ["info", "mobilenetv4"], 2, "unknown model 'mobilenetv4'", []),
    ("convert to an unknown format", lambda f, t: ["convert", f["three_class"], t / "w.bin"], 2, "add --to",
     ["w.bin"]),
    ("predict without weights", lambda f, t: ["predict", f["not_image"]], 2, "give exactly one of --checkpoint", []),
    ("learning rate that produces NaN", lambda f, t: ["train", *TINY, "--lr", "1e12", "--warmup-epochs", "0",
                                                      "--run-dir", t / "r8"], 1, "the loss is", []),
]


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("broken")
    files = _files(tmp)
    cifar_ok = tmp / "cifar_ok" / "cifar-10-batches-bin"
    cifar_ok.mkdir(parents=True)
    record = bytes([7]) + bytes(3072)  # label 7: beyond a 3-class model
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (cifar_ok / name).write_bytes(record * 3)
    return files, tmp


@pytest.mark.parametrize("name, argv, code, message, outputs", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing_half_made(broken, run_cli, name, argv, code, message, outputs):
    files, tmp = broken
    result = run_cli(*argv(files, tmp))
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert message in last, result.stderr
    if code == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for output in outputs:
        assert not (tmp / output).exists(), output


def test_the_table_has_at_least_twenty_cases():
    assert len(CASES) >= 20


# ------------------------------------------------------------------------ disk full, read-only
def test_a_failed_checkpoint_write_stops_training_and_keeps_the_previous_one(tmp_path, monkeypatch):
    """ENOSPC on the second write: training stops with a clear error; the first checkpoint stays intact."""
    config = load_config(None, dict(dataset="synthetic", synthetic_samples=32, image_size=32, batch_size=8,
                                    model="mobilenetv3_small", width_mult=0.5, epochs=3, workers=0, progress=False,
                                    save_every_steps=2, run_dir=str(tmp_path / "run")))
    real_save, calls = torch.save, []

    def filling_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:
            f.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", filling_disk)
    with pytest.raises(RunError, match="could not write checkpoint .*No space left on device; training stopped, "
                                       "the previous checkpoint is intact"):
        train(config)
    monkeypatch.undo()
    state = ckpt.load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["global_step"] == 2
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp" in p.name]


# Trains, and SIGKILLs itself half-way through writing the final export (model.safetensors).
_KILLED_IN_EXPORT = """
import os, signal, sys
from mobilenetv3 import checkpoint, files
from mobilenetv3.cli import main

real = checkpoint.write_atomic

def dying(path, data):
    if str(path).endswith("model.safetensors"):
        with open(files.temporary_path(path), "wb") as f:
            f.write(bytes(data)[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, data)

checkpoint.write_atomic = dying
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_during_the_final_export_resumes_to_a_complete_run(tmp_path):
    run_dir = tmp_path / "run"
    flags = ["train", "--dataset", "synthetic", "--synthetic-samples", "32", "--image-size", "32", "--batch-size", "8",
             "--model", "mobilenetv3_small", "--width-mult", "0.5", "--epochs", "2", "--workers", "0",
             "--no-progress", "--run-dir", str(run_dir)]
    killed = subprocess.run([sys.executable, "-c", _KILLED_IN_EXPORT, *flags], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (run_dir / "model.safetensors").exists() and any(".tmp" in p.name for p in run_dir.iterdir())
    state = ckpt.load_checkpoint(run_dir / "last.pt")  # the training itself was complete and saved
    assert state["epoch"] == 2

    resumed = cli(*flags, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]
    exported = wts.load_model(run_dir / "model.safetensors")
    for key, value in exported.state_dict().items():
        assert torch.equal(value, state["model"][key]), key


@pytest.fixture
def small_disk(tmp_path):
    """A 5 MB tmpfs (root only): room for one checkpoint of the tiny run below (3.4 MB), not for two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount to make a small tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_stops_training_and_keeps_the_previous_checkpoint(small_disk):
    run_dir = small_disk / "run"
    result = cli("train", "--dataset", "synthetic", "--synthetic-samples", "64", "--image-size", "32",
                 "--batch-size", "8", "--model", "mobilenetv3_small", "--width-mult", "0.5", "--epochs", "3",
                 "--workers", "0",
                 "--no-progress", "--save-every-steps", "2", "--run-dir", run_dir)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "No space left on device; training stopped, the previous checkpoint is intact" in last
    state = ckpt.load_checkpoint(run_dir / "last.pt")
    assert state["global_step"] >= 2
    assert not [p for p in run_dir.iterdir() if ".tmp" in p.name]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_run_directory(tmp_path):
    run_dir = tmp_path / "ro"
    run_dir.mkdir()
    run_dir.chmod(0o500)
    try:
        result = cli("train", *TINY, "--run-dir", run_dir)
    finally:
        run_dir.chmod(0o700)
    assert result.returncode == 2 and "Permission denied" in result.stderr


# ------------------------------------------------------------------------------- torchrun restarts
@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "elastic"
    flags = ["train", "--dataset", "synthetic", "--synthetic-samples", "64", "--image-size", "32", "--batch-size",
             "4", "--model", "mobilenetv3_small", "--width-mult", "0.5", "--epochs", "2", "--workers", "0",
             "--no-progress", "--save-every-steps", "2", "--resume", "auto", "--run-dir", str(run_dir)]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "--max-restarts=1", "-m", "mobilenetv3", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = run_dir / "train.log"
    deadline = time.time() + 180
    while time.time() < deadline and not (log.exists() and log.read_text().count("epoch: [") >= 11):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.1)
    workers = child_pids(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)  # rank 1 dies in the middle of epoch 2
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    state = ckpt.load_checkpoint(run_dir / "last.pt")
    assert state["global_step"] == 2 * 8 and state["epoch"] == 2  # the undisturbed run's number of steps
    assert "resuming from" in err


# ------------------------------------------------------------------------------------------ fuzz
def _parse_or_value_error(parse, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        parse(path)
    except (ValueError, FileNotFoundError):
        pass


@pytest.mark.slow
def test_fuzz_cifar_binary_and_idx_readers(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    from mobilenetv3.data.datasets import read_cifar_bin, read_idx

    st = hypothesis.strategies
    header = struct.pack(">IIII", 0x00000803, 2, 4, 4) + bytes(32)

    @hypothesis.settings(max_examples=400, deadline=2000, database=None, derandomize=True)
    @hypothesis.given(st.binary(max_size=8000), st.binary(max_size=64), st.integers(0, len(header)))
    def check(raw, patch, offset):
        _parse_or_value_error(read_cifar_bin, tmp_path / "batch.bin", raw)
        mutated = header[:offset] + patch + header[offset + len(patch):]
        _parse_or_value_error(read_idx, tmp_path / "x-idx3-ubyte", mutated)
        _parse_or_value_error(read_idx, tmp_path / "x-idx3-ubyte.gz", gzip.compress(mutated))
        _parse_or_value_error(read_idx, tmp_path / "y-idx1-ubyte.gz", raw[:200])

    check()


@pytest.mark.slow
@pytest.mark.skipif(not (FIXTURES / "small_10_calib.ckpt").exists(), reason="MindSpore fixtures not found")
def test_fuzz_mindspore_reader_longer(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    from mobilenetv3.convert import read_ckpt

    data = (FIXTURES / "small_10_calib.ckpt").read_bytes()
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=1500, deadline=5000, database=None, derandomize=True)
    @hypothesis.given(st.integers(0, len(data) - 1), st.binary(min_size=1, max_size=16), st.integers(0, len(data)))
    def check(offset, patch, cut):
        mutated = (data[:offset] + patch + data[offset + len(patch):])[:cut]
        _parse_or_value_error(read_ckpt, tmp_path / "f.ckpt", mutated)

    check()
