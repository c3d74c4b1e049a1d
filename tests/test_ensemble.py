"""The ISIC protocol end to end on a small ISIC-2017 layout: runs that validate on folds of the
training set (data.val_source: train, data.val_fold) with the official validation set withheld,
weight averaging through the recipe, and the members scored as one ensemble (evaluate / predict
with several run directories): the mean of their outputs, checked members, exit 2 otherwise."""

import csv
import json
import shutil

import builders
import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from medsight.cli import main
from medsight.data import open_dataset
from medsight.ensemble import load_runs
from medsight.rundir import RunDir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

CONFIG = {
    "recipe": "classification", "data": {"format": "isic2017", "task": "diagnosis", "image_size": [24, 24],
                                         "val_source": "train", "val_fraction": 0.5},
    "model": {"name": "resnet18", "options": {"width": 8}},
    "train": {"epochs": 2, "batch_size": 12, "class_weights": "balanced"},
    "augment": {"rot90": False},
    "predict": {"one_vs_rest": ["melanoma", "seborrheic_keratosis"]},
}
MEMBERS = {  # two folds of the training set, one kept as an EMA, one as SWA
    "m0": ["--set", "data.val_fold=0", "--set", "train.weight_average=ema", "--set", "train.ema_decay=0.9"],
    "m1": ["--set", "data.val_fold=1", "--set", "train.weight_average=swa", "--set", "train.swa_epochs=2"],
}


def cli(capsys, *args):
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic")
    data = builders.write_isic2017_splits(root / "isic")
    config = root / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    for name, extra in MEMBERS.items():
        assert main(["train", str(config), "--data", str(data), "--out", str(root / name), "--device", "cpu",
                     *extra]) == 0
    return data, [root / name for name in MEMBERS]


def test_the_members_validate_on_folds_of_the_training_set_and_withhold_the_official_one(trained):
    data, runs = trained
    dataset = open_dataset(data)
    official = {split: {s.id for s in dataset.samples if s.split == split} for split in ("train", "val")}
    vals = []
    for run_dir in runs:
        split = json.loads((run_dir / "split.json").read_text())
        assert set(split["withheld"]) == official["val"]
        assert set(split["train"]) | set(split["val"]) == official["train"]
        assert not set(split["train"]) & set(split["val"])
        vals.append(set(split["val"]))
    assert not vals[0] & vals[1] and vals[0] | vals[1] == official["train"]  # the two folds partition it


def test_the_averaged_weights_are_what_the_runs_keep(trained):
    _, (ema_run, swa_run) = trained
    swa = RunDir(swa_run).read_record().stage("network")
    assert swa.best_epoch == 2 and swa.validation["averaged_epochs"] == 2
    ema = RunDir(ema_run).read_record().stage("network")
    history = list(csv.DictReader(open(ema_run / "history.csv")))
    best = next(r for r in history if int(r["epoch"]) == ema.best_epoch)
    assert float(best["mean AUC"]) == pytest.approx(ema.validation["mean AUC"])


def test_the_ensemble_predicts_the_mean_of_its_members(trained, tmp_path, capsys):
    data, runs = trained
    official_val = open_dataset(data).subset("val")
    members = [load_runs([r], "cpu").predict(official_val).outputs for r in runs]
    ensemble = load_runs(runs, "cpu")
    assert torch.allclose(ensemble.predict(official_val).outputs, (members[0] + members[1]) / 2, atol=1e-7)

    for name, args in (("a", [runs[0]]), ("b", [runs[1]]), ("ens", runs)):
        assert cli(capsys, "predict", *args, data, "--out", tmp_path / name, "--device", "cpu")[0] == 0
    read = {n: list(csv.DictReader(open(tmp_path / n / "predictions.csv"))) for n in ("a", "b", "ens")}
    assert [r["id"] for r in read["ens"]] == [r["id"] for r in read["a"]] and len(read["ens"]) == 48
    for a, b, e in zip(read["a"], read["b"], read["ens"]):
        for column in ("p_melanoma", "p_seborrheic_keratosis"):
            assert float(e[column]) == pytest.approx((float(a[column]) + float(b[column])) / 2, abs=1.1e-6)


def test_the_ensemble_is_scored_once_on_the_official_validation_set(trained, tmp_path, capsys):
    data, runs = trained
    code, out, err = cli(capsys, "evaluate", *runs, data, "--split", "val", "--out", tmp_path / "e.json",
                         "--device", "cpu")
    assert code == 0, err
    assert "ensemble of 2" in out and "note:" not in err  # none of its cases trained or chose anything
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["members"] == [str(r) for r in runs] and result["used_in_training"] == {"train": 0, "val": 0}
    official_val = open_dataset(data).subset("val")
    y = np.array([["nevus", "melanoma", "seborrheic_keratosis"].index(s.diagnosis) for s in official_val.samples])
    proba = load_runs(runs, "cpu").predict(official_val).outputs.numpy()
    assert result["n"] == 12
    assert result["metrics"]["melanoma AUC"] == pytest.approx(roc_auc_score(y == 1, proba[:, 1]))
    assert result["metrics"]["seborrheic_keratosis AUC"] == pytest.approx(roc_auc_score(y == 2, proba[:, 2]))
    members = [RunDir(r).read_record().thresholds for r in runs]
    assert result["threshold"] == pytest.approx({c: (members[0][c] + members[1][c]) / 2 for c in members[0]})
    # each member's own training cases are counted when the ensemble is scored on them
    code, _, err = cli(capsys, "evaluate", *runs, data, "--split", "train", "--out", tmp_path / "t.json")
    assert code == 0 and "36 were used to train these runs and 36 to validate" in err


@pytest.mark.parametrize("field, value, named", [("input", {"image_size": [16, 16]}, "input"),
                                                 ("task", {"name": "other"}, "task")])
def test_members_that_do_not_match_are_refused_naming_the_run(trained, tmp_path, capsys, field, value, named):
    data, runs = trained
    odd = tmp_path / "odd"
    shutil.copytree(runs[1], odd)
    record = json.loads((odd / "run.json").read_text())
    record[field].update(value)
    (odd / "run.json").write_text(json.dumps(record))
    code, _, err = cli(capsys, "evaluate", runs[0], odd, data, "--out", tmp_path / "e.json", "--device", "cpu")
    assert code == 2 and str(odd) in err and named in err and "cannot join an ensemble" in err
    assert not (tmp_path / "e.json").exists()


def test_an_ensemble_needs_its_own_output_file(trained, capsys):
    data, runs = trained
    before = sorted(p.name for p in runs[0].iterdir())
    code, _, err = cli(capsys, "evaluate", *runs, data)
    assert code == 2 and "give --out" in err
    assert sorted(p.name for p in runs[0].iterdir()) == before
    code, _, err = cli(capsys, "evaluate", runs[0], runs[0], data, "--out", "x.json")
    assert code == 2 and "named twice" in err


def test_validation_folds_of_the_official_split_are_refused_before_anything_is_written(trained, tmp_path, capsys):
    data, _ = trained
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "data": {**CONFIG["data"], "val_source": "official"}}))
    code, _, err = cli(capsys, "train", config, "--data", data, "--out", tmp_path / "run", "--set", "data.val_fold=1")
    assert code == 2 and "data.val_fold" in err and "data.val_source: train" in err
    assert not (tmp_path / "run").exists()
