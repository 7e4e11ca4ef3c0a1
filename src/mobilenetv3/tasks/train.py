"""The training task: a ``Config`` wired to data, model, optimizer, DDP, checkpoints and logs.

``train(config)`` runs in one process or in every process ``torchrun`` starts; rank 0 writes the
run directory. A run can stop at any step (SIGTERM/SIGINT: saved at the next step boundary) and
continue exactly with ``resume="auto"``. The checkpoint a run continues from is resolved and read
once (``prepare_config``), whatever it is: our ``last.pt`` or the seed's training ``.ckpt``.
"""
from __future__ import annotations

import itertools
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .. import auto
from .. import checkpoint as ckpt
from ..build import (
    RunData,
    build_data,
    build_model,
    build_trainable,
    device_type,
    pick_device,
    record_architecture,
    train_options,
)
from ..config import Config, RunConfig, load_config, replace, validate
from ..data import check_scored_once
from ..dist import (
    DistInfo,
    StopSignal,
    all_gather_object,
    all_reduce_sum,
    barrier,
    broadcast_object,
    destroy_distributed,
    init_distributed,
)
from ..engine import EMA_BN_BATCHES, EpochResult, StepInfo, evaluate, recompute_batchnorm, train_one_epoch
from ..errors import RunError, UsageError
from ..models import create_model
from ..optim import build_schedule, say_seed_rates
from ..rundir import VAL_INDICES, read_holdout, run_lock, write_holdout
from ..runlog import RunLog
from ..weights import read_weights

log = logging.getLogger(__name__)

ARCHITECTURE = ("num_classes", "width_mult", "head_channels", "in_chans", "bn_eps", "bn_momentum", "head_bias",
                "stem_stride")


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    run_dir: str
    checkpoint: str  # last.pt
    best: Optional[str]
    log: str
    epoch: int  # epochs finished
    global_step: int
    step_in_epoch: int
    top1: Optional[float]  # the last validation's
    top5: Optional[float]
    val_count: Optional[int]
    best_top1: Optional[float]
    stopped: bool  # by a signal, before the last epoch
    time: float  # seconds in this process
    plot: Optional[str]
    test_top1: Optional[float] = None  # with --val-split: the test split, scored once at the end
    test_top5: Optional[float] = None
    test_count: Optional[int] = None


# ------------------------------------------------------------------------------------------ resume
@dataclass
class Resume:
    """The checkpoint a run continues from, read once: ours (``checkpoint``) or the seed's (``seed``)."""

    path: Path
    checkpoint: Optional[ckpt.Checkpoint] = None
    seed: Optional[object] = None  # convert.MindSporeCheckpoint

    @classmethod
    def read(cls, path: Path) -> "Resume":
        if path.suffix == ".ckpt":  # the seed's training checkpoint: its network, the recipe given now
            return cls(path, seed=read_weights(path).seed)
        return cls(path, checkpoint=ckpt.Checkpoint.load(path).require_training_state(path))


def resolve_resume(run: RunConfig, name: str) -> Optional[Path]:
    """The checkpoint to continue from: ``resume`` as a path, or for ``"auto"`` the run's ``last.pt``
    (the newest ``runs/<name>-*`` when no run directory is given); ``None`` starts fresh.

    ``"auto"`` with nothing to continue is a ``UsageError`` (a mistyped ``--run-dir`` would start again from
    zero), except under torchrun with restarts, where every attempt is given ``--resume auto`` and the first
    one has nothing to continue yet."""
    if not run.resume:
        return None
    if run.resume != "auto":
        path = Path(run.resume).expanduser()
        if path.is_dir():
            path = path / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return path
    if run.run_dir:
        found = ckpt.latest_run_checkpoint(Path(run.run_dir).expanduser())
        missing, other = f"{run.run_dir} holds no last.pt", ""
    else:
        candidates = sorted(Path("runs").glob(f"{name}-*/last.pt"), key=lambda p: p.stat().st_mtime)
        found = candidates[-1] if candidates else None
        missing, other = f"no runs/{name}-*/last.pt in {Path.cwd()}", "give the run's --run-dir, or "
    if found is None and not _restarted_by_torchrun():
        raise UsageError(f"--resume auto: {missing} to continue; {other}leave out --resume to start a new run")
    if found is None:
        log.info("--resume auto: %s yet: a new run starts (torchrun's restarts continue it)", missing)
    return found


