"""One training epoch and one evaluation pass. They take objects and return a dict of metrics."""
from __future__ import annotations

import time
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .dist import all_reduce_sum


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; training stops without saving the broken state."""

    def __init__(self, step: int, value: float):
        super().__init__(f"the loss is {value} at step {step}; stopping (lower the learning rate, or check the data)")
        self.step = step


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_one_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, *,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    lr_at: Callable[[int], float], global_step: int, device: torch.device,
                    amp_dtype: Optional[torch.dtype] = None, scaler: Optional[torch.amp.GradScaler] = None,
                    ema: Optional[nn.Module] = None, ema_warmup_steps: int = 0, grad_clip: Optional[float] = None,
                    channels_last: bool = False, on_step: Optional[Callable[[dict], None]] = None,
                    should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Train over ``batches`` (an iterable of ``Batch``); the LR is set from ``lr_at(global_step)`` every step.

    Stops early, at a step boundary, when ``should_stop()`` turns true. Returns the number of steps
    and images, the mean loss, the wall time, the new ``global_step`` and whether it stopped early.
    """
    model.train()
    start = time.perf_counter()
    loss_sum, steps, images_seen, skipped, stopped = 0.0, 0, 0, 0, False
    for batch in batches:
        if len(batch.labels) < 2:  # unreadable images skipped: too few left for BatchNorm statistics
            skipped += batch.skipped + len(batch.labels)
            global_step += 1  # the step still counts, so the schedule and epoch boundaries stay aligned
            steps += 1
            continue
        step_start = time.perf_counter()
        lr = lr_at(global_step)
        _set_lr(optimizer, lr)
        images = batch.images.to(device, non_blocking=True)
        labels = batch.labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(images), labels)
        loss_value = loss.item()
        if not torch.isfinite(loss).item():
            raise NonFiniteLoss(global_step, loss_value)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if ema is not None:
            if global_step < ema_warmup_steps:  # as torchvision's reference: the average starts after warmup
                ema.n_averaged.zero_()
            ema.update_parameters(model)
        global_step += 1
        steps += 1
        images_seen += len(labels)
        skipped += batch.skipped
        loss_sum += loss_value
        if on_step is not None:
            on_step(dict(global_step=global_step, loss=loss_value, mean_loss=loss_sum / steps, lr=lr,
                         images=len(labels), step_time=time.perf_counter() - step_start))
        if should_stop():
            stopped = True
            break
    return dict(steps=steps, images=images_seen, skipped=skipped, loss=loss_sum / max(1, steps),
                time=time.perf_counter() - start, global_step=global_step, stopped=stopped)


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
        top = logits.topk(k, dim=1).indices  # (B, k)
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
