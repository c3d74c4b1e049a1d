"""Cross-fitting (``features.cnn.head_cases: crossfit``, ``features.fisher.weight_cases: crossfit``):
every training case is described exactly once, by an inner CNN that learnt neither from it nor from
its patient; Fuse-TSD's CNN head and fgFV's encoding learn from those descriptions; validation and
new cases are described by each of the k CNNs and the probabilities averaged; a resumed run keeps
the inner CNNs it had finished; bad settings exit with code 2 and leave no run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import medsight.recipes.fgfv as fgfv
import medsight.recipes.fuse_tsd as fuse_tsd
from medsight.cli import main
from medsight.recipes import parse_config
from medsight.rundir import RunDir, StageRecord

from builders import CONFIGS, write_vois


@pytest.fixture(scope="module")
def vois(tmp_path_factory):
    return write_vois(tmp_path_factory.mktemp("vois") / "vois")


def patient(case_id: str) -> str:
    return case_id.split("_R_")[0]  # LIDC-IDRI-0003_R_1: patient 3's first nodule


def fuse_tsd_config(root, **cnn):
    return parse_config({
        "recipe": "fuse_tsd", "seed": 0,
        "data": {"format": "lidc-voi", "root": str(root), "task": "malignancy", "preprocess": "nodule_crop",
                 "preprocess_options": {"size_mm": [16, 16, 16]}, "image_size": [16, 16, 16], "val_fraction": 0.3},
        "features": {"fourier": {"n_coefficients": 4}, "cnn": {"head_cases": "crossfit", **cnn}},
        "model": {"name": "resnet14", "options": {"stem": "small", "width": 4}},
        "train": {"epochs": 2, "batch_size": 16},
        "head": {"name": "svm"},
    })


def fake_fit_network(calls: list):
    """fit_network's stand-in: notes which cases each CNN would train on and moves its weights by a
    draw of its own (so that every CNN describes differently), without training."""
    def fit_network(run, record, stage, step, train, val, cfg, device, console, callbacks=(), folder="", **kw):
        model = step.models["model"]
        model.trained_on = {i.split("#")[0] for i in train.ids}  # slice ids are <nodule>#z<k>
        gen = torch.Generator().manual_seed(len(calls) + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        calls.append((stage, folder, model))
        record = record.with_stage(stage, StageRecord(finished=True, best_epoch=1))
        run.write_record(record)
        return record
    return fit_network


def spy(module, name: str, seen: list):
    """``module.name`` that also appends its arguments and result to ``seen``."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append((args, kwargs, out))
        return out
    return wrapper


def check_out_of_fold(calls, described, train_ids, k, record):
    """The CNNs trained are the k inner ones, each in its own folder (no CNN learns from every
    training case); they describe every training case once, each a case it did not learn from, of a
    patient it did not learn from, and the record says which. Returns {case id: its description}."""
    assert [(stage, folder) for stage, folder, _ in calls] == [(f"cnn_fold{j}", f"cnn_fold{j}") for j in range(k)]
    ids_ = set(train_ids)
    inner = [(model, ids, rows) for model, ids, rows in described if set(ids) <= ids_]
    assert [id(model) for model, _, _ in inner] == [id(model) for _, _, model in calls]
    assert sorted(i for _, ids, _ in inner for i in ids) == sorted(train_ids)  # each exactly once
    for (stage, _, model), (_, ids, _) in zip(calls, inner):
        assert record.stage(stage).fitted["describes"] == ids
        assert not set(ids) & model.trained_on
        assert set(ids) | model.trained_on == set(train_ids)
        assert not {patient(i) for i in ids} & {patient(i) for i in model.trained_on}  # patient-grouped folds
    return {i: row for _, ids, rows in inner for i, row in zip(ids, rows)}


