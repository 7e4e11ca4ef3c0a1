"""benchmarks/serve.py runs its three parts against real servers (batching on and off: 1 client and a crowd;
open-loop overload; a costly request beside small ones) and writes its JSON (its figures are not checked
here: on a shared 2-core machine they mean little at this size). A tiny model (Small at width 0.5, 32 px)
keeps it fast: the time goes into starting the two servers."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from builders import write_weights

ROOT = Path(__file__).resolve().parents[1]


def test_serve_benchmark_quick(tmp_path):
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    out = tmp_path / "serve.json"
    model = write_weights(tmp_path / "tiny.pt", num_classes=10, preprocessing=dict(
        resize=36, crop=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3, in_chans=3))
    command = [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--quick", "--requests", "30",
               "--overload-seconds", "1", "--server-threads", "1", "--model", str(model), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "images/s batching on / off with 1 client(s)" in result.stdout and "target" in result.stdout
    report = json.loads(out.read_text())
    assert report["benchmark"] == "serve" and report["quick"] is True and report["settings"]["model"] == str(model)
    assert {"cpu", "cores", "torch", "cpu_flags"} <= set(report["machine"])
    assert [c["clients"] for c in report["batching"]] == [1, 4]
    for comparison in report["batching"]:
        assert [(m["mode"], m["max_batch"]) for m in comparison["modes"]] == [("batching on", 32), ("batching off", 1)]
        for mode in comparison["modes"]:
            assert mode["failed"] == 0, mode["errors"]
            assert mode["images_per_s"] > 0 and 0 < mode["p50_ms"] <= mode["p99_ms"]
        assert comparison["modes"][1]["mean_batch"] == 1.0  # --max-batch 1: every model run holds one image
        assert comparison["ratio"] > 0
    assert report["batching"][0]["modes"][0]["mean_batch"] == 1.0  # a lone client's requests run alone
    sustainable, overload = report["overload"]["phases"]
    assert overload["rate"] == pytest.approx(10 * sustainable["rate"])
    for phase in (sustainable, overload):
        assert phase["answered"] > 0 and phase["answered"] + phase["rejected"] + phase["gave_up"] + \
            sum(phase["other"].values()) == phase["requests"]
        assert phase["images_computed"] >= phase["answered"] and phase["rss_before_mb"] > 0
    costly = report["costly"]
    assert costly["status"] == 200 and costly["small_baseline_p50_ms"] > 0
    assert costly["over_budget_status"] == 413 and "megapixels per request" in costly["over_budget_error"]
    assert set(report["targets"]) == {"lone_ratio", "crowd_ratio", "overload_p99_ratio", "rejected_p99_ms",
                                      "other_statuses", "rss_growth_pct", "abandoned_images", "costly_delay_ms",
                                      "over_budget_refused"}
    assert report["targets"]["over_budget_refused"]["met"] is True


def test_serve_reload_benchmark_quick(tmp_path):
    """benchmarks/serve_reload.py: clients on a repository server while new versions are loaded; every request
    answered, every version in turn."""
    pytest.importorskip("uvicorn")
    out = tmp_path / "reload.json"
    model = write_weights(tmp_path / "tiny.pt", num_classes=10, preprocessing=dict(
        resize=36, crop=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3, in_chans=3))
    command = [sys.executable, str(ROOT / "benchmarks" / "serve_reload.py"), "--quick", "--clients", "2",
               "--settle-s", "0.5", "--model", str(model), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["failed"] == 0 and report["requests"] > 0 and report["target"]["met"] is True
    assert [r["status"] for r in report["reloads"]] == [200, 200] and report["versions_seen"][-1] == "3"
    assert "0 failed over 2 reloads under 2 clients: PASS" in result.stdout
