"""The model a server runs: any file the project loads, in the runtime asked for, as ``batch -> probabilities``."""
from __future__ import annotations

import logging
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..data.transforms import Preprocessing
from ..errors import UsageError
from ..export.formats import TABLE, kind_of_name, runtimes

log = logging.getLogger(__name__)

RUNTIMES = ("auto", *runtimes(), "torch")  # auto: the file's own; torch: PyTorch (weights, TorchScript, pt2)
# weights served in another runtime are exported first, to the fp32 format of that runtime that runs anywhere
EXPORT_FORMATS = {row.runtime: row for row in reversed(TABLE)
                  if not row.int8 and row.runtime != "pytorch" and not row.systems}


@dataclass
class ServedModel:
    """A classifier ready to serve: ``run`` maps a normalised float32 (B, C, H, W) batch to (B, classes)
    probabilities; ``classes`` and ``preprocessing`` come from the file."""

    name: str
    runtime: str
    source: str
    classes: list[str]
    preprocessing: Preprocessing
    run: Callable[[torch.Tensor], torch.Tensor]
    precision: str = "fp32"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocessing.in_chans, self.preprocessing.crop, self.preprocessing.crop

    def describe(self) -> str:
        p = self.preprocessing
        return (f"{self.name} from {self.source} in {self.runtime} {self.precision}: {len(self.classes)} classes, "
                f"{p.in_chans}x{p.crop}x{p.crop} input (resize {p.resize}, {p.interpolation})")


def load_served_model(path: str, runtime: str = "auto", name: Optional[str] = None, threads: Optional[int] = None,
                      precision: Optional[str] = None) -> ServedModel:
    """Load ``path`` (a checkpoint or weights of any format ``mobilenetv3.load_model`` reads, or a file of any
    format of ``export.formats.TABLE`` that runs on this machine) to run in ``runtime``: ``auto`` is the file's
    own (ONNX Runtime for ``.onnx``, OpenVINO for ``.xml``, ExecuTorch for ``.pte``, LiteRT for ``.tflite``, ncnn
    for ``.ncnn.param``, PyTorch for weights, TorchScript and ``.pt2``); another runtime with weights exports them
    first (verified against PyTorch). ``threads`` caps the runtime's threads; ``precision`` (``fp32``, ``bf16``)
    is OpenVINO's."""
    from ..export import exported_kind

    path = Path(path)
    check_runtime(path, runtime)
    if exported_kind(path) is not None:  # a TorchScript .pt too, told by its content
        return _from_exported(path, path, None if runtime in ("auto", "torch") else runtime, name, threads,
                              precision)
    from ..export import check_pytorch_options
    from ..weights import load_model

    model = load_model(path)
    if runtime in EXPORT_FORMATS:
        return _exported_first(model, path, runtime, name or model.model_name, threads, precision)
    check_pytorch_options(None, precision)
    if threads:
        torch.set_num_threads(threads)

    @torch.inference_mode()
    def run(images: torch.Tensor) -> torch.Tensor:
        return model(images).float().softmax(dim=1)

    return ServedModel(name or model.model_name, "torch", str(path), _class_names(model.classes, model.num_classes),
                       Preprocessing.from_dict(model.preprocessing), run)


def check_runtime(path: Path, runtime: str) -> None:
    """``runtime`` can serve ``path`` on this machine (told by its suffix, without reading it); ``UsageError``
    otherwise."""
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    row = kind_of_name(path.name)
    if row is None and runtime not in ("auto", "torch", *EXPORT_FORMATS):
        raise UsageError(f"--runtime {runtime} does not run on {platform.system()}: serve {path} with --runtime "
                         f"{', '.join(('torch', *EXPORT_FORMATS))}")
    if row is None:
        return
    if not row.runs_here():
        raise UsageError(f"{path} is {row.what}: it runs only on {row.systems_named()}, not on {platform.system()}")
    if runtime == "torch" and row.runtime != "pytorch":
        raise UsageError(f"{path} is an exported file: serve it with --runtime {row.runtime}")
    served = ["torch" if each == "pytorch" else each for each in row.runtimes]
    if runtime not in ("auto", *served):
        raise UsageError(f"{path} is {row.what}: serve it with --runtime {' or '.join(served)} (or auto)")


def _from_exported(path: Path, source: Path, runtime: Optional[str], name: Optional[str], threads: Optional[int],
                   precision: Optional[str]) -> ServedModel:
    from ..export import open_exported

    module = open_exported(path, runtime=runtime, precision=precision, threads=threads)
    if not module.preprocessing:
        raise UsageError(f"{source} carries no preprocessing metadata (export it with `mobilenetv3 export`)")

    def run(images: torch.Tensor) -> torch.Tensor:
        outputs = module(images)
        return outputs if module.softmax else outputs.softmax(dim=1)

    return ServedModel(name or module.model_name, module.runtime, str(source),
                       _class_names(module.classes, module.num_classes),
                       Preprocessing.from_dict(module.preprocessing), run, module.precision)


def _exported_first(model: torch.nn.Module, source: Path, runtime: str, name: str, threads: Optional[int],
                    precision: Optional[str]) -> ServedModel:
    """Weights served by ONNX Runtime or OpenVINO: exported (and checked against PyTorch) into a temporary file."""
    from ..export import export_verified

    fmt, suffix = EXPORT_FORMATS[runtime].name, EXPORT_FORMATS[runtime].suffix
    preprocessing = Preprocessing.from_dict(model.preprocessing)
    example = torch.zeros(1, preprocessing.in_chans, preprocessing.crop, preprocessing.crop)
    log.info("exporting %s to %s for %s", source, fmt, runtime)
    with tempfile.TemporaryDirectory(prefix="mobilenetv3-serve-") as folder:
        exported = Path(folder) / f"model{suffix}"
        export_verified(model, fmt, exported, example)
        return _from_exported(exported, source, runtime, name, threads, precision)


def _class_names(classes: Optional[list[str]], count: int) -> list[str]:
    return list(classes) if classes else [str(index) for index in range(count)]