def test_fuse_tsd_cnn_head_learns_from_out_of_fold_features(vois, tmp_path, monkeypatch):
    calls, features, stages = [], [], []
    monkeypatch.setattr(fuse_tsd, "fit_network", fake_fit_network(calls))
    monkeypatch.setattr(fuse_tsd, "slice_features", spy(fuse_tsd, "slice_features", features))
    monkeypatch.setattr(fuse_tsd, "descriptor_stage", spy(fuse_tsd, "descriptor_stage", stages))
    run = RunDir(tmp_path / "run")
    record = fuse_tsd.FuseTSD(fuse_tsd_config(vois, crossfit_folds=3)).train(run, device="cpu")
    assert record.finished
    train_ids, val_ids = run.split_ids("train"), run.split_ids("val")
    described = [(args[0], list(args[1].ids), out[0]) for args, _, out in features]
    oof = check_out_of_fold(calls, described, train_ids, 3, record)

    (args, kwargs, (_, heads, val_proba)), = stages
    train, val = args[4], args[6]
    assert np.array_equal(train["cnn"], np.stack([oof[i] for i in train_ids]))  # the CNN head's input
    assert kwargs["rows"] == {}  # every training nodule, for every head
    # the validation nodules as each inner CNN describes them, in the CNNs' order
    by_val = [rows for model, ids, rows in described if ids == val_ids]
    assert len(val) == 3 and all(np.array_equal(v["cnn"], rows) for v, rows in zip(val, by_val))
    assert all(np.array_equal(v["fourier"], val[0]["fourier"]) for v in val)
    # the validation probabilities are those of the heads averaged over the three descriptions
    each = [heads.predict_proba(v) for v in val]
    assert np.allclose(val_proba, np.mean(each, axis=0))  # mean fusion: the mean of the heads' means
    assert not np.allclose(val_proba, each[0])


def fgfv_config(**fisher):
    return parse_config({
        "recipe": "fgfv", "seed": 0,
        "data": {"format": "synthetic", "task": None, "options": {"n": 40, "size": 32, "seed": 0},
                 "image_size": [32, 32], "val_fraction": 0.25},
        "model": {"name": "resnet14", "options": {"width": 4}},
        "train": {"epochs": 1, "batch_size": 8},
        "features": {"fisher": {"encoding": "fgfv", "n_components": 2, "steps": 20, "iterations": 1,
                                "weight_cases": "crossfit", **fisher}},
        "head": {"name": "svm", "options": {"kernel": "linear", "C": 10, "standardize": False}},
    })


def test_fgfv_encoding_learns_from_out_of_fold_descriptors(tmp_path, monkeypatch):
    from medsight.features.foreground import ForegroundFisherVector
    calls, features, fits, backs = [], [], [], []
    monkeypatch.setattr(fgfv, "fit_network", fake_fit_network(calls))
    monkeypatch.setattr(fgfv, "local_descriptors", spy(fgfv, "local_descriptors", features))
    monkeypatch.setattr(ForegroundFisherVector, "fit", spy(ForegroundFisherVector, "fit", fits))
    monkeypatch.setattr(fgfv, "held_back", spy(fgfv, "held_back", backs))
    run = RunDir(tmp_path / "run")
    record = fgfv.Fisher(fgfv_config(crossfit_folds=4)).train(run, device="cpu")
    assert record.finished
    train_ids = run.split_ids("train")
    described = [(args[0], list(args[1].ids), out[0]) for args, _, out in features]
    oof = check_out_of_fold(calls, described, train_ids, 4, record)

    (_, X, y), kwargs, _ = fits[0]
    assert len(X) == len(train_ids) and all(np.array_equal(x, oof[i]) for x, i in zip(X, train_ids))
    assert kwargs["validation"] == backs[0][2][1]  # the patient-grouped quarter of held_back scores the weights
    assert backs[0][0][1:] == (0.25, 0)
    val_ids = run.split_ids("val")
    by_val = [rows for model, ids, rows in described if ids == val_ids]
    assert len(by_val) == 4  # each CNN describes the validation cases


