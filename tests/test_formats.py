"""The table of formats (``export/formats.py``) is the one place a format is described: every consumer (export's
``--format``, eval and predict ``--exported``, ``--runtime``, the server and its model repository, weights.py's
"not weights" check, ``bench inference``, ``benchmarks/format_accuracy.py``) takes each row from it, so a row
added to the table reaches them all. Each test asks the consumer itself, not a copy of the table."""
import dataclasses
import platform
import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

from mobilenetv3.cli import build_parser
from mobilenetv3.errors import UsageError
from mobilenetv3.export import formats
from mobilenetv3.export.formats import TABLE

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = [row for row in TABLE if row.runs_here()]


def _choices(command: str, flag: str) -> tuple:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if flag in a.option_strings).choices)


def test_every_row_is_an_export_format_choice_and_every_runtime_a_runtime_choice():
    assert _choices("export", "--format") == tuple(row.name for row in TABLE)
    runtimes = {runtime for row in TABLE for runtime in row.runtimes if runtime != "pytorch"}
    for command in ("eval", "predict"):
        assert set(_choices(command, "--runtime")) == runtimes
    served = set(_choices("serve", "--runtime"))
    assert runtimes | {"auto", "torch"} == served


@pytest.mark.parametrize("row", TABLE, ids=lambda row: row.name)
def test_every_suffix_is_told_apart_as_its_kind(row):
    from mobilenetv3.export import exported_kind

    for name in (f"m{row.suffix}", *(f"m{suffix}" for suffix in row.recognised)):
        assert exported_kind(Path(name)) == row.kind
        assert exported_kind(Path(name.upper())) == row.kind


@pytest.mark.parametrize("row", [row for row in TABLE if row.kind != "torchscript"], ids=lambda row: row.name)
def test_no_exported_file_is_read_as_weights(row, tmp_path):
    from mobilenetv3.weights import read_weights

    with pytest.raises(UsageError, match=rf"is {row.what}, not weights: eval and predict run it with --exported"):
        read_weights(tmp_path / f"m{row.suffix}")


class _Runner(nn.Module):
    """What a row's ``open`` gives: a module that says its classes, preprocessing, runtime and precision."""

    def __init__(self, runtime: str):
        super().__init__()
        self.runtime, self.precision, self.softmax, self.num_classes = runtime, "fp32", False, 2
        self.classes, self.model_name, self.dataset = ["a", "b"], "m", None
        self.preprocessing = dict(resize=8, crop=8, interpolation="bilinear", mean=(0.5,), std=(0.5,), in_chans=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 2)


@pytest.fixture
def opened(monkeypatch):
    """Each row's ``open`` replaced by one that records its call: ``(kind, runtime)`` of each."""
    calls = []

    def recording(row):
        def open_file(path, runtime, precision, threads):
            calls.append((row.kind, runtime))
            return _Runner(runtime if runtime != "pytorch" else "torch.export")
        return dataclasses.replace(row, open=open_file)

    rows = {kind: recording(row) for kind, row in formats.kinds().items()}
    monkeypatch.setattr(formats, "kinds", lambda: rows)
    return calls


@pytest.mark.parametrize("row", RUNNABLE, ids=lambda row: row.name)
def test_every_runnable_row_opens_for_eval_predict_and_the_server(row, tmp_path, opened):
    from mobilenetv3.export import open_exported
    from mobilenetv3.server.runtime import load_served_model
    from mobilenetv3.tasks.common import is_exported

    path = tmp_path / f"m{row.suffix}"
    assert is_exported(path)  # what eval and predict ask before they open a file as exported
    assert open_exported(path).runtime in (row.runtime, "torch.export")
    served = load_served_model(str(path))
    assert opened == [(row.kind, row.runtime), (row.kind, row.runtime)]
    assert served.classes == ["a", "b"] and served.input_shape == (1, 8, 8)


