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


def test_time_to_accuracy_counts_the_wall_clock_across_resumes(tmp_path):
    # wall_time in metrics.jsonl restarts at 0 when `--resume` continues a run: epoch 3 is the first after one.
    records = [dict(epoch=1, epoch_time=60.0, wall_time=70.0, val_top1=0.90, ema_top1=0.91, train_loss=1.0),
               dict(epoch=2, epoch_time=60.0, wall_time=140.0, val_top1=0.94, ema_top1=0.93, train_loss=0.8),
               dict(epoch=3, epoch_time=30.0, wall_time=40.0, val_top1=0.949, ema_top1=0.945, train_loss=0.7),
               dict(epoch=4, epoch_time=60.0, wall_time=110.0, val_top1=0.951, ema_top1=0.948, train_loss=0.6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "tta.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), str(tmp_path),
                             "--target", "0.95", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["resumes"] == 1 and report["epochs"] == 4
    assert report["reached"]["epoch"] == 4
    assert report["reached"]["train_minutes"] == (60 + 60 + 30 + 60) / 60
    assert report["reached"]["wall_minutes"] == (140 + 110) / 60
    assert report["final_top1"] == 0.951 and report["best_ema_top1"] == 0.948


def test_time_to_accuracy_names_a_wrong_argument_in_one_line(tmp_path):
    script = str(ROOT / "benchmarks" / "time_to_accuracy.py")
    (tmp_path / "metrics.jsonl").write_text("")
    wrong = (([str(tmp_path / "missing")], "no metrics.jsonl"), ([str(tmp_path), "--target", "95"], "--target"))
    for args, named in wrong:
        result = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and named in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_format_accuracy_scores_every_format_on_the_eval_split(tmp_path):
    """Each export of a trained tiny checkpoint is scored on the whole eval split next to eager PyTorch; the
    fp32 files predict what eager predicts (a wrong export or a wrong preprocessing would not)."""
    import mobilenetv3

    from builders import TINY

    mobilenetv3.train(None, **dict(TINY, run_dir=str(tmp_path / "run"), epochs=1))
    out = tmp_path / "acc.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "format_accuracy.py"),
                             str(tmp_path / "run" / "last.pt"), "--formats", "onnx", "torchscript", "pt2",
                             "onnx-int8", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    model = json.loads(out.read_text())["models"][0]
    rows = {row["format"]: row for row in model["rows"]}
    assert list(rows) == ["eager (PyTorch)", "onnx", "torchscript", "pt2", "onnx-int8"]
    assert model["images"] == 12  # the synthetic eval split: every image once
    for name in ("onnx", "torchscript", "pt2"):
        assert rows[name]["agreement_with_eager"] == 1.0 and rows[name]["met"], rows[name]
    assert rows["onnx-int8"]["fp32_top1"] == rows["onnx"]["top1"] and "agreement_with_fp32" in rows["onnx-int8"]
