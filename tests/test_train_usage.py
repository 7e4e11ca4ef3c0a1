"""What a user meets around a training run: the defaults and their help, smoke runs, progress in a pipe, what
a failed run leaves, hostile or malformed files, resuming the seed's own schedule."""
import logging
import os
import pickle
import re
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

import mobilenetv3
from mobilenetv3.config import load_config
from mobilenetv3.convert import to_mindspore, write_ckpt
from mobilenetv3.models import create_model

from conftest import run_cli

TINY = dict(dataset="synthetic", synthetic_samples=48, image_size=32, batch_size=8, model="mobilenetv3_small",
            width_mult=0.5, workers=0, progress=False, transform="none", stem_stride=2)
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- defaults and help
def test_the_defaults_are_the_embedded_default_recipe():
    """A bare ``mobilenetv3 train`` runs what the README's demo runs (the fashion-mnist preset), not 120 epochs."""
    preset = load_config("fashion-mnist").to_dict()
    defaults = load_config(None).to_dict()
    # the preset says which batch its LR is for; the bare command leaves it to auto.choose_for_data (the same 256)
    assert preset["optim"].pop("lr_reference_batch") == 256 and defaults["optim"].pop("lr_reference_batch") is None
    for section in ("model", "data", "optim", "run"):
        assert defaults[section] == preset[section], section


def test_train_help_shows_the_defaults_and_eval_offers_no_training_flags():
    train = " ".join(run_cli("train", "--help").stdout.split())  # argparse wraps at the terminal's width
    assert "--epochs INT training epochs (default: 3)" in train
    assert "--lr FLOAT peak learning rate at --lr-reference-batch (default: 0.8)" in train
    evaluate = run_cli("eval", "--help").stdout
    for training_only in ("--mixup-alpha", "--cutmix-alpha", "--random-erasing", "--cutout", "--auto-augment"):
        assert training_only not in evaluate


def test_warmup_keeps_its_share_of_the_run_when_only_epochs_is_given():
    one_epoch = load_config(None, dict(epochs=1))
    assert one_epoch.optim.warmup_epochs == pytest.approx(0.9 / 3)  # the default: 0.9 of 3 epochs
    assert one_epoch.source_of("warmup_epochs") == "warmup 0.9 of 3 epochs scaled to the run"
    assert load_config(None, dict(epochs=1, warmup_epochs=0.5)).optim.warmup_epochs == 0.5  # given: kept
    assert load_config("cifar10-cpu", dict(epochs=12)).optim.warmup_epochs == pytest.approx(0.5)  # 5 of 120


# ------------------------------------------------------------------------------- smoke runs, progress
def test_max_steps_ends_the_run_early_and_a_resume_with_more_continues_it(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mobilenetv3"):  # 6 steps an epoch
        run = mobilenetv3.train(None, run_dir=str(tmp_path / "run"), epochs=2, max_steps=4, **TINY)
    assert "warmup 0.9 of 3 epochs scaled to the run: 0.6 of 2 epochs (--warmup-epochs sets it)" in caplog.text
    lines = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if line.startswith("epoch: [")]
    assert run.global_step == 4 and len(lines) == 4 and not run.stopped
    assert run.val_count == 12 and (tmp_path / "run" / "model.safetensors").is_file()
    assert lines[0].startswith("epoch: [  0/  1], step:[    0/    6]")
    # no epoch file: the epoch is unfinished
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == ["best.pt", "last.pt"]
    assert "epoch 1/1: train loss" in caplog.text and "epoch 0/" not in caplog.text  # 1-based, cut short or not
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mobilenetv3"):
        resumed = mobilenetv3.train(None, run_dir=str(tmp_path / "run"), resume="auto", epochs=2, max_steps=9,
                                    **TINY)
    assert resumed.global_step == 9 and (resumed.epoch, resumed.step_in_epoch) == (1, 3)  # epoch 1 finished first
    said = [m.group(1) for m in map(re.compile(r"(resuming from .* at epoch \d+|epoch \d+/\d+)[:,] ").match,
                                   caplog.messages) if m]
    assert said == [f"resuming from {tmp_path / 'run' / 'last.pt'} at epoch 1", "epoch 1/2", "epoch 2/2"]
    with pytest.raises(ValueError, match="--max-steps 9: .* is at step 9 already; give more steps to continue it"):
        mobilenetv3.train(None, run_dir=str(tmp_path / "run"), resume="auto", epochs=2, max_steps=9, **TINY)


