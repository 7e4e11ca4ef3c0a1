"""Weights go back to MindSpore: models trained here without the head bias (the seed's head conv has none),
a seed training checkpoint's state (kept in a .ckpt, reported as dropped elsewhere) and the CRC trailer.

References: the parameter counts MindSpore reports for the seed's network (../shared/reference/SEED.md),
torchvision's and timm's models, and the seed's checkpoint made by MindSpore 2.10 (../shared/fixtures).
"""
import zlib

import numpy as np
import pytest
import torch
import torchvision

import mobilenetv3
from mobilenetv3 import weights as wts
from mobilenetv3.build import build_model
from mobilenetv3.config import load_config
from mobilenetv3.convert import from_mindspore, read_ckpt, to_mindspore, to_timm, to_torchvision, write_ckpt
from mobilenetv3.convert.mindspore import MINDSPORE_KWARGS
from mobilenetv3.models import count_params, create_model

from conftest import MINDSPORE_FIXTURES, needs_mindspore_fixture, run_cli

TINY = ["--dataset", "synthetic", "--synthetic-samples", "32", "--image-size", "32", "--batch-size", "8",
        "--model", "mobilenetv3_small", "--epochs", "1", "--warmup-epochs", "0", "--workers", "0", "--no-progress",
        "--transform", "none", "--stem-stride", "2"]
TRAINING_SCALARS = ("global_step", "momentum", "learning_rate")
ARCHITECTURE = ("num_classes", "width_mult", "head_channels", "in_chans", "bn_eps", "bn_momentum", "head_bias")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype, a.shape) == (b.dtype, b.shape) and torch.equal(
        a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every float tensor random (BN statistics included), so that conversions that misplace
    a tensor change the logits."""
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5) if key.endswith("running_var") else tensor.normal_(0, 0.1)
    return model.eval()


def logits(model: torch.nn.Module, size: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)))


# ----- 6: a seed-exact head, so that what is trained here goes back to MindSpore ----------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained from the CLI as the seed's network (``--no-head-bias``, a 1280-wide head, RGB, a
    stride-2 stem): its last.pt."""
    from mobilenetv3.cli import main

    run_dir = tmp_path_factory.mktemp("no-head-bias") / "run"
    assert main(["train", *TINY, "--no-head-bias", "--head-channels", "1280", "--run-dir", str(run_dir)]) == 0
    return run_dir / "last.pt"


def test_a_model_trained_without_head_bias_goes_to_mindspore_and_back(trained, tmp_path):
    ckpt, back = tmp_path / "w.ckpt", tmp_path / "back.pt"
    to_ms = run_cli("convert", trained, ckpt)
    assert to_ms.returncode == 0, to_ms.stderr
    assert "head_bias=False" in to_ms.stdout
    assert "training state dropped (mindspore files hold weights only; continue the run from" in to_ms.stdout
    assert run_cli("convert", ckpt, back).returncode == 0
    original, returned = mobilenetv3.load_model(trained), mobilenetv3.load_model(back)
    assert original.head_fc.bias is None and returned.head_fc.bias is None
    assert {k: returned.model_kwargs[k] for k in ARCHITECTURE} == {k: original.model_kwargs[k] for k in ARCHITECTURE}
    state, state_back = original.state_dict(), returned.state_dict()
    assert state_back.keys() == state.keys()
    assert all(same_bits(state_back[k], state[k]) for k in state if not k.endswith("num_batches_tracked"))
    assert torch.equal(logits(returned), logits(original))


def test_a_model_trained_with_the_head_bias_is_refused_with_the_way_out(tmp_path):
    model = randomised(create_model("mobilenetv3_small", num_classes=3))
    weights = wts.Weights(model.model_name, model.model_kwargs, model.state_dict(), "mobilenetv3")
    wts.write_weights(weights, tmp_path / "biased.pt", "mobilenetv3")
    result = run_cli("convert", tmp_path / "biased.pt", tmp_path / "w.ckpt")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "head_fc.bias is not zero" in result.stderr and "--no-head-bias" in result.stderr
    assert not (tmp_path / "w.ckpt").exists()


def our_weights(path, **kwargs):
    """Our weights file of a randomised model built with ``kwargs``."""
    model = randomised(create_model(**kwargs))
    wts.write_weights(wts.Weights(model.model_name, model.model_kwargs, model.state_dict(), "mobilenetv3"), path,
                      "mobilenetv3")
    return path, model


# The user's case: the default Small on Fashion-MNIST (one channel, a 1024-wide head) with --no-head-bias
# --stem-stride 2 became a .ckpt without a word, which the seed's network (SEED.md: a 3-channel stride-2 stem,
# a 1280-wide head without bias) cannot load.
GRAYSCALE_SMALL = dict(name="mobilenetv3_small", num_classes=10, in_chans=1, head_bias=False, stem_stride=2)


def test_weights_that_are_not_the_seed_network_are_refused_naming_each_difference(tmp_path):
    source, _ = our_weights(tmp_path / "small.pt", **GRAYSCALE_SMALL, width_mult=0.75)
    result = run_cli("convert", source, tmp_path / "w.ckpt")
    assert result.returncode == 2 and result.stdout == "" and not (tmp_path / "w.ckpt").exists()
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "not the seed's network" in line, line
    for difference in ("1 input channel(s), stem weight (16, 1, 3, 3) (the seed's stem takes RGB, 3 channels)",
                       "width_mult 0.75 (the seed's network is width 1.0)",
                       "head width 768 (the seed's head is 1280 wide, Small's too)"):
        assert difference in line
    assert "Weights of the cifar10-cpu and imagenet-gpu presets go back" in line and "--any-architecture" in line


def test_any_architecture_writes_what_a_ckpt_holds_and_it_reads_back(tmp_path):
    source, model = our_weights(tmp_path / "small.pt", **GRAYSCALE_SMALL)
    result = run_cli("convert", source, tmp_path / "w.ckpt", "--any-architecture")
    assert result.returncode == 0, result.stderr
    assert "writing a .ckpt of another network than the seed's (--any-architecture): 1 input channel(s)" in \
        result.stderr and "head width 1024" in result.stderr
    back = mobilenetv3.load_model(tmp_path / "w.ckpt")
    assert (back.in_chans, back.model_kwargs["head_channels"]) == (1, 1024)
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs, says", [
    (dict(stem_stride=1), "stem stride 1 (the seed's is 2, and a .ckpt holds no stride"),
    (dict(head_bias=True), "head_fc.bias is not zero"),
], ids=["stem stride", "head bias"])
def test_what_a_ckpt_cannot_hold_is_refused_even_with_any_architecture(kwargs, says, tmp_path):
    source, _ = our_weights(tmp_path / "w.pt", **dict(GRAYSCALE_SMALL, **kwargs))
    result = run_cli("convert", source, tmp_path / "w.ckpt", "--any-architecture")
    assert result.returncode == 2 and says in result.stderr and not (tmp_path / "w.ckpt").exists()
    assert "--any-architecture writes it anyway" not in result.stderr


