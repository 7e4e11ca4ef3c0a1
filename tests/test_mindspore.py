"""MindSpore .ckpt: the seed's fixture gives MindSpore's logits, files and names round-trip bit for bit,
and bytes that are not a checkpoint give one ValueError line.

The fixture (../shared/fixtures/mindspore, made with real MindSpore 2.10) is the reference: its logits
were computed by MindSpore, and its bytes are what MindSpore's writer produces.
"""
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import mobilenetv3.convert.mindspore as ms
from mobilenetv3.convert import from_mindspore, read_ckpt, to_mindspore, write_ckpt
from mobilenetv3.convert.mindspore import DTYPES, MINDSPORE_KWARGS
from mobilenetv3.models import create_model

from conftest import MINDSPORE_FIXTURES, needs_mindspore_fixture

FIXTURES = MINDSPORE_FIXTURES
CKPT = FIXTURES / "small_10_calib.ckpt"


# A protobuf encoder of our own, independent of the module's writer, to craft files by hand.
def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def value(tag: str, dims, type_name: str, content: bytes, packed: bool = False) -> bytes:
    """One single-value ``Checkpoint`` message, as MindSpore's save_checkpoint writes per parameter."""
    if packed:
        tensor = field(1, b"".join(varint(d) for d in dims)) if dims else b""
    else:
        tensor = b"".join(varint(1 << 3) + varint(d) for d in dims)
    tensor += field(2, type_name.encode()) + field(3, content)
    return field(1, field(1, tag.encode()) + field(2, tensor))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype, a.shape) == (b.dtype, b.shape) and torch.equal(
        a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


@pytest.fixture(scope="module")
def fixture_tensors():
    return read_ckpt(CKPT)  # its tests are marked needs_mindspore_fixture


def fixture_logits(checkpoint: ms.MindSporeCheckpoint, **overrides) -> tuple[torch.Tensor, torch.Tensor]:
    model = create_model(checkpoint.model_name, **{**checkpoint.model_kwargs, **overrides}).eval()
    model.load_state_dict(checkpoint.state_dict)
    x = torch.from_numpy(np.load(FIXTURES / "input_2x3x224x224.npy"))
    with torch.no_grad():
        return model(x), torch.from_numpy(np.load(FIXTURES / "small_10_calib_logits.npy"))


# ----- the fixture ----------------------------------------------------------------------------------------

@needs_mindspore_fixture
def test_fixture_gives_mindspore_logits(fixture_tensors):
    checkpoint = from_mindspore(fixture_tensors)
    assert checkpoint.model_name == "mobilenetv3_small"
    assert checkpoint.model_kwargs == dict(num_classes=10, width_mult=1.0, dropout=0.0, in_chans=3, head_channels=1280,
                                           bn_eps=1e-5, bn_momentum=0.1, channel_rounding="ceil", head_bias=False,
                                           stem_stride=2)
    actual, expected = fixture_logits(checkpoint)
    assert expected.abs().max() > 1, "logits too small for the tolerance to mean anything"
    torch.testing.assert_close(actual, expected, atol=1e-3, rtol=0)  # observed: 1.2e-5


@needs_mindspore_fixture
def test_fixture_logits_catch_a_wrong_bn_eps(fixture_tensors):
    """Guard that the parity test can fail: torchvision's eps moves the logits by more than 1."""
    actual, expected = fixture_logits(from_mindspore(fixture_tensors), bn_eps=1e-3)
    assert (actual - expected).abs().max() > 1


@needs_mindspore_fixture
def test_fixture_round_trips_bit_exact_and_the_writer_reproduces_its_bytes(fixture_tensors, tmp_path):
    back = to_mindspore(from_mindspore(fixture_tensors).state_dict)
    assert list(back) == list(fixture_tensors)
    assert all(same_bits(back[tag], fixture_tensors[tag]) for tag in fixture_tensors)
    write_ckpt(back, tmp_path / "back.ckpt")
    assert (tmp_path / "back.ckpt").read_bytes() == CKPT.read_bytes()  # MindSpore's own bytes


# ----- our weights through MindSpore's names and files ----------------------------------------------------

def random_state_dict(name: str, **kwargs) -> tuple[dict, dict]:
    """A model's state dict with every tensor random (no head_fc bias by default, as the seed's head has none)."""
    model = create_model(name, **{**MINDSPORE_KWARGS, "head_bias": False, **kwargs})
    state_dict = model.state_dict()
    with torch.no_grad():
        for key, tensor in state_dict.items():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5) if key.endswith("running_var") else tensor.normal_()
    return state_dict, model.model_kwargs


