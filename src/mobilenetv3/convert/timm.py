"""timm's ``mobilenetv3_large_100`` / ``mobilenetv3_small_100`` (and other widths) state dicts <-> ours.

timm's BatchNorm settings are PyTorch's defaults, which are ours. timm's head is a 1x1 conv with bias
on the pooled features; ours is the same function as a Linear. At widths other than 1.0 timm builds a
different network (it derives expanded widths from the already scaled input width and keeps the head
at 1280), so only ``mobilenetv3_large_100`` / ``mobilenetv3_small_100`` map onto ours.
"""
from __future__ import annotations

import re

from ..errors import UsageError
from .common import BlockLayout, Pairs, StateDict, our_layout, rename, with_head_bias

# timm groups the bottlenecks into stages; its last stage holds the final 1x1 conv alone.
_STAGE_SIZES = {15: (1, 2, 3, 4, 2, 3), 11: (1, 2, 3, 2, 3)}  # Large, Small


def _block_prefixes(state_dict: StateDict) -> list[str]:
    """timm's ``blocks.<stage>.<index>`` prefixes in order, the final conv last."""
    found = {(int(m.group(1)), int(m.group(2))) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))}
    return [f"blocks.{stage}.{index}" for stage, index in sorted(found)]


def _layout(state_dict: StateDict) -> list[BlockLayout]:
    layout = []
    for prefix in _block_prefixes(state_dict)[:-1]:
        has_se = f"{prefix}.se.conv_reduce.weight" in state_dict
        layout.append(BlockLayout(expand=f"{prefix}.conv_pwl.weight" in state_dict, se=has_se))
    return layout


def _pairs(layout: list[BlockLayout], prefixes: list[str]) -> Pairs:
    pairs = [("stem.conv", "conv_stem"), ("stem.bn", "bn1")]
    for i, (block, theirs) in enumerate(zip(layout, prefixes)):
        ours = f"blocks.{i}"
        if block.expand:  # timm's InvertedResidual
            pairs += [(f"{ours}.expand.conv", f"{theirs}.conv_pw"), (f"{ours}.expand.bn", f"{theirs}.bn1"),
                      (f"{ours}.dw.conv", f"{theirs}.conv_dw"), (f"{ours}.dw.bn", f"{theirs}.bn2"),
                      (f"{ours}.project.conv", f"{theirs}.conv_pwl"), (f"{ours}.project.bn", f"{theirs}.bn3")]
        else:  # timm's DepthwiseSeparableConv
            pairs += [(f"{ours}.dw.conv", f"{theirs}.conv_dw"), (f"{ours}.dw.bn", f"{theirs}.bn1"),
                      (f"{ours}.project.conv", f"{theirs}.conv_pw"), (f"{ours}.project.bn", f"{theirs}.bn2")]
        if block.se:
            pairs += [(f"{ours}.se.fc1", f"{theirs}.se.conv_reduce"), (f"{ours}.se.fc2", f"{theirs}.se.conv_expand")]
    final = prefixes[len(layout)]
    pairs += [("final_conv.conv", f"{final}.conv"), ("final_conv.bn", f"{final}.bn1")]
    return pairs + [("head_fc", "conv_head"), ("classifier", "classifier")]


def from_timm(state_dict: StateDict) -> dict:
    """A timm MobileNetV3 state dict in this package's names."""
    out = rename(state_dict, _pairs(_layout(state_dict), _block_prefixes(state_dict)))
    out["head_fc.weight"] = out["head_fc.weight"].flatten(1)  # (hidden, features, 1, 1) -> (hidden, features)
    return out


def to_timm(state_dict: StateDict) -> dict:
    """This package's state dict in timm's names (load into ``timm.create_model("mobilenetv3_*")``); a model
    without a head bias gets a zero one, as timm's head always has one."""
    layout = our_layout(state_dict)
    if len(layout) not in _STAGE_SIZES:
        raise UsageError(f"timm has no MobileNetV3 with {len(layout)} blocks (Large has 15, Small 11)")
    prefixes = [f"blocks.{stage}.{index}"
                for stage, size in enumerate(_STAGE_SIZES[len(layout)]) for index in range(size)]
    prefixes.append(f"blocks.{len(_STAGE_SIZES[len(layout)])}.0")
    out = rename(with_head_bias(state_dict), _pairs(layout, prefixes), reverse=True)
    out["conv_head.weight"] = out["conv_head.weight"][:, :, None, None]
    return out
