"""Mean ± std of metrics over repeated runs, folds or images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medsight.metrics._arrays import NAN


def as_float(v: Any, key: str) -> float:
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
        values = [as_float(run.get(key), key) for run in runs]
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
