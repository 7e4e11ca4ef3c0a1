"""The Python API is the CLI's: each task called from Python gives what its subcommand prints, and every task
speaks one vocabulary: the model it reads is ``source``, the file it writes ``output``, the folder ``out_dir``."""
import inspect
import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

import mobilenetv3
from mobilenetv3.errors import SettingError, UsageError

from conftest import run_cli

TINY = dict(dataset="synthetic", synthetic_samples=48, image_size=32, batch_size=8, model="mobilenetv3_small",
            width_mult=0.5, epochs=1, warmup_epochs=0, workers=0, progress=False, transform="none", stem_stride=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return mobilenetv3.train(None, run_dir=str(tmp_path_factory.mktemp("api") / "run"), **TINY)


def test_train_returns_what_the_cli_prints(run):
    assert Path(run.checkpoint).is_file() and not run.stopped and run.epoch == 1
    assert run.val_count == 12 and 0.0 <= run.top1 <= 1.0
    assert json.loads(Path(run.run_dir, "metrics.jsonl").read_text().splitlines()[-1])["val_top1"] == run.top1


def test_evaluate_matches_the_cli_json(run, tmp_path):
    result = mobilenetv3.evaluate(source=run.checkpoint, out_dir=str(tmp_path / "py"))
    cli = run_cli("eval", "--checkpoint", run.checkpoint, "--out", tmp_path / "cli", "--json")
    assert cli.returncode == 0, cli.stderr
    printed, ours = json.loads(cli.stdout), json.loads(json.dumps(result.to_dict()))
    assert result.top1 == run.top1 and result.count == 12
    for key in ("top1", "top5", "count", "loss", "per_class_accuracy", "weights_sha256", "preprocessing"):
        assert printed[key] == ours[key], key


def test_export_and_predict_from_python(run, tmp_path):
    exported = mobilenetv3.export_model(source=run.checkpoint, format="onnx", output=str(tmp_path / "m.onnx"))
    assert exported.random["max_abs_diff"] <= 1e-4 and exported.real["compared"] == 12
    image = tmp_path / "a.png"
    Image.fromarray(torch.randint(0, 255, (32, 32, 3), dtype=torch.uint8).numpy()).save(image)
    by_weights = mobilenetv3.predict([str(image)], source=run.checkpoint, topk=3)
    by_onnx = mobilenetv3.predict([str(image)], source=exported.path, topk=3)
    assert [t["index"] for t in by_weights[0].top] == [t["index"] for t in by_onnx[0].top]
    assert by_weights[0].top[0]["probability"] == pytest.approx(by_onnx[0].top[0]["probability"], abs=1e-5)


def test_convert_and_load_from_python(run, tmp_path):
    converted = mobilenetv3.convert_weights(source=run.checkpoint, output=str(tmp_path / "w.safetensors"))
    assert (converted.source_format, converted.target_format) == ("mobilenetv3", "safetensors")
    assert converted.training_state == ["optimizer state", "epoch 1, step 6"] and not converted.training_state_kept
    model = mobilenetv3.load_model(converted.output)
    assert model.classes[:2] == ["class_0", "class_1"] and model.preprocessing["crop"] == 32


def test_mistakes_raise_usage_error_in_python():
    with pytest.raises(UsageError, match="unknown setting 'epoch'"):
        mobilenetv3.train(None, epoch=1)
    with pytest.raises(SettingError, match="^source is required") as raised:
        mobilenetv3.evaluate()
    assert raised.value.key == "source"  # the CLI names it by its flag: "give --checkpoint PATH" there
    with pytest.raises(UsageError, match="unknown format 'tflite'"):
        mobilenetv3.export_model("x.pt", format="tflite")


def test_a_deterministic_run_gives_the_process_back_as_it_was(tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    mobilenetv3.train(None, run_dir=str(tmp_path / "run"), max_steps=1, deterministic=True, **TINY)
    assert not torch.are_deterministic_algorithms_enabled()


TASKS = ("evaluate", "export_model", "predict", "serve", "convert_weights", "bench")


@pytest.mark.parametrize("task", TASKS)
def test_every_task_speaks_one_vocabulary(task):
    parameters = inspect.signature(getattr(mobilenetv3, task)).parameters
    reads_a_model = task != "bench"
    assert ("source" in parameters) == reads_a_model
    assert not {"weights", "checkpoint", "onnx", "exported", "model", "src", "dst", "out"} & {
        name for name, p in parameters.items() if p.default is not None and p.kind != p.VAR_KEYWORD}
    written = {"evaluate": "out_dir", "export_model": "output", "convert_weights": "output", "bench": "output"}
    if task in written:
        assert written[task] in parameters


def test_the_older_names_still_work_with_a_warning(run, tmp_path):
    with pytest.warns(FutureWarning, match=r"evaluate\(weights=...\) is renamed evaluate\(source=...\)"):
        old = mobilenetv3.evaluate(weights=run.checkpoint, out_dir=str(tmp_path / "old"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names warn about nothing
        new = mobilenetv3.evaluate(source=run.checkpoint, out_dir=str(tmp_path / "new"))
    assert old.top1 == new.top1 and old.count == new.count
    with pytest.warns(FutureWarning, match="convert_weights"):
        converted = mobilenetv3.convert_weights(src=run.checkpoint, dst=str(tmp_path / "w.pt"))
    assert converted.dst == converted.output == str(tmp_path / "w.pt")
    with pytest.warns(FutureWarning), pytest.raises(SettingError, match="given twice"):
        mobilenetv3.export_model("a.pt", checkpoint="b.pt")


def test_errors_name_the_python_parameter_and_the_cli_its_flag(run, tmp_path):
    with pytest.raises(SettingError, match="^topk must be at least 1"):
        mobilenetv3.predict([str(tmp_path)], source=run.checkpoint, topk=0)
    cli = run_cli("predict", "--checkpoint", run.checkpoint, "--topk", "0", tmp_path)
    assert cli.returncode == 2 and "error: --topk must be at least 1" in cli.stderr
    with pytest.raises(SettingError, match="^batch_sizes must be at least 1"):
        mobilenetv3.bench("inference", batch_sizes=[0])
    cli = run_cli("bench", "inference", "--batch-size", "0")
    assert cli.returncode == 2 and "error: --batch-size must be at least 1" in cli.stderr


def test_bench_from_python_is_the_cli_bench(tmp_path):
    settings = dict(models=["mobilenetv3_small"], batch_sizes=[1], image_size=32, quick=True)
    result = mobilenetv3.bench("inference", variants=["eager", "torchvision eager"], **settings,
                               output=str(tmp_path / "py.json"))
    cli = run_cli("bench", "inference", "--model", "mobilenetv3_small", "--batch-size", "1", "--image-size", "32",
                  "--quick", "--variants", "eager", "torchvision eager", "--out", tmp_path / "cli.json")
    assert cli.returncode == 0, cli.stderr
    printed = json.loads((tmp_path / "cli.json").read_text())
    written = json.loads((tmp_path / "py.json").read_text())
    assert written["variants"] == printed["variants"] == result.details["variants"]
    assert [(r["model"], r["batch"], r["variant"]) for r in result.rows] == \
        [(r["model"], r["batch"], r["variant"]) for r in printed["rows"]]
    training = mobilenetv3.bench("training", models=["mobilenetv3_small"], batch_sizes=[4], image_size=32, quick=True)
    assert [r["variant"] for r in training.rows] == ["torchvision + SGD loop", "mobilenetv3 train step"]
    assert all(r["images_per_s"] > 0 for r in training.rows)
