"""The bench task: our inference paths and training step timed next to torchvision's in the same run.

``bench("inference" | "training", models=..., batch_sizes=...)`` returns a ``BenchResult`` (and writes it to
``output`` as JSON); ``mobilenetv3 bench`` prints it. The timing itself (``mobilenetv3.benchmarking``) is the library's;
the training side runs ``engine.train_one_epoch`` with what ``train`` builds (``build_trainable``,
``train_options``, ``build_schedule``), against a bare torchvision loop on the same tensors.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..benchmarking import (
    core_modes,
    default_variants,
    device_sync,
    inference_groups,
    inference_preamble,
    machine_info,
    torchvision_model,
)
from ..build import build_model, build_trainable, train_options
from ..config import load_config
from ..data.batches import Batch
from ..engine import train_one_epoch
from ..errors import SettingError, UsageError
from ..models import list_models
from ..optim import build_schedule
from ..runlog import RunLog

KINDS = ("inference", "training")
BENCH_STEPS_PER_EPOCH = 1000  # the schedule's length: 10 warmup steps (warmup_epochs 0.01), as a long run's start


@dataclass
class BenchResult:
    """One benchmark: the machine, its rows (``ms``, ``images_per_s`` and the ratios) and, for inference, the
    paths timed, those left out (``notes``) and the thread settings of each core mode."""

    kind: str
    machine: dict
    rows: list = field(default_factory=list)
    details: dict = field(default_factory=dict)  # inference: variants, notes, busy_warning, thread_settings

    def to_dict(self) -> dict:
        return dict(machine=self.machine, kind=self.kind, rows=self.rows, **self.details)


def bench(kind: str = "inference", *, models: Sequence[str] = ("mobilenetv3_large",),
          batch_sizes: Optional[Sequence[int]] = None, image_size: int = 224, quick: bool = False,
          output: Optional[str] = None, threads: Optional[int] = None, cores: str = "all",
          variants: Optional[Sequence[str]] = None, machine: Optional[dict] = None) -> BenchResult:
    """Time ``kind`` (``inference`` or ``training``) for each of ``models`` and ``batch_sizes`` (default: 1 and 32
    for inference, 32 for training) at ``image_size``, next to torchvision's model in the same run. Inference runs
    ``variants`` (default ``bench.default_variants(quick)``, less those this machine cannot run: ``notes`` says
    why) on ``cores`` (``bench.CORE_MODES``), the all-core run with ``threads`` threads. ``quick``: fewer repeats
    and no ``torch.compile``. The result is also written to ``output`` (JSON) when given."""
    if kind not in KINDS:
        raise SettingError("kind", f"{kind!r} is unknown; choose one of: {', '.join(KINDS)}")
    result = run_bench(kind, list(models), list(batch_sizes) if batch_sizes else None, image_size, quick,
                       Path(output) if output else None, threads, cores, variants, machine)
    return BenchResult(kind, result.pop("machine"), result.pop("rows"),
                       {k: v for k, v in result.items() if k != "kind"})


def run_bench(what: str, models, batches, size: int, quick: bool, out: Optional[Path] = None,
              threads: Optional[int] = None, cores: str = "all", variants=None,
              machine: Optional[dict] = None) -> dict:
    """``bench``'s result as the JSON document it writes: rows plus the machine (``machine_info``, unless given)."""
    for name in models:
        if name not in list_models():
            raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    batches = batches or ([1, 32] if what == "inference" else [32])
    if min(batches) < 1:
        raise SettingError("batch_sizes", "must be at least 1")
    if size < 32:
        raise SettingError("image_size", "must be at least 32")
    if what != "inference" and (threads is not None or cores != "all" or variants):
        raise UsageError("threads, cores and variants apply to inference benchmarks only")
    modes = core_modes(cores, threads) if what == "inference" else ()
    result = dict(machine=machine or machine_info(), kind=what, rows=[])
    repeats, warmup = (3, 1) if quick else (10, 3)
    if what == "inference":
        result.update(inference_preamble(result["machine"], variants or default_variants(quick)), thread_settings={})
        for settings, rows in inference_groups(models, batches, size, result["variants"], modes, threads, repeats,
                                               warmup):
            result["thread_settings"].setdefault(settings["cores"], settings)
            result["rows"] += rows
    else:
        for name in models:
            for batch in batches:
                result["rows"] += bench_training(name, batch, size, steps=2 if quick else 6)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    return result


