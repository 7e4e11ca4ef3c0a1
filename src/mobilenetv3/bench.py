"""Side-by-side benchmarks: our paths against torchvision's in the same process, as ratios.

Every figure is the median of several timed repeats after warm-up, measured next to its reference
in the same run. ``benchmarks/`` runs the full suite and renders ``BENCHMARKS.md``; ``mobilenetv3
bench`` runs the common cases. Nothing here asserts a time: tests only check that it runs.
"""
from __future__ import annotations

import copy
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .models import count_madds, create_model
from .errors import UsageError

TORCHVISION_NAMES = {"mobilenetv3_large": "mobilenet_v3_large", "mobilenetv3_small": "mobilenet_v3_small"}


# ------------------------------------------------------------------------------------ measuring
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


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


# ------------------------------------------------------------------------------------ inference
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with every BatchNorm folded into the convolution before it (eval mode only)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from .models.layers import ConvBNAct

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


def _onnx_session(model: nn.Module, example: torch.Tensor, folder: Path, tag: str, int8: bool = False):
    """ONNX Runtime running ``model``'s export (INT8: calibrated on random images, for latency only)."""
    from .export import OnnxModule, export_onnx, quantize_onnx

    path = folder / f"{tag}.onnx"
    if not hasattr(model, "model_name"):  # torchvision's model: the same exporter, no metadata
        model.model_name, model.model_kwargs = tag, {}
    export_onnx(model, path, example[:2] if len(example) > 1 else example.repeat(2, 1, 1, 1))
    if int8:
        generator = torch.Generator().manual_seed(0)
        calibration = [torch.randn(8, *example.shape[1:], generator=generator) for _ in range(4)]
        path = quantize_onnx(path, folder / f"{tag}.int8.onnx", calibration)
    # Without spinning: after each run ONNX Runtime's threads otherwise busy-wait for more work and take
    # the two cores from the variant timed next (torchvision eager at batch 1: 111 ms that way, 21 ms without).
    return OnnxModule(path, spinning=False)


INFERENCE_VARIANTS = ("torchvision eager", "torchvision onnxruntime", "eager", "eager channels_last", "bn folded",
                      "torchscript", "compile", "onnxruntime fp32", "onnxruntime int8")


