"""Segmentation metrics per image (JA, DI, AC, SE, SP) and their mean over images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medsight.metrics._arrays import _nanmean, _ratio, _to_numpy

SEGMENTATION_KEYS = ("JA", "DI", "AC", "SE", "SP")


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
