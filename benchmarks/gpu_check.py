"""The GPU check, one table: tests/test_gpu.py, then training and inference images/s of MobileNetV3-Large at
224 px next to torchvision's mobilenet_v3_large in the same run, and JPEG loading with --decode gpu next to the
CPU loader. Under 8 minutes on one GPU (most of it torch.compile and the tests).

    bash benchmarks/gpu_check.sh              # on a GPU machine; writes benchmarks/results/gpu_check.json
    bash benchmarks/gpu_check.sh --dry-run    # the same code paths on the CPU at tiny sizes (figures mean nothing)

Training: bf16 autocast, channels_last and torch.compile on both sides (tasks.bench.bench_training: our train step,
torchvision's model in a bare SGD loop). Inference: bf16 autocast and channels_last, eager, batch 256, timed in
interleaved rounds (bench.time_interleaved). JPEG loading: benchmarks/loader.py's generated ~500x375 JPEGs of
real photographs through the seed-imagenet training recipe, our loader with --decode cpu (PIL in worker
processes) and --decode gpu.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "gpu_check.json"
sys.path.insert(0, str(HERE))

# What each measurement runs with: on a GPU, and for --dry-run on the CPU (tiny, no torch.compile).
SETTINGS = dict(
    gpu=dict(device="cuda", size=224, train_batch=256, train_steps=20, train_warmup=3, compile=True,
             infer_batch=256, infer_repeats=20, infer_warmup=5, jpeg_images=1024, jpeg_batch=128, jpeg_batches=6),
    dry=dict(device="cpu", size=32, train_batch=4, train_steps=1, train_warmup=1, compile=False,
             infer_batch=4, infer_repeats=2, infer_warmup=1, jpeg_images=16, jpeg_batch=4, jpeg_batches=2),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same code paths on the CPU at tiny sizes")
    p.add_argument("--out", type=Path, help=f"JSON result (default {DEFAULT_OUT}; a dry run: a temporary file)")
    p.add_argument("--skip-tests", action="store_true", help="leave out tests/test_gpu.py")
    return p.parse_args(argv)


def versions(device: torch.device) -> dict:
    """The machine, with the GPU's name and the CUDA version torch was built with."""
    from mobilenetv3.benchmarking import machine_info

    info = dict(machine_info(), cuda=torch.version.cuda)
    info["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (dry run on the CPU)"
    return info


# --------------------------------------------------------------------------------------------- tests
def run_gpu_tests(timeout: float = 360) -> dict:
    """``pytest tests/test_gpu.py`` in a fresh process: its exit code and summary line."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/test_gpu.py"]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        output, returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        output, returncode = f"timed out after {timeout:.0f} s: {err.stdout or ''}", 124
    found = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|error).*?)\s*=*$", output, re.MULTILINE)
    return dict(returncode=returncode, summary=found[-1] if found else output.strip().splitlines()[-1:],
                seconds=time.perf_counter() - start, tail=output[-3000:])


# -------------------------------------------------------------------------------------- throughput
def training(s: dict, device: torch.device) -> list[dict]:
    """Our train step and torchvision's bare loop, both bf16 autocast + channels_last (+ torch.compile)."""
    from mobilenetv3.tasks.bench import bench_training

    return bench_training("mobilenetv3_large", s["train_batch"], s["size"], steps=s["train_steps"],
                          warmup=s["train_warmup"], num_classes=1000, device=str(device), amp_dtype=torch.bfloat16,
                          compile=s["compile"], channels_last=True, reference_channels_last=True)


@torch.inference_mode()
def inference(s: dict, device: torch.device) -> dict:
    """Images/s of a forward pass at batch ``infer_batch``, ours and torchvision's, bf16 autocast, channels_last."""
    import statistics

    from mobilenetv3.benchmarking import device_sync, time_interleaved, torchvision_model
    from mobilenetv3.models import create_model

    torch.manual_seed(0)
    x = torch.randn(s["infer_batch"], 3, s["size"], s["size"], device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    models = {"torchvision": torchvision_model("mobilenetv3_large"), "mobilenetv3": create_model("mobilenetv3_large")}
    fns = {}
    for name, model in models.items():
        model = model.eval().to(device, memory_format=torch.channels_last)

        def forward(m=model):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return m(x)

        fns[name] = forward
    runs = time_interleaved(fns, s["infer_warmup"], s["infer_repeats"], sync=device_sync(device))
    return {name: s["infer_batch"] / statistics.median(times) for name, times in runs.items()}


def jpeg_loading(s: dict, device: torch.device) -> dict:
    """Images/s of our training loader over generated JPEGs: --decode cpu against --decode gpu."""
    from loader import images_per_second, make_jpeg_folder, ours

    from mobilenetv3.benchmarking import device_sync
    from mobilenetv3.data import build_preset, default_workers
    from mobilenetv3.data.datasets import IMAGENET_STATS, image_folder

    sync, workers = device_sync(device), default_workers()
    with tempfile.TemporaryDirectory() as folder:
        make_jpeg_folder(Path(folder), s["jpeg_images"])
        data = image_folder(Path(folder), "train")
        recipe, pre = build_preset("seed-imagenet", s["size"], *IMAGENET_STATS, 3)
        rates = {}
        for name, decode in (("cpu", None), ("gpu", device)):
            epoch = ours(data, recipe, pre, s["jpeg_batch"], workers, 0, decode_device=decode)

            def synced(make=epoch):  # the clock stops when the device has the batch, not when it was queued
                for batch in make():
                    sync()
                    yield batch

            rates[name] = images_per_second(synced, 1, s["jpeg_batches"])
    return dict(rates, workers=workers, images=s["jpeg_images"], batch=s["jpeg_batch"])


# ------------------------------------------------------------------------------------------ report
def table(result: dict) -> str:
    """The summary: one row per check, ours next to the reference."""
    s, m = result["settings"], result["machine"]
    rows = [("check", "ours", "reference", "ratio")]
    tests = result.get("tests")
    if tests is not None:
        verdict = "ok" if tests["returncode"] == 0 else f"FAILED (exit {tests['returncode']})"
        rows.append(("tests/test_gpu.py", f"{tests['summary']}", "", verdict))
    train = {row["variant"]: row["images_per_s"] for row in result["training"]}
    ours, theirs = train["mobilenetv3 train step"], train["torchvision + SGD loop"]
    rows.append((f"training img/s, Large {s['size']} px, batch {s['train_batch']}, bf16, channels_last"
                 f"{', compile' if s['compile'] else ''}", f"{ours:.1f}", f"torchvision {theirs:.1f}",
                 f"{ours / theirs:.2f}x"))
    infer = result["inference"]
    rows.append((f"inference img/s, Large {s['size']} px, batch {s['infer_batch']}, bf16, channels_last",
                 f"{infer['mobilenetv3']:.1f}", f"torchvision {infer['torchvision']:.1f}",
                 f"{infer['mobilenetv3'] / infer['torchvision']:.2f}x"))
    jpeg = result["jpeg"]
    rows.append((f"JPEG loading img/s, seed-imagenet {s['size']} px, batch {jpeg['batch']}: --decode gpu vs cpu",
                 f"{jpeg['gpu']:.1f}", f"cpu loader {jpeg['cpu']:.1f} ({jpeg['workers']} worker(s))",
                 f"{jpeg['gpu'] / jpeg['cpu']:.2f}x"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    lines = [f"GPU: {m['gpu']}; torch {m['torch']}, CUDA {m['cuda']}"
             + ("; DRY RUN on the CPU, tiny sizes: the figures mean nothing" if result["dry_run"] else "")]
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    """Every check, timed; the result as written to JSON."""
    s = SETTINGS["dry" if args.dry_run else "gpu"]
    device = torch.device(s["device"])
    result = dict(benchmark="gpu_check", dry_run=args.dry_run, time=time.strftime("%Y-%m-%dT%H:%M:%S"),
                  machine=versions(device), settings=s, seconds={})
    steps = [("training", training), ("inference", inference), ("jpeg", jpeg_loading)]
    if not args.skip_tests:
        steps.insert(0, ("tests", lambda settings, dev: run_gpu_tests()))
    for name, measure in steps:
        start = time.perf_counter()
        result[name] = measure(s, device)
        result["seconds"][name] = time.perf_counter() - start
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine, or with --dry-run", file=sys.stderr)
        return 2
    result = run(args)
    print(table(result))
    out = args.out or (Path(tempfile.gettempdir()) / "gpu_check-dry-run.json" if args.dry_run else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out} ({sum(result['seconds'].values()):.0f} s)")
    return 1 if result.get("tests", {}).get("returncode", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
