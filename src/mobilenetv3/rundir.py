"""A run's folder: the lock that keeps a second run out, the files a run writes before its first checkpoint,
and ``val_indices.json`` (the training images ``--val-split`` held out), written and read here only.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from . import checkpoint as ckpt
from .errors import UsageError
from .files import remove_stale_temporaries, write_atomic

log = logging.getLogger(__name__)

VAL_INDICES = "val_indices.json"  # with --val-split: the held-out training images, beside the checkpoints
RUN_FILES = ("config.yaml", VAL_INDICES, "train.log", "metrics.jsonl", "tensorboard", "curves.png")  # written first


@contextmanager
def run_lock(run_dir: Path, resuming: bool):
    """Hold ``run_dir/.lock`` for the run; refuse a second run into the same directory.

    The lock is an ``flock``, released by the kernel when the process ends however it ends. A fresh run
    that fails before its first checkpoint takes away what it wrote (and the folder, if it made it).
    """
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file where a folder of the path should be, no permission, ...
        raise UsageError(f"--run-dir {run_dir}: cannot make the folder ({err.strerror}: {err.filename})") from None
    dead_run = (run_dir / ".lock").exists()  # a run of ours left it: one that ended lets go of it, not of the file
    handle = _lock(run_dir)  # first: a directory a live run holds is "in use", whatever else it holds
    if not resuming and holds_checkpoints(run_dir):
        handle.close()
        if not dead_run:
            (run_dir / ".lock").unlink()
        raise UsageError(f"{run_dir} already holds a run (checkpoints); continue it with --resume auto, "
                         "or choose another --run-dir")
    _write_owner(handle)
    remove_stale_temporaries(run_dir)
    if not resuming and dead_run:
        _remove_run_files(run_dir, "found the files of an earlier run that saved no checkpoint")
    before = set(os.listdir(run_dir))
    try:
        yield
    except BaseException:
        clean_up = not resuming and not holds_checkpoints(run_dir)  # failed before its first checkpoint
        if clean_up:  # leave no trace, while still holding the lock: no other run can be in there
            _remove_run_files(run_dir, "", keep=before)
            (run_dir / ".lock").unlink(missing_ok=True)
        handle.close()
        if clean_up and created and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    handle.close()


def _lock(run_dir: Path):
    try:
        handle = open(run_dir / ".lock", "a+")
    except OSError as err:
        raise UsageError(f"--run-dir {run_dir}: cannot write in it ({err.strerror}: {err.filename})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise UsageError(f"{run_dir} is in use by a running training ({owner}); wait for it or choose "
                         "another --run-dir") from None
    return handle


def _write_owner(handle) -> None:
    """Who holds the lock, for the message a second run gets."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
    handle.flush()


def holds_checkpoints(run_dir: Path) -> bool:
    return any(ckpt.EPOCH_CHECKPOINT.match(p.name) or p.name == "last.pt" for p in run_dir.iterdir())


def _remove_run_files(run_dir: Path, reason: str, keep: set = frozenset()) -> None:
    """Delete the log files a run writes before its first checkpoint (those not in ``keep``); say so if ``reason``."""
    found = [name for name in RUN_FILES if (run_dir / name).exists() and name not in keep]
    for name in found:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if found and reason:
        log.info("%s in %s (%s): a fresh log starts", reason, run_dir, ", ".join(found))


def write_holdout(run_dir: Path, holdout: dict) -> None:
    """``val_indices.json``: the held-out training images (``val_split``, ``seed``, ``train_images``, ``indices``)."""
    write_atomic(run_dir / VAL_INDICES, json.dumps(holdout) + "\n")


def read_holdout(run_dir: Path) -> Optional[dict]:
    """What ``write_holdout`` wrote in ``run_dir``, with integer indices; ``None`` when there is no such file."""
    path = run_dir / VAL_INDICES
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return dict(record, indices=[int(i) for i in record["indices"]], train_images=int(record["train_images"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path}: not the held-out indices of a run ({type(err).__name__}: {err})") from None
