"""LiteRT (TensorFlow Lite): a ``.tflite`` converted with ``litert-torch`` (fp32, or INT8 by its PT2E quantizer
calibrated on real images), and ``LiteRtModule``, the file run by the ``ai-edge-litert`` interpreter (XNNPACK on
the CPU) where a model is expected.

Hard-swish is LiteRT's own ``HARD_SWISH`` operator. LiteRT has no hard-sigmoid operator: the converter writes
``relu6(x + 3) / 6`` as the squeeze-excite's second convolution with the ``+ 3`` in its bias and ``relu6`` fused
into it, then one ``MUL`` by 1/6 (fp32; INT8 keeps the ``ADD`` of 3). The file is traced at batch 1 and takes
(1, C, H, W) (``nhwc=True``: (1, H, W, C), the layout of Android camera frames); the interpreter resizes it to
any batch. The model card (``describe``) is the flatbuffer's metadata entry ``METADATA_KEY``, INT8's recipe
``INT8_KEY``'s and its calibration images ``CALIBRATION_KEY``'s, as ONNX has them in ``metadata_props``.

LiteRT is an extra (``pip install 'mobilenetv3[litert]'``): without it every entry point here is one line.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..files import atomic_output
from .common import CALIBRATION_KEY, INT8_KEY, METADATA_KEY, WithSoftmax, describe

EXTRA_MISSING = "LiteRT needs the litert extra: pip install 'mobilenetv3[litert]'"
SUFFIX = ".tflite"
LAYOUT_KEY = "mobilenetv3.layout"  # "NCHW" or "NHWC": the input's layout
INT8_RECIPE = dict(quantizer="litert_torch PT2EQuantizer", weights="int8, symmetric, per output channel",
                   activations="int8, per tensor, static (calibrated)", interface="int8 input and output")
_IDENTIFIER = b"TFL3"  # a .tflite's FlatBuffer file identifier (bytes 4-8)


def import_litert():
    """``ai_edge_litert``'s interpreter module, or the one line that says which extra installs it."""
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        raise UsageError(EXTRA_MISSING) from None
    return interpreter


def import_litert_converter():
    """``litert_torch`` (the converter, seconds to import), or the one line that says which extra installs it."""
    import_litert()
    try:
        with _quiet():
            import litert_torch
    except ImportError:
        raise UsageError(EXTRA_MISSING) from None
    return litert_torch


@contextlib.contextmanager
def _quiet():
    """The converter's chatter kept off the terminal: its stage lines and absl's INFO lines (on the process's
    stderr, written by C++ too), torch's pytree deprecation note (torchao) and the root logger as it was (absl
    adds a handler to it)."""
    root, pytree_log = logging.getLogger(), logging.getLogger("torch.utils._pytree")
    handlers, level, pytree_level = list(root.handlers), root.level, pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with _native_stderr_held(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pytree_log.setLevel(pytree_level)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


@contextlib.contextmanager
def _native_stderr_held():
    """File descriptor 2 sent to /dev/null: what C++ writes there ("INFO: Created TensorFlow Lite XNNPACK
    delegate for CPU." on every interpreter) stays off the terminal; failures still reach Python as exceptions."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_tflite_path(path: Path) -> None:
    if Path(path).suffix != SUFFIX:
        raise UsageError(f"a LiteRT model is a .tflite file: {path} does not end in .tflite")


# ------------------------------------------------------------------------------------------ export
def export_litert(model: nn.Module, path: Path, example: torch.Tensor, softmax: bool = False, nhwc: bool = False,
                  calibration: Optional[Iterable[torch.Tensor]] = None,
                  calibration_info: Optional[dict] = None) -> Path:
    """A ``.tflite`` traced at one image of ``example``'s size (input (1, C, H, W), ``nhwc``: (1, H, W, C); output
    logits, or probabilities with ``softmax``). fp32, or with ``calibration`` (batches of images) INT8: PT2E
    quantisation with litert-torch's quantizer (symmetric int8, weights per output channel, activations per
    tensor calibrated on every image), int8 input and output, ``calibration_info`` recorded in the file."""
    litert_torch = import_litert_converter()
    check_tflite_path(path)
    net = (WithSoftmax(model) if softmax else model).eval()
    sample = example[:1]
    metadata = {METADATA_KEY: describe(model, softmax), LAYOUT_KEY: "NHWC" if nhwc else "NCHW"}
    with _quiet():
        if calibration is None:
            edge = litert_torch.convert(_layout(litert_torch, net, nhwc), (_arrange(sample, nhwc),))
        else:
            edge = _quantized(litert_torch, net, sample, calibration, nhwc)
            metadata[INT8_KEY] = dict(INT8_RECIPE, tool=f"litert-torch {litert_torch.__version__} (PT2E)")
            if calibration_info is not None:
                metadata[CALIBRATION_KEY] = calibration_info
        flatbuffer = edge.model_content()
    with atomic_output(path) as tmp:
        tmp.write_bytes(_with_metadata(flatbuffer, metadata))
    return path


def _layout(litert_torch, net: nn.Module, nhwc: bool) -> nn.Module:
    return litert_torch.to_channel_last_io(net, args=[0]) if nhwc else net


def _arrange(x: torch.Tensor, nhwc: bool) -> torch.Tensor:
    """(N, C, H, W) as the file takes it."""
    return x.permute(0, 2, 3, 1).contiguous() if nhwc else x


def _quantized(litert_torch, net: nn.Module, sample: torch.Tensor, calibration: Iterable[torch.Tensor],
               nhwc: bool):
    """The converted INT8 model: ``net`` exported at batch 1, observed on every calibration image (one at a
    time: the export is specialised to batch 1), converted to quantise/dequantise pairs and lowered."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    module = _layout(litert_torch, net, nhwc)
    prepared = prepare_pt2e(torch.export.export(module, (_arrange(sample, nhwc),)).module(), quantizer)
    seen = 0
    with torch.no_grad():
        for batch in calibration:
            for image in _arrange(batch, nhwc):
                prepared(image[None])
                seen += 1
    if not seen:
        raise UsageError("INT8 needs at least one calibration image")
    quantized = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    return litert_torch.convert(quantized, (_arrange(sample, nhwc),),
                                quant_config=QuantConfig(pt2e_quantizer=quantizer))


