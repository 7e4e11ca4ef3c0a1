"""MindSpore ``.ckpt`` files <-> tensors, and the seed's parameter names <-> ours. No MindSpore needed.

The file format (MindSpore 2.x ``save_checkpoint``): protocol buffers, proto2, no header::

    message Checkpoint {
      message Value { required string tag = 1; oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }
      repeated Value value = 1;
    }
    message TensorProto { repeated int64 dims = 1; required string tensor_type = 2; required bytes tensor_content = 3; }

MindSpore writes one single-value ``Checkpoint`` per parameter, back to back, so the whole file parses
as one ``Checkpoint``. ``tensor_content`` is the row-major little-endian data; a tensor over 512 MiB is
split over consecutive values with the same tag and full ``dims`` (contents concatenate). With
``crc_check=True`` the file ends in ``b"crc_num"`` + the zlib CRC-32 of all preceding bytes as a
10-byte big-endian unsigned integer (binary, not ASCII digits). MindSpore 2.x writes a scalar with
``dims`` empty; 1.x wrote ``[0]`` for scalars, which MindSpore's loader (and this one) still reads as a scalar.

Why a hand-written reader instead of the ``protobuf`` package: the schema is three tiny messages; the
``protobuf`` route would add a runtime dependency and descriptors built at import time, and its parser
accepts unknown fields and gives no say over error messages. The reader below accepts exactly what
MindSpore writes (plus packed ``dims``, which any proto2 parser must accept), checks every varint,
length and wire type against the bytes that are there, and turns anything else into one ``ValueError``
line. It never allocates more than the file holds, and every loop advances through the file.

Names: the seed keeps everything in one ``features`` SequentialCell whose activation and pooling cells
hold no tensors, so its indices skip (Small: stem conv 0, BN 1, blocks 3-13, final conv 14, BN 15,
head conv 18); the layout is read from the tags, never assumed. BatchNorm ``gamma/beta/moving_mean/
moving_variance`` are our ``weight/bias/running_mean/running_var``. The seed's head conv has no bias:
a ``.ckpt`` gives a ``head_bias=False`` model. Only weights of the seed's network go back to a ``.ckpt``
(``check_seed_network``: an RGB stem of stride 2, width 1.0, a 1280-wide head without bias, or a zero one).
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Union

import torch

from ..errors import UsageError
from ..files import write_atomic
from .common import Pairs, StateDict, fitting_model, our_layout, rename

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# MindSpore's tensor_type names (str(mindspore dtype)) and the torch dtypes they hold.
DTYPES: dict[str, torch.dtype] = {
    "Bool": torch.bool, "Int8": torch.int8, "UInt8": torch.uint8, "Int16": torch.int16, "UInt16": torch.uint16,
    "Int32": torch.int32, "UInt32": torch.uint32, "Int64": torch.int64, "UInt64": torch.uint64,
    "Float16": torch.float16, "BFloat16": torch.bfloat16, "Float32": torch.float32, "Float64": torch.float64,
}
_TYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

# The seed's model in our terms (MindSpore BN momentum 0.9 is PyTorch's 0.1; the seed has no dropout).
MINDSPORE_KWARGS = dict(bn_eps=1e-5, bn_momentum=0.1, dropout=0.0)

_CRC_MARK = b"crc_num"
_CRC_TRAILER = len(_CRC_MARK) + 10
_SLICE_BYTES = 512 * 1024 * 1024  # MindSpore splits tensors into values of at most this many bytes
_MAX_DIMS = 32
_MAX_NUMEL = 1 << 40  # no file read into memory holds more; keeps huge (even empty) shapes from reaching torch


# ---------------------------------------------------------------------------------------------------------
# The file format
# ---------------------------------------------------------------------------------------------------------

class _Malformed(ValueError):
    """Bytes that are not a well-formed checkpoint; ``pos`` is the byte offset where reading stopped."""

    def __init__(self, message: str, pos: int):
        super().__init__(message)
        self.pos = pos


class _Entry(NamedTuple):
    tag: str
    dims: tuple[int, ...]
    type_name: str
    content: memoryview


Span = tuple[int, int]  # [start, stop) byte offsets of a length-delimited field's payload


def _varint(buf: memoryview, pos: int, stop: int) -> tuple[int, int]:
    """Decode the varint at ``pos`` (at most 10 bytes, below 2**64); return it and the next offset."""
    result = 0
    for shift in range(0, 70, 7):
        if pos >= stop:
            raise _Malformed("truncated varint", pos)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >> 64:
                raise _Malformed("varint out of range", pos)
            return result, pos
    raise _Malformed("varint longer than 10 bytes", pos)


def _fields(buf: memoryview, span: Span) -> Iterator[tuple[int, int, int, Union[int, Span]]]:
    """The fields of the message in ``span`` as ``(offset, number, wire type, int or payload span)``."""
    pos, stop = span
    while pos < stop:
        start = pos
        key, pos = _varint(buf, pos, stop)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, stop)
        elif wire == 2:
            length, pos = _varint(buf, pos, stop)
            if length > stop - pos:
                raise _Malformed(f"field {number} needs {length} bytes, {stop - pos} left", pos)
            value, pos = (pos, pos + length), pos + length
        else:
            raise _Malformed(f"unexpected wire type {wire} for field {number}", start)
        yield start, number, wire, value


def _text(buf: memoryview, span: Span, what: str) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed(f"{what} is not UTF-8", span[0]) from None


def _dim(value: int, pos: int) -> int:
    if value >> 63:
        raise _Malformed("negative tensor dimension", pos)
    return value


def _parse_tensor(buf: memoryview, span: Span) -> tuple[tuple[int, ...], str, Span]:
    """``TensorProto`` -> (dims, tensor_type, content span)."""
    dims, type_name, content = [], None, None
    for pos, number, wire, value in _fields(buf, span):
        if number == 1 and wire == 0:
            dims.append(_dim(value, pos))
        elif number == 1 and wire == 2:  # packed dims: legal proto2, though MindSpore does not write it
            inner, stop = value
            while inner < stop:
                dim, inner = _varint(buf, inner, stop)
                dims.append(_dim(dim, inner))
        elif number == 2 and wire == 2 and type_name is None:
            type_name = _text(buf, value, "tensor_type")
        elif number == 3 and wire == 2 and content is None:
            content = value
        else:
            raise _Malformed(f"unexpected field {number} (wire type {wire}) in a tensor", pos)
        if len(dims) > _MAX_DIMS:
            raise _Malformed(f"tensor with more than {_MAX_DIMS} dimensions", pos)
    if type_name is None or content is None:
        raise _Malformed("tensor without tensor_type or tensor_content", span[0])
    return tuple(dims), type_name, content


def _parse_value(buf: memoryview, span: Span) -> _Entry:
    """``Checkpoint.Value`` -> one entry."""
    tag, tensor = None, None
    for pos, number, wire, value in _fields(buf, span):
        if number == 1 and wire == 2 and tag is None:
            tag = _text(buf, value, "tag")
        elif number == 2 and wire == 2 and tensor is None:
            tensor = value
        elif number == 3 and wire == 2:
            raise UsageError(f"{tag or 'a value'!r} is a MapParameter (maptensor), which this reader does not support")
        else:
            raise _Malformed(f"unexpected field {number} (wire type {wire}) in a value", pos)
    if not tag or tensor is None:
        raise _Malformed("value without a tag or a tensor", span[0])
    dims, type_name, content = _parse_tensor(buf, tensor)
    return _Entry(tag, dims, type_name, buf[content[0]:content[1]])


def _parse_checkpoint(buf: memoryview) -> Iterator[_Entry]:
    """Every value of the ``Checkpoint`` message that fills ``buf``."""
    for pos, number, wire, value in _fields(buf, (0, len(buf))):
        if number != 1 or wire != 2:
            raise _Malformed(f"unexpected field {number} (wire type {wire}) at the top level", pos)
        yield _parse_value(buf, value)


def _has_trailer(data: bytes) -> bool:
    """Whether ``data`` (a file's bytes, or just its last ones) ends in a CRC trailer."""
    return len(data) >= _CRC_TRAILER and data[-_CRC_TRAILER:-10] == _CRC_MARK


def has_crc(path: PathLike) -> bool:
    """Whether a ``.ckpt`` ends in the CRC trailer that ``save_checkpoint(..., crc_check=True)`` writes
    (only its last bytes are read; ``read_ckpt`` checks the CRC)."""
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - _CRC_TRAILER))
        return _has_trailer(file.read())


