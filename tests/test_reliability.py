"""Faults and hostile input: checkpoints never run code; a failed checkpoint write stops training with the
previous one intact; torchrun restarts resume; the parsers of untrusted bytes survive fuzzing (slow).

Bad input of every kind through the command line (one line, no partial output) is in test_bad_input.py.
"""
import gzip
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mobilenetv3 import checkpoint as ckpt
from mobilenetv3 import weights as wts
from mobilenetv3.config import load_config
from mobilenetv3.errors import RunError
from mobilenetv3.tasks import train

from builders import CodeRunningPayload
from conftest import MINDSPORE_FIXTURES, child_pids, cli_command, run_cli

FIXTURES = MINDSPORE_FIXTURES


# ------------------------------------------------------------------------------- hostile pickles
def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path):
    """From Python; from each command that reads weights it is a case of test_bad_input.py."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": CodeRunningPayload(marker), "format": ckpt.FORMAT}, evil)
    with pytest.raises(ValueError, match="refused to load"):
        wts.load_model(evil)
    assert not marker.exists()


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

    resumed = run_cli(*flags, "--resume", "auto")
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
    result = run_cli("train", "--dataset", "synthetic", "--synthetic-samples", "64", "--image-size", "32",
                     "--batch-size", "8", "--model", "mobilenetv3_small", "--width-mult", "0.5", "--epochs", "3",
                     "--workers", "0", "--no-progress", "--save-every-steps", "2", "--run-dir", run_dir)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "No space left on device; training stopped, the previous checkpoint is intact" in last
    state = ckpt.load_checkpoint(run_dir / "last.pt")
    assert state["global_step"] >= 2
    assert not [p for p in run_dir.iterdir() if ".tmp" in p.name]


# ------------------------------------------------------------------------------- torchrun restarts
@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "elastic"
    flags = ["train", "--dataset", "synthetic", "--synthetic-samples", "64", "--image-size", "32", "--batch-size",
             "4", "--model", "mobilenetv3_small", "--width-mult", "0.5", "--epochs", "2", "--workers", "0",
             "--no-progress", "--save-every-steps", "2", "--resume", "auto", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cli_command(*flags, nproc=2, max_restarts=1), stdout=subprocess.PIPE,
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
