"""The benchmark scripts run and write their JSON (their figures are not checked here)."""
import json
import subprocess
import sys
from pathlib import Path

from mobilenetv3.data import datasets

ROOT = Path(__file__).resolve().parents[1]


def test_loader_benchmark_quick(tmp_path):
    out = tmp_path / "loader.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "loader.py"), "--quick", "--out", str(out),
               "--threads", "1"]  # one thread: two would crawl on a 2-core machine that is busy elsewhere
    if not (datasets.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file():
        command += ["--dataset", "synthetic"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stdout or "MISS" in result.stdout
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["benchmark"] == "loader"
    assert {"cpu", "cores", "torch", "torch_threads"} <= set(report["machine"])
    assert report["settings"]["image_size"] == 32 and report["settings"]["preset"] == "small"
    pipelines = {(row["pipeline"], row["workers"]) for row in report["loaders"]}
    workers = report["settings"]["default_workers"]
    assert {("mobilenetv3", workers), ("mobilenetv3", 0), ("torchvision", workers)} <= pipelines
    assert all(row["images_per_s"] > 0 for row in report["loaders"])
    assert set(report["train_step"]) == {"channels_last", "contiguous"}
    assert report["verdict"] in ("PASS", "MISS") and report["target_ratio"] == 5.0
    assert report["loader_to_train_ratio"] > 0 and report["ratio_to_torchvision"] > 0