def _strip_crc(data: bytes, path: PathLike) -> bytes:
    """The file's bytes without the CRC trailer, after checking it; unchanged when there is none."""
    if not _has_trailer(data):
        return data
    body, stored = data[:-_CRC_TRAILER], int.from_bytes(data[-10:], "big")
    actual = zlib.crc32(body)
    if actual != stored:
        raise UsageError(f"{path}: CRC check failed (the file records {stored:#x}, its bytes give {actual:#x}): "
                         "the file is damaged")
    return body


def _numel(dims: tuple[int, ...]) -> Optional[int]:
    """The product of ``dims``, or ``None`` if the non-zero ones multiply past ``_MAX_NUMEL`` (stops early)."""
    count = 1
    for dim in dims:
        count *= dim or 1
        if count > _MAX_NUMEL:
            return None
    return 0 if 0 in dims else count


def _to_tensor(tag: str, dims: tuple[int, ...], type_name: str, content: bytes) -> torch.Tensor:
    """The tensor a value holds; ``ValueError`` naming the tag when type or size do not fit."""
    if type_name not in DTYPES:
        raise UsageError(f"tensor {tag!r} has tensor_type {type_name!r}; supported: {', '.join(DTYPES)}")
    dtype = DTYPES[type_name]
    itemsize = torch.empty((), dtype=dtype).element_size()
    if dims == (0,) and len(content) == itemsize:
        dims = ()  # a scalar as MindSpore 1.x wrote it
    numel = _numel(dims)
    if numel is None or numel * itemsize != len(content):
        raise UsageError(f"tensor {tag!r}: {len(content)} bytes of {type_name} do not fill shape {list(dims)}")
    if numel == 0:
        return torch.empty(dims, dtype=dtype)
    if dtype is torch.bool and max(content) > 1:
        raise UsageError(f"tensor {tag!r}: Bool bytes other than 0 and 1")
    return torch.frombuffer(bytearray(content), dtype=dtype).reshape(dims)


