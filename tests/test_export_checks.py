"""What export and predict check and say: INT8 calibration and verification images drawn at random (not the first
in file order), an unwritable output named as the user gave it, ONNX Runtime's notes kept off stderr, skipped
files and a capped --topk said in one line."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from mobilenetv3 import weights as wts
from mobilenetv3.models import create_model

from conftest import not_progress, run_cli

CLASSES = 4
LEVELS = [30 + 60 * k for k in range(CLASSES)]  # class k: grey level LEVELS[k]; image i: a corner 2 * i brighter
TRAIN_PER_CLASS, VAL_PER_CLASS = 12, 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny model of ``CLASSES`` classes on 32x32 RGB, with its model card."""
    model = create_model("mobilenetv3_small", num_classes=CLASSES, width_mult=0.5)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    weights = wts.Weights(model.model_name, model.model_kwargs, model.state_dict(), "mobilenetv3",
                          classes=[f"c{k}" for k in range(CLASSES)],
                          preprocessing=dict(resize=32, crop=32, interpolation="bilinear", mean=(0.5,) * 3,
                                             std=(0.25,) * 3, in_chans=3))
    wts.write_weights(weights, path, "mobilenetv3")
    return path


@pytest.fixture(scope="module")
def sorted_folder(tmp_path_factory):
    """An ImageFolder whose files, in order, are all of class 0, then all of class 1, ...: what a sample taken
    from the front sees as one class. Each image tells its class (its grey level) and is unlike the others."""
    root = tmp_path_factory.mktemp("folder")
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for k, level in enumerate(LEVELS):
            (root / split / f"c{k}").mkdir(parents=True)
            for i in range(count):
                image = Image.new("RGB", (8, 8), (level,) * 3)
                image.paste((level + 2 * i,) * 3, (0, 0, 2, 2))
                image.save(root / split / f"c{k}" / f"{i:02d}.png")
    return root


def classes_in(batch: torch.Tensor) -> set:
    """The classes of a batch of those images, normalised (mean 0.5, std 0.25): the nearest grey level."""
    levels = (batch.mean(dim=(1, 2, 3)) * 0.25 + 0.5) * 255
    return {min(range(CLASSES), key=lambda k: abs(LEVELS[k] - level)) for level in levels.tolist()}


def images_in(batches: list) -> list:
    """The images of ``batches``, each as bytes, sorted: the sample as a set, whatever its order."""
    return sorted(image.numpy().tobytes() for batch in batches for image in batch)


class Captured(Exception):
    pass


def exporter_arguments(monkeypatch, checkpoint, **options) -> dict:
    """What ``export_model(checkpoint, **options)`` hands to the exporter, which is not run: the example input
    and the keyword arguments (``real_inputs``, ``calibration``, ...)."""
    from mobilenetv3.tasks import export as task

    seen = {}

    def capture(model, fmt, path, example, **kwargs):
        seen.update(kwargs, example=example)
        raise Captured

    monkeypatch.setattr(task, "export_verified", capture)
    with pytest.raises(Captured):
        task.export_model(str(checkpoint), **options)
    return seen


def drawn_batches(monkeypatch, checkpoint, folder, **options) -> dict:
    """The verification and calibration batches of an INT8 export from ``folder``, 24 images to calibrate."""
    seen = exporter_arguments(monkeypatch, checkpoint, format="onnx-int8", output=str(folder / "m.int8.onnx"),
                              dataset="imagenet", data_path=str(folder), batch_size=8, calibration_images=24,
                              **options)
    return dict(real=list(seen["real_inputs"]), calibration=list(seen["calibration"]))


# ------------------------------------------------------------------------- INT8 calibration, real inputs
def test_calibration_and_verification_images_are_drawn_from_every_class(monkeypatch, checkpoint, sorted_folder):
    seen = drawn_batches(monkeypatch, checkpoint, sorted_folder)  # the defaults: the same call as before the fix
    for name in ("real", "calibration"):
        batches = seen[name]
        assert all(len(classes_in(batch)) >= 2 for batch in batches), name  # each batch mixes classes
        assert set().union(*map(classes_in, batches)) == set(range(CLASSES)), name
    assert sum(map(len, seen["calibration"])) == 24  # as many as asked, not rounded up to whole batches


def test_the_images_drawn_follow_the_seed(monkeypatch, checkpoint, sorted_folder):
    def draw(seed):
        return drawn_batches(monkeypatch, checkpoint, sorted_folder, verify_images=16, sample_seed=seed)

    first, again, other = draw(0), draw(0), draw(1)
    for name in ("real", "calibration"):
        assert images_in(first[name]) == images_in(again[name]), name
        assert images_in(first[name]) != images_in(other[name]), name
        assert len(classes_in(torch.cat(first[name]))) == CLASSES, name
    assert sum(map(len, first["real"])) == 16


