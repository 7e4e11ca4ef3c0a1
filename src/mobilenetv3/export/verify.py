"""Verification: run an exported file in its own runtime and compare it with PyTorch."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from ..errors import RunError, SettingError, UsageError
from ..progress import Stages
from .common import WithSoftmax
from .coreml import export_coreml, import_coremltools, open_coreml, verify_coreml
from .executorch import ExecuTorchModule, export_executorch, import_executorch
from .litert import LiteRtModule, check_hard_activations, export_litert, import_litert_converter
from .ncnn import NcnnModule, export_ncnn, import_pnnx, layer_types
from .ncnn import companions as ncnn_companions
from .onnx import OnnxModule, export_onnx, quantize_onnx
from .openvino import PRECISIONS, OpenVinoModule, export_openvino, import_openvino, quantize_openvino
from .torch_formats import TorchProgramModule, export_pt2, export_torchscript, is_torchscript

FORMATS = ("onnx", "onnx-int8", "torchscript", "pt2", "openvino", "openvino-int8", "executorch", "executorch-int8",
           "litert", "litert-int8", "coreml", "ncnn")
INT8_FORMATS = ("onnx-int8", "openvino-int8", "executorch-int8", "litert-int8")
SUFFIXES = {"onnx": ".onnx", "onnx-int8": ".int8.onnx", "torchscript": ".torchscript.pt", "pt2": ".pt2",
            "openvino": ".xml", "openvino-int8": ".int8.xml", "executorch": ".pte", "executorch-int8": ".int8.pte",
            "litert": ".tflite", "litert-int8": ".int8.tflite", "coreml": ".mlpackage", "ncnn": ".ncnn.param"}
RUNTIMES = ("onnxruntime", "openvino", "executorch", "litert", "ncnn", "coreml")  # what --runtime picks
KINDS = {".onnx": "onnx", ".xml": "openvino", ".pte": "executorch", ".pt2": "pt2", ".tflite": "litert",
         ".param": "ncnn", ".mlpackage": "coreml"}  # exported files by suffix
OWN_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino", "executorch": "executorch", "litert": "litert",
               "ncnn": "ncnn", "coreml": "coreml"}
OWN_RUNTIME_ONLY = {"litert": "a LiteRT model", "ncnn": "an ncnn model", "coreml": "a Core ML package"}
TORCH_KINDS = {"torchscript": "a TorchScript program", "pt2": "a torch.export program"}  # run by PyTorch itself
EXPORTED_FILES = ("an .onnx file, an OpenVINO IR .xml, an ExecuTorch .pte, a LiteRT .tflite, an ncnn .ncnn.param, "
                  "a Core ML .mlpackage, a TorchScript .torchscript.pt or a torch.export .pt2")


def load_exported(path: Path, fmt: str):
    """A callable (N, C, H, W) -> outputs for an exported file, in its own runtime (OpenVINO: in fp32)."""
    if fmt in ("onnx", "onnx-int8"):
        return OnnxModule(path)
    if fmt in ("openvino", "openvino-int8"):
        return OpenVinoModule(path, precision="fp32")
    if fmt in ("executorch", "executorch-int8"):
        return ExecuTorchModule(path)
    if fmt in ("litert", "litert-int8"):
        return LiteRtModule(path)
    if fmt == "ncnn":
        return NcnnModule(path, precision="fp32")
    return TorchProgramModule(path, fmt)


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


def int8_source_path(path: Path) -> Path:
    """Where an INT8 export writes the fp32 file it is quantised from (or, ``executorch-int8``, compared with):
    ``m.int8.onnx`` -> ``m.onnx``, ``m.int8.xml`` -> ``m.xml``, ``m.int8.pte`` -> ``m.pte``, else
    ``m.fp32.<suffix>``."""
    return path.with_name(path.name.replace(".int8.", ".") if ".int8." in path.name
                          else f"{path.stem}.fp32{path.suffix}")


def exported_kind(path: Path) -> Optional[str]:
    """What kind of exported file ``path`` is (``onnx``, ``openvino``, ``executorch``, ``torchscript``, ``pt2``):
    by suffix, and for a ``.pt``/``.pth``, whether it is a TorchScript archive; ``None`` for none of them."""
    if path.name.lower().endswith(".torchscript.pt") or (path.suffix.lower() in (".pt", ".pth")
                                                          and is_torchscript(path)):
        return "torchscript"
    return KINDS.get(path.suffix.lower())


def open_exported(path, runtime: Optional[str] = None, precision: Optional[str] = None,
                  threads: Optional[int] = None) -> nn.Module:
    """An exported file run where a model is expected, told apart by its suffix: ``.onnx`` in ONNX Runtime
    (``runtime="openvino"``: in OpenVINO), an OpenVINO IR ``.xml`` in OpenVINO, an ExecuTorch ``.pte`` in
    ExecuTorch, a TorchScript ``.torchscript.pt`` or a ``torch.export`` ``.pt2`` in PyTorch. ``precision`` is
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
    if kind in TORCH_KINDS:
        return _open_torch_program(path, kind, runtime, precision, threads)
    if kind in OWN_RUNTIME_ONLY:
        return _open_phone_format(path, kind, runtime, precision, threads)
    if runtime in OWN_RUNTIME_ONLY:
        raise UsageError(f"--runtime {runtime} runs its own files ({SUFFIXES[runtime]}), not {path}")
    runtime = runtime or OWN_RUNTIME[kind]
    if kind == "openvino" and runtime != "openvino":
        raise UsageError(f"{path} is an OpenVINO IR: it runs in OpenVINO (--runtime openvino)")
    if kind == "executorch" and runtime != "executorch":
        raise UsageError(f"{path} is an ExecuTorch program: it runs in ExecuTorch (--runtime executorch)")
    if runtime == "executorch":
        return _open_pte(path, kind, precision, threads)
    if runtime == "onnxruntime":
        if precision not in (None, "fp32"):
            raise UsageError(f"--precision {precision} is OpenVINO's: add --runtime openvino")
        return OnnxModule(path, threads=threads)
    return OpenVinoModule(path, threads=threads, precision=precision or "fp32")


