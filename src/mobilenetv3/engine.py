"""One training epoch and one evaluation pass. They take objects; training returns an ``EpochResult``,
evaluation a dict of metrics."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .data import eval_loader
from .data.datasets import Dataset
from .data.transforms import Preprocessing
from .dist import all_reduce_sum
from .errors import RunError

EMA_BN_BATCHES = 20  # training batches that re-estimate BatchNorm statistics (recompute_batchnorm)


class NonFiniteLoss(RunError):
    """The loss became NaN or infinite; training stops without saving the broken state."""

    def __init__(self, step: int, value: float):
        super().__init__(f"the loss is {value} at step {step}; stopping (lower the learning rate, or check the data)")
        self.step = step


@dataclass
class TrainOptions:
    """How a training step runs; fixed for a whole run."""

    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    lr_at: Callable[[int], float]  # the schedule: global step -> learning rate
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: Optional[torch.dtype] = None
    scaler: Optional[torch.amp.GradScaler] = None
    ema: Optional[nn.Module] = None  # torch.optim.swa_utils.AveragedModel
    ema_warmup_steps: int = 0  # the average starts after these steps (torchvision's reference: after warmup)
    grad_clip: Optional[float] = None
    channels_last: bool = False


@dataclass
class StepInfo:
    """What ``on_step`` hears after each step."""

    global_step: int  # after this step
    steps: int  # steps taken in this call, this one included
    loss: float
    loss_sum: float  # the losses of the steps of this call that trained
    loss_steps: int
    lr: float
    images: int
    step_time: float


@dataclass
class EpochResult:
    """What one call of ``train_one_epoch`` did; the caller adds it to what it had before."""

    steps: int = 0  # steps taken, batches skipped for unreadable images included
    images: int = 0
    skipped: int = 0
    loss_sum: float = 0.0
    loss_steps: int = 0  # steps whose loss is in ``loss_sum``
    time: float = 0.0
    global_step: int = 0
    stopped: bool = False

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.loss_steps)


def train_one_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, options: TrainOptions, *,
                    global_step: int, on_step: Optional[Callable[[StepInfo], None]] = None,
                    should_stop: Callable[[], bool] = lambda: False) -> EpochResult:
    """Train over ``batches`` (an iterable of ``Batch``); the LR is set from ``options.lr_at(global_step)`` every
    step. Stops early, at a step boundary, when ``should_stop()`` turns true."""
    model.train()
    start = time.perf_counter()
    result = EpochResult(global_step=global_step)
    for batch in batches:
        result.steps += 1
        result.global_step += 1  # the step counts even when skipped, so the schedule and epochs stay aligned
        if len(batch.labels) < 2:  # unreadable images skipped: too few left for BatchNorm statistics
            result.skipped += batch.skipped + len(batch.labels)
            continue
        step_start = time.perf_counter()
        lr = options.lr_at(result.global_step - 1)
        loss = _step(model, batch, optimizer, options, lr, result.global_step - 1)
        result.images += len(batch.labels)
        result.skipped += batch.skipped
        result.loss_sum += loss
        result.loss_steps += 1
        if on_step is not None:
            on_step(StepInfo(result.global_step, result.steps, loss, result.loss_sum, result.loss_steps, lr,
                             len(batch.labels), time.perf_counter() - step_start))
        if should_stop():
            result.stopped = True
            break
    result.time = time.perf_counter() - start
    return result


def _step(model: nn.Module, batch, optimizer: torch.optim.Optimizer, options: TrainOptions, lr: float,
          global_step: int) -> float:
    """One optimisation step at ``lr``; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    images = batch.images.to(options.device, non_blocking=True)
    labels = batch.labels.to(options.device, non_blocking=True)
    if options.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(options.device.type, dtype=options.amp_dtype, enabled=options.amp_dtype is not None):
        loss = options.loss_fn(model(images), labels)
    loss_value = loss.item()
    if not torch.isfinite(loss).item():
        raise NonFiniteLoss(global_step, loss_value)
    optimizer.zero_grad(set_to_none=True)
    scaler, clip = options.scaler, options.grad_clip
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if clip:
        if scaler is not None:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if options.ema is not None:
        if global_step < options.ema_warmup_steps:  # as torchvision's reference: the average starts after warmup
            options.ema.n_averaged.zero_()
        options.ema.update_parameters(model)
    return loss_value


def top_classes(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest scores of each row of ``scores`` (B, classes) and their classes, highest first, equal
    scores in class order, as ``argmax`` takes the first: ``topk`` orders ties as it finds them, and an INT8
    program's quantised logits tie often (58 of 10,000 Fashion-MNIST images with ExecuTorch INT8), so eval's top-1
    differed from export's report (``argmax``) by 0.05 pt. The one rule for eval, export, predict and the server."""
    values, indices = scores.sort(dim=1, descending=True, stable=True)
    return values[:, :k], indices[:, :k]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, *, num_classes: int, device: torch.device,
             amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False) -> dict:
    """Top-1, top-5, loss, per-class accuracy and the confusion matrix over every batch.

    Counts are summed over all processes, so with an evaluation sampler that shards without
    padding the totals cover each sample exactly once. ``count`` is the number of samples scored.
    """
    model.eval()
    k = min(5, num_classes)
    count = torch.zeros((), dtype=torch.float64, device=device)
    correct1, correct5, loss_sum = count.clone(), count.clone(), count.clone()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)  # [true, predicted]
    skipped = 0
    start = time.perf_counter()
    for batch in batches:
        skipped += batch.skipped
        if len(batch.labels) == 0:
            continue
        images = batch.images.to(device, non_blocking=True)
        labels = batch.labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        top = top_classes(logits, k)[1]  # (B, k)
        hits = top == labels[:, None]
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(1).sum()
        count += len(labels)
        confusion += torch.bincount(labels * num_classes + top[:, 0], minlength=num_classes ** 2).view(
            num_classes, num_classes)
    totals = all_reduce_sum(torch.stack([count, correct1, correct5, loss_sum,
                                         torch.tensor(float(skipped), dtype=torch.float64, device=device)]))
    confusion = all_reduce_sum(confusion).cpu()
    count_all = int(totals[0].item())
    per_class_total = confusion.sum(1)
    per_class = (confusion.diag().double() / per_class_total.clamp(min=1)).tolist()
    return dict(count=count_all, top1=totals[1].item() / max(1, count_all), top5=totals[2].item() / max(1, count_all),
                topk=k, loss=totals[3].item() / max(1, count_all), skipped=int(totals[4].item()),
                per_class_accuracy=per_class, confusion=confusion, time=time.perf_counter() - start)


def recompute_batchnorm(model: nn.Module, data: Dataset, preprocessing: Preprocessing, batch_size: int,
                        device: torch.device, batches: int = EMA_BN_BATCHES, workers: Optional[int] = None,
                        skip_bad_images: bool = False) -> None:
    """BatchNorm running statistics for ``model``'s own weights, from the first ``batches`` training batches
    (eval preprocessing, the same images in every process and every run: deterministic)."""
    from torch.optim.swa_utils import update_bn

    loader = eval_loader(data, preprocessing, batch_size=batch_size, workers=workers, skip_bad_images=skip_bad_images)
    images = (batch.images for batch in itertools.islice(loader, batches) if len(batch.images))
    update_bn(images, model, device=device)
