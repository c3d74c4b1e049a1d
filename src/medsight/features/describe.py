"""Per-case descriptors for the descriptor recipes: a preprocessed case -> one named vector each.

A case is what a preprocessor made of it (``medsight.transforms.preprocess``): ``image`` uint8
``(C, *spatial)`` and its ``mask``. Three layouts are understood:

- a 2D image ``(C, H, W)`` with a mask ``(H, W)`` (dermoscopy): colour is averaged to grey;
- a volume ``(1, D, H, W)`` with a mask ``(D, H, W)`` (``nodule_crop``);
- planar views ``(V, S, S)`` with one mask per view ``(V, S, S)`` (``nodule_views`` with masks):
  every 2D descriptor is computed per view and the views are concatenated, view-major.

``spacing`` is the size of one pixel / voxel of the preprocessed arrays in mm (``None``: 1).
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np

from medsight.errors import FeatureError

Descriptor = Callable[..., tuple[np.ndarray, list[str]]]


def _planes(image: np.ndarray, mask: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(prefix, grey image, mask) for each 2D plane or the one volume of a case."""
    if mask is None:
        raise FeatureError("this descriptor needs the case's mask")
    if image.ndim == mask.ndim and image.shape[0] > 1:  # one mask per view
        if image.shape != mask.shape:
            raise FeatureError(f"views {image.shape} and their masks {mask.shape} differ")
        return [(f"view{v}_", image[v].astype(np.float64), mask[v]) for v in range(len(image))]
    if image.shape[1:] != mask.shape:
        raise FeatureError(f"image {image.shape} and mask {mask.shape} do not match")
    return [("", image.astype(np.float64).mean(0), mask)]


def glcm(image, mask, spacing=None, *, distances=(1,), bin_width=None, bin_count=32, features=None):
    """GLCM texture inside the mask (2D: 4 directions, 3D: 13), pyradiomics' 24 statistics by default.

    The inputs are uint8 after windowing, so the default is a fixed bin count (32) rather than a
    bin width in HU."""
    from medsight.features.glcm import glcm_features

    values, names = [], []
    for prefix, plane, m in _planes(image, mask):
        feats = glcm_features(plane, m, distances=tuple(distances), bin_width=bin_width,
                              bin_count=None if bin_width else bin_count, features=features)
        values += list(feats.values())
        names += [f"{prefix}glcm_{k}" for k in feats]
    return np.array(values), names


def fourier(image, mask, spacing=None, *, n_coefficients=16, min_pixels=4, with_size=True):
    """Fourier descriptors of the mask's contour. A volume's axial slices with at least
    ``min_pixels`` foreground pixels are averaged, weighted by their area (Fuse-TSD slices the
    nodule). The descriptors are scale-invariant by design; ``with_size`` appends the equivalent
    diameter (mm) of the largest slice, since nodule size is the strongest single cue."""
    from medsight.features.shape import fourier_descriptors

    pixel_mm = 1.0 if spacing is None else float(np.mean(spacing[-2:]))
    values, names = [], []
    for prefix, _, m in _planes(image, mask):
        slices = [m] if m.ndim == 2 else [s for s in m if s.sum() >= min_pixels]
        if not slices:
            raise FeatureError(f"no slice of the mask has {min_pixels} or more foreground pixels")
        areas = np.array([s.sum() for s in slices], dtype=np.float64)
        coeffs = np.stack([fourier_descriptors(s.astype(bool), n_coefficients=n_coefficients) for s in slices])
        values += list((coeffs * areas[:, None]).sum(0) / areas.sum())
        names += [f"{prefix}fourier_{k}" for k in range(n_coefficients)]
        if with_size:
            values.append(2 * np.sqrt(areas.max() / np.pi) * pixel_mm)
            names.append(f"{prefix}fourier_diameter_mm")
    return np.array(values), names


def shape(image, mask, spacing=None, *, features=None):
    """Shape of the mask: pyradiomics' 3D shape features for a volume, the 2D ones for planes."""
    from medsight.features.shape import shape_features_2d, shape_features_3d

    values, names = [], []
    for prefix, _, m in _planes(image, mask):
        sp = spacing if spacing is not None else (1.0,) * m.ndim
        feats = shape_features_3d(m, tuple(sp)) if m.ndim == 3 else shape_features_2d(m, tuple(sp)[-2:])
        chosen = features or list(feats)
        values += [float(feats[k]) for k in chosen]
        names += [f"{prefix}shape_{k}" for k in chosen]
    return np.array(values), names


DESCRIPTORS: dict[str, Descriptor] = {"glcm": glcm, "fourier": fourier, "shape": shape}


def describe_case(name: str, image: np.ndarray, mask: np.ndarray | None, spacing=None,
                  **options) -> tuple[np.ndarray, list[str]]:
    """The descriptor ``name`` of one preprocessed case: (vector, feature names)."""
    if name not in DESCRIPTORS:
        raise FeatureError(f"unknown descriptor {name!r}; known: {', '.join(DESCRIPTORS)}")
    fn = DESCRIPTORS[name]
    try:
        inspect.signature(fn).bind(image, mask, spacing, **options)
    except TypeError as exc:
        raise FeatureError(f"options of descriptor {name!r}: {exc}") from None
    return fn(image, mask, spacing, **options)