def _open_torch_program(path: Path, kind: str, runtime: Optional[str], precision: Optional[str],
                        threads: Optional[int]) -> nn.Module:
    """A TorchScript or ``torch.export`` file in PyTorch, in fp32 as exported, on PyTorch's own threads."""
    if runtime is not None:
        raise UsageError(f"{path} is {TORCH_KINDS[kind]}: it runs in PyTorch (leave --runtime out)")
    if precision not in (None, "fp32"):
        raise UsageError(f"--precision {precision} is OpenVINO's: PyTorch runs {path} in fp32, as exported")
    if threads:
        raise UsageError(f"{path} runs on PyTorch's threads (torch.set_num_threads): threads is not a setting of it")
    return TorchProgramModule(path, kind)


def _open_phone_format(path: Path, kind: str, runtime: Optional[str], precision: Optional[str],
                       threads: Optional[int]) -> nn.Module:
    """A ``.tflite`` in LiteRT, an ``.ncnn.param`` in ncnn (in fp32), an ``.mlpackage`` in Core ML (macOS only):
    each runs in its own runtime only, as exported."""
    if runtime not in (None, OWN_RUNTIME[kind]):
        raise UsageError(f"{path} is {OWN_RUNTIME_ONLY[kind]}: it runs in {OWN_RUNTIME[kind]} (leave --runtime out)")
    if precision not in (None, "fp32"):
        raise UsageError(f"--precision {precision} is OpenVINO's: {OWN_RUNTIME[kind]} runs {path} as exported")
    if kind == "litert":
        return LiteRtModule(path, threads=threads)
    if kind == "ncnn":
        return NcnnModule(path, precision="fp32", threads=threads)
    if threads:
        raise UsageError("Core ML picks its own compute units: threads is not a setting of an .mlpackage")
    return open_coreml(path)