def inference_callables(name: str, batch: int, size: int, variants, folder: Path) -> dict[str, Callable]:
    """``{variant: fn}``, each running one forward pass of a ``batch`` of ``size`` px images."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    ours = create_model(name).eval()
    fns: dict[str, Callable] = {}
    for variant in variants:
        if variant == "torchvision eager":
            reference = torchvision_model(name)
            fns[variant] = lambda m=reference: m(x)
        elif variant == "torchvision onnxruntime":
            fns[variant] = lambda s=_onnx_session(torchvision_model(name), x, folder, f"tv_{name}"): s(x)
        elif variant == "eager":
            fns[variant] = lambda: ours(x)
        elif variant == "eager channels_last":
            cl_model = copy.deepcopy(ours).to(memory_format=torch.channels_last)
            cl_x = x.contiguous(memory_format=torch.channels_last)
            fns[variant] = lambda: cl_model(cl_x)
        elif variant == "bn folded":
            folded = fold_batchnorm(ours).to(memory_format=torch.channels_last)
            cl_x = x.contiguous(memory_format=torch.channels_last)
            fns[variant] = lambda: folded(cl_x)
        elif variant == "torchscript":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(ours, x)))
            fns[variant] = lambda: scripted(x)
        elif variant == "compile":
            compiled = torch.compile(fold_batchnorm(ours))
            fns[variant] = lambda: compiled(x)
        elif variant == "onnxruntime fp32":
            fns[variant] = lambda s=_onnx_session(ours, x, folder, name): s(x)
        elif variant == "onnxruntime int8":
            fns[variant] = lambda s=_onnx_session(ours, x, folder, name, int8=True): s(x)
        else:
            raise UsageError(f"unknown variant {variant!r}; choose from: {', '.join(INFERENCE_VARIANTS)}")
    return fns


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
                    warmup: int = 3) -> list[dict]:
    """Latency of each variant; ``ratio`` is torchvision eager's time over the variant's (higher is faster)."""
    with tempfile.TemporaryDirectory() as folder:
        runs = time_interleaved(inference_callables(name, batch, size, variants, Path(folder)), warmup, repeats)
    rows = []
    for variant, times in runs.items():
        median = statistics.median(times)
        rows.append(dict(kind="inference", model=name, batch=batch, size=size, variant=variant, ms=1000 * median,
                         images_per_s=batch / median, runs_ms=[1000 * t for t in times]))
    reference = next((r["ms"] for r in rows if r["variant"] == "torchvision eager"), None)
    for row in rows:
        row["speedup_vs_torchvision_eager"] = reference / row["ms"] if reference else None
    return rows


# ------------------------------------------------------------------------------------- training
def _batches(count: int, batch: int, size: int, num_classes: int, in_chans: int = 3):
    from .data.loader import Batch

    generator = torch.Generator().manual_seed(0)
    return [Batch(torch.randn(batch, in_chans, size, size, generator=generator),
                  torch.randint(0, num_classes, (batch,), generator=generator), 0) for _ in range(count)]


def bench_training(name: str, batch: int, size: int, steps: int = 6, warmup: int = 2, num_classes: int = 10,
                   channels_last: bool = True, device: str = "cpu", amp_dtype: Optional[torch.dtype] = None,
                   compile: bool = False, reference_channels_last: bool = False) -> list[dict]:
    """Images/s of the project's training step (``engine.train_one_epoch`` with the run's loss, optimizer,
    schedule and log) against a bare torchvision model + SGD + cross-entropy loop, on the same tensors.

    ``device``, ``amp_dtype`` (autocast) and ``compile`` (``torch.compile``) apply to both sides;
    ``channels_last`` to ours, ``reference_channels_last`` to torchvision's."""
    from .build import build_model
    from .config import ModelConfig
    from .engine import TrainOptions, train_one_epoch
    from .optim import build_optimizer, param_groups, smoothed_cross_entropy, warmup_cosine_lr
    from .runlog import RunLog

    device = torch.device(device)
    batches = [b._replace(images=b.images.to(device), labels=b.labels.to(device))
               for b in _batches(steps + warmup, batch, size, num_classes)]
    torch.manual_seed(0)
    bare = _bare_loop(torchvision_model(name, num_classes).train().to(device), device, amp_dtype, compile,
                      reference_channels_last)
    ours = build_model(ModelConfig(model=name, dropout=0.2), num_classes, 3).to(device)
    if channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    optimizer = build_optimizer("sgd", param_groups(ours, 1e-4), 0.01)
    step_model = torch.compile(ours) if compile else ours  # as a run with --compile wraps it
    with tempfile.TemporaryDirectory() as folder:
        runlog = RunLog(Path(folder), True, False, 1, steps + warmup)

        options = TrainOptions(loss_fn=lambda lo, t: smoothed_cross_entropy(lo, t, 0.1),
                               lr_at=lambda s: warmup_cosine_lr(s, 1000, 10, 0.01), device=device,
                               amp_dtype=amp_dtype, channels_last=channels_last)

        def project(items):
            train_one_epoch(step_model, items, optimizer, options, global_step=0,
                            on_step=lambda step: runlog.step(0, 0, dict(vars(step), mean_loss=step.loss_sum
                                                                        / step.loss_steps)))

        rows = [_timed_steps(fn, batches, warmup, device, dict(kind="training", model=name, batch=batch, size=size,
                                                                variant=label))
                for label, fn in (("torchvision + SGD loop", bare), ("mobilenetv3 train step", project))]
        runlog.close()
    rows[1]["speedup_vs_torchvision_loop"] = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    rows[0]["speedup_vs_torchvision_loop"] = 1.0
    return rows


