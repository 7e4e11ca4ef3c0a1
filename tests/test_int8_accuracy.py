"""INT8 accuracy control's validation images: training images apart from the calibration images, the ones the
checkpoint's run held out (``val_indices.json``) when it held some out, never the split INT8 is scored on.

Without OpenVINO (the drawing is the export task's); the quantisation itself is checked in openvino_checks.py,
and the option's mistakes (one line, exit code 2) are cases of test_bad_input.py.
"""
import json

import torch

from mobilenetv3.build import build_dataset_split
from mobilenetv3.config import Config
from mobilenetv3.data import Preprocessing, draw_sample, eval_loader
from mobilenetv3.data.datasets import subset
from mobilenetv3.tasks.export import _export_data

TRAIN = 64  # synthetic training images (the val split: a quarter of that, drawn with another seed)
PRE = Preprocessing(resize=16, crop=16, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3, in_chans=3)


def config(val_split: int = 0) -> Config:
    c = Config()
    c.update(dict(dataset="synthetic", synthetic_samples=TRAIN, image_size=16, batch_size=8, val_split=val_split,
                  seed=3), source="flag")
    return c


def rows(batches) -> set:
    """Each image (C, H, W) of the batches, as bytes: images told apart by their pixels."""
    return {image.numpy().tobytes() for batch in batches for image in batch}


def training_images(c: Config, indices) -> set:
    """The training images at ``indices``, as the eval protocol gives them."""
    train = build_dataset_split(c.data, "train", c.run.seed, 10)
    return rows(b.images for b in eval_loader(subset(train, list(indices)), PRE, batch_size=8))


def write_holdout(folder, indices, train_images=TRAIN):
    (folder / "val_indices.json").write_text(json.dumps(dict(val_split=len(indices), seed=3, indices=indices,
                                                             train_images=train_images)))
    return folder / "last.pt"  # the checkpoint beside it (only its folder is read)


def test_validation_images_are_the_held_out_ones_less_the_calibration_images(tmp_path):
    held_out = list(range(0, TRAIN, 4))  # 16 images
    c = config(val_split=len(held_out))
    data = _export_data(c, 10, PRE, True, calibration_images=40, verify_images=4, validation_images=100,
                        checkpoint=write_holdout(tmp_path, held_out))
    calibration, validation = rows(data.calibration), rows(data.validation)
    assert validation and not validation & calibration
    assert validation | (training_images(c, held_out) & calibration) == training_images(c, held_out)
    sample = data.validation_sample
    assert (sample.split, sample.images, sample.of) == ("train", len(validation), len(validation))
    assert sample.pool == "held out from training (val_indices.json), less the calibration images"
    assert sample.to_dict()["pool"] == sample.pool and "pool" not in data.calibration_sample.to_dict()
    assert sample.describe().startswith(f"all {len(validation)} training images held out from training")


def test_without_a_holdout_they_are_training_images_not_used_to_calibrate(tmp_path):
    c = config()
    data = _export_data(c, 10, PRE, True, calibration_images=40, verify_images=4, validation_images=10,
                        checkpoint=write_holdout(tmp_path, [1, 2, 3]))  # the run's config held none out: ignored
    assert len(rows(data.validation)) == 10 and not rows(data.validation) & rows(data.calibration)
    sample = data.validation_sample
    assert (sample.images, sample.of, sample.seed) == (10, TRAIN - 40, 0)
    assert sample.describe() == (f"10 of {TRAIN - 40} training images trained on (its run held none out), less the "
                                 "calibration images, drawn at random with seed 0")


def test_a_holdout_of_another_training_set_is_not_used(tmp_path):
    c = config(val_split=3)
    data = _export_data(c, 10, PRE, True, calibration_images=8, verify_images=4, validation_images=5,
                        checkpoint=write_holdout(tmp_path, [1, 2, 3], train_images=TRAIN + 1))
    assert data.validation_sample.of == TRAIN - 8 and "held none out" in data.validation_sample.pool


def test_calibration_and_verification_images_are_drawn_as_before():
    """The same images ``data.draw_sample`` draws: exported files recorded before keep their meaning."""
    c = config()
    data = _export_data(c, 10, PRE, True, calibration_images=12, verify_images=5)
    train = build_dataset_split(c.data, "train", c.run.seed, 10)
    val = build_dataset_split(c.data, "val", c.run.seed, 10)
    expected = [b.images for b in eval_loader(draw_sample(train, 12, 0), PRE, batch_size=8)]
    assert torch.equal(torch.cat(data.calibration), torch.cat(expected))
    assert torch.equal(torch.cat(data.real), torch.cat([b.images for b in eval_loader(draw_sample(val, 5, 0), PRE,
                                                                                       batch_size=8)]))
    assert data.validation is None and data.validation_sample is None