@pytest.mark.parametrize("row", [row for row in TABLE if not row.runs_here()], ids=lambda row: row.name)
def test_a_row_that_does_not_run_here_is_refused_by_the_server_in_one_line(row, tmp_path):
    from mobilenetv3.server.runtime import check_runtime

    with pytest.raises(UsageError, match=f"it runs only on .*, not on {platform.system()}") as raised:
        check_runtime(tmp_path / f"m{row.suffix}", "auto")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("row", RUNNABLE, ids=lambda row: row.name)
def test_the_model_repository_finds_every_runnable_file(row, tmp_path):
    from mobilenetv3.server.repository import scan

    (tmp_path / "models" / "m" / "1").mkdir(parents=True)
    (tmp_path / "models" / "m" / "1" / f"model{row.suffix}").write_bytes(b"x")
    (tmp_path / "models" / f"lone{row.suffix}").write_bytes(b"x")
    found = {(f.name, f.version): f for f in scan([str(tmp_path / "models")])}
    assert found[("m", "1")].problem == "" and found[("m", "1")].path.name == f"model{row.suffix}"
    assert any(f.path.name == f"lone{row.suffix}" and not f.problem for f in found.values())


@pytest.mark.parametrize("row", [row for row in TABLE if row.int8], ids=lambda row: row.name)
def test_every_int8_row_names_its_fp32_format_and_format_accuracy_compares_them(row):
    fp32 = formats.get(row.fp32_of)
    assert not fp32.int8 and fp32.kind == row.kind
    accuracy = runpy.run_path(str(ROOT / "benchmarks" / "format_accuracy.py"))
    assert accuracy["fp32_formats"]()[row.name] == row.fp32_of


def test_every_runtime_of_the_table_has_its_bench_inference_variant():
    from mobilenetv3.benchmarking import BY_HAND, VARIANT_BUILDERS, unavailable_variants

    for row in RUNNABLE:
        if row.runtime != "pytorch" and not row.int8:
            assert f"{row.runtime} fp32" in VARIANT_BUILDERS, row.name
    assert {"torchvision onnxruntime", "torchvision openvino", "torchvision ncnn"} == set(BY_HAND)
    for variant, why in unavailable_variants(VARIANT_BUILDERS).items():  # by each row's extra
        runtime = variant.removeprefix("torchvision ").split()[0]
        assert why in (f"{runtime}: not installed", "bf16: not native on this CPU")


@pytest.mark.parametrize("row", TABLE, ids=lambda row: row.name)
def test_a_missing_extra_is_one_line_naming_it(row, monkeypatch):
    import builtins

    if row.extra is formats.no_extra:
        return
    real_import = builtins.__import__

    def without_extra(name, *args, **kwargs):
        if name.split(".")[0] in row.modules:
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_extra)
    with pytest.raises(UsageError, match=r"needs the \w+ extra: pip install 'mobilenetv3\[\w+\]'") as raised:
        formats.get(row.name).extra()
    assert "\n" not in str(raised.value)


def test_openvino_int8_settings_are_one_object_checked_when_made():
    from mobilenetv3.export import DEFAULT_VALIDATION_IMAGES, Int8Settings

    assert Int8Settings().images_to_validate == 0 and Int8Settings().keep_fp32 == ("se", "classifier")
    assert Int8Settings(max_drop=0.01).images_to_validate == DEFAULT_VALIDATION_IMAGES
    assert Int8Settings(keep_fp32=["se"], max_drop=0.01, validation_images=10).images_to_validate == 10
    for bad, says in ((dict(keep_fp32=("stem",)), "cannot keep stem in fp32"),
                      (dict(overflow_fix="always"), "unknown --int8-overflow-fix 'always'"),
                      (dict(activation_ranges="max"), "unknown --int8-ranges 'max'"),
                      (dict(max_drop=2.0), "--int8-max-drop must be a fraction between 0 and 1"),
                      (dict(validation_images=5), "a setting of accuracy control: give --int8-max-drop too"),
                      (dict(max_drop=0.1, validation_images=0), "--int8-validation-images must be at least 1")):
        with pytest.raises(UsageError, match=says):
            Int8Settings(**bad)
