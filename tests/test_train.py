"""Training: the seed's recipe (schedule, loss, decay), checkpoints, resume, NaN stop, DDP, seed commands."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mobilenetv3 import checkpoint as ckpt
from mobilenetv3 import weights as wts
from mobilenetv3.build import build_model
from mobilenetv3.config import load_config
from mobilenetv3.models import create_model
from mobilenetv3.optim import RMSpropTF, param_groups, smoothed_cross_entropy, warmup_cosine_lr
from mobilenetv3.tasks import train

from builders import TINY, tiny_config, tiny_flags
from conftest import child_pids, cli_command, run_cli

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ the recipe
def seed_lr_array(lr_init, lr_end, lr_max, warmup_epochs, total_epochs, steps_per_epoch):
    """The seed's src/lr_generator.py, as SEED.md gives it: the whole per-step array at once."""
    total_steps = steps_per_epoch * total_epochs
    warmup_steps = steps_per_epoch * warmup_epochs
    lrs = []
    for i in range(total_steps):
        if i < warmup_steps:
            lr = lr_init + (lr_max - lr_init) * i / warmup_steps
        else:
            lr = lr_end + (lr_max - lr_end) * (1.0 + math.cos(math.pi * (i - warmup_steps) /
                                                             (total_steps - warmup_steps))) / 2.0
        lrs.append(max(lr, 0.0))
    return np.array(lrs, dtype=np.float32)


def test_lr_schedule_is_the_seed_formula():
    steps_per_epoch, epochs, warmup = 7, 5, 2
    expected = seed_lr_array(0.0, 0.0, 1.54, warmup, epochs, steps_per_epoch)
    ours = np.array([warmup_cosine_lr(i, epochs * steps_per_epoch, warmup * steps_per_epoch, 1.54)
                     for i in range(epochs * steps_per_epoch)], dtype=np.float32)
    np.testing.assert_array_equal(ours, expected)
    assert ours[0] == 0.0  # the first warmup step trains with lr_init
    assert ours[1] == pytest.approx(1.54 / 14)
    assert ours[14] == pytest.approx(1.54)  # the peak, right after warmup
    assert 0 < ours[-1] < 0.01  # the last step, just above lr_end
    assert ours.min() >= 0


def test_lr_schedule_with_nonzero_ends():
    expected = seed_lr_array(0.01, 0.001, 0.4, 1, 3, 10)
    ours = [warmup_cosine_lr(i, 30, 10, 0.4, 0.01, 0.001) for i in range(30)]
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_runner_follows_the_schedule_and_logs_the_seed_lines(tmp_path):
    result = train(tiny_config(tmp_path / "run", lr_reference_batch=4))
    log = (tmp_path / "run" / "train.log").read_text().splitlines()
    steps = [line for line in log if line.startswith("epoch: [")]
    assert len(steps) == result.global_step == 12  # 48 images / 8 per batch x 2 epochs
    assert re.fullmatch(r"epoch: \[  0/  2\], step:\[    0/    6\], loss:\[\d+\.\d{3}/\d+\.\d{3}\], "
                        r"time:\[\d+\.\d{3}\], lr:\[0\.000\]", steps[0])
    assert sum(line.startswith("epoch time: ") for line in log) == 2
    lrs = [float(re.search(r"lr:\[([\d.]+)\]", line).group(1)) for line in steps]
    peak = 0.05 * 8 / 4  # linear scaling from the reference batch of 4 to the real batch of 8
    expected = seed_lr_array(0.0, 0.0, peak, 1, 2, 6)
    np.testing.assert_allclose(lrs, np.round(expected, 3), atol=1e-9)
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    assert "peak_lr: 0.1" in resolved


