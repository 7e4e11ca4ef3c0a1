"""Files, written safely: one atomic writer for checkpoints, weights, reports; content hashes."""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Union

from .errors import UsageError

log = logging.getLogger(__name__)

TEMPORARY = re.compile(r"^\.tmp\d+\..+$")  # what temporary_path makes


def temporary_path(path: Path, tag: str = "") -> Path:
    """Where a file is written before it is renamed over ``path``: hidden, beside it, named after this process,
    keeping its extension (some writers check it)."""
    return path.with_name(f".tmp{os.getpid()}.{tag}{path.name}")


def write_atomic(path: Union[str, Path], data: Union[bytes, bytearray, memoryview, str]) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file, fsync, rename, fsync of the folder.

    A process killed at any moment leaves either the old file or the new one, never a torn one.
    On failure (disk full, read-only folder) the temporary file is removed and the ``OSError`` raised.
    Callers serialise in memory first: PyTorch's and safetensors' own file writers turn ``ENOSPC``
    into errors that no longer say the disk is full.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_output(path: Path, tag: str = ""):
    """The temporary path to write ``path``'s content to: renamed over ``path`` when the block succeeds, removed
    when it fails. An ``OSError`` about the temporary file (a full disk) is raised about ``path``."""
    tmp = temporary_path(path, tag)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.filename in (str(tmp), tmp):
            raise type(err)(err.errno, err.strerror, str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: Path) -> None:
    """Fail now, in one line naming ``path``, if it cannot be written (a read-only or missing folder, a file in
    the way): before the export's work, and before a writer's error names its temporary file instead."""
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder")
    probe = temporary_path(path, "probe.")
    try:
        probe.open("wb").close()
    except FileNotFoundError:
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist") from None
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    probe.unlink()


def save_figure(figure, path: Union[str, Path]) -> None:
    """A matplotlib figure as PNG, atomically."""
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=90)
    write_atomic(path, image.getvalue())


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Delete the temporary files that killed writers left in ``folder``; call it only while holding the
    folder's lock, when no live writer can own them."""
    removed = []
    for path in Path(folder).iterdir():
        if TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        log.info("removed %d temporary file(s) of an interrupted write: %s", len(removed), ", ".join(removed))
    return removed


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the file system allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
