"""Side-by-side benchmarks, the library part: the machine, timing, the inference paths and torchvision's references.

Every figure is the median of several timed repeats after warm-up, measured next to its reference
in the same run. ``benchmarks/`` runs the full suite and renders ``BENCHMARKS.md``; ``mobilenetv3
bench`` runs the common cases. Nothing here asserts a time: tests only check that it runs.
"""
from __future__ import annotations

import copy
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .errors import RunError, UsageError
from .export import (
    ExecuTorchModule,
    OpenVinoModule,
    export_executorch,
    export_onnx,
    export_openvino,
    formats,
    quantize_onnx,
    quantize_openvino,
)
from .export.openvino import check_bf16
from .models import count_madds, create_model
from .models.layers import ConvBNAct

log = logging.getLogger(__name__)
TORCHVISION_NAMES = {"mobilenetv3_large": "mobilenet_v3_large", "mobilenetv3_small": "mobilenet_v3_small"}


# ------------------------------------------------------------------------------------ measuring
# VNNI (avx512_vnni, avx_vnni): fast INT8 dot products; avx512_bf16, amx_bf16: native bf16
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_tile",
             "amx_bf16", "amx_int8")


def machine_info() -> dict:
    """The CPU (model and the vector-instruction flags of ``CPU_FLAGS`` it has), cores, versions, load."""
    cpuinfo = {}  # the first core's "model name", "flags", ...
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpuinfo.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = cpuinfo.get("model name") or platform.processor() or platform.machine()
    flags = set(cpuinfo.get("flags", "").split())
    info = dict(cpu=cpu, cpu_flags=[f for f in CPU_FLAGS if f in flags], cores=os.cpu_count(),
                torch=str(torch.__version__), torch_threads=torch.get_num_threads(),
                python=platform.python_version(), load_average_1min=os.getloadavg()[0])
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def time_call(fn: Callable[[], object], warmup: int = 3, repeats: int = 10, sync: Callable = lambda: None) -> dict:
    """Median seconds per call of ``fn`` over ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - start)
    return dict(median_s=statistics.median(runs), runs=runs)


def peak_gflops(size: int = 2048) -> dict:
    """The CPU's fp32 peak: measured with a large matrix product, and the nominal figure from the clock."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    timing = time_call(lambda: a @ b, warmup=2, repeats=5)
    measured = 2 * size ** 3 / timing["median_s"] / 1e9
    nominal = None
    try:
        mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("cpu MHz"))
        flags = Path("/proc/cpuinfo").read_text()
        lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4  # fp32 lanes per vector
        nominal = (os.cpu_count() or 1) * 2 * lanes * 2 * mhz / 1e3  # cores x 2 FMA units x lanes x 2 flops x GHz
    except (OSError, ValueError):
        pass
    return dict(measured_gflops=measured, nominal_gflops=nominal, method=f"{size}x{size} fp32 matmul (torch)",
                nominal_formula="cores x 2 FMA units x vector lanes x 2 flops x clock")


# ------------------------------------------------------------------------------------ threads
CORE_MODES = ("all", "one", "both")  # every core of the affinity mask, one pinned core, or one then all


def affinity() -> list[int]:
    """The cores this process may run on (its CPU affinity mask), lowest first."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def busy_warning(load_average: float, cores: int) -> Optional[str]:
    """The line that says the machine is busy (1-minute load average above its core count), else None: other work
    then shares the cores, and the thread pools timed here wait for them (oversubscribed threads made earlier
    timings on a shared machine meaningless)."""
    if load_average <= cores:
        return None
    return (f"warning: load average {load_average:.2f} is above the {cores} cores: other work is running, so "
            f"these timings are not meaningful; measure on an idle machine")


def onnxruntime_options(threads: int):
    """The session options of every ONNX Runtime path here: ``threads`` intra-op threads, one inter-op thread,
    sequential execution, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph optimiser's notes are not the reader's business
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Without spinning: after each run ONNX Runtime's threads otherwise busy-wait for more work and take
    # the two cores from the variant timed next (torchvision eager at batch 1: 111 ms that way, 21 ms without).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def openvino_config(threads: int) -> dict:
    """The compile settings of every OpenVINO path here: what ``OpenVinoModule(path, threads, hint="latency",
    precision="fp32")`` sets for ours, given to ``compile_model`` for the by-hand reference."""
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def thread_settings(threads: int, cores: str) -> dict:
    """What a run at ``threads`` threads sets in each runtime, with the affinity mask and the load average now."""
    return dict(cores=cores, threads=threads, affinity=affinity(), torch=dict(set_num_threads=threads),
                onnxruntime=dict(intra_op_num_threads=threads, inter_op_num_threads=1, allow_spinning="0"),
                openvino=openvino_config(threads), executorch=dict(threadpool=threads),
                load_average_1min=os.getloadavg()[0])


