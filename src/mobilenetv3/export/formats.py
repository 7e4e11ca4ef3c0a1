"""The table of export formats: one row per ``--format``, the one place a format is described.

A row says what a file of the format is called and how it is told apart (its suffixes), which runtimes run it
(its own first: ``.onnx`` runs in ONNX Runtime and in OpenVINO), what it computes in, whether it is INT8, the
extra it needs (the one-line check), how it is written (``write``) and how a file of it is opened to run
(``open``: path, runtime, precision, threads -> a module with ``.classes``, ``.preprocessing``, ``.runtime``,
``.precision``), and whether it runs on this machine. Export, verification, eval and predict ``--exported``,
the server, ``bench inference``, ``weights.py`` and ``benchmarks/format_accuracy.py`` read it: adding a format
is one row here and one module beside this one.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from ..errors import UsageError
from ..files import check_writable
from ..progress import Stages
from . import coreml, executorch, litert, ncnn, onnx, openvino, torch_formats
from .openvino import Int8Settings


@dataclass
class WriteOptions:
    """What a format's ``write`` may use besides the model: INT8's calibration images and what they are,
    OpenVINO INT8's settings, the stages it says as it goes, LiteRT's ``nhwc`` and Core ML's ``precision``."""

    calibration: Optional[Iterable[torch.Tensor]] = None
    calibration_info: Optional[dict] = None
    int8: Optional[Int8Settings] = None
    stages: Stages = field(default_factory=lambda: Stages("export", enabled=False))
    nhwc: bool = False
    precision: Optional[str] = None


Writer = Callable[[nn.Module, Path, torch.Tensor, bool, WriteOptions], dict]
Opener = Callable[[Path, Optional[str], Optional[str], Optional[int]], nn.Module]


@dataclass(frozen=True)
class Format:
    """One export format. ``kind`` is the kind of file (``onnx-int8`` is an ``onnx`` file); ``recognised`` the
    suffixes a file of that kind is told by; ``runtimes`` the ``--runtime`` values that run it, its own first
    (``pytorch``: PyTorch itself, no ``--runtime``); ``runs_in``: where a wrong ``--runtime`` is told to go."""

    name: str
    suffix: str  # what export writes by default
    kind: str
    what: str  # "an ONNX model": how a message names a file of it
    called: str  # "an .onnx file": how the list of files --exported takes names it
    recognised: tuple[str, ...]
    runtimes: tuple[str, ...]
    runs_in: str
    extra: Callable[[], object]  # raises the one-line UsageError naming the extra when it is not installed
    modules: tuple[str, ...]  # the Python modules its extra installs (told installed without importing them)
    write: Writer
    open: Opener
    int8: bool = False
    fp32_of: Optional[str] = None  # INT8: the fp32 format it is quantised from and compared with
    precisions: tuple[str, ...] = ("fp32",)  # what a file of it computes in
    options: tuple[str, ...] = ()  # export options of this format only: "nhwc" (LiteRT), "precision" (Core ML),
    # "int8_settings" (OpenVINO INT8's Int8Settings; its file records how it was quantised, read_int8_info)
    companions: Callable[[Path], tuple[Path, ...]] = lambda path: ()  # files written beside it
    check_output: Callable[[Path], None] = lambda path: None  # its output path is of its kind (before writing)
    check_file: Optional[Callable[[Path, nn.Module, Optional[str]], dict]] = None  # checked, not run, at export
    reported: tuple[tuple[str, Callable[[Path], nn.Module]], ...] = ()  # other ways its runtime runs it: compared
    # with PyTorch at export and reported under their name, not bounded (ncnn: "fp16", its default storage)
    own_files: str = ""  # what its runtime runs, where that runtime runs nothing else ("ExecuTorch programs (.pte)")
    no_threads: str = ""  # why ``threads`` is not a setting of it ("{path}": the file)
    systems: tuple[str, ...] = ()  # the platform.system() values it runs on (empty: any)
    slow: bool = False  # export says its stages as they begin

    @property
    def runtime(self) -> str:
        """Its own runtime."""
        return self.runtimes[0]

    def runs_here(self) -> bool:
        return not self.systems or platform.system() in self.systems

    def systems_named(self) -> str:
        """The systems it runs on, as their users call them ("macOS")."""
        return " or ".join({"Darwin": "macOS"}.get(system, system) for system in self.systems)


def no_extra() -> None:
    """Formats written by what the project always installs (PyTorch, ONNX Runtime)."""