def _assemble(entries: list[_Entry]) -> dict[str, torch.Tensor]:
    """Join consecutive values of one tag (a split tensor) and turn each into a tensor, in file order."""
    tensors, seen = {}, set()
    for tag, group in itertools.groupby(entries, key=lambda entry: entry.tag):
        parts = list(group)
        if tag in seen:
            raise UsageError(f"tensor {tag!r} appears twice")
        seen.add(tag)
        if any((part.dims, part.type_name) != (parts[0].dims, parts[0].type_name) for part in parts):
            raise UsageError(f"the parts of split tensor {tag!r} disagree on shape or type")
        if parts[0].type_name == "str":  # strings from append_info: metadata, not tensors
            logger.warning("skipping string entry %r of the checkpoint", tag)
            continue
        content = b"".join(part.content for part in parts)
        tensors[tag] = _to_tensor(tag, parts[0].dims, parts[0].type_name, content)
    return tensors


def read_ckpt(path: PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a MindSpore ``.ckpt`` file, by tag, in file order (CRC trailer checked if present).

    Raises ``ValueError`` with one line for anything that is not a readable, unencrypted checkpoint
    (``OSError`` if the file cannot be read at all).
    """
    body = _strip_crc(Path(path).read_bytes(), path)
    if not body:
        raise UsageError(f"{path} is empty: not a MindSpore checkpoint")
    entries: list[_Entry] = []
    try:
        for entry in _parse_checkpoint(memoryview(body)):
            entries.append(entry)
        return _assemble(entries)
    except _Malformed as err:
        if entries:
            raise UsageError(f"{path} is damaged or truncated after {len(entries)} tensors: "
                             f"{err} at byte {err.pos}") from None
        raise UsageError(f"{path} is not a MindSpore checkpoint (or it is encrypted: decrypt it with MindSpore "
                         f"first): {err} at byte {err.pos}") from None
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from None


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _encode_value(tag: str, dims: tuple[int, ...], type_name: str, content: bytes) -> bytes:
    """One single-value ``Checkpoint`` message, field for field as MindSpore's protobuf writer emits it."""
    tensor = b"".join(_encode_varint(1 << 3) + _encode_varint(dim) for dim in dims)
    tensor += _bytes_field(2, type_name.encode()) + _bytes_field(3, content)
    return _bytes_field(1, _bytes_field(1, tag.encode()) + _bytes_field(2, tensor))


def _encode(tensors: Mapping[str, torch.Tensor]) -> Iterator[bytes]:
    """The messages of a checkpoint file, one per tensor (or per 512 MiB slice of a larger one)."""
    for tag, tensor in tensors.items():
        if not isinstance(tag, str) or not tag:
            raise UsageError(f"checkpoint tags must be non-empty strings, got {tag!r}")
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in _TYPE_NAMES:
            raise UsageError(f"tensor {tag!r}: cannot store {type(tensor).__name__} "
                             f"{getattr(tensor, 'dtype', '')} in a MindSpore checkpoint")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        for start in range(0, max(len(data), 1), _SLICE_BYTES):
            yield _encode_value(tag, tuple(tensor.shape), _TYPE_NAMES[tensor.dtype], data[start:start + _SLICE_BYTES])


def write_ckpt(tensors: Mapping[str, torch.Tensor], path: PathLike, crc: bool = False) -> None:
    """Write ``tensors`` as a MindSpore ``.ckpt`` (what ``mindspore.save_checkpoint`` writes), atomically.

    ``crc=True`` appends the trailer that ``save_checkpoint(..., crc_check=True)`` writes.
    """
    buffer = bytearray()
    for message in _encode(tensors):
        buffer += message
    if crc:
        buffer += _CRC_MARK + zlib.crc32(buffer).to_bytes(10, "big")
    write_atomic(path, buffer)


# ---------------------------------------------------------------------------------------------------------
# The seed's names <-> ours
# ---------------------------------------------------------------------------------------------------------

_BN_LEAVES = {"moving_mean": "running_mean", "moving_variance": "running_var", "gamma": "weight", "beta": "bias"}
_BN_LEAVES_BACK = {ours: theirs for theirs, ours in _BN_LEAVES.items()}
_BLOCK_PARTS = (  # (ours, theirs) inside one bottleneck, in order
    ("expand.conv", "expand.conv"), ("expand.bn", "expand.bn"), ("dw.conv", "conv1.conv"), ("dw.bn", "conv1.bn"),
    ("se.fc1", "se.conv1"), ("se.fc2", "se.conv2"), ("project.conv", "conv2.conv"), ("project.bn", "conv2.bn"),
)

# What MindSpore's train cells and optimizers add to a training checkpoint (the seed: global_step,
# momentum, learning_rate, moments.*); the rest are other optimizers' and loss scalers' names.
_TRAINING_TAGS = {"global_step", "momentum", "learning_rate", "beta1_power", "beta2_power", "scale_sense",
                  "loss_scale", "epoch_num", "step_num", "current_iterator_step", "last_overflow_iterator_step"}
_TRAINING_PREFIXES = ("moments.", "moment1.", "moment2.", "accum.", "adam_m.", "adam_v.")


class _Features(NamedTuple):
    """Indices into the seed's ``features`` cell of the parts that hold tensors."""

    stem_conv: int
    stem_bn: int
    blocks: tuple[int, ...]
    final_conv: int
    final_bn: int
    head: int

    @classmethod
    def seed(cls, num_blocks: int) -> "_Features":
        """The seed's own layout: conv, BN, hswish, blocks, conv, BN, hswish, pool, head conv, hswish."""
        last = 3 + num_blocks
        return cls(0, 1, tuple(range(3, last)), last, last + 1, last + 4)


def _kind(leaves: set[str]) -> str:
    """A ``features`` entry by the tensors under it: c(onv), b(atchnorm), B(lock) or x (anything else)."""
    if leaves == {"weight"}:
        return "c"
    if leaves == set(_BN_LEAVES):
        return "b"
    return "B" if "conv1.conv.weight" in leaves else "x"


def _read_features(tensors: StateDict) -> _Features:
    """The seed's layout read from the tags; ``ValueError`` if they do not follow it."""
    leaves = defaultdict(set)
    for tag in tensors:
        if match := re.fullmatch(r"features\.(\d+)\.(.+)", tag):
            leaves[int(match.group(1))].add(match.group(2))
    indices = sorted(leaves)
    kinds = "".join(_kind(leaves[index]) for index in indices)
    if not re.fullmatch(r"cbB+cbc", kinds):
        preview = ", ".join(repr(tag) for tag in itertools.islice(tensors, 3))
        raise UsageError(f"not the seed's MobileNetV3 (features.N stem conv and BN, blocks, final conv and BN, "
                         f"head conv; output): found {preview}{', ...' if len(tensors) > 3 else ''}")
    return _Features(indices[0], indices[1], tuple(indices[2:-3]), *indices[-3:])


def _pairs(features: _Features) -> Pairs:
    pairs = [("stem.conv", f"features.{features.stem_conv}"), ("stem.bn", f"features.{features.stem_bn}")]
    for i, index in enumerate(features.blocks):
        pairs += [(f"blocks.{i}.{ours}", f"features.{index}.{theirs}") for ours, theirs in _BLOCK_PARTS]
    pairs += [("final_conv.conv", f"features.{features.final_conv}"),
              ("final_conv.bn", f"features.{features.final_bn}")]
    return pairs + [("head_fc", f"features.{features.head}"), ("classifier", "output")]


def _rename_leaves(tensors: StateDict, table: Mapping[str, str], only_in: Optional[str] = None) -> dict:
    """Rename the last part of each key by ``table``; with ``only_in``, just in modules of that name (``bn``),
    where every leaf must be in ``table``."""
    out = {}
    for key, value in tensors.items():
        module, _, leaf = key.rpartition(".")
        if only_in is None or module.rpartition(".")[2] == only_in:
            if only_in is not None and leaf not in table:
                raise UsageError(f"unexpected tensor {key!r}: not a BatchNorm tensor")
            key = f"{module}.{table.get(leaf, leaf)}"
        if key in out:
            raise UsageError(f"two tensors map onto {key!r}")
        out[key] = value
    return out


def _flat_1x1(tensor: torch.Tensor) -> torch.Tensor:
    """(out, in, 1, 1) -> (out, in); anything else unchanged, for the shape check to report."""
    return tensor.flatten(1) if tensor.dim() == 4 and tensor.shape[2:] == (1, 1) else tensor


def _ours(tensors: StateDict, features: _Features) -> dict[str, torch.Tensor]:
    """The seed's tensors (weights, or optimizer buffers shaped like them) in our names and shapes."""
    out = _rename_leaves(rename(tensors, _pairs(features)), _BN_LEAVES)  # modules first: errors name their tags
    for key in ("head_fc.weight", "classifier.weight"):
        if key in out:
            out[key] = _flat_1x1(out[key])
    return out  # no head_fc.bias, as the seed's head conv has none: a head_bias=False model


def split_training_state(tensors: StateDict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(model tensors, training state): the state is what the seed's trainer adds (``global_step``,
    ``momentum``, ``learning_rate``, ``moments.*``) or other MindSpore optimizers' and loss scalers' state."""
    weights, state = {}, {}
    for tag, tensor in tensors.items():
        is_state = tag in _TRAINING_TAGS or tag.startswith(_TRAINING_PREFIXES)
        (state if is_state else weights)[tag] = tensor
    return weights, state


@dataclass
class MindSporeCheckpoint:
    """A seed checkpoint in our terms: ``create_model(model_name, **model_kwargs).load_state_dict(state_dict)``.

    Training checkpoints also carry the optimizer state. MindSpore's ``Momentum`` (ApplyMomentum,
    no Nesterov) keeps ``accum = momentum * accum + grad; param -= lr * accum``, which is
    ``torch.optim.SGD(momentum=m, dampening=0, nesterov=False)``'s ``momentum_buffer`` update, so the
    buffers carry over one to one (``optimizer.state[param]["momentum_buffer"] = buffer``).
    ``training_tensors`` gives that state back in the seed's names.
    """

    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    global_step: Optional[int] = None
    momentum: Optional[float] = None
    learning_rate: Optional[torch.Tensor] = None  # the seed stores the whole per-step schedule
    momentum_buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # by our parameter name
    other_state: dict[str, torch.Tensor] = field(default_factory=dict)  # other training state, MindSpore names
    crc: bool = False  # the file ended in a CRC trailer (set by whoever read the file: ``has_crc``)

    def training_state(self) -> list[str]:
        """What the checkpoint holds besides the weights, one short phrase per part (empty: weights only)."""
        parts = [f"global_step {self.global_step}"] if self.global_step is not None else []
        parts += [f"momentum {self.momentum:g}"] if self.momentum is not None else []
        parts += [f"learning_rate ({self.learning_rate.numel()} steps)"] if self.learning_rate is not None else []
        parts += [f"{len(self.momentum_buffers)} moments.*"] if self.momentum_buffers else []
        return parts + list(self.other_state)


def _scalar(state: StateDict, tag: str) -> Optional[torch.Tensor]:
    if tag not in state:
        return None
    if state[tag].numel() != 1:
        raise UsageError(f"{tag!r} should hold one number, it has shape {tuple(state[tag].shape)}")
    return state[tag].reshape(())


def _momentum_buffers(state: StateDict, features: _Features, state_dict: StateDict) -> dict[str, torch.Tensor]:
    """``moments.<seed name>`` -> our parameter names, each shaped like its parameter."""
    moments = {tag[len("moments."):]: tensor for tag, tensor in state.items() if tag.startswith("moments.")}
    if not moments:
        return {}
    buffers = _ours(moments, features)
    for key, buffer in buffers.items():
        if key not in state_dict or buffer.shape != state_dict[key].shape:
            raise UsageError(f"momentum buffer {key!r} {tuple(buffer.shape)} does not match a parameter")
    return buffers


def from_mindspore(tensors: StateDict) -> MindSporeCheckpoint:
    """The seed's tensors (``read_ckpt`` of a seed ``.ckpt``) as our state dict, model and training state.

    The architecture (Large/Small, width, channel rounding, classes, head width, input channels) is read
    from the shapes; tensors that fit no MobileNetV3 raise ``ValueError`` naming the first mismatch.
    """
    weights, state = split_training_state(tensors)
    features = _read_features(weights)
    state_dict = _ours(weights, features)
    for key in [key for key in state_dict if key.endswith(".running_mean")]:
        state_dict[key[: -len("running_mean")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    model = fitting_model(state_dict, MINDSPORE_KWARGS, roundings=("ceil", "nearest"))  # the seed's rule first
    step, momentum = _scalar(state, "global_step"), _scalar(state, "momentum")
    known = {"global_step", "momentum", "learning_rate"}
    return MindSporeCheckpoint(
        model_name=model.model_name,
        model_kwargs=dict(model.model_kwargs),
        state_dict={key: state_dict[key] for key in model.state_dict()},
        global_step=None if step is None else int(step),
        momentum=None if momentum is None else float(momentum),
        learning_rate=state.get("learning_rate"),
        momentum_buffers=_momentum_buffers(state, features, state_dict),
        other_state={tag: t for tag, t in state.items() if tag not in known and not tag.startswith("moments.")},
    )


def _mindspore_order(tensors: StateDict) -> dict[str, torch.Tensor]:
    """Module by module as given, BatchNorm tensors in MindSpore's order (moving stats, gamma, beta)."""
    first: dict[str, int] = {}
    for index, key in enumerate(tensors):
        first.setdefault(key.rpartition(".")[0], index)
    rank = {leaf: i for i, leaf in enumerate(_BN_LEAVES)}

    def position(item: tuple[int, str]) -> tuple[int, int, int]:
        index, key = item
        module, _, leaf = key.rpartition(".")
        return first[module], rank.get(leaf, 0), index

    return {key: tensors[key] for _, key in sorted(enumerate(tensors), key=position)}


