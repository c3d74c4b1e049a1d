"""Decision thresholds chosen on validation cases.

A binary decision "positive when score >= t" is only as good as its ``t``: a network whose
probabilities are all low can rank perfectly (AUC 1) and still call nothing positive at 0.5. The
threshold is therefore chosen on cases the model did not learn from (the run's validation set)
and then used unchanged on new cases:

- ``youden``: the cut that maximises Youden's J = SEN + SPE - 1 on the validation cases (of tied
  cuts, the highest);
- ``sensitivity``: the highest cut whose validation sensitivity reaches ``target``, i.e. the most
  specific one that still finds that share of the positives.

A cut is a score the validation cases take; the threshold returned lies halfway between it and
the next lower score, so it makes exactly the validation decisions of the cut while leaving a
margin on both sides for new cases (below the lowest score: that score itself).
"""

from __future__ import annotations

from typing import Any

import numpy as np

RULES = ("youden", "sensitivity")


def _cuts(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct scores descending, SEN and SPE of "score >= that score")."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{len(y)} labels for {len(s)} scores")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if y.all() or not y.any():
        raise ValueError("the cases hold one class only; a threshold needs both")
    cuts = np.unique(s)[::-1]
    order = np.sort(s[y]), np.sort(s[~y])
    positives = len(order[0]) - np.searchsorted(order[0], cuts, side="left")  # scores >= cut
    negatives = len(order[1]) - np.searchsorted(order[1], cuts, side="left")
    return cuts, positives / len(order[0]), 1 - negatives / len(order[1])


def _between(cuts: np.ndarray, i: int) -> float:
    return float(cuts[i]) if i + 1 == len(cuts) else float((cuts[i] + cuts[i + 1]) / 2)


def youden_threshold(y_true: Any, score: Any) -> float:
    """The threshold maximising SEN + SPE - 1 on (y_true, score); of tied cuts, the highest."""
    cuts, sen, spe = _cuts(y_true, score)
    return _between(cuts, int(np.argmax(sen + spe - 1)))


def sensitivity_threshold(y_true: Any, score: Any, target: float) -> float:
    """The highest threshold with SEN >= ``target`` on (y_true, score)."""
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity {target} is not in (0, 1]")
    cuts, sen, _ = _cuts(y_true, score)
    return _between(cuts, int(np.argmax(sen >= target - 1e-12)))  # sen rises to 1 at the lowest cut


def choose_threshold(y_true: Any, score: Any, rule: str, target: float = 0.9) -> float:
    """The threshold of ``rule`` (``youden`` or ``sensitivity`` with ``target``)."""
    if rule == "youden":
        return youden_threshold(y_true, score)
    if rule == "sensitivity":
        return sensitivity_threshold(y_true, score, target)
    raise ValueError(f"unknown threshold rule {rule!r}; choose from {', '.join(RULES)}")
