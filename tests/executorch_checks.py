"""ExecuTorch: the fp32 ``.pte`` agrees with PyTorch with every operator in XNNPACK, carries the model card that
eval and predict use, runs any batch size, INT8 by PT2E records its calibration set and agrees with PyTorch on
most images, and a damaged ``.pte`` is one line.

Run by test_executorch.py in a process of its own. Its other mistakes (one line, exit code 2) are cases of
test_bad_input.py. Skipped without the executorch extra. Every ExecuTorch export takes 20 s or more on 2 cores (the
lowering, not the model's size): the default run makes one, the fp32 program the other tests share; the INT8 export
and the Large model are ``slow`` (``pytest -m slow``).
"""
import json
import logging
import subprocess
import sys

import pytest
import torch

from builders import truncate, write_image_folder
from conftest import not_progress, run_cli
from export_check_fixtures import CLASSES, RECORD, SYNTHETIC, export_checkpoint

pytest.importorskip("executorch")

from mobilenetv3.errors import UsageError  # noqa: E402
from mobilenetv3.export import (  # noqa: E402
    CALIBRATION_KEY,
    INT8_KEY,
    MAX_BATCH,
    METADATA_KEY,
    ExecuTorchModule,
    describe,
    export_verified,
    open_exported,
)

pytest_plugins = ["export_check_fixtures"]  # the fixtures checkpoint and images


@pytest.fixture(scope="module")
def pte(checkpoint):
    """``mobilenetv3 export --format executorch`` of the checkpoint, checked on synthetic validation images."""
    return export_checkpoint(checkpoint, "executorch", ".pte")


def pytorch_model(checkpoint):
    from mobilenetv3.weights import load_model

    return load_model(checkpoint).eval()