def _theirs(tensors: StateDict) -> dict[str, torch.Tensor]:
    """Our tensors (weights, or optimizer buffers shaped like them) in the seed's names and shapes."""
    features = _Features.seed(len(our_layout(tensors)))
    theirs = rename(_rename_leaves(tensors, _BN_LEAVES_BACK, only_in="bn"), _pairs(features), reverse=True)
    for key in (f"features.{features.head}.weight", "output.weight"):
        if key in theirs:
            theirs[key] = theirs[key][:, :, None, None]  # Linear -> 1x1 conv
    return theirs


def to_mindspore(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Our state dict in the seed's names and shapes, for ``write_ckpt`` and MindSpore's ``load_checkpoint``.

    ``head_fc.bias`` must be absent (a ``head_bias=False`` model) or zero: the seed's head conv has none. The
    seed's BatchNorm uses eps 1e-5: weights trained with another eps (e.g. ``TORCHVISION_KWARGS``) compute a
    slightly different function there.
    """
    weights = {key: value for key, value in state_dict.items() if not key.endswith(".num_batches_tracked")}
    bias = weights.pop("head_fc.bias", None)
    if bias is not None and torch.count_nonzero(bias):
        raise UsageError(f"head_fc.bias is not zero (max |bias| {bias.abs().max().item():.3g}), but the seed's "
                         "head conv has no bias: these weights have no MindSpore equivalent. Weights that go back "
                         "to MindSpore were trained with --no-head-bias (head_bias=False, as the cifar10-cpu and "
                         "imagenet-gpu presets do) or read from a MindSpore .ckpt")
    for key in ("head_fc.weight", "classifier.weight"):
        if key not in weights or weights[key].dim() != 2:
            raise UsageError(f"missing or mis-shaped {key}")
    return _mindspore_order(_theirs(weights))


SEED_PRESETS = ("cifar10-cpu", "imagenet-gpu")  # our presets that train the seed's network (RGB, stride 2, ...)
SEED_CLASSES = {10: "CPU, CIFAR-10", 1000: "GPU, ImageNet"}  # the class counts of the seed's two configs


def seed_differences(model_kwargs: Mapping[str, Any], state_dict: StateDict) -> tuple[list[str], list[str]]:
    """How weights differ from the seed's network (``SEED.md``: a stride-2 stem taking RGB, width 1.0, a
    1280-wide head conv without bias), one phrase each, in two lists: what a ``.ckpt`` can hold, for a seed
    network changed to match (input channels, width, head width), and what it cannot (a stem stride, which no
    ``.ckpt`` holds, so the weights would compute another function; a head bias, which the seed's head conv
    lacks). Both empty: the seed's network."""
    storable, never = [], []
    stem = tuple(state_dict["stem.conv.weight"].shape) if "stem.conv.weight" in state_dict else None
    if model_kwargs.get("in_chans", 3) != 3:
        storable.append(f"{model_kwargs['in_chans']} input channel(s), stem weight {stem} (the seed's stem takes "
                        "RGB, 3 channels)")
    if model_kwargs.get("width_mult", 1.0) != 1.0:
        storable.append(f"width_mult {model_kwargs['width_mult']} (the seed's network is width 1.0)")
    if model_kwargs.get("head_channels") != 1280:
        storable.append(f"head width {model_kwargs.get('head_channels')} (the seed's head is 1280 wide, Small's "
                        "too)")
    if model_kwargs.get("stem_stride", 2) != 2:
        never.append(f"stem stride {model_kwargs['stem_stride']} (the seed's is 2, and a .ckpt holds no stride: "
                     "read back, the weights would compute another function; keep them in our formats)")
    bias = state_dict.get("head_fc.bias")
    if bias is not None and torch.count_nonzero(bias):
        never.append(f"head_fc.bias is not zero (max |bias| {bias.abs().max().item():.3g}; the seed's head conv "
                     "has none: train with --no-head-bias)")
    return storable, never