# ------------------------------------------------------------------------------------------ writers
def _write_plain(export) -> Writer:
    def write(model, path, example, softmax, o: WriteOptions) -> dict:
        export(model, path, example, softmax)
        return {}
    return write


def _write_onnx_int8(model, path, example, softmax, o: WriteOptions) -> dict:
    fp32_path = _begin_int8(path, o)
    onnx.export_onnx(model, fp32_path, example, softmax)
    o.stages.begin(f"quantising it to {path.name} with ONNX Runtime, calibrated on the training images")
    onnx.quantize_onnx(fp32_path, path, o.calibration, o.calibration_info)
    return dict(fp32_path=str(fp32_path))


def _write_openvino_int8(model, path, example, softmax, o: WriteOptions) -> dict:
    fp32_path = _begin_int8(path, o)
    settings = o.int8 or Int8Settings()
    openvino.export_openvino(model, fp32_path, example, softmax)
    o.stages.begin(f"quantising it to {path.name} with NNCF, calibrated on the training images"
                   + (" (accuracy control: a minute or more)" if settings.max_drop else ""))
    openvino.quantize_openvino(fp32_path, path, o.calibration, o.calibration_info, settings=settings)
    return dict(fp32_path=str(fp32_path))


def _write_executorch(model, path, example, softmax, o: WriteOptions) -> dict:
    o.stages.begin(f"exporting {path.name}, lowered to XNNPACK")
    return dict(delegation=executorch.export_executorch(model, path, example, softmax))


def _write_executorch_int8(model, path, example, softmax, o: WriteOptions) -> dict:
    fp32_path = _begin_int8(path, o)  # quantised from the PyTorch model; the fp32 program is compared with it
    executorch.export_executorch(model, fp32_path, example, softmax)
    o.stages.begin(f"quantising to {path.name} (PT2E, XNNPACK's quantizer), calibrated on the training images, "
                   "and lowering it to XNNPACK")
    return dict(fp32_path=str(fp32_path), delegation=executorch.export_executorch(
        model, path, example, softmax, o.calibration, o.calibration_info))


def _write_litert(model, path, example, softmax, o: WriteOptions) -> dict:
    o.stages.begin(f"converting to {path.name} with litert-torch")
    litert.export_litert(model, path, example, softmax, nhwc=o.nhwc)
    return dict(operators=litert.check_hard_activations(path, model))


def _write_litert_int8(model, path, example, softmax, o: WriteOptions) -> dict:
    fp32_path = _begin_int8(path, o)  # quantised from the PyTorch model; compared with the fp32 file
    litert.export_litert(model, fp32_path, example, softmax, nhwc=o.nhwc)
    o.stages.begin(f"quantising to {path.name} (PT2E, litert-torch's quantizer), calibrated on the training "
                   "images, and converting it")
    litert.export_litert(model, path, example, softmax, nhwc=o.nhwc, calibration=o.calibration,
                         calibration_info=o.calibration_info)
    return dict(fp32_path=str(fp32_path), operators=litert.check_hard_activations(path, model))


def _write_ncnn(model, path, example, softmax, o: WriteOptions) -> dict:
    o.stages.begin(f"converting to {path.name} with pnnx")
    ncnn.export_ncnn(model, path, example, softmax)
    return dict(operators=ncnn.layer_types(path))


def _write_coreml(model, path, example, softmax, o: WriteOptions) -> dict:
    o.stages.begin(f"converting to {path.name} with coremltools")
    coreml.export_coreml(model, path, example, _preprocessing_of(model), o.precision or "fp16")
    return {}


def _begin_int8(path: Path, o: WriteOptions) -> Path:
    """INT8's fp32 file, written first, beside it (``export_verified`` checked that calibration images are given)."""
    fp32_path = int8_source_path(path)
    o.stages.begin(f"exporting the fp32 model it is quantised from, {fp32_path.name}")
    return fp32_path


def _preprocessing_of(model: nn.Module) -> dict:
    """The normalisation Core ML's image input does: the model's own preprocessing."""
    pre = getattr(model, "preprocessing", None)
    if not pre:
        raise UsageError("a Core ML image input needs the model's preprocessing (mean and std): these weights "
                         "record none")
    return pre


def int8_source_path(path: Path) -> Path:
    """Where an INT8 export writes the fp32 file it is quantised from (or compared with): ``m.int8.onnx`` ->
    ``m.onnx``, ``m.int8.xml`` -> ``m.xml``, ``m.int8.pte`` -> ``m.pte``, else ``m.fp32.<suffix>``."""
    return path.with_name(path.name.replace(".int8.", ".") if ".int8." in path.name
                          else f"{path.stem}.fp32{path.suffix}")