def _batches(count: int, batch: int, size: int, num_classes: int, in_chans: int = 3):
    generator = torch.Generator().manual_seed(0)
    return [Batch(torch.randn(batch, in_chans, size, size, generator=generator),
                  torch.randint(0, num_classes, (batch,), generator=generator), 0) for _ in range(count)]


def bench_training(name: str, batch: int, size: int, steps: int = 6, warmup: int = 2, num_classes: int = 10,
                   channels_last: bool = True, device: str = "cpu", amp_dtype: Optional[torch.dtype] = None,
                   compile: bool = False, reference_channels_last: bool = False, in_chans: int = 3,
                   stem_stride: int = 2) -> list[dict]:
    """Images/s of the project's training step (``engine.train_one_epoch`` with a run's loss, optimizer, schedule
    and log, built by the same functions as ``train``'s) against a bare torchvision model + SGD + cross-entropy
    loop, on the same tensors.

    ``device``, ``amp_dtype`` (autocast) and ``compile`` (``torch.compile``) apply to both sides;
    ``channels_last`` to ours, ``reference_channels_last`` to torchvision's; ``in_chans`` and ``stem_stride``
    (a grayscale, stride-1 stem as the Fashion-MNIST presets use) to both: torchvision's first convolution is
    replaced by one with that input and stride, as a user would adapt it."""
    device = torch.device(device)
    batches = [b._replace(images=b.images.to(device), labels=b.labels.to(device))
               for b in _batches(steps + warmup, batch, size, num_classes, in_chans)]
    torch.manual_seed(0)
    reference = torchvision_model(name, num_classes).train()
    if (in_chans, stem_stride) != (3, 2):
        reference.features[0][0] = nn.Conv2d(in_chans, 16, 3, stem_stride, 1, bias=False)
    bare = _bare_loop(reference.to(device), device, amp_dtype, compile, reference_channels_last)
    config = load_config(None, dict(model=name, dropout=0.2, stem_stride=stem_stride, lr=0.01, weight_decay=1e-4,
                                    epochs=1, warmup_epochs=0.01, batch_size=batch, channels_last=channels_last,
                                    amp={None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]))
    ours = build_model(config.model, num_classes, in_chans).to(device)
    if channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    schedule = build_schedule(config, BENCH_STEPS_PER_EPOCH, 1)
    trainable = build_trainable(config, ours, schedule.lr_max, device)
    options = train_options(config, schedule, trainable, device)
    step_model = torch.compile(ours) if compile else ours  # as a run with --compile wraps it
    with tempfile.TemporaryDirectory() as folder:
        runlog = RunLog(Path(folder), True, False, 1, steps + warmup)

        def project(items):
            train_one_epoch(step_model, items, trainable.optimizer, options, global_step=0,
                            on_step=lambda step: runlog.step(0, 0, dict(vars(step), mean_loss=step.loss_sum
                                                                        / step.loss_steps)))

        rows = [_timed_steps(fn, batches, warmup, device, dict(kind="training", model=name, batch=batch, size=size,
                                                                variant=label))
                for label, fn in (("torchvision + SGD loop", bare), ("mobilenetv3 train step", project))]
        runlog.close()
    rows[1]["speedup_vs_torchvision_loop"] = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    rows[0]["speedup_vs_torchvision_loop"] = 1.0
    return rows


def _bare_loop(reference: nn.Module, device: torch.device, amp_dtype: Optional[torch.dtype], compile: bool,
               channels_last: bool) -> Callable:
    """torchvision's model in the plainest training loop: SGD, cross-entropy, nothing else."""
    if channels_last:
        reference = reference.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    forward = torch.compile(reference) if compile else reference

    def bare(items):
        for b in items:
            images = b.images.contiguous(memory_format=torch.channels_last) if channels_last else b.images
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = F.cross_entropy(forward(images), b.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return bare


def _timed_steps(fn: Callable, batches: list, warmup: int, device: torch.device, row: dict) -> dict:
    """``row`` with the median step time of ``fn`` over ``batches[warmup:]``, one step a call, after warm-up."""
    sync = device_sync(device)
    fn(batches[:warmup])
    sync()
    start = time.perf_counter()
    per_step = []
    for b in batches[warmup:]:
        step_start = time.perf_counter()
        fn([b])
        sync()
        per_step.append(time.perf_counter() - step_start)
    median = statistics.median(per_step)
    return dict(row, ms=1000 * median, images_per_s=row["batch"] / median, total_s=time.perf_counter() - start)