def test_the_seed_network_with_another_class_count_goes_back_and_says_the_config_needs_it(tmp_path):
    source, _ = our_weights(tmp_path / "seven.pt", name="mobilenetv3_large", num_classes=7, head_bias=False,
                            head_channels=1280)
    result = run_cli("convert", source, tmp_path / "w.ckpt")
    assert result.returncode == 0, result.stderr
    assert "7 classes: the seed's configs have 10 (CPU, CIFAR-10) or 1000 (GPU, ImageNet); set num_classes 7 in " \
           "its config to load them" in result.stderr


@pytest.mark.parametrize("name, kwargs, mindspore_params", [
    ("mobilenetv3_large", dict(), 5_481_752),
    ("mobilenetv3_small", dict(num_classes=10, head_channels=1280), 1_677_098),
])
def test_head_bias_false_is_the_seed_network(name, kwargs, mindspore_params):
    """The trainable parameter counts MindSpore reports for the seed's networks (SEED.md)."""
    model = create_model(name, **kwargs, head_bias=False)
    assert count_params(model) == mindspore_params and model.model_kwargs["head_bias"] is False
    assert create_model(model.model_name, **model.model_kwargs).head_fc.bias is None  # the kwargs rebuild it


@pytest.mark.parametrize("preset", ["cifar10-cpu", "imagenet-gpu"])
def test_the_seed_presets_train_the_seed_head(preset):
    config = load_config(preset)
    assert config.model.head_bias is False
    assert build_model(config.model, config.model.num_classes, 3).head_fc.bias is None


def test_a_bias_free_model_goes_to_torchvision_and_timm_with_a_zero_bias(tmp_path):
    ours = randomised(create_model("mobilenetv3_large", num_classes=5, head_bias=False, bn_eps=1e-3,
                                   bn_momentum=0.01))
    tv = torchvision.models.mobilenet_v3_large(num_classes=5).eval()
    tv.load_state_dict(to_torchvision(ours.state_dict()))  # strict: every tensor placed, the head bias too
    assert not tv.classifier[0].bias.any()
    torch.testing.assert_close(logits(tv), logits(ours), atol=1e-5, rtol=0)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    assert mobilenetv3.load_model(tmp_path / "tv.pth").model_kwargs["head_bias"] is True  # theirs keep theirs
    timm = pytest.importorskip("timm")
    ours = randomised(create_model("mobilenetv3_small", num_classes=5, head_bias=False))
    reference = timm.create_model("mobilenetv3_small_100", num_classes=5).eval()
    reference.load_state_dict(to_timm(ours.state_dict()))
    assert not reference.conv_head.bias.any()
    torch.testing.assert_close(logits(reference), logits(ours), atol=1e-5, rtol=0)


@needs_mindspore_fixture
def test_weights_from_mindspore_have_no_head_bias_and_keep_mindspore_logits():
    model = mobilenetv3.load_model(MINDSPORE_FIXTURES / "small_10_calib.ckpt")
    assert model.head_fc.bias is None and model.model_kwargs["head_bias"] is False
    x = torch.from_numpy(np.load(MINDSPORE_FIXTURES / "input_2x3x224x224.npy"))
    expected = torch.from_numpy(np.load(MINDSPORE_FIXTURES / "small_10_calib_logits.npy"))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-3, rtol=0)


