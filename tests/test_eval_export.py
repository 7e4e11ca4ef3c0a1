"""After training: eval (every sample once, exact answers), export verified in each runtime, predict, hub.

Their mistakes (one line, exit code 2) are cases of test_bad_input.py.
"""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mobilenetv3.data import build_dataset
from mobilenetv3.export import FORMATS, SUFFIXES, export_verified, load_exported
from mobilenetv3.models import create_model

from builders import write_weights
from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
BIAS = [0.0, 4.0, 0.0, 9.0, 0.0, 3.0, 2.0, 1.0, 0.0, -1.0]  # ranking: 3, 1, 5, 6, 7, ...
SYNTHETIC = ["--dataset", "synthetic", "--synthetic-samples", "86", "--image-size", "32", "--seed", "5"]


@pytest.fixture(scope="module")
def fixed_class_checkpoint(tmp_path_factory):
    """A model that ignores its input: zero classifier weights, a bias that ranks the classes."""
    return write_weights(tmp_path_factory.mktemp("fixed") / "fixed.pt", num_classes=10, bias=BIAS,
                         preprocessing=dict(resize=32, crop=32, interpolation="bilinear", mean=(0.5,) * 3,
                                            std=(0.25,) * 3, in_chans=3))


def expected_scores():
    labels = build_dataset("synthetic", None, "val", synthetic_samples=86, synthetic_classes=10, synthetic_size=32,
                           seed=5).labels
    top5 = {3, 1, 5, 6, 7}
    hits1, hits5 = sum(int(y) == 3 for y in labels), sum(int(y) in top5 for y in labels)
    return len(labels), hits1 / len(labels), hits5 / len(labels)


