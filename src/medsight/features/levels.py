"""Grey levels: the input checks of the texture features and pyradiomics' discretisation.

Fixed bin width (default 25 when neither is given): floor(x / w) - floor(min / w) + 1, edges on
multiples of w. Fixed bin count: numpy's histogram edges over the masked values, the maximum in the
top bin. Levels run 1..n inside the mask, 0 outside; levels below the highest may be absent.
"""

from __future__ import annotations

import numpy as np

from medsight.errors import FeatureError


def _check_input(image, mask) -> tuple[np.ndarray, np.ndarray]:
    """(image, boolean mask) after the checks every entry point shares; mask nonzero = foreground.
    Finiteness is checked on the masked values (``_masked_values``), the only ones read."""
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise FeatureError(f"image must be 2D or 3D, got shape {image.shape}")
    if image.dtype.kind not in "biuf":
        raise FeatureError(f"image must hold real numbers, got dtype {image.dtype}")
    if image.dtype.kind == "b":
        image = image.astype(np.uint8)
    if image.dtype == np.float16:  # the kernels have no half precision; float32 holds its values exactly
        image = image.astype(np.float32)
    if mask is None:
        mask = np.ones(image.shape, dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != image.shape:
            raise FeatureError(f"mask shape {mask.shape} differs from image shape {image.shape}")
        mask = mask if mask.dtype == bool else mask != 0
        if not mask.any():
            raise FeatureError("mask has no foreground")
    return image, mask


def _masked_values(image, mask) -> np.ndarray:
    return _check_finite(image[mask])


def _check_finite(values) -> np.ndarray:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise FeatureError("image has NaN or inf inside the mask")
    return values


def _bin_edges(values: np.ndarray, bin_width, bin_count) -> np.ndarray:
    """pyradiomics' getBinEdges, written with the same expressions so float edges round the same way."""
    if bin_count is not None:
        edges = np.histogram_bin_edges(values, bin_count)  # np.histogram's edges, without counting
        edges[-1] += 1  # the maximum falls in the last bin under digitize
        return edges
    lo, hi = values.min(), values.max()
    edges = np.arange(lo - (lo % bin_width), hi + 2 * bin_width, bin_width)
    if len(edges) == 1:  # flat region: one bin, as numpy's histogram would make
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    return edges


def _check_binning(bin_width, bin_count):
    if bin_width is not None and bin_count is not None:
        raise FeatureError("give bin_width or bin_count, not both")
    if bin_count is not None and not (isinstance(bin_count, (int, np.integer)) and bin_count >= 1):
        raise FeatureError(f"bin_count must be a positive integer, got {bin_count!r}")
    if bin_width is not None and not (np.isscalar(bin_width) and np.isfinite(bin_width) and bin_width > 0):
        raise FeatureError(f"bin_width must be a positive number, got {bin_width!r}")
    return (25 if bin_width is None and bin_count is None else bin_width), bin_count


def discretize(image, mask=None, bin_width=None, bin_count=None) -> tuple[np.ndarray, int]:
    """pyradiomics' discretisation: (levels, n_levels), levels 1..n_levels inside the mask, 0 outside.

    Fixed bin width (default 25 when neither is given): floor(x / w) - floor(min / w) + 1, edges on
    multiples of w. Fixed bin count: numpy's histogram edges over the masked values, the maximum in
    the top bin. n_levels is the highest level in the mask; levels below it may be absent.
    """
    image, mask = _check_input(image, mask)
    levels = np.zeros(image.shape, dtype=np.int64)
    levels[mask] = _digitize(_masked_values(image, mask), *_check_binning(bin_width, bin_count))
    return levels, int(levels.max())


def _digitize(values, bin_width, bin_count) -> np.ndarray:
    """pyradiomics' levels (1-based, intp) of the masked values."""
    if bin_count is None and float(bin_width).is_integer():
        # integers on integer edges: pyradiomics' own formula, exact and 5x faster than a search.
        # Floats holding integers (HU stored as float) qualify too, while every edge is an exact float.
        if values.dtype.kind == "f" and abs(values).max() + 2 * bin_width < 2.0 ** np.finfo(values.dtype).nmant:
            as_int = values.astype(np.intp)
            values = as_int if (as_int == values).all() else values
        if values.dtype.kind in "iu":
            w = int(bin_width)
            values = values if w <= np.iinfo(values.dtype).max else values.astype(np.intp)
            levels = (values // w).astype(np.intp, copy=False)  # divide in the input's dtype: faster
            levels -= levels.min() - 1
            return levels
    return np.digitize(values, _bin_edges(values, bin_width, bin_count))
