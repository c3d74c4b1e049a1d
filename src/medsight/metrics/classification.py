"""Classification metrics: binary (ACC, SEN, SPE, AUC, AP, PPV, NPV, F1), multi-class (ACC, BMA,
macro AUC / F1, per class) and multi-label (macro AUC / AP), with AUC and AP computed exactly by
ranks (see :mod:`medsight.metrics` for the undefined cases)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medsight.metrics._arrays import NAN, _nanmean, _ratio, _to_numpy

BINARY_KEYS = ("ACC", "SEN", "SPE", "AUC", "AP", "PPV", "NPV", "F1")
MULTICLASS_KEYS = ("ACC", "BMA", "AUC", "F1")
PER_CLASS_KEYS = ("AUC", "AP", "SEN", "SPE", "PPV", "F1")


def _binary_labels(y_true: Any, name: str = "y_true") -> np.ndarray:
    y = _to_numpy(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    if y.dtype == bool:
        return y
    if not np.issubdtype(y.dtype, np.number) or not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[~((y == 0) | (y == 1))])[:5] if np.issubdtype(y.dtype, np.number) else y.dtype
        raise ValueError(f"{name} must hold binary labels 0/1, found {bad}")
    return y == 1


def _scores(score: Any, n: int, name: str = "score") -> np.ndarray:
    s = _to_numpy(score)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per sample), got shape {s.shape}")
    if s.shape[0] != n:
        raise ValueError(f"{name} has {s.shape[0]} values for {n} labels")
    if not np.issubdtype(s.dtype, np.number) or s.dtype == bool:
        s = s.astype(float)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} holds non-finite values")
    return s


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, tied values sharing the mean of their ranks."""
    n = x.shape[0]
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    ranks = np.empty(n, dtype=float)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    rank_sum = _average_ranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _ap(y: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(y.sum())
    if n_pos == 0:
        return NAN
    order = np.argsort(s, kind="mergesort")[::-1]
    ss = s[order]
    last = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])  # last sample of each distinct score
    tps = np.cumsum(y[order], dtype=float)[last]
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y_true: Any, score: Any) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney U) formula, ties counted as 1/2.

    nan when y_true holds one class only.
    """
    y = _binary_labels(y_true)
    return _auc(y, _scores(score, y.shape[0]))


def average_precision(y_true: Any, score: Any) -> float:
    """Average precision, sum over distinct thresholds of (R_n - R_{n-1}) P_n (scikit-learn's
    definition, no interpolation). nan when there are no positives (scikit-learn gives 0)."""
    y = _binary_labels(y_true)
    return _ap(y, _scores(score, y.shape[0]))


def _rates(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    return {
        "SEN": _ratio(tp, tp + fn),
        "SPE": _ratio(tn, tn + fp),
        "PPV": _ratio(tp, tp + fp),
        "NPV": _ratio(tn, tn + fn),
        "F1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def binary_metrics(y_true: Any, score: Any, threshold: float = 0.5) -> dict[str, float]:
    """Binary classification metrics from scores.

    A sample is predicted positive when ``score >= threshold``. Returns ACC (accuracy), SEN
    (sensitivity = recall of the positive class), SPE (specificity), AUC (ROC area, rank formula
    with ties averaged), AP (average precision as scikit-learn defines it), PPV (precision), NPV
    and F1 = 2TP / (2TP + FP + FN).

    Undefined -> nan: SEN without positives, SPE without negatives, PPV when nothing is predicted
    positive, NPV when nothing is predicted negative, F1 when there are no positives and none
    predicted, AUC with one class only, AP without positives.

    y_true: 0/1 or bool, shape (n,) or (n, 1). score: shape (n,) or (n, 1), finite.
    """
    y = _binary_labels(y_true)
    s = _scores(score, y.shape[0])
    pred = s >= threshold
    tp = float(np.count_nonzero(y & pred))
    fp = float(np.count_nonzero(~y & pred))
    fn = float(np.count_nonzero(y & ~pred))
    tn = float(np.count_nonzero(~y & ~pred))
    rates = _rates(tp, fp, fn, tn)
    out = {"ACC": (tp + tn) / y.shape[0], "AUC": _auc(y, s), "AP": _ap(y, s), **rates}
    return {k: out[k] for k in BINARY_KEYS}


def _class_names(classes: Sequence[Any] | None, k: int) -> list[str]:
    if classes is None:
        return [str(i) for i in range(k)]
    names = [str(c) for c in classes]
    if len(names) != k:
        raise ValueError(f"classes has {len(names)} names for {k} score columns")
    if len(set(names)) != k:
        raise ValueError(f"classes has duplicate names: {names}")
    return names


def multiclass_metrics(
    y_true: Any, proba: Any, classes: Sequence[Any] | None = None
) -> dict[str, float]:
    """Multiclass metrics from per-class scores; the prediction is the arg-max column.

    - ACC: accuracy.
    - BMA: balanced multiclass accuracy, the mean per-class recall over the classes present in
      y_true (a class with no samples is left out, as in scikit-learn's balanced_accuracy_score).
    - AUC: macro one-vs-rest ROC AUC over the classes that have both positives and negatives in
      y_true (the others are undefined and left out; nan if none is defined).
    - F1: macro F1 over the classes that occur in y_true or in the predictions (scikit-learn's
      macro average; a class neither present nor predicted is undefined and left out).
    - per class c (name from ``classes``, else the column index): "AUC[c]", "AP[c]", "SEN[c]",
      "SPE[c]", "PPV[c]", "F1[c]", one-vs-rest, nan where undefined as in ``binary_metrics``.

    y_true: integer labels in [0, K). proba: shape (n, K), finite. AUC is computed column by
    column, so pass probabilities (softmax), not logits, to get the usual numbers.
    """
    p = _to_numpy(proba)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"proba must have shape (n, K) with K >= 2, got {p.shape}")
    p = p.astype(float, copy=False) if p.dtype == bool else p
    if not np.all(np.isfinite(p)):
        raise ValueError("proba holds non-finite values")
    n, k = p.shape
    y = _to_numpy(y_true)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y_true must have shape ({n},), got {y.shape}")
    if n == 0:
        raise ValueError("y_true is empty")
    if not np.issubdtype(y.dtype, np.number) or not np.all((y == np.round(y)) & (y >= 0) & (y < k)):
        raise ValueError(f"y_true must hold integer class labels in [0, {k})")
    y = y.astype(np.int64)
    names = _class_names(classes, k)

    pred = np.argmax(p, axis=1)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(float)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    fn = support - tp
    fp = predicted - tp
    tn = n - tp - fn - fp

    out: dict[str, float] = {"ACC": float(tp.sum() / n)}
    recall = [_ratio(tp[c], support[c]) for c in range(k)]
    aucs = [_auc(y == c, p[:, c]) for c in range(k)]
    per_class = []
    for c in range(k):
        r = _rates(tp[c], fp[c], fn[c], tn[c])
        r["AUC"] = aucs[c]
        r["AP"] = _ap(y == c, p[:, c])
        per_class.append(r)
    out["BMA"] = _nanmean(recall)
    out["AUC"] = _nanmean(aucs)
    out["F1"] = _nanmean(r["F1"] for r in per_class)
    for key in PER_CLASS_KEYS:
        for c in range(k):
            out[f"{key}[{names[c]}]"] = per_class[c][key]
    return out


def multilabel_metrics(
    y_true: Any, score: Any, labels: Sequence[Any] | None = None
) -> dict[str, float]:
    """Independent binary labels per sample (e.g. the 14 ChestX-ray14 findings).

    Returns macro "AUC" and "AP" (means over the labels where each is defined) and per label
    "AUC[l]", "AP[l]". Undefined per-label values (a label never or always present) are nan and
    left out of the means. y_true: 0/1 of shape (n, L); score: shape (n, L).
    """
    y = _to_numpy(y_true)
    s = _to_numpy(score)
    if y.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"y_true and score must both have shape (n, L), got {y.shape} and {s.shape}")
    names = _class_names(labels, y.shape[1])
    aucs, aps = [], []
    for j in range(y.shape[1]):
        yj = _binary_labels(y[:, j], f"y_true[:, {j}]")
        sj = _scores(s[:, j], yj.shape[0], f"score[:, {j}]")
        aucs.append(_auc(yj, sj))
        aps.append(_ap(yj, sj))
    out = {"AUC": _nanmean(aucs), "AP": _nanmean(aps)}
    out.update({f"AUC[{nm}]": v for nm, v in zip(names, aucs)})
    out.update({f"AP[{nm}]": v for nm, v in zip(names, aps)})
    return out