def test_eval_gives_the_known_answers_and_counts_every_sample_once(fixed_class_checkpoint, tmp_path):
    count, top1, top5 = expected_scores()
    assert count == 21  # not a multiple of the eval batch (2 x 5 = 10)
    result = run_cli("eval", "--checkpoint", fixed_class_checkpoint, *SYNTHETIC, "--batch-size", "5",
                     "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert "scored 21 of 21 images, each once" in result.stdout
    assert f"result: {{'acc': {top1}, 'top5': {top5}}} ckpt= {fixed_class_checkpoint}" in result.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["count"] == report["dataset_size"] == 21
    assert report["top1"] == pytest.approx(top1) and report["top5"] == pytest.approx(top5)
    assert report["weights_sha256"] and report["preprocessing"]["crop"] == 32
    rows = (tmp_path / "report" / "confusion.csv").read_text().splitlines()
    assert rows[0].split(",")[1:4] == ["c0", "c1", "c2"] and len(rows) == 11
    assert sum(int(row.split(",")[4]) for row in rows[1:]) == 21  # every prediction is class 3
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 0


@pytest.mark.parametrize("fmt, runtime", [("torchscript", "torchscript"), ("pt2", "torch.export")])
def test_eval_and_predict_take_the_torchscript_and_pt2_files_export_writes(fmt, runtime, fixed_class_checkpoint,
                                                                           tmp_path):
    count, top1, top5 = expected_scores()
    exported = run_cli("export", "--checkpoint", fixed_class_checkpoint, "--format", fmt, "--no-dataset",
                       "--output", tmp_path / f"fixed{SUFFIXES[fmt]}")
    assert exported.returncode == 0, exported.stderr
    path = tmp_path / f"fixed{SUFFIXES[fmt]}"
    result = run_cli("eval", "--exported", path, *SYNTHETIC, "--batch-size", "5", "--json", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["count"] == count and report["top1"] == pytest.approx(top1) and report["top5"] == pytest.approx(top5)
    assert report["runtime"] == runtime and report["precision"] == "fp32" and report["classes"][:2] == ["c0", "c1"]
    image = Image.new("RGB", (40, 36), (90, 20, 200))
    image.save(tmp_path / "image.png")
    predicted = run_cli("predict", tmp_path / "image.png", "--exported", path, "--json", "--topk", "3")
    assert predicted.returncode == 0, predicted.stderr
    top = json.loads(predicted.stdout)[0]["top"]
    assert [entry["class"] for entry in top] == ["c3", "c1", "c5"]  # BIAS's ranking
    assert sum(entry["probability"] for entry in top) == pytest.approx(
        sum(torch.tensor(BIAS).softmax(0).sort(descending=True).values[:3].tolist()), abs=1e-5)


TIED = [0.0, 1.0, 0.0, 5.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0]  # classes 3 and 5 tie for first place


def test_tied_scores_rank_in_class_order_in_eval_predict_and_the_int8_report(tmp_path):
    """An INT8 program's quantised logits often tie; eval ranked ties as ``topk`` found them and export's INT8
    report as ``argmax`` does (the first), so the report said 91.66% and eval of the same .pte 91.71%. Now both,
    predict and the server rank equal scores in class order: class 3 before 5 (torch.argmax's documented rule)."""
    weights = write_weights(tmp_path / "tied.pt", num_classes=10, bias=TIED, preprocessing=dict(
        resize=32, crop=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3, in_chans=3))
    data = ["--dataset", "synthetic", "--workers", "0"]  # 512 images a split, 28 px, seed 1: export's and eval's
    labels = build_dataset("synthetic", None, "val", synthetic_samples=512, synthetic_classes=10, synthetic_size=28,
                           seed=1).labels
    expected = (labels == torch.tensor(TIED).argmax()).float().mean().item()
    assert torch.tensor(TIED).argmax() == 3 and 0 < expected < (labels == 5).float().mean().item()
    scored = run_cli("eval", "--checkpoint", weights, *data, "--json", "--out", tmp_path / "pt")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["top1"] == pytest.approx(expected)
    out = tmp_path / "tied.int8.onnx"
    exported = run_cli("export", "--checkpoint", weights, "--format", "onnx-int8", "--output", out, *data,
                       "--calibration-images", "16")
    assert exported.returncode == 0, exported.stderr
    report = next(line for line in exported.stdout.splitlines() if "INT8 top-1" in line)
    assert f"INT8 top-1 {100 * expected:.2f}%, fp32 top-1 {100 * expected:.2f}%" in report
    by_file = run_cli("eval", "--exported", out, *data, "--json", "--out", tmp_path / "int8")
    assert by_file.returncode == 0, by_file.stderr
    assert json.loads(by_file.stdout)["top1"] == pytest.approx(expected)  # what the report said
    Image.new("RGB", (32, 32)).save(tmp_path / "image.png")
    predicted = run_cli("predict", tmp_path / "image.png", "--checkpoint", weights, "--json", "--topk", "3")
    assert [entry["class"] for entry in json.loads(predicted.stdout)[0]["top"]] == ["c3", "c5", "c1"]


def test_distributed_eval_gives_the_same_numbers(fixed_class_checkpoint, tmp_path):
    single = run_cli("eval", "--checkpoint", fixed_class_checkpoint, *SYNTHETIC, "--batch-size", "4", "--json",
                     "--out", tmp_path / "one")
    two = run_cli("eval", "--checkpoint", fixed_class_checkpoint, *SYNTHETIC, "--batch-size", "4", "--json",
                  "--out", tmp_path / "two", nproc=2, env=dict(OMP_NUM_THREADS="1"))
    assert single.returncode == 0 and two.returncode == 0, two.stderr[-1500:]
    one_report, two_report = json.loads(single.stdout), json.loads(two.stdout)
    assert two_report["world_size"] == 2 and two_report["count"] == one_report["count"] == 21
    for key in ("top1", "top5", "loss", "per_class_accuracy"):
        assert two_report[key] == pytest.approx(one_report[key]), key


@pytest.mark.parametrize("name", ["mobilenetv3_small", "mobilenetv3_large"])
@pytest.mark.parametrize("fmt", ["onnx", "pt2", "torchscript"])
def test_exports_agree_with_pytorch(name, fmt, tmp_path):
    model = create_model(name, num_classes=7).eval()
    result = export_verified(model, fmt, tmp_path / f"m.{fmt}", torch.randn(2, 3, 64, 64), tolerance=1e-4)
    assert result["random"]["compared"] == 4  # batch 1 and batch 3
    assert result["random"]["max_abs_diff"] <= 1e-4 and result["random"]["top1_agreement"] == 1.0
    runtime = load_exported(tmp_path / f"m.{fmt}", fmt)
    x = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(runtime(x), model(x), atol=1e-4, rtol=0)


def test_an_export_that_disagrees_is_a_run_error_and_leaves_no_file(tmp_path):
    from mobilenetv3.errors import RunError

    model = create_model("mobilenetv3_small", num_classes=3).eval()
    with pytest.raises(RunError, match="torchscript export disagrees with PyTorch: max abs difference .* > -1"):
        export_verified(model, "torchscript", tmp_path / "m.ts", torch.randn(2, 3, 64, 64), tolerance=-1)
    assert list(tmp_path.iterdir()) == []


def test_onnx_has_native_hard_activations_dynamic_batch_and_metadata(tmp_path):
    import onnx

    model = create_model("mobilenetv3_small", num_classes=3).eval()
    model.classes, model.preprocessing = ["a", "b", "c"], None
    export_verified(model, "onnx", tmp_path / "m.onnx", torch.randn(2, 3, 64, 64), softmax=True)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    ops = {node.op_type for node in proto.graph.node}
    assert {"HardSwish", "HardSigmoid", "GlobalAveragePool"} <= ops
    assert "BatchNormalization" not in ops and "ReduceMean" not in ops  # folded; pooling that ORT runs blocked
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["mobilenetv3"])
    assert meta["classes"] == ["a", "b", "c"] and meta["softmax"] is True
    probs = load_exported(tmp_path / "m.onnx", "onnx")(torch.randn(5, 3, 64, 64))
    torch.testing.assert_close(probs.sum(1), torch.ones(5))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on two-class synthetic data (class 1 images are brighter)."""
    from mobilenetv3.config import load_config
    from mobilenetv3.tasks import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    config = load_config(None, dict(dataset="synthetic", num_classes=2, synthetic_samples=192, image_size=32,
                                    batch_size=32, model="mobilenetv3_small", width_mult=0.5, epochs=4,
                                    warmup_epochs=0, lr=0.1, bn_momentum=0.3, workers=0, progress=False,
                                    run_dir=str(run_dir), transform="none"))
    result = train(config)
    assert result.top1 == 1.0, result
    return run_dir / "last.pt"


@pytest.fixture(scope="module")
def int8_export(trained, tmp_path_factory):
    """One INT8 export of the trained model, for every test here that needs an ONNX file: beside ``m.int8.onnx``
    it writes ``m.onnx``, the fp32 export it was quantised from."""
    out = tmp_path_factory.mktemp("exported") / "m.int8.onnx"
    result = run_cli("export", "--checkpoint", trained, "--format", "onnx-int8", "--output", out,
                     "--calibration-images", "32")
    assert result.returncode == 0, result.stderr
    return out, result


def test_int8_export_runs_and_reports_accuracy(int8_export, tmp_path):
    out, result = int8_export
    assert out.is_file() and out.with_name("m.onnx").is_file()
    lines = result.stdout.splitlines()
    assert lines[0] == f"exported onnx-int8: {out}"
    accuracy = [line for line in lines if "accuracy on synthetic val" in line]
    assert accuracy and "INT8 top-1" in accuracy[0] and "fp32 top-1 100.00%" in accuracy[0]
    scored = run_cli("eval", "--onnx", out, "--out", tmp_path / "rep", "--dataset", "synthetic",
                     "--synthetic-samples", "192")
    assert scored.returncode == 0, scored.stderr
    assert "onnxruntime" in scored.stdout and "scored 48 of 48" in scored.stdout


def _save_images(tmp_path, count=4):
    data = build_dataset("synthetic", None, "val", synthetic_samples=192, synthetic_classes=2, synthetic_size=32,
                         seed=1)
    paths = []
    for i in range(count):
        path = tmp_path / f"img{i}_class{int(data.labels[i])}.png"
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths


def test_predict_returns_the_right_class(trained, tmp_path):
    paths = _save_images(tmp_path)
    result = run_cli("predict", tmp_path, "--checkpoint", trained, "--json", "--topk", "2")
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert [Path(p["path"]).name for p in predictions] == sorted(p.name for p in paths)
    for p in predictions:
        assert p["top"][0]["class"] == f"class_{Path(p['path']).stem[-1]}"
        assert sum(t["probability"] for t in p["top"]) == pytest.approx(1.0, abs=1e-5)
    table = run_cli("predict", paths[0], tmp_path / "*.png", "--checkpoint", trained)
    assert table.returncode == 0 and table.stdout.splitlines()[0] == f"model: {trained} (pytorch fp32)"
    assert len(table.stdout.splitlines()) == 1 + len(paths)


def test_predict_with_an_exported_onnx_model(int8_export, tmp_path):
    onnx_path = int8_export[0].with_name("m.onnx")  # fp32, as `mobilenetv3 export` writes it by default
    (tmp_path / "images").mkdir()
    paths = _save_images(tmp_path / "images")
    result = run_cli("predict", *paths, "--onnx", onnx_path, "--json")
    assert result.returncode == 0, result.stderr
    for p in json.loads(result.stdout):
        assert p["top"][0]["class"] == f"class_{Path(p['path']).stem[-1]}"


def test_torch_hub_loads_from_a_local_checkout(trained):
    model = torch.hub.load(str(REPO), "mobilenetv3_small", source="local", weights=str(trained))
    assert not model.training and model.classes == ["class_0", "class_1"]
    fresh = torch.hub.load(str(REPO), "mobilenetv3_large", source="local", num_classes=5)
    assert fresh.classifier.out_features == 5
    seed = torch.hub.load(str(REPO), "create_network", "mobilenetv3_small", 10, source="local")
    assert seed.head_fc.out_features == 1280 and seed.model_kwargs["dropout"] == 0.0  # the seed's network
    with pytest.raises(ValueError, match="holds mobilenetv3_small weights, not mobilenetv3_large"):
        torch.hub.load(str(REPO), "mobilenetv3_large", source="local", weights=str(trained))


def test_export_formats_listed():
    assert FORMATS == ("onnx", "onnx-int8", "torchscript", "pt2", "openvino", "openvino-int8", "executorch",
                       "executorch-int8", "litert", "litert-int8", "coreml", "ncnn")
