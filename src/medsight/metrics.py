"""Evaluation metrics in the talk's vocabulary, their accumulators, and the results table.

Classification (scores in, dict of floats out):

- ``binary_metrics``: ACC, SEN, SPE, AUC, AP, PPV, NPV, F1 for one positive class.
- ``multiclass_metrics``: ACC, BMA, macro AUC, macro F1 and per-class entries ("AUC[mel]", ...).
- ``multilabel_metrics``: macro AUC / AP over independent labels (ChestX-ray14 style).

Segmentation, per image then averaged over images:

- ``segmentation_metrics`` (one image): JA, DI, AC, SE, SP.
- ``segmentation_metrics_batch``: the mean of the per-image values.

Accumulators in the MONAI style (``update`` batches, ``aggregate`` -> dict, ``reset``), giving
exactly the functional results: ``BinaryClassificationMetric``, ``MulticlassClassificationMetric``,
``SegmentationMetric``.

Repeats and reporting: ``summarize_repeats`` (mean ± std over runs or folds), ``format_table``
(one row per method, one column per metric, text or markdown), ``jsonable`` / ``to_json``.

Undefined values
----------------
A metric whose denominator is empty is ``float('nan')``, never a silent 0 or 1 (scikit-learn
returns 0 with a warning in several of these cases; medsight does not):

- SEN (recall) when there are no positives; SPE when there are no negatives;
- PPV when nothing is predicted positive; NPV when nothing is predicted negative;
- F1 when there are no positives and none are predicted (2TP + FP + FN = 0);
- AUC when y_true holds one class only; AP when there are no positives
  (with no negatives AP is 1.0: every threshold has precision 1);
- segmentation SE when the true mask is empty, SP when the true mask has no background.

One exception, a convention rather than an undefined value: for segmentation, an empty true mask
predicted empty is perfect agreement, so JA = DI = 1.0 (``empty_score``; pass ``float('nan')`` to
exclude such images instead, like MONAI's ``ignore_empty=True``). An empty true mask with a
non-empty prediction gives JA = DI = 0.0 from the formulas.

Every mean over images, classes or runs is nan-aware: undefined values are left out, and
``summarize_repeats`` reports how many values were defined (``n``) out of how many (``values``).
A mean over no defined value is nan. ``jsonable`` turns nan into ``None`` for JSON.

Inputs may be NumPy arrays, lists, or torch tensors (detached and moved to the CPU here; torch is
never imported by this module).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "binary_metrics",
    "multiclass_metrics",
    "multilabel_metrics",
    "segmentation_metrics",
    "segmentation_metrics_batch",
    "roc_auc",
    "average_precision",
    "BinaryClassificationMetric",
    "MulticlassClassificationMetric",
    "SegmentationMetric",
    "summarize_repeats",
    "format_table",
    "jsonable",
    "to_json",
]

NAN = float("nan")

BINARY_KEYS = ("ACC", "SEN", "SPE", "AUC", "AP", "PPV", "NPV", "F1")
MULTICLASS_KEYS = ("ACC", "BMA", "AUC", "F1")
PER_CLASS_KEYS = ("AUC", "AP", "SEN", "SPE", "PPV", "F1")
SEGMENTATION_KEYS = ("JA", "DI", "AC", "SE", "SP")


# --------------------------------------------------------------------------- helpers


def _to_numpy(x: Any) -> np.ndarray:
    """An ndarray from an array-like or a torch tensor (without importing torch)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        try:
            return x.numpy()
        except TypeError:  # bfloat16 and friends have no NumPy dtype
            return x.float().numpy()
    return np.asarray(x)


def _ratio(num: float, den: float) -> float:
    """num / den, or nan when the denominator is zero (the undefined case)."""
    return float(num) / float(den) if den > 0 else NAN


def _nanmean(values: Iterable[float]) -> float:
    """Mean of the non-nan values; nan (without a warning) when there are none."""
    a = np.asarray(list(values), dtype=float)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else NAN


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


# --------------------------------------------------------------------------- classification


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


# --------------------------------------------------------------------------- segmentation


def _as_mask(m: Any, name: str) -> np.ndarray:
    """Boolean foreground mask: bool as is, integers nonzero (0/1 or 0/255), floats must be 0/1."""
    a = _to_numpy(m)
    if a.dtype == bool:
        return a
    if np.issubdtype(a.dtype, np.integer):
        return a != 0
    if np.issubdtype(a.dtype, np.floating):
        if not np.all((a == 0) | (a == 1)):
            raise ValueError(f"{name} is a float array with values other than 0 and 1; threshold probabilities first")
        return a == 1
    raise TypeError(f"{name} must be a bool or numeric mask, got dtype {a.dtype}")


