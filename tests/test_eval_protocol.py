"""eval: the dataset's classes against the weights', the seed's protocol for weights that carry none, evaluation
settings from the eval command only, and the metrics printed before the report is written (or fails to be)."""
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mobilenetv3
from mobilenetv3 import checkpoint as ckpt
from mobilenetv3 import weights as wts
from mobilenetv3.config import Config
from mobilenetv3.convert import to_mindspore, write_ckpt
from mobilenetv3.convert.mindspore import MINDSPORE_KWARGS
from mobilenetv3.data.datasets import CIFAR10_CLASSES, FASHION_MNIST_CLASSES
from mobilenetv3.errors import UsageError
from mobilenetv3.models import create_model

from conftest import run_cli

# The seed's CIFAR-10 eval protocol as ../shared/reference/SEED.md states it: Resize(224), rescale, normalise.
SEED_CIFAR = dict(resize=224, crop=224, mean=[0.4914, 0.4822, 0.4465], std=[0.2023, 0.1994, 0.2010])
# Its ImageNet eval: Resize(256), CenterCrop(224), ImageNet mean/std.
SEED_IMAGENET = dict(resize=256, crop=224, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
OWN_PREPROCESSING = dict(resize=32, crop=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3, in_chans=3)
FAST = ["--workers", "0", "--batch-size", "4"]


# ------------------------------------------------------------------------------------------ fixtures
def image_folder(root: Path, classes, per_class: int = 2, broken: int = 0) -> Path:
    """An ImageFolder of 32 x 32 RGB PNGs; ``broken`` more files in the first class that are not images."""
    rng = np.random.default_rng(len(classes))
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    for i in range(broken):
        (root / classes[0] / f"broken{i}.png").write_bytes(b"\x89PNG not really")
    return root


def write_cifar_bin(root: Path, count: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``cifar-10-batches-bin`` in the release's layout (records: 1 label byte + 3072 bytes CHW RGB)."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name, n in [(f"data_batch_{i}.bin", 1) for i in range(1, 6)] + [("test_batch.bin", count)]:
        data, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], data], 1).tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n")
    return data.reshape(-1, 3, 32, 32), labels


def write_fashion_idx(root: Path, count: int = 5) -> Path:
    """Fashion-MNIST's t10k IDX files (uncompressed): 28 x 28 one-channel images."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(4)
    (root / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, count, 28, 28)
                                                  + rng.integers(0, 256, count * 784, dtype=np.uint8).tobytes())
    (root / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, count)
                                                  + rng.integers(0, 10, count, dtype=np.uint8).tobytes())
    return root


def ours(path: Path, num_classes: int, classes=None, preprocessing=None, config=None) -> Path:
    model = create_model("mobilenetv3_small", num_classes=num_classes, width_mult=0.5)
    card = ckpt.model_card(model.model_name, model.model_kwargs, classes, preprocessing)
    ckpt.Checkpoint(**card, model=model.state_dict(), config=config).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_protocol")
    f = {"root": root}
    f["fashion_pt"] = ours(root / "fashion.pt", 10, FASHION_MNIST_CLASSES, OWN_PREPROCESSING)
    f["abc_pt"] = ours(root / "abc.pt", 3, ["a", "b", "c"], OWN_PREPROCESSING)
    f["abc"] = image_folder(root / "abc", ["a", "b", "c"])
    f["xyz"] = image_folder(root / "xyz", ["x", "y", "z"])
    f["digits"] = image_folder(root / "digits", ["0", "1", "2"])
    f["bad"] = image_folder(root / "bad", ["a", "b", "c"], broken=1)
    f["ten"] = image_folder(root / "ten", [f"n{i:08d}" for i in range(10)], per_class=1)
    # a run that trained with --skip-bad-images on the folder "bad": its config says so
    config = Config()
    config.update(dict(dataset="imagenet", data_path=str(f["bad"]), skip_bad_images=True, workers=0))
    f["skipping_run"] = ours(root / "skipping.pt", 3, ["a", "b", "c"], OWN_PREPROCESSING, config.to_dict())
    # the seed's .ckpt: no class names, no preprocessing (head_fc bias zero: the seed's head conv has none)
    seed = create_model("mobilenetv3_small", num_classes=10, width_mult=0.5, **MINDSPORE_KWARGS)
    state = seed.state_dict()
    state["head_fc.bias"].zero_()
    f["seed_ckpt"] = root / "mobilenetV3-120_1563.ckpt"
    write_ckpt(to_mindspore(state), f["seed_ckpt"])
    f["cifar"] = root / "cifar"
    f["cifar_images"], f["cifar_labels"] = write_cifar_bin(f["cifar"])
    f["fashion"] = write_fashion_idx(root / "fashion")
    f["plain_file"] = root / "plain_file"
    f["plain_file"].write_text("x")
    return f


def eval_cli(weights, *argv):
    return run_cli("eval", "--checkpoint", weights, *FAST, *argv)


def assert_protocol(got: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# ------------------------------------------------------------------------------ 3: classes, channels
def test_a_dataset_with_other_classes_is_refused(files, tmp_path):
    """The user's case: 3 folders a, b, c scored against a 10-class Fashion-MNIST checkpoint."""
    result = eval_cli(files["fashion_pt"], "--dataset", "imagenet", "--data-path", files["abc"],
                      "--out", tmp_path / "r")
    assert result.returncode == 2, result.stdout
    line = one_line(result)
    assert "has 3 classes (a, b, c), the weights 10 (T-shirt/top" in line and "--by-index" in line
    assert not (tmp_path / "r").exists() and "top-1" not in result.stdout


