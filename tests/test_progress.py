"""Long steps are not silent: eval's pass over the data shows a bar on a terminal and a line now and then in a
log file (eval of 10,000 images took ~50 s without a word); a slow export says each stage as it begins (the
export's stages are checked with a real INT8 export in test_export_checks.py)."""
import io
import json
import logging

from mobilenetv3 import progress

from builders import write_weights
from conftest import PROGRESS_LINE, run_cli

SYNTHETIC = ["--dataset", "synthetic", "--synthetic-samples", "40", "--image-size", "32", "--batch-size", "2",
             "--workers", "0"]  # 10 validation images: 3 batches of 4 (the eval batch is twice the batch size)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_loop_logs_a_line_now_and_then(monkeypatch, caplog):
    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a line after every item but the last
    with caplog.at_level(logging.INFO, logger="mobilenetv3.progress"):
        assert list(progress.tracked(iter("abc"), 3, "eval x val")) == ["a", "b", "c"]
    assert [r.getMessage() for r in caplog.records] == ["eval x val: 1 of 3 batches, 0 s",
                                                        "eval x val: 2 of 3 batches, 0 s"]
    assert all(PROGRESS_LINE.fullmatch(r.getMessage()) for r in caplog.records)


def test_a_fast_loop_and_another_rank_say_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="mobilenetv3.progress"):
        assert list(progress.tracked(range(5), 5, "fast")) == list(range(5))  # well under EVERY_S
        assert list(progress.tracked(range(5), 5, "rank 1", enabled=False)) == list(range(5))
    assert caplog.records == []


def test_on_a_terminal_a_loop_shows_a_bar(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    assert list(progress.tracked(range(4), 4, "eval x val")) == [0, 1, 2, 3]
    assert "eval x val:" in terminal.getvalue() and "/4 [" in terminal.getvalue()  # drawn, then cleared


def test_stages_are_one_line_each_with_the_time_since_the_first(caplog):
    with caplog.at_level(logging.INFO, logger="mobilenetv3.progress"):
        stages = progress.Stages("export executorch-int8")
        stages.begin("reading fashion-mnist's images")
        stages.begin("quantising")
        progress.Stages("export onnx", enabled=False).begin("nothing to say")
    assert [r.getMessage() for r in caplog.records] == ["export executorch-int8, 0 s: reading fashion-mnist's images",
                                                        "export executorch-int8, 0 s: quantising"]


def test_eval_reports_its_progress_in_a_log_file(monkeypatch, tmp_path):
    weights = write_weights(tmp_path / "w.pt", num_classes=4)
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    result = run_cli("eval", "--checkpoint", weights, *SYNTHETIC, "--json", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["count"] == 10
    lines = [line for line in result.stderr.splitlines() if PROGRESS_LINE.fullmatch(line)]
    assert [line.rsplit(",", 1)[0] for line in lines] == ["eval synthetic val: 1 of 3 batches",
                                                          "eval synthetic val: 2 of 3 batches"]


def test_a_bar_waits_before_it_shows(monkeypatch):
    """A fast loop on a terminal draws nothing: the bar shows after DELAY_S."""
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert progress.DELAY_S >= 1 and list(progress.tracked(range(3), 3, "quick")) == [0, 1, 2]
    assert terminal.getvalue() == ""
