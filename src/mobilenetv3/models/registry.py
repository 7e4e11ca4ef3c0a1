"""A small, strict model registry: names -> builders, with each model's metadata beside its builder."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..errors import UsageError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    accepts: tuple[str, ...]  # keyword arguments the builder takes
    meta: dict[str, Any] = field(default_factory=dict)  # preprocessing, reference figures


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(model_cls: type, **meta: Any) -> Callable:
    """Register a builder under its function name; it accepts ``model_cls``'s keyword-only arguments."""
    accepts = tuple(
        name for name, param in inspect.signature(model_cls).parameters.items() if param.kind is param.KEYWORD_ONLY
    )

    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[builder.__name__] = ModelEntry(builder.__name__, builder, accepts, meta)
        return builder

    return register


def list_models() -> list[str]:
    """Names accepted by ``create_model``."""
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; ``ValueError`` listing the valid names if there is none."""
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("mobilenetv3_small", num_classes=10)``.

    An unknown name, an unknown keyword or a bad value raises ``ValueError`` saying what is valid.
    """
    entry = get_model_entry(name)
    unknown = sorted(set(kwargs) - set(entry.accepts))
    if unknown:
        raise UsageError(
            f"{name} got unknown argument(s) {', '.join(unknown)}; valid arguments: {', '.join(entry.accepts)}"
        )
    return entry.builder(**kwargs)


def default_preprocessing(name: str, in_chans: int) -> dict:
    """The eval protocol a model of ``name`` gets when its file carries none: the registry's (ImageNet's),
    with the luma mean/std for one-channel input."""
    default = get_model_entry(name).meta["preprocessing"]
    gray = in_chans != 3
    return dict(resize=default["resize"], crop=default["crop"], interpolation=default["interpolation"],
                mean=(0.449,) if gray else default["mean"], std=(0.226,) if gray else default["std"],
                in_chans=in_chans)
