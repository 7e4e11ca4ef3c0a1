"""Verification: run an exported file in its own runtime and compare it with PyTorch."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from ..errors import UsageError
from .common import WithSoftmax
from .onnx import OnnxModule, export_onnx, quantize_onnx
from .torch_formats import export_pt2, export_torchscript

FORMATS = ("onnx", "onnx-int8", "torchscript", "pt2")
SUFFIXES = {"onnx": ".onnx", "onnx-int8": ".int8.onnx", "torchscript": ".torchscript.pt", "pt2": ".pt2"}


def load_exported(path: Path, fmt: str):
    """A callable (N, C, H, W) -> outputs for an exported file, in its own runtime."""
    if fmt in ("onnx", "onnx-int8"):
        return OnnxModule(path)
    if fmt == "torchscript":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path)).eval()
    return torch.export.load(str(path)).module()


@torch.no_grad()
def compare(reference: nn.Module, exported, inputs: Iterable[torch.Tensor]) -> dict:
    """Max absolute difference of outputs and top-1 agreement between PyTorch and an exported model."""
    max_diff, agree, count = 0.0, 0, 0
    for x in inputs:
        expected, actual = reference(x), exported(x)
        max_diff = max(max_diff, (expected - actual).abs().max().item())
        agree += (expected.argmax(1) == actual.argmax(1)).sum().item()
        count += len(x)
    return dict(max_abs_diff=max_diff, top1_agreement=agree / max(1, count), compared=count)


def export_verified(model: nn.Module, fmt: str, path: Path, example: torch.Tensor, *, softmax: bool = False,
                    real_inputs: Iterable[torch.Tensor] = (), calibration: Optional[Iterable[torch.Tensor]] = None,
                    calibration_info: Optional[dict] = None, tolerance: float = 1e-4) -> dict:
    """Export ``model`` as ``fmt`` to ``path``, then run the file in its runtime on random inputs (batch 1
    and 3) and ``real_inputs`` and compare with PyTorch. fp32 formats must agree within ``tolerance``
    (``ValueError`` otherwise); INT8 reports its agreement and records ``calibration_info`` (what the
    ``calibration`` images are) in the file. Returns the comparison figures and paths."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    model = model.eval()
    reference = WithSoftmax(model).eval() if softmax else model
    paths = dict(path=str(path))
    if fmt == "onnx-int8":
        if calibration is None:
            raise UsageError("onnx-int8 needs images to calibrate: give --dataset and --data-path")
        fp32_path = path.with_name(path.name.replace(".int8.onnx", ".onnx") if ".int8." in path.name
                                   else f"{path.stem}.fp32.onnx")
        export_onnx(model, fp32_path, example, softmax)
        quantize_onnx(fp32_path, path, calibration, calibration_info)
        paths["fp32_path"] = str(fp32_path)
    else:
        {"onnx": export_onnx, "torchscript": export_torchscript, "pt2": export_pt2}[fmt](model, path, example, softmax)
    runtime = load_exported(path, fmt)
    generator = torch.Generator().manual_seed(0)
    shape = example.shape[1:]
    random_inputs = [torch.randn(1, *shape, generator=generator), torch.randn(3, *shape, generator=generator)]
    figures = dict(random=compare(reference, runtime, random_inputs))
    real_inputs = list(real_inputs)
    if real_inputs:
        figures["real"] = compare(reference, runtime, real_inputs)
    if fmt != "onnx-int8":
        worst = max(f["max_abs_diff"] for f in figures.values())
        if worst > tolerance:
            path.unlink(missing_ok=True)
            raise RuntimeError(f"{fmt} export disagrees with PyTorch: max abs difference {worst:.3g} > {tolerance}")
    return dict(paths, format=fmt, softmax=softmax, **figures)
