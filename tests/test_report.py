"""The results table of the talk's layout (the report's run tables use it)."""

import numpy as np
import pytest

from medsight.metrics import summarize_repeats
from medsight.report import format_table

nan = float("nan")


def test_format_table_markdown_with_repeats():
    runs = [{"ACC": 0.8753, "AUC": 0.94}, {"ACC": 0.8993, "AUC": 0.95}]
    rows = {
        "MV-KBC": summarize_repeats(runs),
        "baseline": {"ACC": 0.8538, "AUC": 0.8819, "SEN": nan},
    }
    md = format_table(rows, metrics=["ACC", "AUC", "SEN"], style="markdown")
    lines = md.splitlines()
    assert lines[0] == "| method | ACC | AUC | SEN |"
    assert set(lines[1]) <= set("|:-") and lines[1].count("|") == 5
    std = np.std([0.8753, 0.8993], ddof=1) * 100
    assert lines[2] == f"| MV-KBC | 88.73 ± {std:.2f} | 94.50 ± 0.71 | - |"
    assert lines[3] == "| baseline | 85.38 | 88.19 | n/a |"
    assert len(lines) == 4


def test_format_table_text_defaults_and_options():
    rows = {
        "a": summarize_repeats([{"BMA": 0.798, "AUC": 0.95}]),
        "b|c": summarize_repeats([{"BMA": 0.7, "AUC": nan}, {"BMA": 0.8, "AUC": 0.9}, {"BMA": 0.9, "AUC": 0.8}]),
    }
    text = format_table(rows, percent=False, digits=3)
    lines = text.splitlines()
    assert lines[0].split() == ["method", "BMA", "AUC"]
    assert "|" not in lines[0]
    assert lines[2].split() == ["a", "0.798", "0.950"]  # n == 1: no ± part
    assert "0.800 ± 0.100" in lines[3] and "0.850 ± 0.071 (n=2)" in lines[3]
    md = format_table(rows, style="markdown", percent=False, digits=3)
    assert "| b\\|c |" in md
    with pytest.raises(ValueError, match="style"):
        format_table(rows, style="latex")


def _staged_run(root):
    """A finished MB-DCNN-like run written by hand: coarse / maskcn / enhanced each in its own
    subfolder with a history and training curves, the final metrics at the top."""
    from medsight.data.base import Task
    from medsight.figures import plot_history
    from medsight.io import write_csv
    from medsight.rundir import DataInfo, InputInfo, RunDir, RunRecord, StageRecord

    run = RunDir(root)
    root.mkdir()
    (root / "config.yaml").write_text("recipe: mbdcnn\n")
    stages = {}
    for name, monitor, values in (("coarse", "JA", [0.5, 0.8, 0.7]), ("maskcn", "AUC", [0.6, 0.7, 0.9]),
                                  ("enhanced", "JA", [0.81, 0.86, 0.84])):
        history = [{"epoch": e + 1, "loss": 1.0 / (e + 1), "val_loss": 0.9 - 0.1 * e, monitor: v, "lr": 0.001}
                   for e, v in enumerate(values)]
        (root / name).mkdir()
        write_csv(root / name / "history.csv", history)
        plot_history(history, root / name / "training_curves.png", monitor)
        best = max(history, key=lambda r: r[monitor])
        stages[name] = StageRecord(finished=True, best_epoch=best["epoch"], epochs_run=3, monitor=monitor,
                                   validation=best)
    record = RunRecord("mbdcnn", Task.multiclass("melanoma", ("nevus", "melanoma")),
                       InputInfo(3, (32, 32), (0.5,) * 3, (0.2,) * 3), DataInfo("ph2", "/data/PH2", 9, 3, 0),
                       stages=stages, finished=True, train_seconds=1.0, device="cpu")
    run.write_record(record)
    run.write_metrics({"coarse JA": 0.8, "coarse val_loss": 0.8, "AUC": 0.9, "val_loss": 0.7, "enhanced JA": 0.86},
                      None)
    return root


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_a_report_shows_each_stage_kept_in_a_subfolder(tmp_path):
    from medsight.report import write_report

    run = _staged_run(tmp_path / "mbdcnn_run")
    md = write_report([run], tmp_path / "report.md").read_text()
    lines = md.splitlines()
    assert _cells(lines[2]) == ["method", "AUC", "JA"]  # "coarse JA" moved to the stage's row; no losses
    rows = {cells[0]: cells[1:] for cells in map(_cells, lines[4:8])}
    assert rows == {"mbdcnn_run (validation)": ["90.00", "-"],  # the final model (mask-CN)
                    "mbdcnn_run / coarse (validation)": ["-", "80.00"],  # each stage's kept epoch
                    "mbdcnn_run / maskcn (validation)": ["90.00", "-"],
                    "mbdcnn_run / enhanced (validation)": ["-", "86.00"]}
    for name, metric, best, value in (("coarse", "JA", 2, "0.8000"), ("maskcn", "AUC", 3, "0.9000"),
                                      ("enhanced", "JA", 2, "0.8600")):
        section = md.split(f"### stage {name} (`{name}/`)")[1].split("### stage")[0]
        assert f"best epoch {best} of 3 by validation {metric} ({value})" in section
        assert str(tmp_path / "mbdcnn_run" / name / "history.csv") in section
        table = [_cells(line) for line in section.splitlines() if line.startswith("|")]
        assert table[0] == ["epoch", "loss", "val_loss", metric]
        epochs = [row[0] for row in table[2:]]  # the first, the best and the last epoch
        assert epochs == (["1", "2 (best)", "3"] if best == 2 else ["1", "3 (best)"])
        best_row = table[2:][epochs.index(f"{best} (best)")]
        assert best_row[-1] == value and best_row[1] == f"{1 / best:.4f}"
        assert f"![{name} training_curves.png]({tmp_path / 'mbdcnn_run' / name / 'training_curves.png'})" in section
    page = write_report([run], tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<h3>stage enhanced (enhanced/)</h3>" in page


def test_a_damaged_stage_history_is_named(tmp_path):
    from medsight.errors import InputError
    from medsight.report import write_report

    run = _staged_run(tmp_path / "run")
    (run / "maskcn" / "history.csv").write_text("epoch,loss\n1,not-a-number\n")
    with pytest.raises(InputError, match="history.csv"):
        write_report([run], tmp_path / "report.md")
    assert not (tmp_path / "report.md").exists()
