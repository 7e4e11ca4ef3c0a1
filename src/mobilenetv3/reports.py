"""Evaluation reports: a JSON record of what was measured and how, the confusion matrix as CSV and PNG."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from .files import save_figure, write_atomic


def write_eval_report(out_dir: Path, metrics: dict, classes: list[str], meta: dict) -> dict:
    """``report.json``, ``confusion.csv`` (rows: true class, columns: predicted) and ``confusion.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    confusion: torch.Tensor = metrics["confusion"]
    report = dict(meta, count=metrics["count"], top1=metrics["top1"], top5=metrics["top5"], topk=metrics["topk"],
                  loss=metrics["loss"], skipped=metrics["skipped"],
                  per_class_accuracy=dict(zip(classes, metrics["per_class_accuracy"])),
                  per_class_count=dict(zip(classes, confusion.sum(1).tolist())))
    paths = dict(json=out_dir / "report.json", csv=out_dir / "confusion.csv", png=out_dir / "confusion.png")
    write_atomic(paths["json"], json.dumps(report, indent=2) + "\n")
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, confusion.tolist()):
        writer.writerow([name, *row])
    write_atomic(paths["csv"], table.getvalue())
    _plot_confusion(confusion, classes, paths["png"])
    return {k: str(v) for k, v in paths.items()}


def _plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = min(20, max(4, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    rates = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
