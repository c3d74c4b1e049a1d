"""The multi-label recipe (ChestNet on chest X-rays) end to end through ``medsight.cli.main``: on
the synthetic X-rays (train, predict, evaluate on the same kind of images written in the NIH layout),
on a tiny ChestX-ray14 fixture (``--split test`` evaluates only the test-list images), and a short run
whose validation mean AUC must be clearly above chance, for each branch too.

These tiny networks run with one intra-op thread (the ``one_thread`` fixture of conftest.py).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsight.cli import main
from medsight.data import open_dataset
from medsight.data.synthetic_xray import make_chest_xrays
from medsight.recipes import load_config, load_recipe
from medsight.recipes.multilabel import multilabel_task_metrics
from medsight.recipes.network import eval_batches
from medsight.rundir import RunDir

from builders import CONFIGS, ROWS, TEST_IMAGES, make_chestxray14, write_nih

SYNTH_CONFIG = CONFIGS / "synthetic_xray_chestnet.yaml"
CXR14_CONFIG = CONFIGS / "chestxray14_chestnet.yaml"
LABELS = ("Effusion", "Mass", "Nodule", "Cardiomegaly")  # the synthetic set's default labels

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


# -- the recipe end to end -----------------------------------------------------------------------

SYNTH_ARGS = ["--device", "cpu", "--set", "model.options.width=8", "--set", "train.batch_size=8"]


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cn") / "run"
    assert main(["train", str(SYNTH_CONFIG), "--out", str(run), "--epochs", "2", *SYNTH_ARGS,
                 "--set", "data.options.n=56", "--set", "data.options.size=64",
                 "--set", "data.image_size=[64,64]"]) == 0
    return run


def test_synthetic_train_predict_evaluate(synth_run, tmp_path, capsys):
    record = RunDir(synth_run).read_record()
    assert record.recipe == "multilabel" and record.task.multilabel is True
    assert record.task.classes == LABELS
    assert (synth_run / "validation_roc.png").is_file()
    assert "mean AUC" in json.loads((synth_run / "metrics.json").read_text())["validation"]

    root = write_nih(make_chest_xrays(n=12, size=80, seed=5), tmp_path / "heldout")
    code, _, err = cli(capsys, "predict", synth_run, root, "--out", tmp_path / "pred", "--device", "cpu")
    assert code == 0, err
    columns, rows = read_rows(tmp_path / "pred" / "predictions.csv")
    assert columns == ["id", *(f"p_{c}" for c in LABELS), "pred"]
    assert len(rows) == 12
    for row in rows:
        p = {c: float(row[f"p_{c}"]) for c in LABELS}
        assert all(0 <= v <= 1 for v in p.values())
        assert row["pred"] == ("|".join(c for c in LABELS if p[c] >= 0.5) or "No Finding")

    out = tmp_path / "metrics.json"
    code, table, err = cli(capsys, "evaluate", synth_run, root, "--out", out, "--device", "cpu")
    assert code == 0, err
    assert "mean AUC" in table and "(n=12)" in table
    for c in LABELS:
        assert f"{c} AUC" in table
    result = json.loads(out.read_text())
    assert result["n"] == 12
    assert set(result["metrics"]) == {*(f"{c} AUC" for c in LABELS), "mean AUC"}
    aucs = [result["metrics"][f"{c} AUC"] for c in LABELS]
    assert all(v is not None for v in aucs)  # every label present and absent among the 12
    assert result["metrics"]["mean AUC"] == pytest.approx(np.mean(aucs))


def test_predict_maps_of_the_most_probable_finding(synth_run, tmp_path, capsys):
    """The multilabel recipe declares CAMs: each case gets the Grad-CAM of its most probable finding
    at its own size (ChestNet's head is not GAP + linear, so plain CAM is refused with a reason)."""
    from medsight.explain import MapWriter, class_maps
    from medsight.recipes.common import load_cases

    root = write_nih(make_chest_xrays(n=4, size=72, seed=8), tmp_path / "cases")
    code, _, err = cli(capsys, "predict", synth_run, root, "--out", tmp_path / "pred", "--device", "cpu",
                       "--maps", "gradcam")
    assert code == 0, err
    recipe = load_recipe(synth_run, "cpu")
    loaded, _ = load_cases(open_dataset(root), recipe.cfg, recipe.record_.input, False, recipe.console)
    x = next(eval_batches(loaded, recipe.record_.input, 32))["x"]
    top = torch.sigmoid(recipe.model_(x)).argmax(1)
    want = MapWriter(tmp_path / "want")
    for case, m in zip(loaded.ids, class_maps(recipe.model_, x, "gradcam", target=top).detach().numpy()):
        want.write(case, np.asarray(Image.open(root / "images" / f"{case}.png"))[None], m)
        got = np.asarray(Image.open(tmp_path / "pred" / "maps" / f"{case}.png"))
        assert got.shape == (72, 72)
        assert np.array_equal(got, np.asarray(Image.open(tmp_path / "want" / "maps" / f"{case}.png")))
    code, _, err = cli(capsys, "predict", synth_run, root, "--out", tmp_path / "cam", "--maps", "cam")
    assert code == 2 and "CAM does not apply" in err and not (tmp_path / "cam").exists()


def test_multilabel_recipe_refuses_single_label_data(tmp_path, capsys):
    code, _, err = cli(capsys, "train", SYNTH_CONFIG, "--out", tmp_path / "run", *SYNTH_ARGS,
                       "--set", "data.format=synthetic", "--set", "data.options={n: 12, size: 32}")
    assert code == 2 and "multi-label" in err
    assert not (tmp_path / "run").exists()


def test_chestxray14_layout_split_test_evaluates_only_test_list(tmp_path, capsys):
    root = make_chestxray14(tmp_path / "cxr14")
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", CXR14_CONFIG, "--data", root, "--out", run, "--epochs", "1",
                       "--device", "cpu", "--set", "data.image_size=[64,64]", "--set", "model.options.width=8",
                       "--set", "train.batch_size=4")
    assert code == 0, err
    record = RunDir(run).read_record()
    split = json.loads((run / "split.json").read_text())
    test_ids = {Path(n).stem for n in TEST_IMAGES}
    assert not test_ids & set(split["train"] + split["val"])  # the test list is never trained on
    assert record.data.train + record.data.val == len(ROWS) - len(TEST_IMAGES)
    assert len(record.task.classes) == 14

    out = tmp_path / "test.json"
    code, table, err = cli(capsys, "evaluate", run, root, "--split", "test", "--out", out, "--device", "cpu")
    assert code == 0, err
    assert "mean AUC" in table and "(n=2)" in table
    result = json.loads(out.read_text())
    assert result["n"] == 2
    # only the two test images count: a finding is defined exactly when one of them has it
    test_findings = {f for r in ROWS if r[0] in TEST_IMAGES for f in r[1].split("|")}
    defined = {k[:-len(" AUC")] for k, v in result["metrics"].items() if k != "mean AUC" and v is not None}
    assert defined == test_findings
    assert "Cardiomegaly" not in defined  # present only in train_val images

    code, _, err = cli(capsys, "predict", run, root, "--out", tmp_path / "pred", "--device", "cpu")
    assert code == 0, err
    columns, rows = read_rows(tmp_path / "pred" / "predictions.csv")
    assert len(columns) == 1 + 14 + 1 and len(rows) == len(ROWS)


