"""OpenVINO: the fp32 IR agrees with PyTorch, carries the model card that eval and predict use, INT8 by NNCF
records its calibration set, and the precision run is always the one stated (bf16 refused without native bf16).

Its mistakes (one line, exit code 2) are cases of test_bad_input.py. Skipped without the openvino extra. NNCF's
accuracy control (a minute on 2 cores) is ``slow`` (``pytest -m slow``).
"""
import json

import pytest
import torch

from builders import write_image_folder
from conftest import not_progress, run_cli
from export_check_fixtures import CLASSES, RECORD, SYNTHETIC, export_checkpoint

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

from mobilenetv3.export import CALIBRATION_KEY, INT8_KEY, METADATA_KEY, OpenVinoModule, export_verified, open_exported  # noqa: E402

pytest_plugins = ["export_check_fixtures"]  # the fixtures checkpoint and images


@pytest.fixture(scope="module")
def ir(checkpoint):
    """``mobilenetv3 export --format openvino`` of the checkpoint, checked on synthetic validation images."""
    return export_checkpoint(checkpoint, "openvino", ".xml")


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
    assert card["dataset"] == module.dataset == RECORD  # the data it was trained on, beside the card
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


def test_eval_of_the_ir_scores_the_data_it_records(ir, checkpoint, tmp_path):
    """No --dataset: the IR's training data, as the checkpoint's own run config gives it to eval."""
    by_ir = run_cli("eval", "--exported", ir[0], "--json", "--out", tmp_path / "ir")
    by_weights = run_cli("eval", "--checkpoint", checkpoint, "--json", "--out", tmp_path / "pt")
    assert by_ir.returncode == by_weights.returncode == 0, by_ir.stderr
    got, expected = json.loads(by_ir.stdout), json.loads(by_weights.stdout)
    assert (got["dataset"], got["data_path"], got["count"]) == ("synthetic", "synthetic(seed=3)", 10)
    assert (got["count"], got["top1"], got["data_path"]) == (expected["count"], expected["top1"], expected["data_path"])


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
    # NNCF's per-layer notes and progress bars stay off the terminal; the decoder's one line per folder (the
    # folder's CMYK JPEGs) is all there is
    assert all("decoded as an image viewer shows them" in line for line in not_progress(result.stderr))
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"exported openvino-int8: {out}",
                         f"  calibrated on 8 of {5 * CLASSES} training images, drawn at random with seed 0"]
    assert any("INT8 top-1" in line and f"({3 * CLASSES} images)" in line for line in lines)
    assert out.with_suffix(".bin").is_file() and (tmp_path / "m.xml").is_file()  # and the fp32 IR it came from
    rt = ov.Core().read_model(str(out))
    assert json.loads(rt.get_rt_info(CALIBRATION_KEY).astype(str)) == dict(
        dataset="imagenet", source=str(root / "train"), split="train", images=8, of=5 * CLASSES, seed=0)
    record = json.loads(rt.get_rt_info(INT8_KEY).astype(str))
    assert record["kept_fp32"] == ["se", "classifier"] and record["accuracy_control"] is None
    assert (record["overflow_fix"], record["activation_ranges"]) == ("enable", "histogram")  # the defaults
    layers = module_layers()  # 54: stem, expand, dw, SE fc1/fc2, project, final_conv, head_fc, classifier
    kept = [name for name in layers if ".se." in name or name == "classifier"]
    assert record["fp32_layers"] == kept and record["int8_layers"] == len(layers) - len(kept) == 35
    assert f"  35 layers in INT8, {len(kept)} in fp32 (overflow fix enable, histogram activation ranges)" in lines
    assert any("same top-1 answer on" in line for line in lines if "INT8 top-1" in line)
    assert json.loads(rt.get_rt_info(METADATA_KEY).astype(str))["classes"][0] == "c0"  # the card stays
    assert inside_kept_layers(rt) == []  # (the SE product is quantised: it is the project conv's input)
    module = open_exported(out)
    assert (module.precision, module.quantized) == ("int8", True)
    assert module.dataset == open_exported(tmp_path / "m.xml").dataset == RECORD  # both files know their data


def module_layers() -> list:
    """The module paths of the tiny model's convolutions and Linears, in order (``stem``, ``blocks.0.dw``, ...)."""
    from mobilenetv3.models import create_model

    model = create_model("mobilenetv3_small", num_classes=CLASSES, width_mult=0.5)
    return [name.removesuffix(".conv") for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))]


def inside_kept_layers(ov_model) -> list:
    """The activation quantisers on inputs of SE layers or the classifier: named after the layer whose output
    they quantise, ``<producer>/fq_output_0`` (weights are stored as int8 constants, without quantisers)."""
    names = [op.get_friendly_name() for op in ov_model.get_ops() if op.get_type_name() == "FakeQuantize"]
    return [name for name in names if ".se/aten::adaptive" in name or ".se.relu" in name or "head_act" in name]


