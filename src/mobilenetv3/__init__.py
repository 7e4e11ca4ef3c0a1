"""mobilenetv3: train, evaluate, export and serve MobileNetV3 image classifiers.

The Python API is the CLI's: ``train``, ``evaluate``, ``export_model``, ``predict``, ``serve``,
``convert_weights`` and ``bench`` do what ``mobilenetv3 train|eval|export|predict|serve|convert|bench`` do, with
the flags as keyword arguments (``train("fashion-mnist", epochs=1)``, ``evaluate(source="last.pt")``).
"""
from .models import MobileNetV3, create_model, list_models
from .tasks import bench, convert_weights, evaluate, export_model, model_info, predict, serve, train
from .version import __version__
from .weights import load_model

__all__ = ["MobileNetV3", "create_model", "list_models", "load_model", "train", "evaluate", "export_model",
           "predict", "serve", "convert_weights", "bench", "model_info", "__version__"]
