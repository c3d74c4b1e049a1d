"""The LIDC image baselines (3D ResNet on the nodule crop, the multi-view CNN) end to end through
the command line, on nodule VOIs written by builders.write_vois."""

import csv
import json

import numpy as np
import pytest

from medsight.cli import main
from medsight.metrics import binary_metrics
from medsight.rundir import RunDir

from builders import CONFIGS, write_vois


@pytest.mark.slow
@pytest.mark.parametrize("config,extra", [
    ("lidc_voi_resnet3d.yaml", ["--set", "model.options.width=8", "--set", "data.image_size=[8,16,16]"]),
    ("lidc_voi_multiview.yaml", ["--set", "model.options.width=8", "--set", "data.image_size=[24,24]"]),
])
def test_lidc_baselines_train_predict_evaluate(tmp_path, capsys, config, extra):
    data = write_vois(tmp_path / "vois")
    run = tmp_path / "run"
    args = ["--data", str(data), "--out", str(run), "--epochs", "2", "--device", "cpu",
            "--set", "data.folds=3", "--set", "data.fold=0", "--set", "data.val_fraction=0.3", *extra]
    assert main(["train", str(CONFIGS / config), *args]) == 0
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    lines = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "id,p_malignant,pred" and len(lines) == 25
    capsys.readouterr()
    assert main(["evaluate", str(run), str(data), "--split", "heldout", "--out", str(tmp_path / "m.json")]) == 0
    table = capsys.readouterr().out
    assert "AUC" in table and "SEN" in table and "SPE" in table
    # the evaluated metrics are those of the written probabilities of the held-out nodules, at the
    # threshold the run chose on its validation nodules and at 0.5
    result = json.loads((tmp_path / "m.json").read_text())
    heldout = set(RunDir(run).split_ids("heldout"))
    rows = [r for r in csv.DictReader(open(tmp_path / "pred" / "predictions.csv")) if r["id"] in heldout]
    truth = {f"{r['patient_id']}_R_{r['nodule_id']}": r["Diagnosis"] == "Malign"
             for r in csv.DictReader(open(data / "MetadatabyNoduleMaxVoting.csv"))}
    y = np.array([truth[r["id"]] for r in rows])
    p = np.array([float(r["p_malignant"]) for r in rows])
    threshold = RunDir(run).read_record().thresholds["malignant"]
    assert result["n"] == len(rows) == len(heldout) and 0 < y.sum() < len(y)
    for got, cut in ((result["metrics"], threshold), (result["fixed_threshold_metrics"], 0.5)):
        want = binary_metrics(y, p, cut)
        assert {k: round(got[k], 4) for k in ("ACC", "SEN", "SPE", "AUC")} == \
            {k: round(want[k], 4) for k in ("ACC", "SEN", "SPE", "AUC")}, cut
