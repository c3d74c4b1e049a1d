"""Array helpers the metrics share: inputs to NumPy, and ratios and means that stay nan when undefined."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

NAN = float("nan")


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

