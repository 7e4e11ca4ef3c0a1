"""The phones' formats: LiteRT (``.tflite``), Core ML (``.mlpackage``) and ncnn (``.ncnn.param`` + ``.ncnn.bin``),
each exported from a tiny Fashion-MNIST model and checked against eager PyTorch on real Fashion-MNIST test images,
with their hard activations kept; and their mistakes (a missing extra, an unwritable output, a damaged file given
to eval or predict) one line, exit code 2.

Each converter is an extra: its tests are skipped without it. Core ML predicts only on macOS, where its prediction
test runs; elsewhere the package's program is checked. LiteRT's INT8 conversion (about 25 s) is ``slow``.
"""
import json
import platform

import pytest
import torch

from mobilenetv3.data import eval_loader
from mobilenetv3.data.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_SYSTEM_DIR, build_dataset, subset
from mobilenetv3.data.transforms import Preprocessing
from mobilenetv3.errors import UsageError
from mobilenetv3.export import export_verified
from mobilenetv3.weights import model_from_weights, read_weights

from builders import write_weights
from conftest import run_cli

needs_fashion_mnist = pytest.mark.skipif(not (FASHION_MNIST_SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                                         reason="dataset-fashion-mnist is not installed")
PRE = dict(resize=28, crop=28, interpolation="bilinear", mean=(0.286,), std=(0.353,), in_chans=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny 1-channel Fashion-MNIST model (untrained, outputs that differ from image to image) with the
    dataset's class names and preprocessing, saved by a run on fashion-mnist."""
    return write_weights(tmp_path_factory.mktemp("phone") / "fm.pt", num_classes=10, responsive=True, in_chans=1,
                         classes=FASHION_MNIST_CLASSES, preprocessing=PRE,
                         trained_on=dict(dataset="fashion-mnist", image_size=28))


@pytest.fixture(scope="module")
def model(checkpoint):
    return model_from_weights(read_weights(checkpoint)).eval()


@pytest.fixture(scope="module")
def images():
    """48 Fashion-MNIST test images, as the eval protocol gives them (N, 1, 28, 28)."""
    if not (FASHION_MNIST_SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    val = build_dataset("fashion-mnist", None, "val")
    batches = eval_loader(subset(val, list(range(0, 4800, 100))), Preprocessing.from_dict(PRE), batch_size=16)
    return [batch.images for batch in batches]


def hard_activations(model) -> tuple[int, int]:
    return (sum(isinstance(m, torch.nn.Hardswish) for m in model.modules()),
            sum(isinstance(m, torch.nn.Hardsigmoid) for m in model.modules()))


# --------------------------------------------------------------------------------------------- ncnn
@needs_fashion_mnist
def test_ncnn_agrees_with_pytorch_in_fp32_and_in_its_fp16_storage(model, images, tmp_path):
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    from mobilenetv3.export.ncnn import NcnnModule

    path = tmp_path / "fm.ncnn.param"
    result = export_verified(model, "ncnn", path, torch.randn(2, 1, 28, 28), real_inputs=images)
    assert result["real"]["compared"] == 48 and result["real"]["max_abs_diff"] <= 1e-4
    assert result["fp16"]["top1_agreement"] >= 0.95 and result["fp16"]["max_abs_diff"] <= 0.05
    hard_swish, hard_sigmoid = hard_activations(model)
    assert result["operators"]["HardSwish"] == hard_swish and result["operators"]["HardSigmoid"] == hard_sigmoid
    assert "BatchNorm" not in result["operators"] and "Clip" not in result["operators"]  # folded; not decomposed
    card = json.loads((tmp_path / "fm.ncnn.json").read_text())
    assert card["classes"] == list(FASHION_MNIST_CLASSES) and card["preprocessing"]["std"] == [0.353]
    runner, x = NcnnModule(path), torch.cat(images)[:5]
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=0)
    assert runner.classes == list(FASHION_MNIST_CLASSES) and runner.num_classes == 10 and runner.in_chans == 1


# ------------------------------------------------------------------------------------------- Core ML
@pytest.fixture(scope="module")
def coreml_fp16(model, tmp_path_factory):
    pytest.importorskip("coremltools")
    path = tmp_path_factory.mktemp("coreml") / "fm.mlpackage"
    return path, export_verified(model, "coreml", path, torch.randn(2, 1, 28, 28), precision="fp16")


def test_coreml_package_has_the_image_input_labels_and_hard_activations(model, coreml_fp16):
    path, result = coreml_fp16
    summary = result["coreml"]
    assert summary["kind"] == "mlProgram" and summary["precision"] == "fp16"
    image = summary["input"]
    assert (image["kind"], image["color"], image["width"], image["height"]) == ("imageType", "GRAYSCALE", 28, 28)
    # the normalisation (pixel / 255 - 0.286) / 0.353 as Core ML's scale * pixel + bias
    assert image["scale"] == pytest.approx(1 / (255 * 0.353), rel=1e-6)
    assert image["bias"] == pytest.approx([-0.286 / 0.353], rel=1e-6)
    assert summary["outputs"] == ["classLabel", "classLabel_probs"]
    assert summary["classes"] == list(FASHION_MNIST_CLASSES)
    assert summary["ops"]["sigmoid_hard"] == sum(hard_activations(model))
    assert not {"batch_norm", "clip", "relu6"} & set(summary["ops"])
    assert summary["card"]["classes"] == list(FASHION_MNIST_CLASSES) and summary["card"]["softmax"] is True


@pytest.mark.slow
def test_coreml_fp32_package_of_an_rgb_model_with_per_channel_std(tmp_path):
    pytest.importorskip("coremltools")
    from mobilenetv3.export.coreml import spec_summary

    rgb = dict(resize=32, crop=32, interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
               in_chans=3)
    model = model_from_weights(read_weights(write_weights(tmp_path / "rgb.pt", num_classes=4, preprocessing=rgb)))
    result = export_verified(model.eval(), "coreml", tmp_path / "rgb.mlpackage", torch.randn(2, 3, 32, 32),
                             precision="fp32")
    summary = spec_summary(tmp_path / "rgb.mlpackage")
    assert summary["precision"] == "fp32" and summary["input"]["color"] == "RGB" and result["coreml"]
    assert summary["input"]["scale"] == pytest.approx(1 / (255 * 0.229), rel=1e-6)
    assert summary["input"]["bias"] == pytest.approx([-m / 0.229 for m in rgb["mean"]], rel=1e-6)


@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML predicts only on macOS")
def test_coreml_predictions_agree_with_pytorch(model, coreml_fp16, images):
    from mobilenetv3.export.coreml import CoreMlModule

    runner, x = CoreMlModule(coreml_fp16[0]), torch.cat(images)
    with torch.no_grad():
        expected = model(x).softmax(1)
    actual = runner(x)
    assert (actual.argmax(1) == expected.argmax(1)).float().mean() >= 0.95
    assert (actual - expected).abs().max() <= 0.02


def test_coreml_off_macos_is_one_line(coreml_fp16, tmp_path):
    if platform.system() == "Darwin":
        pytest.skip("Core ML runs here")
    result = run_cli("eval", "--exported", coreml_fp16[0], "--out", tmp_path)
    assert result.returncode == 2 and "Core ML runs only on macOS" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -------------------------------------------------------------------------------------------- LiteRT
@needs_fashion_mnist
@pytest.mark.parametrize("nhwc", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_litert_agrees_with_pytorch_and_keeps_hard_swish(model, images, tmp_path, nhwc, capfd):
    pytest.importorskip("litert_torch")
    from mobilenetv3.export.litert import LAYOUT_KEY, LiteRtModule, read_metadata

    path = tmp_path / "fm.tflite"
    result = export_verified(model, "litert", path, torch.randn(2, 1, 28, 28), real_inputs=images, nhwc=nhwc)
    assert result["real"]["compared"] == 48 and result["real"]["max_abs_diff"] <= 1e-4
    hard_swish, hard_sigmoid = hard_activations(model)
    assert result["operators"]["HARD_SWISH"] == hard_swish and result["operators"]["MUL"] == 2 * hard_sigmoid
    assert not {"RELU6", "LOGISTIC"} & set(result["operators"])
    meta = read_metadata(path)
    assert meta["mobilenetv3"]["classes"] == list(FASHION_MNIST_CLASSES) and meta[LAYOUT_KEY] == ("NHWC" if nhwc
                                                                                                    else "NCHW")
    runner = LiteRtModule(path)
    assert runner.input_shape == ((28, 28, 1) if nhwc else (1, 28, 28))
    x = torch.cat(images)[:7]
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=0)
    assert "XNNPACK" not in capfd.readouterr().err  # the interpreter's C++ note on every load is held


@needs_fashion_mnist
@pytest.mark.slow
def test_litert_int8_is_calibrated_on_real_images_and_agrees(model, images, tmp_path):
    pytest.importorskip("litert_torch")
    from mobilenetv3.export.litert import LiteRtModule, read_metadata

    calibration, held_out = images[:2], images[2:]
    path = tmp_path / "fm.int8.tflite"
    result = export_verified(model, "litert-int8", path, torch.randn(2, 1, 28, 28), real_inputs=held_out,
                             calibration=calibration, calibration_info=dict(images=32))
    assert result["operators"]["HARD_SWISH"] == hard_activations(model)[0]
    runner = LiteRtModule(path)
    assert runner.precision == "int8" and read_metadata(path)["mobilenetv3.calibration"] == dict(images=32)
    x = torch.cat(held_out)
    with torch.no_grad():
        expected = model(x)
    # an untrained model's logits lie close together: the 99% of a trained model is the accuracy table's
    assert (runner(x).argmax(1) == expected.argmax(1)).float().mean() >= 0.75
    assert (runner(x) - expected).abs().max() <= 0.1 * expected.abs().max()


# ---------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("fmt, module, extra", [("ncnn", "ncnn", "ncnn"), ("coreml", "coremltools", "coreml"),
                                                ("litert", "ai_edge_litert", "litert")])