@pytest.mark.parametrize("name, kwargs", [
    ("mobilenetv3_large", dict(channel_rounding="ceil")),  # the seed's config (at 1.0 both roundings agree)
    ("mobilenetv3_large", dict(width_mult=0.75, head_channels=1024, num_classes=3)),
    ("mobilenetv3_small", dict(width_mult=0.5, channel_rounding="ceil", in_chans=1)),
])
def test_our_weights_round_trip_through_a_ckpt(name, kwargs, tmp_path):
    state_dict, model_kwargs = random_state_dict(name, **kwargs)
    write_ckpt(to_mindspore(state_dict), tmp_path / "x.ckpt")
    checkpoint = from_mindspore(read_ckpt(tmp_path / "x.ckpt"))
    assert (checkpoint.model_name, checkpoint.model_kwargs) == (name, model_kwargs)
    assert list(checkpoint.state_dict) == list(state_dict)
    assert all(same_bits(checkpoint.state_dict[k], state_dict[k]) for k in state_dict)


def test_export_uses_the_seed_layout():
    state_dict, _ = random_state_dict("mobilenetv3_large")
    theirs = to_mindspore(state_dict)
    assert list(theirs)[:5] == ["features.0.weight", "features.1.moving_mean", "features.1.moving_variance",
                                "features.1.gamma", "features.1.beta"]
    assert theirs["features.3.conv1.conv.weight"].shape == (16, 1, 3, 3)  # first block: no expand conv
    assert "features.3.expand.conv.weight" not in theirs
    assert theirs["features.18.weight"].shape == (960, 160, 1, 1)  # final conv, then BN 19, head conv 22
    assert theirs["features.22.weight"].shape == (1280, 960, 1, 1)
    assert list(theirs)[-2:] == ["output.weight", "output.bias"]
    assert theirs["output.weight"].shape == (1000, 1280, 1, 1)


def test_export_refuses_a_head_bias():
    state_dict, _ = random_state_dict("mobilenetv3_small", head_bias=True)
    state_dict["head_fc.bias"][3] = 0.5
    with pytest.raises(ValueError, match="head_fc.bias is not zero .* no bias"):
        to_mindspore(state_dict)


def test_training_state_is_split_and_renamed():
    state_dict, _ = random_state_dict("mobilenetv3_small", num_classes=10)
    tensors = to_mindspore(state_dict)
    trainable = [tag for tag in tensors if "moving_" not in tag]
    tensors.update({f"moments.{tag}": torch.full_like(tensors[tag], i) for i, tag in enumerate(trainable)})
    tensors.update(global_step=torch.tensor([1250], dtype=torch.int32), momentum=torch.tensor(0.9),
                   learning_rate=torch.linspace(0, 0.1, 50), beta1_power=torch.tensor(0.5))
    checkpoint = from_mindspore(tensors)
    assert checkpoint.global_step == 1250 and checkpoint.momentum == pytest.approx(0.9)
    assert torch.equal(checkpoint.learning_rate, torch.linspace(0, 0.1, 50))
    assert list(checkpoint.other_state) == ["beta1_power"]
    model = create_model(checkpoint.model_name, **checkpoint.model_kwargs)
    params = dict(model.named_parameters())
    assert checkpoint.momentum_buffers.keys() == params.keys()
    assert all(buffer.shape == params[k].shape for k, buffer in checkpoint.momentum_buffers.items())
    head = checkpoint.momentum_buffers["head_fc.weight"]
    assert (head == trainable.index("features.18.weight")).all()
    assert "head_fc.bias" not in checkpoint.momentum_buffers  # the seed's head has none, nor has the model
    assert (checkpoint.momentum_buffers["stem.bn.weight"] == trainable.index("features.1.gamma")).all()
    assert all(same_bits(checkpoint.state_dict[k], state_dict[k]) for k in state_dict)


def test_a_shape_that_fits_no_width_is_named():
    tensors = to_mindspore(random_state_dict("mobilenetv3_small")[0])
    tensors["features.4.expand.conv.weight"] = torch.zeros(64, 16, 1, 1)
    with pytest.raises(ValueError, match=r"no width of mobilenetv3_small .* 'blocks.1.expand.conv.weight' has shape "
                                         r"\(64, 16, 1, 1\), mobilenetv3_small expects \(72, 16, 1, 1\)"):
        from_mindspore(tensors)


def test_a_missing_block_or_a_foreign_tensor_is_refused():
    tensors = to_mindspore(random_state_dict("mobilenetv3_small")[0])
    without_block = {tag: t for tag, t in tensors.items() if not tag.startswith("features.5.")}
    with pytest.raises(ValueError, match="found 10 bottleneck blocks"):
        from_mindspore(without_block)
    with pytest.raises(ValueError, match="unexpected tensor 'aux.weight'"):
        from_mindspore({**tensors, "aux.weight": torch.zeros(3)})