def test_max_steps_keeps_the_warmups_share_of_the_run(caplog):
    """A smoke run of 30 steps of a 300-step schedule (3 epochs of 100, warmup 0.9 epoch): warmup 9 steps, the same
    tenth of the run, so the LR reaches its peak; it stayed 90 steps, and the run never left warmup."""
    from mobilenetv3.optim import build_schedule

    with caplog.at_level(logging.INFO, logger="mobilenetv3"):
        smoke = build_schedule(load_config(None, dict(max_steps=30)), steps_per_epoch=100, world_size=1)
    assert build_schedule(load_config(None), steps_per_epoch=100, world_size=1).warmup_steps == 90
    assert (smoke.total_steps, smoke.warmup_steps) == (30, 9)
    assert max(smoke.lr_at(step) for step in range(30)) == pytest.approx(smoke.lr_max, rel=0.01)
    assert "max_steps 30: the run ends after 30 of its 300 steps; the schedule spans those, its warmup the same " \
           "share of them: 9 steps" in caplog.text


def test_resume_auto_starts_fresh_only_under_torchrun_restarts(tmp_path, monkeypatch):
    """A mistyped --run-dir with --resume auto is refused (test_bad_input.py); torchrun's restarted workers are
    all given --resume auto, and its first attempt has nothing to continue yet."""
    from mobilenetv3.config import RunConfig
    from mobilenetv3.tasks.train import resolve_resume

    run = RunConfig(resume="auto", run_dir=str(tmp_path / "elastic"))
    monkeypatch.delenv("TORCHELASTIC_MAX_RESTARTS", raising=False)
    with pytest.raises(ValueError, match="elastic holds no last.pt to continue"):
        resolve_resume(run, "custom")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    assert resolve_resume(run, "custom") is None


def test_progress_is_a_line_per_tenth_of_an_epoch_when_not_on_a_terminal(tmp_path):
    result = run_cli("train", "--dataset", "synthetic", "--synthetic-samples", "160", "--batch-size", "8",
                     "--epochs", "1", "--width-mult", "0.5", "--workers", "0", "--run-dir", tmp_path / "run",
                     process=True)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "it/s" not in result.stderr and "step/s" not in result.stderr
    steps = re.findall(r"^epoch 1/1 step (\d+)/20: loss", result.stderr, re.MULTILINE)
    assert steps == [str(n) for n in range(2, 21, 2)]


def test_make_demo_passes_args_to_the_training_command():
    out = subprocess.run(["make", "-n", "demo", "ARGS=--epochs 1 --batch-size 64"], cwd=REPO, capture_output=True,
                         text=True).stdout
    assert "scripts/demo.sh --epochs 1 --batch-size 64" in out
    assert '"$@"' in (REPO / "scripts" / "demo.sh").read_text()  # and demo.sh hands them to `train`


def test_freeze_backbone_says_what_trains(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mobilenetv3"):
        mobilenetv3.train(None, run_dir=str(tmp_path / "run"), epochs=1, max_steps=1, freeze_backbone=True, **TINY)
    model = create_model("mobilenetv3_small", width_mult=0.5, num_classes=10)
    classifier = sum(p.numel() for p in model.classifier.parameters())
    assert f"backbone frozen: {classifier:,} of {sum(p.numel() for p in model.parameters()):,} parameters train" \
        in caplog.text


# ------------------------------------------------------------------------------- a failed run
def _folder_with_a_broken_image(root: Path) -> Path:
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (36, 36), (30 * i, 100, 200 * (name == "a"))).save(root / split / name / f"{i}.png")
    (root / "train" / "a" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def test_a_run_that_fails_in_its_first_epoch_leaves_nothing(tmp_path):
    data = _folder_with_a_broken_image(tmp_path / "data")
    result = run_cli("train", "--dataset", "imagenet", "--data-path", data, "--batch-size", "4", "--epochs", "1",
                     "--width-mult", "0.5", "--workers", "0", "--run-dir", tmp_path / "run", process=True)
    assert result.returncode == 2 and "unreadable image" in result.stderr
    assert not (tmp_path / "run").exists()  # no .lock, config.yaml, empty metrics.jsonl or train.log left behind


def test_a_new_run_starts_a_fresh_log_where_an_earlier_one_died_without_a_checkpoint(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.log").write_text("epoch: [  0/  3], step:[    0/  468], from a killed run\n")
    (run_dir / "metrics.jsonl").write_text("")
    (run_dir / ".lock").write_text("pid 1 on a killed host")  # what a killed run leaves: the file, not the flock
    with caplog.at_level(logging.INFO, logger="mobilenetv3"):
        mobilenetv3.train(None, run_dir=str(run_dir), epochs=1, max_steps=2, **TINY)
    assert "from a killed run" not in (run_dir / "train.log").read_text()
    assert "found the files of an earlier run that saved no checkpoint" in caplog.text


# ------------------------------------------------------------------------------- hostile, malformed files
class _System:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("make, argv, message", [
    (lambda p: torch.save({"model": _System()}, p), ["eval", "--checkpoint"],
     r"refused to load: it holds Python objects that could run code \(global (posix|nt)\.system\)"),
    (lambda p: p.write_bytes(b"\xff" * 16), ["train", "--resume"],
     r"w.safetensors: not a readable safetensors file \(SafetensorError: "),
    (lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=4)), ["eval", "--checkpoint"],
     r"not a readable PyTorch checkpoint"),
], ids=["os.system payload", "malformed safetensors to resume", "raw pickle"])
def test_hostile_and_malformed_files_are_one_line_exit_2(make, argv, message, tmp_path):
    path = tmp_path / ("w.safetensors" if "resume" in argv[-1] else "w.pt")
    make(path)
    result = run_cli(*argv, path, "--run-dir" if argv[0] == "train" else "--out", tmp_path / "out", process=True)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and re.search(message, result.stderr), result.stderr
    assert "pwned" not in result.stdout