# ----- 7 and 8: a seed training checkpoint's state and the CRC trailer -------------------------------------

def seed_checkpoint(path, training: bool, crc: bool = False) -> dict:
    """A seed-style ``.ckpt`` (random weights in the seed's names; ``training``: plus ``moments.*``,
    ``global_step``, ``momentum`` and ``learning_rate``, as the seed's trainer saves them); its tensors."""
    state_dict = randomised(create_model("mobilenetv3_small", num_classes=10, head_channels=1280,
                                         **MINDSPORE_KWARGS)).state_dict()
    state_dict["head_fc.bias"].zero_()  # the seed's head conv has none
    tensors = to_mindspore(state_dict)
    if training:
        params = [tag for tag in tensors if not tag.endswith(("moving_mean", "moving_variance"))]
        tensors.update({f"moments.{tag}": torch.randn(tensors[tag].shape) for tag in params})
        tensors.update(global_step=torch.tensor([7], dtype=torch.int32), momentum=torch.tensor(0.9),
                       learning_rate=torch.linspace(0, 0.1, 40))
    write_ckpt(tensors, path, crc=crc)
    return tensors


def test_a_seed_training_checkpoint_keeps_its_state_in_a_ckpt(tmp_path):
    tensors = seed_checkpoint(tmp_path / "mobilenetV3-2_3.ckpt", training=True)
    result = run_cli("convert", tmp_path / "mobilenetV3-2_3.ckpt", tmp_path / "out.ckpt")
    assert result.returncode == 0, result.stderr
    moments = sum(tag.startswith("moments.") for tag in tensors)
    assert (f"training state kept: global_step 7, momentum 0.9, learning_rate (40 steps), {moments} moments.*"
            in result.stdout)
    back = read_ckpt(tmp_path / "out.ckpt")
    assert back.keys() == tensors.keys() and all(same_bits(back[tag], tensors[tag]) for tag in tensors)
    weights = [tag for tag in tensors if not tag.startswith("moments.") and tag not in TRAINING_SCALARS]
    assert list(back)[:len(weights)] == weights  # the weights first, in the seed's order
    state = from_mindspore(back)
    assert state.global_step == 7 and state.learning_rate.numel() == 40 and len(state.momentum_buffers) == moments


@pytest.mark.parametrize("dst, target", [("out.pt", "mobilenetv3"), ("out.safetensors", "safetensors")])
def test_a_seed_training_checkpoint_says_what_other_formats_drop(dst, target, tmp_path):
    tensors = seed_checkpoint(tmp_path / "seed.ckpt", training=True)
    result = run_cli("convert", tmp_path / "seed.ckpt", tmp_path / dst)
    assert result.returncode == 0, result.stderr
    dropped = [line for line in result.stdout.splitlines() if line.startswith("training state dropped")]
    assert len(dropped) == 1 and f"{target} files hold weights only" in dropped[0] and "--resume" in dropped[0]
    moments = sum(tag.startswith("moments.") for tag in tensors)
    assert dropped[0].endswith(f"global_step 7, momentum 0.9, learning_rate (40 steps), {moments} moments.*")
    result = mobilenetv3.convert_weights(str(tmp_path / "seed.ckpt"), str(tmp_path / "api.pt"))
    assert result.training_state and not result.training_state_kept  # the Python API says it too


def test_a_crc_trailer_round_trips_through_convert(tmp_path):
    source = tmp_path / "crc.ckpt"
    seed_checkpoint(source, training=False, crc=True)
    result = run_cli("convert", source, tmp_path / "back.ckpt")
    assert result.returncode == 0 and "with a CRC trailer" in result.stdout, result.stderr
    data = (tmp_path / "back.ckpt").read_bytes()
    assert data[-17:-10] == b"crc_num" and int.from_bytes(data[-10:], "big") == zlib.crc32(data[:-17])
    assert data == source.read_bytes()  # the same tensors in the same order: the same file, trailer included
    assert run_cli("convert", source, tmp_path / "plain.ckpt", "--no-crc").returncode == 0
    assert (tmp_path / "plain.ckpt").read_bytes() == data[:-17]


def test_crc_can_be_asked_for_and_only_for_a_ckpt(tmp_path):
    seed_checkpoint(tmp_path / "plain.ckpt", training=False)
    assert run_cli("convert", tmp_path / "plain.ckpt", tmp_path / "ours.pt").returncode == 0
    assert run_cli("convert", tmp_path / "ours.pt", tmp_path / "with.ckpt", "--crc").returncode == 0
    assert (tmp_path / "with.ckpt").read_bytes() == (tmp_path / "plain.ckpt").read_bytes() + b"crc_num" + zlib.crc32(
        (tmp_path / "plain.ckpt").read_bytes()).to_bytes(10, "big")
    refused = run_cli("convert", tmp_path / "plain.ckpt", tmp_path / "x.pt", "--crc")
    assert refused.returncode == 2 and "CRC trailer belongs to MindSpore .ckpt files" in refused.stderr
