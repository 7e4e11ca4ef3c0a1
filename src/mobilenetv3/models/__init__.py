"""MobileNetV3 models: the registry, the layers and the architecture tables."""
from .complexity import count_madds, count_params, profile
from .mobilenetv3 import MobileNetV3, mobilenetv3_large, mobilenetv3_small
from .registry import create_model, default_preprocessing, get_model_entry, list_models

__all__ = [
    "MobileNetV3", "mobilenetv3_large", "mobilenetv3_small",
    "create_model", "list_models", "get_model_entry", "default_preprocessing",
    "count_params", "count_madds", "profile",
]
