"""Parameter and multiply-add counts, overall and per row of the paper's table.

How MAdds are counted (the paper's and torchvision's convention): one multiply-accumulate per
weight use of every convolution and fully connected layer, for one image:
``H_out * W_out * C_out * (C_in / groups) * k * k`` for a conv, ``in * out`` for a linear layer.
Not counted: BatchNorm (folded into the convs at inference), activations, the squeeze-excite
channel multiply, pooling, residual additions and biases.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .mobilenetv3 import MobileNetV3


@dataclass
class RowStats:
    name: str  # "stem", "blocks.3", "final_conv", "head"
    operator: str  # e.g. "bneck 5x5 exp 72 SE relu s2"
    input_shape: tuple[int, ...]  # (C, H, W) or (C,)
    output_shape: tuple[int, ...]
    params: int
    madds: int


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (BatchNorm running statistics are buffers and are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _layer_madds(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output[0].numel() * (module.in_channels // module.groups) * kh * kw
    return module.in_features * module.out_features  # nn.Linear


def _row_of(qualified_name: str) -> str:
    parts = qualified_name.split(".")
    if parts[0] == "blocks":
        return ".".join(parts[:2])
    return parts[0] if parts[0] in ("stem", "final_conv") else "head"


def _operators(model: MobileNetV3) -> dict[str, str]:
    ops = {"stem": "conv2d 3x3 s2 hswish", "final_conv": "conv2d 1x1 hswish", "head": "pool, fc hswish, fc"}
    for i, cfg in enumerate(model.block_configs):
        se = " SE" if cfg.se else ""
        ops[f"blocks.{i}"] = f"bneck {cfg.kernel}x{cfg.kernel} exp {cfg.expand}{se} {cfg.act} s{cfg.stride}"
    return ops


@torch.no_grad()
def profile(model: MobileNetV3, image_size: int = 224) -> list[RowStats]:
    """One ``RowStats`` per row of the paper's table, from a single forward pass of one image."""
    madds: dict[str, int] = {}
    shapes: dict[str, list[tuple[int, ...]]] = {}
    hooks = []

    def count(name):
        return lambda module, inputs, output: madds.__setitem__(
            _row_of(name), madds.get(_row_of(name), 0) + _layer_madds(module, output))

    def record(name):
        return lambda module, inputs, output: shapes.__setitem__(
            name, [tuple(inputs[0].shape[1:]), tuple(output.shape[1:])])

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(count(name)))
    rows = ["stem", *(f"blocks.{i}" for i in range(len(model.blocks))), "final_conv"]
    for name in rows:
        hooks.append(model.get_submodule(name).register_forward_hook(record(name)))

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        in_chans = model.stem.conv.in_channels
        features = model.forward_features(torch.zeros(1, in_chans, image_size, image_size, device=device))
        logits = model.forward_head(features)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    shapes["head"] = [tuple(features.shape[1:]), tuple(logits.shape[1:])]

    params = {name: count_params(model.get_submodule(name)) for name in rows}
    params["head"] = count_params(model.head_fc) + count_params(model.classifier)
    ops = _operators(model)
    return [
        RowStats(name, ops[name], shapes[name][0], shapes[name][1], params[name], madds.get(name, 0))
        for name in [*rows, "head"]
    ]


def count_madds(model: MobileNetV3, image_size: int = 224) -> int:
    """Multiply-adds for one ``image_size`` x ``image_size`` image (see the module docstring)."""
    return sum(row.madds for row in profile(model, image_size))
