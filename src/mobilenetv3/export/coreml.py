"""Core ML: an ``.mlpackage`` (ML Program, fp16 or fp32) converted with coremltools from the traced model, with
an image input that does the model's normalisation, the class labels and the model card; ``spec_summary``,
what can be checked of it without Apple's framework; ``CoreMlModule``, the package run by Core ML (macOS only).

The input is an image of the crop size (``ImageType``, RGB or grayscale): Core ML computes ``scale * pixel +
bias``, one scale for every channel and a bias per channel, so ``scale = 1 / (255 * std[0])`` and ``bias_c =
-mean_c / std[0]``; a per-channel std that differs from ``std[0]`` is a constant per-channel multiply at the
start of the network. The outputs are a classifier's: ``classLabel`` (the top class's name) and
``classLabel_probs`` (name -> probability, a softmax over the logits). The model card (``describe``) is the
package's user-defined metadata ``METADATA_KEY``.

Core ML has no hard-swish operator: coremltools writes ``hardswish(x)`` as ``x * sigmoid_hard(x)`` with a
``thresholded_relu`` in front (three operators, none of them the ``relu6(x + 3) / 6`` chain), and hard-sigmoid
as its own ``sigmoid_hard``. Batch norm is folded into the convolutions (no ``batch_norm`` operator in fp16:
coremltools issue 2470). Predictions need Core ML itself, which runs only on macOS.

coremltools is an extra (``pip install 'mobilenetv3[coreml]'``): without it every entry point here is one line.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..files import temporary_path
from .common import METADATA_KEY, WithSoftmax, describe

EXTRA_MISSING = "Core ML needs the coreml extra: pip install 'mobilenetv3[coreml]'"
SUFFIX = ".mlpackage"
PRECISIONS = ("fp16", "fp32")
INPUT, LABEL, PROBABILITIES = "image", "classLabel", "classLabel_probs"
MINIMUM_TARGET = "iOS16"  # ML Program with fp16 inputs to every operator; macOS 13


def import_coremltools():
    """``coremltools``, or the one line that says which extra installs it. Its import notes (the native
    framework is missing off macOS; scikit-learn and torch versions it has not tested) are kept back."""
    with _quiet():
        try:
            import coremltools
        except ImportError:
            raise UsageError(EXTRA_MISSING) from None
    return coremltools


@contextlib.contextmanager
def _quiet():
    """coremltools' warnings and its progress bars (tqdm, on ``sys.stderr``) off the terminal while it imports
    and converts."""
    log = logging.getLogger("coremltools")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def check_package_path(path: Path) -> None:
    if Path(path).suffix != SUFFIX:
        raise UsageError(f"a Core ML model is an .mlpackage folder: {path} does not end in .mlpackage")


class _Normalised(nn.Module):
    """The network after the image input's ``scale * pixel + bias``: channel ``c`` multiplied by
    ``std[0] / std[c]`` (omitted where every channel has the same std) and, for a classifier, a softmax."""

    def __init__(self, model: nn.Module, std: tuple):
        super().__init__()
        self.model = WithSoftmax(model)
        ratio = torch.tensor([std[0] / s for s in std]).view(1, -1, 1, 1)
        self.register_buffer("ratio", ratio if not torch.allclose(ratio, torch.ones_like(ratio)) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x if self.ratio is None else x * self.ratio)


# ------------------------------------------------------------------------------------------ export
def export_coreml(model: nn.Module, path: Path, example: torch.Tensor, preprocessing: dict,
                  precision: str = "fp16") -> Path:
    """An ML Program ``.mlpackage`` at ``path`` (a folder) computing in ``precision`` (``fp16``: Core ML's
    default and the Neural Engine's; ``fp32``), traced at one image of ``example``'s size; input ``image`` with
    ``preprocessing``'s normalisation; a classifier's outputs (``classLabel``, ``classLabel_probs``) with
    ``model.classes`` as labels (``0`` .. ``N-1`` without them). Written to a temporary folder and renamed."""
    ct = import_coremltools()
    check_package_path(path)
    if precision not in PRECISIONS:
        raise UsageError(f"Core ML computes in {' or '.join(PRECISIONS)}, not {precision!r}")
    mean, std = tuple(preprocessing["mean"]), tuple(preprocessing["std"])
    sample = example[:1]
    labels = [str(c) for c in (getattr(model, "classes", None) or range(model.num_classes))]
    layout = ct.colorlayout.GRAYSCALE if sample.shape[1] == 1 else ct.colorlayout.RGB
    image = ct.ImageType(name=INPUT, shape=tuple(sample.shape), scale=1.0 / (255.0 * std[0]),
                         bias=[-m / std[0] for m in mean] if len(mean) > 1 else -mean[0] / std[0],
                         color_layout=layout)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(_Normalised(model.eval(), std).eval(), sample)
        mlmodel = ct.convert(traced, inputs=[image], classifier_config=ct.ClassifierConfig(labels),
                             convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, MINIMUM_TARGET),
                             compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    mlmodel.short_description = f"{model.model_name} image classifier ({len(labels)} classes)"
    mlmodel.user_defined_metadata[METADATA_KEY] = json.dumps(describe(model, softmax=True))
    tmp = temporary_path(path)
    try:
        with _quiet():
            mlmodel.save(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# ------------------------------------------------------------------------------------------ checking
def _load(path: Path):
    """The package as coremltools reads it, without compiling it (which needs macOS)."""
    ct = import_coremltools()
    path = Path(path)
    if not (path / "Manifest.json").is_file():
        raise UsageError(f"{path}: not a Core ML package (no Manifest.json in it)")
    try:
        with _quiet():
            return ct.models.MLModel(str(path), skip_model_load=True)
    except Exception as err:  # noqa: BLE001 - coremltools and protobuf raise their own types
        raise UsageError(f"{path}: not a readable Core ML package ({' '.join(str(err).split())[:200]})") from None


def spec_summary(path: Path) -> dict:
    """What the package says about itself, read without Core ML: its kind (``mlProgram``), the image input
    (name, size, colour space, ``scale`` and ``bias``), the outputs, the class labels, the operators of the
    program by type (``const`` left out), the precision they compute in (``fp16`` when any computes in fp16)
    and the model card."""
    spec = _load(path).get_spec()
    image = spec.description.input[0]
    block = _block(spec)
    operations = [op for op in block.operations if op.type != "const"]
    ops: dict = {}
    for op in operations:
        ops[op.type] = ops.get(op.type, 0) + 1
    fp16 = any(output.type.tensorType.dataType == _FLOAT16 for op in operations for output in op.outputs)
    card = spec.description.metadata.userDefined.get(METADATA_KEY)
    size = image.type.imageType
    return dict(kind=spec.WhichOneof("Type"),
                input=dict(name=image.name, kind=image.type.WhichOneof("Type"), width=size.width,
                           height=size.height, color=size.ColorSpace.Name(size.colorSpace), **_normalisation(block)),
                outputs=[output.name for output in spec.description.output], classes=_labels(block), ops=ops,
                precision="fp16" if fp16 else "fp32", card=json.loads(card) if card else None)


_FLOAT16 = 10  # MIL's DataType.FLOAT16


def _block(spec):
    """The operations of the ML Program's ``main`` function."""
    main = spec.mlProgram.functions["main"]
    return main.block_specializations[main.opset]


def _labels(block) -> list[str]:
    """The class labels: the ``classes`` the program's ``classify`` operator is given."""
    for op in block.operations:
        if op.type == "classify":
            values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
            return [value.immediateValue.tensor.strings.values[0] for value in values]
    return []


def _normalisation(block) -> dict:
    """``scale`` and ``bias`` of the image input, as the program applies them: the constants of the ``mul`` and
    the ``add`` that take the input first."""
    consts = {op.outputs[0].name: op.attributes["val"].immediateValue.tensor for op in block.operations
              if op.type == "const" and op.attributes["val"].HasField("immediateValue")}
    found: dict = {}
    for op in block.operations:
        if op.type in ("mul", "add") and op.type not in found and \
                op.inputs["x"].arguments[0].name.startswith(INPUT):
            value = consts.get(op.inputs["y"].arguments[0].name)
            found[op.type] = [float(v) for v in value.floats.values] if value is not None else []
    return dict(scale=(found.get("mul") or [float("nan")])[0], bias=found.get("add", []))


def verify_coreml(path: Path, model: nn.Module, precision: str) -> dict:
    """``spec_summary`` of the written package, checked against ``model`` and the settings it was exported with:
    an ML Program in ``precision``; one image input of the model's channels whose ``scale`` and ``bias`` give the
    model's normalisation (``(pixel / 255 - mean) / std``, with the per-channel ratio the program applies, on
    every pixel value 0..255 within 1e-5); the classifier's outputs and labels; one ``sigmoid_hard`` per hard-swish
    and hard-sigmoid and no ``batch_norm``, ``clip`` or ``relu6``. A ``RunError`` names what differs; the summary
    is returned."""
    from ..errors import RunError

    summary = spec_summary(path)
    labels = [str(c) for c in (getattr(model, "classes", None) or range(model.num_classes))]
    hard = sum(isinstance(m, (nn.Hardswish, nn.Hardsigmoid)) for m in model.modules())
    ops, image = summary["ops"], summary["input"]
    problems = []
    if summary["kind"] != "mlProgram" or summary["precision"] != precision:
        problems.append(f"a {summary['kind']} in {summary['precision']}, not an mlProgram in {precision}")
    if image["kind"] != "imageType" or (image["color"] == "GRAYSCALE") != (model.in_chans == 1):
        problems.append(f"input {image['kind']} {image['color']} for a {model.in_chans}-channel model")
    worst = _normalisation_error(image["scale"], image["bias"], model.preprocessing)
    if not worst <= 1e-5:
        problems.append(f"its image input normalises pixels {worst:.2g} away from the model's preprocessing")
    if summary["outputs"] != [LABEL, PROBABILITIES] or summary["classes"] != labels:
        problems.append(f"outputs {summary['outputs']} with labels {summary['classes'][:5]}..., not the classifier's")
    if ops.get("sigmoid_hard", 0) != hard:
        problems.append(f"{ops.get('sigmoid_hard', 0)} sigmoid_hard operators for {hard} hard activations")
    problems += [f"{ops[name]} {name} operators" for name in ("batch_norm", "clip", "relu6") if name in ops]
    if problems:
        raise RunError(f"{path}: {'; '.join(problems)}")
    return summary


def _normalisation_error(scale: float, bias: list, preprocessing: dict) -> float:
    """The largest difference, over pixel values 0..255 and channels, between what the image input and the
    program's per-channel ratio compute (``(scale * pixel + bias_c) * std[0] / std[c]``) and the model's
    normalisation ``(pixel / 255 - mean_c) / std_c``."""
    mean, std = np.array(preprocessing["mean"]), np.array(preprocessing["std"])
    pixels = np.arange(256.0)[:, None]
    given = (scale * pixels + np.array(bias)[None]) * (std[0] / std)[None]
    wanted = (pixels / 255.0 - mean[None]) / std[None]
    return float(np.abs(given - wanted).max()) if len(bias) == len(mean) else float("inf")


def open_coreml(path) -> "CoreMlModule":
    """``CoreMlModule`` of the package (macOS); elsewhere the one line that says Core ML runs only there."""
    return CoreMlModule(path)


# ------------------------------------------------------------------------------------------ running
class CoreMlModule(nn.Module):
    """An ``.mlpackage`` run by Core ML (macOS only), usable where a model is expected: it takes (N, C, H, W)
    images normalised as the model's preprocessing does, turns each back into the pixels the package's image
    input takes, and returns the probabilities in class order (``softmax`` is True)."""

    runtime = "coreml"

    def __init__(self, path):
        super().__init__()
        if platform.system() != "Darwin":
            raise UsageError(f"{path}: Core ML runs only on macOS; on this machine, check the package with "
                             "mobilenetv3.export.coreml.spec_summary")
        self.path = Path(path)
        check_package_path(self.path)
        _load(self.path)  # a package that is not one: one line
        ct = import_coremltools()
        with _quiet():
            self.mlmodel = ct.models.MLModel(str(self.path))
        summary = spec_summary(self.path)
        info = summary["card"] or {}
        self.labels = summary["classes"]
        self.in_chans = 1 if summary["input"]["color"] == "GRAYSCALE" else 3
        self.num_classes = len(self.labels)
        self.classes, self.preprocessing = info.get("classes"), info.get("preprocessing")
        self.model_name, self.model_kwargs = info.get("model_name", self.path.stem), info.get("model_kwargs", {})
        self.softmax, self.dataset = True, info.get("dataset")
        self.quantized, self.precision = False, summary["precision"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) normalised -> (N, classes) probabilities
        from PIL import Image

        mean = torch.tensor(self.preprocessing["mean"]).view(-1, 1, 1)
        std = torch.tensor(self.preprocessing["std"]).view(-1, 1, 1)
        rows = []
        for image in x.detach().float().cpu():
            pixels = ((image * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
            picture = Image.fromarray(pixels[0].numpy() if self.in_chans == 1 else pixels.permute(1, 2, 0).numpy())
            probabilities = self.mlmodel.predict({INPUT: picture})[PROBABILITIES]
            rows.append([probabilities[label] for label in self.labels])
        return torch.tensor(rows)