def check_seed_network(model_kwargs: Mapping[str, Any], state_dict: StateDict, any_architecture: bool = False) -> None:
    """Weights go to a ``.ckpt`` only as the seed's network, which MindSpore's MobileNetV3 code builds and loads:
    every difference (``seed_differences``) is named in one ``UsageError``. ``any_architecture`` writes the ones
    a ``.ckpt`` can hold anyway (logged), for a seed network changed to match; never a stem stride or a head
    bias. A class count other than the seed's configs' (10, 1000) is logged: its config then needs it."""
    storable, never = seed_differences(model_kwargs, state_dict)
    refused = never + ([] if any_architecture else storable)
    if refused:
        way_out = "" if never else "; --any-architecture writes it anyway, for a seed network changed to match"
        raise UsageError(f"these weights are not the seed's network, which its MindSpore code could not load: "
                         f"{'; '.join(refused)}. Weights of the {' and '.join(SEED_PRESETS)} presets go back"
                         f"{way_out}")
    if storable:
        logger.warning("writing a .ckpt of another network than the seed's (--any-architecture): %s",
                       "; ".join(storable))
    classes = model_kwargs.get("num_classes")
    if classes not in SEED_CLASSES:
        logger.warning("%s classes: the seed's configs have %s; set num_classes %s in its config to load them",
                       classes, " or ".join(f"{n} ({where})" for n, where in SEED_CLASSES.items()), classes)


def training_tensors(checkpoint: MindSporeCheckpoint) -> dict[str, torch.Tensor]:
    """A seed checkpoint's training state in the seed's names, to follow ``to_mindspore``'s weights in a
    ``.ckpt``: ``moments.*`` renamed back, ``global_step`` (Int32, shape [1]) and ``momentum`` (a Float32
    scalar) as MindSpore's ``Momentum`` keeps them, ``learning_rate`` and the other state as read."""
    tensors = {f"moments.{tag}": buffer for tag, buffer in _theirs(checkpoint.momentum_buffers).items()}
    if checkpoint.global_step is not None:
        tensors["global_step"] = torch.tensor([checkpoint.global_step], dtype=torch.int32)
    if checkpoint.momentum is not None:
        tensors["momentum"] = torch.tensor(checkpoint.momentum, dtype=torch.float32)
    if checkpoint.learning_rate is not None:
        tensors["learning_rate"] = checkpoint.learning_rate
    return tensors | checkpoint.other_state