def test_a_foreign_model_is_refused(tmp_path):
    path = tmp_path / "lenet.ckpt"
    path.write_bytes(value("fc.weight", [2, 2], "Float32", bytes(16)) + value("fc.bias", [2], "Float32", bytes(8)))
    tensors = read_ckpt(path)
    assert list(tensors) == ["fc.weight", "fc.bias"]
    with pytest.raises(ValueError, match="not the seed's MobileNetV3 .* found 'fc.weight', 'fc.bias'"):
        from_mindspore(tensors)


# ----- the file format ------------------------------------------------------------------------------------

def sample(dtype: torch.dtype, shape) -> torch.Tensor:
    if dtype is torch.bool:
        return torch.randint(0, 2, shape).bool()
    if dtype.is_floating_point:
        x = torch.randn(shape, dtype=torch.float64)
        x.view(-1)[:3] = torch.tensor([float("inf"), -0.0, float("nan")])[: x.numel()]
        return x.to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape).to(dtype)


@pytest.mark.parametrize("type_name", list(DTYPES))
def test_every_dtype_round_trips_bit_exact(type_name, tmp_path):
    dtype = DTYPES[type_name]
    tensors = {"matrix": sample(dtype, (3, 5)), "scalar": sample(dtype, ()), "empty": sample(dtype, (0, 4))}
    write_ckpt(tensors, tmp_path / "x.ckpt")
    back = read_ckpt(tmp_path / "x.ckpt")
    assert list(back) == list(tensors) and all(same_bits(back[k], tensors[k]) for k in tensors)
    content = tensors["matrix"].reshape(-1).view(torch.uint8).numpy().tobytes()  # the writer matches our encoder
    assert (tmp_path / "x.ckpt").read_bytes().startswith(value("matrix", [3, 5], type_name, content))


def test_hand_made_values_read_as_mindspore_reads_them(tmp_path):
    """Split tensors concatenate; packed dims parse; a 1.x scalar (dims [0], one item) is a scalar."""
    parts = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "x.ckpt"
    path.write_bytes(value("split", [2, 3], "Float32", parts[0].tobytes()) + value("split", [2, 3], "Float32",
                     parts[1].tobytes()) + value("packed", [2, 2], "Int64", bytes(32), packed=True)
                     + value("step", [0], "Int32", (7).to_bytes(4, "little")) + value("new_step", [], "Int32",
                     (8).to_bytes(4, "little")))
    back = read_ckpt(path)
    assert torch.equal(back["split"], torch.from_numpy(parts))
    assert back["packed"].shape == (2, 2) and back["packed"].dtype == torch.int64
    assert back["step"].shape == () and back["step"].item() == 7 and back["new_step"].item() == 8


def test_large_tensors_are_written_in_slices(tmp_path, monkeypatch):
    monkeypatch.setattr(ms, "_SLICE_BYTES", 16)
    tensor = torch.arange(10, dtype=torch.float32)
    write_ckpt({"t": tensor}, tmp_path / "x.ckpt")
    content = tensor.numpy().tobytes()
    assert (tmp_path / "x.ckpt").read_bytes() == b"".join(
        value("t", [10], "Float32", content[i:i + 16]) for i in range(0, 40, 16))
    assert torch.equal(read_ckpt(tmp_path / "x.ckpt")["t"], tensor)


def test_crc_trailer_is_written_and_checked(tmp_path):
    path = tmp_path / "x.ckpt"
    tensors = {"w": torch.randn(4, 4), "b": torch.zeros(4)}
    write_ckpt(tensors, path, crc=True)
    data = path.read_bytes()
    assert data[-17:-10] == b"crc_num" and int.from_bytes(data[-10:], "big") == zlib.crc32(data[:-17])
    assert all(torch.equal(read_ckpt(path)[k], tensors[k]) for k in tensors)
    damaged = bytearray(data)
    damaged[40] ^= 0x01  # inside w's content: still parses, so only the CRC can tell
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="CRC check failed"):
        read_ckpt(path)


