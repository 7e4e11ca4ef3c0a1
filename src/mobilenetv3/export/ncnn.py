"""ncnn: the ``.ncnn.param`` (graph, text) and ``.ncnn.bin`` (weights) converted with pnnx from the traced model,
and ``NcnnModule``, the pair run by the ``ncnn`` Python package where a model is expected.

pnnx keeps hard-swish and hard-sigmoid as ncnn's own ``HardSwish`` and ``HardSigmoid`` layers and folds batch
norm into the convolutions. ncnn runs one image per extractor: ``NcnnModule`` runs a batch image by image. Its
weights are written in fp32; ``precision="fp16"`` runs them as ncnn does by default (fp16 storage and arithmetic
where the CPU has them: F16C on x86), ``fp32`` turns those off.

ncnn's format has no place for metadata: the model card (``describe``) is ``<name>.ncnn.json`` beside the pair.
INT8 needs ncnn's ``ncnn2table`` and ``ncnn2int8``, C++ tools that the ``ncnn`` and ``pnnx`` wheels do not ship.

ncnn is an extra (``pip install 'mobilenetv3[ncnn]'``): without it every entry point here is one line.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..files import atomic_output
from .common import WithSoftmax, describe

EXTRA_MISSING = "ncnn needs the ncnn extra: pip install 'mobilenetv3[ncnn]'"
SUFFIX = ".ncnn.param"
PRECISIONS = ("fp32", "fp16")  # fp16: ncnn's default fp16 storage and arithmetic
INPUT, OUTPUT = "in0", "out0"  # pnnx's blob names
_MAGIC = "7767517"  # the first line of every ncnn .param


def import_ncnn():
    """The ``ncnn`` module, or the one line that says which extra installs it."""
    try:
        import ncnn
    except ImportError:
        raise UsageError(EXTRA_MISSING) from None
    return ncnn


def import_pnnx():
    """The ``pnnx`` module (its converter binary), or the one line that says which extra installs it."""
    import_ncnn()
    try:
        import pnnx
    except ImportError:
        raise UsageError(EXTRA_MISSING) from None
    return pnnx


def companions(path: Path) -> tuple[Path, Path]:
    """The weights and the card beside ``X.ncnn.param``: ``X.ncnn.bin`` and ``X.ncnn.json``."""
    stem = Path(path).name[:-len(SUFFIX)] if Path(path).name.endswith(SUFFIX) else Path(path).stem
    return path.with_name(stem + ".ncnn.bin"), path.with_name(stem + ".ncnn.json")


def check_param_path(path: Path) -> None:
    if not Path(path).name.endswith(SUFFIX):
        raise UsageError(f"an ncnn model is an .ncnn.param file (and its .ncnn.bin): {path} does not end in {SUFFIX}")


# ------------------------------------------------------------------------------------------ export
def export_ncnn(model: nn.Module, path: Path, example: torch.Tensor, softmax: bool = False) -> Path:
    """``path`` (``X.ncnn.param``), its weights ``X.ncnn.bin`` (fp32) and card ``X.ncnn.json``: the model traced
    at ``example``'s image size and converted by pnnx (one image in, ``in0`` (C, H, W); logits or, with
    ``softmax``, probabilities out, ``out0``). Any image size runs; the weights and the card are renamed into
    place before the graph, so that a ``.param`` never names missing weights."""
    pnnx = import_pnnx()
    check_param_path(path)
    weights, card = companions(path)
    net = (WithSoftmax(model) if softmax else model).eval()
    with tempfile.TemporaryDirectory(prefix="pnnx.") as folder:
        work = Path(folder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated
            torch.jit.trace(net, example[:1]).save(str(work / "model.pt"))
        shape = ",".join(str(s) for s in (1, *example.shape[1:]))
        outputs = {name: work / f"model.{name}" for name in ("ncnnparam", "ncnnbin", "pnnxparam", "pnnxbin",
                                                              "pnnxpy", "pnnxonnx", "ncnnpy")}
        done = subprocess.run([pnnx.EXEC_PATH, str(work / "model.pt"), f"inputshape=[{shape}]f32", "fp16=0",
                               "device=cpu", *(f"{key}={value}" for key, value in outputs.items())],
                              capture_output=True, text=True, cwd=folder)
        if done.returncode != 0 or not outputs["ncnnparam"].is_file():
            reason = " ".join((done.stderr or done.stdout).strip().splitlines()[-1:])[:200]
            raise RuntimeError(f"pnnx could not convert the model (exit code {done.returncode}: {reason})")
        with atomic_output(weights) as tmp:
            tmp.write_bytes(outputs["ncnnbin"].read_bytes())
        with atomic_output(card) as tmp:
            tmp.write_text(json.dumps(describe(model, softmax)))
        with atomic_output(path) as tmp:
            tmp.write_text(outputs["ncnnparam"].read_text())
    return path


def layer_types(path: Path) -> dict:
    """``{"Convolution": 23, "HardSwish": 19, ...}``: the layers of an ``.ncnn.param`` by type."""
    counts: dict = {}
    for line in Path(path).read_text().splitlines()[2:]:
        if line.strip():
            counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    return counts


# ------------------------------------------------------------------------------------------ running
def _read_param(path: Path) -> list[str]:
    """The lines of an ``.ncnn.param``, checked before ncnn reads it (ncnn answers a broken file with a code,
    and some broken files with a crash): the magic number, the layer and blob counts, one line per layer."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not an ncnn .param file ({type(err).__name__})") from None
    counts = lines[1].split() if len(lines) > 1 else []
    if not lines or lines[0].strip() != _MAGIC or len(counts) != 2 or not all(c.isdigit() for c in counts):
        raise UsageError(f"{path}: not an ncnn .param file (no '{_MAGIC}' magic number and layer counts)")
    if len(lines) - 2 != int(counts[0]):
        raise UsageError(f"{path}: a damaged ncnn .param file ({len(lines) - 2} layers of {counts[0]})")
    return lines


