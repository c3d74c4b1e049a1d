"""Evaluation metrics in the talk's vocabulary, and their accumulators.

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

Repeats: ``summarize_repeats`` (mean ± std over runs or folds). The results table is
:func:`medsight.report.format_table`; JSON output is :func:`medsight.io.jsonable` / ``to_json``.

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
A mean over no defined value is nan (``None`` in JSON).

Inputs may be NumPy arrays, lists, or torch tensors (detached and moved to the CPU here; torch is
never imported by this package).
"""

from medsight.metrics.accumulators import BinaryClassificationMetric, MulticlassClassificationMetric, SegmentationMetric
from medsight.metrics.classification import (average_precision, binary_metrics, multiclass_metrics,
                                             multilabel_metrics, roc_auc)
from medsight.metrics.repeats import summarize_repeats
from medsight.metrics.segmentation import segmentation_metrics, segmentation_metrics_batch

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
]