def segmentation_metrics(pred_mask: Any, true_mask: Any, empty_score: float = 1.0) -> dict[str, float]:
    """Overlap metrics of one binary mask against the ground truth (any shape, 2D or 3D).

    JA = TP / (TP + FP + FN) (Jaccard), DI = 2TP / (2TP + FP + FN) (Dice), AC = pixel accuracy,
    SE = TP / (TP + FN), SP = TN / (TN + FP).

    Masks: bool, integer (nonzero = foreground, so 0/255 PNGs work) or float with 0/1 values only.
    Empty cases: both masks empty -> JA = DI = ``empty_score`` (1.0, perfect agreement); true
    empty, prediction not -> JA = DI = 0.0; SE = nan when the true mask is empty; SP = nan when the
    true mask has no background.
    """
    p = _as_mask(pred_mask, "pred_mask")
    t = _as_mask(true_mask, "true_mask")
    if p.shape != t.shape:
        raise ValueError(f"pred_mask shape {p.shape} differs from true_mask shape {t.shape}")
    if t.size == 0:
        raise ValueError("masks are empty arrays")
    tp = float(np.count_nonzero(p & t))
    fp = float(np.count_nonzero(p & ~t))
    fn = float(np.count_nonzero(~p & t))
    tn = float(t.size) - tp - fp - fn
    both_empty = tp + fp + fn == 0
    return {
        "JA": float(empty_score) if both_empty else tp / (tp + fp + fn),
        "DI": float(empty_score) if both_empty else 2 * tp / (2 * tp + fp + fn),
        "AC": (tp + tn) / t.size,
        "SE": _ratio(tp, tp + fn),
        "SP": _ratio(tn, tn + fp),
    }


def _mean_dicts(dicts: Sequence[Mapping[str, float]], keys: Sequence[str]) -> dict[str, float]:
    return {k: _nanmean(d[k] for d in dicts) for k in keys}


def _iter_images(masks: Any) -> list[Any]:
    if isinstance(masks, (list, tuple)):
        return list(masks)
    a = _to_numpy(masks)
    if a.ndim < 2:
        raise ValueError(f"a batch of masks needs a leading batch axis, got shape {a.shape}")
    return list(a)


def segmentation_metrics_batch(
    pred_masks: Any, true_masks: Any, empty_score: float = 1.0
) -> dict[str, float]:
    """Per-image ``segmentation_metrics`` averaged over images (nan values left out).

    pred_masks / true_masks: arrays with a leading batch axis, or lists of per-image masks (sizes
    may differ between images). For std and counts, call ``summarize_repeats`` on the per-image
    dicts (``SegmentationMetric.per_image``).
    """
    preds, trues = _iter_images(pred_masks), _iter_images(true_masks)
    if len(preds) != len(trues):
        raise ValueError(f"{len(preds)} predicted masks for {len(trues)} true masks")
    if not preds:
        raise ValueError("no masks")
    per_image = [segmentation_metrics(p, t, empty_score) for p, t in zip(preds, trues)]
    return _mean_dicts(per_image, SEGMENTATION_KEYS)


# --------------------------------------------------------------------------- accumulators


