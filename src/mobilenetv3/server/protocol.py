"""The Open Inference Protocol (KServe v2) as Triton's clients speak it: requests read and checked, the model's
input prepared, outputs encoded, per-model statistics. Shared by the HTTP app (``app.py``) and the gRPC service
(``grpc_service.py``); it knows neither Starlette nor gRPC.

A served model has one input and one output:

- ``input``: FP32 or FP16 ``[N, C, crop, crop]``, already normalised; or UINT8 ``[N, H, W, C]`` raw pixels (C 1 or
  3, rows of pixels as images decode: NHWC) of any size, which the server resizes, crops and normalises by the
  model's own preprocessing: the same steps as ``/predict`` and ``mobilenetv3 predict`` on the same pixels.
- ``probabilities``: FP32 ``[N, classes]``; with ``"classification": k`` on the requested output (the
  classification extension), BYTES ``[N, k]`` strings ``"score:index:label"``, highest first, as Triton writes them.

Extensions (Triton's names): ``binary_tensor_data`` (inputs with a ``binary_data_size`` parameter and outputs as
binary after the JSON, ``Inference-Header-Content-Length`` giving the JSON's length), ``classification`` and
``statistics``. Every size is a Python int, so a shape such as ``[2**60, 1, 28, 28]`` is refused with 400 rather
than wrapping around; every refusal is a ``BadRequest`` with one line naming the problem.
"""
from __future__ import annotations

import json
import math
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from ..data.transforms import image_transform, normalize_batch
from ..engine import top_classes
from .runtime import ServedModel
from .uploads import MAX_PIXELS, BadRequest

INPUT, OUTPUT = "input", "probabilities"
EXTENSIONS = ["binary_tensor_data", "classification", "statistics"]
HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_DATATYPES = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2"), "UINT8": np.dtype("u1")}  # little-endian
MAX_SHOWN = 80  # characters of a client's value quoted in an error


@dataclass
class InputTensor:
    """One input as sent: its values either as ``data`` (JSON's flat or nested list, gRPC's typed contents) or
    ``raw`` little-endian bytes (the binary extension, gRPC's ``raw_input_contents``)."""

    name: str
    datatype: str
    shape: Any  # checked against the model in ``prepare_input``
    data: Any = None
    raw: Optional[bytes] = None


@dataclass
class RequestedOutput:
    name: str
    binary: Optional[bool] = None  # None: as the request's ``binary_data_output`` says
    classification: int = 0  # top-k strings instead of the tensor


@dataclass
class InferRequest:
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty: every output
    id: Union[str, int, float, None] = None  # echoed in the answer as it came
    binary_output: bool = False


@dataclass
class OutputTensor:
    """One output to send: FP32 values, or BYTES (an object array of ``bytes``)."""

    name: str
    datatype: str
    values: np.ndarray
    binary: bool = False

    @property
    def shape(self) -> list[int]:
        return list(self.values.shape)

    def raw(self) -> bytes:
        """The binary extension's layout: little-endian, row-major; BYTES as a 4-byte length before each element."""
        if self.datatype == "BYTES":
            return b"".join(struct.pack("<I", len(item)) + item for item in self.values.flat)
        return self.values.astype("<f4").tobytes()

    def data(self) -> list:
        """The values as JSON's flat list (row-major)."""
        if self.datatype == "BYTES":
            return [item.decode() for item in self.values.flat]
        return self.values.flatten().tolist()


# ------------------------------------------------------------------------------------------- reading requests
def read_http_request(body: bytes, header_length: Optional[str] = None) -> InferRequest:
    """An ``/infer`` body -> its request. With ``header_length`` (the ``Inference-Header-Content-Length`` header of
    the binary tensor data extension) the JSON is the body's first that many bytes, and each input with a
    ``binary_data_size`` parameter takes that many bytes of the rest, in input order."""
    json_length = len(body) if header_length is None else _header_length(header_length, len(body))
    document = _json_object(body[:json_length])
    inputs, sizes = _json_inputs(document.get("inputs"))
    _attach_binary(inputs, sizes, body[json_length:], header_length is not None)
    parameters = checked_parameters(document.get("parameters"), "the request's")
    return InferRequest(inputs, _json_outputs(document.get("outputs")), _request_id(document.get("id")),
                        bool_parameter(parameters, "binary_data_output", "the request's") or False)


