"""Building blocks of MobileNetV3: channel rounding, Conv-BN-activation, squeeze-excite, the bottleneck."""
from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=64)
def _depthwise_matrix_index(height: int, width: int, kernel: tuple, stride: tuple, padding: tuple) -> torch.Tensor:
    """For a depthwise convolution over a ``height x width`` map: the (H*W, Ho*Wo) matrix of kernel positions
    (row-major ``a * kw + b``) that links input pixel to output pixel, ``kh * kw`` where none does (zero)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    out_h, out_w = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    rows = torch.arange(out_h)[:, None] * sh + torch.arange(kh)[None, :] - ph  # (Ho, kh): input row
    cols = torch.arange(out_w)[:, None] * sw + torch.arange(kw)[None, :] - pw  # (Wo, kw): input column
    r, c = rows[:, None, :, None], cols[None, :, None, :]  # broadcast to (Ho, Wo, kh, kw)
    valid = ((r >= 0) & (r < height) & (c >= 0) & (c < width)).expand(out_h, out_w, kh, kw)
    pixel_in = (r * width + c).expand_as(valid)
    pixel_out = (torch.arange(out_h)[:, None] * out_w + torch.arange(out_w)[None, :])[:, :, None, None]
    position = (torch.arange(kh)[:, None] * kw + torch.arange(kw)[None, :])[None, None]
    index = torch.full((height * width, out_h * out_w), kh * kw, dtype=torch.long)
    index[pixel_in[valid], pixel_out.expand_as(valid)[valid]] = position.expand_as(valid)[valid]
    return index


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with ``groups == channels`` (same parameters, same state-dict keys) that trains fast on
    small maps on a CPU.

    oneDNN's depthwise backward is slow on maps not much larger than the kernel: a 5x5 depthwise over
    (128, 576, 2, 2) took 22 ms forward and backward where its arithmetic is 7 MFLOPs, and the 5x5 layers on
    2x2 to 7x7 maps were ~40% of MobileNetV3-Small's training step at 28 px with a stride-1 stem. There, in
    training on a CPU, each channel's convolution is written as a (H*W, Ho*Wo) matrix gathered from its
    kernel and applied with one batched matmul (both directions are then matmuls and a scatter-add): 1.5-1.8
    ms for the same layers, equal to 1e-6. Evaluation, export and tracing take ``F.conv2d`` as before.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        kh, kw = self.kernel_size
        if (self.training and x.device.type == "cpu" and height * width <= 2 * kh * kw
                and self.dilation == (1, 1) and self.padding_mode == "zeros" and isinstance(self.padding, tuple)):
            return self._matmul_forward(x)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused  # TorchScript compiles a stub; unannotated, as its string annotations would not resolve
    def _matmul_forward(self, x):
        n, channels, height, width = x.shape
        kh, kw = self.kernel_size
        index = _depthwise_matrix_index(height, width, self.kernel_size, self.stride, self.padding)
        kernel = torch.cat([self.weight.reshape(channels, kh * kw), self.weight.new_zeros(channels, 1)], 1)
        matrix = kernel[:, index]  # (C, H*W, Ho*Wo)
        out_h = (height + 2 * self.padding[0] - kh) // self.stride[0] + 1
        if x.is_contiguous():
            out = torch.bmm(x.reshape(n, channels, height * width).transpose(0, 1), matrix).transpose(0, 1)
            out = out.reshape(n, channels, out_h, -1)
        else:  # channels-last: bmm over its strides is ~100x slower than a copy to (C, N, H*W) and back
            columns = x.transpose(0, 1).reshape(channels, n, height * width).contiguous()
            out = torch.bmm(columns, matrix).reshape(channels, n, out_h, -1).transpose(0, 1)
            out = out.contiguous(memory_format=torch.channels_last)
        return out if self.bias is None else out + self.bias[:, None, None]


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
        conv = DepthwiseConv2d if groups > 1 and groups == in_channels == out_channels else nn.Conv2d
        self.conv = conv(
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