def _bare_loop(reference: nn.Module, device: torch.device, amp_dtype: Optional[torch.dtype], compile: bool,
               channels_last: bool) -> Callable:
    """torchvision's model in the plainest training loop: SGD, cross-entropy, nothing else."""
    import torch.nn.functional as F

    if channels_last:
        reference = reference.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    forward = torch.compile(reference) if compile else reference

    def bare(items):
        for b in items:
            images = b.images.contiguous(memory_format=torch.channels_last) if channels_last else b.images
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = F.cross_entropy(forward(images), b.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return bare


def _timed_steps(fn: Callable, batches: list, warmup: int, device: torch.device, row: dict) -> dict:
    """``row`` with the median step time of ``fn`` over ``batches[warmup:]``, one step a call, after warm-up."""
    sync = device_sync(device)
    fn(batches[:warmup])
    sync()
    start = time.perf_counter()
    per_step = []
    for b in batches[warmup:]:
        step_start = time.perf_counter()
        fn([b])
        sync()
        per_step.append(time.perf_counter() - step_start)
    median = statistics.median(per_step)
    return dict(row, ms=1000 * median, images_per_s=row["batch"] / median, total_s=time.perf_counter() - start)


def physical_floor(name: str, batch: int, size: int, peak: dict) -> dict:
    """The model's FLOPs (2 x MAdds) over the CPU's peak: no implementation can be faster than this."""
    flops = 2 * count_madds(create_model(name), size) * batch
    return dict(model=name, batch=batch, size=size, gflops=flops / 1e9,
                floor_ms_measured_peak=1000 * flops / (peak["measured_gflops"] * 1e9),
                floor_ms_nominal_peak=1000 * flops / (peak["nominal_gflops"] * 1e9) if peak["nominal_gflops"] else None)


def format_rows(rows: list[dict], ratio_key: str) -> str:
    lines = [f"{'model':<18} {'batch':>5} {'size':>4}  {'variant':<26} {'ms':>9} {'img/s':>9} {'ratio':>6}"]
    for r in rows:
        ratio = r.get(ratio_key)
        lines.append(f"{r['model']:<18} {r['batch']:>5} {r['size']:>4}  {r['variant']:<26} {r['ms']:>9.2f} "
                     f"{r['images_per_s']:>9.1f} {ratio:>6.2f}" if ratio else
                     f"{r['model']:<18} {r['batch']:>5} {r['size']:>4}  {r['variant']:<26} {r['ms']:>9.2f} "
                     f"{r['images_per_s']:>9.1f} {'':>6}")
    return "\n".join(lines)


def default_variants(quick: bool) -> tuple[str, ...]:
    """``--quick`` leaves out the paths that take minutes to prepare (torch.compile)."""
    return tuple(v for v in INFERENCE_VARIANTS if not (quick and v == "compile"))


def run_bench(what: str, models, batches, size: int, quick: bool, out: Optional[Path] = None) -> dict:
    """The ``mobilenetv3 bench`` entry point: one kind of benchmark, rows plus the machine."""
    import json

    from .models import list_models

    for name in models:
        if name not in list_models():
            raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    batches = batches or ([1, 32] if what == "inference" else [32])
    if min(batches) < 1 or size < 32:
        raise UsageError("--batch-size must be at least 1 and --image-size at least 32")
    result = dict(machine=machine_info(), kind=what, rows=[])
    repeats = 3 if quick else 10
    for name in models:
        for batch in batches:
            if what == "inference":
                result["rows"] += bench_inference(name, batch, size, default_variants(quick), repeats=repeats,
                                                  warmup=1 if quick else 3)
            else:
                result["rows"] += bench_training(name, batch, size, steps=2 if quick else 6)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    return result
