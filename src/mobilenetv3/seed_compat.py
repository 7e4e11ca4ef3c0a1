"""The seed's ``train.py`` / ``eval.py`` / ``export.py`` flags, translated to ``mobilenetv3`` commands.

MindSpore model zoo users keep their commands: ``python train.py --dataset_path ~/cifar10/train/
--device_target CPU`` runs ``mobilenetv3 train --config cifar10-cpu --data-path ~/cifar10/train/
--device cpu``. GPU means the seed's ImageNet recipe, CPU its CIFAR-10 one, as in the seed.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

_TARGETS = {"GPU": ("imagenet-gpu", "imagenet", "cuda"), "CPU": ("cifar10-cpu", "cifar10", "cpu")}


class _SeedParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _bool(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")
    return value.lower() in ("true", "1")


def _parser(prog: str) -> argparse.ArgumentParser:
    p = _SeedParser(prog=prog, description="The seed's command line, run by mobilenetv3.")
    p.add_argument("--device_target", default="GPU", choices=("GPU", "CPU", "Ascend"),
                   help="GPU: the ImageNet recipe on CUDA; CPU: the CIFAR-10 recipe")
    return p


def _device(parser: argparse.ArgumentParser, target: str) -> tuple[str, str, str]:
    if target == "Ascend":
        parser.error("--device_target Ascend needs MindSpore; use GPU or CPU")
    return _TARGETS[target]


def train_argv(argv: Optional[Sequence[str]] = None) -> list[str]:
    """``train.py --dataset_path P --device_target GPU|CPU [--pre_trained CKPT] [--run_distribute True]``."""
    p = _parser("train.py")
    p.add_argument("--dataset_path", required=True, help="training data (ImageNet folder or CIFAR-10 batches)")
    p.add_argument("--pre_trained", help="start from these weights (any format, MindSpore .ckpt included)")
    p.add_argument("--run_distribute", type=_bool, default=False,
                   help="accepted for compatibility: launch with torchrun for several processes")
    args = p.parse_args(argv)
    preset, dataset, device = _device(p, args.device_target)
    out = ["train", "--config", preset, "--dataset", dataset, "--data-path", args.dataset_path, "--device", device,
           "--run-dir", os.environ.get("MOBILENETV3_RUN_DIR", "checkpoint")]
    if args.pre_trained:
        out += ["--pretrained", args.pre_trained]
    if os.path.isfile(os.path.join(out[out.index("--run-dir") + 1], "last.pt")):
        out += ["--resume", "auto"]  # the seed restarted into ./checkpoint; here a second run continues the first
    return out


def eval_argv(argv: Optional[Sequence[str]] = None) -> list[str]:
    """``eval.py --dataset_path P --checkpoint_path CKPT --device_target GPU|CPU``."""
    p = _parser("eval.py")
    p.add_argument("--dataset_path", required=True, help="validation data")
    p.add_argument("--checkpoint_path", required=True, help="weights (MindSpore .ckpt or any format we read)")
    args = p.parse_args(argv)
    _, dataset, device = _device(p, args.device_target)
    return ["eval", "--checkpoint", args.checkpoint_path, "--dataset", dataset, "--data-path", args.dataset_path,
            "--device", device]


def export_argv(argv: Optional[Sequence[str]] = None) -> list[str]:
    """``export.py --checkpoint_path CKPT --file_name NAME --file_format MINDIR|AIR|ONNX``.

    MINDIR and AIR are MindSpore's own formats: they cannot be written without MindSpore, so they
    are refused in one line pointing to ONNX, which MindSpore Lite and most runtimes import.
    """
    p = _parser("export.py")
    p.add_argument("--checkpoint_path", required=True, help="weights (MindSpore .ckpt or any format we read)")
    p.add_argument("--file_name", default="mobilenetv3", help="output name without extension")
    p.add_argument("--file_format", default="MINDIR", choices=("MINDIR", "AIR", "ONNX"))
    p.add_argument("--batch_size", type=int, default=1, help="accepted for compatibility (ONNX batch is dynamic)")
    args = p.parse_args(argv)
    _device(p, args.device_target)
    if args.file_format != "ONNX":
        p.error(f"--file_format {args.file_format} is MindSpore's own format and needs MindSpore; use "
                "--file_format ONNX (MindSpore Lite and most runtimes import ONNX)")
    return ["export", "--checkpoint", args.checkpoint_path, "--format", "onnx", "--softmax", "--no-dataset",
            "--output", f"{args.file_name}.onnx"]


def run(translate, argv: Optional[Sequence[str]] = None) -> int:
    """Translate the seed's flags and run the ``mobilenetv3`` command (``MOBILENETV3_DRY_RUN=1`` prints it)."""
    from .cli import main

    command = translate(argv)
    if os.environ.get("MOBILENETV3_DRY_RUN"):
        print("mobilenetv3 " + " ".join(command))
        return 0
    return main(command)
