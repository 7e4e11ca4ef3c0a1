"""The training run: wires a ``Config`` to data, model, optimizer, DDP, checkpoints and logs.

``train(config)`` runs in one process or in every process ``torchrun`` starts; rank 0 writes the
run directory. A run can stop at any step (SIGTERM/SIGINT: saved at the next step boundary) and
continue exactly with ``resume="auto"``.
"""
from __future__ import annotations

import fcntl
import logging
import os
import random
import signal
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from .config import Config, load_config, validate
from .data import STATS, build_dataset, build_loader, build_preset, check_labels
from .data.datasets import Dataset
from .data.transforms import Preprocessing, Recipe
from .dist import DistInfo, all_gather_object, all_reduce_sum, barrier, destroy_distributed, init_distributed
from .engine import NonFiniteLoss, evaluate, train_one_epoch
from .files import file_sha256, remove_stale_temporaries
from .convert import check_shapes
from .models import create_model
from .optim import build_optimizer, param_groups, scaled_lr, smoothed_cross_entropy, warmup_cosine_lr
from .runlog import RunLog
from .errors import UsageError

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class RunError(RuntimeError):
    """A fault during the run (not a user mistake): reported in one line, exit code 1."""


# ----------------------------------------------------------------------------------- configuration
def prepare_config(preset: Optional[str], overrides: dict) -> Config:
    """The run's config: preset + flags; when resuming, the checkpoint's config + the flags given now."""
    config = load_config(preset, overrides)
    resume_path = resolve_resume(config)
    if resume_path is None:
        return config
    if resume_path.suffix == ".ckpt":  # the seed's training checkpoint: its network, the recipe given now
        weights = ckpt.read_weights(resume_path)
        kwargs = weights.model_kwargs
        architecture = ("num_classes", "width_mult", "head_channels", "in_chans", "bn_eps", "bn_momentum")
        config.update(dict(model=weights.model_name, **{k: kwargs[k] for k in architecture}), source=str(resume_path))
        config.update(overrides, source="flag")
        validate(config)
        return config
    state = ckpt.load_checkpoint(resume_path)
    if "config" not in state:
        raise UsageError(f"{resume_path} holds weights only, not a training state; start from it with --pretrained")
    saved = Config.from_dict(state["config"])
    saved.update(overrides, source="flag")
    saved.run.resume, saved.run.run_dir = str(resume_path), str(resume_path.parent)
    validate(saved)
    return saved