def _restarted_by_torchrun() -> bool:
    """torchrun was told to restart failed workers (``--max-restarts N``): they are given ``--resume auto``."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0


def prepare_config(preset: Optional[str], overrides: dict) -> tuple[Config, Optional[Resume]]:
    """The run's config and what it resumes: preset + flags; when resuming our checkpoint, its config + the
    flags given now; when resuming the seed's ``.ckpt``, its architecture + the recipe given now."""
    config = load_config(preset, overrides)
    path = resolve_resume(config.run, config.name)
    if path is None:
        return config, None
    resume = Resume.read(path)
    if resume.seed is not None:
        kwargs = resume.seed.model_kwargs
        config.update(dict(model=resume.seed.model_name, **{k: kwargs[k] for k in ARCHITECTURE if k in kwargs}),
                      source=str(path))
        config.update(overrides, source="flag")
    else:
        config = Config.from_dict(resume.checkpoint.config)
        config.update(overrides, source="flag")
        config.run.resume, config.run.run_dir = str(path), str(path.parent)
    validate(config)
    return config, resume


# ------------------------------------------------------------------------------------------ the task
def train(config: Union[Config, str, None] = None, **settings) -> TrainResult:
    """Train as configured: ``config`` is a ``Config``, a preset name or YAML path, or ``None`` for the
    defaults; ``settings`` are config fields (``epochs=3``, ``data_path="..."``) applied on top.

    With a preset (the CLI's way) a resumed run takes the saved run's config plus ``settings``; a
    ``Config`` is used as given and only the training state is resumed.
    """
    if isinstance(config, Config):
        config = replace(config, **settings)  # a copy: the run writes what it built into its config
        validate(config)
        path = resolve_resume(config.run, config.name)
        resume = Resume.read(path) if path is not None else None
        if resume is not None and resume.checkpoint is not None:
            auto.keep_saved_choices(config, resume.checkpoint.config)
    else:
        config, resume = prepare_config(config, settings)
    info = init_distributed(device_type(config.run.device))
    deterministic = torch.are_deterministic_algorithms_enabled()  # a Python caller gets its process back as it was
    try:
        run_dir = _run_dir(config, resume)
        if info.enabled:
            run_dir = Path(broadcast_object(str(run_dir)))
        if not info.is_main:
            return _Run(config, info, run_dir, resume).fit()
        with run_lock(run_dir, resuming=resume is not None and resume.checkpoint is not None):
            return _Run(config, info, run_dir, resume).fit()
    finally:
        torch.use_deterministic_algorithms(deterministic)
        destroy_distributed()


def _run_dir(config: Config, resume: Optional[Resume]) -> Path:
    if config.run.run_dir:
        return Path(config.run.run_dir).expanduser()
    if resume is not None and resume.checkpoint is not None:
        return resume.path.parent
    return Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


# ------------------------------------------------------------------------------------------ set-up
def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def saved_holdout(config: Config, resume: Optional[Resume]) -> Optional[dict]:
    """The held-out images a resumed run of ours validates on: its ``val_indices.json`` (beside the checkpoint).
    ``None`` for a fresh run, or one that saved none (they are drawn again: the same draw from the same data)."""
    if resume is None or resume.checkpoint is None:
        return None
    before = (resume.checkpoint.config.get("data") or {}).get("val_split", 0)
    if before != config.data.val_split:
        raise UsageError(f"--val-split {config.data.val_split}: the run in {resume.path} validated with --val-split "
                         f"{before}; a run keeps its validation set (start a new run to change it)")
    if not config.data.val_split:
        return None
    holdout = read_holdout(resume.path.parent)
    if holdout is None:
        log.warning("%s has no %s: the held-out images are drawn again with seed %d", resume.path.parent,
                    VAL_INDICES, config.run.seed)
    return holdout


def stored_rates(config: Config, resume: Optional[Resume]) -> Optional[tuple]:
    """The seed's own per-step learning rates, when ``lr_schedule`` is ``stored``."""
    if config.optim.lr_schedule != "stored":
        return None
    rates = resume.seed.learning_rate if resume is not None and resume.seed is not None else None
    if rates is None or rates.numel() == 0:
        raise UsageError("--lr-schedule stored follows the learning rates a seed training .ckpt stores: resume "
                         "one that has them (--resume PATH.ckpt)")
    return tuple(float(v) for v in rates.reshape(-1))