CALIBRATION = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))]


@pytest.fixture(scope="module")
def every_layer_int8(int8_export):
    """The fp32 IR quantised with every layer in INT8 (``keep_fp32=()``), NNCF's other settings the defaults."""
    from mobilenetv3.export import quantize_openvino

    out = int8_export[0]
    return quantize_openvino(out.with_name("m.xml"), out.with_name("all.int8.xml"), CALIBRATION, keep_fp32=())


def test_int8_can_quantise_every_layer(int8_export, every_layer_int8):
    out, everything = int8_export[0], every_layer_int8
    count = {path.name: sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(path)).get_ops())
             for path in (everything, out)}
    assert count["all.int8.xml"] > count["m.int8.xml"] > 0
    assert inside_kept_layers(ov.Core().read_model(str(everything)))


def weight_ranges(ov_model) -> dict:
    """Largest |int8 weight| of each INT8 convolution and Linear (not depthwise: no overflow fix there)."""
    from mobilenetv3.export.openvino import _module_path

    ranges = {}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "MatMul"):
            node = op.input(1).get_source_output().get_node()
            while node.get_type_name() != "Constant":
                node = node.input(0).get_source_output().get_node()
            if node.get_element_type() == ov.Type.i8:
                ranges[_module_path(op)] = int(abs(node.get_data().astype(int)).max())
    return ranges


def activation_ranges(ov_model) -> list:
    return [op.input(2).get_source_output().get_node().get_data().tolist() for op in ov_model.get_ordered_ops()
            if op.get_type_name() == "FakeQuantize"]


def test_overflow_fix_and_activation_ranges_reach_nncf(int8_export, every_layer_int8):
    """The default quantises every convolution's and Linear's weights to 7 bits (within +-64: no int16 saturation
    in AVX2's u8 x s8 products); NNCF's own "first-layer" only the stem's. Histogram ranges are not min-max's.
    Both with every layer in INT8, on the same images."""
    from mobilenetv3.export import quantize_openvino

    out, default = int8_export[0], every_layer_int8
    before = quantize_openvino(out.with_name("m.xml"), out.with_name("before.int8.xml"), CALIBRATION, keep_fp32=(),
                               overflow_fix="first-layer", activation_ranges="mean-minmax")
    new, old = (weight_ranges(ov.Core().read_model(str(path))) for path in (default, before))
    assert list(new) == list(old) and len(new) > 20 and list(new)[0] == "stem"
    assert max(new.values()) <= 64 and old["stem"] <= 64
    assert max(value for name, value in old.items() if name != "stem") > 64
    ranges = [activation_ranges(ov.Core().read_model(str(path))) for path in (default, before)]
    assert len(ranges[0]) == len(ranges[1]) and ranges[0] != ranges[1]
    record = json.loads(ov.Core().read_model(str(before)).get_rt_info(INT8_KEY).astype(str))
    assert (record["overflow_fix"], record["activation_ranges"]) == ("first-layer", "mean-minmax")


@pytest.mark.slow  # NNCF's accuracy control quantises and validates again and again: about a minute
def test_accuracy_control_validates_on_training_images_apart_from_calibration(checkpoint, int8_export):
    """--int8-max-drop: NNCF's accuracy control, on training images that are not calibration images (the
    checkpoint's run held none out); what it reached and on which images is printed and recorded."""
    root = int8_export[2]
    out = int8_export[0].with_name("ac.int8.xml")
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "openvino-int8", "--output", out,
                     "--dataset", "imagenet", "--data-path", root, "--calibration-images", 8, "--batch-size", 4,
                     "--int8-max-drop", "0.25", "--int8-validation-images", 6)
    assert result.returncode == 0, result.stderr
    assert all("decoded as an image viewer shows them" in line for line in not_progress(result.stderr))
    control = json.loads(ov.Core().read_model(str(out)).get_rt_info(INT8_KEY).astype(str))["accuracy_control"]
    pool = "trained on (its run held none out), less the calibration images"
    assert control["validation"] == dict(dataset="imagenet", source=str(root / "train"), split="train", images=6,
                                         of=5 * CLASSES - 8, seed=0, pool=pool)
    assert (control["metric"], control["max_drop"], control["images"]) == ("top-1 agreement with fp32", 0.25, 6)
    assert control["agreement"] >= 0.75
    line = next(line for line in result.stdout.splitlines() if "accuracy control" in line)
    assert line == (f"  accuracy control: INT8 gives fp32's top-1 answer on {100 * control['agreement']:.2f}% of "
                    f"6 of {5 * CLASSES - 8} training images {pool}, drawn at random with seed 0 (asked: at least "
                    "75.00%)")


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
