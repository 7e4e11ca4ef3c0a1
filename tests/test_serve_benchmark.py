"""benchmarks/serve.py runs two real servers, batching on and off, and writes its JSON (its figures are not
checked here: on a shared 2-core machine they mean little at this size). A tiny model (Small at width 0.5,
32 px) keeps it fast: the time goes into starting the two servers."""
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
    command = [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--quick", "--requests", "60", "--clients", "4",
               "--warmup", "8", "--server-threads", "1", "--model", str(model), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "images/s batching on / off" in result.stdout and "target" in result.stdout
    report = json.loads(out.read_text())
    assert report["benchmark"] == "serve" and report["quick"] is True and report["settings"]["model"] == str(model)
    assert {"cpu", "cores", "torch", "cpu_flags"} <= set(report["machine"])
    assert [(m["mode"], m["max_batch"]) for m in report["modes"]] == [("batching on", 32), ("batching off", 1)]
    for mode in report["modes"]:
        assert mode["requests"] == 60 and mode["failed"] == 0, mode["errors"]
        assert mode["images_per_s"] > 0 and 0 < mode["p50_ms"] <= mode["p99_ms"]
        assert mode["rss_first_mb"] > 0 and mode["rss_growth_pct"] is not None
        assert sum(r["requests"] for r in mode["rounds"]) == 60 and len(mode["rounds"]) == 2
    assert report["modes"][1]["mean_batch"] == 1.0  # --max-batch 1: every model run holds one image
    assert 1 <= report["modes"][0]["mean_batch"] <= 4  # at most one image per client in flight
    assert set(report["targets"]) == {"speedup", "p99_over_p50", "failed", "rss_growth_pct"}
    assert report["targets"]["failed"]["met"] is True
