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