# ------------------------------------------------------------------------------------------ the run
class _Run:
    """One training run in this process: built from the config, then ``fit()``."""

    def __init__(self, config: Config, info: DistInfo, run_dir: Path, resume: Optional[Resume]):
        self.config, self.info, self.run_dir = config, info, run_dir
        self.device = pick_device(config.run.device, info)
        seed_everything(config.run.seed + info.rank, config.run.deterministic)
        self.data, model = self._data_and_model(resume)
        record_architecture(config.model, model)
        model = model.to(self.device)
        if config.run.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if resume is None:  # a resumed run keeps the length it started with
            self.data.choices += auto.choose_length(config, len(self.data.train_loader))
        self.schedule = build_schedule(config, len(self.data.train_loader), info.world_size,
                                       stored_rates(config, resume))
        # A short run's BatchNorm statistics never settle at momentum 0.1 (15 steps: chance, re-estimated: 72%)
        self.settle_bn = self.schedule.total_steps < auto.SETTLE_STEPS and not config.model.freeze_backbone
        self.trainable = build_trainable(config, model, self.schedule.lr_max, self.device)
        self.state = self._restore(resume) if resume is not None else ckpt.TrainState()
        if self.state.global_step >= self.schedule.total_steps and config.run.max_steps:
            raise UsageError(f"--max-steps {config.run.max_steps}: {resume.path} is at step {self.state.global_step} "
                             "already; give more steps to continue it")
        self.train_model = self._wrap(model)
        self.options = train_options(config, self.schedule, self.trainable, self.device)
        self.card = ckpt.model_card(model.model_name, model.model_kwargs, self.data.classes,
                                    self.data.preprocessing.to_dict())
        self.runlog = RunLog(run_dir, info.is_main, config.run.progress, self.schedule.epochs,
                             self.schedule.steps_per_epoch)
        self.last_metrics: dict = {}

    def _data_and_model(self, resume: Optional[Resume]) -> tuple[RunData, nn.Module]:
        """The data, and the model: a resumed run of ours rebuilds the model it had (its checkpoint's
        constructor arguments), a fresh one builds the configured model, from ``pretrained`` weights if given."""
        m, holdout = self.config.model, saved_holdout(self.config, resume)
        if resume is not None and resume.checkpoint is not None:
            kwargs = resume.checkpoint.model_kwargs
            data = build_data(self.config, self.info, self.device, kwargs.get("in_chans"), holdout, fit_defaults=False)
            model = create_model(resume.checkpoint.model_name, **kwargs)
            if m.freeze_backbone:
                model.freeze_backbone()
            return data, model
        weights = read_weights(m.pretrained) if m.pretrained else None
        in_chans = m.in_chans or (weights.model_kwargs.get("in_chans", 3) if weights else None)
        data = build_data(self.config, self.info, self.device, in_chans, holdout, pretrained=weights is not None)
        model = build_model(m, data.num_classes, data.preprocessing.in_chans, weights, given=self.config.given("model"))
        return data, model

    def _restore(self, resume: Resume) -> ckpt.TrainState:
        if resume.seed is not None:
            state = ckpt.restore_seed(resume.seed, self.trainable, self.schedule.steps_per_epoch, str(resume.path))
            say_seed_rates(resume.seed.learning_rate, resume.path, self.schedule, state.global_step)
        else:
            state = resume.checkpoint.restore(self.trainable, self.info.rank, self.info.world_size, str(resume.path))
        log.info("resuming from %s at epoch %d, step %d", resume.path, state.epoch + 1, state.step_in_epoch)
        return state

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP (and SyncBatchNorm) over several processes, ``torch.compile`` when asked."""
        run = self.config.run
        if self.info.enabled:
            if run.sync_bn and self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return torch.compile(model) if run.compile else model

    def fit(self) -> TrainResult:
        if self.info.is_main:
            self._write_config()
        self.started = time.perf_counter()
        try:
            with StopSignal() as stop:
                while self.state.epoch < self.schedule.epochs and self.state.global_step < self.schedule.total_steps:
                    if self._epoch(stop):
                        return self._result(stopped=True)
            if self.info.is_main:
                self._warn_if_chance()
        finally:
            self.runlog.close()
        self.runlog.plot(self.state.history)
        if self.info.is_main:
            self._export_weights()
        barrier()
        return self._result(stopped=False)

    def _epoch(self, stop: StopSignal) -> bool:
        """Train (the rest of) one epoch, then validate and save; ``True`` when a signal stopped the run."""
        epoch, start = self.state.epoch, self.state.copy()
        self.data.train_loader.sampler.set_epoch(epoch, start.step_in_epoch)
        self.runlog.start_epoch(epoch, start.step_in_epoch)
        left = self.schedule.total_steps - start.global_step
        batches = self.data.train_loader if left >= len(self.data.train_loader) else itertools.islice(
            self.data.train_loader, left)  # max_steps ends this epoch early
        result = train_one_epoch(self.train_model, batches, self.trainable.optimizer, self.options,
                                 global_step=start.global_step, on_step=lambda step: self._on_step(start, step),
                                 should_stop=lambda: stop.requested(self.info))
        self._advance(start, result.global_step, result.steps, result.loss_sum, result.loss_steps)
        if result.stopped and self.state.global_step < min(self.schedule.total_steps,
                                                           (epoch + 1) * self.schedule.steps_per_epoch):
            self.save(epoch_file=False)
            return True
        record = self._epoch_record(epoch, result)
        finished = self.state.step_in_epoch >= self.schedule.steps_per_epoch  # else max_steps cut it: it stays open
        if finished:
            self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
            self.state.epoch_loss_sum, self.state.epoch_loss_steps = 0.0, 0
        ema = self.trainable.ema
        for model in [self.trainable.model] * self.settle_bn + ([ema.module] if ema is not None else []):
            recompute_batchnorm(model, self.data.train, self.data.preprocessing, self.config.data.batch_size,
                                self.device, workers=self.config.data.workers,
                                skip_bad_images=self.config.data.skip_bad_images)
        self.last_metrics = self._validate(record)
        record["wall_time"] = time.perf_counter() - self.started  # this process's, resumed runs restart it
        self.runlog.end_epoch(record)
        self.state.history.append(record)
        run, last = self.config.run, self.state.epoch == self.schedule.epochs
        self.save(epoch_file=finished and (self.state.epoch % run.save_every == 0 or last), metrics=self.last_metrics)
        return result.stopped

    def _advance(self, start: ckpt.TrainState, global_step: int, steps: int, loss_sum: float,
                 loss_steps: int) -> None:
        """The state after ``steps`` more steps of this epoch: the one place the running loss is added up."""
        self.state.global_step = global_step
        self.state.step_in_epoch = start.step_in_epoch + steps
        self.state.epoch_loss_sum = start.epoch_loss_sum + loss_sum
        self.state.epoch_loss_steps = start.epoch_loss_steps + loss_steps

    def _on_step(self, start: ckpt.TrainState, step: StepInfo) -> None:
        self._advance(start, step.global_step, step.steps, step.loss_sum, step.loss_steps)
        self.runlog.step(start.epoch, self.state.step_in_epoch - 1, dict(
            global_step=step.global_step, loss=step.loss, mean_loss=self.state.mean_loss(), lr=step.lr,
            images=step.images, step_time=step.step_time))
        every = self.config.run.save_every_steps
        if every and step.global_step % every == 0:
            self.save(epoch_file=False)

    def _epoch_record(self, epoch: int, result: EpochResult) -> dict:
        """metrics.jsonl's line for the epoch: the loss and images over the whole group, not rank 0's alone."""
        loss_sum, loss_steps, images = all_reduce_sum(torch.tensor(
            [self.state.epoch_loss_sum, self.state.epoch_loss_steps, result.images], dtype=torch.float64,
            device=self.device)).tolist()
        record = dict(epoch=epoch + 1, global_step=self.state.global_step, steps=self.state.step_in_epoch,
                      train_loss=loss_sum / max(1, loss_steps), lr=self.schedule.lr_at(self.state.global_step - 1),
                      epoch_time=result.time, images_per_s=images / max(result.time, 1e-9), skipped=result.skipped)
        if record["skipped"]:
            log.warning("epoch %d: skipped %d unreadable image(s)", epoch + 1, record["skipped"])
            self.runlog.line(f"skipped {record['skipped']} unreadable image(s)")
        return record

    def _validate(self, record: dict) -> dict:
        """Validate on this epoch's cadence (and after the last epoch); fills ``record`` in place."""
        run, epochs, epoch = self.config.run, self.schedule.epochs, self.state.epoch
        final = epoch == epochs or self.state.global_step >= self.schedule.total_steps
        if not (final or (run.eval_every and epoch % run.eval_every == 0)):
            return {}
        metrics = self._score(self.trainable.model)
        record.update(val_top1=metrics["top1"], val_top5=metrics["top5"], val_loss=metrics["loss"],
                      val_count=metrics["count"], val_time=metrics["time"])
        if self.trainable.ema is not None:
            ema_metrics = self._score(self.trainable.ema.module)
            record.update(ema_top1=ema_metrics["top1"], ema_top5=ema_metrics["top5"])
            metrics["ema"] = {k: ema_metrics[k] for k in ("top1", "top5", "loss", "count")}
        check_scored_once(metrics, self.data.val, "validation")
        log.info("epoch %d/%d: train loss %.4f, val top-1 %.2f%% top-5 %.2f%% (%d images%s)%s", record["epoch"],
                 epochs, record["train_loss"], 100 * metrics["top1"], 100 * metrics["top5"], metrics["count"],
                 f", {metrics['skipped']} unreadable skipped" if metrics["skipped"] else "",
                 f", EMA top-1 {100 * metrics['ema']['top1']:.2f}%" if "ema" in metrics else "")
        if final and self.data.test_loader is not None:
            metrics["test"] = self._test(record)
        return metrics

    def _test(self, record: dict) -> dict:
        """``--val-split``: the test split, scored once, after the last epoch; recorded apart from validation."""
        test = self._score(self.trainable.model, self.data.test_loader)
        check_scored_once(test, self.data.test, "the test split")
        record.update(test_top1=test["top1"], test_top5=test["top5"], test_loss=test["loss"], test_count=test["count"])
        if self.trainable.ema is not None:
            record["test_ema_top1"] = self._score(self.trainable.ema.module, self.data.test_loader)["top1"]
        log.info("test split, scored once at the end: top-1 %.2f%% top-5 %.2f%% (%d images)%s", 100 * test["top1"],
                 100 * test["top5"], test["count"],
                 f", EMA top-1 {100 * record['test_ema_top1']:.2f}%" if "test_ema_top1" in record else "")
        return {k: test[k] for k in ("top1", "top5", "loss", "count")}

    def _score(self, model: nn.Module, loader=None) -> dict:
        return evaluate(model, loader or self.data.val_loader, num_classes=self.data.num_classes, device=self.device,
                        amp_dtype=self.options.amp_dtype, channels_last=self.options.channels_last)

    def save(self, epoch_file: bool, metrics: Optional[dict] = None) -> None:
        """Rank 0 writes one file per save, linked as last.pt (and best.pt); every process takes part."""
        top1 = (metrics or {}).get("top1")
        is_best = top1 is not None and (self.state.best_top1 is None or top1 > self.state.best_top1)
        if is_best:
            self.state.best_top1 = top1
        # Every process's own generators, and the partial loss as the group's mean per process, so that a resumed
        # run continues each rank where it stopped (the epoch's end sums this offset over all processes).
        rng_ranks = all_gather_object(ckpt.rng_state())
        loss = all_reduce_sum(torch.tensor([self.state.epoch_loss_sum], dtype=torch.float64, device=self.device))
        if not self.info.is_main:
            return
        state = self.state.copy(epoch_loss_sum=loss.item() / self.info.world_size)
        saved = ckpt.Checkpoint.capture(self.trainable, self.card, self.config.to_dict(), state, rng_ranks,
                                        self.schedule.steps_per_epoch)
        name = ckpt.epoch_checkpoint_name(state.epoch, self.schedule.steps_per_epoch) if epoch_file else "last.pt"
        path = self.run_dir / name
        try:
            saved.save(path)
            if epoch_file:
                ckpt.link_checkpoint(path, self.run_dir / "last.pt")
                ckpt.prune_epoch_checkpoints(self.run_dir, self.config.run.keep_checkpoint_max)
            if is_best:
                ckpt.link_checkpoint(self.run_dir / "last.pt", self.run_dir / "best.pt")
        except OSError as err:
            raise RunError(f"could not write checkpoint {path}: {err.strerror or err}; training stopped, "
                           "the previous checkpoint is intact") from None

    def _export_weights(self) -> None:
        """``model.safetensors`` (and ``model_ema.safetensors``): weights only, for sharing."""
        ckpt.save_safetensors(self.trainable.model.state_dict(), self.run_dir / "model.safetensors", self.card)
        if self.trainable.ema is not None:
            ckpt.save_safetensors(self.trainable.ema.module.state_dict(), self.run_dir / "model_ema.safetensors",
                                  self.card)

    def _warn_if_chance(self) -> None:
        """A run that ends at chance says why it likely did (steps, LR or data) instead of ending quietly."""
        losses = [r["train_loss"] for r in self.state.history if r.get("train_loss") is not None]
        warning = auto.chance_warning(self.last_metrics.get("top1"), self.data.num_classes,
                                      self.schedule.total_steps, losses[0] if len(losses) > 1 else None,
                                      losses[-1] if len(losses) > 1 else None, self.schedule.lr_max)
        if warning:
            log.warning(warning)
            self.runlog.line("warning: " + warning)

    def _choices_record(self) -> dict:
        """``resolved.choices`` of config.yaml: this run's, or for a resumed run those its first start recorded."""
        if self.data.choices:
            return {c.key: dict(value=c.value, reason=c.reason) for c in self.data.choices}
        import yaml

        try:
            before = yaml.safe_load((self.run_dir / "config.yaml").read_text())
            return dict(before["resolved"]["choices"])
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return {}

    def _write_config(self) -> None:
        """``config.yaml``: the resolved config, plus what it resolved to on this machine."""
        import yaml

        s, resolved = self.schedule, self.config.to_dict()
        resolved["resolved"] = dict(peak_lr=s.lr_max, global_batch=s.global_batch, world_size=self.info.world_size,
                                    steps_per_epoch=s.steps_per_epoch, num_classes=self.data.num_classes,
                                    preprocessing=self.data.preprocessing.to_dict(), torch=str(torch.__version__),
                                    choices=self._choices_record(),
                                    bn_reestimated=self.settle_bn)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        if self.data.holdout is not None:
            write_holdout(self.run_dir, self.data.holdout)
        o, test = self.config.optim, self.data.test
        log.info("run directory %s; %d train / %d val images%s, %d classes; global batch %d, peak LR %.4g "
                 "(%s at batch %s)", self.run_dir, len(self.data.train), len(self.data.val),
                 f" (held out of the training split, {VAL_INDICES}; {len(test)} test images scored at the end)"
                 if test is not None else "", self.data.num_classes, s.global_batch, s.lr_max, o.lr,
                 o.lr_reference_batch or s.global_batch)
        auto.log_choices(self.data.choices)
        log.info("images: %s", auto.describe_pipeline(self.data.train, self.config.data.image_size,
                                                      self.config.model.in_chans, self.data.train.channels))
        if self.settle_bn:
            log.info("a short run (%d steps): BatchNorm statistics are re-estimated from %d training batches before "
                     "each validation (a few steps at momentum %g do not settle them)", s.total_steps, EMA_BN_BATCHES,
                     self.config.model.bn_momentum)

    def _result(self, stopped: bool) -> TrainResult:
        run_dir, metrics, state = self.run_dir, self.last_metrics, self.state
        return TrainResult(
            run_dir=str(run_dir), checkpoint=str(run_dir / "last.pt"),
            best=str(run_dir / "best.pt") if (run_dir / "best.pt").exists() else None,
            log=str(run_dir / "train.log"), epoch=state.epoch, global_step=state.global_step,
            step_in_epoch=state.step_in_epoch, top1=metrics.get("top1"), top5=metrics.get("top5"),
            val_count=metrics.get("count"), best_top1=state.best_top1, stopped=stopped,
            time=time.perf_counter() - self.started,
            plot=str(run_dir / "curves.png") if (run_dir / "curves.png").exists() else None,
            **{f"test_{k}": metrics.get("test", {}).get(k) for k in ("top1", "top5", "count")})
