"""A model knows its data: an exported file records the dataset its model was trained on beside the model card,
``eval --exported`` scores it there by default (as eval of the run's checkpoint does), and a class mismatch is
refused wherever eval refuses one: export's INT8 calibration and accuracy, ``eval --exported``, ``predict
--classes``. An older file that records no data is not scored on a guess.

The user's case: a model trained on an ImageFolder whose classes are folders "0".."9" scored 20.55% on
Fashion-MNIST, exit 0 (the file recorded no dataset, and names "0".."9" passed the class check).
ONNX Runtime, OpenVINO and ExecuTorch read the same record (openvino_checks.py, executorch_checks.py).
"""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mobilenetv3 import checkpoint as ckpt
from mobilenetv3.config import Config
from mobilenetv3.data.datasets import FASHION_MNIST_CLASSES
from mobilenetv3.export import SUFFIXES, open_exported
from mobilenetv3.models import create_model

from conftest import run_cli

DIGITS = [str(digit) for digit in range(10)]
BIAS = [0.0, 4.0, 0.0, 9.0, 0.0, 3.0, 2.0, 1.0, 0.0, -1.0]  # the model ignores its input: class 3, then 1, 5
PREPROCESSING = dict(resize=32, crop=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3, in_chans=3)


def image_folder(root: Path, classes, per_class: int = 1) -> Path:
    """``root/{train,val}/<class>/<i>.png``: 8x8 grey images."""
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (20 * k + i,) * 3).save(root / split / name / f"{i}.png")
    return root


def checkpoint(path: Path, classes, data_path=None) -> Path:
    """A 10-class checkpoint of ours that ranks the classes as ``BIAS`` whatever the image; with ``data_path``
    a training checkpoint's config: trained on that ImageFolder."""
    model = create_model("mobilenetv3_small", num_classes=10, width_mult=0.5)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(BIAS))
    config = None
    if data_path is not None:
        run = Config()
        run.update(dict(dataset="imagenet", data_path=str(data_path), workers=0, batch_size=8))
        config = run.to_dict()
    card = ckpt.model_card(model.model_name, model.model_kwargs, classes, PREPROCESSING)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.Checkpoint(**card, model=model.state_dict(), config=config).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("record")
    f = dict(digits=image_folder(root / "digits", DIGITS), abc=image_folder(root / "abc", ["a", "b", "c"], 2))
    f["run"] = checkpoint(root / "run" / "last.pt", DIGITS, f["digits"])  # trained on the folder "digits"
    f["old"] = checkpoint(root / "old" / "weights.pt", DIGITS)  # no config: exports record no data
    for name in ("run", "old"):
        out = f[name].with_name(f"model{SUFFIXES['torchscript']}")
        done = run_cli("export", "--checkpoint", f[name], "--format", "torchscript", "--output", out, "--workers", 0)
        assert done.returncode == 0, done.stderr
        f[f"{name}_ts"], f[f"{name}_export"] = out, done
    image = root / "image.png"
    Image.new("RGB", (12, 12), (128, 64, 0)).save(image)
    f["image"] = image
    return f


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------ the record
def test_the_exported_file_records_the_data_its_run_trained_on(files):
    record = dict(dataset="imagenet", data_path=str(files["digits"].resolve()), classes=DIGITS)
    assert open_exported(files["run_ts"]).dataset == record
    assert f"  records its training data: imagenet at {files['digits'].resolve()}, 10 classes" in \
        files["run_export"].stdout.splitlines()
    assert open_exported(files["old_ts"]).dataset is None
    assert "records no training data" in files["old_export"].stdout


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_every_format_carries_the_record_beside_the_card(fmt, files, tmp_path):
    """The record rides in the document every format stores its card in (ONNX metadata, pt2 extra file)."""
    out = tmp_path / f"m{SUFFIXES[fmt]}"
    assert run_cli("export", "--checkpoint", files["run"], "--format", fmt, "--output", out).returncode == 0
    module = open_exported(out)
    assert module.dataset == dict(dataset="imagenet", data_path=str(files["digits"].resolve()), classes=DIGITS)
    assert module.classes == DIGITS and module.preprocessing["crop"] == 32