def _with_metadata(flatbuffer: bytes, entries: dict) -> bytes:
    """The flatbuffer with each of ``entries`` (key -> JSON value) as a metadata entry: a buffer of its own
    named by the key, as the TFLite schema has metadata."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    model.metadata = list(model.metadata or [])
    for key, value in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = key, len(model.buffers) - 1
        model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# ------------------------------------------------------------------------------------------ reading
def _root(path: Path):
    """The flatbuffer's root ``Model`` (read-only), after its file identifier is checked: the interpreter is not
    given bytes that are no LiteRT model."""
    from ai_edge_litert import schema_py_generated as schema

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != _IDENTIFIER:
        raise UsageError(f"{path}: not a LiteRT model (no {_IDENTIFIER.decode()} file identifier at byte 4)")
    return schema.Model.GetRootAs(data, 0)


def read_metadata(path: Path) -> dict:
    """``{key: value}`` of a ``.tflite``'s metadata entries written by ``export_litert`` (JSON values)."""
    import_litert()
    root = _root(Path(path))
    entries = {}
    try:
        for i in range(root.MetadataLength()):
            entry = root.Metadata(i)
            name = entry.Name().decode()
            if name.startswith(METADATA_KEY):
                entries[name] = json.loads(root.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    except (IndexError, ValueError, AttributeError, TypeError) as err:
        raise UsageError(f"{path}: a damaged LiteRT model (its metadata cannot be read: {type(err).__name__})") \
            from None
    return entries


def operator_types(path: Path) -> dict:
    """``{"CONV_2D": 41, "HARD_SWISH": 19, ...}``: the operators of a ``.tflite``'s main graph by type, as
    written (before the interpreter hands them to XNNPACK)."""
    from ai_edge_litert.schema_py_generated import BuiltinOperator

    import_litert()
    root = _root(Path(path))
    names = {value: name for name, value in vars(BuiltinOperator).items() if not name.startswith("_")}
    graph, counts = root.Subgraphs(0), {}
    for i in range(graph.OperatorsLength()):
        code = root.OperatorCodes(graph.Operators(i).OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        counts[name] = counts.get(name, 0) + 1
    return counts


def check_hard_activations(path: Path, model: nn.Module) -> dict:
    """``operator_types`` of the written file, checked: one ``HARD_SWISH`` per hard-swish of ``model`` (none
    written as ``x * relu6(x + 3) / 6``: no ``RELU6``, no ``LOGISTIC``) and, per hard-sigmoid, one ``MUL`` by 1/6
    beside its gate's ``MUL`` (the ``relu6`` fused into the convolution before it). A ``RunError`` says what
    differs."""
    from ..errors import RunError

    ops = operator_types(path)
    hard_swish = sum(isinstance(m, nn.Hardswish) for m in model.modules())
    hard_sigmoid = sum(isinstance(m, nn.Hardsigmoid) for m in model.modules())
    problems = []
    if ops.get("HARD_SWISH", 0) != hard_swish:
        problems.append(f"{ops.get('HARD_SWISH', 0)} HARD_SWISH operators for {hard_swish} hard-swish layers")
    if ops.get("MUL", 0) != 2 * hard_sigmoid:
        problems.append(f"{ops.get('MUL', 0)} MUL operators for {hard_sigmoid} hard-sigmoid gates (2 each)")
    problems += [f"{ops[name]} {name} operators" for name in ("RELU6", "LOGISTIC") if name in ops]
    if problems:
        raise RunError(f"{path}: the converter decomposed the hard activations ({'; '.join(problems)})")
    return ops


# ------------------------------------------------------------------------------------------ running
class LiteRtModule(nn.Module):
    """A ``.tflite`` run by the LiteRT interpreter on the CPU (XNNPACK), usable where a model is expected
    (``engine.evaluate``, predict): it takes (N, C, H, W) float images whatever the file's layout and gives float
    outputs (an INT8 file's int8 input and output are quantised and dequantised with the file's own scales).
    ``threads``: the interpreter's threads (default: its own, one)."""

    runtime = "litert"

    def __init__(self, path, threads: Optional[int] = None):
        super().__init__()
        interpreter = import_litert()
        self.path = Path(path)
        check_tflite_path(self.path)
        meta = read_metadata(self.path)
        try:
            with _native_stderr_held():
                self.interpreter = interpreter.Interpreter(model_path=str(self.path), num_threads=threads)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise UsageError(f"{self.path}: not a loadable LiteRT model ({' '.join(str(err).split())[:200]})") \
                from None
        self.input, self.output = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        self.nhwc = meta.get(LAYOUT_KEY) == "NHWC"
        shape = list(self.input["shape"])
        self.input_shape = tuple(shape[1:])  # as the file takes one image: (C, H, W), or (H, W, C)
        self.in_chans = shape[3] if self.nhwc else shape[1]
        self.num_classes = int(self.output["shape"][-1])
        info = meta.get(METADATA_KEY, {})
        self.classes, self.preprocessing = info.get("classes"), info.get("preprocessing")
        self.model_name, self.model_kwargs = info.get("model_name", self.path.stem), info.get("model_kwargs", {})
        self.softmax = bool(info.get("softmax", False))
        self.dataset = info.get("dataset")  # the data it was trained on (None: not recorded)
        self.int8, self.calibration = meta.get(INT8_KEY), meta.get(CALIBRATION_KEY)
        self.quantized = self.input["dtype"] == np.int8 or self.int8 is not None
        self.precision = "int8" if self.quantized else "fp32"
        self._batch, self._one_by_one = 1, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        x = _arrange(x.detach().float().cpu(), self.nhwc).numpy()
        if tuple(x.shape[1:]) != self.input_shape:
            raise UsageError(f"{self.path} takes images of shape {self.input_shape} "
                             f"({'NHWC' if self.nhwc else 'NCHW'}), not {tuple(x.shape[1:])}")
        if len(x) != self._batch and not self._one_by_one and not self._resize(len(x)):
            self._one_by_one = True  # a graph XNNPACK cannot resize to another batch runs image by image
            self._resize(1)
        if self._one_by_one:
            return torch.cat([self._run(image[None]) for image in x])
        return self._run(x)

    def _run(self, x: np.ndarray) -> torch.Tensor:
        self.interpreter.set_tensor(self.input["index"], _quantize(x, self.input))
        self.interpreter.invoke()
        return torch.from_numpy(_dequantize(self.interpreter.get_tensor(self.output["index"]), self.output))

    def _resize(self, batch: int) -> bool:
        """The interpreter resized to take ``batch`` images; False where it cannot be."""
        try:
            with _native_stderr_held():
                self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.input_shape])
                self.interpreter.allocate_tensors()
        except RuntimeError:
            return False
        self._batch = batch
        return True


def _quantize(x: np.ndarray, tensor: dict) -> np.ndarray:
    """Float images as the input tensor takes them: as they are, or int8 with its scale and zero point."""
    if tensor["dtype"] == np.float32:
        return np.ascontiguousarray(x, dtype=np.float32)
    scale, zero = tensor["quantization"]
    info = np.iinfo(tensor["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(tensor["dtype"])


def _dequantize(y: np.ndarray, tensor: dict) -> np.ndarray:
    if tensor["dtype"] == np.float32:
        return y.copy()
    scale, zero = tensor["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