def _num_classes(lines: list[str]) -> Optional[int]:
    """The output size of the last fully connected layer (``InnerProduct``'s ``0=``)."""
    for line in reversed(lines[2:]):
        fields = line.split()
        if fields[0] == "InnerProduct":
            return next((int(f[2:]) for f in fields if f.startswith("0=")), None)
    return None


class NcnnModule(nn.Module):
    """An ``.ncnn.param`` and its ``.ncnn.bin`` run by ncnn on the CPU, image by image, usable where a model is
    expected (``engine.evaluate``, predict). ``precision``: ``fp32``, or ``fp16``, ncnn's default storage and
    arithmetic; ``threads``: ncnn's threads (default: its own choice, the big cores)."""

    runtime = "ncnn"

    def __init__(self, path, precision: str = "fp32", threads: Optional[int] = None):
        super().__init__()
        ncnn = import_ncnn()
        self.path = Path(path)
        if precision not in PRECISIONS:
            raise UsageError(f"ncnn runs in {' or '.join(PRECISIONS)}, not {precision!r}")
        check_param_path(self.path)
        lines = _read_param(self.path)
        weights, card = companions(self.path)
        if not weights.is_file():
            raise UsageError(f"{self.path}: its weights {weights.name} are not beside it")
        self.net = ncnn.Net()
        if precision == "fp32":
            opt = self.net.opt
            opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = False
        if threads:
            self.net.opt.num_threads = int(threads)
        if self.net.load_param(str(self.path)) != 0:
            raise UsageError(f"{self.path}: ncnn cannot read its layers (a damaged or unsupported .param)")
        if self.net.load_model(str(weights)) != 0:
            raise UsageError(f"{self.path}: ncnn cannot read its weights {weights.name} (damaged or not this "
                             "graph's)")
        info = _read_card(card)
        kwargs = info.get("model_kwargs", {})
        self.in_chans = kwargs.get("in_chans", (info.get("preprocessing") or {}).get("in_chans", 3))
        self.num_classes = _num_classes(lines) or kwargs.get("num_classes")
        self.classes, self.preprocessing = info.get("classes"), info.get("preprocessing")
        self.model_name, self.model_kwargs = info.get("model_name", self.path.name[:-len(SUFFIX)]), kwargs
        self.softmax = bool(info.get("softmax", False))
        self.dataset = info.get("dataset")  # the data it was trained on (None: not recorded)
        self.quantized, self.precision = False, precision
        self._ncnn = ncnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        images = x.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(np.stack([self._run(image) for image in images]))

    def _run(self, image: np.ndarray) -> np.ndarray:  # (C, H, W) -> (classes,)
        extractor = self.net.create_extractor()
        extractor.input(INPUT, self._ncnn.Mat(np.ascontiguousarray(image)).clone())  # ncnn's own copy
        status, output = extractor.extract(OUTPUT)
        if status != 0:
            raise RuntimeError(f"{self.path}: ncnn failed on an image of shape {image.shape} (code {status})")
        return np.array(output).reshape(-1)


def _read_card(path: Path) -> dict:
    """The card beside the pair (``{}`` without one: the graph still runs)."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: not the model card of an ncnn export ({type(err).__name__})") from None
