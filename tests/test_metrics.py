"""Tests of medsight.metrics: hand-computed cases, agreement with scikit-learn, undefined values; and
the results table (medsight.report.format_table) and JSON output (medsight.io) the metrics go into."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from medsight.metrics import (
    BinaryClassificationMetric,
    MulticlassClassificationMetric,
    SegmentationMetric,
    average_precision,
    binary_metrics,
    multiclass_metrics,
    multilabel_metrics,
    roc_auc,
    segmentation_metrics,
    segmentation_metrics_batch,
    summarize_repeats,
)

TOL = 1e-12
nan = float("nan")


def close(a: float, b: float, tol: float = TOL) -> bool:
    """Equal within tol, and nan only equals nan."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


def assert_dict_close(got: dict, want: dict, tol: float = TOL) -> None:
    assert set(got) == set(want), (set(got) ^ set(want))
    bad = {k: (got[k], want[k]) for k in want if not close(got[k], want[k], tol)}
    assert not bad, bad


# ------------------------------------------------------------------ binary: scikit-learn agreement


def random_binary(seed: int, n: int, tie_decimals: int | None, pos_rate: float = 0.4):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < pos_rate).astype(int)
    score = np.clip(rng.normal(0.4 + 0.25 * y, 0.2), 0, 1)
    if tie_decimals is not None:
        score = np.round(score, tie_decimals)  # many tied scores, some exactly at 0.5
    return y, score


def sklearn_binary(y, score, threshold=0.5):
    pred = (score >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auc = skm.roc_auc_score(y, score) if 0 < y.sum() < len(y) else nan
        ap = skm.average_precision_score(y, score) if y.sum() > 0 else nan
    return {
        "ACC": skm.accuracy_score(y, pred),
        "SEN": skm.recall_score(y, pred, zero_division=np.nan),
        "SPE": tn / (tn + fp) if tn + fp else nan,
        "AUC": auc,
        "AP": ap,
        "PPV": skm.precision_score(y, pred, zero_division=np.nan),
        "NPV": tn / (tn + fn) if tn + fn else nan,
        "F1": skm.f1_score(y, pred, zero_division=np.nan),
    }


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [9, 60, 500])
@pytest.mark.parametrize("ties", [None, 1, 0])
def test_binary_matches_sklearn(seed, n, ties):
    y, score = random_binary(seed, n, ties)
    if y.sum() in (0, n):
        y[0], y[1] = 0, 1
    got = binary_metrics(y, score)
    assert_dict_close(got, sklearn_binary(y, score))
    assert close(roc_auc(y, score), skm.roc_auc_score(y, score))
    assert close(average_precision(y, score), skm.average_precision_score(y, score))


@pytest.mark.parametrize("threshold", [0.2, 0.35, 0.8])
def test_binary_threshold_matches_sklearn(threshold):
    y, score = random_binary(11, 200, 2)
    assert_dict_close(binary_metrics(y, score, threshold), sklearn_binary(y, score, threshold))


def test_binary_rare_positives_matches_sklearn():
    for seed in range(5):
        y, score = random_binary(seed, 300, 1, pos_rate=0.03)
        y[0] = 1
        assert_dict_close(binary_metrics(y, score), sklearn_binary(y, score))


def test_auc_with_heavy_ties_is_mann_whitney():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    score = rng.integers(0, 4, 400).astype(float)
    pos, neg = score[y == 1], score[y == 0]
    diff = pos[:, None] - neg[None, :]
    u = (diff > 0).sum() + 0.5 * (diff == 0).sum()
    assert close(roc_auc(y, score), u / (len(pos) * len(neg)))


# ------------------------------------------------------------------ binary: hand-computed


def test_binary_four_samples_by_hand():
    y = [1, 0, 1, 1]
    score = [0.8, 0.7, 0.3, 0.6]
    # predicted positive (>= 0.5): 1, 1, 0, 1 -> TP = 2 (#0, #3), FP = 1 (#1), FN = 1 (#2), TN = 0
    got = binary_metrics(y, score)
    assert got["ACC"] == pytest.approx(2 / 4)
    assert got["SEN"] == pytest.approx(2 / 3)
    assert got["SPE"] == pytest.approx(0.0)
    assert got["PPV"] == pytest.approx(2 / 3)
    assert got["NPV"] == pytest.approx(0.0)
    assert got["F1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # the one negative (0.7) is outranked by one positive (0.8) of three
    assert got["AUC"] == pytest.approx(1 / 3)
    # descending: 0.8 (+) P=1 R=1/3; 0.7 (-); 0.6 (+) P=2/3 R=2/3; 0.3 (+) P=3/4 R=1
    assert got["AP"] == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 4)
    assert list(got) == ["ACC", "SEN", "SPE", "AUC", "AP", "PPV", "NPV", "F1"]


