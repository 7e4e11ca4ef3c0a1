"""Parameter groups, optimizers, the loss, and the run's learning-rate schedule (the seed's warmup-cosine, per step)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .errors import UsageError

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "rmsprop", "adamw")


def param_groups(model: nn.Module, weight_decay: float, decay_bias: bool = True) -> list[dict]:
    """Two groups: decayed and not. BatchNorm weights and biases are never decayed (MindSpore's default
    filter skips names with ``gamma``/``beta``); other biases are decayed unless ``decay_bias=False``."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                   for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_bias = name.endswith(".bias")
        (no_decay if id(param) in norm_params or (is_bias and not decay_bias) else decay).append(param)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def build_optimizer(name: str, groups: Iterable[dict], lr: float, momentum: float = 0.9,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """``sgd``: the seed's Momentum (PyTorch's SGD has the same update, v = m*v + g; w -= lr*v), or with
    ``nesterov`` the look-ahead step w -= lr*(g + m*v) (short schedules at high LR gain from it);
    ``rmsprop``: TensorFlow's RMSProp as the paper trained with; ``adamw``: decoupled weight decay."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if nesterov:
        raise UsageError(f"--nesterov is an SGD option; {name} has no Nesterov variant here")
    if name == "rmsprop":
        return RMSpropTF(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise UsageError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow implements it (and the MobileNetV3 paper used: decay 0.9, momentum 0.9, eps 1e-3).

    It differs from ``torch.optim.RMSprop`` in two ways that matter early in training: the squared
    average starts at 1 (not 0) and epsilon goes inside the square root. Weight decay is added to
    the gradient (L2), as TensorFlow's regularisers do.
    """

    def __init__(self, params, lr: float, alpha: float = 0.9, eps: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if not state:
                    state["square_avg"] = torch.ones_like(param)
                    state["momentum_buffer"] = torch.zeros_like(param)
                square_avg = state["square_avg"]
                square_avg.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                update = grad / (square_avg + group["eps"]).sqrt()
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update, alpha=group["lr"])
                param.sub_(buf)
        return loss


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, lr_max: float,
                     lr_init: float = 0.0, lr_end: float = 0.0) -> float:
    """The seed's per-step learning rate (``src/lr_generator.py``), for step 0 .. total_steps - 1.

    Linear from ``lr_init`` over ``warmup_steps`` (so the very first step uses ``lr_init``), then a
    cosine from ``lr_max`` down towards ``lr_end``; never below 0.
    """
    if step < warmup_steps:
        lr = lr_init + (lr_max - lr_init) * step / warmup_steps
    else:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        lr = lr_end + (lr_max - lr_end) * (1 + math.cos(math.pi * progress)) / 2
    return max(0.0, lr)


def scaled_lr(lr: float, global_batch: int, reference_batch) -> float:
    """The linear scaling rule: ``lr`` is given for ``reference_batch``; ``None`` means no scaling."""
    return lr if reference_batch is None else lr * global_batch / reference_batch


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float,
                           mode: str = "seed") -> torch.Tensor:
    """Cross-entropy with label smoothing, mean over the batch.

    ``mode="seed"``: MindSpore's one-hot with on-value 1 - e and off-value e / (N - 1).
    ``mode="torch"``: PyTorch's ``label_smoothing=e`` (on 1 - e + e / N, off e / N).
    ``targets`` are class indices (B,) or soft targets (B, N) from mixup/cutmix; soft targets are
    smoothed by the same affine map, which is exact for one-hot rows.
    """
    num_classes = logits.shape[1]
    if targets.dim() == 1:
        if mode == "torch" or smoothing == 0:
            return F.cross_entropy(logits.float(), targets, label_smoothing=smoothing)
        targets = F.one_hot(targets, num_classes).float()
    if smoothing:
        off = smoothing / (num_classes - 1) if mode == "seed" else smoothing / num_classes
        on = 1 - smoothing if mode == "seed" else 1 - smoothing + smoothing / num_classes
        targets = targets * (on - off) + off
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=1), dim=1).mean()


@dataclass(frozen=True)
class Schedule:
    """The run's length and learning-rate schedule, per step."""

    steps_per_epoch: int
    total_steps: int  # epochs x steps per epoch, or max_steps when that is fewer
    warmup_steps: int
    lr_max: float
    lr_init: float
    lr_end: float
    global_batch: int
    epochs: int  # the epochs the run takes: the last one may stop early at max_steps
    stored: Optional[tuple] = None  # the per-step rates of a resumed seed checkpoint, when followed

    def lr_at(self, step: int) -> float:
        if self.stored is not None:
            return self.stored[min(step, len(self.stored) - 1)]
        return warmup_cosine_lr(step, self.total_steps, self.warmup_steps, self.lr_max, self.lr_init, self.lr_end)


def build_schedule(config: Config, steps_per_epoch: int, world_size: int, stored: Optional[tuple] = None) -> Schedule:
    o, max_steps = config.optim, config.run.max_steps
    global_batch = config.data.batch_size * world_size
    full = o.epochs * steps_per_epoch
    total = min(full, max_steps or full)
    if o.warmup_epochs > o.epochs:
        log.warning("warmup_epochs %g is longer than the run (%d epochs): the LR warms up over the whole run",
                    o.warmup_epochs, o.epochs)
    scaled = config.source_of("warmup_epochs") or ""
    if scaled.endswith("scaled to the run"):
        log.info("%s: %g of %d epochs (--warmup-epochs sets it)", scaled, o.warmup_epochs, o.epochs)
    warmup = min(total, round(o.warmup_epochs * steps_per_epoch * total / full))  # the same share of a shorter run
    if total < full:
        log.info("max_steps %d: the run ends after %d of its %d steps; the schedule spans those, its warmup the "
                 "same share of them: %d steps", total, total, full, warmup)
    return Schedule(steps_per_epoch, total, warmup,
                    scaled_lr(o.lr, global_batch, o.lr_reference_batch), o.lr_init, o.lr_end, global_batch,
                    -(-total // steps_per_epoch), stored)


def say_seed_rates(rates: Optional[torch.Tensor], source, schedule: Schedule, start: int) -> None:
    """One line on the learning rates a resumed seed ``.ckpt`` (``source``) stores: followed from step ``start``
    (and what the steps past their end get), or not followed."""
    if rates is None or rates.numel() == 0:
        return
    if schedule.stored is None:
        log.info("%s stores the seed's own learning rates (%d steps); this run follows its warmup-cosine schedule "
                 "from step %d instead (--lr-schedule stored follows them)", source, rates.numel(), start)
        return
    stored, total = len(schedule.stored), schedule.total_steps
    if total <= stored:
        log.info("following the %d learning rates stored in %s, from step %d", stored, source, start)
        return
    past = f"step {stored} is past them and keeps" if total - stored == 1 else \
        f"steps {stored} to {total - 1} are past them and keep"
    log.warning("following the %d learning rates stored in %s, from step %d; the run has %d steps: %s the last "
                "one, %.4g", stored, source, start, total, past, schedule.stored[-1])