def test_a_missing_extra_is_one_line_naming_it(fmt, module, extra, checkpoint, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name.split(".")[0] == module:
            raise ImportError(f"No module named {module!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing)
    result = run_cli("export", "--checkpoint", checkpoint, "--format", fmt, "--output", tmp_path / "out",
                     "--no-dataset")
    assert result.returncode == 2 and f"pip install 'mobilenetv3[{extra}]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt, name", [("ncnn", "m.ncnn.param"), ("coreml", "m.mlpackage"), ("litert", "m.tflite")])
def test_an_unwritable_output_is_one_line(fmt, name, checkpoint, tmp_path):
    pytest.importorskip({"ncnn": "pnnx", "coreml": "coremltools", "litert": "litert_torch"}[fmt])
    result = run_cli("export", "--checkpoint", checkpoint, "--format", fmt, "--output", tmp_path / "no" / name,
                     "--no-dataset")
    assert result.returncode == 2 and f"folder {tmp_path / 'no'} does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_wrong_suffix_for_the_format_is_one_line(checkpoint, tmp_path):
    pytest.importorskip("pnnx")
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "ncnn", "--output", tmp_path / "m.param",
                     "--no-dataset")
    assert result.returncode == 2 and "does not end in .ncnn.param" in result.stderr


def test_options_of_other_formats_are_refused(checkpoint, tmp_path):
    nhwc = run_cli("export", "--checkpoint", checkpoint, "--format", "onnx", "--nhwc", "--no-dataset",
                   "--output", tmp_path / "m.onnx")
    precision = run_cli("export", "--checkpoint", checkpoint, "--format", "ncnn", "--precision", "fp16",
                        "--no-dataset", "--output", tmp_path / "m.ncnn.param")
    assert nhwc.returncode == 2 and "--format litert" in nhwc.stderr
    assert precision.returncode == 2 and "--format coreml" in precision.stderr