def core_modes(cores: str, threads: Optional[int]) -> tuple[str, ...]:
    """The core modes ``cores`` runs (``"both"``: one core, then all), after checking it and ``threads`` (the
    all-core run's thread count); a wrong combination is a ``UsageError``."""
    if cores not in CORE_MODES:
        raise UsageError(f"cores must be one of {', '.join(CORE_MODES)}, not {cores!r}")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1")
    if cores == "one" and threads not in (None, 1):
        raise UsageError("--one-core runs one thread; --threads sets the all-core run's (--cores all or both)")
    modes = ("one", "all") if cores == "both" else (cores,)
    if "one" in modes and not hasattr(os, "sched_setaffinity"):
        raise UsageError("--one-core pins the process with os.sched_setaffinity, which this system lacks")
    return modes


# ------------------------------------------------------------------------------------ inference
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with every BatchNorm folded into the convolution before it (eval mode only)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval


    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return folded


def torchvision_model(name: str, num_classes: int = 1000) -> nn.Module:
    """torchvision's counterpart of our model ``name``, freshly initialised, in eval mode."""
    import torchvision

    return getattr(torchvision.models, TORCHVISION_NAMES[name])(num_classes=num_classes).eval()


@dataclass
class _Setup:
    """What each variant's builder needs."""

    name: str
    ours: nn.Module
    x: torch.Tensor  # (B, 3, H, W): the input every variant runs
    folder: Path  # exported files
    threads: int

    def example(self) -> torch.Tensor:
        """The export example: two images, so that the exporters keep the batch dimension dynamic."""
        return self.x[:2] if len(self.x) > 1 else self.x.repeat(2, 1, 1, 1)