@pytest.fixture(scope="module")
def int8_export(checkpoint, sorted_folder, tmp_path_factory):
    """``mobilenetv3 export --format onnx-int8`` calibrated on the sorted folder, run once for the tests below."""
    out = tmp_path_factory.mktemp("int8") / "m.int8.onnx"
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "onnx-int8", "--output", out,
                     "--dataset", "imagenet", "--data-path", sorted_folder, "--calibration-images", 24,
                     "--batch-size", 8, process=True)  # a fresh process: ONNX Runtime writes to fd 2 itself
    assert result.returncode == 0, result.stderr
    return result, out


def test_int8_export_says_how_its_images_were_drawn(int8_export):
    result, out = int8_export
    lines = result.stdout.splitlines()
    assert lines[0] == f"exported onnx-int8: {out}"
    assert lines[1] == f"  calibrated on 24 of {CLASSES * TRAIN_PER_CLASS} training images, drawn at random with seed 0"
    real = [line for line in lines if line.startswith("  real inputs")]
    assert real and real[0].startswith(f"  real inputs (all {CLASSES * VAL_PER_CLASS} validation images): ")


def test_int8_file_records_its_calibration_set(int8_export, sorted_folder):
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(int8_export[1])).metadata_props}
    assert json.loads(meta["mobilenetv3"])["classes"] == [f"c{k}" for k in range(CLASSES)]  # the card stays
    assert json.loads(meta["mobilenetv3.calibration"]) == dict(
        dataset="imagenet", source=str(sorted_folder / "train"), split="train", images=24,
        of=CLASSES * TRAIN_PER_CLASS, seed=0)


# ------------------------------------------------------------------------------ ONNX Runtime's notes
def test_onnx_export_writes_only_our_lines_to_stderr(int8_export):
    """The INT8 export writes and runs the fp32 ``m.onnx`` (its accuracy is compared with it) in the same process:
    neither file's export, check or quantisation writes to stderr (one process, not two: each takes 20 s)."""
    result, out = int8_export
    assert out.with_name("m.onnx").is_file() and any("fp32 top-1" in line for line in result.stdout.splitlines())
    assert not_progress(result.stderr) == []  # no coloured "Removing initializer 'val_28'" warning


def test_a_slow_export_says_each_stage_as_it_begins(int8_export):
    """An INT8 export was silent for minutes (ExecuTorch's: 135 s): a line as each stage begins."""
    stages = [line.split(": ", 1)[1] for line in int8_export[0].stderr.splitlines()]
    assert [stage.split()[0] for stage in stages] == ["exporting", "quantising", "verifying", "scoring"]
    assert stages[-1] == f"scoring INT8 and fp32 on the {CLASSES * VAL_PER_CLASS} validation images"
    assert all(line.startswith("export onnx-int8, ") for line in int8_export[0].stderr.splitlines())


