"""The run directory: the typed record (and records of the earlier layout), and the checks that
decide whether training may write into a folder."""

import json

import pytest
import yaml

from medsight.data.base import Task
from medsight.errors import InputError, MedsightError
from medsight.rundir import (CONFIG_FILE, LAYOUT_VERSION, RECORD_FILE, DataInfo, InputInfo, RunDir, RunRecord,
                             StageRecord)

CONFIG = {"recipe": "classification", "seed": 0, "train": {"epochs": 3}}


def record(**kw) -> RunRecord:
    return RunRecord(recipe="classification", task=Task.multiclass("melanoma", ("nevus", "melanoma")),
                     input=InputInfo(3, (64, 64), (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)),
                     data=DataInfo("ph2", "/data/PH2", 90, 22, 28), **kw)


def test_the_record_round_trips_through_json(tmp_path):
    stage = StageRecord(finished=True, best_epoch=7, epochs_run=9, monitor="AUC", validation={"AUC": 0.9},
                        fitted={"heads": {"all": {"type": "svm", "params": {"C": 1.0}}}})
    run = RunDir(tmp_path)
    original = record(stages={"network": stage}, finished=True, train_seconds=12.5, device="cpu")
    run.write_record(original)
    raw = json.loads((tmp_path / RECORD_FILE).read_text())
    assert raw["version"] == LAYOUT_VERSION and raw["task"]["mapping"] == {"nevus": 0, "melanoma": 1}
    back = run.read_record()
    assert back == original
    assert back.stage("network").best_epoch == 7 and back.stage("other") == StageRecord()
    assert back.with_stage("other", StageRecord(finished=True)).stage("other").finished
    assert back.stage("other") == StageRecord()  # records are frozen: with_stage made a new one


def test_a_record_of_the_earlier_layout_is_read_in_stages(tmp_path):
    layout_1 = {"medsight_version": "0.1.0", "recipe": "fuse_tsd", "finished": True,
                "task": {"name": "malignancy", "classes": ["benign", "malignant"],
                         "mapping": {"Benign": 0, "Malign": 1}, "multilabel": False},
                "in_channels": 1, "image_size": [32, 32, 32], "mean": [0.3], "std": [0.2],
                "data": {"format": "lidc-voi", "root": "/v", "train": 500, "val": 90, "heldout": 0},
                "monitor": "AUC", "best_epoch": 4, "epochs_run": 12, "train_seconds": 300.0, "device": "cpu",
                "feature_names": {"glcm": ["glcm_Contrast"]}, "heads": {"glcm": {"type": "boosted_mlp", "params": {}}}}
    (tmp_path / RECORD_FILE).write_text(json.dumps(layout_1))
    rec = RunDir(tmp_path).read_record()
    assert rec.version == 1 and rec.input == InputInfo(1, (32, 32, 32), (0.3,), (0.2,))
    assert rec.stage("cnn") == StageRecord(finished=True, best_epoch=4, epochs_run=12, monitor="AUC")
    assert rec.stage("descriptors").fitted["heads"]["glcm"]["type"] == "boosted_mlp"
    assert rec.stage("descriptors").fitted["feature_names"] == {"glcm": ["glcm_Contrast"]}
    (tmp_path / RECORD_FILE).write_text(json.dumps({"recipe": "classification"}))
    with pytest.raises(InputError, match="not a medsight run record"):
        RunDir(tmp_path).read_record()


def test_a_new_or_empty_folder_starts_a_run(tmp_path):
    assert RunDir(tmp_path / "new").resumable(CONFIG) is False
    (tmp_path / "empty").mkdir()
    assert RunDir(tmp_path / "empty").resumable(CONFIG) is False


