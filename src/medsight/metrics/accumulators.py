"""Accumulators in the MONAI style (``update`` batches, ``aggregate`` -> dict, ``reset``), giving
exactly the functional results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medsight.metrics._arrays import _to_numpy
from medsight.metrics.classification import _binary_labels, _scores, binary_metrics, multiclass_metrics
from medsight.metrics.repeats import summarize_repeats
from medsight.metrics.segmentation import SEGMENTATION_KEYS, _iter_images, _mean_dicts, segmentation_metrics


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
