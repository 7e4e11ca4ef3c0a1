"""Weights from and to other frameworks: pure functions over state dicts."""
from .common import check_shapes
from .mindspore import (
    MINDSPORE_KWARGS,
    MindSporeCheckpoint,
    from_mindspore,
    read_ckpt,
    split_training_state,
    to_mindspore,
    write_ckpt,
)
from .timm import from_timm, to_timm
from .torchvision import TORCHVISION_KWARGS, from_torchvision, to_torchvision

__all__ = [
    "check_shapes", "from_timm", "to_timm", "from_torchvision", "to_torchvision", "TORCHVISION_KWARGS",
    "from_mindspore", "to_mindspore", "read_ckpt", "write_ckpt", "split_training_state", "MindSporeCheckpoint",
    "MINDSPORE_KWARGS",
]