def test_auc_three_quarters():
    # positives 0.9, 0.4; negatives 0.6, 0.1: 3 of the 4 pairs ordered correctly
    assert roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert roc_auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert roc_auc([1, 0, 0], [0.1, 0.2, 0.3]) == 0.0


def test_threshold_is_inclusive():
    got = binary_metrics([1, 0], [0.5, 0.49])
    assert got["SEN"] == 1.0 and got["SPE"] == 1.0


# ------------------------------------------------------------------ binary: undefined values


def test_binary_no_positives():
    got = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert math.isnan(got["SEN"]) and math.isnan(got["AUC"]) and math.isnan(got["AP"])
    assert got["SPE"] == pytest.approx(2 / 3)
    assert got["PPV"] == 0.0  # one predicted positive, wrong
    assert got["F1"] == 0.0  # FP > 0, so F1 is defined


def test_binary_no_positives_none_predicted():
    got = binary_metrics([0, 0], [0.1, 0.2])
    assert math.isnan(got["SEN"]) and math.isnan(got["PPV"]) and math.isnan(got["F1"])
    assert got["ACC"] == 1.0 and got["SPE"] == 1.0 and got["NPV"] == 1.0


def test_binary_no_negatives():
    got = binary_metrics([1, 1, 1], [0.9, 0.2, 0.6])
    assert math.isnan(got["SPE"]) and math.isnan(got["AUC"])
    assert got["AP"] == 1.0
    assert got["NPV"] == 0.0  # one predicted negative, wrong


def test_binary_nothing_predicted_positive():
    got = binary_metrics([1, 0, 1], [0.1, 0.2, 0.3])
    assert math.isnan(got["PPV"])
    assert got["SEN"] == 0.0 and got["F1"] == 0.0 and got["NPV"] == pytest.approx(1 / 3)


def test_binary_nothing_predicted_negative():
    got = binary_metrics([1, 0], [0.9, 0.8])
    assert math.isnan(got["NPV"]) and got["PPV"] == 0.5