def test_what_training_refuses_to_write_into(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(MedsightError, match="is not a medsight run"):
        RunDir(tmp_path / "other").resumable(CONFIG)

    run = RunDir(tmp_path / "run")
    run.create(CONFIG)
    run.write_record(record(finished=True))
    with pytest.raises(MedsightError, match="holds a finished run"):
        run.resumable(CONFIG)

    run.write_record(record(stages={"network": StageRecord(finished=True)}))
    with pytest.raises(MedsightError, match=r"different config \(train.epochs\)"):
        run.resumable({**CONFIG, "train": {"epochs": 4}})
    assert run.resumable(CONFIG) is True  # a finished stage is progress to resume


def test_an_attempt_without_progress_is_started_again(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create(CONFIG)
    run.write_record(record())
    (tmp_path / "run" / "split.json").write_text("{}")
    assert run.resumable(CONFIG) is False  # no finished stage, no checkpoint
    run.create(CONFIG)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CONFIG_FILE]
    assert yaml.safe_load((tmp_path / "run" / CONFIG_FILE).read_text()) == CONFIG


def test_an_unfinished_run_of_the_earlier_layout_is_not_resumed(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create(CONFIG)
    old = {**record().to_json(), "stages": {"network": {"finished": True}}, "version": 1}
    (tmp_path / "run" / RECORD_FILE).write_text(json.dumps(old))
    with pytest.raises(MedsightError, match="earlier medsight that cannot be resumed"):
        run.resumable(CONFIG)


def test_a_finished_run_is_required_to_predict(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(InputError, match="config.yaml is missing"):
        run.finished_record()
    run.create(CONFIG)
    run.write_record(record())
    with pytest.raises(InputError, match="training has not finished"):
        run.finished_record()
    run.write_split({"train": ["a", "b"], "heldout": ["c"]})
    assert run.split_ids("heldout") == ["c"] and run.split_ids("val") == []


@pytest.mark.slow
def test_a_run_of_the_earlier_layout_predicts_as_before(tmp_path):
    """A run written before the stages existed (one flat run.json, every section in config.yaml)
    loads, predicts the same, and is described by the report."""
    import shutil

    from medsight.cli import main

    from builders import CONFIGS

    run = tmp_path / "run"
    assert main(["train", str(CONFIGS / "demo_resnet.yaml"), "--out", str(run), "--epochs", "1", "--device", "cpu",
                 "--set", "data.options.n=32", "--set", "data.options.size=32", "--set", "data.image_size=[32,32]",
                 "--set", "model.options.width=4"]) == 0
    old = tmp_path / "old"
    shutil.copytree(run, old)
    rec = json.loads((run / RECORD_FILE).read_text())
    stage = rec["stages"]["network"]
    layout_1 = {"medsight_version": "0.1.0", "recipe": "classification", "finished": True, "task": rec["task"],
                "in_channels": rec["input"]["channels"], "image_size": rec["input"]["image_size"],
                "mean": rec["input"]["mean"], "std": rec["input"]["std"], "data": rec["data"],
                "monitor": stage["monitor"], "best_epoch": stage["best_epoch"], "epochs_run": stage["epochs_run"],
                "train_seconds": rec["train_seconds"], "device": rec["device"]}
    (old / RECORD_FILE).write_text(json.dumps(layout_1))
    config = yaml.safe_load((run / CONFIG_FILE).read_text())
    config.update(features={}, head={"name": "svm", "options": {}, "fusion": "mean"})  # layout 1 wrote every section
    (old / CONFIG_FILE).write_text(yaml.safe_dump(config))

    cases = tmp_path / "cases"
    assert main(["data", "synth", str(cases), "--n", "6", "--size", "40", "--seed", "2"]) == 0
    for name in ("run", "old"):
        assert main(["predict", str(tmp_path / name), str(cases), "--out", str(tmp_path / f"pred_{name}"),
                     "--device", "cpu"]) == 0
    import csv

    old_rows, new_rows = (list(csv.DictReader(open(tmp_path / f"pred_{name}" / "predictions.csv")))
                          for name in ("old", "run"))
    assert [(r["id"], r["p_malignant"]) for r in old_rows] == [(r["id"], r["p_malignant"]) for r in new_rows]
    # a layout-1 run chose no threshold: its decisions are at predict.threshold
    assert [r["pred"] for r in old_rows] == ["malignant" if float(r["p_malignant"]) >= 0.5 else "benign"
                                             for r in old_rows]
    assert main(["report", str(old), "--out", str(tmp_path / "r.md")]) == 0
    assert "network: best epoch 1 of 1" in (tmp_path / "r.md").read_text()
