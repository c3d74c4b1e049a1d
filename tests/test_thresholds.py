"""Decision thresholds chosen on validation cases (medsight.metrics.thresholds) and how the
classification recipes store and use them (predictions.csv's ``pred``, evaluate's metrics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from medsight.config import PredictConfig
from medsight.data.base import Dataset, Sample, Task
from medsight.metrics import binary_metrics
from medsight.metrics.thresholds import choose_threshold, sensitivity_threshold, youden_threshold
from medsight.recipes.classification import class_rows, decision_thresholds, evaluate_classes
from medsight.recipes.interface import Predictions
from medsight.recipes.prepare import Loaded
from medsight.rundir import DataInfo, InputInfo, RunRecord


def test_youden_by_hand():
    # cuts 0.8, 0.4, 0.35, 0.1 give J = 0.5, 0, 0.5, 0: the highest of the tied cuts (0.8), halfway to 0.4
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert youden_threshold(y, s) == pytest.approx(0.6)


def test_youden_separates_low_probabilities_that_0_5_calls_all_negative():
    y, s = [0, 0, 0, 1, 1], [0.01, 0.02, 0.03, 0.10, 0.20]
    t = youden_threshold(y, s)
    assert t == pytest.approx(0.065)
    assert binary_metrics(y, s, 0.5)["SEN"] == 0.0
    assert binary_metrics(y, s, t)["SEN"] == 1.0 and binary_metrics(y, s, t)["SPE"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_youden_reaches_the_best_j_of_scikit_learns_roc(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # ties on purpose
    fpr, tpr, _ = roc_curve(y, s)
    m = binary_metrics(y, s, youden_threshold(y, s))
    assert m["SEN"] + m["SPE"] - 1 == pytest.approx(np.max(tpr - fpr))
    # the threshold lies strictly between two validation scores, so it decides them as its cut does
    assert not np.isin(youden_threshold(y, s), s) or youden_threshold(y, s) == s.min()


def test_sensitivity_target_is_the_most_specific_threshold_reaching_it():
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.7, 0.5, 0.2, 0.6, 0.4, 0.3, 0.1]
    # SEN 0.75 first reached at the cut 0.5 (0.9, 0.7, 0.5), the next lower score is 0.4
    assert sensitivity_threshold(y, s, 0.75) == pytest.approx(0.45)
    assert sensitivity_threshold(y, s, 1.0) == pytest.approx(0.15)
    assert choose_threshold(y, s, "sensitivity", 0.5) == pytest.approx(0.65)
    assert sensitivity_threshold(y, s, 0.25) == pytest.approx(0.8)


def test_one_class_has_no_threshold():
    with pytest.raises(ValueError, match="one class"):
        youden_threshold([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold([0, 1], [0.1, 0.2], "median")


# -- the recipes' side -------------------------------------------------------------------------------
TASK = Task("malignancy", ("benign", "malignant"), {"Benign": 0, "Malign": 1})


def predictions(p: list[float], diagnoses: list[str]) -> tuple[Dataset, Predictions]:
    ids = [f"c{i}" for i in range(len(p))]
    samples = [Sample(i, np.zeros((1, 2, 2), np.uint8), diagnosis=d) for i, d in zip(ids, diagnoses)]
    dataset = Dataset("folder", Path("."), samples, ("Benign", "Malign"), {"malignancy": TASK})
    proba = torch.tensor([[1 - q, q] for q in p], dtype=torch.float64)
    loaded = Loaded(ids, torch.zeros(len(p), 1, 2, 2, dtype=torch.uint8), None, None, [(2, 2)] * len(p))
    return dataset, Predictions(loaded, proba, [], dataset)


def test_chosen_threshold_decides_pred_and_the_evaluated_metrics():
    predict = PredictConfig()
    val_y = np.array([0, 0, 0, 1, 1])
    val_p = np.array([[0.99, 0.01], [0.98, 0.02], [0.97, 0.03], [0.9, 0.1], [0.8, 0.2]])
    thresholds = decision_thresholds(TASK, val_y, val_p, predict)
    assert thresholds == {"malignant": pytest.approx(0.065)}

    dataset, preds = predictions([0.05, 0.08, 0.3, 0.6], ["Benign", "Malign", "Malign", "Benign"])
    rows = class_rows(TASK, preds, predict, thresholds)
    assert [r["pred"] for r in rows] == ["benign", "malignant", "malignant", "malignant"]
    assert [r["pred"] for r in class_rows(TASK, preds, predict)] == ["benign", "benign", "benign", "malignant"]

    result = evaluate_classes(TASK, dataset, preds, predict, thresholds)
    assert result["metrics"]["SEN"] == 1.0 and result["metrics"]["SPE"] == 0.5  # at 0.065
    assert result["fixed_threshold_metrics"]["SEN"] == 0.0 and result["fixed_threshold_metrics"]["SPE"] == 0.5
    assert result["metrics"]["AUC"] == result["fixed_threshold_metrics"]["AUC"]  # probabilities unchanged
    assert result["threshold"] == thresholds and result["fixed_threshold"] == 0.5
    assert "fixed_threshold_metrics" not in evaluate_classes(TASK, dataset, preds, predict)


def test_fixed_decision_and_one_class_validation_keep_predict_threshold():
    y, p = np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]])
    assert decision_thresholds(TASK, y, p, PredictConfig(decision="fixed")) == {}
    assert decision_thresholds(TASK, np.array([1, 1]), p, PredictConfig(threshold=0.3)) == {"malignant": 0.3}
    target = decision_thresholds(TASK, np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]),
                                 PredictConfig(decision="sensitivity", target_sensitivity=1.0))
    assert target == {"malignant": pytest.approx(0.15)}


def test_one_vs_rest_classes_get_a_threshold_each():
    task = Task("diagnosis", ("nevus", "melanoma", "sk"), {"n": 0, "m": 1, "s": 2})
    predict = PredictConfig(one_vs_rest=["melanoma", "sk"])
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([[.8, .1, .1], [.7, .2, .1], [.6, .3, .1], [.5, .4, .1], [.6, .1, .3], [.5, .1, .4]])
    assert decision_thresholds(task, y, p, predict) == {"melanoma": pytest.approx(0.25), "sk": pytest.approx(0.2)}
    assert decision_thresholds(task, y, p, PredictConfig()) == {}  # arg-max decisions


def test_run_record_keeps_thresholds_and_reads_records_without_them(tmp_path):
    record = RunRecord("classification", TASK, InputInfo(3, (8, 8), (0.5,) * 3, (0.2,) * 3),
                       DataInfo("folder", ".", 4, 2, 0), thresholds={"malignant": 0.125})
    raw = record.to_json()
    assert RunRecord.from_json(raw, tmp_path).thresholds == {"malignant": 0.125}
    del raw["thresholds"]
    assert RunRecord.from_json(raw, tmp_path).thresholds == {}
