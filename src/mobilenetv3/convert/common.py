"""What every converter shares: the block layout of a state dict, renaming by module prefix, shape checks.

A converter describes the other framework's names as a list of ``(ours, theirs)`` module-prefix pairs
built from the block layout (which blocks have an expand conv and a squeeze-excite); renaming then
works in both directions and refuses any key that no pair covers, so nothing is dropped silently.
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Mapping, NamedTuple, Optional

import torch
from torch import nn

from ..errors import UsageError
from ..models import create_model
from ..models.mobilenetv3 import ARCHS, _scaled  # _scaled: the one place that applies width_mult

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
            raise UsageError(f"unexpected tensor {key!r} {tuple(value.shape)}: not part of a MobileNetV3 state dict")
        out[f"{table[module]}.{leaf}"] = value
    return out


def with_head_bias(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """``state_dict`` with a zero ``head_fc.bias`` if it has none (a ``head_bias=False`` model), for
    frameworks whose hidden head always has one (torchvision, timm): the same function."""
    out = dict(state_dict)
    if "head_fc.bias" not in out and "head_fc.weight" in out:
        weight = out["head_fc.weight"]
        out["head_fc.bias"] = weight.new_zeros(weight.shape[0])
    return out


def check_shapes(state_dict: StateDict, model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first missing, unexpected or mis-shaped tensor for ``model``."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state_dict:
            raise UsageError(f"missing tensor {key!r} {tuple(value.shape)} for {_describe(model)}")
        if tuple(state_dict[key].shape) != tuple(value.shape):
            raise UsageError(
                f"tensor {key!r} has shape {tuple(state_dict[key].shape)}, "
                f"{_describe(model)} expects {tuple(value.shape)}"
            )
    for key in state_dict:
        if key not in expected:
            raise UsageError(f"unexpected tensor {key!r} for {_describe(model)}")


def _describe(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)



# ----------------------------------------------------------------------------- architecture from shapes
# Widths tried when inferring width_mult: the common ones first, then a 0.05 grid.
_ARCH_BY_BLOCKS = {len(spec.blocks): arch for arch, spec in ARCHS.items()}  # 15: large, 11: small
_WIDTHS = tuple(dict.fromkeys((1.0, 0.75, 0.5, 0.35, 1.25, 1.5, 2.0, *(round(0.25 + 0.05 * i, 2) for i in range(36)))))


def _shape(state_dict: StateDict, key: str, ndim: int) -> tuple[int, ...]:
    if key not in state_dict or state_dict[key].dim() != ndim:
        raise UsageError(f"missing or mis-shaped tensor {key!r} (expected {ndim} dimensions)")
    return tuple(state_dict[key].shape)


def _widths(state_dict: StateDict, num_blocks: int) -> Optional[list[int]]:
    """Stem width, then each block's expanded and output widths, as the tensors have them."""
    keys = [f"blocks.{i}.{part}.conv.weight" for i in range(num_blocks) for part in ("dw", "project")]
    if not all(key in state_dict for key in keys):
        return None
    return [state_dict["stem.conv.weight"].shape[0], *(state_dict[key].shape[0] for key in keys)]


def _width_candidates(arch: str, widths: Optional[list[int]], roundings: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """``width_mult`` and ``channel_rounding`` settings that give these stem and block widths, common ones first."""
    for width in _WIDTHS:
        for rounding in roundings:
            stem, blocks = _scaled(ARCHS[arch], width, rounding == "ceil")
            if widths == [stem, *(channels for cfg in blocks for channels in (cfg.expand, cfg.out))]:
                yield dict(width_mult=width, channel_rounding=rounding)


def fitting_model(state_dict: StateDict, defaults: Optional[dict] = None,
                  roundings: tuple[str, ...] = ("nearest", "ceil")) -> nn.Module:
    """The MobileNetV3 whose state dict (our names) has exactly these shapes; ``ValueError`` naming the first
    mismatch if none. The block count gives Large or Small; classifier, head and stem shapes give
    ``num_classes``, ``head_channels`` and ``in_chans``, and whether there is a ``head_fc.bias`` gives
    ``head_bias``; ``width_mult`` and ``channel_rounding`` are found by trying the widths people use,
    with ``roundings`` in order of preference (they agree at width 1.0).
    BatchNorm settings are not in a state dict: ``defaults`` gives those of the framework the weights came from.
    """
    num_blocks = len(our_layout(state_dict))
    if num_blocks not in _ARCH_BY_BLOCKS:
        raise UsageError(f"found {num_blocks} bottleneck blocks; MobileNetV3-Large has 15, -Small 11")
    name = f"mobilenetv3_{_ARCH_BY_BLOCKS[num_blocks]}"
    head, head_in = _shape(state_dict, "head_fc.weight", 2)
    classes, classifier_in = _shape(state_dict, "classifier.weight", 2)
    if classifier_in != head:
        raise UsageError(f"the classifier takes {classifier_in} features but the head conv gives {head}")
    kwargs = dict(defaults or {}, num_classes=classes, head_channels=head,
                  in_chans=_shape(state_dict, "stem.conv.weight", 4)[1], head_bias="head_fc.bias" in state_dict)
    candidates = list(_width_candidates(_ARCH_BY_BLOCKS[num_blocks], _widths(state_dict, num_blocks), roundings))
    errors = []
    for widths in candidates or [dict(width_mult=1.0, channel_rounding=roundings[0])]:
        # A small probe first, so that a head sized by a corrupt tensor never allocates a huge model.
        num_features = create_model(name, **widths, head_channels=8, num_classes=1).num_features
        if num_features != head_in:
            errors.append(f"tensor 'head_fc.weight' takes {head_in} features, {name} gives {num_features}")
            continue
        model = create_model(name, **kwargs, **widths)
        try:
            check_shapes(state_dict, model)
            return model
        except ValueError as err:
            errors.append(str(err))
    setting = "at width 1.0" if not candidates else f"at width {candidates[0]['width_mult']}"
    raise UsageError(f"no width of {name} between 0.25 and 2.0 fits these weights; {setting}: {errors[0]}")
