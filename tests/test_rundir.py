"""The run directory: the typed record (and records of the earlier layout), and the checks that
decide whether training may write into a folder."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from medsight.data.base import Task
from medsight.errors import InputError, MedsightError
from medsight.rundir import (CONFIG_FILE, LAYOUT_VERSION, LOCK_FILE, RECORD_FILE, DataInfo, InputInfo, RunDir, RunRecord,
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
    rows = {name: list(csv.DictReader((tmp_path / f"pred_{name}" / "predictions.csv").open()))
            for name in ("run", "old")}
    assert [(r["id"], r["p_malignant"]) for r in rows["old"]] == [(r["id"], r["p_malignant"]) for r in rows["run"]]
    # layout 1 stored no decision threshold: the old run decides at 0.5, as it did
    assert [r["pred"] for r in rows["old"]] == ["malignant" if float(r["p_malignant"]) >= 0.5 else "benign"
                                                for r in rows["old"]]
    assert main(["report", str(old), "--out", str(tmp_path / "r.md")]) == 0
    assert "network: best epoch 1 of 1" in (tmp_path / "r.md").read_text()


def test_an_attempt_without_progress_never_blocks_another_config(tmp_path):
    """A config error found late left config.yaml, run.json and split.json: the corrected command
    starts afresh instead of being refused as "a different config" (issue 17, item 4)."""
    run = RunDir(tmp_path / "run")
    run.create({**CONFIG, "model": {"name": "resnet99"}})
    run.write_record(record())
    (tmp_path / "run" / "split.json").write_text("{}")
    assert run.resumable(CONFIG) is False
    run.discard_attempt()
    assert not (tmp_path / "run").exists()


def test_a_failed_attempt_with_progress_is_kept(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create(CONFIG)
    run.write_record(record(stages={"network": StageRecord(finished=True)}))
    run.discard_attempt()
    assert (tmp_path / "run" / RECORD_FILE).is_file()


# -- one writer at a time (issue 17, item 3) ---------------------------------------------------------


def write_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                "since": "2026-01-01T00:00:00+00:00"}))


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.locked():
        holder = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert run.resumable(CONFIG) is False  # the lock alone is not a run
        run.create(CONFIG)
        assert (tmp_path / "run" / LOCK_FILE).is_file()  # starting afresh keeps the lock
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    with pytest.raises(RuntimeError), run.locked():
        raise RuntimeError("training failed")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CONFIG_FILE]


def test_a_second_writer_is_refused_naming_the_first(tmp_path, live_pid):
    write_lock(tmp_path / "run", live_pid)
    with pytest.raises(MedsightError, match=rf"pid {live_pid} on host {socket.gethostname()}"):
        with RunDir(tmp_path / "run").locked():
            pass
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == live_pid  # not taken over
    write_lock(tmp_path / "other", 1, host="another-machine")  # another host's process cannot be checked
    with pytest.raises(MedsightError, match="pid 1 on host another-machine"):
        with RunDir(tmp_path / "other").locked():
            pass


def test_a_stale_lock_is_taken_over(tmp_path, dead_pid):
    write_lock(tmp_path / "run", dead_pid)
    with RunDir(tmp_path / "run").locked():
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()
    (tmp_path / "run" / LOCK_FILE).write_text("")  # a crash while writing the lock (unreadable)
    with RunDir(tmp_path / "run").locked():
        pass
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_two_processes_never_hold_the_lock_together(tmp_path):
    """Two processes race for one lock; each notes in a file while it holds it: never two at once."""
    script = (
        "import sys, time, os\n"
        "from medsight.errors import MedsightError\n"
        "from medsight.rundir import RunDir\n"
        "run = RunDir(sys.argv[1]); log = sys.argv[2]\n"
        "for _ in range(40):\n"
        "    try:\n"
        "        with run.locked():\n"
        "            with open(log, 'a') as f: f.write('+\\n')\n"
        "            time.sleep(0.002)\n"
        "            with open(log, 'a') as f: f.write('-\\n')\n"
        "    except MedsightError:\n"
        "        pass\n")
    log = tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "run"), str(log)]) for _ in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    marks = log.read_text().split()
    assert marks and marks == ["+", "-"] * (len(marks) // 2)


def test_a_run_saved_before_an_option_was_added_resumes_with_that_options_default(tmp_path):
    """An upgrade that adds a config key (its default keeps the old behaviour) must not block the
    resume of a run whose config.yaml predates the key; a changed value still does."""
    from builders import CONFIGS
    from medsight.recipes import load_config

    cfg = load_config(CONFIGS / "demo_resnet.yaml")
    saved = cfg.to_dict()
    del saved["train"]["weight_average"], saved["data"]["val_source"]  # as an earlier medsight wrote it
    run = RunDir(tmp_path / "run")
    run.create(saved)
    run.write_record(record(stages={"network": StageRecord(finished=True)}))
    with pytest.raises(MedsightError, match=r"different config \(data.val_source, train.weight_average\)"):
        run.resumable(cfg.to_dict())  # compared as saved, the missing keys differ
    assert run.resumable(cfg.to_dict(), cfg.completed) is True
    changed = load_config(CONFIGS / "demo_resnet.yaml", ["train.weight_average=ema"])
    with pytest.raises(MedsightError, match=r"different config \(train.weight_average\)"):
        run.resumable(changed.to_dict(), changed.completed)
