"""The command line: subcommands listed, `info` figures, one-line errors with exit code 2."""
import json
import subprocess
import sys

import pytest

from mobilenetv3.cli import main

SUBCOMMANDS = ["train", "eval", "export", "predict", "convert", "bench", "info"]


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own exits (--help, usage errors)
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_subcommand(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in SUBCOMMANDS:
        assert f"    {name} " in out


def test_info_prints_params_and_madds(capsys):
    code, out, err = run(capsys, "info", "mobilenetv3_large")
    assert code == 0 and err == ""
    assert "params: 5,483,032" in out
    assert "MAdds:  216,589,760 (216.6M) at 224x224" in out
    assert "blocks.14" in out and "final_conv" in out


def test_info_json_and_options(capsys):
    code, out, _ = run(capsys, "info", "mobilenetv3_small", "--num-classes", "10", "--img-size", "32",
                       "--head-channels", "1280", "--json")
    report = json.loads(out)
    assert code == 0
    assert report["params"] == 1_677_098 + 1280  # the seed's Small/10 count plus our head bias
    assert report["kwargs"]["head_channels"] == 1280 and report["image_size"] == 32
    assert report["madds"] == sum(row["madds"] for row in report["rows"])


def test_info_list(capsys):
    code, out, _ = run(capsys, "info", "--list")
    assert code == 0 and out.split() == ["mobilenetv3_large", "mobilenetv3_small"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "mobilenetv3_huge"], "unknown model 'mobilenetv3_huge'; choose one of: mobilenetv3_large"),
        (["info", "mobilenetv3_large", "--width-mult", "-0.5"], "width_mult must be a positive number, got -0.5"),
        (["info", "mobilenetv3_large", "--num-classes", "0"], "num_classes must be a positive integer, got 0"),
        (["info", "mobilenetv3_large", "--width-mult", "wide"], "argument --width-mult: invalid float value"),
        (["info", "mobilenetv3_large", "--img-size", "8"], "--image-size must be at least 32"),  # old spelling kept
        (["info"], "name a model: one of mobilenetv3_large, mobilenetv3_small"),
        (["info", "mobilenetv3_large", "--colour"], "unrecognized arguments: --colour"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and out == ""


def test_python_dash_m_and_exit_code_in_a_real_process():
    ok = subprocess.run([sys.executable, "-m", "mobilenetv3", "info", "mobilenetv3_small"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "params: 2,542,856" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "mobilenetv3", "info", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "mobilenetv3 info: error: unknown model 'nope'; choose one of: " \
                                 "mobilenetv3_large, mobilenetv3_small"


def test_an_internal_value_error_is_a_fault_not_a_user_mistake(capsys, monkeypatch):
    """Only ``UsageError`` (and missing files) are exit 2; a ``ValueError`` from a bug is exit 1, and
    ``MOBILENETV3_DEBUG=1`` shows the traceback of both."""
    import mobilenetv3.tasks
    from mobilenetv3.errors import UsageError

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(mobilenetv3.tasks, "model_info", broken)
    code, out, err = run(capsys, "info", "mobilenetv3_small")
    assert code == 1 and err.strip() == ("mobilenetv3 info: failed: ValueError: an internal bug "
                                         "(set MOBILENETV3_DEBUG=1 for the traceback)")
    monkeypatch.setenv("MOBILENETV3_DEBUG", "1")
    with pytest.raises(ValueError, match="an internal bug"):
        main(["info", "mobilenetv3_small"])
    monkeypatch.undo()
    monkeypatch.setenv("MOBILENETV3_DEBUG", "1")
    with pytest.raises(UsageError, match="unknown model 'mobilenetv3_huge'"):
        main(["info", "mobilenetv3_huge"])


@pytest.mark.parametrize("argv, message", [
    (["train", "--epoch", "1"], "unrecognized arguments: --epoch 1"),  # not taken as --epochs
    (["bench", "inference", "--quick", "--batch-siz", "1"], "unrecognized arguments: --batch-siz 1"),
])
def test_no_flag_is_taken_from_a_prefix_of_its_name(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_one_spelling_per_setting_and_the_old_ones_still_work(capsys):
    from mobilenetv3.cli import build_parser

    parser = build_parser()
    info = parser.parse_args(["info", "mobilenetv3_small", "--img-size", "64"])
    bench = parser.parse_args(["bench", "inference", "--batch", "1", "2", "--size", "96"])
    assert info.image_size == 64 and (bench.batch_size, bench.image_size) == ([1, 2], 96)
    for command in ("info", "bench", "predict"):
        helptext = parser._subparsers._group_actions[0].choices[command].format_help()
        assert "--img-size" not in helptext and "--size" not in helptext and "--batch " not in helptext