def test_writing_is_atomic(tmp_path):
    path = tmp_path / "x.ckpt"
    write_ckpt({"w": torch.ones(2)}, path)
    with pytest.raises(ValueError, match="cannot store"):
        write_ckpt({"w": torch.ones(2), "z": torch.ones(2, dtype=torch.complex64)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]  # no temporary left behind
    assert torch.equal(read_ckpt(path)["w"], torch.ones(2))  # the old file is untouched


BAD_FILES = {
    "empty": (b"", "is empty"),
    "random": (np.random.RandomState(0).bytes(4096), "not a MindSpore checkpoint .*encrypted"),
    "text": (b"PK\x03\x04 this is a zip file, not a checkpoint", "not a MindSpore checkpoint"),
    "wrong size": (value("w", [2, 2], "Float32", bytes(12)), r"'w': 12 bytes of Float32 do not fill shape \[2, 2\]"),
    "huge dims": (value("w", [2**40, 2**40, 2**40], "Float32", bytes(12)), "'w': 12 bytes"),
    "unknown type": (value("w", [2], "Int4", bytes(1)), "'w' has tensor_type 'Int4'"),
    "bad bool": (value("w", [2], "Bool", b"\x00\x07"), "'w': Bool bytes"),
    "twice": (value("a", [], "Int32", bytes(4)) + value("b", [], "Int32", bytes(4)) + value("a", [], "Int32",
              bytes(4)), "'a' appears twice"),
    "map tensor": (field(1, field(1, b"emb") + field(3, b"")), "'emb' is a MapParameter"),
    "no type": (field(1, field(1, b"w") + field(2, field(3, b""))), "without tensor_type"),
    "truncated": (value("w", [4], "Float32", bytes(16))[:-3], "needs .* bytes"),
    "negative dim": (value("w", [2**64 - 1], "Float32", bytes(4)), "negative tensor dimension"),
    "long varint": (b"\x0a" + b"\xff" * 11, "varint longer than 10 bytes"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_files_give_one_clear_line(name, tmp_path):
    data, message = BAD_FILES[name]
    path = tmp_path / "bad.ckpt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as info:
        read_ckpt(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@needs_mindspore_fixture
@pytest.mark.parametrize("cut", [1, 3, 10, 100, 5000, 3_000_000, -1000, -1])
def test_truncated_fixture_is_refused(cut, tmp_path):
    path = tmp_path / "cut.ckpt"
    path.write_bytes(CKPT.read_bytes()[:cut])
    with pytest.raises(ValueError, match="not a MindSpore checkpoint|damaged or truncated"):
        read_ckpt(path)


def _mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for position, byte, kind in edits:
        position %= max(len(out), 1)
        if kind == "set" and out:
            out[position] = byte
        elif kind == "insert":
            out.insert(position, byte)
        elif kind == "delete" and out:
            del out[position]
        elif kind == "truncate":
            del out[position:]
    return bytes(out)


def _parse_or_value_error(path: Path) -> None:
    """Reading and mapping may succeed or raise ValueError; anything else (or a hang) fails the test."""
    try:
        from_mindspore(read_ckpt(path))
    except ValueError as err:
        assert "\n" not in str(err)


def _fuzz(data: bytes, path: Path, positions, max_examples: int) -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    edit = st.tuples(positions, st.integers(0, 255), st.sampled_from(["set", "insert", "delete", "truncate"]))

    @hypothesis.settings(max_examples=max_examples, deadline=5000, database=None, derandomize=True)
    @hypothesis.given(st.lists(edit, min_size=1, max_size=3))
    def check(edits):
        path.write_bytes(_mutate(data, edits))
        _parse_or_value_error(path)

    check()


def test_fuzzed_small_checkpoints_fail_cleanly(tmp_path):
    """Byte edits of a small file dense in structure (every dtype, scalars, a split tensor)."""
    data = b"".join(value(f"t.{name}", [2, 1], name, sample(dtype, (2, 1)).view(-1).view(torch.uint8).numpy()
                          .tobytes()) for name, dtype in DTYPES.items())
    data += value("s", [], "Int32", bytes(4)) + value("p", [2], "Int8", b"\x01") + value("p", [2], "Int8", b"\x02")
    _fuzz(data, tmp_path / "fuzz.ckpt", pytest.importorskip("hypothesis").strategies.integers(0, len(data)), 200)


@needs_mindspore_fixture
def test_fuzzed_fixture_fails_cleanly(tmp_path):
    """Byte edits of the fixture near its tags and headers, where they change structure and names."""
    data = CKPT.read_bytes()
    starts = [match.start() for match in re.finditer(rb"features|output", data)]
    hypothesis = pytest.importorskip("hypothesis")
    near_tags = hypothesis.strategies.builds(lambda start, offset: start + offset,
                                             hypothesis.strategies.sampled_from(starts),
                                             hypothesis.strategies.integers(-6, 30))
    _fuzz(data, tmp_path / "fuzz.ckpt", near_tags, 25)
