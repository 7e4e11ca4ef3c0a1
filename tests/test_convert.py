"""torchvision and timm weights on our model: the same logits (eval mode), and exact round trips."""
import pytest
import torch
import torchvision
from torch import nn

from mobilenetv3.convert import (
    TORCHVISION_KWARGS,
    check_shapes,
    from_timm,
    from_torchvision,
    to_timm,
    to_torchvision,
)
from mobilenetv3.models import create_model


def randomise(model: nn.Module) -> nn.Module:
    """Give every parameter and BN statistic a non-default value, keeping activations well scaled.

    BN running statistics are set to one batch's statistics (as in the MindSpore fixture), then
    perturbed, so a mis-mapped statistic or a wrong eps changes the logits; the head is re-drawn
    at unit scale so the logits are O(1) and a 1e-5 tolerance means something.
    """
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.momentum = 1.0  # running stats := the next batch's statistics
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0, module.in_features ** -0.5)
                module.bias.normal_(0, 0.1)
            elif isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.normal_(0, 0.1)
        model.train()(torch.randn(4, 3, 224, 224))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                noise = torch.randn_like(module.running_mean) * module.running_var.sqrt()
                module.running_mean.add_(0.05 * noise)
                module.running_var.mul_(torch.empty_like(module.running_var).uniform_(0.95, 1.05))
    return model.eval()


def assert_same_logits(reference: nn.Module, ours: nn.Module):
    torch.manual_seed(2)
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert expected.std() > 0.1, "logits too small for the tolerance to mean anything"
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert torch.equal(actual.argmax(1), expected.argmax(1))


TORCHVISION_CASES = [
    ("mobilenet_v3_large", "mobilenetv3_large", 1.0),
    ("mobilenet_v3_small", "mobilenetv3_small", 1.0),
    ("mobilenet_v3_large", "mobilenetv3_large", 0.75),
    ("mobilenet_v3_small", "mobilenetv3_small", 0.75),
]


@pytest.mark.parametrize("tv_name, name, width_mult", TORCHVISION_CASES)
def test_torchvision_weights_give_torchvision_logits(tv_name, name, width_mult):
    reference = randomise(getattr(torchvision.models, tv_name)(width_mult=width_mult, num_classes=37))
    state_dict = from_torchvision(reference.state_dict())
    ours = create_model(name, width_mult=width_mult, num_classes=37, **TORCHVISION_KWARGS).eval()
    check_shapes(state_dict, ours)
    ours.load_state_dict(state_dict)
    assert_same_logits(reference, ours)


@pytest.mark.parametrize("tv_name, name, width_mult", TORCHVISION_CASES[:2])
def test_round_trip_to_torchvision_is_exact(tv_name, name, width_mult):
    reference = randomise(getattr(torchvision.models, tv_name)())
    back = to_torchvision(from_torchvision(reference.state_dict()))
    original = reference.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_bn_eps_matters():
    """Guard that the parity test can fail: torchvision's weights with our default eps give other logits."""
    reference = randomise(torchvision.models.mobilenet_v3_small())
    ours = create_model("mobilenetv3_small").eval()  # eps 1e-5, torchvision's is 1e-3
    ours.load_state_dict(from_torchvision(reference.state_dict()))
    with pytest.raises(AssertionError):
        assert_same_logits(reference, ours)


@pytest.mark.parametrize("timm_name, name", [("mobilenetv3_large_100", "mobilenetv3_large"),
                                             ("mobilenetv3_small_100", "mobilenetv3_small")])
def test_timm_weights_give_timm_logits(timm_name, name):
    timm = pytest.importorskip("timm")
    reference = randomise(timm.create_model(timm_name, num_classes=37))
    state_dict = from_timm(reference.state_dict())
    ours = create_model(name, num_classes=37).eval()
    check_shapes(state_dict, ours)
    ours.load_state_dict(state_dict)
    assert_same_logits(reference, ours)
    back = to_timm(state_dict)
    original = reference.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_check_shapes_names_the_first_mismatch():
    state_dict = from_torchvision(torchvision.models.mobilenet_v3_small(num_classes=10).state_dict())
    with pytest.raises(ValueError, match=r"tensor 'classifier.weight' has shape \(10, 1024\), "
                                         r"mobilenetv3_small expects \(1000, 1024\)"):
        check_shapes(state_dict, create_model("mobilenetv3_small"))
    with pytest.raises(ValueError, match=r"tensor 'blocks.1.expand.conv.weight' has shape \(72, 16, 1, 1\), "
                                         r"mobilenetv3_large expects \(64, 16, 1, 1\)"):
        check_shapes(state_dict, create_model("mobilenetv3_large"))


def test_foreign_keys_are_refused_not_dropped():
    state_dict = dict(torchvision.models.mobilenet_v3_small().state_dict())
    state_dict["aux_head.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="unexpected tensor 'aux_head.weight'"):
        from_torchvision(state_dict)
