"""The ISIC-2017 protocol pieces of the classification recipe: one 3-class softmax reported as
melanoma-vs-rest and SK-vs-rest, and 9-crop test-time averaging."""

import csv
import json

import numpy as np
import pytest
import torch

from medsight.cli import main
from medsight.data.base import Task
from medsight.data.folder import write_folder
from medsight.data.synthetic import make_dermoscopy
from medsight.errors import ConfigError
from medsight.recipes import RECIPES, parse_config
from medsight.recipes.classification import one_vs_rest_classes, task_metrics
from medsight.rundir import RunDir

CLASSES = ("nevus", "melanoma", "seborrheic_keratosis")


def three_class_folder(root):
    data = make_dermoscopy(n=30, size=40, seed=5)
    write_folder(data, root)
    rows = list(csv.DictReader(open(root / "labels.csv")))
    for i, row in enumerate(rows):
        row["label"] = CLASSES[i % 3]
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_one_vs_rest_metrics_come_from_one_softmax():
    task = Task.multiclass("diagnosis", CLASSES)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    proba = rng.dirichlet([1, 1, 1], 60)
    m = task_metrics(task, y, proba, 0.5, ["melanoma", "seborrheic_keratosis"])
    from sklearn.metrics import roc_auc_score

    assert m["melanoma AUC"] == pytest.approx(roc_auc_score(y == 1, proba[:, 1]))
    assert m["seborrheic_keratosis AUC"] == pytest.approx(roc_auc_score(y == 2, proba[:, 2]))
    assert m["mean AUC"] == pytest.approx((m["melanoma AUC"] + m["seborrheic_keratosis AUC"]) / 2)


@pytest.mark.slow
def test_three_class_run_reports_melanoma_and_sk_with_nine_crops(tmp_path, capsys):
    data = three_class_folder(tmp_path / "data")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "recipe": "classification", "data": {"task": "label", "image_size": [32, 32], "val_fraction": 0.3},
        "model": {"name": "resnet18", "options": {"width": 8}}, "train": {"epochs": 1, "batch_size": 8},
        "augment": {"scale": [1.0, 1.3], "translate": 0.1},
        "predict": {"crops": 9, "one_vs_rest": ["melanoma", "seborrheic_keratosis"]},
    }))
    run = tmp_path / "run"
    assert main(["train", str(config), "--data", str(data), "--out", str(run), "--device", "cpu"]) == 0
    assert "mean AUC" in (run / "history.csv").read_text().splitlines()[0]
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "pred")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "pred" / "predictions.csv")))
    assert list(rows[0]) == ["id", "p_melanoma", "p_seborrheic_keratosis", "pred"] and len(rows) == 30
    assert {r["pred"] for r in rows} <= set(CLASSES)
    capsys.readouterr()
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "m.json")]) == 0
    assert "melanoma AUC" in capsys.readouterr().out
    assert "mean AUC" in json.loads((tmp_path / "m.json").read_text())["metrics"]


def test_one_vs_rest_names_must_be_classes(tmp_path):
    task = Task.multiclass("d", CLASSES)
    assert one_vs_rest_classes(["melanoma", "seborrheic_keratosis"], task) == ["melanoma", "seborrheic_keratosis"]
    with pytest.raises(ConfigError, match="psoriasis"):
        one_vs_rest_classes(["melanoma", "psoriasis"], task)
    # the recipe checks the names against the task of its data before it trains or writes anything
    cfg = parse_config({"recipe": "classification", "model": {"name": "resnet18", "options": {"width": 8}},
                        "data": {"root": str(three_class_folder(tmp_path / "data")), "task": "label",
                                 "image_size": [32, 32]},
                        "predict": {"one_vs_rest": ["melanoma", "psoriasis"]}})
    with pytest.raises(ConfigError, match="psoriasis"):
        RECIPES["classification"](cfg).train(RunDir(tmp_path / "run"), device="cpu")
    assert not (tmp_path / "run").exists()


class CentreProbe(torch.nn.Module):
    """A "classifier" whose logits are (0, x + 2y) at the centre of its input: on the ramp image
    below, a crop's centre is where the crop sits, so each crop's probability is known."""

    def forward(self, x):
        h, w = x.shape[2:]
        centre = x[:, :, h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1].mean((2, 3))  # (B, 2)
        z = centre[:, 0] + 2 * centre[:, 1]
        return torch.stack([torch.zeros_like(z), z], 1)


@pytest.mark.parametrize("fraction", [0.8, 0.6])
def test_nine_crop_average_by_value(fraction):
    cfg = parse_config({"recipe": "classification", "model": {"name": "resnet18"},
                        "predict": {"crops": 9, "crop_fraction": fraction}})
    recipe = RECIPES["classification"](cfg)
    recipe.model_ = CentreProbe()
    n = 32  # channel 0: the normalised x coordinate of each pixel centre, channel 1: y
    u = (torch.arange(n) + 0.5) * 2 / n - 1
    ramp = torch.stack([u.expand(n, n), u[:, None].expand(n, n)])[None]
    got = recipe.forward(ramp)[0, 1].item()
    # the 3x3 grid of crops centred at offsets -(1 - f), 0, 1 - f in x and y (grid_crops)
    offsets = [-(1 - fraction), 0.0, 1 - fraction]
    want = np.mean([1 / (1 + np.exp(-(dx + 2 * dy))) for dy in offsets for dx in offsets])
    assert got == pytest.approx(want, abs=1e-6)
    single = RECIPES["classification"](parse_config({"recipe": "classification", "model": {"name": "resnet18"}}))
    single.model_ = recipe.model_
    assert single.forward(ramp)[0, 1].item() == pytest.approx(0.5, abs=1e-6)  # one crop, centred: z = 0
