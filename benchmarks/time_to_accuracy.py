"""Time to accuracy: how long a training run took to first reach a validation top-1, from its metrics.jsonl.

    python benchmarks/time_to_accuracy.py runs/fashion-mnist-95-... --target 0.95
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "time_to_accuracy.json"


def time_to_accuracy(run_dir: Path, target: float) -> dict:
    """Training wall clock (sum of epoch times) until the first epoch whose top-1 (or EMA top-1) reaches ``target``."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    elapsed, reached = 0.0, None
    wall_before, previous_wall, resumes = 0.0, 0.0, 0  # wall_time restarts at 0 when a run is resumed
    for record in records:
        elapsed += record["epoch_time"]
        wall = record.get("wall_time")  # training and evaluation, when the run recorded it
        if wall is not None:
            if wall < previous_wall:
                wall_before, resumes = wall_before + previous_wall, resumes + 1
            previous_wall = wall
        best = max(record.get("val_top1") or 0.0, record.get("ema_top1") or 0.0)
        if reached is None and best >= target:
            reached = dict(epoch=record["epoch"], train_minutes=elapsed / 60, top1=record.get("val_top1"),
                           ema_top1=record.get("ema_top1"),
                           wall_minutes=(wall_before + wall) / 60 if wall is not None else None)
    final = records[-1] if records else {}
    return dict(run_dir=str(run_dir), target=target, reached=reached, epochs=len(records), resumes=resumes,
                total_train_minutes=elapsed / 60, final_top1=final.get("val_top1"),
                final_ema_top1=final.get("ema_top1"),
                best_top1=max((r.get("val_top1") or 0.0 for r in records), default=None),
                best_ema_top1=max((r.get("ema_top1") or 0.0 for r in records), default=None),
                curve=[dict(epoch=r["epoch"], top1=r.get("val_top1"), ema_top1=r.get("ema_top1"),
                            train_loss=r["train_loss"]) for r in records], config=config)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if not (args.run_dir / "metrics.jsonl").is_file():
        p.exit(2, f"{p.prog}: error: {args.run_dir} has no metrics.jsonl (not a training run directory)\n")
    if not 0 < args.target <= 1:
        p.exit(2, f"{p.prog}: error: --target is a fraction in (0, 1], got {args.target}\n")
    result = time_to_accuracy(args.run_dir, args.target)
    reached = result["reached"]
    print(f"{args.run_dir}: " + (f"reached {100 * args.target:.1f}% at epoch {reached['epoch']} after "
                                 f"{reached['train_minutes']:.1f} min of training" if reached else
                                 f"did not reach {100 * args.target:.1f}% (best {100 * result['best_top1']:.2f}%, "
                                 f"EMA {100 * (result['best_ema_top1'] or 0):.2f}%)"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
