"""The info task: a model's parameter count, MAdds and per-layer table."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..models import count_params, create_model, profile


@dataclass
class ModelInfo:
    model: str
    kwargs: dict  # the constructor arguments, defaults filled in
    image_size: int
    params: int
    bn_buffers: int  # BatchNorm running statistics
    madds: int  # conv and linear multiply-accumulates
    rows: list  # models.complexity.RowStats, one per layer


def model_info(name: str, image_size: int = 224, **kwargs) -> ModelInfo:
    """Parameters and MAdds of ``create_model(name, **kwargs)`` at ``image_size`` px."""
    model = create_model(name, **kwargs)
    if image_size < 32:
        raise UsageError(f"--image-size must be at least 32, got {image_size}")
    rows = profile(model, image_size)
    buffers = sum(b.numel() for key, b in model.named_buffers() if not key.endswith("num_batches_tracked"))
    return ModelInfo(name, dict(model.model_kwargs), image_size, count_params(model), buffers,
                     sum(r.madds for r in rows), rows)
