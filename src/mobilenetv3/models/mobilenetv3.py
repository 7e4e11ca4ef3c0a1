"""MobileNetV3-Large and -Small.

Searching for MobileNetV3, Howard et al., ICCV 2019: https://arxiv.org/abs/1905.02244

The architecture is data: one ``BlockConfig`` row per bottleneck (Tables 1 and 2 of the paper),
``width_mult`` is applied in one place (``_scaled``), and the builders at the bottom are thin.
Module attribute names are public API: checkpoints and the converters in ``mobilenetv3.convert``
depend on them.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from ..errors import SettingError, UsageError
from .layers import BlockConfig, ConvBNAct, InvertedResidual, make_divisible
from .registry import register_model

B = BlockConfig

# kernel, expand, out, SE, activation, stride; comments give the input resolution at 224 px.
LARGE_BLOCKS = (
    B(3, 16, 16, False, "relu", 1),  # 112
    B(3, 64, 24, False, "relu", 2),  # 112 -> 56
    B(3, 72, 24, False, "relu", 1),  # 56
    B(5, 72, 40, True, "relu", 2),  # 56 -> 28
    B(5, 120, 40, True, "relu", 1),  # 28
    B(5, 120, 40, True, "relu", 1),  # 28
    B(3, 240, 80, False, "hswish", 2),  # 28 -> 14
    B(3, 200, 80, False, "hswish", 1),  # 14
    B(3, 184, 80, False, "hswish", 1),  # 14
    B(3, 184, 80, False, "hswish", 1),  # 14
    B(3, 480, 112, True, "hswish", 1),  # 14
    B(3, 672, 112, True, "hswish", 1),  # 14
    B(5, 672, 160, True, "hswish", 2),  # 14 -> 7
    B(5, 960, 160, True, "hswish", 1),  # 7
    B(5, 960, 160, True, "hswish", 1),  # 7
)

SMALL_BLOCKS = (
    B(3, 16, 16, True, "relu", 2),  # 112 -> 56
    B(3, 72, 24, False, "relu", 2),  # 56 -> 28
    B(3, 88, 24, False, "relu", 1),  # 28
    B(5, 96, 40, True, "hswish", 2),  # 28 -> 14
    B(5, 240, 40, True, "hswish", 1),  # 14
    B(5, 240, 40, True, "hswish", 1),  # 14
    B(5, 120, 48, True, "hswish", 1),  # 14
    B(5, 144, 48, True, "hswish", 1),  # 14
    B(5, 288, 96, True, "hswish", 2),  # 14 -> 7
    B(5, 576, 96, True, "hswish", 1),  # 7
    B(5, 576, 96, True, "hswish", 1),  # 7
)


class Arch(NamedTuple):
    blocks: tuple[BlockConfig, ...]
    stem_channels: int
    head_channels: int  # the paper's last hidden width (1280 Large, 1024 Small; the seed uses 1280 for both)


ARCHS = {
    "large": Arch(LARGE_BLOCKS, stem_channels=16, head_channels=1280),
    "small": Arch(SMALL_BLOCKS, stem_channels=16, head_channels=1024),
}

CHANNEL_ROUNDINGS = ("nearest", "ceil")


class MobileNetV3(nn.Module):
    """MobileNetV3 classifier: stem -> bottleneck blocks -> final 1x1 conv -> pool -> hidden FC -> classifier.

    Args:
        arch: ``"large"`` or ``"small"``.
        num_classes: size of the classifier output.
        width_mult: multiplies every channel count, rounded to a multiple of 8.
        dropout: dropout before the classifier (the paper and torchvision use 0.2; the seed none).
        in_chans: input image channels (1 for grayscale without replicating it to RGB).
        head_channels: the hidden width between pooling and classifier. ``None`` takes the paper's
            (1280 Large, 1024 Small) scaled by ``width_mult`` as torchvision does; a number is used as is.
        bn_eps, bn_momentum: BatchNorm settings (PyTorch momentum convention). The defaults are
            PyTorch's, which the seed and timm use; torchvision's model uses 1e-3 and 0.01.
        channel_rounding: ``"nearest"`` (torchvision, timm) or ``"ceil"`` (the seed) when
            ``width_mult`` produces widths that are not multiples of 8.
        head_bias: whether the hidden head ``head_fc`` has a bias (torchvision, timm). The seed's is a
            bias-free 1x1 conv: ``head_bias=False`` is its network exactly, and only such weights (or
            ones whose head bias is zero) have a MindSpore equivalent.
        stem_stride: the first convolution's stride. The paper's 2; 1 keeps small images (28-32 px) at full
            resolution through the stem, for 4x the compute and an output stride of 16 (the weights' shapes
            are the same; torchvision, timm and the seed have 2, so such weights stay in our formats).
    """

    def __init__(
        self,
        arch: str,
        *,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        in_chans: int = 3,
        head_channels: Optional[int] = None,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        channel_rounding: str = "nearest",
        head_bias: bool = True,
        stem_stride: int = 2,
    ):
        super().__init__()
        _check_args(arch, num_classes, width_mult, dropout, in_chans, head_channels, bn_eps, bn_momentum,
                    channel_rounding, head_bias, stem_stride)
        spec = ARCHS[arch]
        round_up = channel_rounding == "ceil"
        stem_channels, blocks = _scaled(spec, width_mult, round_up)
        if head_channels is None:
            head_channels = make_divisible(spec.head_channels * width_mult, round_up=round_up)
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)

        self.stem = ConvBNAct(in_chans, stem_channels, 3, stride=stem_stride, act="hswish", **bn)
        layers, in_channels = [], stem_channels
        for cfg in blocks:
            squeeze_channels = make_divisible(cfg.expand // 4, round_up=round_up)
            layers.append(InvertedResidual(in_channels, cfg, squeeze_channels, **bn))
            in_channels = cfg.out
        self.blocks = nn.Sequential(*layers)
        self.num_features = 6 * in_channels  # 960 Large, 576 Small (torchvision's rule at any width)
        self.final_conv = ConvBNAct(in_channels, self.num_features, act="hswish", **bn)

        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_hidden_size = head_channels
        self.head_fc = nn.Linear(self.num_features, head_channels, bias=head_bias)  # the seed's 1x1 conv: no bias
        self.head_act = nn.Hardswish(inplace=True)
        self.head_drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(head_channels, num_classes)
        self.num_classes = num_classes
        self.in_chans = in_chans

        self.arch = arch
        self.backbone_frozen = False  # see freeze_backbone()
        self.block_configs = blocks  # after width scaling; read by the MAdds table
        # Everything needed to rebuild this exact module (checkpoints store it).
        self.model_kwargs = dict(
            num_classes=num_classes, width_mult=width_mult, dropout=dropout, in_chans=in_chans,
            head_channels=head_channels, bn_eps=bn_eps, bn_momentum=bn_momentum, channel_rounding=channel_rounding,
            head_bias=head_bias, stem_stride=stem_stride,
        )
        self.apply(_init_weights)

    @property
    def model_name(self) -> str:
        return f"mobilenetv3_{self.arch}"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32) (H/16, W/16 with ``stem_stride=1``)."""
        return self.final_conv(self.blocks(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_features, h, w) -> logits (B, num_classes), or (B, head_hidden_size) with ``pre_logits``."""
        x = self.global_pool(x).flatten(1)  # (B, num_features)
        x = self.head_act(self.head_fc(x))  # (B, head_hidden_size)
        if pre_logits:
            return x
        return self.classifier(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def freeze_backbone(self) -> None:
        """Train only the classifier (linear probing): other parameters stop requiring gradients and
        their BatchNorm statistics stay fixed, even in ``train()`` mode."""
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith("classifier."))
        self.backbone_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> "MobileNetV3":
        super().train(mode)
        if self.backbone_frozen:
            for module in (self.stem, self.blocks, self.final_conv, self.head_fc):
                module.eval()
        return self

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs."""
        _check_positive_int("num_classes", num_classes)
        self.classifier = nn.Linear(self.head_hidden_size, num_classes).to(self.head_fc.weight)
        _init_weights(self.classifier)
        self.num_classes = num_classes
        self.model_kwargs["num_classes"] = num_classes


def _scaled(spec: Arch, width_mult: float, round_up: bool) -> tuple[int, list[BlockConfig]]:
    """The one place that applies ``width_mult``: stem width and every block's expand/out width."""
    def scale(channels: int) -> int:
        return make_divisible(channels * width_mult, round_up=round_up)

    blocks = [cfg._replace(expand=scale(cfg.expand), out=scale(cfg.out)) for cfg in spec.blocks]
    return scale(spec.stem_channels), blocks


def _init_weights(module: nn.Module) -> None:
    """The paper's and torchvision's initialisation."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0, 0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingError(name, f"must be a positive integer, got {value!r}")


def _check_args(arch, num_classes, width_mult, dropout, in_chans, head_channels, bn_eps, bn_momentum,
                channel_rounding, head_bias, stem_stride) -> None:
    if arch not in ARCHS:
        raise UsageError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("in_chans", in_chans)
    if head_channels is not None:
        _check_positive_int("head_channels", head_channels)
    if not isinstance(width_mult, (int, float)) or not math.isfinite(width_mult) or width_mult <= 0:
        raise SettingError("width_mult", f"must be a positive number, got {width_mult!r}")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise SettingError("dropout", f"must be in [0, 1), got {dropout!r}")
    if not isinstance(bn_eps, (int, float)) or not bn_eps > 0:
        raise SettingError("bn_eps", f"must be positive, got {bn_eps!r}")
    if not isinstance(bn_momentum, (int, float)) or not 0 <= bn_momentum <= 1:
        raise SettingError("bn_momentum", f"must be in [0, 1], got {bn_momentum!r}")
    if channel_rounding not in CHANNEL_ROUNDINGS:
        raise UsageError(f"channel_rounding must be one of {', '.join(CHANNEL_ROUNDINGS)}, got {channel_rounding!r}")
    if not isinstance(head_bias, bool):
        raise UsageError(f"head_bias must be True or False, got {head_bias!r}")
    if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
        raise UsageError(f"stem_stride must be 1 or 2, got {stem_stride!r}")


_IMAGENET = dict(
    input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    interpolation="bilinear", resize=256, crop=224,
)


@register_model(
    MobileNetV3,
    preprocessing=_IMAGENET,
    paper=dict(top1=75.2, madds_m=219, params_m=5.4),
    torchvision=dict(name="mobilenet_v3_large", params=5_483_032, top1=(74.042, 75.274)),
)
def mobilenetv3_large(**kwargs) -> MobileNetV3:
    """MobileNetV3-Large (Table 1 of the paper). Keyword arguments as for ``MobileNetV3``."""
    return MobileNetV3("large", **kwargs)


@register_model(
    MobileNetV3,
    preprocessing=_IMAGENET,
    paper=dict(top1=67.4, madds_m=56, params_m=2.5),
    torchvision=dict(name="mobilenet_v3_small", params=2_542_856, top1=(67.668,)),
)
def mobilenetv3_small(**kwargs) -> MobileNetV3:
    """MobileNetV3-Small (Table 2 of the paper). Keyword arguments as for ``MobileNetV3``."""
    return MobileNetV3("small", **kwargs)
