"""The tasks: what the CLI's subcommands do, as Python functions that return small result dataclasses.

``train``, ``evaluate``, ``export_model``, ``predict``, ``serve``, ``convert_weights`` and ``model_info`` take
plain values and config fields (``epochs=3``, ``data_path=...``), never parsed arguments; ``cli.py``
only parses, calls one of them and prints.
"""
from .convert import ConvertResult, convert_weights
from .evaluate import EvalResult, evaluate, write_report
from .export import ExportResult, export_model
from .info import ModelInfo, model_info
from .predict import Prediction, predict
from .serve import serve
from .train import TrainResult, train

__all__ = ["train", "TrainResult", "evaluate", "EvalResult", "write_report", "export_model", "ExportResult", "predict",
           "Prediction", "serve", "convert_weights", "ConvertResult", "model_info", "ModelInfo"]
