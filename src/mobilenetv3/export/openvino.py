"""OpenVINO: the IR (``.xml`` + ``.bin``) converted from the PyTorch model, INT8 by NNCF post-training
quantisation, and ``OpenVinoModule``, an IR (or an ONNX file) run by OpenVINO where a model is expected.

The IR is converted from the PyTorch model directly, not from our ONNX export: measured on a MobileNetV3-Small
whose logits reach about 70, the max |difference| to PyTorch is 6.3e-5 direct against 7.6e-5 through ONNX on
the export check's inputs (1.3e-4 against 1.6e-4 on a harder set), and the direct IR keeps the module names
(``__module.blocks.3.se.fc1/...``) that INT8's ``ignored_scope`` selects layers by. The model card
(``describe``) is the IR's runtime info under ``METADATA_KEY``, as ONNX has it in its metadata.

OpenVINO is an extra (``pip install 'mobilenetv3[openvino]'``): without it every entry point here is one line.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from ..errors import UsageError
from ..files import atomic_output
from .common import CALIBRATION_KEY, INT8_KEY, METADATA_KEY, WithSoftmax, describe

EXTRA_MISSING = "OpenVINO needs the openvino extra: pip install 'mobilenetv3[openvino]'"
PRECISIONS = ("fp32", "bf16")  # what OpenVINO runs floating-point layers in (INFERENCE_PRECISION_HINT)
HINTS = ("latency", "throughput")
# Layer kinds INT8 can keep in fp32, as patterns of the IR's node names (``__module.<module path>/<op>``;
# ``__module.model.`` under --softmax's wrapper). A convolution whose batch norm the conversion folded into it is
# named ``Multiply_<n>``, not after its module: those (stem, expand, dw, project, final_conv) are not selected
# by a pattern; accuracy control (``max_drop``) picks layers by node name and can keep them.
KEEP_FP32 = {
    "se": r".*\bblocks\.\d+\.se[./].*",  # squeeze-excite: pooling, two 1x1 convolutions, hard-sigmoid gate, product
    "classifier": r".*\bclassifier/.*",  # the last Linear
    "head": r".*\bhead_fc/.*",  # the Linear before it (960 -> 1280 in Large)
}
# Default: SE blocks and classifier in fp32. Both run on pooled (N, C, 1, 1) vectors, a few percent of
# the MACs, so INT8 would buy almost no time there. Their rounding is not averaged out over spatial positions:
# a gate's error scales every channel of its block, and the classifier's error lands directly on the logits.
# The head Linear (mostly weights) is quantised. Measure accuracy on a trained model before changing this.
DEFAULT_KEEP_FP32 = ("se", "classifier")
# NNCF's overflow fix: the weights it quantises to 7 bits instead of 8. On CPUs without VNNI (AVX2, AVX-512
# without VNNI) oneDNN's INT8 kernels multiply u8 activations by s8 weights with VPMADDUBSW, whose int16 sums
# saturate with 8-bit weights; "enable" (every layer) lets NNCF's bias correction see the weights that run.
# Measured on Fashion-MNIST, AVX2 without VNNI, the full test set: top-1 agreement with fp32 98.5 -> 99.4%
# (Small, 91.8%) and 99.0 -> 99.4% (Large, 93.3%) against NNCF's own "first-layer" (benchmarks/int8_accuracy.py).
OVERFLOW_FIX = ("enable", "first-layer", "disable")
# How activation ranges are set from the calibration images: "histogram", ranges that minimise the quantisation
# error of each tensor's histogram, or "mean-minmax", the mean over images of each image's min and max (NNCF's
# own default). With the overflow fix, "histogram" took agreement to 99.6% (Small) and 99.55% (Large).
ACTIVATION_RANGES = ("histogram", "mean-minmax")


def import_openvino():
    """The ``openvino`` module, or the one line that says which extra installs it."""
    try:
        import openvino
    except ImportError:
        raise UsageError(EXTRA_MISSING) from None
    return openvino


def _import_nncf():
    """``nncf``, or the one line that says which extra installs it."""
    import_openvino()
    try:
        with _quiet_torch_extensions():
            import nncf
    except ImportError:
        raise UsageError(EXTRA_MISSING) from None
    return nncf


@contextlib.contextmanager
def _quiet_torch_extensions():
    """torch's "No CUDA runtime is found" warning kept back: ``nncf.torch`` imports torch's C++ extension helper,
    which logs it on every CPU-only machine, and NNCF's ``quantize`` and OpenVINO's ``convert_model`` (once
    ``nncf`` is loaded) import ``nncf.torch``."""
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        extension_log.setLevel(level)


# ------------------------------------------------------------------------------------------ export
def export_openvino(model: nn.Module, path: Path, example: torch.Tensor, softmax: bool = False) -> Path:
    """fp32 IR with a dynamic batch (input ``input`` (N, C, H, W), output ``logits`` or ``probs``); ``path`` is
    the ``.xml``, its weights go beside it as the ``.bin`` of the same name."""
    ov = import_openvino()
    _check_xml(path)
    net = WithSoftmax(model) if softmax else model
    with warnings.catch_warnings(), _quiet_torch_extensions():  # it imports nncf.torch when nncf is loaded
        warnings.simplefilter("ignore")  # torch.jit.trace (which convert_model uses) is deprecated
        ov_model = ov.convert_model(net.eval(), example_input=example,
                                    input=[ov.PartialShape([-1, *example.shape[1:]])])
    ov_model.inputs[0].get_tensor().set_names({"input"})
    ov_model.outputs[0].get_tensor().set_names({"probs" if softmax else "logits"})
    ov_model.set_rt_info(json.dumps(describe(model, softmax)), METADATA_KEY)
    _save(ov_model, path)
    return path


def _check_xml(path: Path) -> None:
    if path.suffix != ".xml":
        raise UsageError(f"an OpenVINO IR is an .xml file (and its .bin): {path} does not end in .xml")


def _save(ov_model, path: Path) -> None:
    """``path`` and its ``.bin``, each written to a temporary file and renamed: the ``.bin`` first, so that an
    ``.xml`` never names weights that are not there. ``save_model`` names the ``.bin`` after the ``.xml``,
    which is the temporary name ``atomic_output`` gives the ``.bin``."""
    ov = import_openvino()
    with atomic_output(path) as xml, atomic_output(path.with_suffix(".bin")) as weights:
        assert weights == xml.with_suffix(".bin"), (weights, xml)
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)  # the default halves the weights to fp16

DEFAULT_VALIDATION_IMAGES = 2000  # accuracy control: 0.05% of them is one answer


@dataclass(frozen=True)
class Int8Settings:
    """How OpenVINO INT8 quantises, checked when made (a value it does not take is one ``UsageError``):
    ``keep_fp32``, the layer kinds left in fp32 (keys of ``KEEP_FP32``); ``overflow_fix`` (``OVERFLOW_FIX``);
    ``activation_ranges`` (``ACTIVATION_RANGES``); ``max_drop``, accuracy control (``None``: off): layers put
    back in fp32 until INT8 gives fp32's top-1 answer on at least ``1 - max_drop`` of ``validation_images``
    images apart from the calibration images (``validation``, what they are: ``validation_info``)."""

    keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32
    overflow_fix: str = "enable"
    activation_ranges: str = "histogram"
    max_drop: Optional[float] = None
    validation_images: Optional[int] = None  # None: DEFAULT_VALIDATION_IMAGES with accuracy control
    validation: Sequence[torch.Tensor] = ()
    validation_info: Optional[dict] = None

    def __post_init__(self):
        object.__setattr__(self, "keep_fp32", tuple(self.keep_fp32))
        check_int8_settings(self.keep_fp32, self.overflow_fix, self.activation_ranges, self.max_drop)
        if self.validation_images is not None and self.max_drop is None:
            raise UsageError("--int8-validation-images is a setting of accuracy control: give --int8-max-drop too")
        if self.validation_images is not None and self.validation_images < 1:
            raise UsageError(f"--int8-validation-images must be at least 1, got {self.validation_images}")

    @property
    def images_to_validate(self) -> int:
        """Training images accuracy control validates on (0 without it)."""
        return 0 if self.max_drop is None else self.validation_images or DEFAULT_VALIDATION_IMAGES


def quantize_openvino(fp32_path: Path, path: Path, calibration: Iterable[torch.Tensor],
                      calibration_info: Optional[dict] = None, keep_fp32: Sequence[str] = DEFAULT_KEEP_FP32, *,
                      overflow_fix: str = "enable", activation_ranges: str = "histogram",
                      max_drop: Optional[float] = None, validation: Iterable[torch.Tensor] = (),
                      validation_info: Optional[dict] = None, settings: Optional[Int8Settings] = None) -> Path:
    """INT8 IR from the fp32 IR at ``fp32_path``: NNCF post-training quantisation (mixed preset: symmetric
    weights, asymmetric activations; full bias correction) calibrated on every image of ``calibration``, with
    the layer kinds ``keep_fp32`` (keys of ``KEEP_FP32``) left in fp32, ``overflow_fix`` (``OVERFLOW_FIX``) and
    activation ranges set by ``activation_ranges`` (``ACTIVATION_RANGES``).

    With ``max_drop``, NNCF's accuracy control: it then puts back in fp32, one at a time, the layers that change
    the most answers, until INT8's top-1 answer is fp32's on at least ``1 - max_drop`` of the ``validation``
    images (which must not be the images INT8 is scored on). The IR keeps the fp32 IR's card and records
    ``calibration_info`` under ``CALIBRATION_KEY`` and how it was quantised (the settings, the layers left in
    fp32, the accuracy control's ``validation_info`` and the agreement reached) under ``INT8_KEY``. ``settings``
    (an ``Int8Settings``, checked when it was made) stands for the keyword arguments after ``calibration_info``."""
    settings = settings or Int8Settings(keep_fp32, overflow_fix, activation_ranges, max_drop,
                                        validation=validation, validation_info=validation_info)
    keep_fp32, overflow_fix, activation_ranges = settings.keep_fp32, settings.overflow_fix, settings.activation_ranges
    max_drop, validation, validation_info = settings.max_drop, settings.validation, settings.validation_info
    _check_xml(path)
    nncf = _import_nncf()
    ov_model = read_ir(import_openvino().Core(), fp32_path)
    images = [image[None] for batch in calibration for image in batch]  # one per item: subset_size counts images
    if not images:
        raise UsageError("INT8 needs at least one calibration image")
    settings = dict(preset=nncf.QuantizationPreset.MIXED, fast_bias_correction=False, subset_size=len(images),
                    ignored_scope=nncf.IgnoredScope(patterns=[KEEP_FP32[kind] for kind in keep_fp32]))
    advanced = _advanced_parameters(nncf, overflow_fix, activation_ranges)
    dataset = nncf.Dataset(images, lambda x: x.numpy())
    control = None
    with _nncf_quiet(nncf):
        if max_drop is None:
            quantized = nncf.quantize(ov_model, dataset, advanced_parameters=advanced, **settings)
        else:
            quantized, control = _accuracy_control(nncf, ov_model, dataset, validation, max_drop, validation_info,
                                                   advanced_quantization_parameters=advanced, **settings)
    quantized.set_rt_info(_rt_text(ov_model, METADATA_KEY), METADATA_KEY)
    if calibration_info is not None:
        quantized.set_rt_info(json.dumps(calibration_info), CALIBRATION_KEY)
    layers = layer_precisions(quantized)
    quantized.set_rt_info(json.dumps(dict(
        tool=f"nncf {nncf.__version__}", preset="mixed", bias_correction="full", overflow_fix=overflow_fix,
        activation_ranges=activation_ranges, kept_fp32=list(keep_fp32), accuracy_control=control,
        int8_layers=sum(p == "int8" for p in layers.values()),
        fp32_layers=[name for name, p in layers.items() if p == "fp32"])), INT8_KEY)
    _save(quantized, path)
    return path


def check_int8_settings(keep_fp32: Sequence[str] = DEFAULT_KEEP_FP32, overflow_fix: str = "enable",
                        activation_ranges: str = "histogram", max_drop: Optional[float] = None) -> None:
    """``quantize_openvino``'s settings checked (without OpenVINO): a value it does not take is a ``UsageError``."""
    unknown = sorted(set(keep_fp32) - set(KEEP_FP32))
    if unknown:
        raise UsageError(f"cannot keep {', '.join(unknown)} in fp32; choose from: {', '.join(KEEP_FP32)} (or none)")
    if overflow_fix not in OVERFLOW_FIX:
        raise UsageError(f"unknown --int8-overflow-fix {overflow_fix!r}; choose one of: {', '.join(OVERFLOW_FIX)}")
    if activation_ranges not in ACTIVATION_RANGES:
        raise UsageError(f"unknown --int8-ranges {activation_ranges!r}; choose one of: {', '.join(ACTIVATION_RANGES)}")
    if max_drop is not None and not 0 < max_drop < 1:
        raise UsageError(f"--int8-max-drop must be a fraction between 0 and 1 (0.005: half a percent), got {max_drop}")


def _advanced_parameters(nncf, overflow_fix: str, activation_ranges: str):
    """NNCF's advanced parameters for ``overflow_fix`` and ``activation_ranges`` ("mean-minmax": NNCF's own
    default, left unset: set explicitly, NNCF 3.4 reduced the ranges differently and lost half the accuracy)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    ranges = RangeEstimatorParametersSet.HISTOGRAM if activation_ranges == "histogram" else None
    fix = {"enable": OverflowFix.ENABLE, "first-layer": OverflowFix.FIRST_LAYER, "disable": OverflowFix.DISABLE}
    return AdvancedQuantizationParameters(overflow_fix=fix[overflow_fix], activations_range_estimator_params=ranges)


def _accuracy_control(nncf, ov_model, calibration, validation: Iterable[torch.Tensor], max_drop: float,
                      validation_info: Optional[dict], **settings) -> tuple:
    """``nncf.quantize_with_accuracy_control`` whose metric is top-1 agreement with the fp32 model on the
    ``validation`` images (fp32 agrees with itself: 1.0), and what to record: the metric, ``max_drop``, the
    images (``validation_info``) and the agreement the INT8 model reached on them."""
    core = import_openvino().Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    fp32 = core.compile_model(ov_model, "CPU", config)
    items = [(image[None].numpy(), int(fp32(image[None].numpy())[0].argmax())) for batch in validation
             for image in batch]  # (image (1, C, H, W), fp32's answer)
    if not items:
        raise UsageError("accuracy control (--int8-max-drop) needs at least one validation image")

    def agreement(compiled, data) -> tuple[float, list[float]]:
        same = [float(compiled(image)[0].argmax() == answer) for image, answer in data]
        return sum(same) / max(1, len(same)), same

    quantized = nncf.quantize_with_accuracy_control(ov_model, calibration, nncf.Dataset(items, lambda item: item[0]),
                                                    agreement, max_drop=max_drop, **settings)
    reached = agreement(core.compile_model(quantized, "CPU", config), items)[0]
    return quantized, dict(metric="top-1 agreement with fp32", max_drop=max_drop, validation=validation_info,
                           images=len(items), agreement=reached)


WEIGHTED = ("Convolution", "GroupConvolution", "MatMul")  # the layers INT8 computes in int8


def layer_precisions(ov_model) -> dict:
    """``{"stem": "int8", "blocks.0.se.fc1": "fp32", ...}``: each layer with weights of an IR, in order, by its
    module path, and whether its weights are stored as int8 (INT8 runs it in int8) or not."""
    ov = import_openvino()
    layers = {}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() in WEIGHTED:
            node = op.input(1).get_source_output().get_node()  # int8 constant -> Convert -> Multiply (scale) ...
            while node.get_type_name() != "Constant" and node.get_input_size():
                node = node.input(0).get_source_output().get_node()
            int8 = node.get_type_name() == "Constant" and node.get_element_type() == ov.Type.i8
            layers[_module_path(op)] = "int8" if int8 else "fp32"
    return layers


def _module_path(op) -> str:
    """``blocks.3.expand`` from the layer's name, or from its batch norm's (a convolution the batch norm was
    folded into is named ``Multiply_123``); ``__module.model.`` is --softmax's wrapper."""
    for node in (op, *(target.get_node() for target in op.output(0).get_target_inputs())):
        match = re.match(r"__module\.(?:model\.)?([\w.]+?)(?:\.bn)?/", node.get_friendly_name())
        if match:
            return match.group(1)
    return op.get_friendly_name()


@contextlib.contextmanager
def _nncf_quiet(nncf):
    """NNCF's INFO lines (one per layer it leaves out) and its progress bars (rich, on ``sys.stdout``) kept
    off the user's terminal while it quantises; its warnings and errors still show, but for the one it gives for
    each per-channel activation quantiser (a depthwise convolution's input) under "histogram": those keep the
    min-max ranges that NNCF's own default gives them too."""
    from nncf.common.logging.logger import nncf_logger

    def not_histogram_rollback(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Rollback to RangeEstimatorParametersSet.MINMAX")

    level = nncf_logger.level
    nncf.set_log_level(logging.WARNING)
    nncf_logger.addFilter(not_histogram_rollback)
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet_torch_extensions():
            yield
    finally:
        nncf_logger.removeFilter(not_histogram_rollback)
        nncf.set_log_level(level)


# ------------------------------------------------------------------------------------------ reading
def read_ir(core, path: Path):
    """The ``openvino.Model`` of the IR at ``path``; a file that is not one is a ``UsageError``. The root element
    is checked first: OpenVINO would try every frontend on a garbage ``.xml``, and TensorFlow's writes its parse
    errors straight to the terminal."""
    import xml.etree.ElementTree as ElementTree

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        root = next(ElementTree.iterparse(str(path), events=("start",)))[1]
    except (ElementTree.ParseError, StopIteration) as err:
        raise UsageError(f"{path}: not an OpenVINO IR (not XML: {err})") from None
    if root.tag != "net":
        raise UsageError(f"{path}: not an OpenVINO IR (its root element is <{root.tag}>, not <net>)")
    if not _ir_reader_takes(path):  # else read_model tries the other frontends: TensorFlow's logs to the terminal
        raise UsageError(f"{path}: not an OpenVINO IR (its <net> has no IR version that OpenVINO reads: "
                         f"version={root.get('version')!r})")
    try:
        model = core.read_model(str(path))
    except RuntimeError as err:
        raise UsageError(f"{path}: not a loadable OpenVINO IR ({_reason(err)})") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UsageError(f"{path}: not an image classifier's IR ({len(model.inputs)} inputs, {len(model.outputs)} "
                         "outputs; one of each expected)")
    return model


def _ir_reader_takes(path: Path) -> bool:
    """Whether OpenVINO's IR frontend (and no other) would read ``path``: a ``<net>`` of an IR version it knows."""
    from openvino.frontend import FrontEndManager

    try:
        return FrontEndManager().load_by_framework("ir").supported(str(path))
    except RuntimeError:  # a version attribute that is no number
        return False


def _reason(err: Exception) -> str:
    """OpenVINO's message without its source locations: the last line, which says what is wrong."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith("Exception from")]
    return " ".join((lines[-1] if lines else str(err)).split())[:200]


def _rt_text(ov_model, key: str) -> Optional[str]:
    return ov_model.get_rt_info(key).astype(str) if ov_model.has_rt_info(key) else None


def read_card(path: Path, ov_model=None) -> dict:
    """The model card an IR (runtime info) or an ONNX file (metadata) carries; ``{}`` if none."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        text = meta.get(METADATA_KEY)
    else:
        text = _rt_text(ov_model if ov_model is not None else read_ir(import_openvino().Core(), path), METADATA_KEY)
    return json.loads(text) if text else {}


def read_int8_info(path: Path) -> dict:
    """How an INT8 IR was quantised (``INT8_KEY``: settings, layers left in fp32, accuracy control); ``{}`` if
    the IR does not say."""
    text = _rt_text(read_ir(import_openvino().Core(), path), INT8_KEY)
    return json.loads(text) if text else {}


def check_bf16(core) -> None:
    """bf16 only where the CPU computes it natively (AVX512-BF16, AMX): elsewhere OpenVINO would emulate it or
    quietly run fp32, and the precision reported would not be the one run."""
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in capabilities:
        raise UsageError(f"--precision bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this one offers "
                         f"{', '.join(capabilities)}: use --precision fp32")


# ------------------------------------------------------------------------------------------ running
class OpenVinoModule(nn.Module):
    """An OpenVINO IR (``.xml``) or an ONNX file run by OpenVINO on the CPU, usable where a model is expected
    (``engine.evaluate``, predict). ``precision`` is what floating-point layers run in (always set: OpenVINO's
    own default is bf16 on CPUs with AMX); ``threads`` caps its threads; ``hint`` is its performance mode."""

    runtime = "openvino"

    def __init__(self, path, threads: Optional[int] = None, hint: str = "latency", precision: str = "fp32"):
        super().__init__()
        ov = import_openvino()
        path = Path(path)
        if precision not in PRECISIONS or hint not in HINTS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)} and hint one of {', '.join(HINTS)}")
        core = ov.Core()
        if precision == "bf16":
            check_bf16(core)
        ov_model = _read_any(core, path)
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": hint.upper()}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(ov_model, "CPU", config)
        except RuntimeError as err:
            raise UsageError(f"{path}: OpenVINO cannot compile it ({_reason(err)})") from None
        info = read_card(path, ov_model)
        shape = ov_model.inputs[0].get_partial_shape()
        self.in_chans = shape[1].get_length() if shape[1].is_static else 3
        self.num_classes = ov_model.outputs[0].get_partial_shape()[1].get_length()
        self.classes, self.preprocessing = info.get("classes"), info.get("preprocessing")
        self.model_name, self.model_kwargs = info.get("model_name", path.stem), info.get("model_kwargs", {})
        self.softmax = bool(info.get("softmax", False))
        self.dataset = info.get("dataset")  # the data it was trained on (None: not recorded)
        self.quantized = any(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops())
        self.precision = ("int8+" + precision if precision != "fp32" else "int8") if self.quantized else precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.compiled(x.detach().float().contiguous().cpu().numpy())[0]
        return torch.from_numpy(output)  # the call copies the output out of OpenVINO's buffer


def _read_any(core, path: Path):
    """An IR, or an ONNX file (checked with ``onnx`` first, so that a broken one is not tried on every frontend)."""
    if path.suffix != ".onnx":
        return read_ir(core, path)
    import onnx

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        onnx.load(str(path), load_external_data=False)
        return core.read_model(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf's and OpenVINO's own exception types
        raise UsageError(f"{path}: not a loadable ONNX model ({_reason(err)})") from None
