"""TorchScript (traced) and ``torch.export`` (pt2) programs, each with the description in ``metadata.json``."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_output
from .common import WithSoftmax, describe


def export_torchscript(model: nn.Module, path: Path, example: torch.Tensor, softmax: bool = False) -> Path:
    """TorchScript (traced), with the description in the archive's ``metadata.json``."""
    import warnings

    net = WithSoftmax(model) if softmax else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but many runtimes load it
        traced = torch.jit.trace(net.eval(), example)
        with atomic_output(path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={"metadata.json": json.dumps(describe(model, softmax))})
    return path


def export_pt2(model: nn.Module, path: Path, example: torch.Tensor, softmax: bool = False) -> Path:
    """``torch.export`` program with a dynamic batch, loadable with ``torch.export.load``."""
    net = WithSoftmax(model) if softmax else model
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(net.eval(), (example,), dynamic_shapes=({0: batch},))
    with atomic_output(path) as tmp:
        torch.export.save(program, str(tmp), extra_files={"metadata.json": json.dumps(describe(model, softmax))})
    return path