# ------------------------------------------------------------------------------------------ openers
def _open_onnx(path, runtime, precision, threads) -> nn.Module:
    if runtime == "openvino":
        return openvino.OpenVinoModule(path, threads=threads, precision=precision or "fp32")
    return onnx.OnnxModule(path, threads=threads)


def _open_openvino(path, runtime, precision, threads) -> nn.Module:
    return openvino.OpenVinoModule(path, threads=threads, precision=precision or "fp32")


def _open_pte(path, runtime, precision, threads) -> nn.Module:
    return executorch.ExecuTorchModule(path)


def _open_litert(path, runtime, precision, threads) -> nn.Module:
    return litert.LiteRtModule(path, threads=threads)


def _open_ncnn(path, runtime, precision, threads) -> nn.Module:
    return ncnn.NcnnModule(path, precision="fp32", threads=threads)


def _open_ncnn_fp16(path) -> nn.Module:
    return ncnn.NcnnModule(path, precision="fp16")


def _open_coreml(path, runtime, precision, threads) -> nn.Module:
    return coreml.open_coreml(path)


def _open_torch_program(kind: str) -> Opener:
    def open_program(path, runtime, precision, threads) -> nn.Module:
        return torch_formats.TorchProgramModule(path, kind)
    return open_program


# ------------------------------------------------------------------------------------------ output checks
def _check_ir_output(path: Path) -> None:
    """An IR is an ``.xml`` and the ``.bin`` of the same name, which must be writable."""
    if path.suffix != ".xml":
        raise UsageError(f"an OpenVINO IR is an .xml file (and its .bin): {path} does not end in .xml")
    check_writable(path.with_suffix(".bin"))


def _check_pte_output(path: Path) -> None:
    if path.suffix != ".pte":
        raise UsageError(f"an ExecuTorch program is a .pte file: {path} does not end in .pte")


def _ir_companions(path: Path) -> tuple[Path, ...]:
    return (path.with_suffix(".bin"),)


# ------------------------------------------------------------------------------------------ the table
_ONNX = dict(kind="onnx", what="an ONNX model", called="an .onnx file", recognised=(".onnx",),
             runtimes=("onnxruntime", "openvino"), runs_in="ONNX Runtime or OpenVINO", extra=no_extra,
             modules=("onnxruntime",),
             open=_open_onnx)
_OPENVINO = dict(kind="openvino", what="an OpenVINO IR", called="an OpenVINO IR .xml", recognised=(".xml",),
                 runtimes=("openvino",), runs_in="OpenVINO (--runtime openvino)", extra=openvino.import_openvino,
                 modules=("openvino", "nncf"),
                 open=_open_openvino, companions=_ir_companions, check_output=_check_ir_output,
                 precisions=openvino.PRECISIONS)
_EXECUTORCH = dict(kind="executorch", what="an ExecuTorch program", called="an ExecuTorch .pte",
                   recognised=(".pte",), runtimes=("executorch",), runs_in="ExecuTorch (--runtime executorch)",
                   extra=executorch.import_executorch, modules=("executorch",), open=_open_pte,
                   check_output=_check_pte_output,
                   own_files="ExecuTorch programs (.pte)", slow=True,
                   no_threads="ExecuTorch sizes its own thread pool: threads is not a setting of a .pte")
_LITERT = dict(kind="litert", what="a LiteRT model", called="a LiteRT .tflite", recognised=(".tflite",),
               runtimes=("litert",), runs_in="litert (leave --runtime out)", extra=litert.import_litert_converter,
               modules=("ai_edge_litert", "litert_torch"),
               open=_open_litert, check_output=litert.check_tflite_path, own_files="its own files (.tflite)",
               options=("nhwc",))
_TORCH = dict(runtimes=("pytorch",), runs_in="PyTorch (leave --runtime out)", extra=no_extra, modules=("torch",),
              no_threads="{path} runs on PyTorch's threads (torch.set_num_threads): threads is not a setting of it")