class BinaryClassificationMetric:
    """Accumulates (y_true, score) batches; ``aggregate()`` equals ``binary_metrics`` on all of them."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._y: list[np.ndarray] = []
        self._s: list[np.ndarray] = []

    def update(self, y_true: Any, score: Any) -> None:
        y = _binary_labels(np.atleast_1d(_to_numpy(y_true)))
        self._y.append(y)
        self._s.append(_scores(np.atleast_1d(_to_numpy(score)), y.shape[0]))

    def __len__(self) -> int:
        return sum(len(y) for y in self._y)

    def aggregate(self) -> dict[str, float]:
        if not self._y:
            raise ValueError("no data: call update() before aggregate()")
        return binary_metrics(np.concatenate(self._y), np.concatenate(self._s), self.threshold)


class MulticlassClassificationMetric:
    """Accumulates (y_true, proba) batches; ``aggregate()`` equals ``multiclass_metrics``."""

    def __init__(self, classes: Sequence[Any] | None = None):
        self.classes = classes
        self.reset()

    def reset(self) -> None:
        self._y: list[np.ndarray] = []
        self._p: list[np.ndarray] = []

    def update(self, y_true: Any, proba: Any) -> None:
        y = np.atleast_1d(_to_numpy(y_true))
        p = _to_numpy(proba)
        if p.ndim == 1:
            p = p[None, :]
        if p.ndim != 2 or p.shape[0] != y.shape[0]:
            raise ValueError(f"proba shape {p.shape} does not match {y.shape[0]} labels")
        if self._p and p.shape[1] != self._p[0].shape[1]:
            raise ValueError(f"proba has {p.shape[1]} columns, earlier batches had {self._p[0].shape[1]}")
        self._y.append(y)
        self._p.append(p)

    def __len__(self) -> int:
        return sum(len(y) for y in self._y)

    def aggregate(self) -> dict[str, float]:
        if not self._y:
            raise ValueError("no data: call update() before aggregate()")
        return multiclass_metrics(np.concatenate(self._y), np.concatenate(self._p), self.classes)


class SegmentationMetric:
    """Accumulates per-image segmentation metrics; ``aggregate()`` equals
    ``segmentation_metrics_batch`` over every image seen. ``per_image`` keeps the per-image
    dicts (in update order); ``summary()`` gives mean, std and counts of defined values."""

    def __init__(self, empty_score: float = 1.0):
        self.empty_score = empty_score
        self.reset()

    def reset(self) -> None:
        self.per_image: list[dict[str, float]] = []

    def update(self, pred_masks: Any, true_masks: Any) -> None:
        """Add a batch: arrays with a leading batch axis, or lists of per-image masks."""
        preds, trues = _iter_images(pred_masks), _iter_images(true_masks)
        if len(preds) != len(trues):
            raise ValueError(f"{len(preds)} predicted masks for {len(trues)} true masks")
        self.per_image.extend(segmentation_metrics(p, t, self.empty_score) for p, t in zip(preds, trues))

    def __len__(self) -> int:
        return len(self.per_image)

    def aggregate(self) -> dict[str, float]:
        if not self.per_image:
            raise ValueError("no data: call update() before aggregate()")
        return _mean_dicts(self.per_image, SEGMENTATION_KEYS)

    def summary(self) -> dict[str, dict[str, Any]]:
        return summarize_repeats(self.per_image)


# --------------------------------------------------------------------------- repeats and tables


def _as_float(v: Any, key: str) -> float:
    if v is None:  # nan after a JSON round trip
        return NAN
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"metric {key!r} has a non-numeric value {v!r}")
    return float(v)


def summarize_repeats(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean ± std of each metric over repeated runs, folds or images.

    Returns {metric: {"mean", "std", "n", "values"}}: ``values`` holds every run's value in order
    (nan where undefined or where a run lacks the metric), ``n`` the number of defined values,
    ``mean`` / ``std`` are over those (std with ddof=1 when n > 1, 0.0 when n == 1, nan when
    n == 0). Metrics appear in order of first appearance. ``None`` is read as nan.
    """
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run))
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = [_as_float(run.get(key), key) for run in runs]
        a = np.asarray(values, dtype=float)
        a = a[~np.isnan(a)]
        n = int(a.size)
        out[key] = {
            "mean": float(a.mean()) if n else NAN,
            "std": float(a.std(ddof=1)) if n > 1 else (0.0 if n == 1 else NAN),
            "n": n,
            "values": values,
        }
    return out


def _is_nan(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _cell(v: Any, percent: bool, digits: int) -> str:
    scale = 100.0 if percent else 1.0
    if isinstance(v, Mapping):  # a summarize_repeats entry
        mean, std, n = v.get("mean"), v.get("std"), v.get("n")
        if _is_nan(mean):
            return "n/a"
        text = f"{float(mean) * scale:.{digits}f}"
        if n is not None and n > 1 and not _is_nan(std):
            text += f" ± {float(std) * scale:.{digits}f}"
        values = v.get("values")
        if n is not None and values is not None and n < len(values):
            text += f" (n={n})"
        return text
    if _is_nan(v):
        return "n/a"
    return f"{_as_float(v, '?') * scale:.{digits}f}"


def format_table(
    rows: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    style: str = "text",
    percent: bool = True,
    digits: int = 2,
    index_name: str = "method",
) -> str:
    """The talk's table: one row per method or run, one column per metric.

    Each row is a metric dict (cells like "88.73") or a ``summarize_repeats`` result (cells like
    "88.73 ± 1.20"; the ± part only when n > 1, and "(n=3)" when only 3 of the runs were defined).
    ``metrics``: the columns, in order (default: every metric, in order of first appearance).
    ``percent`` multiplies by 100 (set False for metrics reported as fractions, e.g. BMA 0.798).
    Undefined values print "n/a", metrics a row lacks print "-". ``style``: "text" or "markdown".
    """
    if style not in ("text", "markdown"):
        raise ValueError(f"style must be 'text' or 'markdown', got {style!r}")
    if metrics is None:
        seen: dict[str, None] = {}
        for row in rows.values():
            seen.update(dict.fromkeys(row))
        metrics = list(seen)
    header = [index_name, *metrics]
    body = [
        [str(name), *(_cell(row[m], percent, digits) if m in row else "-" for m in metrics)]
        for name, row in rows.items()
    ]
    if style == "markdown":

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        rule = "|" + "|".join([":---", *["---:"] * len(metrics)]) + "|"
        return "\n".join([line(header), rule, *(line(r) for r in body)])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))]).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in body)])


def jsonable(obj: Any) -> Any:
    """A JSON-serialisable copy: NumPy scalars and arrays become Python numbers and lists,
    tuples become lists, mapping keys strings, and nan / inf become None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        obj = _to_numpy(obj)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")


def to_json(obj: Any, path: str | Path | None = None, indent: int | None = 2) -> str:
    """Strict JSON text of ``jsonable(obj)`` (nan -> null); also written to ``path`` if given."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False)
    if path is not None:
        Path(path).write_text(text + "\n", encoding="utf-8")
    return text
