"""The depthwise convolution's small-map training path (a gathered matrix and a batched matmul) computes what
``F.conv2d`` computes, forward and backward, and is only taken where it pays: training on a CPU, small maps."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from mobilenetv3.models import create_model
from mobilenetv3.models.layers import DepthwiseConv2d

# (channels, map size, kernel, stride): MobileNetV3's 5x5 and 3x3 layers on the 1x1 to 7x7 maps of a
# 28-32 px input with a stride-1 stem, odd sizes, and a map smaller than the kernel's reach.
SHAPES = [(576, 2, 5, 1), (288, 4, 5, 2), (96, 7, 5, 2), (40, 5, 5, 1), (16, 3, 3, 2), (8, 4, 3, 1), (8, 1, 5, 1),
          (24, 6, 5, 2)]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("channels,size,kernel,stride", SHAPES)
def test_small_map_path_equals_conv2d_forward_and_backward(channels, size, kernel, stride, memory_format):
    torch.manual_seed(0)
    conv = DepthwiseConv2d(channels, channels, kernel, stride, padding=kernel // 2, groups=channels, bias=True).train()
    x = torch.randn(3, channels, size, size).contiguous(memory_format=memory_format).requires_grad_()
    with mock.patch.object(DepthwiseConv2d, "_matmul_forward", wraps=conv._matmul_forward) as spy:
        out = conv(x)
    assert spy.called, "the small-map path was not taken"
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, conv.weight, conv.bias), grad)
    reference = F.conv2d(x, conv.weight, conv.bias, stride, kernel // 2, groups=channels)
    theirs = torch.autograd.grad(reference, (x, conv.weight, conv.bias), grad)
    assert out.shape == reference.shape
    assert memory_format != torch.channels_last or out.is_contiguous(memory_format=memory_format) or size == 1
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_large_maps_eval_and_tracing_use_conv2d():
    conv = DepthwiseConv2d(8, 8, 3, 1, padding=1, groups=8, bias=False)
    with mock.patch.object(DepthwiseConv2d, "_matmul_forward", side_effect=AssertionError("matmul path")):
        conv.train()(torch.randn(2, 8, 14, 14))  # 196 pixels: more than 2 * 3 * 3
        conv.eval()(torch.randn(2, 8, 2, 2))  # evaluation and export: F.conv2d
        traced = torch.jit.trace(conv.eval(), torch.randn(1, 8, 2, 2))
    assert "matmul" not in str(traced.graph) and "bmm" not in str(traced.graph)


def test_model_keeps_its_parameters_and_scripts():
    model = create_model("mobilenetv3_small", num_classes=10, in_chans=1, stem_stride=1)
    depthwise = [name for name, m in model.named_modules() if isinstance(m, DepthwiseConv2d)]
    assert len(depthwise) == 11 and all(name.endswith(".dw.conv") for name in depthwise)
    assert not any(isinstance(m, DepthwiseConv2d) for name, m in model.named_modules() if "dw" not in name)
    assert all(type(m) is not DepthwiseConv2d or m.groups == m.in_channels for m in model.modules())
    scripted = torch.jit.script(model.eval())
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(scripted(x), model(x))


def test_training_step_matches_conv2d_model():
    """A whole training step of a stride-1 Small at 28 px: the same loss and gradients as with F.conv2d."""
    torch.manual_seed(1)
    model = create_model("mobilenetv3_small", num_classes=10, in_chans=1, stem_stride=1, dropout=0.0).train()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss = F.cross_entropy(model(x), y)
    ours = torch.autograd.grad(loss, list(model.parameters()))
    model.load_state_dict(state)
    with mock.patch.object(DepthwiseConv2d, "forward", lambda self, t: F.conv2d(
            t, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)):
        reference = F.cross_entropy(model(x), y)
        theirs = torch.autograd.grad(reference, list(model.parameters()))
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