# -------------------------------------------------------------------------------- eval --exported
def test_eval_of_an_exported_file_scores_the_data_it_records(files, tmp_path):
    result = run_cli("eval", "--exported", files["run_ts"], "--workers", 0, "--json", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dataset"] == "imagenet" and report["data_path"] == str(files["digits"].resolve() / "val")
    assert report["count"] == 10 and report["top1"] == pytest.approx(0.1)  # every answer is class 3
    assert report["classes"] == DIGITS


def test_recorded_digit_names_are_not_fashion_mnists(files, tmp_path):
    """Names "0".."9" recorded with the data they came from are names: Fashion-MNIST's differ."""
    result = run_cli("eval", "--exported", files["run_ts"], "--dataset", "fashion-mnist", "--out", tmp_path)
    assert result.returncode == 2, result.stdout
    assert "other classes than the weights (10 of 10 differ: class 0 is 'T-shirt/top' there, '0' in the weights)" \
        in one_line(result)


def test_an_older_file_without_a_record_is_not_scored_on_the_default_dataset(files, tmp_path):
    result = run_cli("eval", "--exported", files["old_ts"], "--out", tmp_path / "r")
    assert result.returncode == 2 and "top-1" not in result.stdout
    line = one_line(result)
    assert f"{files['old_ts']} does not record the data it was trained on, and the default dataset " \
           "(fashion-mnist) is not it" in line and line.endswith("; give --dataset and --data-path")
    given = run_cli("eval", "--exported", files["old_ts"], "--dataset", "imagenet", "--data-path", files["digits"],
                    "--workers", 0, "--json", "--out", tmp_path / "given")
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout)["count"] == 10


def test_an_older_file_of_the_default_datasets_classes_is_still_scored(tmp_path):
    """A file that records no data but names Fashion-MNIST's classes: nothing to refuse (the guess fits)."""
    old = checkpoint(tmp_path / "fashion.pt", FASHION_MNIST_CLASSES)
    out = tmp_path / "fashion.torchscript.pt"
    assert run_cli("export", "--checkpoint", old, "--format", "torchscript", "--no-dataset",
                   "--output", out).returncode == 0
    from mobilenetv3.data import InMemoryImages
    from mobilenetv3.tasks.evaluate import _class_names, _open

    scored = _open(str(out), False, {})  # what eval reads of it, without scoring 10,000 images
    assert scored.dataset_from == "default" and scored.config.data.dataset == "fashion-mnist"
    val = InMemoryImages(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64),
                         FASHION_MNIST_CLASSES, "fashion-mnist")
    assert _class_names(scored, 10, val, by_index=False) == (FASHION_MNIST_CLASSES, [])


# ----------------------------------------------------------------------------------- export INT8
@pytest.mark.parametrize("fmt", ["onnx-int8", "openvino-int8", "executorch-int8"])
def test_int8_export_refuses_a_calibration_set_of_other_classes(fmt, files, tmp_path):
    """The user's case: 0.00% printed as INT8 and fp32 accuracy, calibrated on a folder of other classes."""
    out = tmp_path / f"m{SUFFIXES[fmt]}"
    result = run_cli("export", "--checkpoint", files["run"], "--format", fmt, "--output", out,
                     "--dataset", "imagenet", "--data-path", files["abc"], "--workers", 0)
    assert result.returncode == 2, result.stdout
    line = one_line(result)
    assert "has 3 classes (a, b, c), the weights 10 (0, 1, 2, 3, ...)" in line
    assert line.endswith("INT8 is calibrated and scored on it: give --dataset and --data-path of the model's own data")
    assert list(tmp_path.iterdir()) == [] and result.stdout == ""


def test_int8_export_of_weights_that_record_no_data_refuses_the_default_dataset(files, tmp_path):
    result = run_cli("export", "--checkpoint", files["old"], "--format", "onnx-int8", "--output",
                     tmp_path / "m.int8.onnx")
    assert result.returncode == 2
    assert "(the weights do not record their data: that is the default dataset)" in one_line(result)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ predict --classes
def test_predict_classes_names_the_classes_of_a_file_that_has_none_of_its_own(files, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"kind {k}" for k in range(10)) + "\n")
    result = run_cli("predict", files["image"], "--exported", files["old_ts"], "--classes", names, "--json",
                     "--topk", "2")
    assert result.returncode == 0, result.stderr
    assert [entry["class"] for entry in json.loads(result.stdout)[0]["top"]] == ["kind 3", "kind 1"]


@pytest.mark.parametrize("given, says", [
    ("a,b,c", "--classes has 3 classes (a, b, c), the weights 10 (0, 1, 2, 3, ...)"),
    (",".join(FASHION_MNIST_CLASSES), "--classes has other classes than the weights (10 of 10 differ: class 0 is "
                                      "'T-shirt/top' there, '0' in the weights)"),
], ids=["count", "names"])
def test_predict_classes_that_are_not_the_models_are_refused(given, says, files):
    for model in (["--exported", files["run_ts"]], ["--checkpoint", files["run"]]):
        result = run_cli("predict", files["image"], *model, "--classes", given)
        assert result.returncode == 2 and result.stdout == ""
        assert one_line(result) == f"mobilenetv3 predict: error: {says}; leave --classes out to show the model's " \
                                   "own names"
