"""Export to ONNX, INT8 ONNX, TorchScript and ``torch.export`` (pt2), each verified in its own runtime.

One module per runtime (``onnx``, ``torch_formats``); ``verify.export_verified`` exports and checks the
file against PyTorch. Every exported file carries the model card (name, constructor kwargs, class names,
preprocessing) and whether a softmax is appended, so ``predict`` and ``eval --onnx`` need nothing else.
"""
from __future__ import annotations

from .common import CALIBRATION_KEY, METADATA_KEY, WithSoftmax, describe
from .onnx import OPSET, OnnxModule, export_onnx, quantize_onnx
from .torch_formats import export_pt2, export_torchscript
from .verify import FORMATS, SUFFIXES, compare, export_verified, load_exported

__all__ = ["FORMATS", "SUFFIXES", "OPSET", "METADATA_KEY", "CALIBRATION_KEY", "WithSoftmax", "describe",
           "OnnxModule", "export_onnx", "quantize_onnx", "export_torchscript", "export_pt2",
           "load_exported", "compare", "export_verified"]