def resolve_resume(config: Config) -> Optional[Path]:
    """The checkpoint to continue from: ``resume`` as a path, or for ``"auto"`` the run's ``last.pt``
    (the newest ``runs/<name>-*`` when no run directory is given); ``None`` starts fresh."""
    resume = config.run.resume
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume).expanduser()
        if path.is_dir():
            path = path / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return path
    if config.run.run_dir:
        return ckpt.latest_run_checkpoint(Path(config.run.run_dir))
    candidates = sorted(Path("runs").glob(f"{config.name}-*/last.pt"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def _run_dir(config: Config) -> Path:
    if config.run.run_dir:
        return Path(config.run.run_dir).expanduser()
    return Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


@contextmanager
def run_lock(run_dir: Path, resuming: bool):
    """Hold ``run_dir/.lock`` for the run; refuse a second run into the same directory.

    The lock is an ``flock``, released by the kernel when the process ends however it ends.
    """
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resuming and any(ckpt.EPOCH_CHECKPOINT.match(p.name) or p.name == "last.pt" for p in run_dir.iterdir()):
        raise UsageError(f"{run_dir} already holds a run (checkpoints); continue it with --resume auto, "
                         "or choose another --run-dir")
    handle = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise UsageError(f"{run_dir} is in use by a running training ({owner}); wait for it or choose "
                         "another --run-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
    handle.flush()
    remove_stale_temporaries(run_dir)
    try:
        yield
    except BaseException:
        handle.close()
        if [p.name for p in run_dir.iterdir()] == [".lock"]:  # failed before writing anything: leave no trace
            (run_dir / ".lock").unlink()
            if created:
                run_dir.rmdir()
        raise
    handle.close()


# ------------------------------------------------------------------------------------------ set-up
def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def pick_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        return torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA GPU is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    return device


@dataclass
class RunData:
    train: Dataset
    val: Dataset
    preprocessing: Preprocessing
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    num_classes: int
    classes: list[str]


def data_recipe(config: Config, train: Dataset, in_chans: int) -> tuple:
    """The preset's recipe and eval protocol for this dataset, as configured."""
    d = config.data
    mean, std = STATS[d.dataset]
    native = train.images.shape[-1] if hasattr(train, "images") else None
    return build_preset(d.transform, d.image_size, mean, std, in_chans, native, eval_resize=d.eval_resize,
                        interpolation=d.interpolation, cutout=d.cutout, hflip=d.dataset != "mnist",
                        auto_augment=d.auto_augment, random_erasing=d.random_erasing)


def dataset_split(config: Config, split: str, num_classes: Optional[int] = None) -> Dataset:
    """Split ``"train"`` or ``"val"`` of the configured dataset (synthetic data sized as configured)."""
    d = config.data
    return build_dataset(d.dataset, d.data_path, split, download=d.download, synthetic_samples=d.synthetic_samples,
                         synthetic_classes=num_classes or config.model.num_classes or 10,
                         synthetic_size=d.image_size, seed=config.run.seed)


def build_data(config: Config, info: DistInfo, device: torch.device, in_chans: Optional[int] = None) -> RunData:
    """Datasets and loaders; ``in_chans`` defaults to the dataset's own channel count."""
    d, m = config.data, config.model
    train, val = dataset_split(config, "train"), dataset_split(config, "val")
    num_classes = m.num_classes or len(train.classes)
    check_labels(train, num_classes)
    check_labels(val, num_classes)
    in_chans = in_chans or train.channels
    recipe, preprocessing = data_recipe(config, train, in_chans)
    loader_args = dict(rank=info.rank, world_size=info.world_size, seed=config.run.seed, workers=d.workers,
                       pin_memory=device.type == "cuda", skip_bad_images=d.skip_bad_images)
    train_loader = build_loader(train, recipe, preprocessing, train=True, batch_size=d.batch_size,
                                mixup_alpha=d.mixup_alpha, cutmix_alpha=d.cutmix_alpha, num_classes=num_classes,
                                **loader_args)
    val_loader = build_loader(val, recipe, preprocessing, train=False,
                              batch_size=d.eval_batch_size or 2 * d.batch_size, **loader_args)
    classes = train.classes if len(train.classes) == num_classes else [str(i) for i in range(num_classes)]
    return RunData(train, val, preprocessing, train_loader, val_loader, num_classes, classes)


def build_model(config: Config, num_classes: int, in_chans: int, weights: Optional[ckpt.Weights] = None) -> nn.Module:
    """The configured network; with pretrained ``weights``, their architecture and values.

    A classifier of another size starts fresh (logged); RGB weights on grayscale input sum the stem
    filters over the colour channels.
    """
    m = config.model
    if weights is None:
        model = create_model(m.model, num_classes=num_classes, width_mult=m.width_mult, dropout=m.dropout,
                             head_channels=m.head_channels, in_chans=in_chans, bn_eps=m.bn_eps,
                             bn_momentum=m.bn_momentum)
    else:
        if weights.model_name != m.model:
            raise UsageError(f"{m.pretrained} holds {weights.model_name} weights, but --model is {m.model}")
        model = create_model(m.model, **dict(weights.model_kwargs, num_classes=num_classes, dropout=m.dropout,
                                             in_chans=in_chans))
        state = dict(weights.state_dict)
        if state["classifier.weight"].shape[0] != num_classes:
            log.info("the pretrained classifier has %d classes, the data %d: the classifier starts fresh",
                     state["classifier.weight"].shape[0], num_classes)
            state.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
        if state["stem.conv.weight"].shape[1] == 3 and in_chans == 1:
            state["stem.conv.weight"] = state["stem.conv.weight"].sum(1, keepdim=True)
        try:
            check_shapes(state, model)
        except ValueError as err:
            raise UsageError(f"--pretrained {m.pretrained}: {err}") from None
        model.load_state_dict(state)
    if m.freeze_backbone:
        model.freeze_backbone()
    return model


# ------------------------------------------------------------------------------------------ the run
class StopSignal:
    """SIGTERM/SIGINT: stop at the next step boundary and save; a second signal ends the process at once."""

    def __init__(self):
        self.received: Optional[int] = None
        self.previous = {}

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum
        signal.signal(signum, signal.SIG_DFL)  # the second one acts at once
        log.warning("%s received: saving at the end of this step (send it again to stop at once)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def train(config: Config) -> dict:
    """Run training as configured; returns the final metrics and the paths the run wrote."""
    validate(config)
    device_type = "cuda" if config.run.device.startswith("cuda") or (
        config.run.device == "auto" and torch.cuda.is_available()) else "cpu"
    info = init_distributed(device_type)
    try:
        resume_path = resolve_resume(config)
        continues_run = resume_path is not None and resume_path.suffix != ".ckpt"
        run_dir = resume_path.parent if continues_run and not config.run.run_dir else _run_dir(config)
        if info.enabled:
            from .dist import broadcast_object

            run_dir = Path(broadcast_object(str(run_dir)))
        if info.is_main:
            with run_lock(run_dir, resuming=resume_path is not None):
                return _train(config, info, run_dir, resume_path)
        return _train(config, info, run_dir, resume_path)
    finally:
        destroy_distributed()


def _train(config: Config, info: DistInfo, run_dir: Path, resume_path: Optional[Path]) -> dict:
    run, optim_cfg = config.run, config.optim
    device = pick_device(run.device, info)
    seed_everything(run.seed + info.rank, run.deterministic)
    weights = ckpt.read_weights(config.model.pretrained) if config.model.pretrained else None
    in_chans = config.model.in_chans or (weights.model_kwargs.get("in_chans", 3) if weights else None)
    data = build_data(config, info, device, in_chans)
    model = build_model(config, data.num_classes, data.preprocessing.in_chans, weights).to(device)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)

    steps_per_epoch = len(data.train_loader)
    global_batch = config.data.batch_size * info.world_size
    lr_max = scaled_lr(optim_cfg.lr, global_batch, optim_cfg.lr_reference_batch)
    total_steps = optim_cfg.epochs * steps_per_epoch
    warmup_steps = min(total_steps, round(optim_cfg.warmup_epochs * steps_per_epoch))
    if optim_cfg.warmup_epochs > optim_cfg.epochs:
        log.warning("warmup_epochs %g is longer than the run (%d epochs): the LR warms up over the whole run",
                    optim_cfg.warmup_epochs, optim_cfg.epochs)

    def lr_at(step: int) -> float:
        return warmup_cosine_lr(step, total_steps, warmup_steps, lr_max, optim_cfg.lr_init, optim_cfg.lr_end)

    optimizer = build_optimizer(optim_cfg.optimizer, param_groups(model, optim_cfg.weight_decay,
                                                                  optim_cfg.decay_bias), lr_max, optim_cfg.momentum)
    amp_dtype = AMP_DTYPES[run.amp]
    scaler = torch.amp.GradScaler(device.type) if run.amp == "fp16" and device.type == "cuda" else None
    ema = None
    if run.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # Parameters only: an average of BatchNorm statistics taken while the weights move fits neither the live
        # weights nor the averaged ones; they are recomputed for the averaged weights at each epoch's end.
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(run.ema_decay), use_buffers=False)

    state = dict(epoch=0, step_in_epoch=0, global_step=0, best_top1=None, history=[], epoch_loss_sum=0.0)
    if resume_path is not None:
        restore = _restore_mindspore if resume_path.suffix == ".ckpt" else _restore
        state = restore(resume_path, model, optimizer, scaler, ema, state, steps_per_epoch, info)
        log.info("resuming from %s at epoch %d, step %d", resume_path, state["epoch"] + 1, state["step_in_epoch"])

    train_model: nn.Module = model
    if info.enabled:
        if run.sync_bn and device.type == "cuda":
            train_model = nn.SyncBatchNorm.convert_sync_batchnorm(train_model)
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    if run.compile:
        train_model = torch.compile(train_model)

    runlog = RunLog(run_dir, info.is_main, run.progress, optim_cfg.epochs, steps_per_epoch)
    if info.is_main:
        _write_config(run_dir, config, data, lr_max, global_batch, steps_per_epoch, info)
        log.info("run directory %s; %d train / %d val images, %d classes; global batch %d, peak LR %.4g "
                 "(%s at batch %s)", run_dir, len(data.train), len(data.val), data.num_classes, global_batch,
                 lr_max, optim_cfg.lr, optim_cfg.lr_reference_batch or global_batch)
    saver = _Saver(run_dir, info, device, config, data, model, optimizer, scaler, ema, steps_per_epoch)
    loss_fn = _loss_fn(optim_cfg.label_smoothing, optim_cfg.smoothing)
    started = time.perf_counter()
    stop = StopSignal()
    last_metrics: dict = {}
    try:
        with stop:
            while state["epoch"] < optim_cfg.epochs:
                epoch = state["epoch"]
                data.train_loader.sampler.set_epoch(epoch, state["step_in_epoch"])
                runlog.start_epoch(epoch, state["step_in_epoch"])
                step_offset, loss_offset = state["step_in_epoch"], state["epoch_loss_sum"]

                def on_step(step_info, epoch=epoch):
                    done = step_info["global_step"] - epoch * steps_per_epoch
                    step_info["mean_loss"] = (loss_offset + step_info["mean_loss"] * (done - step_offset)) / done
                    runlog.step(epoch, done - 1, step_info)
                    if run.save_every_steps and step_info["global_step"] % run.save_every_steps == 0:
                        state.update(global_step=step_info["global_step"], step_in_epoch=done,
                                     epoch_loss_sum=step_info["mean_loss"] * done)
                        saver.save(state, epoch_file=False)

                result = train_one_epoch(
                    train_model, data.train_loader, optimizer, loss_fn=loss_fn, lr_at=lr_at,
                    global_step=state["global_step"], device=device, amp_dtype=amp_dtype, scaler=scaler, ema=ema,
                    ema_warmup_steps=warmup_steps, grad_clip=optim_cfg.grad_clip, channels_last=run.channels_last,
                    on_step=on_step,
                    should_stop=lambda: _stop_requested(stop, info))
                done = result["global_step"] - epoch * steps_per_epoch
                state.update(global_step=result["global_step"], step_in_epoch=done,
                             epoch_loss_sum=loss_offset + result["loss"] * result["steps"])
                if result["stopped"] and done < steps_per_epoch:
                    saver.save(state, epoch_file=False)
                    runlog.close()
                    return _summary(run_dir, state, last_metrics, started, stopped=True)
                # every process's share: loss sum and images over the whole group, not rank 0's alone
                loss_sum, images = all_reduce_sum(torch.tensor([state["epoch_loss_sum"], result["images"]],
                                                               dtype=torch.float64, device=device)).tolist()
                record = dict(epoch=epoch + 1, global_step=state["global_step"], steps=done,
                              train_loss=loss_sum / max(1, done * info.world_size), lr=lr_at(state["global_step"] - 1),
                              epoch_time=result["time"], images_per_s=images / max(result["time"], 1e-9),
                              skipped=result["skipped"])
                if record["skipped"]:
                    log.warning("epoch %d: skipped %d unreadable image(s)", epoch + 1, record["skipped"])
                    runlog.line(f"skipped {record['skipped']} unreadable image(s)")
                state.update(epoch=epoch + 1, step_in_epoch=0, epoch_loss_sum=0.0)
                if ema is not None:
                    recompute_batchnorm(ema.module, data.train, data.preprocessing, config.data.batch_size, device)
                last_metrics = _maybe_validate(config, state, record, model, ema, data, device, amp_dtype)
                record["wall_time"] = time.perf_counter() - started  # this process's, resumed runs restart it
                runlog.end_epoch(record)
                state["history"].append(record)
                saver.save(state, epoch_file=state["epoch"] % run.save_every == 0
                           or state["epoch"] == optim_cfg.epochs, metrics=last_metrics)
                if result["stopped"]:
                    runlog.close()
                    return _summary(run_dir, state, last_metrics, started, stopped=True)
    except NonFiniteLoss:
        runlog.close()
        raise
    runlog.plot(state["history"])
    runlog.close()
    if info.is_main:
        saver.export_weights()
    barrier()
    return _summary(run_dir, state, last_metrics, started, stopped=False)


EMA_BN_BATCHES = 20


def recompute_batchnorm(model: nn.Module, data: Dataset, preprocessing: Preprocessing, batch_size: int,
                        device: torch.device, batches: int = EMA_BN_BATCHES) -> None:
    """BatchNorm running statistics for ``model``'s own weights, from the first ``batches`` training batches
    (eval preprocessing, the same images in every process and every run: deterministic)."""
    import itertools

    from torch.optim.swa_utils import update_bn

    loader = build_loader(data, Recipe(preprocessing.crop), preprocessing, train=False, batch_size=batch_size,
                          workers=0)
    update_bn(itertools.islice(loader, batches), model, device=device)


def _loss_fn(smoothing: float, mode: str):
    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return smoothed_cross_entropy(logits, targets, smoothing, mode)
    return loss_fn


def _stop_requested(stop: StopSignal, info: DistInfo) -> bool:
    """Every process stops at the same step: the flag is summed over all of them."""
    flag = torch.tensor([1.0 if stop.received else 0.0])
    if info.enabled:
        all_reduce_sum(flag)
    return bool(flag.item())


def _maybe_validate(config, state, record, model, ema, data, device, amp_dtype) -> dict:
    """Validate on this epoch's cadence (and after the last epoch); fills ``record`` in place."""
    run, epochs = config.run, config.optim.epochs
    if not (state["epoch"] == epochs or (run.eval_every and state["epoch"] % run.eval_every == 0)):
        return {}
    metrics = evaluate(model, data.val_loader, num_classes=data.num_classes, device=device, amp_dtype=amp_dtype,
                       channels_last=run.channels_last)
    record.update(val_top1=metrics["top1"], val_top5=metrics["top5"], val_loss=metrics["loss"],
                  val_count=metrics["count"], val_time=metrics["time"])
    if ema is not None:
        ema_metrics = evaluate(ema.module, data.val_loader, num_classes=data.num_classes, device=device,
                               amp_dtype=amp_dtype, channels_last=run.channels_last)
        record.update(ema_top1=ema_metrics["top1"], ema_top5=ema_metrics["top5"])
        metrics["ema"] = {k: ema_metrics[k] for k in ("top1", "top5", "loss", "count")}
    expected = len(data.val) - metrics["skipped"]
    if metrics["count"] != expected:
        raise RunError(f"validation scored {metrics['count']} samples, the set has {expected}")
    log.info("epoch %d/%d: train loss %.4f, val top-1 %.2f%% top-5 %.2f%% (%d images%s)%s", state["epoch"], epochs,
             record["train_loss"], 100 * metrics["top1"], 100 * metrics["top5"], metrics["count"],
             f", {metrics['skipped']} unreadable skipped" if metrics["skipped"] else "",
             f", EMA top-1 {100 * metrics['ema']['top1']:.2f}%" if "ema" in metrics else "")
    return metrics


class _Saver:
    """Rank 0 writes checkpoints: one file per save, linked as last.pt (and best.pt)."""

    def __init__(self, run_dir, info, device, config, data, model, optimizer, scaler, ema, steps_per_epoch):
        self.run_dir, self.info, self.device, self.config, self.data = run_dir, info, device, config, data
        self.model, self.optimizer, self.scaler, self.ema = model, optimizer, scaler, ema
        self.steps_per_epoch = steps_per_epoch

    def state_dict(self, state: dict, rng_ranks: list, epoch_loss_sum: float) -> dict:
        return dict(
            format=ckpt.FORMAT, model_name=self.model.model_name, model_kwargs=dict(self.model.model_kwargs),
            classes=list(self.data.classes), preprocessing=self.data.preprocessing.to_dict(),
            config=self.config.to_dict(), model=self.model.state_dict(),
            ema=self.ema.module.state_dict() if self.ema is not None else None,
            ema_n_averaged=self.ema.n_averaged if self.ema is not None else None,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            epoch=state["epoch"], step_in_epoch=state["step_in_epoch"], global_step=state["global_step"],
            epoch_loss_sum=epoch_loss_sum, steps_per_epoch=self.steps_per_epoch,
            best_top1=state["best_top1"], history=list(state["history"]), rng=rng_ranks[0], rng_ranks=rng_ranks,
        )

    def save(self, state: dict, epoch_file: bool, metrics: Optional[dict] = None) -> None:
        top1 = (metrics or {}).get("top1")
        is_best = top1 is not None and (state["best_top1"] is None or top1 > state["best_top1"])
        if is_best:
            state["best_top1"] = top1
        # Every process's own generators, and the partial loss as the group's mean per process, so that a resumed
        # run continues each rank where it stopped (the epoch's end sums this offset over all processes).
        rng_ranks = all_gather_object(ckpt.rng_state())
        loss = all_reduce_sum(torch.tensor([state["epoch_loss_sum"]], dtype=torch.float64, device=self.device))
        epoch_loss_sum = loss.item() / self.info.world_size
        if not self.info.is_main:
            return
        name = ckpt.epoch_checkpoint_name(state["epoch"], self.steps_per_epoch) if epoch_file else "last.pt"
        path = self.run_dir / name
        try:
            ckpt.save_checkpoint(self.state_dict(state, rng_ranks, epoch_loss_sum), path)
            if epoch_file:
                ckpt.link_checkpoint(path, self.run_dir / "last.pt")
                ckpt.prune_epoch_checkpoints(self.run_dir, self.config.run.keep_checkpoint_max)
            if is_best:
                ckpt.link_checkpoint(self.run_dir / "last.pt", self.run_dir / "best.pt")
        except OSError as err:
            raise RunError(f"could not write checkpoint {path}: {err.strerror or err}; training stopped, "
                           "the previous checkpoint is intact") from None

    def export_weights(self) -> None:
        """``model.safetensors`` (and ``model_ema.safetensors``): weights only, for sharing."""
        import json

        metadata = dict(model_name=self.model.model_name, model_kwargs=json.dumps(self.model.model_kwargs),
                        classes=json.dumps(self.data.classes),
                        preprocessing=json.dumps(self.data.preprocessing.to_dict()))
        ckpt.save_safetensors(self.model.state_dict(), self.run_dir / "model.safetensors", metadata)
        if self.ema is not None:
            ckpt.save_safetensors(self.ema.module.state_dict(), self.run_dir / "model_ema.safetensors", metadata)


def _restore(path: Path, model, optimizer, scaler, ema, state: dict, steps_per_epoch: int, info: DistInfo) -> dict:
    saved = ckpt.load_checkpoint(path)
    if "optimizer" not in saved:
        raise UsageError(f"{path} holds weights only, not a training state; start from it with --pretrained")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    if ema is not None and saved.get("ema") is not None:
        ema.module.load_state_dict(saved["ema"])
        ema.n_averaged.fill_(int(saved["ema_n_averaged"]))
    ranks = saved.get("rng_ranks") or [saved["rng"]]
    if len(ranks) != info.world_size and info.is_main:
        log.warning("%s was saved by %d process(es), this run has %d: ranks beyond its count start fresh random "
                    "streams", path, len(ranks), info.world_size)
    if info.rank < len(ranks):
        ckpt.set_rng_state(ranks[info.rank])
    return dict(epoch=saved["epoch"], step_in_epoch=saved["step_in_epoch"], global_step=saved["global_step"],
                best_top1=saved["best_top1"], history=list(saved["history"]),
                epoch_loss_sum=saved["epoch_loss_sum"])


def _restore_mindspore(path: Path, model, optimizer, scaler, ema, state: dict, steps_per_epoch: int,
                       info: DistInfo) -> dict:
    """Continue a seed training checkpoint: its weights, its SGD momentum buffers, its step in the schedule.

    MindSpore's Momentum and PyTorch's SGD keep the same buffer (v = m * v + g), so the buffers carry over.
    """
    from .convert.mindspore import from_mindspore, read_ckpt

    seed = from_mindspore(read_ckpt(path))
    check_shapes(seed.state_dict, model)
    model.load_state_dict(seed.state_dict)
    if seed.momentum_buffers and isinstance(optimizer, torch.optim.SGD):
        params = dict(model.named_parameters())
        for name, buffer in seed.momentum_buffers.items():
            optimizer.state[params[name]]["momentum_buffer"] = buffer.to(params[name]).clone()
    elif seed.momentum_buffers:
        log.warning("%s holds SGD momentum buffers; the %s optimizer starts without them", path,
                    type(optimizer).__name__)
    if ema is not None:
        ema.module.load_state_dict(model.state_dict())
    step = seed.global_step or 0
    log.info("continuing the seed's run at global step %d (momentum buffers: %d)", step, len(seed.momentum_buffers))
    return dict(state, epoch=step // steps_per_epoch, step_in_epoch=step % steps_per_epoch, global_step=step)


def _write_config(run_dir: Path, config: Config, data: RunData, lr_max: float, global_batch: int,
                  steps_per_epoch: int, info: DistInfo) -> None:
    """``config.yaml``: the resolved config, plus what it resolved to on this machine."""
    import yaml

    resolved = config.to_dict()
    resolved["resolved"] = dict(peak_lr=lr_max, global_batch=global_batch, world_size=info.world_size,
                                steps_per_epoch=steps_per_epoch, num_classes=data.num_classes,
                                preprocessing=data.preprocessing.to_dict(), torch=str(torch.__version__))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))


def _summary(run_dir: Path, state: dict, metrics: dict, started: float, stopped: bool) -> dict:
    return dict(run_dir=str(run_dir), checkpoint=str(run_dir / "last.pt"),
                best=str(run_dir / "best.pt") if (run_dir / "best.pt").exists() else None,
                log=str(run_dir / "train.log"), epoch=state["epoch"], global_step=state["global_step"],
                step_in_epoch=state["step_in_epoch"], top1=metrics.get("top1"), top5=metrics.get("top5"),
                val_count=metrics.get("count"), best_top1=state["best_top1"], stopped=stopped,
                time=time.perf_counter() - started,
                plot=str(run_dir / "curves.png") if (run_dir / "curves.png").exists() else None)


# ------------------------------------------------------------------------------------- evaluation
def run_eval(config: Config, weights: str, *, ema: bool = False, onnx: Optional[str] = None,
             preprocessing: Optional[Preprocessing] = None, out_dir: Optional[str] = None) -> Optional[dict]:
    """Score ``weights`` (any format ``load_model`` reads) or an exported ``onnx`` model on the dataset's
    validation split, every sample exactly once, in one process or under torchrun.

    ``preprocessing`` defaults to the one saved with the weights, else the configured preset's.
    Rank 0 writes the report (JSON, confusion matrix CSV and PNG) and gets the metrics; others get ``None``.
    """
    from .export import OnnxModule
    from .reports import write_eval_report

    device_type = "cuda" if config.run.device.startswith("cuda") or (
        config.run.device == "auto" and torch.cuda.is_available()) else "cpu"
    info = init_distributed(device_type)
    try:
        device = pick_device(config.run.device, info)
        if onnx:
            model: nn.Module = OnnxModule(onnx)
            source = onnx
        else:
            model = ckpt.load_model(weights, ema=ema).to(device)
            source = weights
        d = config.data
        val = dataset_split(config, "val", model.num_classes)
        check_labels(val, model.num_classes)
        saved = getattr(model, "preprocessing", None)
        if preprocessing is None and saved:
            preprocessing = Preprocessing.from_dict(saved)
        if preprocessing is None:
            preprocessing = data_recipe(config, val, model.in_chans)[1]
        if preprocessing.in_chans != model.in_chans:
            raise UsageError(f"the model takes {model.in_chans}-channel images, the preprocessing gives "
                             f"{preprocessing.in_chans}")
        loader = build_loader(val, Recipe(preprocessing.crop), preprocessing, train=False,
                              batch_size=d.eval_batch_size or 2 * d.batch_size, rank=info.rank,
                              world_size=info.world_size, workers=d.workers, pin_memory=device.type == "cuda",
                              skip_bad_images=d.skip_bad_images)
        metrics = evaluate(model, loader, num_classes=model.num_classes, device=device)
        expected = len(val) - metrics["skipped"]
        if metrics["count"] != expected:
            raise RunError(f"evaluation scored {metrics['count']} samples, the dataset has {expected}")
        if not info.is_main:
            return None
        classes = getattr(model, "classes", None) or val.classes
        if len(classes) != model.num_classes:
            classes = [str(i) for i in range(model.num_classes)]
        meta = dict(weights=str(source), weights_sha256=file_sha256(source), ema=ema, runtime="onnxruntime" if onnx
                    else "pytorch", dataset=d.dataset, data_path=val.source, dataset_size=len(val), split="val",
                    preprocessing=preprocessing.to_dict(), world_size=info.world_size)
        out = Path(out_dir) if out_dir else Path(source).parent / f"eval-{d.dataset}"
        paths = write_eval_report(out, metrics, classes, meta)
        return dict(metrics, **meta, classes=classes, reports=paths)
    finally:
        destroy_distributed()
