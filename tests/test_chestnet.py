"""ChestNet (classification + CAM attention branch) and the multi-label recipe.

Model tests check shapes, the documented attention normalisation, that the CAM weights are
Grad-CAM's, that the logits average the two branches and that the classifier resets. The recipe
runs end to end through ``medsight.cli.main``: on the synthetic X-rays (train, predict, evaluate on
the same kind of images written in the NIH layout), on a tiny ChestX-ray14 fixture (``--split
test`` evaluates only the test-list images), and a short run whose validation mean AUC must be
clearly above chance.

These tiny networks run with one intra-op thread: with two threads on a 2-core machine that is
also running something else, OpenMP's barriers make small models 10-30x slower, and one thread
costs little for networks this small.
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
from medsight.data.synthetic_xray import make_chest_xrays
from medsight.errors import ConfigError
from medsight.models import create_model
from medsight.models.chestnet import ChestNet
from test_chestxray import ROWS, TEST_IMAGES, make_chestxray14

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SYNTH_CONFIG = CONFIGS / "synthetic_xray_chestnet.yaml"
CXR14_CONFIG = CONFIGS / "chestxray14_chestnet.yaml"
LABELS = ("Effusion", "Mass", "Nodule", "Cardiomegaly")  # the synthetic set's default labels


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def write_nih(dataset, root: Path, test_ids=()) -> Path:
    """A synthetic-xray dataset in the ChestX-ray14 layout (CSV, split lists, grey PNGs)."""
    (root / "images").mkdir(parents=True)
    lines = ["Image Index,Finding Labels,Patient ID"]
    train_val, test = [], []
    for s in dataset.samples:
        name = f"{s.id}.png"
        Image.fromarray(s.image[0], "L").save(root / "images" / name)
        lines.append(f"{name},{s.diagnosis},{s.patient_id}")
        (test if s.id in test_ids else train_val).append(name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return root


def tiny(**kw) -> ChestNet:
    torch.manual_seed(0)
    return create_model("chestnet", in_channels=1, num_classes=kw.pop("num_classes", 5), width=8, **kw)


# -- the model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 1, 64, 64)), (3, (2, 1, 32, 32, 32))])
def test_shapes_branches_and_average(spatial_dims, shape):
    model = tiny(spatial_dims=spatial_dims).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        logits = model(x)
        cls, att = model.branch_logits(x)
        features = model.forward_features(x)
        maps = model.attention_maps(features)
    assert logits.shape == cls.shape == att.shape == (2, 5)
    assert torch.allclose(logits, (cls + att) / 2, atol=1e-6)  # the diagnosis averages both branches
    assert not torch.allclose(cls, att)  # two different branches
    assert features.shape[:2] == (2, model.num_features) and model.num_features == 64
    assert maps.shape == (2, 5, *features.shape[2:])
    with torch.no_grad():
        assert torch.allclose(model.forward_head(features), logits, atol=1e-6)
        assert torch.allclose(cls, model.backbone.forward_head(features), atol=1e-6)  # GAP + linear
    seen = []
    handle = model.get_submodule(model.cam_layer).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], features)  # cam_layer gives the attention branch's input


def test_softmax_maps_are_distributions_and_flat_cam_gives_gap():
    model = tiny().eval()
    x = torch.randn(3, 1, 96, 96)
    with torch.no_grad():
        f = model.forward_features(x)
        a = model.attention_maps(f)
        assert f.shape[2:] == (3, 3)
        assert (a >= 0).all()
        assert torch.allclose(a.flatten(2).sum(-1), torch.ones(3, 5), atol=1e-5)
        cam = torch.einsum("kc,bchw->bkhw", model.backbone.fc.weight, f)
        assert torch.allclose(a, torch.softmax(cam.clamp_min(0).flatten(2), -1).view_as(a), atol=1e-5)
        # a flat CAM (all classification weights zero) gives uniform maps: attention pooling = GAP
        model.backbone.fc.weight.zero_()
        a0 = model.attention_maps(f)
        assert torch.allclose(a0, torch.full_like(a0, 1 / 9))
        _, att = model.branch_logits(x)
        pooled = model.att_conv(f).mean((2, 3))
        assert torch.allclose(att, model.att_fc(pooled), atol=1e-5)


def test_sigmoid_maps_and_probability_average():
    model = tiny(normalise="sigmoid", combine="probabilities").eval()
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        f = model.forward_features(x)
        a = model.attention_maps(f)
        cam = torch.einsum("kc,bchw->bkhw", model.backbone.fc.weight, f)
        assert torch.allclose(a, torch.sigmoid(cam), atol=1e-6)
        assert ((a > 0) & (a < 1)).all()
        cls, att = model.branch_logits(x)
        p = torch.sigmoid(model(x))
    assert torch.allclose(p, (torch.sigmoid(cls) + torch.sigmoid(att)) / 2, atol=1e-5)


def test_cam_weights_are_grad_cam_weights():
    """For GAP + linear, Grad-CAM's channel weight (gradient of logit c averaged over positions)
    is w_ck / positions: the attention maps use Grad-CAM's weights."""
    model = tiny().eval()
    f = model.forward_features(torch.randn(2, 1, 96, 96)).detach().requires_grad_(True)
    cls = model.backbone.forward_head(f)
    positions = f.shape[2] * f.shape[3]
    for c in range(5):
        (grad,) = torch.autograd.grad(cls[:, c].sum(), f, retain_graph=True)
        weights = grad.mean((2, 3)) * positions  # (B, C), the same for every sample
        assert torch.allclose(weights, model.backbone.fc.weight[c].expand(2, -1), atol=1e-6)