def test_binary_input_forms_and_errors():
    torch = pytest.importorskip("torch")
    y, score = random_binary(0, 50, 1)
    want = binary_metrics(y, score)
    assert_dict_close(binary_metrics(torch.tensor(y), torch.tensor(score)), want)
    assert_dict_close(binary_metrics(y.astype(bool), score[:, None]), want)
    assert_dict_close(binary_metrics(y.astype(float).tolist(), score.tolist()), want)
    with pytest.raises(ValueError, match="binary"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="binary"):
        binary_metrics([0, -1], [0.1, 0.2])
    with pytest.raises(ValueError, match="values for"):
        binary_metrics([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="non-finite"):
        binary_metrics([0, 1], [0.1, nan])
    with pytest.raises(ValueError, match="empty"):
        binary_metrics([], [])


# ------------------------------------------------------------------ multiclass


def random_multiclass(seed: int, n: int, k: int, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    if ties:
        logits = np.round(logits)
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [2, 3, 7])
@pytest.mark.parametrize("ties", [False, True])
def test_multiclass_matches_sklearn(seed, k, ties):
    y, proba = random_multiclass(seed, 300, k, ties)
    assert set(y) == set(range(k))
    got = multiclass_metrics(y, proba)
    pred = proba.argmax(axis=1)
    assert close(got["ACC"], skm.accuracy_score(y, pred))
    assert close(got["BMA"], skm.balanced_accuracy_score(y, pred))
    assert close(got["F1"], skm.f1_score(y, pred, average="macro"))
    if k == 2:
        # macro over both columns; with rounding-noise ties in 1 - p the two columns can differ
        per_column = [skm.roc_auc_score(y == c, proba[:, c]) for c in range(2)]
        assert close(got["AUC"], np.mean(per_column))
        if not ties:
            assert close(got["AUC"], skm.roc_auc_score(y, proba[:, 1]))
    else:
        assert close(got["AUC"], skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    recall = skm.recall_score(y, pred, average=None, labels=range(k))
    precision = skm.precision_score(y, pred, average=None, labels=range(k), zero_division=np.nan)
    f1 = skm.f1_score(y, pred, average=None, labels=range(k))
    cm = skm.confusion_matrix(y, pred, labels=range(k))
    for c in range(k):
        spe = (cm.sum() - cm[c].sum() - cm[:, c].sum() + cm[c, c]) / (cm.sum() - cm[c].sum())
        assert close(got[f"SEN[{c}]"], recall[c])
        assert close(got[f"PPV[{c}]"], precision[c])
        assert close(got[f"F1[{c}]"], f1[c])
        assert close(got[f"SPE[{c}]"], spe)
        assert close(got[f"AUC[{c}]"], skm.roc_auc_score(y == c, proba[:, c]))
        assert close(got[f"AP[{c}]"], skm.average_precision_score(y == c, proba[:, c]))


def test_multiclass_class_absent_from_labels():
    # 4 classes, class 2 never occurs in y_true but is predicted once
    y = np.array([0, 0, 1, 1, 3, 3])
    proba = np.array(
        [
            [0.7, 0.1, 0.1, 0.1],  # 0 -> 0
            [0.2, 0.1, 0.6, 0.1],  # 0 -> 2
            [0.1, 0.8, 0.05, 0.05],  # 1 -> 1
            [0.5, 0.3, 0.1, 0.1],  # 1 -> 0
            [0.1, 0.1, 0.1, 0.7],  # 3 -> 3
            [0.1, 0.1, 0.2, 0.6],  # 3 -> 3
        ]
    )
    got = multiclass_metrics(y, proba, classes=["nv", "mel", "bkl", "sk"])
    # per-class recall over present classes: 1/2, 1/2, 2/2
    assert got["BMA"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert got["ACC"] == pytest.approx(4 / 6)
    assert math.isnan(got["SEN[bkl]"]) and math.isnan(got["AUC[bkl]"]) and math.isnan(got["AP[bkl]"])
    # macro AUC over nv, mel, sk only
    aucs = [skm.roc_auc_score(y == c, proba[:, c]) for c in (0, 1, 3)]
    assert got["AUC"] == pytest.approx(np.mean(aucs), abs=TOL)
    # bkl is predicted once (wrongly): F1[bkl] = 0 and counts in the macro F1, as in scikit-learn
    assert got["F1[bkl]"] == 0.0
    pred = proba.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert got["BMA"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=TOL)
    assert got["F1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=TOL)


def test_multiclass_class_neither_present_nor_predicted_is_left_out_of_f1():
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.7, 0.3, 0.0]])
    got = multiclass_metrics(y, proba)
    assert math.isnan(got["F1[2]"])
    assert got["F1"] == pytest.approx(skm.f1_score(y, proba.argmax(1), average="macro"), abs=TOL)
    assert got["F1"] == pytest.approx((got["F1[0]"] + got["F1[1]"]) / 2)


def test_multiclass_single_class_present():
    got = multiclass_metrics([1, 1, 1], [[0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert math.isnan(got["AUC"])  # no class has both positives and negatives
    assert got["BMA"] == pytest.approx(2 / 3) and got["ACC"] == pytest.approx(2 / 3)


def test_multiclass_names_and_errors():
    y, proba = random_multiclass(0, 30, 3)
    got = multiclass_metrics(y, proba, classes=["nevus", "melanoma", "sk"])
    assert "AUC[melanoma]" in got and "F1[sk]" in got and "AUC[1]" not in got
    with pytest.raises(ValueError, match="names"):
        multiclass_metrics(y, proba, classes=["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        multiclass_metrics(y, proba, classes=["a", "b", "a"])
    with pytest.raises(ValueError, match="integer class labels"):
        multiclass_metrics(np.r_[y[:-1], 3], proba)
    with pytest.raises(ValueError, match="shape"):
        multiclass_metrics(y, proba[:, 0])


def test_multilabel_matches_sklearn():
    rng = np.random.default_rng(5)
    y = (rng.random((200, 5)) < [0.05, 0.2, 0.5, 0.3, 0.1]).astype(int)
    score = np.round(np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1), 1)
    got = multilabel_metrics(y, score, labels=list("abcde"))
    assert close(got["AUC"], skm.roc_auc_score(y, score, average="macro"))
    assert close(got["AP"], skm.average_precision_score(y, score, average="macro"))
    assert close(got["AUC[c]"], skm.roc_auc_score(y[:, 2], score[:, 2]))
    y[:, 0] = 0  # label a never present: undefined and left out of the means
    got = multilabel_metrics(y, score, labels=list("abcde"))
    assert math.isnan(got["AUC[a]"]) and math.isnan(got["AP[a]"])
    assert close(got["AUC"], np.mean([skm.roc_auc_score(y[:, j], score[:, j]) for j in range(1, 5)]))


# ------------------------------------------------------------------ segmentation


def two_squares():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[1:6, 1:6] = True  # 5 x 5 = 25 pixels
    b[3:8, 3:8] = True  # 5 x 5 = 25 pixels, overlap rows/cols 3..5 = 3 x 3 = 9
    return a, b


def test_segmentation_two_squares():
    pred, true = two_squares()
    got = segmentation_metrics(pred, true)
    inter, union = 9, 25 + 25 - 9
    assert got["JA"] == pytest.approx(inter / union)
    assert got["DI"] == pytest.approx(2 * inter / (25 + 25))
    assert got["AC"] == pytest.approx((100 - 16 - 16) / 100)  # 16 FP + 16 FN pixels
    assert got["SE"] == pytest.approx(9 / 25)
    assert got["SP"] == pytest.approx((100 - union) / (100 - 25))
    assert got["JA"] == pytest.approx(skm.jaccard_score(true.ravel(), pred.ravel()), abs=TOL)
    assert got["DI"] == pytest.approx(skm.f1_score(true.ravel(), pred.ravel()), abs=TOL)


def test_segmentation_mask_encodings_and_3d():
    pred, true = two_squares()
    want = segmentation_metrics(pred, true)
    assert_dict_close(segmentation_metrics(pred.astype(np.uint8) * 255, true.astype(np.uint8) * 255), want)
    assert_dict_close(segmentation_metrics(pred.astype(np.float32), true.astype(float)), want)
    vol_p, vol_t = np.stack([pred, pred]), np.stack([true, true])
    assert_dict_close(segmentation_metrics(vol_p, vol_t), want)
    with pytest.raises(ValueError, match="threshold"):
        segmentation_metrics(pred * 0.7, true)
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(pred, true[:5])


def test_segmentation_both_empty():
    empty = np.zeros((8, 8), bool)
    got = segmentation_metrics(empty, empty)
    assert got["JA"] == 1.0 and got["DI"] == 1.0 and got["AC"] == 1.0 and got["SP"] == 1.0
    assert math.isnan(got["SE"])
    got = segmentation_metrics(empty, empty, empty_score=nan)
    assert math.isnan(got["JA"]) and math.isnan(got["DI"])


def test_segmentation_empty_truth_nonempty_prediction():
    true = np.zeros((8, 8), bool)
    pred = np.zeros((8, 8), bool)
    pred[:2, :3] = True  # 6 false positives
    got = segmentation_metrics(pred, true)
    assert got["JA"] == 0.0 and got["DI"] == 0.0
    assert math.isnan(got["SE"])
    assert got["SP"] == pytest.approx(58 / 64) and got["AC"] == pytest.approx(58 / 64)


def test_segmentation_all_foreground_truth():
    full = np.ones((4, 4), bool)
    pred = full.copy()
    pred[0, 0] = False
    got = segmentation_metrics(pred, full)
    assert math.isnan(got["SP"]) and got["SE"] == pytest.approx(15 / 16)


def test_segmentation_batch_averages_per_image():
    a, b = two_squares()
    empty = np.zeros((6, 4), bool)  # a different image size
    small_t = np.zeros((6, 4), bool)
    small_t[1:3, 1:3] = True
    small_p = np.zeros((6, 4), bool)
    small_p[1:3, 1:2] = True
    per = [segmentation_metrics(a, b), segmentation_metrics(empty, empty), segmentation_metrics(small_p, small_t)]
    got = segmentation_metrics_batch([a, empty, small_p], [b, empty, small_t])
    for k in ("JA", "DI", "AC", "SP"):
        assert got[k] == pytest.approx(np.mean([d[k] for d in per]), abs=TOL)
    assert got["SE"] == pytest.approx((9 / 25 + 2 / 4) / 2)  # the empty image is left out
    # a leading batch axis works too, and differs from pooling all pixels
    pred = np.stack([a, np.zeros_like(a)])
    true = np.stack([b, np.zeros_like(b)])
    got = segmentation_metrics_batch(pred, true)
    assert got["JA"] == pytest.approx((9 / 41 + 1.0) / 2)
    assert got["JA"] != pytest.approx(segmentation_metrics(pred, true)["JA"])
    with pytest.raises(ValueError):
        segmentation_metrics_batch([a], [b, b])


# ------------------------------------------------------------------ accumulators


def chunks(n: int, seed: int) -> list[slice]:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, n), size=4, replace=False))
    edges = [0, *cuts.tolist(), n]
    return [slice(i, j) for i, j in zip(edges[:-1], edges[1:])]


def test_binary_accumulator_equals_functional():
    torch = pytest.importorskip("torch")
    y, score = random_binary(2, 120, 1)
    m = BinaryClassificationMetric(threshold=0.4)
    for i, sl in enumerate(chunks(len(y), 0)):
        if i % 2:
            m.update(torch.tensor(y[sl]), torch.tensor(score[sl], dtype=torch.float64)[:, None])
        else:
            m.update(y[sl], score[sl])
    m.update(1, 0.3)  # a single sample
    assert len(m) == 121
    assert m.aggregate() == binary_metrics(np.r_[y, 1], np.r_[score, 0.3], 0.4)
    m.reset()
    assert len(m) == 0
    with pytest.raises(ValueError, match="update"):
        m.aggregate()
    m.update(y[:10], score[:10])
    assert m.aggregate() == binary_metrics(y[:10], score[:10], 0.4)


def test_multiclass_accumulator_equals_functional():
    y, proba = random_multiclass(1, 150, 4, ties=True)
    m = MulticlassClassificationMetric(classes=["a", "b", "c", "d"])
    for sl in chunks(len(y), 1):
        m.update(y[sl], proba[sl])
    want = multiclass_metrics(y, proba, classes=["a", "b", "c", "d"])
    assert_dict_close(m.aggregate(), want, tol=0)
    with pytest.raises(ValueError, match="columns"):
        m.update(y[:3], proba[:3, :3])
    m.reset()
    with pytest.raises(ValueError):
        m.aggregate()
    m.update(y[:20], proba[:20])
    assert_dict_close(m.aggregate(), multiclass_metrics(y[:20], proba[:20], classes=list("abcd")), tol=0)


def test_segmentation_accumulator_equals_functional():
    rng = np.random.default_rng(0)
    preds = rng.random((9, 12, 12)) < 0.3
    trues = rng.random((9, 12, 12)) < 0.3
    trues[4] = False  # one image with an empty truth
    preds[4] = False
    m = SegmentationMetric()
    m.update(preds[:4], trues[:4])
    m.update(list(preds[4:6]), list(trues[4:6]))
    m.update(preds[6:], trues[6:].astype(np.uint8))
    assert len(m) == 9 and len(m.per_image) == 9
    assert_dict_close(m.aggregate(), segmentation_metrics_batch(preds, trues), tol=0)
    summary = m.summary()
    assert summary["SE"]["n"] == 8 and summary["JA"]["n"] == 9
    assert summary["JA"]["mean"] == pytest.approx(m.aggregate()["JA"], abs=TOL)
    m.reset()
    assert len(m) == 0
    with pytest.raises(ValueError):
        m.aggregate()


# ------------------------------------------------------------------ repeats


def test_summarize_repeats_against_numpy():
    rng = np.random.default_rng(4)
    runs = [{"ACC": float(a), "AUC": float(b)} for a, b in rng.random((5, 2))]
    got = summarize_repeats(runs)
    for key in ("ACC", "AUC"):
        v = np.array([r[key] for r in runs])
        assert got[key]["mean"] == pytest.approx(v.mean(), abs=TOL)
        assert got[key]["std"] == pytest.approx(v.std(ddof=1), abs=TOL)
        assert got[key]["n"] == 5 and got[key]["values"] == v.tolist()
    assert list(got) == ["ACC", "AUC"]


def test_summarize_repeats_nan_missing_and_single():
    runs = [{"SEN": 0.8, "AUC": 0.9}, {"SEN": nan, "AUC": 0.7}, {"SEN": 0.9}, {"SEN": None, "AUC": nan}]
    got = summarize_repeats(runs)
    assert got["SEN"]["n"] == 2 and got["SEN"]["mean"] == pytest.approx(0.85)
    assert got["SEN"]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert len(got["SEN"]["values"]) == 4 and math.isnan(got["SEN"]["values"][1])
    assert got["AUC"]["n"] == 2 and got["AUC"]["mean"] == pytest.approx(0.8)
    one = summarize_repeats([{"ACC": 0.5}])["ACC"]
    assert one == {"mean": 0.5, "std": 0.0, "n": 1, "values": [0.5]}
    none = summarize_repeats([{"SE": nan}, {"SE": nan}])["SE"]
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["std"])
    assert summarize_repeats([]) == {}
    with pytest.raises(TypeError, match="non-numeric"):
        summarize_repeats([{"name": "run1"}])
