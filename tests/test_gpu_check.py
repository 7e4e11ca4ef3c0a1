"""benchmarks/gpu_check.sh --dry-run: the GPU check's code paths on the CPU at tiny sizes, so that the script a GPU
machine runs cannot rot between the rare runs on one."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("tests/test_gpu.py", "training img/s, Large", "inference img/s, Large", "JPEG loading img/s")


def test_the_dry_run_prints_every_row_of_the_table_and_writes_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("GPU: ") and "torch " in lines[0] and "CUDA " in lines[0] and "DRY RUN" in lines[0]
    for row in ROWS:
        assert any(line.startswith(row) for line in lines), (row, result.stdout)
    report = json.loads(out.read_text())
    assert report["benchmark"] == "gpu_check" and report["dry_run"] is True
    assert report["tests"]["returncode"] == 0 and report["tests"]["summary"]
    variants = {row["variant"]: row["images_per_s"] for row in report["training"]}
    assert set(variants) == {"torchvision + SGD loop", "mobilenetv3 train step"} and min(variants.values()) > 0
    assert report["inference"]["mobilenetv3"] > 0 and report["inference"]["torchvision"] > 0
    assert report["jpeg"]["gpu"] > 0 and report["jpeg"]["cpu"] > 0


def test_without_a_gpu_the_real_run_says_so_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        return  # there the real run is the check itself
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out",
                             str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--dry-run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.json").exists()
