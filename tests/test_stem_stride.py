"""``stem_stride=1``: the small-image stem (the first convolution's stride 2 removed for 28-32 px inputs) is a
named model option: the same weights' shapes, twice the resolution through the network, saved with the
weights, rebuilt from them, exported, and refused where a framework's own MobileNetV3 would misread it."""
import pytest
import torch
import torchvision

from mobilenetv3 import load_model
from mobilenetv3.convert import TORCHVISION_KWARGS, from_torchvision
from mobilenetv3.models import create_model

from builders import tiny_flags
from conftest import run_cli


def test_stride_1_keeps_twice_the_resolution_with_the_same_weights():
    strided, full = (create_model("mobilenetv3_small", num_classes=10, in_chans=1, stem_stride=s) for s in (2, 1))
    assert {k: v.shape for k, v in strided.state_dict().items()} == {k: v.shape for k, v in full.state_dict().items()}
    x = torch.randn(2, 1, 32, 32)
    assert strided.forward_features(x).shape[-2:] == (1, 1)
    assert full.forward_features(x).shape[-2:] == (2, 2)
    # torchvision's network with its first stride set to 1 is the same function (our layout, their model)
    theirs = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    theirs.features[0][0].stride = (1, 1)
    ours = create_model("mobilenetv3_small", num_classes=10, stem_stride=1, **TORCHVISION_KWARGS).eval()
    ours.load_state_dict(from_torchvision(theirs.state_dict()))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_other_strides_are_refused():
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2, got 3"):
        create_model("mobilenetv3_small", stem_stride=3)


def test_a_run_with_stem_stride_1_saves_rebuilds_and_exports_it(tmp_path):
    result = run_cli(*tiny_flags(tmp_path / "run", epochs=1), "--stem-stride", "1")
    assert result.returncode == 0, result.stderr
    model = load_model(tmp_path / "run" / "last.pt")
    assert model.stem.conv.stride == (1, 1) and model.model_kwargs["stem_stride"] == 1
    assert "stem_stride: 1" in (tmp_path / "run" / "config.yaml").read_text()
    exported = run_cli("export", "--checkpoint", tmp_path / "run" / "last.pt", "--no-dataset", "--output",
                       tmp_path / "m.onnx")
    assert exported.returncode == 0, exported.stderr
    from mobilenetv3.export import OnnxModule

    onnx = OnnxModule(tmp_path / "m.onnx")
    x = torch.randn(2, model.in_chans, 32, 32)
    torch.testing.assert_close(onnx(x), model(x), atol=1e-4, rtol=1e-4)
    refused = run_cli("convert", tmp_path / "run" / "last.pt", tmp_path / "tv.pth", "--to", "torchvision")
    assert refused.returncode == 2 and "stride-2 stem" in refused.stderr
    assert not (tmp_path / "tv.pth").exists()


def test_the_default_stride_follows_the_image_size_and_old_configs_keep_2():
    from mobilenetv3.config import Config, load_config

    assert load_config(None).model.stem_stride == 1  # the demo: 28 px
    assert load_config(None, dict(image_size=32)).model.stem_stride == 1
    big = load_config(None, dict(image_size=224))
    assert big.model.stem_stride == 2 and big.source_of("stem_stride") == "the default for 224 px images"
    assert load_config(None, dict(image_size=224, stem_stride=1)).model.stem_stride == 1  # given: kept
    assert load_config("cifar10-cpu").model.stem_stride == 2  # the seed's recipes keep the paper's stem
    saved_before_the_option = load_config(None, dict(image_size=28)).to_dict()
    del saved_before_the_option["model"]["stem_stride"]
    assert Config.from_dict(saved_before_the_option).model.stem_stride == 2
