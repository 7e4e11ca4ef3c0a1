"""Verification: run an exported file in its own runtime and compare it with PyTorch."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from ..errors import RunError, SettingError, UsageError
from ..progress import Stages
from . import formats
from .common import WithSoftmax
from .formats import WriteOptions, int8_source_path
from .openvino import PRECISIONS, Int8Settings
from .torch_formats import is_torchscript

FORMATS = tuple(row.name for row in formats.TABLE)
INT8_FORMATS = tuple(row.name for row in formats.TABLE if row.int8)
SUFFIXES = {row.name: row.suffix for row in formats.TABLE}
RUNTIMES = formats.runtimes()  # what --runtime picks
EXPORTED_FILES = formats.files_phrase()

__all__ = ["FORMATS", "INT8_FORMATS", "SUFFIXES", "RUNTIMES", "EXPORTED_FILES", "int8_source_path", "load_exported",
           "compare", "exported_kind", "open_exported", "check_extra", "check_pytorch_options", "export_verified"]


def load_exported(path: Path, fmt: str):
    """A callable (N, C, H, W) -> outputs for an exported file, in its own runtime (OpenVINO: in fp32)."""
    return formats.get(fmt).open(path, None, None, None)


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


def exported_kind(path: Path) -> Optional[str]:
    """What kind of exported file ``path`` is (a ``kind`` of ``formats.TABLE``: ``onnx``, ``openvino``, ...): by
    suffix, and for a ``.pt``/``.pth``, whether it is a TorchScript archive; ``None`` for none of them."""
    row = formats.kind_of_name(path.name)
    if row is None and path.suffix.lower() in (".pt", ".pth") and is_torchscript(path):
        return "torchscript"
    return row.kind if row else None


def open_exported(path, runtime: Optional[str] = None, precision: Optional[str] = None,
                  threads: Optional[int] = None) -> nn.Module:
    """An exported file run where a model is expected, told apart by its suffix (``formats.TABLE``), in its own
    runtime or in ``runtime`` where that runs it too (``.onnx``: ONNX Runtime, or ``openvino``). ``precision`` is
    ``fp32`` (default) or ``bf16`` (OpenVINO only, on a CPU with native bf16). The module says ``runtime`` and
    ``precision``."""
    path = Path(path)
    kind = exported_kind(path)
    if kind is None:
        raise UsageError(f"{path}: not an exported model ({EXPORTED_FILES})")
    if runtime not in (None, *RUNTIMES):
        raise UsageError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    if precision not in (None, *PRECISIONS):
        raise UsageError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    row = formats.kinds()[kind]
    _check_runtime(path, row, runtime)
    runtime = runtime or row.runtime
    if precision not in (None, "fp32") and runtime != "openvino":
        runner = row.runs_in.split(" (")[0]  # "ExecuTorch (--runtime executorch)": ExecuTorch
        raise UsageError(f"--precision {precision} is OpenVINO's: "
                         + ("add --runtime openvino" if "openvino" in row.runtimes else
                            f"{runner} runs {path} as exported"))
    if threads and row.no_threads:
        raise UsageError(row.no_threads.format(path=path))
    return row.open(path, runtime, precision, threads)


def _check_runtime(path: Path, row: formats.Format, runtime: Optional[str]) -> None:
    """``runtime`` (``None``: the file's own) runs files of ``row``'s kind: else the line that says which does.
    A runtime that runs only its own files says so, unless the file too runs in one runtime only."""
    if runtime is None or runtime in row.runtimes:
        return
    claimed = formats.exclusive(runtime)
    if claimed is not None and row.runtime != "pytorch" and formats.exclusive(row.runtime) is None:
        raise UsageError(f"--runtime {runtime} runs {claimed.own_files}, not {path}")
    raise UsageError(f"{path} is {row.what}: it runs in {row.runs_in}")


def check_extra(fmt: str) -> None:
    """The extra that ``fmt`` needs (``openvino``, ``executorch``, ...) is installed, or its one line, a
    ``UsageError``: said before any data is read or any stage begins."""
    formats.get(fmt).extra()


def check_pytorch_options(runtime: Optional[str], precision: Optional[str]) -> None:
    """Weights run in PyTorch, in fp32: ``runtime`` and ``precision`` are settings of exported files."""
    if runtime not in (None, "pytorch"):
        raise SettingError("runtime", f"{runtime} runs an exported file, not weights; export the weights first: "
                           "mobilenetv3 export --format onnx|openvino")
    if precision not in (None, "fp32"):
        raise SettingError("precision", f"{precision} is OpenVINO's: give an exported file, run in openvino")


def export_verified(model: nn.Module, fmt: str, path: Path, example: torch.Tensor, *, softmax: bool = False,
                    real_inputs: Iterable[torch.Tensor] = (), calibration: Optional[Iterable[torch.Tensor]] = None,
                    calibration_info: Optional[dict] = None, tolerance: float = 1e-4,
                    int8: Optional[Int8Settings] = None, stages: Optional[Stages] = None, nhwc: bool = False,
                    precision: Optional[str] = None) -> dict:
    """Export ``model`` as ``fmt`` to ``path``, then run the file in its runtime on random inputs (batch 1
    and 3) and ``real_inputs`` and compare with PyTorch. fp32 formats must agree within ``tolerance``
    (``RunError`` otherwise, the file removed); INT8 reports its agreement and records ``calibration_info``
    (what the ``calibration`` images are) in the file; ``int8``: ``openvino-int8``'s ``Int8Settings``;
    ``stages`` says each step as it begins; ``nhwc``: a LiteRT file takes (N, H, W, C);
    ``precision``: what Core ML computes in (``fp16``, default, or ``fp32``). Returns the comparison figures and
    paths (ExecuTorch: and ``delegation``, where its operators run; LiteRT and ncnn: their ``operators``; ncnn:
    ``fp16``, the comparison in ncnn's default fp16 storage). A format with a ``check_file`` (Core ML, which
    predicts only on macOS) is checked by it (``coreml``: what ``coreml.verify_coreml`` found), not run."""
    row = formats.get(fmt)
    row.extra()
    if row.int8 and calibration is None:
        raise UsageError(f"{fmt} needs images to calibrate: give --dataset and --data-path")
    model = model.eval()
    stages = stages or Stages(f"export {fmt}", enabled=False)
    reference = WithSoftmax(model).eval() if softmax else model
    options = WriteOptions(calibration, calibration_info, int8, stages, nhwc, precision)
    written = row.write(model, path, example, softmax, options)
    if row.check_file is not None:
        stages.begin(f"checking {path.name}'s program (it runs only on {row.systems_named()})")
        return dict(written, path=str(path), format=fmt, softmax=True,
                    **{row.kind: row.check_file(path, model, precision or row.precisions[0])})
    stages.begin(f"verifying {path.name} in its runtime against PyTorch")
    runtime = load_exported(path, fmt)
    generator = torch.Generator().manual_seed(0)
    shape = example.shape[1:]
    random_inputs = [torch.randn(1, *shape, generator=generator), torch.randn(3, *shape, generator=generator)]
    figures = dict(random=compare(reference, runtime, random_inputs))
    real_inputs = list(real_inputs)
    if real_inputs:
        figures["real"] = compare(reference, runtime, real_inputs)
    for name, open_as in row.reported:  # ncnn's fp16: its default storage and arithmetic, reported, not bounded
        written[name] = compare(reference, open_as(path), real_inputs or random_inputs)
    if not row.int8:
        worst = max(f["max_abs_diff"] for f in figures.values())
        if worst > tolerance:
            for written_path in (path, *row.companions(path)):
                written_path.unlink(missing_ok=True)
            raise RunError(f"{fmt} export disagrees with PyTorch: max abs difference {worst:.3g} > {tolerance}")
    return dict(written, path=str(path), format=fmt, softmax=softmax, **figures)
