"""Weights from and to other frameworks: pure functions over state dicts."""
from .common import check_shapes
from .timm import from_timm, to_timm
from .torchvision import TORCHVISION_KWARGS, from_torchvision, to_torchvision

__all__ = ["check_shapes", "from_timm", "to_timm", "from_torchvision", "to_torchvision", "TORCHVISION_KWARGS"]