DAMAGED = {
    "m.tflite": b"\x1c\x00\x00\x00NOPE" + bytes(range(200)),  # no TFL3 identifier
    "m.ncnn.param": b"7767517\n3 3\nInput in0 0 1 in0\n",  # says 3 layers, holds 1
    "text.ncnn.param": b"\x89PNG\r\n\x1a\n" + bytes(100),  # not text at all
}


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_file_given_to_eval_or_predict_is_one_line(command, name, tmp_path):
    path = tmp_path / name
    path.write_bytes(DAMAGED[name])
    if name.endswith(".ncnn.param"):
        path.with_name(name.replace(".param", ".bin")).write_bytes(bytes(64))
    if command == "eval":
        result = run_cli("eval", "--exported", path, "--out", tmp_path / "report")
    else:
        from PIL import Image

        Image.new("L", (28, 28)).save(tmp_path / "image.png")
        result = run_cli("predict", tmp_path / "image.png", "--exported", path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] or "extra" in lines[0], lines
    assert "Traceback" not in result.stderr


def test_a_phone_runtime_runs_only_its_own_files(tmp_path):
    from mobilenetv3.export import open_exported

    for runtime, suffix in (("litert", ".tflite"), ("ncnn", ".ncnn.param"), ("coreml", ".mlpackage")):
        with pytest.raises(UsageError, match=rf"--runtime {runtime} runs its own files \({suffix}\), not "):
            open_exported(tmp_path / "m.onnx", runtime=runtime)


def test_missing_ncnn_weights_are_one_line(tmp_path):
    pytest.importorskip("ncnn")
    from mobilenetv3.export.ncnn import NcnnModule

    path = tmp_path / "m.ncnn.param"
    path.write_text("7767517\n1 1\nInput in0 0 1 in0\n")
    with pytest.raises(UsageError, match="its weights m.ncnn.bin are not beside it"):
        NcnnModule(path)
