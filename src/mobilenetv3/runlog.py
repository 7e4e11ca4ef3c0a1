"""What a training run writes for people: the seed's log lines, JSON lines, TensorBoard, a progress bar, a plot.

Only the main process writes; the other ranks get a ``RunLog`` with ``enabled=False``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from .files import save_figure

log = logging.getLogger(__name__)


def seed_step_line(epoch: int, epochs: int, step: int, steps: int, loss: float, mean_loss: float,
                   step_ms: float, lr: float) -> str:
    """The seed's per-step line (0-based epoch and step, loss of this step / epoch mean, time in ms)."""
    return (f"epoch: [{epoch:3d}/{epochs:3d}], step:[{step:5d}/{steps:5d}], loss:[{loss:.3f}/{mean_loss:.3f}], "
            f"time:[{step_ms:.3f}], lr:[{lr:.3f}]")


def seed_epoch_line(epoch_ms: float, steps: int, mean_loss: float) -> str:
    return f"epoch time: {epoch_ms:.3f}, per step time: {epoch_ms / max(1, steps):.3f}, avg loss: {mean_loss:.3f}"


class RunLog:
    """``train.log`` (the seed's lines), ``metrics.jsonl``, TensorBoard scalars and a tqdm bar per epoch."""

    LINES_PER_EPOCH = 10  # progress lines per epoch when stderr is not a terminal

    def __init__(self, run_dir: Path, enabled: bool, progress: bool, epochs: int, steps_per_epoch: int):
        import sys

        self.run_dir, self.enabled, self.epochs, self.steps = run_dir, enabled, epochs, steps_per_epoch
        # A bar redraws itself on a terminal; piped into a file (`make demo | tee log`) it would write a full
        # line per step, so there the progress is a plain line every tenth of an epoch.
        self.progress = progress and enabled and sys.stderr.isatty()
        self.progress_lines = progress and enabled and not self.progress
        self.every = max(1, steps_per_epoch // self.LINES_PER_EPOCH)
        self.bar = None
        self.writer = None
        if not enabled:
            return
        self.train_log = open(run_dir / "train.log", "a", buffering=1)
        self.metrics = open(run_dir / "metrics.jsonl", "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.writer = None

    def line(self, text: str) -> None:
        if self.enabled:
            self.train_log.write(text + "\n")

    def start_epoch(self, epoch: int, start_step: int) -> None:
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, initial=start_step, desc=f"epoch {epoch + 1}/{self.epochs}",
                            unit="step", dynamic_ncols=True, leave=False)

    def step(self, epoch: int, step_in_epoch: int, info: dict) -> None:
        if not self.enabled:
            return
        self.line(seed_step_line(epoch, self.epochs, step_in_epoch, self.steps, info["loss"], info["mean_loss"],
                                 info["step_time"] * 1000, info["lr"]))
        rate = info["images"] / max(info["step_time"], 1e-9)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{info['mean_loss']:.3f}", lr=f"{info['lr']:.4f}", img_s=f"{rate:.0f}")
        elif self.progress_lines and ((step_in_epoch + 1) % self.every == 0 or step_in_epoch + 1 == self.steps):
            log.info("epoch %d/%d step %d/%d: loss %.3f, lr %.4f, %.0f img/s", epoch + 1, self.epochs,
                     step_in_epoch + 1, self.steps, info["mean_loss"], info["lr"], rate)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", info["loss"], info["global_step"])
            self.writer.add_scalar("train/lr", info["lr"], info["global_step"])

    def end_epoch(self, record: dict) -> None:
        """``record``: epoch, train loss/time/steps, lr, and val metrics when there were any."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.enabled:
            return
        self.line(seed_epoch_line(record["epoch_time"] * 1000, record["steps"], record["train_loss"]))
        self.metrics.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key in ("val_top1", "val_top5", "val_loss", "ema_top1"):
                if record.get(key) is not None:
                    self.writer.add_scalar(key.replace("_", "/", 1), record[key], record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.enabled:
            self.train_log.close()
            self.metrics.close()
            if self.writer is not None:
                self.writer.close()

    def plot(self, history: list[dict]) -> Optional[Path]:
        """``curves.png``: training loss, learning rate and validation top-1 per epoch."""
        if not self.enabled or not history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in history]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].plot(epochs, [r["train_loss"] for r in history], marker=".")
        axes[0].set_title("training loss")
        axes[1].plot(epochs, [r["lr"] for r in history], marker=".")
        axes[1].set_title("learning rate (end of epoch)")
        val = [(r["epoch"], 100 * r["val_top1"]) for r in history if r.get("val_top1") is not None]
        ema = [(r["epoch"], 100 * r["ema_top1"]) for r in history if r.get("ema_top1") is not None]
        if val:
            axes[2].plot(*zip(*val), marker=".", label="top-1")
        if ema:
            axes[2].plot(*zip(*ema), marker=".", label="EMA top-1")
        axes[2].set_title("validation accuracy (%)")
        if val or ema:
            axes[2].legend()
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = self.run_dir / "curves.png"
        save_figure(fig, path)
        plt.close(fig)
        return path