@pytest.mark.parametrize("detach", [True, False])
def test_detach_cam_controls_gradient_into_classifier_weights(detach):
    model = tiny(detach_cam=detach)
    _, att = model.branch_logits(torch.randn(2, 1, 96, 96))
    att.sum().backward()
    grad = model.backbone.fc.weight.grad
    assert (grad is None or not grad.any()) if detach else grad.abs().sum() > 0
    assert model.att_fc.weight.grad.abs().sum() > 0


def test_reset_classifier_and_options():
    model = tiny()
    model.reset_classifier(3)
    x = torch.randn(2, 1, 64, 64)
    cls, att = model.branch_logits(x)
    assert model(x).shape == cls.shape == att.shape == (2, 3)
    assert model.attention_maps(model.forward_features(x)).shape[1] == 3
    with pytest.raises(ConfigError, match="normalise"):
        create_model("chestnet", num_classes=2, normalise="max")
    with pytest.raises(ConfigError, match="combine"):
        create_model("chestnet", num_classes=2, combine="max")
    with pytest.raises(ConfigError, match="resnet18"):
        create_model("chestnet", num_classes=2, bogus=1)  # backbone options are checked by the backbone


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
    info = json.loads((synth_run / "run.json").read_text())
    assert info["recipe"] == "multilabel" and info["task"]["multilabel"] is True
    assert info["task"]["classes"] == list(LABELS)
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
    info = json.loads((run / "run.json").read_text())
    split = json.loads((run / "split.json").read_text())
    test_ids = {Path(n).stem for n in TEST_IMAGES}
    assert not test_ids & set(split["train"] + split["val"])  # the test list is never trained on
    assert info["data"]["train"] + info["data"]["val"] == len(ROWS) - len(TEST_IMAGES)
    assert len(info["task"]["classes"]) == 14

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
    from medsight.data import open_dataset
    from medsight.recipes import Recipe

    run = tmp_path / "run"
    assert main(["train", str(SYNTH_CONFIG), "--out", str(run), "--epochs", "8", *SYNTH_ARGS,
                 "--set", "train.batch_size=16", "--set", "data.options.n=240", "--set", "data.options.size=96",
                 "--set", "data.image_size=[96,96]"]) == 0
    best = json.loads((run / "metrics.json").read_text())["validation"]
    assert best["mean AUC"] > 0.75, best

    recipe = Recipe.load(run, "cpu")
    val_ids = set(json.loads((run / "split.json").read_text())["val"])
    data = open_dataset(None, format="synthetic-xray", n=240, size=96, seed=0)
    data.samples = [s for s in data.samples if s.id in val_ids]
    preds = recipe.predict(data)
    assert recipe.evaluate(data, preds)["metrics"]["mean AUC"] == pytest.approx(best["mean AUC"], abs=1e-3)
    from medsight.recipes.multilabel import multilabel_task_metrics

    y = np.stack([recipe.task.targets(s.diagnosis) for s in data.samples])
    with torch.no_grad():
        branches = [torch.cat(parts).sigmoid().numpy() for parts in zip(
            *(recipe.model.branch_logits(b["x"]) for b in recipe.eval_batches(preds.loaded)))]
    for name, proba in zip(("classification", "attention"), branches):
        mean_auc = multilabel_task_metrics(recipe.task, y, proba)["mean AUC"]
        assert mean_auc > 0.7, f"{name} branch alone: mean AUC {mean_auc:.3f}"


def test_configs_state_time_and_parse():
    from medsight.config import load_config

    for path in (SYNTH_CONFIG, CXR14_CONFIG):
        cfg = load_config(path)
        assert cfg.recipe == "multilabel" and cfg.model.name == "chestnet"
        assert re.search(r"^# Time:", path.read_text(), re.M)
    assert load_config(CXR14_CONFIG).data.image_size == (224, 224)
