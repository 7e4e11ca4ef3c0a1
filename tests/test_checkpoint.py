"""The training state a checkpoint carries: copies that stay apart, the on-disk dict read back field by field, and
only a checkpoint with a training state continued."""
import pytest
import torch

from mobilenetv3.checkpoint import Checkpoint, Trainable, TrainState, rng_state


def test_a_copy_has_its_own_history():
    state = TrainState(epoch=1, history=[{"epoch": 1, "train_loss": 2.0}])
    copy = state.copy()
    copy.history.append({"epoch": 2, "train_loss": 1.5})
    state.history.append({"epoch": 2, "train_loss": 1.4})
    assert [r["train_loss"] for r in state.history] == [2.0, 1.4]
    assert [r["train_loss"] for r in copy.history] == [2.0, 1.5]


def test_a_copy_takes_changes_and_leaves_the_original():
    state = TrainState(epoch=3, step_in_epoch=5, epoch_loss_sum=7.0, epoch_loss_steps=5, best_top1=0.5)
    changed = state.copy(epoch_loss_sum=1.0)
    assert (changed.epoch, changed.step_in_epoch, changed.epoch_loss_sum, changed.best_top1) == (3, 5, 1.0, 0.5)
    assert state.epoch_loss_sum == 7.0


def _trainable() -> Trainable:
    model = torch.nn.Linear(2, 3)
    return Trainable(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))


def test_capture_and_restore_keep_the_runs_history_apart():
    trainable, state = _trainable(), TrainState(epoch=1, global_step=4, history=[{"epoch": 1}])
    card = dict(model_name="linear", model_kwargs={}, classes=None, preprocessing=None)
    saved = Checkpoint.capture(trainable, card, {}, state, [rng_state()], steps_per_epoch=4)
    state.history.append({"epoch": 2})  # the run goes on after saving
    assert saved.state.history == [{"epoch": 1}]
    restored = saved.restore(trainable, rank=0, world_size=1, source="last.pt")
    restored.history.append({"epoch": 2, "resumed": True})
    assert saved.state.history == [{"epoch": 1}]


def test_the_on_disk_dict_reads_back_into_each_field():
    trainable = _trainable()
    state = TrainState(epoch=2, step_in_epoch=1, global_step=9, epoch_loss_sum=0.5, epoch_loss_steps=1,
                       best_top1=0.75, history=[{"epoch": 1}, {"epoch": 2}])
    card = dict(model_name="linear", model_kwargs={"width": 2}, classes=["a", "b", "c"],
                preprocessing={"crop": 2})
    saved = Checkpoint.capture(trainable, card, {"run": {"seed": 1}}, state, [{"torch": 1}, {"torch": 2}], 4)
    read = Checkpoint.from_dict(saved.to_dict())
    assert (read.model_name, read.model_kwargs, read.classes, read.preprocessing, read.config) == \
           ("linear", {"width": 2}, ["a", "b", "c"], {"crop": 2}, {"run": {"seed": 1}})
    assert read.model.keys() == saved.model.keys() and read.optimizer == saved.optimizer
    assert (read.ema, read.ema_n_averaged, read.scaler) == (None, None, None)
    assert (read.steps_per_epoch, read.rng_ranks) == (4, [{"torch": 1}, {"torch": 2}])
    assert read.state == state and read.state.history is not state.history


def test_only_a_training_checkpoint_can_be_continued():
    from mobilenetv3.errors import UsageError

    trainable, card = _trainable(), dict(model_name="linear", model_kwargs={})
    weights = Checkpoint(**card, model=trainable.model.state_dict(), config={"run": {}})
    without_config = Checkpoint.capture(trainable, card, None, TrainState(), [rng_state()], 4)
    for saved in (weights, without_config):
        with pytest.raises(UsageError, match="^w.pt holds weights only, not a training state"):
            saved.require_training_state("w.pt")
    with pytest.raises(UsageError, match="holds weights only"):
        weights.restore(trainable, rank=0, world_size=1, source="w.pt")
    run = Checkpoint.capture(trainable, card, {"run": {}}, TrainState(), [rng_state()], 4)
    assert run.require_training_state("last.pt") is run
