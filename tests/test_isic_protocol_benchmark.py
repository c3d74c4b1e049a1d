"""benchmarks.isic_protocol end to end on a small ISIC-2017 layout, one epoch a run: every variant
trained, each scored once on the official validation set, the table's numbers those of the
evaluations, and a second call reusing every run. The benchmark's ``medsight`` commands run in
this process (the same command lines, without a Python start-up each)."""

import json
import subprocess
import sys
from pathlib import Path

import builders
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
PROJECT = Path(__file__).resolve().parents[1]


def test_every_variant_is_trained_once_and_scored_once_on_the_official_validation_set(tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.syspath_prepend(str(PROJECT))
    from benchmarks import isic_protocol
    from benchmarks.isic_protocol import LABELS, main
    from medsight.cli import main as medsight

    commands = []

    def run_here(argv, check):
        assert argv[:3] == [sys.executable, "-m", "medsight.cli"] and check
        commands.append(argv[3])
        if medsight(argv[3:]) != 0:
            raise subprocess.CalledProcessError(2, argv)

    monkeypatch.setattr(isic_protocol.subprocess, "run", run_here)

    data = builders.write_isic2017_splits(tmp_path / "isic", size=32)
    out = tmp_path / "bench"
    args = ["--data", str(data), "--out", str(out), "--size", "24", "--epochs", "1", "--folds", "2"]
    main(args)
    runs = out / "isic2017_resnet14-24px-seed0"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["ema", "fold0", "fold1", "official", "swa"]
    splits = {d: json.loads((runs / d / "split.json").read_text()) for d in ("official", "fold0", "fold1", "ema")}
    official_val = {s for s in splits["official"]["val"]}
    assert len(official_val) == 12 and not splits["official"].get("withheld")
    for name in ("fold0", "fold1", "ema"):  # the official validation set took no part in these runs
        assert set(splits[name]["withheld"]) == official_val
        assert not official_val & (set(splits[name]["train"]) | set(splits[name]["val"]))
    assert set(splits["fold0"]["val"]) == set(splits["ema"]["val"])
    assert not set(splits["fold0"]["val"]) & set(splits["fold1"]["val"])

    summary = json.loads((out / "summary.json").read_text())
    ensemble = json.loads((runs / "ensemble.json").read_text())
    assert ensemble["members"] == [str(runs / "fold0"), str(runs / "fold1")] and ensemble["n"] == 12
    (ens_row,) = summary["rows"][LABELS["ensemble"]]
    assert ens_row["official val mean AUC"] == ensemble["metrics"]["mean AUC"]
    members = [json.loads((runs / d / "selection.json").read_text()) for d in ("fold0", "fold1")]
    assert ens_row["selection mean AUC"] == pytest.approx((members[0]["mean AUC"] + members[1]["mean AUC"]) / 2)
    alone = [json.loads((runs / f"{d}-official-val.json").read_text()) for d in ("fold0", "fold1")]
    assert [a["run"] for a in alone] == [str(runs / "fold0"), str(runs / "fold1")]
    (members_row,) = summary["rows"][isic_protocol.MEMBERS]
    assert members_row["official val mean AUC"] == pytest.approx(
        (alone[0]["metrics"]["mean AUC"] + alone[1]["metrics"]["mean AUC"]) / 2)
    # (a) chose on the official set, so its selection set is the official set: no gap shows
    (official_row,) = summary["rows"][LABELS["official"]]
    assert official_row["gap (selection - official), mean AUC"] == pytest.approx(0, abs=1e-12)
    swa = json.loads((runs / "swa" / "run.json").read_text())["stages"]["network"]
    assert swa["validation"]["averaged_epochs"] == 1
    assert "(d) ensemble" in capsys.readouterr().out
    assert sorted(commands) == ["evaluate"] * 6 + ["train"] * 5  # 5 runs, each scored alone; 2 as the ensemble

    stamps = {d: (runs / d / "run.json").stat().st_mtime_ns for d in ("official", "fold0", "fold1", "ema", "swa")}
    main(args)  # resumable: nothing is trained or scored again
    assert len(commands) == 11
    assert stamps == {d: (runs / d / "run.json").stat().st_mtime_ns for d in stamps}
    assert json.loads((out / "summary.json").read_text()) == summary
