"""--val-split N: N training images held out (drawn with the run's seed) to validate on each epoch; the test split
is scored once, at the end, and recorded apart; the held-out indices are saved with the run and kept on resume."""
import json
from pathlib import Path

import pytest
import torch

from mobilenetv3.build import build_data, build_dataset_split
from mobilenetv3.dist import DistInfo
from mobilenetv3.tasks import train

from builders import IDX_COUNTS, tiny_config, tiny_flags, write_cifar_bin, write_cifar_py, write_idx, write_image_folder
from conftest import run_cli

CPU = torch.device("cpu")
TINY_TRAIN, TINY_TEST = 48, 12  # the tiny run's synthetic splits


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_held_out_images_validate_each_epoch_and_the_test_split_is_scored_once_at_the_end(tmp_path):
    result = train(tiny_config(tmp_path / "run", val_split=8))
    run_dir = Path(result.run_dir)
    saved = json.loads((run_dir / "val_indices.json").read_text())
    assert saved["val_split"] == 8 and saved["train_images"] == TINY_TRAIN and saved["seed"] == 3
    assert len(set(saved["indices"])) == 8 and all(0 <= i < TINY_TRAIN for i in saved["indices"])
    first, last = records(run_dir)
    assert first["val_count"] == last["val_count"] == 8
    assert first["steps"] == (TINY_TRAIN - 8) // 8  # the held-out images are not trained on
    assert not any(key.startswith("test_") for key in first)  # the test split: once, at the end
    assert last["test_count"] == TINY_TEST and 0 <= last["test_top1"] <= 1 and "test_loss" in last
    assert result.test_top1 == last["test_top1"] and result.test_count == TINY_TEST
    assert result.val_count == 8 and result.top1 == last["val_top1"]


def test_the_cli_prints_the_test_split_apart(tmp_path):
    result = run_cli(*tiny_flags(tmp_path / "run", val_split=8, epochs=1))
    assert result.returncode == 0, result.stderr
    assert "on 8 validation images" in result.stdout
    assert "test split (scored once, at the end)" in result.stdout and f"on {TINY_TEST} images" in result.stdout


def test_without_val_split_the_run_validates_on_the_test_split_as_before(tmp_path):
    run_dir = Path(train(tiny_config(tmp_path / "run", epochs=1)).run_dir)
    assert not (run_dir / "val_indices.json").exists()
    (record,) = records(run_dir)
    assert record["val_count"] == TINY_TEST and not any(key.startswith("test_") for key in record)
    data = build_data(tiny_config(tmp_path / "x"), DistInfo(), CPU)
    assert data.test is None and data.test_loader is None and data.holdout is None
    assert len(data.train) == TINY_TRAIN and torch.equal(data.val.images, build_dataset_split(
        tiny_config(tmp_path / "x").data, "val", 3, None).images)


def test_the_draw_follows_the_seed(tmp_path):
    def drawn(seed):
        return build_data(tiny_config(tmp_path, val_split=8, seed=seed), DistInfo(), CPU).holdout["indices"]

    assert drawn(3) == drawn(3) and drawn(3) != drawn(4)


def _formats(root: Path) -> dict:
    write_idx(root / "idx", gz=True)
    write_cifar_bin(root / "bin")
    write_cifar_py(root / "py")
    write_image_folder(root / "folder", {"train": 5, "val": 2})
    return {"mnist": root / "idx", "cifar10-bin": root / "bin", "cifar10-py": root / "py",
            "imagenet": root / "folder", "synthetic": None}