def _calibration(x: torch.Tensor) -> list[torch.Tensor]:
    """Four batches of 8 random images shaped like ``x``: INT8 calibrated on noise, which is fine for timing."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(8, *x.shape[1:], generator=generator) for _ in range(4)]


def _onnxruntime(model: nn.Module, s: _Setup, tag: str, int8: bool = False) -> Callable[[], object]:
    """ONNX Runtime running ``model``'s export (torchvision's model: the same exporter), with our options."""
    import onnxruntime as ort


    path = s.folder / f"{tag}.onnx"
    if not path.exists():
        if not hasattr(model, "model_name"):  # torchvision's model: no model card to write
            model.model_name, model.model_kwargs = tag, {}
        export_onnx(model, path, s.example())
    if int8:
        path = quantize_onnx(path, s.folder / f"{tag}.int8.onnx", _calibration(s.x))
    session = ort.InferenceSession(str(path), onnxruntime_options(s.threads), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: s.x.numpy()}
    return lambda: session.run(None, feed)[0]


def _openvino_by_hand(s: _Setup) -> Callable[[], object]:
    """torchvision's model converted the way OpenVINO's documentation shows a user (``convert_model`` with an
    example input, ``compile_model`` for the CPU), compiled with the settings ours gets."""
    import warnings

    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace, which convert_model uses, is deprecated
        ov_model = ov.convert_model(torchvision_model(s.name), example_input=s.x)
    compiled = ov.compile_model(ov_model, "CPU", openvino_config(s.threads))
    return lambda: compiled(s.x.numpy())[0]


def _openvino(s: _Setup, int8: bool = False, precision: str = "fp32") -> Callable[[], object]:
    """Ours: ``export_openvino``'s IR (INT8: ``quantize_openvino``'s) run by ``OpenVinoModule``."""

    path = s.folder / f"{s.name}.xml"  # one fp32 IR per setup: INT8 and bf16 start from it too
    if not path.exists():
        export_openvino(s.ours, path, s.example())
    if int8:
        path = quantize_openvino(path, s.folder / f"{s.name}.int8.xml", _calibration(s.x))
    module = OpenVinoModule(path, threads=s.threads, hint="latency", precision=precision)
    return lambda: module(s.x)


def _executorch(s: _Setup, int8: bool = False) -> Callable[[], object]:
    """Ours through ``mobilenetv3.export.executorch`` (INT8: calibrated on random images), its thread pool sized
    to ``s.threads`` where the ExecuTorch build lets Python do that."""

    try:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(s.threads)
    except (ImportError, AttributeError):
        log.warning("executorch: this build cannot size its thread pool from Python; it runs at its default")
    path = s.folder / f"{s.name}{'.int8' if int8 else ''}.pte"
    export_executorch(s.ours, path, s.x, calibration=_calibration(s.x) if int8 else None)  # returns the delegation
    module = ExecuTorchModule(path)
    return lambda: module(s.x)


def _litert(s: _Setup) -> Callable[[], object]:
    """Ours as a ``.tflite`` (``export_litert``), run by ``LiteRtModule``: the LiteRT interpreter with XNNPACK, on
    ``s.threads`` threads."""
    from .export.litert import LiteRtModule, export_litert

    path = s.folder / f"{s.name}.tflite"
    export_litert(s.ours, path, s.example())
    module = LiteRtModule(path, threads=s.threads)
    return lambda: module(s.x)


def _ncnn(s: _Setup) -> Callable[[], object]:
    """Ours through ``export_ncnn`` (pnnx, fp32 weights), run by ``NcnnModule`` in fp32 on ``s.threads`` threads,
    image by image (ncnn takes one image per call)."""
    from .export.ncnn import NcnnModule, export_ncnn

    path = s.folder / f"{s.name}.ncnn.param"
    export_ncnn(s.ours, path, s.example())
    module = NcnnModule(path, precision="fp32", threads=s.threads)
    return lambda: module(s.x)


def _ncnn_by_hand(s: _Setup) -> Callable[[], object]:
    """torchvision's model converted the way pnnx's README shows a user (a traced TorchScript file, then the
    ``pnnx`` command with the input shape and its default options: fp16 weights), run by ncnn image by image with
    its default options (fp16 storage and arithmetic where the CPU has them) on the threads ours gets."""
    import subprocess
    import warnings

    import ncnn
    import numpy as np
    import pnnx

    traced = s.folder / f"tv_{s.name}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.trace(torchvision_model(s.name), s.x[:1]).save(str(traced))
    shape = ",".join(str(n) for n in s.x[:1].shape)
    subprocess.run([pnnx.EXEC_PATH, str(traced), f"inputshape=[{shape}]"], cwd=s.folder, check=True,
                   capture_output=True)
    net = ncnn.Net()
    net.opt.num_threads = s.threads
    net.load_param(str(traced.with_suffix(".ncnn.param")))
    net.load_model(str(traced.with_suffix(".ncnn.bin")))

    def run() -> list:
        outputs = []
        for image in s.x.numpy():
            extractor = net.create_extractor()
            extractor.input("in0", ncnn.Mat(np.ascontiguousarray(image)).clone())
            outputs.append(np.array(extractor.extract("out0")[1]))
        return outputs

    return run


def _torchscript(s: _Setup) -> Callable[[], object]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(s.ours, s.x)))
    return lambda: scripted(s.x)


def _run(model: Callable, x: torch.Tensor) -> Callable[[], object]:
    return lambda: model(x)


def _channels_last(model: nn.Module, s: _Setup) -> Callable[[], object]:
    return _run(model.to(memory_format=torch.channels_last), s.x.contiguous(memory_format=torch.channels_last))


# Each variant: how to build its forward pass (no argument; runs s.x). torchvision's model is the reference, in
# eager PyTorch and exported by hand (BY_HAND: the best a user gets without this project, at fp32; ncnn's by hand
# keeps pnnx's and ncnn's defaults, fp16 weights and fp16 storage where the CPU has it, as a user gets them).
VARIANT_BUILDERS: dict[str, Callable[[_Setup], Callable[[], object]]] = {
    "torchvision eager": lambda s: _run(torchvision_model(s.name), s.x),
    "torchvision onnxruntime": lambda s: _onnxruntime(torchvision_model(s.name), s, f"tv_{s.name}"),
    "torchvision openvino": _openvino_by_hand,
    "torchvision ncnn": _ncnn_by_hand,
    "eager": lambda s: _run(s.ours, s.x),
    "eager channels_last": lambda s: _channels_last(copy.deepcopy(s.ours), s),
    "bn folded": lambda s: _channels_last(fold_batchnorm(s.ours), s),
    "torchscript": _torchscript,
    "compile": lambda s: _run(torch.compile(fold_batchnorm(s.ours)), s.x),
    "onnxruntime fp32": lambda s: _onnxruntime(s.ours, s, s.name),
    "onnxruntime int8": lambda s: _onnxruntime(s.ours, s, s.name, int8=True),
    "openvino fp32": lambda s: _openvino(s),
    "openvino int8": lambda s: _openvino(s, int8=True),
    "openvino bf16": lambda s: _openvino(s, precision="bf16"),
    "executorch fp32": lambda s: _executorch(s),
    "executorch int8": lambda s: _executorch(s, int8=True),
    "litert fp32": _litert,
    "ncnn fp32": _ncnn,
}
INFERENCE_VARIANTS = tuple(VARIANT_BUILDERS)
BY_HAND = ("torchvision onnxruntime", "torchvision openvino", "torchvision ncnn")


def unavailable_variants(variants) -> dict[str, str]:
    """``{variant: reason}`` for each of ``variants`` this machine cannot run (a runtime whose extra is not
    installed, by ``export.formats.TABLE``; bf16 on a CPU without native bf16); the reasons are the one-line notes
    a run prints."""
    missing = {}
    for variant in variants:
        runtime = variant.removeprefix("torchvision ").split()[0]
        row = formats.of_runtime(runtime)
        if row is not None and not formats.installed(row):
            missing[variant] = f"{runtime}: not installed"
        elif variant == "openvino bf16" and not _native_bf16():
            missing[variant] = "bf16: not native on this CPU"
    return missing


def _native_bf16() -> bool:
    """Whether OpenVINO computes bf16 natively on this CPU (``export.openvino.check_bf16``'s test)."""
    import openvino


    try:
        check_bf16(openvino.Core())
    except UsageError:
        return False
    return True


def inference_callables(name: str, batch: int, size: int, variants, folder: Path,
                        threads: Optional[int] = None) -> dict[str, Callable]:
    """``{variant: fn}``, each running one forward pass of a ``batch`` of ``size`` px images; ONNX Runtime,
    OpenVINO and ExecuTorch with ``threads`` threads (default: one per core of the affinity mask)."""
    unknown = [v for v in variants if v not in VARIANT_BUILDERS]
    if unknown:
        raise UsageError(f"unknown variant {unknown[0]!r}; choose from: {', '.join(INFERENCE_VARIANTS)}")
    torch.manual_seed(0)
    setup = _Setup(name, create_model(name).eval(), torch.randn(batch, 3, size, size), folder,
                   threads or len(affinity()))
    return {variant: VARIANT_BUILDERS[variant](setup) for variant in variants}


def time_interleaved(fns: dict[str, Callable], warmup: int = 3, repeats: int = 10,
                     sync: Callable = lambda: None) -> dict[str, list[float]]:
    """Seconds per call of each function, timed in rounds (one call of each per round), so that a machine
    whose speed drifts (shared cores, frequency changes) affects every variant alike. ``sync`` waits for
    the device (``torch.cuda.synchronize`` on a GPU) before each clock reading."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            runs[name].append(time.perf_counter() - start)
    return runs


def device_sync(device: torch.device) -> Callable[[], None]:
    """What waits for ``device``'s queued work: ``torch.cuda.synchronize`` on a GPU, nothing on the CPU."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


@torch.inference_mode()
def bench_inference(name: str, batch: int, size: int = 224, variants=INFERENCE_VARIANTS, repeats: int = 10,
                    warmup: int = 3, threads: Optional[int] = None) -> list[dict]:
    """Latency of each variant, timed in interleaved rounds, with ``threads`` threads in torch and every runtime
    (default: one per core of the affinity mask; torch's count is restored afterwards). Rows carry the ratios of
    ``add_ratios`` (a reference's time over the variant's: higher is faster)."""
    threads = threads or len(affinity())
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as folder:
            fns = inference_callables(name, batch, size, variants, Path(folder), threads)
            runs = time_interleaved(fns, warmup, repeats)
    finally:
        torch.set_num_threads(previous)
    rows = []
    for variant, times in runs.items():
        median = statistics.median(times)
        rows.append(dict(kind="inference", model=name, batch=batch, size=size, threads=threads, variant=variant,
                         ms=1000 * median, images_per_s=batch / median, runs_ms=[1000 * t for t in times]))
    return add_ratios(rows)


def _ratio(reference_ms: Optional[float], ms: float) -> Optional[float]:
    return reference_ms / ms if reference_ms else None


def add_ratios(rows: list[dict]) -> list[dict]:
    """``rows`` with, within each model/batch/size/threads/cores group: ``speedup_vs_torchvision_eager``;
    ``speedup_vs_best_by_hand``, against the fastest in that group of torchvision's model exported by hand to ONNX
    Runtime, to OpenVINO and to ncnn (``BY_HAND``; ``best_by_hand`` names it); and for an INT8 or bf16 variant
    ``speedup_vs_own_fp32``, against its runtime's fp32 variant. A ratio whose reference is not among the rows is
    None."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = tuple(row.get(k) for k in ("model", "batch", "size", "threads", "cores"))
        groups.setdefault(key, []).append(row)
    for group in groups.values():
        ms = {row["variant"]: row["ms"] for row in group}
        by_hand = min((v for v in BY_HAND if v in ms), key=ms.__getitem__, default=None)
        for row in group:
            row["speedup_vs_torchvision_eager"] = _ratio(ms.get("torchvision eager"), row["ms"])
            row["best_by_hand"] = by_hand
            row["speedup_vs_best_by_hand"] = _ratio(ms.get(by_hand), row["ms"])
            runtime, _, precision = row["variant"].rpartition(" ")
            if precision in ("int8", "bf16"):
                row["speedup_vs_own_fp32"] = _ratio(ms.get(f"{runtime} fp32"), row["ms"])
    return rows


def bench_inference_cores(name: str, batch: int, size: int, variants, cores: str, threads: Optional[int] = None,
                          repeats: int = 10, warmup: int = 3) -> tuple[dict, list[dict]]:
    """``bench_inference`` on one core (``cores="one"``) or on all (``"all"``: ``threads`` threads, default one per
    core of the affinity mask); returns the thread settings and the rows, each labelled with ``cores``.

    A one-core run is a fresh process pinned to the first core of the mask, with one thread: the thread pools
    torch, ONNX Runtime and OpenVINO start inherit the pinning, so it could not be undone in this process."""
    if cores == "one":
        return _in_pinned_process(dict(name=name, batch=batch, size=size, variants=list(variants), repeats=repeats,
                                       warmup=warmup))
    threads = threads or len(affinity())
    settings = thread_settings(threads, "all")
    rows = bench_inference(name, batch, size, variants, repeats, warmup, threads)
    return settings, [dict(row, cores="all") for row in rows]


def _in_pinned_process(kwargs: dict) -> tuple[dict, list[dict]]:
    """``_pinned_bench(**kwargs)`` in a fresh Python process (a plain one: nothing of the caller's ``__main__`` is
    imported), its result read back as JSON; its log lines go to this process's stderr."""
    import json
    import subprocess
    import sys

    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    code = ("import json, sys; from mobilenetv3.benchmarking import _pinned_bench; "
            "open(sys.argv[2], 'w').write(json.dumps(_pinned_bench(**json.loads(sys.argv[1]))))")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        done = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs), str(out)], env=env,
                              stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RunError(f"the one-core benchmark process failed with exit code {done.returncode} (its error is "
                           f"above)")
        settings, rows = json.loads(out.read_text())
    return settings, rows


