"""Export to ONNX, INT8 ONNX, TorchScript, ``torch.export`` (pt2), OpenVINO IR (fp32, INT8) and ExecuTorch
``.pte`` for XNNPACK (fp32, INT8), each verified in its own runtime.

One module per runtime (``onnx``, ``openvino``, ``executorch``, ``litert``, ``coreml``, ``ncnn``,
``torch_formats``); ``formats.TABLE`` is the one table of formats (one row each) that every command reads;
``verify.export_verified`` exports and checks the file against PyTorch. Every exported file carries the model card
(name, constructor kwargs, class names, preprocessing) and whether a softmax is appended, so ``predict`` and
``eval --onnx`` need nothing else.
"""
from __future__ import annotations

from .common import CALIBRATION_KEY, INT8_KEY, METADATA_KEY, WithSoftmax, describe
from .executorch import MAX_BATCH, ExecuTorchModule, delegation, export_executorch
from .formats import TABLE, Format, kind_of_name
from .onnx import OPSET, OnnxModule, export_onnx, quantize_onnx
from .openvino import (
           ACTIVATION_RANGES,
           DEFAULT_KEEP_FP32,
           DEFAULT_VALIDATION_IMAGES,
           KEEP_FP32,
           OVERFLOW_FIX,
           PRECISIONS,
           Int8Settings,
           OpenVinoModule,
           check_int8_settings,
           export_openvino,
           layer_precisions,
           quantize_openvino,
           read_int8_info,
)
from .torch_formats import TorchProgramModule, export_pt2, export_torchscript
from .verify import (
           EXPORTED_FILES,
           FORMATS,
           INT8_FORMATS,
           RUNTIMES,
           SUFFIXES,
           check_extra,
           check_pytorch_options,
           compare,
           export_verified,
           exported_kind,
           int8_source_path,
           load_exported,
           open_exported,
)

__all__ = ["TABLE", "Format", "kind_of_name", "Int8Settings", "DEFAULT_VALIDATION_IMAGES", "FORMATS", "INT8_FORMATS",
           "SUFFIXES", "RUNTIMES", "PRECISIONS", "OPSET", "METADATA_KEY",
           "CALIBRATION_KEY", "INT8_KEY", "KEEP_FP32", "DEFAULT_KEEP_FP32", "OVERFLOW_FIX", "ACTIVATION_RANGES",
           "WithSoftmax", "describe", "OnnxModule", "export_onnx", "quantize_onnx", "OpenVinoModule",
           "export_openvino", "quantize_openvino", "check_int8_settings", "layer_precisions", "read_int8_info",
           "ExecuTorchModule", "export_executorch", "delegation", "MAX_BATCH", "export_torchscript", "export_pt2",
           "TorchProgramModule", "EXPORTED_FILES", "exported_kind", "int8_source_path", "load_exported",
           "open_exported", "check_extra", "check_pytorch_options", "compare",
           "export_verified"]