def test_class_names_that_differ_are_refused(files, tmp_path):
    result = eval_cli(files["abc_pt"], "--dataset", "imagenet", "--data-path", files["xyz"],
                      "--out", tmp_path / "r")
    assert result.returncode == 2
    assert "class 0 is 'x' there, 'a' in the weights" in one_line(result)


def test_by_index_scores_anyway_and_says_so(files, tmp_path):
    result = eval_cli(files["fashion_pt"], "--dataset", "imagenet", "--data-path", files["abc"],
                      "--by-index", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    assert "scored 6 of 6 images" in result.stdout
    assert "note: " in result.stdout and "scored by index (--by-index)" in result.stdout
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert any("--by-index" in note for note in report["notes"])


@pytest.mark.parametrize("folder, names", [("abc", ["a", "b", "c"]), ("digits", ["a", "b", "c"])],
                         ids=["same names", "dataset classes are indices"])
def test_matching_or_index_classes_are_scored(files, tmp_path, folder, names):
    result = eval_cli(files["abc_pt"], "--dataset", "imagenet", "--data-path", files[folder],
                      "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    assert "scored 6 of 6 images, each once (imagenet val, pytorch fp32, 0 unreadable skipped)" in result.stdout
    assert "note:" not in result.stdout  # same classes, same channels: nothing to say
    assert list(json.loads((tmp_path / "r" / "report.json").read_text())["per_class_accuracy"]) == names


def test_one_channel_data_on_rgb_weights_is_said(files, tmp_path):
    result = eval_cli(files["fashion_pt"], "--dataset", "fashion-mnist", "--data-path", files["fashion"],
                      "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    note = "the model takes 3-channel images; the dataset's 1-channel images are repeated to 3 channels"
    assert f"note: {note}" in result.stdout.splitlines()
    assert json.loads((tmp_path / "r" / "report.json").read_text())["notes"] == [note]


# -------------------------------------------------------------------- 4: the seed's protocol by default
def test_a_seed_ckpt_on_cifar10_gets_the_seed_cifar_protocol(files, tmp_path):
    """Scored as the seed's eval.py does (Resize(224), its CIFAR mean/std), checked with torchvision's transforms."""
    from torchvision.transforms import v2

    result = eval_cli(files["seed_ckpt"], "--dataset", "cifar10", "--data-path", files["cifar"],
                      "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    assert "preprocessing: seed-cifar10 protocol (the weights carry none): resize 224, crop 224" in result.stdout
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["preprocessing_source"] == "seed-cifar10 protocol (the weights carry none)"
    assert_protocol(report["preprocessing"], SEED_CIFAR)
    # the loss of the model on the images as torchvision prepares them with the seed's numbers
    prepare = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Resize(224, antialias=True),
                          v2.Normalize(SEED_CIFAR["mean"], SEED_CIFAR["std"])])
    model = wts.load_model(files["seed_ckpt"])
    with torch.no_grad():
        logits = model(prepare(torch.from_numpy(files["cifar_images"].copy())))
    expected = torch.nn.functional.cross_entropy(logits, torch.from_numpy(files["cifar_labels"]).long())
    assert report["loss"] == pytest.approx(expected.item(), rel=1e-4)


def test_a_seed_ckpt_on_imagenet_gets_the_seed_imagenet_protocol(files, tmp_path):
    result = eval_cli(files["seed_ckpt"], "--dataset", "imagenet", "--data-path", files["ten"],
                      "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["preprocessing_source"] == "seed-imagenet protocol (the weights carry none)"
    assert_protocol(report["preprocessing"], SEED_IMAGENET)


def test_flags_still_choose_and_other_datasets_say_what_is_used(files, tmp_path):
    sized = eval_cli(files["seed_ckpt"], "--dataset", "cifar10", "--data-path", files["cifar"],
                     "--image-size", "64", "--json", "--out", tmp_path / "a")
    assert sized.returncode == 0, sized.stderr
    report = json.loads(sized.stdout)
    assert report["preprocessing"]["crop"] == report["preprocessing"]["resize"] == 64
    assert report["preprocessing_source"] == \
        "seed-cifar10 protocol (--image-size given to eval; the weights carry none)"
    synthetic = eval_cli(files["seed_ckpt"], "--dataset", "synthetic", "--synthetic-samples", "16",
                         "--json", "--out", tmp_path / "b")
    assert synthetic.returncode == 0, synthetic.stderr
    report = json.loads(synthetic.stdout)
    assert report["preprocessing"]["crop"] == 28 and report["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert report["preprocessing_source"] == \
        "none protocol at 28 px, the default (the weights carry none; synthetic has no seed protocol)"


# ------------------------------------------------------------------ 9: skip bad images only when asked
def test_skipping_bad_images_is_the_eval_commands_choice(files, tmp_path):
    """The training run skipped bad images; eval stops at one unless --skip-bad-images is given to it."""
    stopped = eval_cli(files["skipping_run"], "--out", tmp_path / "a")
    assert stopped.returncode == 2 and "broken0.png: unreadable image" in one_line(stopped)
    skipped = eval_cli(files["skipping_run"], "--skip-bad-images", "--out", tmp_path / "b")
    assert skipped.returncode == 0, skipped.stderr
    assert "scored 6 of 7 images, each once (imagenet val, pytorch fp32, 1 unreadable skipped)" in skipped.stdout


def test_another_dataset_does_not_inherit_the_runs_data_path(files, tmp_path):
    """A run trained on the ImageFolder "abc", scored with --dataset cifar10: the run's folder was abc's, so
    cifar10 gets its own default (here: none, so --data-path is asked for), not abc read as CIFAR-10."""
    config = Config()
    config.update(dict(dataset="imagenet", data_path=str(files["abc"]), workers=0))
    run = ours(tmp_path / "last.pt", 10, CIFAR10_CLASSES, OWN_PREPROCESSING, config.to_dict())
    other = eval_cli(run, "--dataset", "cifar10")
    assert other.returncode == 2 and one_line(other) == "mobilenetv3 eval: error: dataset cifar10 needs --data-path"
    given = eval_cli(run, "--dataset", "cifar10", "--data-path", files["cifar"], "--json", "--out", tmp_path / "r")
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout)["data_path"] == str(files["cifar"] / "cifar-10-batches-bin")


def test_labels_beyond_the_models_classes_advise_what_eval_can_do(files, tmp_path):
    """Not --num-classes, a training flag that eval does not have."""
    result = eval_cli(files["abc_pt"], "--dataset", "cifar10", "--data-path", files["cifar"], "--out", tmp_path)
    line = one_line(result)
    assert result.returncode == 2 and "out of range for num_classes=3" in line and "--num-classes" not in line
    assert line.endswith("(the model has 3 classes: score it on a dataset of those classes, with --dataset and "
                         "--data-path)")


# -------------------------------------------------------------------- 14: metrics before the report
def test_an_unwritable_out_folder_comes_after_the_metrics(files):
    """--out under a plain file (NotADirectoryError; tests run as root, where a read-only mode does not stop
    writes): the metrics are on stdout, then one line naming --out, exit 2."""
    blocked = files["plain_file"] / "report"
    for extra in ([], ["--json"]):
        result = eval_cli(files["abc_pt"], "--dataset", "imagenet", "--data-path", files["abc"],
                          "--out", blocked, *extra)
        assert result.returncode == 2
        line = one_line(result)
        assert "cannot write the report to" in line and "plain_file" in line and "--out" in line
        if extra:
            assert json.loads(result.stdout)["count"] == 6
        else:
            assert "top-1 " in result.stdout and "result: {'acc': " in result.stdout


def test_an_unwritable_default_folder_beside_the_weights(files, tmp_path):
    """The default report folder (eval-<dataset>-<file name> beside the weights) cannot be made: here a file has
    its name."""
    weights = tmp_path / "media" / "abc.pt"
    weights.parent.mkdir()
    weights.write_bytes(files["abc_pt"].read_bytes())
    (weights.parent / "eval-imagenet-abc.pt").write_text("not a folder")
    result = eval_cli(weights, "--dataset", "imagenet", "--data-path", files["abc"])
    assert result.returncode == 2 and "--out" in one_line(result)
    assert "result: {'acc': " in result.stdout


def test_each_file_scored_keeps_its_own_report(files, tmp_path):
    """The same weights as .pt and as .safetensors, side by side: two reports, the second over none of the first
    (they shared eval-<dataset>/, so comparing formats kept only the last); --ema gets one of its own too."""
    pt = tmp_path / "abc.pt"
    pt.write_bytes(files["abc_pt"].read_bytes())
    assert run_cli("convert", pt, tmp_path / "abc.safetensors").returncode == 0
    for weights in (pt, tmp_path / "abc.safetensors"):
        result = eval_cli(weights, "--dataset", "imagenet", "--data-path", files["abc"])
        assert result.returncode == 0, result.stderr
    reports = {path.parent.name: json.loads(path.read_text())["weights"] for path in tmp_path.glob("*/report.json")}
    assert reports == {"eval-imagenet-abc.pt": str(pt),
                       "eval-imagenet-abc.safetensors": str(tmp_path / "abc.safetensors")}
    from mobilenetv3.tasks.evaluate import default_report_dir

    assert default_report_dir("r/last.pt", "cifar10", ema=True) == Path("r/eval-cifar10-last.pt-ema")
    assert default_report_dir("m.onnx", "x", runtime="openvino", precision="bf16") == \
        Path("eval-x-m.onnx-openvino-bf16")


def test_python_api_writes_the_report_unless_told_not_to(files, tmp_path):
    from mobilenetv3.tasks.evaluate import write_report

    settings = dict(dataset="imagenet", data_path=str(files["abc"]), workers=0, batch_size=4)
    written = mobilenetv3.evaluate(str(files["abc_pt"]), out_dir=str(tmp_path / "a"), **settings)
    assert Path(written.reports["json"]).is_file()
    later = mobilenetv3.evaluate(str(files["abc_pt"]), out_dir=str(tmp_path / "b"), report=False, **settings)
    assert later.reports == {} and not (tmp_path / "b").exists()
    assert json.loads(Path(write_report(later)["json"]).read_text())["top1"] == later.top1
    later.report_dir = str(files["plain_file"] / "x")
    with pytest.raises(UsageError, match="^out_dir .*cannot write the report"):
        write_report(later)
