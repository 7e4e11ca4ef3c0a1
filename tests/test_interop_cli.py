"""The interop features as users reach them: `mobilenetv3 convert`, `load_model`, `--pretrained`, `--resume`
from the seed's training checkpoints. Malformed weight files (one line, exit code 2) are cases of
test_bad_input.py."""
import numpy as np
import pytest
import torch
import torchvision

import mobilenetv3
from mobilenetv3 import weights as wts
from mobilenetv3.config import load_config
from mobilenetv3.convert import read_ckpt, to_mindspore, write_ckpt
from mobilenetv3.models import create_model

from builders import write_crc_ckpt
from conftest import MINDSPORE_FIXTURES, needs_mindspore_fixture, run_cli

FIXTURES = MINDSPORE_FIXTURES
CKPT = FIXTURES / "small_10_calib.ckpt"


def fixture_logits(model):
    x = torch.from_numpy(np.load(FIXTURES / "input_2x3x224x224.npy"))
    with torch.no_grad():
        return model.eval()(x)


@needs_mindspore_fixture
def test_load_model_reads_the_seed_checkpoint_and_gives_mindspore_logits():
    model = mobilenetv3.load_model(CKPT)
    expected = torch.from_numpy(np.load(FIXTURES / "small_10_calib_logits.npy"))
    torch.testing.assert_close(fixture_logits(model), expected, atol=1e-3, rtol=0)
    assert model.model_name == "mobilenetv3_small" and model.head_fc.out_features == 1280


@needs_mindspore_fixture
def test_convert_cli_round_trip_is_bit_exact(tmp_path):
    ours, back, safe = tmp_path / "ours.pt", tmp_path / "back.ckpt", tmp_path / "w.safetensors"
    result = run_cli("convert", CKPT, ours)
    assert result.returncode == 0, result.stderr
    assert "(mindspore, mobilenetv3_small, num_classes=10" in result.stdout
    assert run_cli("convert", ours, safe).returncode == 0
    assert run_cli("convert", safe, back).returncode == 0
    original, returned = read_ckpt(CKPT), read_ckpt(back)
    assert list(returned) == list(original)  # the same tags in the same order
    for tag, tensor in original.items():
        assert returned[tag].dtype == tensor.dtype and torch.equal(returned[tag], tensor), tag
    assert back.read_bytes() == CKPT.read_bytes()  # even byte for byte: MindSpore's own layout


def test_convert_to_torchvision_and_timm_loads_there(tmp_path):
    source = create_model("mobilenetv3_large", num_classes=5, bn_eps=1e-3, bn_momentum=0.01)
    weights = wts.Weights(source.model_name, source.model_kwargs, source.state_dict(), "mobilenetv3")
    wts.write_weights(weights, tmp_path / "ours.pt", "mobilenetv3")
    assert run_cli("convert", tmp_path / "ours.pt", tmp_path / "tv.pth", "--to", "torchvision").returncode == 0
    tv = torchvision.models.mobilenet_v3_large(num_classes=5)
    tv.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True))
    x = torch.randn(2, 3, 96, 96)
    torch.testing.assert_close(tv.eval()(x), source.eval()(x), atol=1e-5, rtol=0)
    timm = pytest.importorskip("timm")
    assert run_cli("convert", tmp_path / "tv.pth", tmp_path / "timm.pth", "--to", "timm").returncode == 0
    reference = timm.create_model("mobilenetv3_large_100", num_classes=5)
    reference.load_state_dict(torch.load(tmp_path / "timm.pth", weights_only=True))


def test_load_model_takes_torchvision_training_checkpoints_and_ddp_prefixes(tmp_path):
    tv = torchvision.models.mobilenet_v3_small(num_classes=4)
    state = {f"module.{k}": v for k, v in tv.state_dict().items()}
    torch.save({"model": state, "optimizer": {}, "epoch": 3}, tmp_path / "checkpoint.pth")
    model = mobilenetv3.load_model(tmp_path / "checkpoint.pth")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), tv.eval()(x), atol=1e-5, rtol=0)
    assert model.model_kwargs["bn_eps"] == 1e-3