# ------------------------------------------------------------------------------- the seed's schedule
@pytest.fixture
def seed_training_checkpoint(tmp_path):
    """The seed's training .ckpt in epoch 2 of 3-step epochs: weights, global_step 7, its per-step rates."""
    model = create_model("mobilenetv3_small", num_classes=10, head_channels=1280, dropout=0.0)
    tensors = dict(to_mindspore(model.state_dict()), global_step=torch.tensor([7], dtype=torch.int32),
                   momentum=torch.tensor(0.9), learning_rate=torch.linspace(0.0, 0.39, 40))
    path = tmp_path / "mobilenetV3-2_3.ckpt"
    write_ckpt(tensors, path)
    return path


@pytest.mark.parametrize("schedule", ["warmup-cosine", "stored"])
def test_resuming_the_seed_says_which_schedule_it_follows(seed_training_checkpoint, tmp_path, caplog, schedule):
    settings = dict(TINY, synthetic_samples=24, width_mult=1.0)  # 3 steps an epoch: steps 7 and 8 are left
    with caplog.at_level(logging.INFO, logger="mobilenetv3"):
        mobilenetv3.train(None, resume=str(seed_training_checkpoint), run_dir=str(tmp_path / "run"), epochs=3,
                          lr_schedule=schedule, **settings)
    lines = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if line.startswith("epoch: [")]
    assert len(lines) == 2
    step_loss, mean_loss = re.search(r"loss:\[([\d.]+)/([\d.]+)\]", lines[0]).groups()
    assert step_loss == mean_loss  # the mean counts the one step run, not the seven before it
    said = [message for message in caplog.messages if "learning rates" in message]  # one line, which says
    if schedule == "stored":
        assert said == [f"following the 40 learning rates stored in {seed_training_checkpoint}, from step 7"]
        assert [re.search(r"lr:\[([\d.]+)\]", line).group(1) for line in lines] == ["0.070", "0.080"]
    else:
        assert said == [f"{seed_training_checkpoint} stores the seed's own learning rates (40 steps); this run "
                        "follows its warmup-cosine schedule from step 7 instead (--lr-schedule stored follows them)"]


def test_a_run_longer_than_the_stored_rates_says_what_the_steps_past_them_get(tmp_path, caplog):
    """8 stored rates, a 9-step run from step 7: step 8 keeps the last rate, said once at the start (it was silent)."""
    model = create_model("mobilenetv3_small", num_classes=10, head_channels=1280, dropout=0.0)
    path = tmp_path / "mobilenetV3-2_3.ckpt"
    write_ckpt(dict(to_mindspore(model.state_dict()), global_step=torch.tensor([7], dtype=torch.int32),
                    learning_rate=torch.tensor([0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07])), path)
    settings = dict(TINY, synthetic_samples=24, width_mult=1.0)  # 3 steps an epoch
    with caplog.at_level(logging.INFO, logger="mobilenetv3"):
        mobilenetv3.train(None, resume=str(path), run_dir=str(tmp_path / "run"), epochs=3, lr_schedule="stored",
                          **settings)
    said = [record for record in caplog.records if "learning rates" in record.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in said] == [
        ("WARNING", f"following the 8 learning rates stored in {path}, from step 7; the run has 9 steps: step 8 is "
                    "past them and keeps the last one, 0.07")]
    lines = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if line.startswith("epoch: [")]
    assert [re.search(r"lr:\[([\d.]+)\]", line).group(1) for line in lines] == ["0.070", "0.070"]


def test_the_stored_schedule_needs_a_seed_checkpoint_that_has_one(tmp_path):
    with pytest.raises(ValueError, match="--lr-schedule stored follows the learning rates a seed training .ckpt"):
        mobilenetv3.train(None, run_dir=str(tmp_path / "run"), lr_schedule="stored", **TINY)
    assert not (tmp_path / "run").exists()
