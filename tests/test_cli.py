"""The command line: subcommands listed, `info` figures, a real `python -m` process, faults told from mistakes.

Bad input of every kind (one line, exit code 2) is in test_bad_input.py.
"""
import json

import pytest

from mobilenetv3.cli import main

from conftest import run_cli

SUBCOMMANDS = ["train", "eval", "export", "predict", "convert", "bench", "info"]


def test_help_lists_every_subcommand():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert f"    {name} " in result.stdout


def test_info_prints_params_and_madds():
    result = run_cli("info", "mobilenetv3_large")
    out = result.stdout
    assert result.returncode == 0 and result.stderr == ""
    assert "params: 5,483,032" in out
    assert "MAdds:  216,589,760 (216.6M) at 224x224" in out
    assert "blocks.14" in out and "final_conv" in out


def test_info_json_and_options():
    result = run_cli("info", "mobilenetv3_small", "--num-classes", "10", "--img-size", "32", "--head-channels",
                     "1280", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0
    assert report["params"] == 1_677_098 + 1280  # the seed's Small/10 count plus our head bias
    assert report["kwargs"]["head_channels"] == 1280 and report["image_size"] == 32
    assert report["madds"] == sum(row["madds"] for row in report["rows"])


def test_info_list():
    result = run_cli("info", "--list")
    assert result.returncode == 0 and result.stdout.split() == ["mobilenetv3_large", "mobilenetv3_small"]


def test_python_dash_m_in_a_real_process():
    """``python -m mobilenetv3`` runs; its exit code for a mistake (2) is a case of test_bad_input.py."""
    ok = run_cli("info", "mobilenetv3_small", process=True)
    assert ok.returncode == 0 and "params: 2,542,856" in ok.stdout


def test_an_internal_value_error_is_a_fault_not_a_user_mistake(monkeypatch):
    """Only ``UsageError`` (and missing files) are exit 2; a ``ValueError`` from a bug is exit 1, and
    ``MOBILENETV3_DEBUG=1`` shows the traceback of both (so that part calls ``main`` itself: run_cli runs
    the command as users do, without MOBILENETV3_DEBUG)."""
    import mobilenetv3.tasks
    from mobilenetv3.errors import UsageError

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(mobilenetv3.tasks, "model_info", broken)
    result = run_cli("info", "mobilenetv3_small")
    assert result.returncode == 1 and result.stderr.strip() == ("mobilenetv3 info: failed: ValueError: an internal bug "
                                         "(set MOBILENETV3_DEBUG=1 for the traceback)")
    monkeypatch.setenv("MOBILENETV3_DEBUG", "1")
    with pytest.raises(ValueError, match="an internal bug"):
        main(["info", "mobilenetv3_small"])
    monkeypatch.undo()
    monkeypatch.setenv("MOBILENETV3_DEBUG", "1")
    with pytest.raises(UsageError, match="unknown model 'mobilenetv3_huge'"):
        main(["info", "mobilenetv3_huge"])


def test_one_spelling_per_setting_and_the_old_ones_still_work():
    from mobilenetv3.cli import build_parser

    parser = build_parser()
    info = parser.parse_args(["info", "mobilenetv3_small", "--img-size", "64"])
    bench = parser.parse_args(["bench", "inference", "--batch", "1", "2", "--size", "96"])
    assert info.image_size == 64 and (bench.batch_size, bench.image_size) == ([1, 2], 96)
    for command in ("info", "bench", "predict"):
        helptext = parser._subparsers._group_actions[0].choices[command].format_help()
        assert "--img-size" not in helptext and "--size" not in helptext and "--batch " not in helptext
