"""The tasks: what the CLI's subcommands do, as Python functions that return small result dataclasses.

``train``, ``evaluate``, ``export_model``, ``predict``, ``serve``, ``convert_weights``, ``bench`` and ``model_info``
take plain values and config fields (``epochs=3``, ``data_path=...``), never parsed arguments; ``cli.py``
only parses, calls one of them and prints. One vocabulary (``tasks.common``): a model is read from ``source``, a
file written to ``output``, a folder to ``out_dir``; errors name these parameters (the CLI names its flags).
"""
from .bench import BenchResult, bench
from .convert import ConvertResult, convert_weights
from .evaluate import EvalResult, evaluate, write_report
from .export import ExportResult, export_model
from .info import ModelInfo, model_info
from .predict import Prediction, predict
from .serve import serve
from .train import TrainResult, train

__all__ = ["bench", "BenchResult", "train", "TrainResult", "evaluate", "EvalResult", "write_report", "export_model",
           "ExportResult", "predict",
           "Prediction", "serve", "convert_weights", "ConvertResult", "model_info", "ModelInfo"]
