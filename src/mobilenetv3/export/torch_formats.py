"""TorchScript (traced) and ``torch.export`` (pt2) programs, each with the description in ``metadata.json``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..files import temporary_path
from .common import WithSoftmax, describe


def export_torchscript(model: nn.Module, path: Path, example: torch.Tensor, softmax: bool = False) -> Path:
    """TorchScript (traced), with the description in the archive's ``metadata.json``."""
    import warnings

    net = WithSoftmax(model) if softmax else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but many runtimes load it
        traced = torch.jit.trace(net.eval(), example)
        tmp = temporary_path(path)
        torch.jit.save(traced, str(tmp), _extra_files={"metadata.json": json.dumps(describe(model, softmax))})
    os.replace(tmp, path)
    return path


def export_pt2(model: nn.Module, path: Path, example: torch.Tensor, softmax: bool = False) -> Path:
    """``torch.export`` program with a dynamic batch, loadable with ``torch.export.load``."""
    net = WithSoftmax(model) if softmax else model
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(net.eval(), (example,), dynamic_shapes=({0: batch},))
    tmp = temporary_path(path)
    torch.export.save(program, str(tmp), extra_files={"metadata.json": json.dumps(describe(model, softmax))})
    os.replace(tmp, path)
    return path