def test_seed_label_smoothing_matches_mindspore_one_hot():
    torch.manual_seed(0)
    logits, labels, eps, n = torch.randn(6, 10), torch.tensor([0, 3, 9, 2, 2, 7]), 0.1, 10
    one_hot = np.full((6, n), eps / (n - 1))  # MindSpore OneHot(on=1-e, off=e/(N-1))
    one_hot[np.arange(6), labels.numpy()] = 1 - eps
    log_probs = logits.numpy() - np.log(np.exp(logits.numpy()).sum(1, keepdims=True))
    expected = -(one_hot * log_probs).sum(1).mean()
    assert smoothed_cross_entropy(logits, labels, eps, "seed").item() == pytest.approx(expected, rel=1e-6)
    torch_mode = smoothed_cross_entropy(logits, labels, eps, "torch")
    assert torch_mode.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=eps).item(), rel=1e-6)
    soft = F.one_hot(labels, n).float()  # soft (mixup) targets that are one-hot give the same loss
    assert smoothed_cross_entropy(logits, soft, eps, "seed").item() == pytest.approx(expected, rel=1e-6)


def test_weight_decay_groups_follow_mindspore_filter():
    model = create_model("mobilenetv3_small")
    decay, no_decay = param_groups(model, 4e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "stem.bn.weight" in skipped and "blocks.3.se.fc1.bias" in decayed and "classifier.bias" in decayed
    assert all(".bn." in n for n in skipped)  # MindSpore: only gamma/beta are skipped
    _, no_decay = param_groups(model, 4e-5, decay_bias=False)
    assert "classifier.bias" in {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0


def test_rmsprop_tf_matches_tensorflow_update():
    """tf.compat.v1.train.RMSPropOptimizer: ms = d*ms + (1-d)*g^2 (ms starts at 1); mom = m*mom + lr*g/sqrt(ms+eps)."""
    param = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    opt = RMSpropTF([param], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    ms, mom, value = np.ones(3), np.zeros(3), param.detach().numpy().astype(np.float64).copy()
    for _ in range(4):
        opt.zero_grad()
        (param ** 2).sum().backward()
        grad = 2 * value
        opt.step()
        ms = 0.9 * ms + 0.1 * grad ** 2
        mom = 0.9 * mom + 0.1 * grad / np.sqrt(ms + 1e-3)
        value = value - mom
    np.testing.assert_allclose(param.detach().numpy(), value, rtol=1e-5)


# ---------------------------------------------------------------------------------- checkpoints
def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint({"value": torch.ones(3)}, path)

    def full_disk(fd):  # where delayed allocation reports ENOSPC: at fsync, after the bytes were "written"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        ckpt.save_checkpoint({"value": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt.load_file(path)["value"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


_SAVE_LOOP = """
import sys, torch
from pathlib import Path
from mobilenetv3.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from mobilenetv3.files import remove_stale_temporaries
path, saves = Path(sys.argv[1]), int(sys.argv[2])
removed = remove_stale_temporaries(path.parent)  # a resume, as the runner does once it holds the run's lock
start = load_checkpoint(path)["i"] if path.exists() else 0
print("resumed", start, *removed, flush=True)
for i in range(start + 1, start + 1 + saves):
    save_checkpoint({"format": FORMAT, "i": i, "data": torch.full((4_000_000,), float(i))}, path)
    print(i, flush=True)  # save i is complete: last.pt holds it
"""


def start_saver(path: Path, log: Path, saves: int):
    """A process that resumes from ``path`` and saves it ``saves`` more times, logging each finished save."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(path), str(saves)], stdout=out,
                                stderr=subprocess.STDOUT)


def saver_log(log: Path) -> tuple[list[str], list[int]]:
    """The ``resumed`` line's words and the numbers of the saves that finished."""
    first, *saved = log.read_text().splitlines() or [""]
    return first.split(), [int(line) for line in saved]


def kill_while_writing(proc, tmp: Path, log: Path, saves: int, delay: float, timeout=120) -> None:
    """SIGKILL ``proc`` inside ``files.write_atomic``, while its temporary file ``tmp`` exists, once ``saves``
    saves have finished. The process is stopped (SIGSTOP) to look: no race with a write that ends meanwhile."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if tmp.exists() and len(saver_log(log)[1]) >= saves:
            time.sleep(delay)  # later into the write: fsync, or the last bytes
            os.kill(proc.pid, signal.SIGSTOP)
            _, status = os.waitpid(proc.pid, os.WUNTRACED)
            assert os.WIFSTOPPED(status), f"the saver exited ({status:#x}): {log.read_text()[-2000:]}"
            if tmp.exists() and len(saver_log(log)[1]) >= saves:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            os.kill(proc.pid, signal.SIGCONT)
        assert proc.poll() is None, (f"the saver ended after {len(saver_log(log)[1])} saves, none caught writing "
                                     f"{tmp.name} (is last.pt still written through files.write_atomic?): "
                                     f"{log.read_text()[-2000:]}")
        time.sleep(0.001)
    raise AssertionError(f"no save was caught writing its temporary file {tmp.name} within {timeout} s "
                         f"(is last.pt still written through files.write_atomic?): {log.read_text()[-2000:]}")


def test_kill_during_save_never_leaves_a_torn_file(tmp_path):
    """SIGKILL inside the write, at the first save of a run and at later ones: last.pt stays the previous save
    (or absent before the first), loads, and the next process resumes from it after removing the stale file."""
    run, path = tmp_path / "run", tmp_path / "run" / "last.pt"
    run.mkdir()
    expected_start, stale, checked = 0, [], 0
    kills = ((0, 0.0), (1, 0.0), (2, 0.002), (1, 0.005))  # (saves finished before the kill, delay into the write)
    for number, (saves, delay) in enumerate(kills):
        log = tmp_path / f"saver{number}.log"
        proc = start_saver(path, log, saves=200)
        tmp = run / f".tmp{proc.pid}.last.pt"
        try:
            kill_while_writing(proc, tmp, log, saves, delay)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        checked += tmp.is_file()  # left behind: the kill landed inside the write
        resumed, saved = saver_log(log)
        assert resumed == ["resumed", str(expected_start), *stale]  # the last kill's file removed, its save resumed
        assert saved == list(range(expected_start + 1, expected_start + 1 + len(saved))) and len(saved) >= saves
        done = saved[-1] if saved else expected_start
        assert sorted(p.name for p in run.iterdir()) == sorted([tmp.name] + (["last.pt"] if done else []))
        if done:
            state = ckpt.load_checkpoint(path)
            assert state["i"] == done  # the old file: the killed save never reached its rename
            assert torch.all(state["data"] == done)
        expected_start, stale = done, [tmp.name]
    assert checked == len(kills), f"only {checked} of {len(kills)} kills landed inside a write"
    log = tmp_path / "resumed.log"
    proc = start_saver(path, log, saves=1)
    assert proc.wait(timeout=120) == 0, log.read_text()
    assert saver_log(log) == (["resumed", str(expected_start), *stale], [expected_start + 1])
    assert sorted(p.name for p in run.iterdir()) == ["last.pt"]
    assert ckpt.load_checkpoint(path)["i"] == expected_start + 1


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(*tiny_flags(run_dir, lr=1e12, warmup_epochs=0, save_every_steps=1))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert re.search(r"the loss is (nan|inf) at step \d+; stopping", lines[-1]) and "Traceback" not in result.stderr
    state = ckpt.load_checkpoint(run_dir / "last.pt")
    assert state["global_step"] >= 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_pretrained_with_another_class_count_resets_the_classifier(tmp_path, caplog):
    source = create_model("mobilenetv3_small", num_classes=10, width_mult=0.5)
    weights = wts.Weights(source.model_name, source.model_kwargs, source.state_dict(), "mobilenetv3")
    wts.write_weights(weights, tmp_path / "ten.pt", "mobilenetv3")
    config = tiny_config(tmp_path / "run", pretrained=str(tmp_path / "ten.pt"))
    with caplog.at_level("INFO"):
        model = build_model(config.model, num_classes=3, in_chans=3, weights=wts.read_weights(tmp_path / "ten.pt"))
    assert "the pretrained classifier has 10 classes, the data 3: the classifier starts fresh" in caplog.text
    assert model.classifier.out_features == 3
    assert torch.equal(model.blocks[4].dw.conv.weight, source.blocks[4].dw.conv.weight)
    assert torch.equal(model.head_fc.weight, source.head_fc.weight)
    gray = build_model(config.model, num_classes=3, in_chans=1, weights=wts.read_weights(tmp_path / "ten.pt"))
    assert torch.equal(gray.stem.conv.weight, source.stem.conv.weight.sum(1, keepdim=True))


def test_pretrained_torchvision_weights_train(tmp_path):
    import torchvision

    torch.save(torchvision.models.mobilenet_v3_small(width_mult=0.5).state_dict(), tmp_path / "tv.pth")
    result = train(tiny_config(tmp_path / "run", pretrained=str(tmp_path / "tv.pth"), epochs=1))
    state = ckpt.load_checkpoint(Path(result.checkpoint))
    assert state["model_kwargs"]["bn_eps"] == 1e-3  # torchvision's BatchNorm settings came with its weights
    assert state["model"]["classifier.weight"].shape == (10, 512)


def test_freeze_backbone_trains_only_the_classifier(tmp_path):
    config = tiny_config(tmp_path / "run", freeze_backbone=True, epochs=1)
    result = train(config)
    state = ckpt.load_checkpoint(Path(result.checkpoint))
    torch.manual_seed(TINY["seed"])
    initial = build_model(config.model, num_classes=10, in_chans=3).state_dict()
    assert torch.equal(state["model"]["blocks.2.dw.conv.weight"], initial["blocks.2.dw.conv.weight"])
    assert torch.equal(state["model"]["blocks.2.dw.bn.running_mean"], initial["blocks.2.dw.bn.running_mean"])
    assert not torch.equal(state["model"]["classifier.weight"], initial["classifier.weight"])


def test_checkpoint_describes_itself_and_loads_weights_only(tmp_path):
    result = train(tiny_config(tmp_path / "run", ema_decay=0.9, keep_checkpoint_max=1, epochs=3))
    run_dir = Path(result.run_dir)
    names = sorted(p.name for p in run_dir.iterdir() if p.suffix == ".pt")
    assert names == ["best.pt", "last.pt", "mobilenetV3-3_6.pt"]  # keep_checkpoint_max=1 pruned epochs 1-2
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["model_name"] == "mobilenetv3_small" and state["model_kwargs"]["width_mult"] == 0.5
    assert state["classes"][:2] == ["class_0", "class_1"] and state["preprocessing"]["crop"] == 32
    assert state["config"]["optim"]["epochs"] == 3 and state["epoch"] == 3 and state["ema"] is not None
    model = wts.load_model(run_dir / "last.pt")
    assert not model.training and model.classes == state["classes"]
    ema = wts.load_model(run_dir / "model_ema.safetensors")
    assert torch.equal(ema.classifier.weight, state["ema"]["classifier.weight"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and all(r["val_count"] == 12 for r in records)
    assert "ema_top1" in records[-1] and (run_dir / "curves.png").stat().st_size > 0


def test_ema_batchnorm_statistics_are_those_of_the_averaged_weights(tmp_path):
    """Regression: averaging BatchNorm buffers along with the weights left EMA at chance accuracy (10%)."""
    from mobilenetv3.build import build_data
    from mobilenetv3.data import eval_loader
    from mobilenetv3.dist import DistInfo

    config = tiny_config(tmp_path / "run", ema_decay=0.99, epochs=2)
    train(config)
    ema = wts.load_model(tmp_path / "run" / "model_ema.safetensors")
    data = build_data(config, DistInfo(), torch.device("cpu"))
    everything = eval_loader(data.train, data.preprocessing, batch_size=len(data.train))
    images = next(iter(everything))[0]  # the 48 training images, eval preprocessing: all of the 20 batches
    with torch.no_grad():
        stem_out = ema.stem.conv(images)  # (B, C, H, W), what the first BatchNorm sees
    torch.testing.assert_close(ema.stem.bn.running_mean, stem_out.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)


# -------------------------------------------------------------------------------- resume, signals
def final_state(run_dir):
    state = ckpt.load_checkpoint(run_dir / "last.pt")
    return state["model"], state["optimizer"]["state"]


def assert_bitwise_equal(a, b):
    model_a, opt_a = a
    model_b, opt_b = b
    assert model_a.keys() == model_b.keys()
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
    for index in opt_a:
        assert torch.equal(opt_a[index]["momentum_buffer"], opt_b[index]["momentum_buffer"])


def wait_for_steps(log: Path, count: int, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and sum(line.startswith("epoch: [") for line in log.read_text().splitlines()) >= count:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


# Dropout and EMA: state a resumed run must get back. How often a run saves does not change what it computes,
# so one run left alone (the fixture `straight`) is the reference of both one-process resume tests.
RESUME = dict(epochs=3, deterministic=True, dropout=0.2, ema_decay=0.8)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The final state of the RESUME run, left alone (18 steps)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = run_cli(*tiny_flags(run_dir, **RESUME))
    assert result.returncode == 0, result.stderr
    return final_state(run_dir)


def test_kill_and_resume_is_bitwise_identical(straight, tmp_path):
    """SIGKILL in the middle of an epoch, --resume auto from the last checkpoint (step 2k), same final weights."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli_command(*tiny_flags(killed, save_every_steps=2, **RESUME)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_steps(killed / "train.log", 9, proc)  # epoch 2, step 3: last save at global step 8
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = ckpt.load_checkpoint(killed / "last.pt")
    assert 0 < state["step_in_epoch"] < 6 or state["epoch"] >= 1  # a mid-run checkpoint
    assert state["global_step"] < 18
    resumed = run_cli(*tiny_flags(killed, resume="auto", save_every_steps=2, **RESUME))
    assert resumed.returncode == 0, resumed.stderr
    assert_bitwise_equal(straight, final_state(killed))


def test_sigterm_saves_at_the_next_step_and_says_how_to_resume(straight, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(cli_command(*tiny_flags(run_dir, **RESUME)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # no periodic saves: only the stop saves mid-epoch
    wait_for_steps(run_dir / "train.log", 8, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"resume with: mobilenetv3 train --resume auto --run-dir {run_dir}" in out
    state = ckpt.load_checkpoint(run_dir / "last.pt")
    assert state["global_step"] >= 8  # beyond epoch 1's checkpoint (step 6): the stop saved it
    resumed = run_cli(*tiny_flags(run_dir, resume="auto", **RESUME))
    assert resumed.returncode == 0, resumed.stderr
    assert_bitwise_equal(straight, final_state(run_dir))


# ------------------------------------------------------------------------------------ DDP on CPU
DDP_FLAGS = dict(epochs=1, batch_size=4, synthetic_samples=32, transform="none", dropout=0.0, warmup_epochs=0,
                 lr=0.1, deterministic=True, eval_every=0)


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """torchrun with 2 gloo processes x 4 images vs one process stepping on the same 8 images.

    Plain BatchNorm normalises each replica's half-batch on its own, so the one-process reference
    runs the two half-batches through the model separately and averages their gradients, as DDP does.
    Parameters are compared (DDP keeps rank 0's BatchNorm running statistics). Both sides run
    one thread per process: with more, the summation order differs and this short, high-LR run
    amplifies the rounding (2 threads here: ~2e-3 after 4 steps; 1 thread: identical).
    """
    run_dir = tmp_path / "ddp"
    result = run_cli(*tiny_flags(run_dir, **DDP_FLAGS), nproc=2, env=dict(OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    ddp = ckpt.load_checkpoint(run_dir / "last.pt")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, steps, losses = _one_process_reference(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert ddp["global_step"] == steps == 4
    for name, param in model.named_parameters():
        torch.testing.assert_close(ddp["model"][name], param.detach(), atol=1e-5, rtol=0, msg=name)
    # the epoch's loss is the whole group's (not rank 0's half), and only rank 0 reports it
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-5)
    assert result.stderr.count("epoch 1/1: train loss") == 1


DDP_RESUME = dict(epochs=2, batch_size=4, synthetic_samples=128, save_every_steps=2, deterministic=True, dropout=0.2,
                  eval_every=0)


def test_two_gloo_processes_killed_and_resumed_end_bitwise_identical(tmp_path):
    """The whole torchrun group SIGKILLed in epoch 2, resumed: the same weights and epoch loss as a run left alone.

    Dropout and the random crop/flip draw from each process's own generators, so this holds only when every rank
    gets back its own RNG state (not rank 0's) and the partial epoch loss counts every rank's share.
    """
    one_thread = dict(OMP_NUM_THREADS="1")
    straight = run_cli(*tiny_flags(tmp_path / "straight", **DDP_RESUME), nproc=2, env=one_thread)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli_command(*tiny_flags(killed, **DDP_RESUME), nproc=2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, **one_thread))
    wait_for_steps(killed / "train.log", 21, proc)  # 16 steps per epoch: epoch 2, step 5
    for pid in [*child_pids(proc.pid), proc.pid]:  # the workers first: torchrun would restart them
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    state = ckpt.load_checkpoint(killed / "last.pt")
    assert state["epoch"] == 1 and 0 < state["step_in_epoch"] < 16, (state["epoch"], state["step_in_epoch"])
    assert len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])
    resumed = run_cli(*tiny_flags(killed, resume="auto", **DDP_RESUME), nproc=2, env=one_thread)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at epoch 2, step {state['step_in_epoch']}" in resumed.stderr
    assert_bitwise_equal(final_state(tmp_path / "straight"), final_state(killed))
    losses = [[json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (tmp_path / "straight", killed)]
    assert losses[1][-1] == pytest.approx(losses[0][-1], rel=1e-9)


def _one_process_reference(tmp_path):
    from mobilenetv3.data import build_dataset, build_loader, build_preset
    from mobilenetv3.optim import build_optimizer

    config = tiny_config(tmp_path / "unused", **DDP_FLAGS)
    torch.manual_seed(config.run.seed)  # rank 0's seed: DDP starts every replica from rank 0's weights
    data = build_dataset("synthetic", None, "train", synthetic_samples=32, synthetic_classes=10, synthetic_size=32,
                         seed=config.run.seed)
    model = build_model(config.model, num_classes=10, in_chans=3)
    optimizer = build_optimizer("sgd", param_groups(model, config.optim.weight_decay), 0.1,
                                nesterov=config.optim.nesterov)
    recipe, pre = build_preset("none", 32, (0.5,) * 3, (0.25,) * 3, 3)
    loaders = [build_loader(data, recipe, pre, train=True, batch_size=4, rank=r, world_size=2, seed=config.run.seed,
                            workers=0) for r in (0, 1)]
    steps, losses = len(loaders[0]), []
    model.train()
    for step, halves in enumerate(zip(*loaders)):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, steps, 0, 0.1)
        optimizer.zero_grad()
        for half in halves:
            loss = smoothed_cross_entropy(model(half.images), half.labels, 0.1)
            (loss / 2).backward()
            losses.append(loss.item())
        optimizer.step()
    return model, steps, losses


# ----------------------------------------------------------------------------- the seed's commands
def seed_command(script, *argv):
    return subprocess.run([sys.executable, str(REPO / script), *argv], capture_output=True, text=True,
                          env=dict(os.environ, MOBILENETV3_DRY_RUN="1"))


def seed_error(translate, *argv):
    with pytest.raises(SystemExit) as exit_:
        translate(list(argv))
    return exit_.value.code


def test_seed_train_py_flags_map_onto_the_cli(tmp_path, capsys, monkeypatch):
    from mobilenetv3.seed_compat import train_argv

    monkeypatch.chdir(tmp_path)
    assert train_argv(["--dataset_path", "/data/imagenet/train", "--device_target", "GPU", "--run_distribute", "True",
                       "--pre_trained", "m.ckpt"]) == [
        "train", "--config", "imagenet-gpu", "--dataset", "imagenet", "--data-path", "/data/imagenet/train",
        "--device", "cuda", "--run-dir", "checkpoint", "--pretrained", "m.ckpt"]
    cpu = train_argv(["--dataset_path=/data/cifar", "--device_target=CPU"])
    assert cpu[:9] == ["train", "--config", "cifar10-cpu", "--dataset", "cifar10", "--data-path", "/data/cifar",
                       "--device", "cpu"]
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "last.pt").write_bytes(b"")
    assert train_argv(["--dataset_path=/d", "--device_target=CPU"])[-2:] == ["--resume", "auto"]
    assert seed_error(train_argv, "--device_target", "CPU") == 2
    assert seed_error(train_argv, "--dataset_path", "x", "--device_target", "Ascend") == 2
    assert "needs MindSpore" in capsys.readouterr().err
    script = seed_command("train.py", "--dataset_path", "/data/cifar", "--device_target", "CPU")
    assert script.returncode == 0 and script.stdout.startswith("mobilenetv3 train --config cifar10-cpu")


def test_seed_eval_and_export_flags_map_onto_the_cli(capsys):
    from mobilenetv3.seed_compat import eval_argv, export_argv

    assert eval_argv(["--dataset_path", "/d/val", "--checkpoint_path", "m.ckpt", "--device_target", "CPU"]) == [
        "eval", "--checkpoint", "m.ckpt", "--dataset", "cifar10", "--data-path", "/d/val", "--device", "cpu"]
    assert export_argv(["--checkpoint_path", "m.ckpt", "--file_name", "net", "--file_format", "ONNX"]) == [
        "export", "--checkpoint", "m.ckpt", "--format", "onnx", "--softmax", "--no-dataset", "--output", "net.onnx"]
    assert seed_error(export_argv, "--checkpoint_path", "m.ckpt", "--file_format", "MINDIR") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("use --file_format ONNX (MindSpore Lite and most runtimes import ONNX)")
    assert len(err.splitlines()) == 1


def test_seed_shell_scripts(tmp_path):
    env = dict(os.environ, MOBILENETV3_DRY_RUN="1")

    def sh(script, *argv):
        return subprocess.run(["bash", str(REPO / "scripts" / script), *argv], capture_output=True, text=True,
                              env=env)

    multi = sh("run_train.sh", "GPU", "8", "0,1,2,3,4,5,6,7", str(tmp_path))
    assert multi.returncode == 0
    assert "-m torch.distributed.run --standalone --nproc_per_node=8" in multi.stdout
    assert f"--dataset_path={tmp_path} --device_target=GPU --run_distribute=True" in multi.stdout
    one = sh("run_train.sh", "CPU", str(tmp_path))
    assert one.stdout.strip().endswith(f"train.py --dataset_path={tmp_path} --device_target=CPU")
    assert sh("run_train.sh", "GPU", "two", "0", str(tmp_path)).returncode == 2
    assert sh("run_train.sh", "CPU", str(tmp_path / "missing")).returncode == 2
    usage = sh("run_train.sh")
    assert usage.returncode == 2 and usage.stderr.startswith("usage: bash")
    ckpt_file = tmp_path / "m.ckpt"
    ckpt_file.write_bytes(b"")
    infer = sh("run_infer.sh", "CPU", str(tmp_path), str(ckpt_file))
    assert infer.returncode == 0 and f"--checkpoint_path={ckpt_file} --device_target=CPU" in infer.stdout
    assert sh("run_eval.sh", "TPU", str(tmp_path), str(ckpt_file)).returncode == 2


# ------------------------------------------------------------------------------------------ config
def test_presets_hold_the_seed_recipes():
    gpu = load_config("imagenet-gpu")
    assert (gpu.data.batch_size, gpu.optim.epochs, gpu.optim.lr, gpu.optim.lr_reference_batch) == (150, 370, 1.54, 1200)
    assert (gpu.optim.warmup_epochs, gpu.optim.weight_decay, gpu.optim.label_smoothing) == (4, 4e-5, 0.1)
    cpu = load_config("cifar10-cpu")
    assert (cpu.data.batch_size, cpu.optim.epochs, cpu.optim.lr, cpu.optim.warmup_epochs) == (32, 120, 0.1, 5)
    assert (cpu.optim.weight_decay, cpu.data.image_size, cpu.data.transform) == (1e-4, 224, "seed-cifar10")
    assert load_config("fashion-mnist", dict(epochs=7)).optim.epochs == 7  # flags override the preset


def test_nesterov_is_passed_to_sgd():
    """--nesterov builds PyTorch's Nesterov SGD (its update is PyTorch's own, not re-implemented here)."""
    from mobilenetv3.build import build_trainable
    from mobilenetv3.config import Config

    model = torch.nn.Linear(3, 2)
    for nesterov in (False, True):
        config = Config()
        config.optim.nesterov = nesterov
        optimizer = build_trainable(config, model, 0.1, torch.device("cpu")).optimizer
        assert isinstance(optimizer, torch.optim.SGD)
        assert all(group["nesterov"] is nesterov for group in optimizer.param_groups)