def test_crossfit_settings_are_checked(vois, tmp_path, capsys):
    fuse = ["train", str(CONFIGS / "lidc_voi_fuse_tsd.yaml"), "--data", str(vois), "--device", "cpu",
            "--set", "features.cnn.head_cases=crossfit"]
    fisher = ["train", str(CONFIGS / "ph2_fgfv.yaml"), "--set", "data.format=synthetic", "--set", "data.task=null",
              "--set", "data.options={n: 24, size: 32, seed: 0}", "--device", "cpu",
              "--set", "features.fisher.weight_cases=crossfit"]
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")  # a file, not a crossfit run directory
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    for args, key in [(fuse + ["--set", "features.cnn.crossfit_folds=1"], "crossfit_folds"),
                      (fuse + ["--set", "features.cnn.head_cases=crossfold"], "head_cases"),
                      (fuse + ["--set", f"features.cnn.weights={weights}"], "no such run directory"),
                      (fuse + ["--set", f"features.cnn.weights={not_a_run}"], "not a crossfit run directory"),
                      (fisher + ["--set", "features.fisher.crossfit_folds=1"], "crossfit_folds"),
                      (fisher + ["--set", "features.fisher.weight_cases=cross"], "weight_cases"),
                      (fisher + ["--set", f"features.fisher.cnn_weights={not_a_run}"], f"{not_a_run}: not a crossfit"),
                      # an option of another protocol is refused, not ignored
                      (fuse + ["--set", "features.cnn.held_back=0.3"], "held_back applies to head_cases: held_back"),
                      (fuse + ["--set", "features.cnn.head_cases=seen", "--set", "features.cnn.crossfit_folds=3"],
                       "crossfit_folds applies to head_cases: crossfit, not seen"),
                      (fisher + ["--set", "features.fisher.weight_cases=held_back",
                                 "--set", "features.fisher.crossfit_folds=3"],
                       "crossfit_folds applies to weight_cases: crossfit, not held_back"),
                      # 12 patients, about 8 of them training: more inner folds than patients
                      (fuse + ["--set", "features.cnn.crossfit_folds=9", "--set", "data.val_fraction=0.3"],
                       "features.cnn.crossfit_folds: 9 inner folds")]:
        out = tmp_path / "run"
        assert main([*args, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert key in err, err
        assert not out.exists()  # nothing in the way of the corrected command
    assert fuse_tsd_config("x").cnn.crossfit_folds == 4  # the default


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_after_an_interrupted_inner_cnn_keeps_the_finished_ones(vois, tmp_path, monkeypatch):
    """Stopped in the second inner CNN's first epoch: the resumed run reads the first back, takes
    up the second from its checkpoint, and ends where an uninterrupted run ends."""
    from medsight.engine.loop import Trainer

    whole = RunDir(tmp_path / "whole")
    fuse_tsd.FuseTSD(fuse_tsd_config(vois, crossfit_folds=3)).train(whole, device="cpu")

    epochs = []

    def interrupt(epoch, record):
        epochs.append(epoch)
        if len(epochs) == 3:  # fold 0's two epochs, then fold 1's first
            raise Interrupt

    cut = RunDir(tmp_path / "cut")
    with pytest.raises(Interrupt):
        fuse_tsd.FuseTSD(fuse_tsd_config(vois, crossfit_folds=3)).train(cut, device="cpu", callbacks=[interrupt])
    record = cut.read_record()
    assert record.stage("cnn_fold0").finished and not record.stage("cnn_fold1").finished
    first = (cut.path / "cnn_fold0" / "model.safetensors").read_bytes()

    trained = []
    real_fit = Trainer.fit

    def noting_fit(self, *args, **kwargs):
        trained.append(self.folder.name)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", noting_fit)
    record = fuse_tsd.FuseTSD(fuse_tsd_config(vois, crossfit_folds=3)).train(cut, device="cpu")
    assert trained == ["cnn_fold1", "cnn_fold2"]  # fold 0 not trained again
    assert record.finished and (cut.path / "cnn_fold0" / "model.safetensors").read_bytes() == first
    for name in ("cnn_fold0/model.safetensors", "cnn_fold1/model.safetensors", "cnn_fold2/model.safetensors",
                 "heads.safetensors", "metrics.json"):
        assert (cut.path / name).read_bytes() == (whole.path / name).read_bytes(), name


@pytest.mark.slow
def test_fgfv_encodings_share_the_cnns_of_an_earlier_crossfit_run(tmp_path, monkeypatch, capsys):
    """fgFV crossfit end to end: the reloaded run predicts with its k CNNs what validation scored;
    IFV reads those k CNNs instead of training them, once it has found that they described its own
    folds; a run with other folds is refused (exit 2)."""
    from safetensors.numpy import load_file

    from medsight.engine.loop import Trainer
    from medsight.recipes import load_recipe
    from sklearn.metrics import roc_auc_score

    from medsight.recipes.common import open_data

    base = ["--device", "cpu", "--epochs", "1", "--set", "data.format=synthetic", "--set", "data.task=null",
            "--set", "data.options={n: 32, size: 32, seed: 1}", "--set", "data.image_size=[32,32]",
            "--set", "model.options.width=4", "--set", "features.fisher.n_components=2",
            "--set", "features.fisher.scales=[1.0]", "--set", "features.fisher.weight_cases=crossfit",
            "--set", "features.fisher.crossfit_folds=2"]
    first = tmp_path / "fgfv"
    assert main(["train", str(CONFIGS / "ph2_fgfv.yaml"), "--out", str(first), *base]) == 0
    assert not (first / "model.safetensors").exists()  # no CNN trained on every training case
    recipe = load_recipe(first, "cpu")
    assert len(recipe.models_) == 2
    dataset = open_data(recipe.cfg)
    val_ids = set(RunDir(first).split_ids("val"))
    dataset.samples = [s for s in dataset.samples if s.id in val_ids]
    preds = recipe.predict(dataset)
    assert list(preds.loaded.ids) == [s.id for s in dataset.samples]
    each = [recipe.heads_.predict_proba({"fisher": recipe.encoder_.transform(
        fgfv.local_descriptors(model, preds.loaded, recipe.record_.input, [1.0], recipe.device_)[0])})
        for model in recipe.models_]
    assert np.allclose(preds.outputs.numpy(), np.mean(each, axis=0)) and not np.allclose(each[0], each[1])
    y = [recipe.record_.task.label_of(s.diagnosis) for s in dataset.samples]
    validation = json.loads((first / "metrics.json").read_text())["validation"]
    assert validation["AUC"] == pytest.approx(roc_auc_score(y, preds.outputs[:, 1].numpy()), abs=1e-6)
    weights = first

    def no_training(*args, **kwargs):
        raise AssertionError("a CNN was trained")

    monkeypatch.setattr(Trainer, "fit", no_training)
    second = tmp_path / "ifv"
    assert main(["train", str(CONFIGS / "ph2_fgfv.yaml"), "--out", str(second), *base,
                 "--set", "features.fisher.encoding=ifv", "--set", f"features.fisher.cnn_weights={weights}"]) == 0
    for name in ("cnn_fold0/model.safetensors", "cnn_fold1/model.safetensors"):
        a, b = load_file(str(first / name)), load_file(str(second / name))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
    assert RunDir(second).read_record().stage("cnn_fold1").fitted == RunDir(first).read_record().stage("cnn_fold1").fitted
    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["train", str(CONFIGS / "ph2_fgfv.yaml"), "--out", str(other), *base, "--set", "seed=5",
                 "--set", f"features.fisher.cnn_weights={weights}"]) == 2
    assert "described other cases than this run's fold" in capsys.readouterr().err
    assert not other.exists()