@pytest.mark.parametrize("kind", ["mnist", "cifar10-bin", "cifar10-py", "imagenet", "synthetic"])
def test_every_dataset_format_holds_out_its_own_training_images(tmp_path, kind):
    path = _formats(tmp_path)[kind]
    dataset = kind.split("-")[0]
    settings = dict(dataset=dataset, data_path=str(path) if path else None, val_split=3, batch_size=2,
                    image_size=32, transform="none")
    config = tiny_config(tmp_path / "run", **settings)
    whole = build_dataset_split(config.data, "train", config.run.seed, None)
    data = build_data(config, DistInfo(), CPU)
    held = data.holdout["indices"]
    assert len(data.val) == 3 and len(data.train) == len(whole) - 3 and data.holdout["train_images"] == len(whole)
    assert data.test is not None and len(data.test) == len(build_dataset_split(config.data, "val", 3, None))
    rest = [i for i in range(len(whole)) if i not in held]
    if hasattr(whole, "images"):
        assert torch.equal(data.val.images, whole.images[held]) and torch.equal(data.train.images, whole.images[rest])
    else:
        assert data.val.samples == [whole.samples[i] for i in held]
        assert data.train.samples == [whole.samples[i] for i in rest]
    scored = sum(len(batch.labels) for batch in data.val_loader)
    assert scored == 3
    if kind == "mnist":
        assert len(whole) == IDX_COUNTS["train"]


def test_distributed_samplers_shard_the_held_out_set_and_the_rest(tmp_path):
    """Each rank's loaders see the subsets as whole datasets: validation covers the 8 held-out images once
    over both ranks, and each rank trains on its half of the other 40."""
    config = tiny_config(tmp_path, val_split=8)
    ranks = [build_data(config, DistInfo(rank=rank, world_size=2), CPU) for rank in (0, 1)]
    assert ranks[0].holdout == ranks[1].holdout
    assert sum(len(batch.labels) for data in ranks for batch in data.val_loader) == 8
    assert [len(data.train_loader) for data in ranks] == [(TINY_TRAIN - 8) // 2 // 8] * 2


def test_a_resumed_run_validates_on_the_saved_indices_not_a_new_draw(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli(*tiny_flags(run_dir, val_split=8, max_steps=3))
    assert first.returncode == 0, first.stderr
    saved = json.loads((run_dir / "val_indices.json").read_text())
    # Other indices than the seed draws: a resumed run that drew again would validate on those of seed 3.
    chosen = [i for i in range(TINY_TRAIN) if i not in saved["indices"]][:8]
    (run_dir / "val_indices.json").write_text(json.dumps(dict(saved, indices=chosen)))
    resumed = run_cli(*tiny_flags(run_dir, val_split=8, resume="auto", max_steps=8))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "val_indices.json").read_text())["indices"] == chosen
    config = tiny_config(tmp_path / "x", val_split=8)
    data = build_data(config, DistInfo(), CPU, holdout=dict(saved, indices=chosen))
    whole = build_dataset_split(config.data, "train", 3, None)
    assert torch.equal(data.val.images, whole.images[chosen])
    assert records(run_dir)[-1]["test_count"] == TINY_TEST


@pytest.mark.parametrize("change, named", [
    (dict(val_split=4), "--val-split 4"),
    (dict(val_split=0), "--val-split 0"),
    ("train_images", "training set of 40"),
    ("garbage", "val_indices.json"),
])
def test_a_resume_that_would_change_the_split_is_one_line(tmp_path, change, named):
    run_dir = tmp_path / "run"
    assert run_cli(*tiny_flags(run_dir, val_split=8, max_steps=2)).returncode == 0
    path = run_dir / "val_indices.json"
    flags = dict(val_split=8)
    if change == "train_images":
        path.write_text(json.dumps(dict(json.loads(path.read_text()), train_images=40)))
    elif change == "garbage":
        path.write_text("{not json")
    else:
        flags = change
    result = run_cli(*tiny_flags(run_dir, resume="auto", max_steps=4, **flags))
    assert result.returncode == 2 and named in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("count, named", [
    (-1, "--val-split must be 0 or more, got -1"),
    (TINY_TRAIN, f"--val-split {TINY_TRAIN} must hold out fewer images than the training set has ({TINY_TRAIN})"),
    (100, f"--val-split 100 must hold out fewer images than the training set has ({TINY_TRAIN})"),
])
def test_a_val_split_that_leaves_nothing_or_is_negative_is_one_line(tmp_path, count, named):
    run_dir = tmp_path / "run"
    result = run_cli(*tiny_flags(run_dir, val_split=count))
    assert result.returncode == 2 and named in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not run_dir.exists()  # a fresh run that fails before its first checkpoint leaves no trace