def _pinned_bench(name: str, batch: int, size: int, variants, repeats: int, warmup: int) -> tuple[dict, list[dict]]:
    """``bench_inference_cores``' one-core run, in a process of its own: pinned to the first core, one thread."""
    os.sched_setaffinity(0, {affinity()[0]})
    settings = thread_settings(1, "one")
    rows = bench_inference(name, batch, size, variants, repeats, warmup, threads=1)
    return settings, [dict(row, cores="one") for row in rows]


def inference_preamble(machine: dict, variants) -> dict:
    """The head of an inference result: the ``variants`` this machine runs, a one-line note for each kind it cannot
    (``unavailable_variants``), and the busy warning (None on a machine no busier than its cores)."""
    unknown = [v for v in variants if v not in VARIANT_BUILDERS]
    if unknown:  # before any model is built: a run can take minutes
        raise UsageError(f"unknown variant {unknown[0]!r}; choose from: {', '.join(INFERENCE_VARIANTS)}")
    skipped = unavailable_variants(variants)
    return dict(variants=[v for v in variants if v not in skipped], notes=sorted(set(skipped.values())),
                busy_warning=busy_warning(machine["load_average_1min"], machine["cores"] or 1))


def inference_groups(models, batches, size: int, variants, modes, threads: Optional[int] = None, repeats: int = 10,
                     warmup: int = 3):
    """``(settings, rows)`` of ``bench_inference_cores`` for each core mode, model and batch in turn."""
    for mode in modes:
        for name in models:
            for batch in batches:
                yield bench_inference_cores(name, batch, size, variants, mode, threads, repeats, warmup)


