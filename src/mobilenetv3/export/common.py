"""What every export format shares: the softmax wrapper, the description an exported file carries, and how
the file is written (checked writable first, then written beside it and renamed over it)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import card_of
from ..errors import UsageError
from ..files import temporary_path

METADATA_KEY = "mobilenetv3"
CALIBRATION_KEY = "mobilenetv3.calibration"  # INT8 ONNX: the images it was calibrated on


class WithSoftmax(nn.Module):
    """The seed's export: the network followed by a softmax over classes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(dim=1)


def describe(model: nn.Module, softmax: bool) -> dict:
    """What an exported file says about itself: the model card plus whether a softmax is appended (read back
    by ``OnnxModule`` and ``load_exported``)."""
    return dict(card_of(model), softmax=softmax)


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