@needs_mindspore_fixture
def test_resume_from_a_seed_training_checkpoint(tmp_path):
    """A seed training checkpoint (weights + global_step + momentum + moments.* + learning_rate) continues:
    weights into the model, momentum buffers into SGD, the step into the schedule."""
    tensors = dict(read_ckpt(CKPT))
    generator = torch.Generator().manual_seed(0)
    params = [tag for tag in tensors if not tag.endswith(("moving_mean", "moving_variance"))]
    for tag in params:
        tensors[f"moments.{tag}"] = torch.randn(tensors[tag].shape, generator=generator)
    tensors.update(global_step=torch.tensor([7], dtype=torch.int32), momentum=torch.tensor(0.9),
                   learning_rate=torch.linspace(0, 0.1, 40))
    seed_ckpt = tmp_path / "mobilenetV3-2_3.ckpt"
    write_ckpt(tensors, seed_ckpt)

    from mobilenetv3.build import build_model
    from mobilenetv3.checkpoint import Trainable, restore_seed
    from mobilenetv3.optim import build_optimizer, param_groups
    from mobilenetv3.tasks.train import prepare_config

    config, resume = prepare_config(None, dict(dataset="synthetic", resume=str(seed_ckpt), image_size=224))
    assert (config.model.model, config.model.num_classes, config.model.head_channels) == ("mobilenetv3_small", 10,
                                                                                         1280)
    model = build_model(config.model, num_classes=10, in_chans=3)
    optimizer = build_optimizer("sgd", param_groups(model, 1e-4), 0.1)
    state = restore_seed(resume.seed, Trainable(model, optimizer), steps_per_epoch=3, source=str(seed_ckpt))
    assert (state.global_step, state.epoch, state.step_in_epoch) == (7, 2, 1)
    buffer = optimizer.state[model.blocks[4].dw.conv.weight]["momentum_buffer"]
    assert torch.equal(buffer, tensors["moments.features.7.conv1.conv.weight"])
    assert model.head_fc.bias is None  # the seed's head has none, nor has the model resumed from it
    expected = torch.from_numpy(np.load(FIXTURES / "small_10_calib_logits.npy"))
    torch.testing.assert_close(fixture_logits(model), expected, atol=1e-3, rtol=0)


@needs_mindspore_fixture
def test_crc_trailer_is_checked(tmp_path):
    good = write_crc_ckpt(tmp_path / "good.ckpt", CKPT.read_bytes())
    assert mobilenetv3.load_model(good).num_classes == 10


def test_weights_of_another_architecture_are_refused_with_the_tensor_named(tmp_path):
    small = create_model("mobilenetv3_small", num_classes=3)
    torch.save(small.state_dict(), tmp_path / "small.pth")
    config = load_config(None, dict(dataset="synthetic", model="mobilenetv3_large", pretrained=str(tmp_path /
                                                                                                      "small.pth")))
    from mobilenetv3.build import build_model

    with pytest.raises(ValueError, match="holds mobilenetv3_small weights, but --model is mobilenetv3_large"):
        build_model(config.model, 3, 3, wts.read_weights(tmp_path / "small.pth"), given=config.given("model"))
    state = small.state_dict()
    state["blocks.3.dw.conv.weight"] = torch.zeros(96, 1, 3, 3)  # 5x5 in the real network
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"blocks.3.dw.conv.weight' has shape \(96, 1, 3, 3\)"):
        mobilenetv3.load_model(tmp_path / "broken.pth")


def test_mindspore_export_refuses_a_nonzero_head_bias(tmp_path):
    model = create_model("mobilenetv3_small", num_classes=3)
    with torch.no_grad():
        model.head_fc.bias.fill_(0.5)
    with pytest.raises(ValueError, match="head_fc.bias is not zero"):
        to_mindspore(model.state_dict())