def test_importing_executorch_leaves_the_root_logger_alone():
    """XNNPACK's partitioner calls ``logging.basicConfig`` as it is imported: in the CLI every line of ours then
    came twice, once as ``INFO:mobilenetv3...``. In a fresh process, where the root logger has no handler yet."""
    code = ("import logging\nfrom mobilenetv3.export.executorch import _quiet_imports\nwith _quiet_imports():\n"
            "    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner\n"
            "print(len(logging.getLogger().handlers), logging.getLogger().level)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.split() == ["0", str(logging.WARNING)], done.stderr[-2000:]


def test_fp32_pte_agrees_with_pytorch_with_every_operator_in_xnnpack(pte):
    out, result = pte
    lines = result.stdout.splitlines()
    assert lines[0] == f"exported executorch: {out}"
    checks = [line for line in lines if "max |difference| to PyTorch" in line]
    assert [line.split("(")[0].strip() for line in checks] == ["random inputs", "real inputs"]
    for line in checks:
        assert float(line.split("PyTorch ")[1].split(",")[0]) <= 1e-4 and "agreement 100.00%" in line
    delegated = [line.strip() for line in lines if line.strip().startswith("XNNPACK runs")]
    assert len(delegated) == 1 and delegated[0].endswith("operators (1 delegated subgraph)"), lines
    count, total = delegated[0].split()[2], delegated[0].split()[4]
    assert count == total and int(total) > 100, delegated  # nothing left to the portable runtime
    assert not_progress(result.stderr) == []  # no torchao note, no runtime log lines


def test_the_pte_runs_any_batch_as_pytorch_does(pte, checkpoint):
    """Batches it was not traced with, the largest in two slices of the planned input buffer."""
    model, module = pytorch_model(checkpoint), ExecuTorchModule(pte[0])
    for batch in (1, 5, MAX_BATCH + 3):
        x = torch.randn(batch, 3, 32, 32)
        torch.testing.assert_close(module(x), model(x), atol=1e-4, rtol=0)


@pytest.mark.slow  # two more lowerings, of Small and Large: about a minute
def test_both_architectures_lower_whole_to_xnnpack_and_run_any_batch(tmp_path):
    """The operators XNNPACK runs are those of the network: one convolution per Conv2d, one linear per Linear
    (counted from the modules, not by ExecuTorch), the softmax of --softmax; none in the portable runtime."""
    from mobilenetv3.models import create_model

    for name, traced_batch in (("mobilenetv3_small", 2), ("mobilenetv3_large", 1)):
        model = create_model(name, num_classes=7, width_mult=0.5).eval()
        softmax = name.endswith("large")
        path = tmp_path / f"{name}.pte"
        # traced at batch 1 (as the inference benchmark does), where torch.export would fix the batch at 1
        figures = export_verified(model, "executorch", path, torch.randn(traced_batch, 3, 64, 64), softmax=softmax)
        assert figures["random"]["max_abs_diff"] <= 1e-4 and figures["random"]["compared"] == 4
        counts = figures["delegation"]
        assert (counts["portable"], counts["portable_ops"], counts["subgraphs"]) == (0, {}, 1), counts
        ops = counts["xnnpack_ops"]
        assert ops["aten_convolution_default"] == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        assert ops["aten_linear_default"] == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        assert ("aten__softmax_default" in ops) == softmax, ops
        module = ExecuTorchModule(path)
        for batch in (5, MAX_BATCH + 3):  # not the exported batch; the second runs in two slices
            x = torch.randn(batch, 3, 64, 64)
            reference = model(x).softmax(1) if softmax else model(x)
            torch.testing.assert_close(module(x), reference, atol=1e-4, rtol=0)


def test_the_program_carries_the_card_and_the_module_reads_it(pte, checkpoint):
    module = ExecuTorchModule(pte[0])
    card = describe(pytorch_model(checkpoint), False)
    assert json.loads(module.program.load_method(METADATA_KEY).execute([])[0]) == json.loads(json.dumps(card))
    assert card["classes"] == [f"c{k}" for k in range(CLASSES)] and card["preprocessing"]["crop"] == 32
    assert (module.classes, module.num_classes, module.in_chans) == (card["classes"], CLASSES, 3)
    assert module.preprocessing == json.loads(json.dumps(card["preprocessing"]))
    assert (module.model_name, module.softmax) == ("mobilenetv3_small", False)
    assert (module.runtime, module.precision, module.quantized, module.int8) == ("executorch", "fp32", False, None)
    assert card["dataset"] == module.dataset == RECORD  # the data it was trained on, beside the card
    assert module.input_shape == (MAX_BATCH, 3, 32, 32)  # planned for the declared batch range, not a narrower one
    with pytest.raises(UsageError, match=r"takes \(N, 3, 32, 32\) images, not \(1, 3, 40, 40\)"):
        module(torch.zeros(1, 3, 40, 40))


def test_predict_through_the_pte_gives_the_checkpoints_answers(pte, checkpoint, images):
    by_pte = run_cli("predict", images, "--exported", pte[0], "--json", "--topk", "3")
    by_weights = run_cli("predict", images, "--checkpoint", checkpoint, "--json", "--topk", "3")
    assert by_pte.returncode == by_weights.returncode == 0, by_pte.stderr
    assert by_pte.stderr == ""
    pte_answers, weights_answers = json.loads(by_pte.stdout), json.loads(by_weights.stdout)
    assert len(pte_answers) == 3
    for got, expected in zip(pte_answers, weights_answers):
        assert (got["runtime"], got["precision"]) == ("executorch", "fp32")
        assert [t["class"] for t in got["top"]] == [t["class"] for t in expected["top"]]
        for a, b in zip(got["top"], expected["top"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
    table = run_cli("predict", images, "--exported", pte[0])
    assert table.stdout.splitlines()[0] == f"model: {pte[0]} (executorch fp32)"


def test_eval_of_the_pte_uses_its_card_and_says_runtime_and_precision(pte, checkpoint, tmp_path):
    by_pte = run_cli("eval", "--exported", pte[0], *SYNTHETIC, "--json", "--out", tmp_path / "pte")
    by_weights = run_cli("eval", "--checkpoint", checkpoint, *SYNTHETIC, "--json", "--out", tmp_path / "pt")
    assert by_pte.returncode == by_weights.returncode == 0, by_pte.stderr
    assert by_pte.stderr == ""
    got, expected = json.loads(by_pte.stdout), json.loads(by_weights.stdout)
    assert (got["runtime"], got["precision"]) == ("executorch", "fp32")
    assert got["classes"] == [f"c{k}" for k in range(CLASSES)]
    assert got["preprocessing_source"] == "the ExecuTorch program's own (saved in it)"
    assert got["count"] == expected["count"] == 10 and got["top1"] == expected["top1"]
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-4)
    table = run_cli("eval", "--exported", pte[0], *SYNTHETIC, "--out", tmp_path / "t")
    assert "each once (synthetic val, executorch fp32, 0 unreadable skipped)" in table.stdout


def test_a_pte_cut_short_is_one_line_for_eval_and_predict(pte, images, tmp_path):
    for keep in (0.5, 0.9999):  # half of it, and all but its last bytes
        cut = tmp_path / f"cut{keep}.pte"
        cut.write_bytes(pte[0].read_bytes())
        truncate(cut, keep=keep)
        for argv in (["eval", "--exported", cut, *SYNTHETIC, "--out", tmp_path / "never"],
                     ["predict", images, "--exported", cut]):
            result = run_cli(*argv)
            assert result.returncode == 2 and result.stdout == "", result.stderr
            assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
            assert f"{cut}: not a loadable ExecuTorch program (File size is too small." in result.stderr
    assert not (tmp_path / "never").exists()


def test_the_server_serves_the_pte_as_predict_exported_runs_it(pte, tmp_path):
    """The server runs a ``.pte`` in ExecuTorch and answers a real image (a Fashion-MNIST test image, made RGB by
    the eval protocol) with ``mobilenetv3 predict --exported``'s probabilities within 1e-5."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient
    from test_serve_formats import TEST_IMAGES, real_image

    from mobilenetv3.server import ServerSettings, create_app, load_served_model

    if not TEST_IMAGES.is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    image = real_image(tmp_path / "boot.png")
    by_cli = run_cli("predict", image, "--exported", pte[0], "--json", "--topk", CLASSES)
    assert by_cli.returncode == 0, by_cli.stderr
    expected = {t["class"]: t["probability"] for t in json.loads(by_cli.stdout)[0]["top"]}
    served = load_served_model(str(pte[0]))
    assert (served.runtime, served.precision) == ("executorch", "fp32")
    with TestClient(create_app(served, ServerSettings(max_delay_ms=0))) as client:
        answer = client.post(f"/predict?topk={CLASSES}", content=image.read_bytes(),
                             headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    got = {t["class"]: t["probability"] for t in answer.json()["predictions"][0]["top"]}
    assert got.keys() == expected.keys() and max(abs(got[k] - expected[k]) for k in got) <= 1e-5, (got, expected)


@pytest.fixture(scope="module")
def int8_export(checkpoint, tmp_path_factory):
    """``mobilenetv3 export --format executorch-int8`` calibrated on 8 images of a small ImageFolder."""
    tmp_path = tmp_path_factory.mktemp("int8")
    root = write_image_folder(tmp_path / "data", {"train": 5, "val": 3}, classes=[f"c{k}" for k in range(CLASSES)])
    out = tmp_path / "m.int8.pte"
    result = run_cli("export", "--checkpoint", checkpoint, "--format", "executorch-int8", "--output", out,
                     "--dataset", "imagenet", "--data-path", root, "--calibration-images", 8, "--batch-size", 4)
    assert result.returncode == 0, result.stderr
    return out, result, root


@pytest.mark.slow  # the INT8 export lowers two programs: about 90 s
def test_int8_export_calibrates_on_an_image_folder_and_records_it(int8_export):
    out, result, root = int8_export
    assert all("decoded as an image viewer shows them" in line for line in not_progress(result.stderr))  # CMYK
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"exported executorch-int8: {out}",
                         f"  calibrated on 8 of {5 * CLASSES} training images, drawn at random with seed 0"]
    assert any("INT8 top-1" in line and f"({3 * CLASSES} images)" in line for line in lines)
    assert (out.parent / "m.pte").is_file()  # the fp32 program its accuracy is compared with
    module = open_exported(out)
    assert (module.precision, module.quantized) == ("int8", True)
    assert module.calibration == dict(dataset="imagenet", source=str(root / "train"), split="train", images=8,
                                      of=5 * CLASSES, seed=0)
    assert module.int8["weights"] == "int8, symmetric, per output channel" and "torchao" in module.int8["tool"]
    assert module.classes[0] == "c0"  # the card stays
    assert module.dataset == open_exported(out.parent / "m.pte").dataset == RECORD  # both files know their data
    for key in (METADATA_KEY, INT8_KEY, CALIBRATION_KEY):
        assert key in module.program.method_names
    assert open_exported(out.parent / "m.pte").precision == "fp32"


@pytest.mark.slow
def test_int8_runs_in_xnnpack_and_agrees_with_pytorch_on_most_images(int8_export, checkpoint):
    out, result, root = int8_export
    delegated = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("XNNPACK runs")]
    assert len(delegated) == 1 and "portable runtime" not in delegated[0], delegated
    real = next(line for line in result.stdout.splitlines() if line.strip().startswith("real inputs"))
    diff = float(real.split("PyTorch ")[1].split(",")[0])
    agreement = float(real.split("agreement ")[1].rstrip("%")) / 100
    assert diff > 1e-4  # quantised: not the fp32 network
    assert agreement >= 0.75, real
    model, module = pytorch_model(checkpoint), ExecuTorchModule(out)
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(40, 3, 32, 32, generator=generator) * torch.rand(40, 3, 1, 1, generator=generator) * 4 - 2
    same = (module(x).argmax(1) == model(x).argmax(1)).float().mean().item()
    assert same >= 0.75, same
