"""The server serves every format that runs on this machine, with ``mobilenetv3 predict --exported``'s
probabilities on a real image (a Fashion-MNIST test image as a PNG) within 1e-5: ncnn and LiteRT here (each
skipped without its extra), ExecuTorch in ``executorch_checks.py`` (its own process); a Core ML package is refused
in one line off macOS."""
import gzip
import platform

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenetv3 import predict
from mobilenetv3.data.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_SYSTEM_DIR
from mobilenetv3.export import export_verified
from mobilenetv3.weights import model_from_weights, read_weights

from builders import write_weights
from conftest import run_cli

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from mobilenetv3.server import ServerSettings, create_app, load_served_model  # noqa: E402

TOLERANCE = 1e-5  # the issue's: the probabilities `mobilenetv3 predict` gives
PRE = dict(resize=28, crop=28, interpolation="bilinear", mean=(0.286,), std=(0.353,), in_chans=1)
TEST_IMAGES = FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny 1-channel Fashion-MNIST model whose outputs differ from image to image."""
    weights = write_weights(tmp_path_factory.mktemp("served") / "fm.pt", num_classes=10, responsive=True,
                            in_chans=1, classes=FASHION_MNIST_CLASSES, preprocessing=PRE)
    return model_from_weights(read_weights(weights)).eval()


def real_image(path):
    """The first Fashion-MNIST test image (an ankle boot), read from the IDX file itself, saved as a PNG at
    ``path``."""
    with gzip.open(TEST_IMAGES) as f:
        pixels = np.frombuffer(f.read(16 + 28 * 28)[16:], dtype=np.uint8).reshape(28, 28)
    Image.fromarray(pixels, mode="L").save(path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    if not TEST_IMAGES.is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    return real_image(tmp_path_factory.mktemp("image") / "boot.png")


def assert_served_as_predicted(path, image, runtime: str) -> None:
    """``path`` served (its own runtime) answers ``image`` with predict's probabilities for every class."""
    (expected,) = predict([str(image)], source=str(path), topk=10)
    served = load_served_model(str(path))
    assert served.runtime == runtime and served.classes == list(FASHION_MNIST_CLASSES)
    with TestClient(create_app(served, ServerSettings(max_delay_ms=0))) as client:
        answer = client.post("/predict?topk=10", content=image.read_bytes(), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    got = {t["class"]: t["probability"] for t in answer.json()["predictions"][0]["top"]}
    want = {t["class"]: t["probability"] for t in expected.top}
    assert got.keys() == want.keys() and max(abs(got[k] - want[k]) for k in want) <= TOLERANCE, (got, want)
    assert expected.runtime == runtime


def test_the_server_serves_an_ncnn_model_as_predict_runs_it(model, image, tmp_path):
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    path = tmp_path / "fm.ncnn.param"
    export_verified(model, "ncnn", path, torch.randn(2, 1, 28, 28))
    assert_served_as_predicted(path, image, "ncnn")


def test_the_server_serves_a_litert_model_as_predict_runs_it(model, image, tmp_path):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    path = tmp_path / "fm.tflite"
    export_verified(model, "litert", path, torch.randn(2, 1, 28, 28))
    assert_served_as_predicted(path, image, "litert")


@pytest.mark.skipif(platform.system() == "Darwin", reason="Core ML runs on macOS")
def test_a_core_ml_package_is_refused_in_one_line_off_macos(tmp_path):
    package = tmp_path / "fm.mlpackage"
    package.mkdir()
    result = run_cli("serve", package)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"mobilenetv3 serve: error: {package} is a Core ML package: it runs only on macOS, not on "
                     f"{platform.system()}"]
