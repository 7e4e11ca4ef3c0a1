"""mobilenetv3: train, evaluate, export and serve MobileNetV3 image classifiers."""
from .checkpoint import load_model
from .models import MobileNetV3, create_model, list_models

__version__ = "0.1.0"
__all__ = ["MobileNetV3", "create_model", "list_models", "load_model", "__version__"]