TABLE: tuple[Format, ...] = (
    Format("onnx", ".onnx", write=_write_plain(onnx.export_onnx), **_ONNX),
    Format("onnx-int8", ".int8.onnx", write=_write_onnx_int8, int8=True, fp32_of="onnx", **_ONNX),
    Format("torchscript", ".torchscript.pt", "torchscript", "a TorchScript program", "a TorchScript .torchscript.pt",
           (".torchscript.pt",), write=_write_plain(torch_formats.export_torchscript),
           open=_open_torch_program("torchscript"), **_TORCH),
    Format("pt2", ".pt2", "pt2", "a torch.export program", "a torch.export .pt2", (".pt2",),
           write=_write_plain(torch_formats.export_pt2), open=_open_torch_program("pt2"), **_TORCH),
    Format("openvino", ".xml", write=_write_plain(openvino.export_openvino), **_OPENVINO),
    Format("openvino-int8", ".int8.xml", write=_write_openvino_int8, int8=True, fp32_of="openvino",
           options=("int8_settings",), **_OPENVINO),
    Format("executorch", ".pte", write=_write_executorch, **_EXECUTORCH),
    Format("executorch-int8", ".int8.pte", write=_write_executorch_int8, int8=True, fp32_of="executorch",
           **_EXECUTORCH),
    Format("litert", ".tflite", write=_write_litert, **_LITERT),
    Format("litert-int8", ".int8.tflite", write=_write_litert_int8, int8=True, fp32_of="litert", **_LITERT),
    Format("coreml", ".mlpackage", "coreml", "a Core ML package", "a Core ML .mlpackage", (".mlpackage",), ("coreml",),
           "coreml (leave --runtime out)", coreml.import_coremltools, ("coremltools",), _write_coreml, _open_coreml,
           precisions=coreml.PRECISIONS, options=("precision",), check_output=coreml.check_package_path,
           check_file=coreml.verify_coreml, own_files="its own files (.mlpackage)", systems=("Darwin",),
           no_threads="Core ML picks its own compute units: threads is not a setting of an .mlpackage"),
    Format("ncnn", ".ncnn.param", "ncnn", "an ncnn model", "an ncnn .ncnn.param", (".ncnn.param",), ("ncnn",),
           "ncnn (leave --runtime out)", ncnn.import_pnnx, ("ncnn", "pnnx"), _write_ncnn, _open_ncnn,
           precisions=ncnn.PRECISIONS, reported=(("fp16", _open_ncnn_fp16),),
           companions=ncnn.companions, check_output=ncnn.check_param_path, own_files="its own files (.ncnn.param)"),
)
FORMATS_BY_NAME = {row.name: row for row in TABLE}


def get(name: str) -> Format:
    """The row of ``--format name``, or the one line listing the formats."""
    if name not in FORMATS_BY_NAME:
        raise UsageError(f"unknown format {name!r}; choose one of: {', '.join(FORMATS_BY_NAME)}")
    return FORMATS_BY_NAME[name]


def installed(row: Format) -> bool:
    """Whether the modules of ``row``'s extra are installed (found, not imported: some take seconds)."""
    import importlib.util

    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package that is not there
            return False

    return all(found(module) for module in row.modules)


def of_runtime(runtime: str) -> Optional[Format]:
    """The fp32 format whose own runtime is ``runtime`` (``onnxruntime``: ``onnx``), or ``None``."""
    return next((row for row in TABLE if row.runtime == runtime and not row.int8), None)


def kinds() -> dict[str, Format]:
    """One row per kind of file (its fp32 format), by kind."""
    rows: dict[str, Format] = {}
    for row in TABLE:
        rows.setdefault(row.kind, row)
    return rows


def kind_of_name(name: str) -> Optional[Format]:
    """The row of the kind of file called ``name`` (by its suffixes, longest first), or ``None``."""
    name = name.lower()
    matches = [(len(suffix), row) for row in kinds().values() for suffix in row.recognised if name.endswith(suffix)]
    return max(matches, key=lambda match: match[0])[1] if matches else None


def runtimes() -> tuple[str, ...]:
    """The ``--runtime`` values: every runtime of a row but PyTorch's own (which needs no ``--runtime``)."""
    names: list[str] = []
    for row in TABLE:
        names += [runtime for runtime in row.runtimes if runtime != "pytorch" and runtime not in names]
    return tuple(names)


def exclusive(runtime: str) -> Optional[Format]:
    """The kind ``runtime`` runs when it runs one kind only, and that kind no other runtime: its row."""
    rows = [row for row in kinds().values() if runtime in row.runtimes]
    return rows[0] if len(rows) == 1 and rows[0].runtimes == (runtime,) and rows[0].own_files else None


def files_phrase() -> str:
    """'an .onnx file, an OpenVINO IR .xml, ...': the files ``--exported`` takes (PyTorch's last), for messages."""
    rows = sorted(kinds().values(), key=lambda row: row.runtime == "pytorch")
    return ", ".join(row.called for row in rows[:-1]) + " or " + rows[-1].called