def test_our_onnx_files_hold_no_initializer_that_onnx_runtime_would_remove(int8_export):
    """Loaded in the user's own application, at ONNX Runtime's default log level, neither file warns: no
    initializer is left that no node reads (the pooling rewrite's spare axes were one)."""
    import sys

    import onnx

    files = [int8_export[1].with_name("m.onnx"), int8_export[1]]
    for path in files:
        graph = onnx.load(str(path)).graph
        read = {name for node in graph.node for name in node.input}
        assert [init.name for init in graph.initializer if init.name not in read] == [], path
    load = ("import sys, onnxruntime as ort\n"
            "for path in sys.argv[1:]: ort.InferenceSession(path, providers=['CPUExecutionProvider'])")
    done = subprocess.run([sys.executable, "-c", load, *map(str, files)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Removing initializer" not in done.stderr, done.stderr


def test_runtime_warnings_are_silenced_only_while_quantising(int8_export, tmp_path, capfd):
    """The quantiser mutes ONNX Runtime's default logger while it runs, not for the rest of the process."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from mobilenetv3.export import quantize_onnx

    quantize_onnx(int8_export[1].with_name("m.onnx"), tmp_path / "again.int8.onnx", [torch.randn(2, 3, 32, 32)])
    spare = numpy_helper.from_array(torch.zeros(1).numpy(), "spare")  # an initializer no node uses
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [spare])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "spare.onnx"))
    capfd.readouterr()
    ort.InferenceSession(str(tmp_path / "spare.onnx"), providers=["CPUExecutionProvider"])
    assert "Removing initializer 'spare'" in capfd.readouterr().err


# -------------------------------------------------------------------------------- unwritable output
@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nothing can be written into. chmod 0o555 stops only non-root users (tests run as root here and
    on CI), so where a write still gets through the folder is made immutable too (``chattr +i``)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if _writable(folder) and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if _writable(folder):
        pytest.skip("neither chmod 0o555 nor chattr +i stops writes here (the under-a-file case still runs)")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def _writable(folder) -> bool:
    try:
        (folder / "probe").touch()
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


@pytest.mark.parametrize("where", ["read-only folder", "under a file"])
def test_export_to_an_unwritable_place_names_the_output(where, checkpoint, tmp_path, request):
    if where == "under a file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "sub.onnx"  # NotADirectoryError, root or not
    else:
        out = request.getfixturevalue("read_only_folder") / "m.onnx"
    result = run_cli("export", "--checkpoint", checkpoint, "--output", out, "--no-dataset")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mobilenetv3 export: error: cannot write {out}: "), lines
    assert ".tmp" not in lines[0]


def test_a_failed_write_names_the_output_and_leaves_no_temporary_file(checkpoint, tmp_path, monkeypatch):
    def disk_full(obj, path, **kwargs):
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(torch.jit, "trace", lambda net, example: net)  # the write is under test, not the trace
    monkeypatch.setattr(torch.jit, "save", disk_full)
    out = tmp_path / "m.torchscript.pt"
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "torchscript", "--output", out,
                     "--no-dataset")
    assert result.returncode == 1
    assert f"No space left on device: '{out}'" in result.stderr and ".tmp" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_export_image_size_is_read_as_a_setting(checkpoint, tmp_path, monkeypatch):
    """``--image-size 48`` reaches the task as text, as every config flag does; it sized the example input
    unconverted (``torch.randn(2, 3, '48', '48')``: TypeError)."""
    seen = exporter_arguments(monkeypatch, checkpoint, format="torchscript", output=str(tmp_path / "m.pt"),
                              use_dataset=False, image_size="48")
    assert seen["example"].shape == (2, 3, 48, 48)


# ------------------------------------------------------------------------------------------- predict
def test_predict_says_how_many_files_it_skipped(checkpoint, sorted_folder, tmp_path):
    shutil.copy(sorted_folder / "val" / "c0" / "00.png", tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "labels.json").write_text("{}")
    result = run_cli("predict", tmp_path, "--checkpoint", checkpoint, "--topk", 2)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2  # the model line, then the one image
    assert result.stderr.splitlines() == [f"skipped 2 file(s) without an image extension in {tmp_path}"]


def test_predict_says_when_topk_is_capped_at_the_class_count(checkpoint, sorted_folder):
    image = sorted_folder / "val" / "c0" / "00.png"
    result = run_cli("predict", image, "--checkpoint", checkpoint, "--topk", 20, "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)[0]["top"]) == CLASSES
    assert result.stderr.splitlines() == [f"--topk 20 is more than the model's {CLASSES} classes: showing all "
                                          f"{CLASSES}"]


def folder_with_a_truncated_image(sorted_folder, folder):
    """Three good images and, between them, one cut short as an interrupted copy leaves it."""
    for name, source in (("a.png", "c0/00.png"), ("c.png", "c1/00.png"), ("d.png", "c2/00.png")):
        shutil.copy(sorted_folder / "val" / source, folder / name)
    image = Image.new("RGB", (64, 64), (90, 90, 90))
    image.save(folder / "b.jpg", quality=95)
    (folder / "b.jpg").write_bytes((folder / "b.jpg").read_bytes()[:400])
    return folder / "b.jpg"


def test_predict_stops_at_an_unreadable_image_naming_it(checkpoint, sorted_folder, tmp_path):
    bad = folder_with_a_truncated_image(sorted_folder, tmp_path)
    result = run_cli("predict", tmp_path, "--checkpoint", checkpoint)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mobilenetv3 predict: error: {bad}: unreadable image ("), lines
    assert lines[0].endswith("; add --skip-bad-images to classify the other images")


def test_predict_skip_bad_images_classifies_the_others_and_names_the_skipped_once(checkpoint, sorted_folder,
                                                                                 tmp_path):
    bad = folder_with_a_truncated_image(sorted_folder, tmp_path)
    result = run_cli("predict", tmp_path, "--checkpoint", checkpoint, "--skip-bad-images", "--json")
    assert result.returncode == 0, result.stderr
    assert [Path(p["path"]).name for p in json.loads(result.stdout)] == ["a.png", "c.png", "d.png"]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"skipped 1 unreadable image(s) of 4: {bad}: unreadable image")


def test_predict_skip_bad_images_with_nothing_readable_is_one_error(checkpoint, tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    result = run_cli("predict", tmp_path / "x.png", "--checkpoint", checkpoint, "--skip-bad-images")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"mobilenetv3 predict: error: none of the 1 image(s) could be read: {tmp_path}")
    assert len(result.stderr.splitlines()) == 1
