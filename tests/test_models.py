"""The model family: sizes and counts against torchvision and the seed, interface, init, registry."""
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, MobileNet_V3_Small_Weights

import mobilenetv3
from mobilenetv3.models import count_madds, count_params, create_model, list_models, profile
from mobilenetv3.models.layers import make_divisible

TORCHVISION = {
    "mobilenetv3_large": (torchvision.models.mobilenet_v3_large, MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    "mobilenetv3_small": (torchvision.models.mobilenet_v3_small, MobileNet_V3_Small_Weights.IMAGENET1K_V1),
}


def test_registry_lists_the_seed_hub_names():
    assert list_models() == ["mobilenetv3_large", "mobilenetv3_small"]
    assert mobilenetv3.list_models() == list_models()


@pytest.mark.parametrize("name", list_models())
def test_param_count_equals_torchvision(name):
    builder, weights = TORCHVISION[name]
    ours = count_params(create_model(name))
    assert ours == weights.meta["num_params"]  # 5,483,032 Large, 2,542,856 Small
    assert ours == count_params(builder())


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("width_mult", [0.5, 0.75, 1.25])
def test_param_count_equals_torchvision_at_other_widths(name, width_mult):
    builder, _ = TORCHVISION[name]
    assert count_params(create_model(name, width_mult=width_mult)) == count_params(builder(width_mult=width_mult))


@pytest.mark.parametrize("name, expected", [("mobilenetv3_large", 216_589_760), ("mobilenetv3_small", 56_510_400)])
def test_madds_match_torchvision_metadata(name, expected):
    """torchvision publishes 0.217 / 0.057 GFLOPS (multiply-adds) at 224; the paper 219M / 56M."""
    _, weights = TORCHVISION[name]
    madds = count_madds(create_model(name), 224)
    assert round(madds / 1e9, 3) == weights.meta["_ops"]
    assert madds == expected  # conv + linear multiply-accumulates, see models/complexity.py


def test_seed_parameter_counts_measured_with_mindspore():
    """SEED.md: Large/1000 has 5,481,752 trainable + 24,400 BN statistics; Small/10 (head 1280) 1,677,098 + 12,112.

    The seed's hidden head is a conv without bias; ours is a Linear with a bias (1280 more parameters).
    """
    def bn_stats(model):
        return sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))

    large = create_model("mobilenetv3_large")
    assert count_params(large) - large.head_fc.bias.numel() == 5_481_752
    assert bn_stats(large) == 24_400
    small = create_model("mobilenetv3_small", num_classes=10, head_channels=1280)
    assert count_params(small) - small.head_fc.bias.numel() == 1_677_098
    assert bn_stats(small) == 12_112


def test_profile_rows_follow_the_paper_table():
    rows = profile(create_model("mobilenetv3_large"), 224)
    assert [r.name for r in rows][:2] == ["stem", "blocks.0"] and rows[-1].name == "head"
    assert rows[0].output_shape == (16, 112, 112)
    assert rows[-2].output_shape == (960, 7, 7)
    assert sum(r.params for r in rows) == 5_483_032


def test_make_divisible_matches_torchvision():
    from torchvision.models._utils import _make_divisible

    for value in (x / 4 for x in range(4, 4000)):
        assert make_divisible(value, 8) == _make_divisible(value, 8), value


def test_make_divisible_seed_rule_rounds_up():
    assert make_divisible(12.0, round_up=True) == 16  # ceil(12/8)*8
    assert make_divisible(72 * 0.35, round_up=True) == 32  # 25.2 -> 32; nearest gives 24
    assert make_divisible(72 * 0.35) == 24


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes_and_interface(name):
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 96, 128)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, 3, 4)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.equal(logits, model.forward_head(features))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3 and model.model_kwargs["num_classes"] == 3
    assert model.get_classifier() is model.classifier


@pytest.mark.parametrize("name", list_models())
def test_grayscale_input_and_small_images(name):
    model = create_model(name, in_chans=1, num_classes=10).eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name", list_models())
def test_model_kwargs_rebuild_the_same_module(name):
    model = create_model(name, width_mult=0.75, num_classes=5)
    rebuilt = create_model(model.model_name, **model.model_kwargs)
    rebuilt.load_state_dict(model.state_dict())  # strict: same names and shapes
    assert model.model_name == name


def test_head_channels_and_bn_settings():
    model = create_model("mobilenetv3_small", head_channels=1280, bn_eps=1e-3, bn_momentum=0.01)
    assert model.head_fc.out_features == 1280 and model.classifier.in_features == 1280
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in bns)
    assert create_model("mobilenetv3_small").head_fc.out_features == 1024
    assert create_model("mobilenetv3_large").head_fc.out_features == 1280


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    model = create_model("mobilenetv3_large")
    conv = model.blocks[11].expand.conv  # 672 x 112 x 1 x 1: fan_out 672
    assert conv.weight.std().item() == pytest.approx((2 / 672) ** 0.5, rel=0.05)
    dw = model.blocks[12].dw.conv  # depthwise 672 x 1 x 5 x 5: PyTorch's fan_out is 672 * 25, as torchvision's
    assert dw.weight.std().item() == pytest.approx((2 / (672 * 25)) ** 0.5, rel=0.05)
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.count_nonzero(model.classifier.bias) == 0
    assert torch.count_nonzero(model.blocks[3].se.fc1.bias) == 0
    bn = model.blocks[3].dw.bn
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_residual_only_where_resolution_and_width_are_kept():
    model = create_model("mobilenetv3_large")
    residual = [block.use_residual for block in model.blocks]
    assert residual == [True, False, True, False, True, True, False, True, True, True, False, True, False, True, True]
    assert isinstance(model.blocks[0].expand, nn.Identity)  # 16 -> 16: no expand conv
    assert isinstance(model.blocks[1].se, nn.Identity) and not isinstance(model.blocks[3].se, nn.Identity)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(width_mult=-1.0), "width_mult must be a positive number"),
        (dict(width_mult=0), "width_mult must be a positive number"),
        (dict(num_classes=0), "num_classes must be a positive integer"),
        (dict(num_classes=2.5), "num_classes must be a positive integer"),
        (dict(dropout=1.0), "dropout must be in [0, 1)"),
        (dict(in_chans=0), "in_chans must be a positive integer"),
        (dict(bn_eps=0), "bn_eps must be positive"),
        (dict(channel_rounding="floor"), "channel_rounding must be one of nearest, ceil"),
        (dict(widht_mult=1.0), "unknown argument(s) widht_mult; valid arguments: num_classes, width_mult"),
    ],
)
def test_bad_arguments_are_clear_value_errors(kwargs, message):
    with pytest.raises(ValueError) as err:
        create_model("mobilenetv3_small", **kwargs)
    assert message in str(err.value)


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown model 'mobilenetv3_tiny'; choose one of: mobilenetv3_large, "
                                         "mobilenetv3_small"):
        create_model("mobilenetv3_tiny")


def test_reset_classifier_rejects_zero():
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        create_model("mobilenetv3_small").reset_classifier(0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("name", list_models())
def test_scripts(name):
    """Export paths (TorchScript, ONNX) need a model without Python-only control flow."""
    model = create_model(name, num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x))


def test_trains_one_step():
    model = create_model("mobilenetv3_small", num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
