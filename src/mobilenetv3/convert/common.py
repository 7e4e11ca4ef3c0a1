"""What every converter shares: the block layout of a state dict, renaming by module prefix, shape checks.

A converter describes the other framework's names as a list of ``(ours, theirs)`` module-prefix pairs
built from the block layout (which blocks have an expand conv and a squeeze-excite); renaming then
works in both directions and refuses any key that no pair covers, so nothing is dropped silently.
"""
from __future__ import annotations

import re
from typing import Mapping, NamedTuple

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]
Pairs = list[tuple[str, str]]  # (our module prefix, their module prefix)


class BlockLayout(NamedTuple):
    expand: bool  # has a 1x1 expand conv
    se: bool  # has squeeze-excite


def our_layout(state_dict: StateDict) -> list[BlockLayout]:
    """Block layout of a state dict in this package's names."""
    count = 1 + max((int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    return [
        BlockLayout(f"blocks.{i}.expand.conv.weight" in state_dict, f"blocks.{i}.se.fc1.weight" in state_dict)
        for i in range(count)
    ]


def rename(state_dict: StateDict, pairs: Pairs, reverse: bool = False) -> dict[str, torch.Tensor]:
    """Rename every key by the longest matching module prefix; ``reverse`` maps theirs -> ours the other way."""
    table = {(theirs if not reverse else ours): (ours if not reverse else theirs) for ours, theirs in pairs}
    out = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if module not in table:
            raise ValueError(f"unexpected tensor {key!r} {tuple(value.shape)}: not part of a MobileNetV3 state dict")
        out[f"{table[module]}.{leaf}"] = value
    return out


def check_shapes(state_dict: StateDict, model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first missing, unexpected or mis-shaped tensor for ``model``."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state_dict:
            raise ValueError(f"missing tensor {key!r} {tuple(value.shape)} for {_describe(model)}")
        if tuple(state_dict[key].shape) != tuple(value.shape):
            raise ValueError(
                f"tensor {key!r} has shape {tuple(state_dict[key].shape)}, "
                f"{_describe(model)} expects {tuple(value.shape)}"
            )
    for key in state_dict:
        if key not in expected:
            raise ValueError(f"unexpected tensor {key!r} for {_describe(model)}")


def _describe(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)
