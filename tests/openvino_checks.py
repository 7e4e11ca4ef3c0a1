"""OpenVINO: the fp32 IR agrees with PyTorch, carries the model card that eval and predict use, INT8 by NNCF
records its calibration set, and the precision run is always the one stated (bf16 refused without native bf16).

Its mistakes (one line, exit code 2) are cases of test_bad_input.py. Skipped without the openvino extra.
"""
import json

import pytest
import torch
from PIL import Image

from builders import write_image_folder, write_weights
from conftest import run_cli

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

from mobilenetv3.export import (CALIBRATION_KEY, INT8_KEY, METADATA_KEY, OpenVinoModule, export_verified,  # noqa: E402
                                open_exported)

CLASSES = 4
PREPROCESSING = dict(resize=32, crop=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3, in_chans=3)
SYNTHETIC = ["--dataset", "synthetic", "--synthetic-samples", "40", "--seed", "2"]  # no --image-size: the IR's own


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model whose outputs differ from image to image, with class names and preprocessing."""
    return write_weights(tmp_path_factory.mktemp("ov") / "tiny.pt", num_classes=CLASSES, responsive=True,
                         preprocessing=PREPROCESSING)


@pytest.fixture(scope="module")
def ir(checkpoint):
    """``mobilenetv3 export --format openvino`` of the checkpoint, checked on synthetic validation images."""
    out = checkpoint.with_name("tiny.xml")
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "openvino", "--output", out, *SYNTHETIC[:2])
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i in range(3):
        pixels = torch.randint(0, 256, (40, 36, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"img{i}.png")
    return folder


def test_fp32_ir_agrees_with_pytorch_on_random_and_real_inputs(ir):
    out, result = ir
    assert out.is_file() and out.with_suffix(".bin").is_file()
    lines = result.stdout.splitlines()
    assert lines[0] == f"exported openvino: {out}"
    checks = [line for line in lines if "max |difference| to PyTorch" in line]
    assert [line.split("(")[0].strip() for line in checks] == ["random inputs", "real inputs"]
    for line in checks:
        assert float(line.split("PyTorch ")[1].split(",")[0]) <= 1e-4 and "agreement 100.00%" in line
    assert result.stderr == ""  # no tracer warnings, no OpenVINO notes


def test_ir_agrees_with_pytorch_within_the_tolerance_for_both_architectures(tmp_path):
    from mobilenetv3.models import create_model

    for name in ("mobilenetv3_small", "mobilenetv3_large"):
        model = create_model(name, num_classes=7, width_mult=0.5).eval()
        figures = export_verified(model, "openvino", tmp_path / f"{name}.xml", torch.randn(2, 3, 64, 64),
                                  softmax=name.endswith("large"))
        assert figures["random"]["max_abs_diff"] <= 1e-4 and figures["random"]["compared"] == 4
        x = torch.randn(5, 3, 64, 64)  # a batch size it was not converted with: the batch is dynamic
        reference = model(x).softmax(1) if name.endswith("large") else model(x)
        torch.testing.assert_close(OpenVinoModule(tmp_path / f"{name}.xml")(x), reference, atol=1e-4, rtol=0)


def test_runtime_info_carries_the_card_and_the_module_reads_it(ir, checkpoint):
    rt = ov.Core().read_model(str(ir[0]))
    card = json.loads(rt.get_rt_info(METADATA_KEY).astype(str))
    assert card["classes"] == [f"c{k}" for k in range(CLASSES)] and card["softmax"] is False
    assert card["preprocessing"]["crop"] == 32 and card["model_name"] == "mobilenetv3_small"
    module = OpenVinoModule(ir[0], threads=1, hint="throughput")
    assert (module.classes, module.num_classes, module.in_chans) == (card["classes"], CLASSES, 3)
    assert module.preprocessing == card["preprocessing"] and module.model_name == "mobilenetv3_small"
    assert (module.runtime, module.precision, module.quantized) == ("openvino", "fp32", False)
    assert module.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32  # set, not OpenVINO's default
    assert module.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(module.compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"


def test_predict_through_the_ir_gives_the_checkpoints_answers(ir, checkpoint, images):
    by_ir = run_cli("predict", images, "--exported", ir[0], "--json", "--topk", "3")
    by_weights = run_cli("predict", images, "--checkpoint", checkpoint, "--json", "--topk", "3")
    assert by_ir.returncode == by_weights.returncode == 0, by_ir.stderr
    ir_answers, weights_answers = json.loads(by_ir.stdout), json.loads(by_weights.stdout)
    assert len(ir_answers) == 3
    for got, expected in zip(ir_answers, weights_answers):
        assert (got["runtime"], got["precision"]) == ("openvino", "fp32")
        assert [t["class"] for t in got["top"]] == [t["class"] for t in expected["top"]]
        for a, b in zip(got["top"], expected["top"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
    table = run_cli("predict", images, "--exported", ir[0])
    assert table.stdout.splitlines()[0] == f"model: {ir[0]} (openvino fp32)"


def test_eval_of_the_ir_uses_its_card_and_says_runtime_and_precision(ir, checkpoint, tmp_path):
    by_ir = run_cli("eval", "--exported", ir[0], *SYNTHETIC, "--json", "--out", tmp_path / "ir")
    by_weights = run_cli("eval", "--checkpoint", checkpoint, *SYNTHETIC, "--json", "--out", tmp_path / "pt")
    assert by_ir.returncode == by_weights.returncode == 0, by_ir.stderr
    got, expected = json.loads(by_ir.stdout), json.loads(by_weights.stdout)
    assert (got["runtime"], got["precision"]) == ("openvino", "fp32")
    assert (expected["runtime"], expected["precision"]) == ("pytorch", "fp32")
    assert got["classes"] == [f"c{k}" for k in range(CLASSES)]
    assert got["preprocessing_source"] == "the OpenVINO IR's own (saved in it)"
    assert got["count"] == expected["count"] == 10 and got["top1"] == expected["top1"]
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-4)
    report = json.loads((tmp_path / "ir" / "report.json").read_text())
    assert (report["runtime"], report["precision"]) == ("openvino", "fp32")
    table = run_cli("eval", "--exported", ir[0], *SYNTHETIC, "--out", tmp_path / "t")
    assert "each once (synthetic val, openvino fp32, 0 unreadable skipped)" in table.stdout


def test_an_onnx_file_runs_in_openvino_too(checkpoint, tmp_path, images):
    onnx_path = tmp_path / "m.onnx"
    assert run_cli("export", "--checkpoint", checkpoint, "--output", onnx_path, "--no-dataset").returncode == 0
    by_ort = run_cli("predict", images, "--onnx", onnx_path, "--json")
    by_ov = run_cli("predict", images, "--exported", onnx_path, "--runtime", "openvino", "--json")
    assert by_ov.returncode == 0, by_ov.stderr
    for a, b in zip(json.loads(by_ov.stdout), json.loads(by_ort.stdout)):
        assert (a["runtime"], b["runtime"]) == ("openvino", "onnxruntime")
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
    module = open_exported(onnx_path, runtime="openvino")
    assert module.classes == [f"c{k}" for k in range(CLASSES)] and module.precision == "fp32"


@pytest.fixture(scope="module")
def int8_export(checkpoint, tmp_path_factory):
    """``mobilenetv3 export --format openvino-int8`` calibrated on 8 images of a small ImageFolder."""
    tmp_path = tmp_path_factory.mktemp("int8")
    root = write_image_folder(tmp_path / "data", {"train": 5, "val": 3}, classes=[f"c{k}" for k in range(CLASSES)])
    out = tmp_path / "m.int8.xml"
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "openvino-int8", "--output", out,
                     "--dataset", "imagenet", "--data-path", root, "--calibration-images", 8, "--batch-size", 4)
    assert result.returncode == 0, result.stderr
    return out, result, root


def test_int8_export_calibrates_on_an_image_folder_and_records_it(int8_export):
    out, result, root = int8_export
    tmp_path = out.parent
    assert result.stderr == ""  # NNCF's per-layer notes and progress bars stay off the terminal
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"exported openvino-int8: {out}",
                         f"  calibrated on 8 of {5 * CLASSES} training images, drawn at random with seed 0"]
    assert any("INT8 top-1" in line and f"({3 * CLASSES} images)" in line for line in lines)
    assert out.with_suffix(".bin").is_file() and (tmp_path / "m.xml").is_file()  # and the fp32 IR it came from
    rt = ov.Core().read_model(str(out))
    assert json.loads(rt.get_rt_info(CALIBRATION_KEY).astype(str)) == dict(
        dataset="imagenet", source=str(root / "train"), split="train", images=8, of=5 * CLASSES, seed=0)
    assert json.loads(rt.get_rt_info(INT8_KEY).astype(str))["kept_fp32"] == ["se", "classifier"]
    assert json.loads(rt.get_rt_info(METADATA_KEY).astype(str))["classes"][0] == "c0"  # the card stays
    assert inside_kept_layers(rt) == []  # (the SE product is quantised: it is the project conv's input)
    module = open_exported(out)
    assert (module.precision, module.quantized) == ("int8", True)


def inside_kept_layers(ov_model) -> list:
    """The activation quantisers on inputs of SE layers or the classifier: named after the layer whose output
    they quantise, ``<producer>/fq_output_0`` (weights are stored as int8 constants, without quantisers)."""
    names = [op.get_friendly_name() for op in ov_model.get_ops() if op.get_type_name() == "FakeQuantize"]
    return [name for name in names if ".se/aten::adaptive" in name or ".se.relu" in name or "head_act" in name]


def test_int8_can_quantise_every_layer(int8_export):
    from mobilenetv3.export import quantize_openvino

    out = int8_export[0]
    everything = quantize_openvino(out.with_name("m.xml"), out.with_name("all.int8.xml"), [torch.randn(2, 3, 32, 32)],
                                   keep_fp32=())
    count = {path.name: sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(path)).get_ops())
             for path in (everything, out)}
    assert count["all.int8.xml"] > count["m.int8.xml"] > 0
    assert inside_kept_layers(ov.Core().read_model(str(everything)))


def test_bf16_is_refused_in_one_line_without_native_bf16(ir, images):
    from mobilenetv3.errors import UsageError

    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        module = OpenVinoModule(ir[0], precision="bf16")
        assert module.precision == "bf16"
        assert module.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
        return
    with pytest.raises(UsageError, match="--precision bf16 needs a CPU with native bf16"):
        OpenVinoModule(ir[0], precision="bf16")
    result = run_cli("predict", images, "--exported", ir[0], "--precision", "bf16")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()] and "native bf16" in result.stderr