def physical_floor(name: str, batch: int, size: int, peak: dict) -> dict:
    """The model's FLOPs (2 x MAdds) over the CPU's peak: no implementation can be faster than this."""
    flops = 2 * count_madds(create_model(name), size) * batch
    return dict(model=name, batch=batch, size=size, gflops=flops / 1e9,
                floor_ms_measured_peak=1000 * flops / (peak["measured_gflops"] * 1e9),
                floor_ms_nominal_peak=1000 * flops / (peak["nominal_gflops"] * 1e9) if peak["nominal_gflops"] else None)


RATIO_HEADERS = {"speedup_vs_torchvision_eager": "vs tv", "speedup_vs_best_by_hand": "vs hand",
                 "speedup_vs_torchvision_loop": "ratio"}


def format_rows(rows: list[dict], ratio_keys: Sequence[str]) -> str:
    """A plain-text table: model, batch, size, (for inference) cores and threads, variant, ms, images/s and one
    column per key of ``ratio_keys`` (``RATIO_HEADERS`` names them; blank where a row has no such ratio)."""
    threads = any("threads" in r for r in rows)
    lines = [f"{'model':<18} {'batch':>5} {'size':>4} " + (f"{'cores':>5} {'thr':>3} " if threads else "")
             + f" {'variant':<24} {'ms':>9} {'img/s':>9}" + "".join(f" {RATIO_HEADERS.get(k, k):>7}"
                                                                    for k in ratio_keys)]
    for r in rows:
        line = f"{r['model']:<18} {r['batch']:>5} {r['size']:>4} "
        if threads:
            line += f"{r.get('cores', ''):>5} {r.get('threads', ''):>3} "
        line += f" {r['variant']:<24} {r['ms']:>9.2f} {r['images_per_s']:>9.1f}"
        lines.append(line + "".join(f" {r[k]:>7.2f}" if r.get(k) else f" {'':>7}" for k in ratio_keys))
    return "\n".join(lines)


def default_variants(quick: bool) -> tuple[str, ...]:
    """``--quick`` leaves out the paths that take minutes to prepare (torch.compile)."""
    return tuple(v for v in INFERENCE_VARIANTS if not (quick and v == "compile"))
