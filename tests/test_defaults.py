"""Defaults that fit the run's data (``mobilenetv3.auto``): a bare command on any dataset gets an LR scaled with its
batch, enough steps to learn, a fine-tuning LR for pretrained weights, its data's image size, each choice logged
with its reason and recorded; a run that ends at chance says why."""
import logging

import pytest
import torch
import yaml
from PIL import Image

import mobilenetv3
from mobilenetv3 import auto
from mobilenetv3.config import load_config, validate
from mobilenetv3.data.datasets import ImageFiles, InMemoryImages

from builders import tiny_config
from conftest import run_cli


def images(count: int, side: int, channels: int = 1) -> InMemoryImages:
    return InMemoryImages(torch.zeros(count, channels, side, side, dtype=torch.uint8), torch.arange(count) % 10,
                          [str(i) for i in range(10)], "test")


def chosen(choices) -> dict:
    return {c.key: c.value for c in choices}


def test_the_demo_data_keeps_the_demo_recipe():
    """Fashion-MNIST (60,000 images of 28 px): the built-in recipe is its own, only the LR's batch is stated."""
    config = load_config(None)
    choices = auto.choose_for_data(config, images(60000, 28), pretrained=False)
    assert chosen(choices) == {"lr_reference_batch": 256}
    assert (config.data.batch_size, config.data.image_size, config.optim.lr) == (256, 28, 0.8)
    assert auto.choose_length(config, 60000 // 256) == [] and config.optim.epochs == 3


def test_a_small_dataset_gets_smaller_batches_a_scaled_lr_and_enough_steps():
    """1,500 images of 8 px (the new user's run: 18 steps at batch 256, chance): batch 16, LR 0.8 x 16 / 256,
    upscaled to 28 px, and the 3 epochs lengthened to at least MIN_STEPS steps with the warmup's share kept."""
    config = load_config(None)
    choices = auto.choose_for_data(config, images(1500, 8), pretrained=False)
    assert chosen(choices) == {"batch_size": 16, "lr_reference_batch": 256}  # 28 px: the default already
    assert config.data.image_size == 28
    steps_per_epoch = 1500 // 16
    length = auto.choose_length(config, steps_per_epoch)
    assert config.optim.epochs * steps_per_epoch >= auto.MIN_STEPS > (config.optim.epochs - 1) * steps_per_epoch
    assert config.optim.warmup_epochs == pytest.approx(0.9 / 3 * config.optim.epochs)
    assert {c.key for c in length} == {"epochs", "warmup_epochs"}
    assert all(config.source_of(c.key).startswith("auto: ") for c in choices + length)


def test_what_the_user_gives_is_never_changed(caplog):
    """A given LR is used as given (no reference batch invented), given epochs are kept with a warning."""
    config = load_config(None, dict(lr=0.1, batch_size=64, epochs=2, image_size=32))
    assert auto.choose_for_data(config, images(1500, 8), pretrained=True) == []
    with caplog.at_level(logging.WARNING, logger="mobilenetv3"):
        assert auto.choose_length(config, 1500 // 64) == []
    assert config.optim.epochs == 2 and config.optim.lr_reference_batch is None
    assert "this run is 46 steps" in caplog.text and "--epochs 14" in caplog.text
    preset = load_config("cifar10-cpu")  # a preset is a whole recipe: nothing chosen
    assert auto.choose_for_data(preset, images(1500, 32, 3), pretrained=False) == []


def test_fine_tuning_defaults_to_a_tenth_of_the_lr_and_of_the_warmup():
    """The run that diverged (pretrained weights, batch 64, LR 0.8 unscaled: loss 2.5 million then NaN) now gets
    0.08 at batch 256, i.e. 0.02 at batch 64."""
    config = load_config(None, dict(batch_size=64, image_size=32))
    choices = chosen(auto.choose_for_data(config, images(20000, 32, 3), pretrained=True))
    assert choices["lr"] == pytest.approx(0.08) and choices["warmup_epochs"] == pytest.approx(0.09)
    assert config.optim.lr * 64 / config.optim.lr_reference_batch == pytest.approx(0.02)


def test_the_image_size_follows_the_files_and_the_stem_stride_follows_it(tmp_path):
    """An ImageFolder of 224 px JPEGs trains at 224 px with the paper's stride-2 stem, not at the demo's 28 px."""
    samples = []
    for n in range(4):
        path = tmp_path / f"{n}.jpg"
        Image.new("RGB", (300, 224), (n * 40, 0, 0)).save(path)
        samples.append((str(path), n % 2))
    config = load_config(None)
    assert config.model.stem_stride == 1  # the default for 28 px
    auto.choose_for_data(config, ImageFiles(samples, ["a", "b"], "test"), pretrained=False)
    validate(config)
    assert (config.data.image_size, config.model.stem_stride) == (224, 2)
    assert auto.sample_images(ImageFiles(samples, ["a", "b"], "test")) == (224, {"RGB"})


def test_a_run_at_chance_names_the_likely_cause():
    assert auto.chance_warning(0.90, 10, 50, None, None, 0.8) is None
    too_short = auto.chance_warning(0.103, 10, 18, None, None, 0.8)
    assert "within 5 points of chance (10.00% for 10 classes)" in too_short and "too few steps: 18" in too_short
    assert "the learning rate" in auto.chance_warning(0.11, 10, 900, 2.3, 2.4, 0.8)
    assert "--lr 0.08" in auto.chance_warning(0.11, 10, 900, 2.3, 2.4, 0.8)
    assert "the data" in auto.chance_warning(0.11, 10, 900, 2.3, 0.4, 0.8)


def test_a_short_run_records_its_choices_and_reestimates_batchnorm(tmp_path, caplog):
    """A real (tiny) run: config.yaml records what was chosen and that BatchNorm was re-estimated."""
    config = tiny_config(tmp_path / "run", epochs=1, synthetic_samples=48)
    config.optim.lr_reference_batch = None
    config._sources.pop("lr")  # the built-in LR: scaled with the batch
    config.optim.lr = 0.8
    with caplog.at_level(logging.INFO, logger="mobilenetv3"):
        mobilenetv3.train(config)
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["resolved"]
    assert resolved["choices"]["lr_reference_batch"]["value"] == 256
    assert resolved["peak_lr"] == pytest.approx(0.8 * 8 / 256) and resolved["bn_reestimated"] is True
    assert "chosen for this run: lr_reference_batch 256" in caplog.text
    assert "BatchNorm statistics are re-estimated" in caplog.text
    assert "this run is 6 steps (1 epoch of 6)" in caplog.text


def test_a_run_that_cannot_learn_ends_with_the_warning(tmp_path):
    """Two classes of the very same images: chance is all a model can reach; the CLI run says so at the end."""
    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for n in range(8):
                Image.new("L", (32, 32), n * 30).save(folder / f"{n}.png")
    result = run_cli("train", "--dataset", "imagenet", "--data-path", str(tmp_path / "data"), "--run-dir",
                     str(tmp_path / "run"), "--width-mult", "0.5", "--epochs", "1", "--batch-size", "8",
                     "--workers", "0", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "within 5 points of chance (50.00% for 2 classes); likely cause: too few steps" in result.stderr
    assert "likely cause: too few steps" in (tmp_path / "run" / "train.log").read_text()


def test_a_config_set_in_python_keeps_its_values():
    """A value assigned in Python is the user's, as a flag is: nothing is chosen over it."""
    from mobilenetv3.config import Config

    config = Config()
    config.optim.lr, config.data.batch_size = 0.05, 64
    choices = chosen(auto.choose_for_data(config, images(1500, 8), pretrained=True))
    assert "lr" not in choices and "batch_size" not in choices and "lr_reference_batch" not in choices
    assert (config.optim.lr, config.data.batch_size) == (0.05, 64)


def test_under_torchrun_the_global_batch_stays_the_recipes():
    """Fashion-MNIST on 2 and 8 processes: a global batch of 256 at LR 0.8, as in one process."""
    for world_size, per_process in ((2, 128), (8, 32)):
        config = load_config(None)
        auto.choose_for_data(config, images(60000, 28), pretrained=False, world_size=world_size)
        assert config.data.batch_size == per_process
        assert config.optim.lr * per_process * world_size / config.optim.lr_reference_batch == pytest.approx(0.8)


def test_other_optimizers_get_their_own_default_lr_and_a_linear_probe_no_fine_tuning_factor(caplog):
    adamw = load_config(None, dict(optimizer="adamw", nesterov=False))
    auto.choose_for_data(adamw, images(60000, 28), pretrained=True)
    assert adamw.optim.lr == pytest.approx(1e-4) and adamw.optim.lr_reference_batch == 256  # 1e-3, fine-tuned
    rmsprop = load_config(None, dict(optimizer="rmsprop", nesterov=False))
    auto.choose_for_data(rmsprop, images(60000, 28), pretrained=False)
    assert rmsprop.optim.lr == pytest.approx(0.1 * 256 / 4096)  # the paper's 0.1 at batch 4096
    probe = load_config(None, dict(freeze_backbone=True))
    assert "lr" not in chosen(auto.choose_for_data(probe, images(60000, 28), pretrained=True))
    preset = load_config("fashion-mnist", dict(batch_size=64))
    with caplog.at_level(logging.WARNING, logger="mobilenetv3"):
        assert auto.choose_for_data(preset, images(60000, 28), pretrained=True) == []
    assert "fine-tuning pretrained weights at fashion-mnist's LR 0.8, a from-scratch LR" in caplog.text


def test_a_resumed_run_keeps_what_it_chose(tmp_path):
    """Resumed from a Config in Python (no sources): the saved run's LR and batch, not chosen again."""
    config = tiny_config(tmp_path / "run", epochs=2, max_steps=3, synthetic_samples=48)
    config._sources.pop("lr")
    config.optim.lr = 0.8  # the built-in LR, scaled: 0.8 x 8 / 256
    first = mobilenetv3.train(config)
    record = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["resolved"]
    assert record["peak_lr"] == pytest.approx(0.025) and first.global_step == 3
    resumed = mobilenetv3.train(config, resume="auto", max_steps=6)  # the same Config, as a Python user would
    again = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["resolved"]
    assert resumed.global_step == 6 and again["peak_lr"] == pytest.approx(0.025)
    assert again["choices"] == record["choices"] and "lr_reference_batch" in again["choices"]
