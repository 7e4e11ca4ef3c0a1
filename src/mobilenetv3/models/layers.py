"""Building blocks of MobileNetV3: channel rounding, Conv-BN-activation, squeeze-excite, the bottleneck."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "hswish": nn.Hardswish}


def make_divisible(value: float, divisor: int = 8, round_up: bool = False) -> int:
    """Round a channel count to a multiple of ``divisor``.

    ``round_up=False`` is the TensorFlow rule that torchvision and timm use: the nearest multiple,
    at least ``divisor``, and never more than 10% below ``value``. ``round_up=True`` is the seed's
    ``ceil(value / divisor) * divisor``. Both give the paper's widths at ``width_mult=1.0``.
    """
    if round_up:
        return max(divisor, int(math.ceil(value / divisor)) * divisor)
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class BlockConfig(NamedTuple):
    """One row of the paper's Tables 1 and 2 (input width comes from the previous row)."""

    kernel: int
    expand: int  # expanded (hidden) channels
    out: int
    se: bool
    act: str  # "relu" or "hswish"
    stride: int


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation; ``act=None`` leaves the activation out."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: Optional[str] = None,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        if act is not None:
            self.act = ACTIVATIONS[act](inplace=True)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite with the paper's hard-sigmoid gate: x * hsigmoid(fc2(relu(fc1(mean(x)))))."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1); exports as ONNX GlobalAveragePool
        scale = self.gate(self.fc2(self.relu(self.fc1(scale))))
        return x * scale


class InvertedResidual(nn.Module):
    """The MobileNetV3 bottleneck: [1x1 expand] -> kxk depthwise -> [squeeze-excite] -> 1x1 project [+ input].

    The expand conv is left out when the block does not widen (expand == in channels), and the
    residual is added when the block keeps both resolution and width.
    """

    def __init__(
        self,
        in_channels: int,
        cfg: BlockConfig,
        squeeze_channels: int,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.use_residual = cfg.stride == 1 and in_channels == cfg.out
        # Absent parts are Identity (no parameters), so state-dict keys name only what exists.
        expands = cfg.expand != in_channels
        self.expand = ConvBNAct(in_channels, cfg.expand, act=cfg.act, **bn) if expands else nn.Identity()
        self.dw = ConvBNAct(cfg.expand, cfg.expand, cfg.kernel, cfg.stride, groups=cfg.expand, act=cfg.act, **bn)
        self.se = SqueezeExcite(cfg.expand, squeeze_channels) if cfg.se else nn.Identity()
        self.project = ConvBNAct(cfg.expand, cfg.out, act=None, **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        if self.use_residual:
            out += x  # in place, as torchvision: BatchNorm's backward does not need its output
        return out
