"""The model a server runs: any file the project loads, in the runtime asked for, as ``batch -> probabilities``."""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..data.transforms import Preprocessing
from ..errors import UsageError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnxruntime", "torch")


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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocessing.in_chans, self.preprocessing.crop, self.preprocessing.crop

    def describe(self) -> str:
        p = self.preprocessing
        return (f"{self.name} from {self.source} in {self.runtime}: {len(self.classes)} classes, "
                f"{p.in_chans}x{p.crop}x{p.crop} input (resize {p.resize}, {p.interpolation})")


def load_served_model(path: str, runtime: str = "auto", name: Optional[str] = None,
                      threads: Optional[int] = None) -> ServedModel:
    """Load ``path`` (a checkpoint or weights of any format ``mobilenetv3.load_model`` reads, or an ONNX file)
    to run in ``runtime``: ``auto`` is the file's own (ONNX Runtime for ``.onnx``, PyTorch for weights);
    ``onnxruntime`` with weights exports them to ONNX first. ``threads`` caps the runtime's threads."""
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    path = Path(path)
    if path.suffix == ".onnx":
        if runtime == "torch":
            raise UsageError(f"{path} is an ONNX file: serve it with --runtime onnxruntime (or auto)")
        return _from_onnx(path, path, name, threads)
    from ..weights import load_model

    model = load_model(path)
    if runtime == "onnxruntime":
        return _exported_to_onnx(model, path, name or model.model_name, threads)
    if threads:
        torch.set_num_threads(threads)
    classes = _class_names(model.classes, model.num_classes)

    @torch.inference_mode()
    def run(images: torch.Tensor) -> torch.Tensor:
        return model(images).float().softmax(dim=1)

    return ServedModel(name or model.model_name, "torch", str(path), classes,
                       Preprocessing.from_dict(model.preprocessing), run)


def _from_onnx(onnx_path: Path, source: Path, name: Optional[str], threads: Optional[int]) -> ServedModel:
    from ..export import OnnxModule

    module = OnnxModule(onnx_path, threads=threads)
    if not module.preprocessing:
        raise UsageError(f"{source} carries no preprocessing metadata (export it with `mobilenetv3 export`)")

    def run(images: torch.Tensor) -> torch.Tensor:
        outputs = module(images)
        return outputs if module.softmax else outputs.softmax(dim=1)

    return ServedModel(name or module.model_name, "onnxruntime", str(source),
                       _class_names(module.classes, module.num_classes),
                       Preprocessing.from_dict(module.preprocessing), run)


def _exported_to_onnx(model: torch.nn.Module, source: Path, name: str, threads: Optional[int]) -> ServedModel:
    """Weights served by ONNX Runtime: exported (and checked against PyTorch) into a temporary file first."""
    from ..export import export_verified

    preprocessing = Preprocessing.from_dict(model.preprocessing)
    example = torch.zeros(1, preprocessing.in_chans, preprocessing.crop, preprocessing.crop)
    log.info("exporting %s to ONNX for ONNX Runtime", source)
    with tempfile.TemporaryDirectory(prefix="mobilenetv3-serve-") as folder:
        onnx_path = Path(folder) / "model.onnx"
        export_verified(model, "onnx", onnx_path, example)
        return _from_onnx(onnx_path, source, name, threads)


def _class_names(classes: Optional[list[str]], count: int) -> list[str]:
    return list(classes) if classes else [str(index) for index in range(count)]