def _open_pte(path: Path, kind: str, precision: Optional[str], threads: Optional[int]) -> nn.Module:
    """A ``.pte`` in ExecuTorch, which runs it as exported (fp32 or INT8) on a thread pool of its own."""
    if kind != "executorch":
        raise UsageError(f"--runtime executorch runs ExecuTorch programs (.pte), not {path}")
    if precision not in (None, "fp32"):
        raise UsageError(f"--precision {precision} is OpenVINO's: ExecuTorch runs {path} as exported")
    if threads:
        raise UsageError("ExecuTorch sizes its own thread pool: threads is not a setting of a .pte")
    return ExecuTorchModule(path)


def check_extra(fmt: str) -> None:
    """The extra that ``fmt`` needs (``openvino``, ``executorch``) is installed, or its one line, a
    ``UsageError``: said before any data is read or any stage begins."""
    if fmt.startswith("openvino"):
        import_openvino()
    elif fmt.startswith("executorch"):
        import_executorch()
    elif fmt.startswith("litert"):
        import_litert_converter()
    elif fmt == "coreml":
        import_coremltools()
    elif fmt == "ncnn":
        import_pnnx()


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
                    int8: Optional[dict] = None, stages: Optional[Stages] = None, nhwc: bool = False,
                    precision: Optional[str] = None) -> dict:
    """Export ``model`` as ``fmt`` to ``path``, then run the file in its runtime on random inputs (batch 1
    and 3) and ``real_inputs`` and compare with PyTorch. fp32 formats must agree within ``tolerance``
    (``RunError`` otherwise, the file removed); INT8 reports its agreement and records ``calibration_info``
    (what the ``calibration`` images are) in the file; ``int8``: ``openvino-int8``'s settings, keyword arguments of
    ``quantize_openvino`` (``keep_fp32``, ``overflow_fix``, ``activation_ranges``, ``max_drop``, ``validation``,
    ``validation_info``); ``stages`` says each step as it begins; ``nhwc``: a LiteRT file takes (N, H, W, C);
    ``precision``: what Core ML computes in (``fp16``, default, or ``fp32``). Returns the comparison figures and
    paths (ExecuTorch: and ``delegation``, where its operators run; LiteRT and ncnn: their ``operators``; ncnn:
    ``fp16``, the comparison in ncnn's default fp16 storage). Core ML predicts only on macOS: its package is
    checked (``coreml``, what ``coreml.verify_coreml`` found), not run."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    check_extra(fmt)
    model = model.eval()
    stages = stages or Stages(f"export {fmt}", enabled=False)
    reference = WithSoftmax(model).eval() if softmax else model
    written = _write(model, fmt, path, example, softmax, calibration, calibration_info, int8, stages, nhwc,
                     precision)
    if fmt == "coreml":
        stages.begin(f"checking {path.name}'s program (Core ML predicts only on macOS)")
        return dict(written, path=str(path), format=fmt, softmax=True,
                    coreml=verify_coreml(path, model, precision or "fp16"))
    stages.begin(f"verifying {path.name} in its runtime against PyTorch")
    runtime = load_exported(path, fmt)
    generator = torch.Generator().manual_seed(0)
    shape = example.shape[1:]
    random_inputs = [torch.randn(1, *shape, generator=generator), torch.randn(3, *shape, generator=generator)]
    figures = dict(random=compare(reference, runtime, random_inputs))
    real_inputs = list(real_inputs)
    if real_inputs:
        figures["real"] = compare(reference, runtime, real_inputs)
    if fmt == "ncnn":  # ncnn's default: fp16 storage and arithmetic where the CPU has them; reported, not bounded
        written["fp16"] = compare(reference, NcnnModule(path, precision="fp16"), real_inputs or random_inputs)
    if fmt not in INT8_FORMATS:
        worst = max(f["max_abs_diff"] for f in figures.values())
        if worst > tolerance:
            path.unlink(missing_ok=True)
            if fmt == "openvino":
                path.with_suffix(".bin").unlink(missing_ok=True)
            if fmt == "ncnn":
                for companion in ncnn_companions(path):
                    companion.unlink(missing_ok=True)
            raise RunError(f"{fmt} export disagrees with PyTorch: max abs difference {worst:.3g} > {tolerance}")
    return dict(written, path=str(path), format=fmt, softmax=softmax, **figures)


def _write(model: nn.Module, fmt: str, path: Path, example: torch.Tensor, softmax: bool,
           calibration: Optional[Iterable[torch.Tensor]], calibration_info: Optional[dict],
           int8: Optional[dict], stages: Stages, nhwc: bool = False, precision: Optional[str] = None) -> dict:
    """Write ``model`` as ``fmt`` to ``path`` (INT8: and the fp32 file beside it, ``fp32_path``); what the
    writing tells beyond the file (ExecuTorch: ``delegation``)."""
    if fmt not in INT8_FORMATS:
        if fmt == "executorch":
            stages.begin(f"exporting {path.name}, lowered to XNNPACK")
            return dict(delegation=export_executorch(model, path, example, softmax))
        if fmt == "litert":
            stages.begin(f"converting to {path.name} with litert-torch")
            export_litert(model, path, example, softmax, nhwc=nhwc)
            return dict(operators=check_hard_activations(path, model))
        if fmt == "ncnn":
            stages.begin(f"converting to {path.name} with pnnx")
            export_ncnn(model, path, example, softmax)
            return dict(operators=layer_types(path))
        if fmt == "coreml":
            stages.begin(f"converting to {path.name} with coremltools")
            export_coreml(model, path, example, _preprocessing_of(model), precision or "fp16")
            return {}
        exporters = {"onnx": export_onnx, "torchscript": export_torchscript, "pt2": export_pt2,
                     "openvino": export_openvino}
        exporters[fmt](model, path, example, softmax)
        return {}
    if calibration is None:
        raise UsageError(f"{fmt} needs images to calibrate: give --dataset and --data-path")
    fp32_path = int8_source_path(path)
    written = dict(fp32_path=str(fp32_path))
    stages.begin(f"exporting the fp32 model it is quantised from, {fp32_path.name}")
    if fmt == "onnx-int8":
        export_onnx(model, fp32_path, example, softmax)
        stages.begin(f"quantising it to {path.name} with ONNX Runtime, calibrated on the training images")
        quantize_onnx(fp32_path, path, calibration, calibration_info)
    elif fmt == "openvino-int8":
        export_openvino(model, fp32_path, example, softmax)
        stages.begin(f"quantising it to {path.name} with NNCF, calibrated on the training images"
                     + (" (accuracy control: a minute or more)" if (int8 or {}).get("max_drop") else ""))
        quantize_openvino(fp32_path, path, calibration, calibration_info, **(int8 or {}))
    elif fmt == "litert-int8":  # quantised from the PyTorch model; compared with the fp32 file
        export_litert(model, fp32_path, example, softmax, nhwc=nhwc)
        stages.begin(f"quantising to {path.name} (PT2E, litert-torch's quantizer), calibrated on the training "
                     "images, and converting it")
        export_litert(model, path, example, softmax, nhwc=nhwc, calibration=calibration,
                      calibration_info=calibration_info)
        written["operators"] = check_hard_activations(path, model)
    else:  # quantised from the PyTorch model; the fp32 program is what its accuracy is compared with
        export_executorch(model, fp32_path, example, softmax)
        stages.begin(f"quantising to {path.name} (PT2E, XNNPACK's quantizer), calibrated on the training images, "
                     "and lowering it to XNNPACK")
        written["delegation"] = export_executorch(model, path, example, softmax, calibration, calibration_info)
    return written


def _preprocessing_of(model: nn.Module) -> dict:
    """The normalisation Core ML's image input does: the model's own preprocessing."""
    pre = getattr(model, "preprocessing", None)
    if not pre:
        raise UsageError("a Core ML image input needs the model's preprocessing (mean and std): these weights "
                         "record none")
    return pre