def inflated(body: bytes, encoding: Optional[str], limit: int) -> bytes:
    """A body sent with ``Content-Encoding`` gzip or deflate (zlib's format: tritonclient's
    ``request_compression_algorithm``) inflated, refused with 413 once it passes ``limit`` bytes: a small body
    that inflates to gigabytes is not inflated further."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(415, f"Content-Encoding {encoding[:MAX_SHOWN]!r} is not supported: send gzip, deflate or none")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise BadRequest(400, f"the body is not valid {encoding} data") from None
    if len(data) > limit:
        raise BadRequest(413, f"the body inflates to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise BadRequest(400, f"the body is truncated {encoding} data")
    return data


def _header_length(value: str, body_length: int) -> int:
    if not value.strip().isdigit():
        raise BadRequest(400, f"{HEADER_LENGTH} must be a whole number of bytes, not {value[:MAX_SHOWN]!r}")
    length = int(value)
    if length == 0:
        raise BadRequest(400, f"{HEADER_LENGTH}: 0 (a body of tensor bytes alone) is not supported: send the JSON "
                              "inference header before the binary data")
    if length > body_length:
        raise BadRequest(400, f"{HEADER_LENGTH} is {length} bytes but the body holds {body_length}")
    return length


def _json_object(text: bytes) -> dict:
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadRequest(400, "the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise BadRequest(400, f"the request must be a JSON object, not {_json_type(document)}")
    return document


def _request_id(value) -> Union[str, int, float, None]:
    if value is None or isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise BadRequest(400, f"\"id\" must be a string or a number, not {_json_type(value)}")


def _json_inputs(inputs) -> tuple[list[InputTensor], list[Optional[int]]]:
    """The inputs, and the ``binary_data_size`` of each (``None``: its values are in ``data``)."""
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(400, "the request needs \"inputs\": a list holding one tensor")
    tensors, sizes = [], []
    for index, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise BadRequest(400, f"inputs[{index}] must be an object, not {_json_type(item)}")
        name, datatype = item.get("name"), item.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise BadRequest(400, f"inputs[{index}] needs a \"name\" and a \"datatype\", both strings")
        where = f"input {name!r}"
        size = int_parameter(checked_parameters(item.get("parameters"), where), "binary_data_size", where, least=0)
        if size is None and "data" not in item:
            raise BadRequest(400, f"{where} has no \"data\" (nor a binary_data_size parameter)")
        if size is not None and "data" in item:
            raise BadRequest(400, f"{where} has both \"data\" and a binary_data_size parameter: send one")
        tensors.append(InputTensor(name, datatype, item.get("shape"), item.get("data")))
        sizes.append(size)
    return tensors, sizes


def _attach_binary(inputs: list[InputTensor], sizes: list[Optional[int]], binary: bytes, has_header: bool) -> None:
    """Give each input with a ``binary_data_size`` its bytes, in input order."""
    total = sum(size for size in sizes if size is not None)
    if total and not has_header:
        raise BadRequest(400, f"binary_data_size needs the {HEADER_LENGTH} header (the length of the JSON part)")
    if total != len(binary):
        raise BadRequest(400, f"the body holds {len(binary)} bytes after the JSON; the inputs' binary_data_size "
                              f"parameters add up to {total}")
    offset = 0
    for tensor, size in zip(inputs, sizes):
        if size is not None:
            tensor.raw, offset = binary[offset:offset + size], offset + size


def _json_outputs(outputs) -> list[RequestedOutput]:
    if outputs is None:
        return []
    if not isinstance(outputs, list):
        raise BadRequest(400, f"\"outputs\" must be a list, not {_json_type(outputs)}")
    requested = []
    for index, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(400, f"outputs[{index}] must be an object with a \"name\" (a string)")
        requested.append(requested_output(item["name"], checked_parameters(item.get("parameters"),
                                                                           f"output {item['name']!r}")))
    return requested


def requested_output(name: str, parameters: dict) -> RequestedOutput:
    """A requested output from its name and parameters (``binary_data``, ``classification``)."""
    where = f"output {name!r}"
    return RequestedOutput(name, bool_parameter(parameters, "binary_data", where),
                           int_parameter(parameters, "classification", where, least=0) or 0)  # 0: none


def checked_parameters(parameters, where: str) -> dict:
    """A ``parameters`` object: names to strings, numbers or booleans (the protocol's ``$parameter``)."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(400, f"{where} \"parameters\" must be an object, not {_json_type(parameters)}")
    for key, value in parameters.items():
        if not isinstance(value, (str, int, float, bool)):
            raise BadRequest(400, f"{where} parameter {key!r} must be a string, number or boolean, not "
                                  f"{_json_type(value)}")
    return parameters


def bool_parameter(parameters: dict, key: str, where: str) -> Optional[bool]:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(400, f"{where} parameter {key!r} must be true or false, not {_shown(value)}")
    return value


def int_parameter(parameters: dict, key: str, where: str, least: int) -> Optional[int]:
    value = parameters.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
        raise BadRequest(400, f"{where} parameter {key!r} must be a whole number of at least {least}, not "
                              f"{_shown(value)}")
    return value


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _shown(value) -> str:
    return repr(value)[:MAX_SHOWN]


# ------------------------------------------------------------------------------------------ the model's input
def prepare_input(request: InferRequest, model: ServedModel, max_pixels: int = MAX_PIXELS,
                  max_request_pixels: Optional[int] = None, max_images: Optional[int] = None) -> torch.Tensor:
    """The request's input as the model's normalised float32 (N, C, crop, crop) batch, after checking that the
    request fits the model (its one input, the outputs it asks for) and the limits: ``max_pixels`` per UINT8
    image, ``max_request_pixels`` over all of them, ``max_images`` per request (413 over any, before an image is
    resized). Costly for UINT8 (resizing): run it in a decoding thread."""
    check_outputs(request.outputs)
    tensor = _the_input(request.inputs)
    if tensor.datatype not in INPUT_DATATYPES:
        raise BadRequest(400, f"input datatype must be one of {', '.join(INPUT_DATATYPES)}, not "
                              f"{_shown(tensor.datatype)}")
    shape = _checked_shape(tensor, model.input_shape, max_pixels)
    values = _values(tensor, shape)  # 400 first when the data does not fit the shape (a huge N, for one)
    _check_limits(tensor.datatype, shape, max_request_pixels, max_images)
    if tensor.datatype == "UINT8":
        return pixels_to_input(values, model)
    return torch.from_numpy(values.astype(np.float32))


def _the_input(inputs: list[InputTensor]) -> InputTensor:
    unknown = [tensor.name for tensor in inputs if tensor.name != INPUT]
    if unknown:
        raise BadRequest(400, f"unknown input {unknown[0][:MAX_SHOWN]!r}: this model's one input is {INPUT!r}")
    if len(inputs) != 1:
        raise BadRequest(400, f"input {INPUT!r} is given {len(inputs)} times")
    return inputs[0]


def _checked_shape(tensor: InputTensor, model_shape: tuple[int, int, int], max_pixels: int) -> tuple[int, ...]:
    """The input's shape, checked: Python ints throughout, so no product of its dimensions can overflow."""
    shape = tensor.shape
    if not (isinstance(shape, (list, tuple)) and
            all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise BadRequest(400, f"input shape must be a list of whole numbers, not {_shown(shape)}")
    c, h, w = model_shape
    if tensor.datatype != "UINT8":
        if len(shape) != 4 or shape[0] < 1 or list(shape[1:]) != [c, h, w]:
            raise BadRequest(400, f"input shape must be [N, {c}, {h}, {w}] for {tensor.datatype}, not {list(shape)}")
        return tuple(shape)
    if len(shape) != 4 or min(shape) < 1 or shape[3] not in (1, 3):
        raise BadRequest(400, f"a UINT8 input is raw pixels [N, H, W, C] with C 1 or 3, not {list(shape)}")
    if shape[1] * shape[2] > max_pixels:
        raise BadRequest(413, f"{shape[2]}x{shape[1]} images are {shape[1] * shape[2] / 1e6:.0f} megapixels, more "
                              f"than the limit of {max_pixels / 1e6:g} megapixels")
    return tuple(shape)


def _check_limits(datatype: str, shape: tuple[int, ...], max_request_pixels: Optional[int],
                  max_images: Optional[int]) -> None:
    if max_images is not None and shape[0] > max_images:
        raise BadRequest(413, f"{shape[0]} images in one request, more than the limit of {max_images}")
    pixels = shape[0] * shape[1] * shape[2]
    if datatype == "UINT8" and max_request_pixels is not None and pixels > max_request_pixels:
        raise BadRequest(413, f"the {shape[0]} images are {pixels / 1e6:.1f} megapixels, more than the limit of "
                              f"{max_request_pixels / 1e6:g} megapixels per request")


def _values(tensor: InputTensor, shape: tuple[int, ...]) -> np.ndarray:
    """The input's values as a ``shape`` array of its datatype."""
    dtype = INPUT_DATATYPES[tensor.datatype]
    count = math.prod(shape)  # a Python int: never wraps, however large the client's dimensions
    if tensor.raw is not None:
        if len(tensor.raw) != count * dtype.itemsize:
            raise BadRequest(400, f"input holds {len(tensor.raw)} bytes of binary data; shape {list(shape)} of "
                                  f"{tensor.datatype} needs {count * dtype.itemsize}")
        values = np.frombuffer(tensor.raw, dtype)
    else:
        values = _listed_values(tensor.data, tensor.datatype)
        if values.size != count:
            raise BadRequest(400, f"input data holds {values.size} values; shape {list(shape)} needs {count}")
    if dtype.kind == "f" and not np.isfinite(values).all():
        raise BadRequest(400, "input data holds NaN or infinite values" +
                              (" (or values beyond FP16's range)" if tensor.datatype == "FP16" else ""))
    return values.reshape(shape)


def _listed_values(data, datatype: str) -> np.ndarray:
    """JSON's (or gRPC's typed) values -> a flat array of ``datatype``; numbers only, whole ones 0-255 for UINT8."""
    try:
        values = np.asarray(data)
    except (TypeError, ValueError, RecursionError):  # ragged nesting
        values = None
    if values is None or values.dtype.kind not in "iuf" or values.ndim == 0:
        raise BadRequest(400, "input data must be numbers (a flat or nested list)")
    if datatype == "UINT8":
        if values.dtype.kind == "f" or (values.size and (values.min() < 0 or values.max() > 255)):
            raise BadRequest(400, "UINT8 input data must be whole numbers from 0 to 255")
        return values.astype(np.uint8).reshape(-1)
    with np.errstate(over="ignore"):  # FP16 overflow becomes infinity, refused as such
        return values.astype(INPUT_DATATYPES[datatype]).reshape(-1)


def pixels_to_input(pixels: np.ndarray, model: ServedModel) -> torch.Tensor:
    """uint8 (N, H, W, C) pixels -> the normalised (N, C, crop, crop) batch: each image through the eval protocol's
    resize and center crop (the decoder's PIL path: ``/predict`` and ``mobilenetv3 predict`` give the same
    numbers for the same pixels), converted to the model's channels as the decoder converts, then normalised."""
    from PIL import Image

    preprocessing = model.preprocessing
    transform = image_transform(None, preprocessing, train=False)
    mode = "RGB" if preprocessing.in_chans == 3 else "L"
    images = []
    for image in pixels:
        picture = Image.fromarray(np.ascontiguousarray(image[:, :, 0] if image.shape[2] == 1 else image))
        images.append(transform(picture if picture.mode == mode else picture.convert(mode)))
    return normalize_batch(torch.stack(images), preprocessing)


# ----------------------------------------------------------------------------------------------- the outputs
def check_outputs(outputs: list[RequestedOutput]) -> None:
    """Refuse outputs the model does not have (the protocol: requested outputs are returned or refused)."""
    names = [output.name for output in outputs]
    unknown = [name for name in names if name != OUTPUT]
    if unknown:
        raise BadRequest(400, f"unknown output {unknown[0][:MAX_SHOWN]!r}: this model's output is {OUTPUT!r}")
    if len(names) > 1:
        raise BadRequest(400, f"output {OUTPUT!r} is requested {len(names)} times")


def model_outputs(request: InferRequest, probabilities: torch.Tensor, classes: list[str]) -> list[OutputTensor]:
    """The outputs the request asked for (all, if it named none), from the model's (N, classes) probabilities."""
    outputs = []
    for output in request.outputs or [RequestedOutput(OUTPUT)]:
        binary = request.binary_output if output.binary is None else output.binary
        if output.classification:
            values = classification(probabilities, output.classification, classes)
            outputs.append(OutputTensor(output.name, "BYTES", values, binary))
        else:
            outputs.append(OutputTensor(output.name, "FP32", probabilities.float().numpy(), binary))
    return outputs


def classification(probabilities: torch.Tensor, k: int, classes: list[str]) -> np.ndarray:
    """(N, min(k, classes)) strings ``"score:index:label"``, highest first, equal scores in class order; the score
    as Triton writes it (C++ ``std::to_string``: six decimals)."""
    values, indices = top_classes(probabilities, min(k, len(classes)))
    rows = [[f"{value:f}:{index}:{classes[index]}".encode() for value, index in zip(row_values, row_indices)]
            for row_values, row_indices in zip(values.tolist(), indices.tolist())]
    return np.array(rows, dtype=object).reshape(values.shape)


def http_response(model_name: str, version: str, outputs: list[OutputTensor],
                  request_id: Union[str, int, float, None]) -> tuple[bytes, dict[str, str]]:
    """The ``/infer`` answer's body and headers: JSON, followed by the binary outputs (with the JSON's length in
    ``Inference-Header-Content-Length``) when any output is binary."""
    answer: dict = dict(model_name=model_name, model_version=version, outputs=[])
    if request_id is not None:
        answer["id"] = request_id
    parts = []
    for output in outputs:
        described = dict(name=output.name, datatype=output.datatype, shape=output.shape)
        if output.binary:
            parts.append(output.raw())
            described["parameters"] = {"binary_data_size": len(parts[-1])}
        else:
            described["data"] = output.data()
        answer["outputs"].append(described)
    header = json.dumps(answer).encode()
    if not parts:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(parts), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def model_metadata(model: ServedModel, version: str) -> dict:
    """The model's metadata (its input advertised as FP32; FP16 and UINT8 pixels are said in ``parameters``)."""
    c, h, w = model.input_shape
    return dict(name=model.name, versions=[version], platform=f"mobilenetv3_{model.runtime}",
                inputs=[dict(name=INPUT, datatype="FP32", shape=[-1, c, h, w])],
                outputs=[dict(name=OUTPUT, datatype="FP32", shape=[-1, len(model.classes)])],
                parameters=dict(classes=model.classes, preprocessing=model.preprocessing.to_dict(),
                                input_datatypes=dict(FP32=[-1, c, h, w], FP16=[-1, c, h, w],
                                                     UINT8=[-1, -1, -1, model.preprocessing.in_chans])))


# ---------------------------------------------------------------------------------------------- statistics
def served_names(models) -> list[str]:
    """The names of the models a ``repository.ModelRepository`` serves now (READY in its index)."""
    return sorted({row["name"] for row in models.index(ready_only=True)})


class Duration:
    """A count and the nanoseconds they took (Triton's ``$duration_stat``)."""

    def __init__(self):
        self.count, self.ns = 0, 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9) * count

    def to_dict(self) -> dict:
        return dict(count=self.count, ns=self.ns)


class ModelStatistics:
    """One model version's statistics as Triton keeps them (the statistics extension), fed by its batcher from
    its one thread: ``observe_queue`` for each request of a batch as its model run begins, ``observe_batch``
    after the run, and ``counted(run)``, the model's run function that counts the batch's requests as failed when
    it raises. Every request the batcher runs counts (``/predict``'s and v2's over HTTP and gRPC alike).
    ``success`` is a request's time from entering the batcher's queue to its answer, ``queue`` its wait for a
    model run, ``compute_infer`` the time of that run; ``inference_count`` / ``execution_count`` is the mean batch
    size."""

    DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
                 "cache_miss")

    def __init__(self, name: str, version: str):
        self.name, self.version = name, version
        self.inference_count = self.execution_count = self.last_inference = 0
        self.durations = {name: Duration() for name in self.DURATIONS}
        self.batches: dict[int, Duration] = {}  # batch size -> its model runs
        self._running: list[float] = []  # the queue times of the batch being run
        self._lock = threading.Lock()  # the batcher's thread writes, the event loop reads

    def observe_queue(self, seconds: float) -> None:
        with self._lock:
            self.durations["queue"].add(seconds)
            self._running.append(seconds)

    def observe_batch(self, images: int, seconds: float) -> None:
        with self._lock:
            self.inference_count += images
            self.execution_count += 1
            self.last_inference = int(time.time() * 1000)
            self.batches.setdefault(images, Duration()).add(seconds)
            self.durations["compute_infer"].add(seconds, count=len(self._running))
            for queued in self._running:
                self.durations["success"].add(queued + seconds)
            self._running = []

    def counted(self, run: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """``run`` (the model's), counting the requests of a batch it fails on as failed."""
        def counted_run(images: torch.Tensor) -> torch.Tensor:
            try:
                return run(images)
            except Exception:
                with self._lock:
                    for queued in self._running:
                        self.durations["fail"].add(queued)
                    self._running = []
                raise

        return counted_run

    def to_dict(self) -> dict:
        """Triton's ``$model_stat`` JSON object."""
        with self._lock:
            return dict(name=self.name, version=self.version, last_inference=self.last_inference,
                        inference_count=self.inference_count, execution_count=self.execution_count,
                        inference_stats={name: d.to_dict() for name, d in self.durations.items()},
                        response_stats={}, memory_usage=[],
                        batch_stats=[dict(batch_size=size, compute_input=dict(count=d.count, ns=0),
                                          compute_infer=d.to_dict(), compute_output=dict(count=d.count, ns=0))
                                     for size, d in sorted(self.batches.items())])
