"""Descriptor recipes end to end (3D GLCM + SVM, multi-view features + SVM, Fuse-TSD, fgFV): train,
predict and evaluate through the command line, on nodule VOIs written by builders.write_vois and on
synthetic dermoscopy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from medsight.cli import main
from medsight.metrics import binary_metrics
from medsight.rundir import RunDir

from builders import CONFIGS, write_vois


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- the LIDC recipes end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def vois(tmp_path_factory) -> Path:
    return write_vois(tmp_path_factory.mktemp("vois") / "vois")


SMALL = ["--set", "data.folds=3", "--set", "data.fold=0", "--set", "data.val_fraction=0.3", "--device", "cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("config,extra,heads", [
    ("lidc_voi_glcm3d_svm.yaml", ["--set", "data.image_size=[16,16,16]"], ["glcm"]),
    ("lidc_voi_multiview_svm.yaml", ["--set", "data.image_size=[24,24]"], ["all"]),
    ("lidc_voi_fuse_tsd.yaml", ["--epochs", "2", "--set", "data.image_size=[16,16,16]",
                                "--set", "model.options.width=8", "--set", "head.options.n_estimators=3",
                                "--set", "head.options.steps=50"], ["glcm", "fourier", "cnn"]),
])
def test_lidc_descriptor_recipes_train_predict_evaluate(vois, tmp_path, capsys, config, extra, heads):
    run = tmp_path / "run"
    assert main(["train", str(CONFIGS / config), "--data", str(vois), "--out", str(run), *SMALL, *extra]) == 0
    record = RunDir(run).read_record()
    assert record.finished and sorted(record.stage("descriptors").fitted["heads"]) == sorted(heads)
    state = load_file(str(run / "heads.safetensors"))
    assert {k.split(".")[0] for k in state} == set(heads)
    validation = json.loads((run / "metrics.json").read_text())["validation"]
    assert main(["predict", str(run), str(vois), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    rows = read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(rows) == 24 and list(rows[0]) == ["id", "p_malignant", "pred"]
    p = np.array([float(r["p_malignant"]) for r in rows])
    assert np.all((p >= 0) & (p <= 1))
    # the recorded validation AUC is that of the reloaded run's probabilities of the validation nodules,
    # and pred follows the threshold the run chose on them
    truth = {f"{r['patient_id']}_R_{r['nodule_id']}": r["Diagnosis"] == "Malign"
             for r in read_csv(vois / "MetadatabyNoduleMaxVoting.csv")}
    val = [i for i, r in enumerate(rows) if r["id"] in set(RunDir(run).split_ids("val"))]
    y = np.array([truth[rows[i]["id"]] for i in val])
    assert validation["AUC"] == pytest.approx(binary_metrics(y, p[val])["AUC"], abs=1e-4)
    threshold = record.thresholds["malignant"]
    assert [r["pred"] for r in rows] == ["malignant" if q >= threshold else "benign" for q in p]
    capsys.readouterr()
    assert main(["evaluate", str(run), str(vois), "--split", "heldout", "--out", str(tmp_path / "m.json")]) == 0
    heldout = json.loads((tmp_path / "m.json").read_text())
    # size decides the synthetic labels and every recipe sees it (diameter, GLCM pair counts, CNN)
    assert heldout["metrics"]["AUC"] >= 0.75, heldout["metrics"]


@pytest.mark.slow
def test_fuse_tsd_reloaded_run_reproduces_its_predictions(vois, tmp_path):
    run = tmp_path / "run"
    args = ["--epochs", "1", "--set", "data.image_size=[16,16,16]", "--set", "model.options.width=8",
            "--set", "head.options.n_estimators=2", "--set", "head.options.steps=30"]
    assert main(["train", str(CONFIGS / "lidc_voi_fuse_tsd.yaml"), "--data", str(vois), "--out", str(run),
                 *SMALL, *args]) == 0
    for out in ("a", "b"):
        assert main(["predict", str(run), str(vois), "--out", str(tmp_path / out), "--device", "cpu"]) == 0
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()
    assert (run / "model.safetensors").is_file() and not (run / "checkpoint.pt").exists()

    # the same heads re-fitted on the first run's slice CNN, read rather than trained: the same predictions
    again = tmp_path / "again"
    assert main(["train", str(CONFIGS / "lidc_voi_fuse_tsd.yaml"), "--data", str(vois), "--out", str(again),
                 *SMALL, *args, "--set", f"features.cnn.weights={run / 'model.safetensors'}"]) == 0
    assert not (again / "history.csv").exists()  # no network training
    assert main(["predict", str(again), str(vois), "--out", str(tmp_path / "c"), "--device", "cpu"]) == 0
    assert (tmp_path / "c" / "predictions.csv").read_text() == (tmp_path / "a" / "predictions.csv").read_text()
    missing = tmp_path / "nothing.safetensors"
    assert main(["train", str(CONFIGS / "lidc_voi_fuse_tsd.yaml"), "--data", str(vois), "--out",
                 str(tmp_path / "x"), *SMALL, *args, "--set", f"features.cnn.weights={missing}"]) == 2
    assert not (tmp_path / "x").exists()


def test_descriptor_recipe_without_features_is_a_config_error(vois, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text((CONFIGS / "lidc_voi_glcm3d_svm.yaml").read_text().replace(
        "features:\n  glcm: {distances: [1, 2], bin_count: 32}\n", ""))
    assert main(["train", str(config), "--data", str(vois), "--out", str(tmp_path / "run"), *SMALL]) == 2
    assert "features" in capsys.readouterr().err


# -- fgFV end to end on synthetic dermoscopy -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["fgfv", "ifv"])
def test_fgfv_recipe_writes_membership_maps(tmp_path, capsys, encoding):
    run = tmp_path / "run"
    args = ["--out", str(run), "--epochs", "2", "--device", "cpu",
            "--set", "data.format=synthetic", "--set", "data.task=null",
            "--set", "data.options={n: 48, size: 48, seed: 0}", "--set", "data.image_size=[48,48]",
            "--set", "model.options.width=8",
            "--set", f"features.fisher={{encoding: {encoding}, n_components: 4, scales: [1.0, 2.0]}}"]
    assert main(["train", str(CONFIGS / "ph2_fgfv.yaml"), *args]) == 0
    encoder = RunDir(run).read_record().stage("descriptors").fitted["encoder"]
    assert encoder["type"] == ("ForegroundFisherVector" if encoding == "fgfv" else "FisherVector")
    held = tmp_path / "held"
    assert main(["data", "synth", str(held), "--n", "6", "--size", "60", "--seed", "4"]) == 0
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(held), "--out", str(out), "--device", "cpu"]) == 0
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 6 and list(rows[0]) == ["id", "p_malignant", "pred"]
    maps = sorted((out / "maps").glob("*.png")) if (out / "maps").exists() else []
    if encoding == "fgfv":
        from PIL import Image

        assert len(maps) == 6
        assert Image.open(maps[0]).size == (60, 60)  # at the input image's size
    else:
        assert maps == []  # plain and improved FV have no membership


@pytest.mark.slow
def test_fgfv_reads_cnn_weights_instead_of_training(tmp_path):
    base = ["--device", "cpu", "--set", "data.format=synthetic", "--set", "data.task=null",
            "--set", "data.options={n: 40, size: 40, seed: 1}", "--set", "data.image_size=[40,40]",
            "--set", "model.options.width=8", "--set", "features.fisher.n_components=4",
            "--set", "features.fisher.weight_cases=held_back"]  # one CNN, read back from its file
    first = tmp_path / "fgfv"
    assert main(["train", str(CONFIGS / "ph2_fgfv.yaml"), "--out", str(first), "--epochs", "1", *base]) == 0
    weights = first / "model.safetensors"
    second = tmp_path / "fv"
    assert main(["train", str(CONFIGS / "ph2_fgfv.yaml"), "--out", str(second), *base,
                 "--set", "features.fisher.encoding=fv", "--set", f"features.fisher.cnn_weights={weights}"]) == 0
    assert not (second / "history.csv").exists()  # no network training
    a, b = load_file(str(weights)), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    missing = tmp_path / "nothing.safetensors"
    assert main(["train", str(CONFIGS / "ph2_fgfv.yaml"), "--out", str(tmp_path / "x"), *base,
                 "--set", f"features.fisher.cnn_weights={missing}"]) == 2
    assert not (tmp_path / "x").exists()


# -- stacking: a head that learns from some training cases only ------------------------------------


@pytest.mark.parametrize("fusion", ["mean", "concat"])
def test_heads_fit_a_limited_descriptor_on_its_rows_only(fusion):
    from medsight.config import HeadConfig
    from medsight.features.classifiers import SVMHead
    from medsight.recipes.heads import Heads

    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    described = {"glcm": rng.normal(y[:, None], 1, (40, 3)), "cnn": rng.normal(y[:, None], 1, (40, 4))}
    back = np.arange(0, 40, 3)  # the cases the network did not learn from
    heads = Heads(HeadConfig(name="svm", fusion=fusion)).fit(described, y, rows={"cnn": back})
    new = {k: rng.normal(0, 1, (5, X.shape[1])) for k, X in described.items()}
    if fusion == "mean":
        want = {"glcm": SVMHead().fit(described["glcm"], y), "cnn": SVMHead().fit(described["cnn"][back], y[back])}
        for name, p in heads.probas(new).items():
            assert np.allclose(p, want[name].predict_proba(new[name])), name
    else:  # one head on both, from the cases both allow
        both = np.concatenate([described["glcm"], described["cnn"]], axis=1)
        want = SVMHead().fit(both[back], y[back])
        assert np.allclose(heads.probas(new)["all"], want.predict_proba(np.concatenate(list(new.values()), 1)))
    with pytest.raises(Exception, match="single class"):
        Heads(HeadConfig(name="svm")).fit(described, y, rows={"cnn": np.arange(0, 40, 2)})


def test_evaluate_reads_the_input_with_the_runs_label_rule(tmp_path, capsys):
    """A run trained with the rating rule is scored on rating labels: rating-3 nodules left out and
    ratings, not the Diagnosis column, as the truth (they disagree here on purpose); predict
    predicts every nodule."""
    data = write_vois(tmp_path / "vois")
    table = data / "MetadatabyNoduleMaxVoting.csv"
    rows = read_csv(table)
    for row in rows[::4]:
        row["Malignancy_value"] = 3
    for row in rows[1::4]:
        row["Diagnosis"] = "Benign" if row["Diagnosis"] == "Malign" else "Malign"  # the ratings still follow size
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run = tmp_path / "run"
    assert main(["train", str(CONFIGS / "lidc_voi_glcm3d_svm.yaml"), "--data", str(data), "--out", str(run),
                 "--set", "data.image_size=[16,16,16]", "--set", "data.options.label_rule=malignancy",
                 "--set", "predict.decision=fixed", *SMALL]) == 0
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    predicted = {r["id"]: float(r["p_malignant"]) for r in read_csv(tmp_path / "pred" / "predictions.csv")}
    rated = {f"{r['patient_id']}_R_{r['nodule_id']}": int(r["Malignancy_value"]) > 3
             for r in rows if int(r["Malignancy_value"]) != 3}
    assert len(predicted) == len(rows)  # predictions need no label: the rating-3 nodules are predicted too
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "m.json")]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    ids = sorted(rated)
    want = binary_metrics(np.array([rated[i] for i in ids]), np.array([predicted[i] for i in ids]))
    assert result["n"] == len(rated) and result["metrics"]["AUC"] == pytest.approx(want["AUC"], abs=1e-6)
