"""ONNX: export (torch's ``torch.export``-based exporter, opset 18), static INT8 quantisation with ONNX Runtime,
and ``OnnxModule``, an ONNX file run by ONNX Runtime where a model is expected.

Hard-swish and hard-sigmoid are native ``HardSwish``/``HardSigmoid`` nodes and BatchNorm is folded
into the convolutions.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from ..errors import UsageError
from ..files import atomic_output, temporary_path
from .common import CALIBRATION_KEY, METADATA_KEY, WithSoftmax, describe

OPSET = 18


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor, softmax: bool = False) -> Path:
    """ONNX with a dynamic batch dimension (input ``input`` (N, C, H, W), output ``logits`` or ``probs``)."""
    import onnx

    net = WithSoftmax(model) if softmax else model
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(net.eval(), (example,), dynamo=True, opset_version=OPSET, input_names=["input"],
                                output_names=["probs" if softmax else "logits"], dynamic_shapes=({0: batch},),
                                verbose=False)
    with atomic_output(path) as tmp:
        program.save(str(tmp))
        proto = onnx.load(str(tmp))
        _strip_export_metadata(proto)
        _global_average_pool(proto)
        _drop_unused_initializers(proto)
        _add_metadata(proto, METADATA_KEY, describe(model, softmax))
        proto.producer_name = "mobilenetv3"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


def _add_metadata(proto, key: str, value: dict) -> None:
    """One ``metadata_props`` entry: ``key`` -> ``value`` as JSON."""
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, json.dumps(value)


def _strip_export_metadata(proto) -> None:
    """torch's exporter records Python-side node names on every value; they are noise in a shipped file."""
    for collection in (proto.graph.input, proto.graph.output, proto.graph.value_info, proto.graph.initializer,
                       proto.graph.node):
        for item in collection:
            del item.metadata_props[:]


def _global_average_pool(proto) -> int:
    """Rewrite ``ReduceMean(x, axes=[2, 3], keepdims=1)`` on 4-D tensors as ``GlobalAveragePool(x)``.

    The exporter writes pooling as ReduceMean; ONNX Runtime's blocked-layout (NCHWc) convolutions have a
    native GlobalAveragePool but must convert layouts around a ReduceMean, which costs about 5% at batch 1
    with eight squeeze-excite blocks. Same function, so the export's verification still applies.
    """
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    constants.update({node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in proto.graph.node
                      if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"})
    rewritten = 0
    for node in proto.graph.node:
        if node.op_type != "ReduceMean" or len(node.input) != 2 or node.input[1] not in constants:
            continue
        axes = sorted(int(a) for a in constants[node.input[1]].ravel())
        keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        if axes in ([2, 3], [-2, -1]) and keepdims == 1:
            node.op_type = "GlobalAveragePool"
            del node.input[1]
            del node.attribute[:]
            rewritten += 1
    return rewritten


def _drop_unused_initializers(proto) -> int:
    """Remove the initializers no node reads (the ReduceMean axes that ``_global_average_pool`` leaves behind):
    ONNX Runtime warns about each one ("Removing initializer 'val_28'. It is not used by any node") every time
    the file is loaded, in the user's application too. Our graphs have no subgraphs, so the main graph's node
    inputs are every reader. Returns how many were removed."""
    read = {name for node in proto.graph.node for name in node.input} | {out.name for out in proto.graph.output}
    unused = [init for init in proto.graph.initializer if init.name not in read]
    for init in unused:
        proto.graph.initializer.remove(init)
    return len(unused)


def quantize_onnx(fp32_path: Path, path: Path, calibration: Iterable[torch.Tensor],
                  calibration_info: Optional[dict] = None) -> Path:
    """Static INT8 quantisation with ONNX Runtime: QDQ format, per-channel weights, calibrated on ``calibration``.

    The file keeps the fp32 file's metadata and records ``calibration_info`` (what the images were) under
    ``CALIBRATION_KEY``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch.numpy()}

    prepared = temporary_path(path, "prepared.")
    try:
        with atomic_output(path) as tmp, _runtime_errors_only():
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            proto = onnx.load(str(tmp))
            source = onnx.load(str(fp32_path), load_external_data=False)
            del proto.metadata_props[:]
            proto.metadata_props.extend(source.metadata_props)
            if calibration_info is not None:
                _add_metadata(proto, CALIBRATION_KEY, calibration_info)
            onnx.save(proto, str(tmp))
    finally:
        prepared.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def _runtime_errors_only():
    """ONNX Runtime's default logger at ERROR while the quantiser runs: the sessions it opens itself take no
    options from us, and their graph notes ("Removing initializer 'val_28'. It is not used by any node", the
    exporter's spare constants) reach the user's terminal as coloured warnings. Errors still print (and raise);
    afterwards the logger is back at WARNING, ONNX Runtime's default (it has no getter to restore from)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


class OnnxModule(nn.Module):
    """An ONNX file run by ONNX Runtime, usable where a model is expected (``engine.evaluate``, predict).
    ``precision``: ``int8`` for a quantised file (QDQ nodes), else ``fp32``."""

    runtime = "onnxruntime"

    def __init__(self, path, threads: Optional[int] = None, spinning: bool = True):
        """``spinning=False`` stops ONNX Runtime's threads busy-waiting after each run (for a process that
        also runs other work on the same cores, such as a benchmark timing several runtimes in turn)."""
        super().__init__()
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its graph optimiser's notes are not the user's business
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise UsageError(f"{path}: not a loadable ONNX model ({' '.join(str(err).split())[:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        info = json.loads(meta) if meta else {}
        shape = self.session.get_inputs()[0].shape
        self.input_name = self.session.get_inputs()[0].name
        self.in_chans = shape[1] if isinstance(shape[1], int) else 3
        self.num_classes = self.session.get_outputs()[0].shape[1]
        self.classes, self.preprocessing = info.get("classes"), info.get("preprocessing")
        self.model_name, self.model_kwargs = info.get("model_name", path.stem), info.get("model_kwargs", {})
        self.softmax = bool(info.get("softmax", False))
        self.dataset = info.get("dataset")  # the data it was trained on (None: not recorded)
        self.precision = "int8" if _quantized(path) else "fp32"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.session.run(None, {self.input_name: x.detach().float().contiguous().cpu().numpy()})[0]
        return torch.from_numpy(output)


def _quantized(path: Path) -> bool:
    """Whether the ONNX file holds quantised (QDQ or integer) operators."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul")
               for node in graph.node)
