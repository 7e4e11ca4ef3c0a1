"""The Python API is the CLI's: each task called from Python gives what its subcommand prints."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import mobilenetv3
from conftest import run_cli
from mobilenetv3.errors import UsageError

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
    result = mobilenetv3.evaluate(run.checkpoint, out_dir=str(tmp_path / "py"))
    cli = run_cli("eval", "--checkpoint", run.checkpoint, "--out", tmp_path / "cli", "--json")
    assert cli.returncode == 0, cli.stderr
    printed, ours = json.loads(cli.stdout), json.loads(json.dumps(result.to_dict()))
    assert result.top1 == run.top1 and result.count == 12
    for key in ("top1", "top5", "count", "loss", "per_class_accuracy", "weights_sha256", "preprocessing"):
        assert printed[key] == ours[key], key


def test_export_and_predict_from_python(run, tmp_path):
    exported = mobilenetv3.export_model(run.checkpoint, format="onnx", output=str(tmp_path / "m.onnx"))
    assert exported.random["max_abs_diff"] <= 1e-4 and exported.real["compared"] == 12
    image = tmp_path / "a.png"
    Image.fromarray(torch.randint(0, 255, (32, 32, 3), dtype=torch.uint8).numpy()).save(image)
    by_weights = mobilenetv3.predict([str(image)], checkpoint=run.checkpoint, topk=3)
    by_onnx = mobilenetv3.predict([str(image)], onnx=exported.path, topk=3)
    assert [t["index"] for t in by_weights[0].top] == [t["index"] for t in by_onnx[0].top]
    assert by_weights[0].top[0]["probability"] == pytest.approx(by_onnx[0].top[0]["probability"], abs=1e-5)


def test_convert_and_load_from_python(run, tmp_path):
    converted = mobilenetv3.convert_weights(run.checkpoint, str(tmp_path / "w.safetensors"))
    assert (converted.source_format, converted.target_format) == ("mobilenetv3", "safetensors")
    assert converted.training_state == ["optimizer state", "epoch 1, step 6"] and not converted.training_state_kept
    model = mobilenetv3.load_model(converted.dst)
    assert model.classes[:2] == ["class_0", "class_1"] and model.preprocessing["crop"] == 32


def test_mistakes_raise_usage_error_in_python():
    with pytest.raises(UsageError, match="unknown setting 'epoch'"):
        mobilenetv3.train(None, epoch=1)
    with pytest.raises(UsageError, match="give --checkpoint PATH"):
        mobilenetv3.evaluate()
    with pytest.raises(UsageError, match="unknown format 'tflite'"):
        mobilenetv3.export_model("x.pt", format="tflite")


def test_a_deterministic_run_gives_the_process_back_as_it_was(tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    mobilenetv3.train(None, run_dir=str(tmp_path / "run"), max_steps=1, deterministic=True, **TINY)
    assert not torch.are_deterministic_algorithms_enabled()
