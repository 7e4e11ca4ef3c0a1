"""torchvision's ``mobilenet_v3_large`` / ``mobilenet_v3_small`` state dicts <-> this package's.

torchvision's model uses BatchNorm eps 1e-3 and momentum 0.01: build ours with ``TORCHVISION_KWARGS``
to get the same function (``create_model(name, **TORCHVISION_KWARGS)``).
"""
from __future__ import annotations

import re

from .common import BlockLayout, Pairs, StateDict, our_layout, rename, with_head_bias

TORCHVISION_KWARGS = dict(bn_eps=1e-3, bn_momentum=0.01)


def _layout(state_dict: StateDict) -> list[BlockLayout]:
    """torchvision's ``features.0`` is the stem, ``features.1..n`` the blocks, ``features.n+1`` the last conv."""
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"features\.(\d+)\.block\.", k))})
    layout = []
    for index in blocks:
        first_conv = state_dict[f"features.{index}.block.0.0.weight"]  # (out, in/groups, k, k)
        has_se = any(k.startswith(f"features.{index}.block.") and ".fc1." in k for k in state_dict)
        layout.append(BlockLayout(expand=first_conv.shape[1] != 1, se=has_se))  # depthwise first: no expand
    return layout


def _pairs(layout: list[BlockLayout]) -> Pairs:
    pairs = [("stem.conv", "features.0.0"), ("stem.bn", "features.0.1")]
    for i, block in enumerate(layout):
        parts = ["expand"] * block.expand + ["dw"] + ["se"] * block.se + ["project"]
        for j, part in enumerate(parts):
            theirs = f"features.{i + 1}.block.{j}"
            if part == "se":
                pairs += [(f"blocks.{i}.se.fc1", f"{theirs}.fc1"), (f"blocks.{i}.se.fc2", f"{theirs}.fc2")]
            else:
                pairs += [(f"blocks.{i}.{part}.conv", f"{theirs}.0"), (f"blocks.{i}.{part}.bn", f"{theirs}.1")]
    last = len(layout) + 1
    pairs += [("final_conv.conv", f"features.{last}.0"), ("final_conv.bn", f"features.{last}.1")]
    return pairs + [("head_fc", "classifier.0"), ("classifier", "classifier.3")]


def from_torchvision(state_dict: StateDict) -> dict:
    """A torchvision MobileNetV3 state dict (any width) in this package's names."""
    return rename(state_dict, _pairs(_layout(state_dict)), reverse=False)


def to_torchvision(state_dict: StateDict) -> dict:
    """This package's state dict in torchvision's names (load into ``torchvision.models.mobilenet_v3_*``);
    a model without a head bias gets a zero one, as torchvision's head always has one."""
    return rename(with_head_bias(state_dict), _pairs(our_layout(state_dict)), reverse=True)
