"""The inference benchmark's thread control, ratios and busy warning, and its OpenVINO paths in a quick run.

Timings are never checked: only that the run records what produced them and derives the ratios from the right
references.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenetv3.benchmarking import add_ratios, affinity, core_modes
from mobilenetv3.errors import UsageError
from mobilenetv3.tasks.bench import run_bench

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
TORCH_ONLY = ["torchvision eager", "eager"]  # no exports: a run of a few seconds


def _row(variant: str, ms: float, batch: int = 1, cores: str = "all") -> dict:
    return dict(model="mobilenetv3_small", batch=batch, size=32, threads=2, cores=cores, variant=variant, ms=ms)


def test_the_by_hand_reference_is_the_faster_of_the_two_in_each_group():
    rows = add_ratios([
        _row("torchvision eager", 40.0), _row("torchvision onnxruntime", 10.0), _row("torchvision openvino", 8.0),
        _row("openvino fp32", 4.0), _row("openvino int8", 2.0),
        # batch 8: ONNX Runtime is the faster by-hand path
        _row("torchvision eager", 80.0, batch=8), _row("torchvision onnxruntime", 16.0, batch=8),
        _row("torchvision openvino", 20.0, batch=8), _row("onnxruntime fp32", 8.0, batch=8),
        # one core: only one by-hand path ran
        _row("torchvision eager", 30.0, cores="one"), _row("torchvision openvino", 12.0, cores="one"),
        _row("openvino fp32", 6.0, cores="one")])
    by_variant = {(r["batch"], r["cores"], r["variant"]): r for r in rows}
    ours = by_variant[(1, "all", "openvino fp32")]
    assert ours["best_by_hand"] == "torchvision openvino" and ours["speedup_vs_best_by_hand"] == 8.0 / 4.0
    assert ours["speedup_vs_torchvision_eager"] == 40.0 / 4.0
    assert by_variant[(1, "all", "openvino int8")]["speedup_vs_own_fp32"] == 4.0 / 2.0
    batch8 = by_variant[(8, "all", "onnxruntime fp32")]
    assert batch8["best_by_hand"] == "torchvision onnxruntime" and batch8["speedup_vs_best_by_hand"] == 16.0 / 8.0
    one = by_variant[(1, "one", "openvino fp32")]
    assert one["best_by_hand"] == "torchvision openvino" and one["speedup_vs_best_by_hand"] == 12.0 / 6.0
    assert "speedup_vs_own_fp32" not in ours


def test_a_group_without_references_has_no_ratios():
    (row,) = add_ratios([_row("eager", 5.0)])
    assert row["best_by_hand"] is None and row["speedup_vs_best_by_hand"] is None
    assert row["speedup_vs_torchvision_eager"] is None


def test_thread_options_are_checked():
    assert core_modes("both", None) == ("one", "all") and core_modes("all", 3) == ("all",)
    for cores, threads in (("one", 2), ("all", 0), ("some", None)):
        with pytest.raises(UsageError):
            core_modes(cores, threads)
    result = run_cli("bench", "inference", "--one-core", "--threads", "2", "--variants", "eager")
    assert result.returncode == 2 and "--one-core runs one thread" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("load, warned", [(99.0, True), (0.0, False)])
def test_a_busy_machine_is_warned_about_and_its_load_recorded(tmp_path, monkeypatch, load, warned):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    out = tmp_path / "bench.json"
    result = run_cli("bench", "inference", "--model", "mobilenetv3_small", "--batch-size", "1", "--image-size", "32",
                     "--quick", "--threads", "1", "--variants", *TORCH_ONLY, "--out", out)
    assert result.returncode == 0, result.stderr
    cores = os.cpu_count()
    assert (f"warning: load average {load:.2f} is above the {cores} cores" in result.stdout) is warned
    report = json.loads(out.read_text())
    assert report["machine"]["load_average_1min"] == load
    assert (report["busy_warning"] is not None) is warned
    assert report["thread_settings"]["all"]["load_average_1min"] == load
    assert "vs hand" in result.stdout.splitlines()[1 + warned]  # the table's header, after the machine line


def test_one_core_and_all_cores_in_one_run():
    before, torch_threads = affinity(), torch.get_num_threads()
    result = run_bench("inference", ["mobilenetv3_small"], [1], 32, quick=True, cores="both", variants=TORCH_ONLY)
    one, every = result["thread_settings"]["one"], result["thread_settings"]["all"]
    assert one["threads"] == 1 and len(one["affinity"]) == 1 and one["onnxruntime"]["intra_op_num_threads"] == 1
    assert every["threads"] == len(before) and every["affinity"] == before
    assert every["openvino"]["INFERENCE_NUM_THREADS"] == len(before)
    assert every["onnxruntime"]["allow_spinning"] == "0" and every["openvino"]["PERFORMANCE_HINT"] == "LATENCY"
    assert sorted((r["cores"], r["threads"], r["variant"]) for r in result["rows"]) == sorted(
        [("one", 1, v) for v in TORCH_ONLY] + [("all", len(before), v) for v in TORCH_ONLY])
    assert affinity() == before and torch.get_num_threads() == torch_threads  # this process is left as it was


def test_quick_run_with_openvino_and_its_report(tmp_path):
    pytest.importorskip("openvino")
    results = tmp_path / "results"
    # One by-hand path (the ONNX export takes long): the pick of the faster of two is checked above. ExecuTorch
    # (half a minute more) has a slow test of its own, below.
    variants = ["torchvision eager", "torchvision openvino", "openvino fp32", "openvino int8", "openvino bf16"]
    command = [sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--quick", "--cores", "all", "--threads",
               "1", "--variants", *variants, "--out", str(results / "inference.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)  # OpenVINO in a process of its own
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((results / "inference.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert {"torchvision eager", "torchvision openvino", "openvino fp32", "openvino int8"} <= set(rows)
    for row in rows.values():
        assert row["best_by_hand"] == "torchvision openvino" and row["threads"] == 1 and row["cores"] == "all"
        assert row["speedup_vs_best_by_hand"] == pytest.approx(rows["torchvision openvino"]["ms"] / row["ms"])
        assert row["speedup_vs_torchvision_eager"] == pytest.approx(rows["torchvision eager"]["ms"] / row["ms"])
    assert rows["openvino int8"]["speedup_vs_own_fp32"] > 0
    assert report["thread_settings"]["all"]["threads"] == 1 and "load_average_1min" in report["machine"]
    if "openvino bf16" not in rows:
        assert "bf16: not native on this CPU" in report["notes"]
    markdown = tmp_path / "BENCHMARKS.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--results", str(results),
                           "--out", str(markdown)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = markdown.read_text()
    assert "| vs torchvision eager | vs best by hand |" in text and "### All cores, 1 thread(s)" in text
    assert "mobilenetv3_small batch 1, all cores, 1 thread(s): best accurate path" in text
    assert "target >= 1.5x" in text and "target >= 4x" in text and "openvino int8" in text
    flags = set(report["machine"]["cpu_flags"])
    assert ("the INT8 speed targets" in text) is not bool(flags & {"avx512_vnni", "avx_vnni"})


@pytest.mark.slow  # ExecuTorch's lowering: 20-40 s on 2 cores
def test_quick_run_with_executorch(tmp_path):
    """The benchmark's ExecuTorch path at batch 1 (torch.export once fixed a batch-1 example's batch at 1)."""
    out = tmp_path / "inference.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--quick", "--cores", "all", "--threads",
               "1", "--variants", "torchvision eager", "executorch fp32", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    if importlib.util.find_spec("executorch") is None:
        assert "executorch: not installed" in report["notes"] and "executorch: not installed" in done.stdout
        return
    row = rows["executorch fp32"]
    assert row["batch"] == 1 and row["ms"] > 0
    assert row["speedup_vs_torchvision_eager"] == pytest.approx(rows["torchvision eager"]["ms"] / row["ms"])


def test_ncnn_by_hand_joins_the_by_hand_references():
    rows = add_ratios([_row("torchvision eager", 40.0), _row("torchvision onnxruntime", 10.0),
                       _row("torchvision openvino", 11.0), _row("torchvision ncnn", 9.0), _row("ncnn fp32", 6.0)])
    ours = {r["variant"]: r for r in rows}["ncnn fp32"]
    assert ours["best_by_hand"] == "torchvision ncnn" and ours["speedup_vs_best_by_hand"] == 9.0 / 6.0


@pytest.mark.parametrize("variants, modules", [(["ncnn fp32", "torchvision ncnn"], ("ncnn", "pnnx")),
                                               (["litert fp32"], ("ai_edge_litert", "litert_torch"))])
def test_phone_runtime_variants_run_a_small_model(variants, modules, tmp_path):
    """Ours in ncnn and LiteRT (XNNPACK) and torchvision's model converted by pnnx by hand, at 32 px, batch 2:
    each gives a row of 1000 scores per image, as eager PyTorch does."""
    from mobilenetv3.benchmarking import inference_callables, unavailable_variants

    if any(importlib.util.find_spec(module) is None for module in modules):
        runtime = variants[0].split()[0]
        assert set(unavailable_variants(variants).values()) == {f"{runtime}: not installed"}
        pytest.skip(f"{runtime} is not installed")
    assert unavailable_variants(variants) == {}
    with torch.inference_mode():
        for variant, run in inference_callables("mobilenetv3_small", 2, 32, variants, tmp_path, threads=1).items():
            scores = torch.as_tensor(np.stack(run()) if isinstance(run(), list) else run())
            assert scores.shape == (2, 1000) and torch.isfinite(scores).all(), variant
