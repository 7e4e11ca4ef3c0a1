"""Files, written safely: one atomic writer for checkpoints, weights, reports; content hashes."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union


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
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


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