def test_learns_synthetic_findings(tmp_path):
    """A few epochs on 240 synthetic X-rays (4 findings, 96 px, width 8) reach a validation mean AUC
    clearly above chance, and so does each branch on its own."""
    run = tmp_path / "run"
    assert main(["train", str(SYNTH_CONFIG), "--out", str(run), "--epochs", "8", *SYNTH_ARGS,
                 "--set", "train.batch_size=16", "--set", "data.options.n=240", "--set", "data.options.size=96",
                 "--set", "data.image_size=[96,96]"]) == 0
    best = json.loads((run / "metrics.json").read_text())["validation"]
    assert best["mean AUC"] > 0.75, best

    recipe = load_recipe(run, "cpu")
    val_ids = set(json.loads((run / "split.json").read_text())["val"])
    data = open_dataset(None, format="synthetic-xray", n=240, size=96, seed=0)
    data.samples = [s for s in data.samples if s.id in val_ids]
    preds = recipe.predict(data)
    assert recipe.evaluate(data, preds)["metrics"]["mean AUC"] == pytest.approx(best["mean AUC"], abs=1e-3)
    y = np.stack([recipe.record_.task.targets(s.diagnosis) for s in data.samples])
    with torch.no_grad():
        branches = [torch.cat(parts).sigmoid().numpy() for parts in zip(
            *(recipe.model_.branch_logits(b["x"]) for b in eval_batches(preds.loaded, recipe.record_.input, 32)))]
    for name, proba in zip(("classification", "attention"), branches):
        mean_auc = multilabel_task_metrics(recipe.record_.task, y, proba)["mean AUC"]
        assert mean_auc > 0.7, f"{name} branch alone: mean AUC {mean_auc:.3f}"


def test_configs_state_time_and_parse():
    for path in (SYNTH_CONFIG, CXR14_CONFIG):
        cfg = load_config(path)
        assert cfg.recipe == "multilabel" and cfg.model.name == "chestnet"
        assert re.search(r"^# Time:", path.read_text(), re.M)
    assert load_config(CXR14_CONFIG).data.image_size == (224, 224)
