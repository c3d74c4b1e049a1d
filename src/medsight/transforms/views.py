"""The 9-view nodule representation of MV-KBC / MK-SSAC / Fuse-TSD (docs/methods.md).

Nine planar patches through the nodule centre, sampled directly from the CT in physical space
(anisotropic voxels are handled: each pixel is a point in mm, converted to a fractional voxel index
and interpolated, see :func:`medsight.transforms.volume.sample`). The planes are the cube's 9
planes of symmetry: the 3 orthogonal planes and the 6 diagonal planes, each holding one axis and a
face diagonal of the other two. In order (:data:`VIEW_NAMES`), as (u, v) unit vectors in (z, y, x):

====  ==============  ======================  ======================
 #    name            u (patch rows, down)    v (patch columns, right)
====  ==============  ======================  ======================
 0    ``axial``       y                       x
 1    ``coronal``     z                       x
 2    ``sagittal``    z                       y
 3    ``diag_z_yx+``  z                       (y + x) / sqrt 2
 4    ``diag_z_yx-``  z                       (y - x) / sqrt 2
 5    ``diag_y_zx+``  y                       (z + x) / sqrt 2
 6    ``diag_y_zx-``  y                       (z - x) / sqrt 2
 7    ``diag_x_zy+``  x                       (z + y) / sqrt 2
 8    ``diag_x_zy-``  x                       (z - y) / sqrt 2
====  ==============  ======================  ======================

so the axial patch looks like ``volume[z]``, the coronal like ``volume[:, y]`` and the sagittal like
``volume[:, :, x]``. Per view there are three patches (:data:`PATCH_TYPES`): OA, the raw
intensities; HVV, the intensities inside the nodule mask only (texture); HS, the intensities outside
the mask only (the nodule's silhouette against the lung).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from medsight.errors import MedsightError
from medsight.transforms.volume import (
    AIR_HU, _check_mask, _check_volume, _triple, equivalent_diameter, mask_centre, sample, window,
)

VIEW_NAMES = ("axial", "coronal", "sagittal", "diag_z_yx+", "diag_z_yx-", "diag_y_zx+", "diag_y_zx-",
              "diag_x_zy+", "diag_x_zy-")
PATCH_TYPES = ("OA", "HVV", "HS")
SCALINGS = ("minmax", "window", "none")

__all__ = ["VIEW_NAMES", "PATCH_TYPES", "SCALINGS", "nine_view_planes", "extract_plane", "patch_size_mm",
           "nodule_views"]


def nine_view_planes() -> np.ndarray:
    """The 9 planes, (9, 2, 3) float64: ``planes[k] = (u, v)`` orthonormal in (z, y, x), in :data:`VIEW_NAMES` order."""
    z, y, x = np.eye(3)
    r = 1.0 / math.sqrt(2.0)
    return np.array([
        (y, x), (z, x), (z, y),
        (z, (y + x) * r), (z, (y - x) * r),
        (y, (z + x) * r), (y, (z - x) * r),
        (x, (z + y) * r), (x, (z - y) * r),
    ])


def _plane_coords(centre, spacing, planes: np.ndarray, size_mm: float, out_size: int) -> np.ndarray:
    """Voxel coordinates (3, k, n, n) of the pixel centres of ``k`` square patches of ``size_mm`` through ``centre``."""
    offsets = (np.arange(out_size) - (out_size - 1) / 2.0) * (size_mm / out_size)  # mm, cell centres
    u, v = planes[:, 0], planes[:, 1]  # (k, 3)
    mm = u.T[:, :, None, None] * offsets[None, None, :, None] + v.T[:, :, None, None] * offsets[None, None, None, :]
    return np.asarray(centre, dtype=np.float64)[:, None, None, None] + mm / spacing[:, None, None, None]


def _check_plane_args(centre, size_mm, out_size) -> tuple[np.ndarray, float, int]:
    centre = np.asarray(centre, dtype=np.float64)
    if centre.shape != (3,) or not np.all(np.isfinite(centre)):
        raise MedsightError(f"centre must be a voxel coordinate (z, y, x), got {centre!r}")
    if not (np.isscalar(size_mm) and size_mm > 0):
        raise MedsightError(f"size_mm must be a positive number, got {size_mm!r}")
    if int(out_size) != out_size or out_size < 1:
        raise MedsightError(f"out_size must be a positive integer, got {out_size!r}")
    return centre, float(size_mm), int(out_size)


def extract_plane(volume: np.ndarray, spacing: Sequence[float], centre: Sequence[float], u, v,
                  size_mm: float, out_size: int, order: int = 1, pad_value: float | None = AIR_HU) -> np.ndarray:
    """A square planar patch (out_size, out_size) float32 of ``size_mm`` mm through ``centre``.

    Pixel (i, j) samples the physical point ``centre + s_i u + s_j v``, with ``u`` and ``v``
    orthogonal directions in (z, y, x) mm space (normalised here) and ``s_i = (i - (n - 1) / 2) *
    size_mm / n``: the patch is cut into ``n x n`` cells sampled at their centres, so for odd ``n``
    the middle pixel is ``centre`` itself. ``order`` 1 is trilinear; outside the volume ``pad_value``.
    """
    volume = _check_volume(volume)
    spacing = _triple(spacing, "spacing")
    centre, size_mm, out_size = _check_plane_args(centre, size_mm, out_size)
    u, v = (np.asarray(d, dtype=np.float64) for d in (u, v))
    if u.shape != (3,) or v.shape != (3,) or np.linalg.norm(u) == 0 or np.linalg.norm(v) == 0:
        raise MedsightError("u and v must be non-zero (z, y, x) vectors")
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    if abs(u @ v) > 1e-6:
        raise MedsightError(f"u and v must be orthogonal, got u.v = {u @ v:.3g}")
    coords = _plane_coords(centre, spacing, np.stack([u, v])[None], size_mm, out_size)[:, 0]
    return sample(volume, coords, order=order, pad_value=pad_value)


def patch_size_mm(mask: np.ndarray, spacing: Sequence[float], factor: float = 2.0, floor_mm: float = 16.0) -> float:
    """The default patch width: ``max(factor * equivalent diameter, floor_mm)`` mm.

    The size follows the nodule, as in the author sample (27 x 27 px), which methods.md leaves open:
    twice the diameter of the sphere with the mask's volume keeps a ring of surrounding lung of about
    half a diameter on each side in every view (the HS patch needs it), and the floor keeps small
    nodules (a 3 mm nodule is 9 voxels across at 0.7 mm) in enough context. Very elongated nodules
    may reach the patch edge in some views: pass ``size_mm`` to :func:`nodule_views` to fix the size.
    """
    return max(factor * equivalent_diameter(mask, spacing), float(floor_mm))


def _scale(patches: np.ndarray, keep: np.ndarray, scaling: str, hu_window: tuple[float, float]) -> np.ndarray:
    """Scale (..., n, n) patches where ``keep`` (same shape, bool), set the rest to 0."""
    if scaling == "none":
        return np.where(keep, patches, 0.0).astype(np.float32)
    if scaling == "window":
        return np.where(keep, window(patches, *hu_window), 0.0).astype(np.float32)
    axes = (-2, -1)
    lo = np.where(keep, patches, np.inf).min(axis=axes, keepdims=True)
    hi = np.where(keep, patches, -np.inf).max(axis=axes, keepdims=True)
    span = hi - lo
    flat = ~(span > 0)  # constant (or empty) kept region
    scaled = np.where(flat, 0.5, (patches - np.where(flat, 0, lo)) / np.where(flat, 1, span))
    return np.where(keep, scaled, 0.0).astype(np.float32)


def nodule_views(volume: np.ndarray, mask: np.ndarray, spacing: Sequence[float],
                 centre: Sequence[float] | None = None, size_mm: float | None = None, out_size: int = 64, *,
                 scaling: str = "minmax", hu_window: tuple[float, float] = (-600.0, 1500.0),
                 size_factor: float = 2.0, min_size_mm: float = 16.0, order: int = 1,
                 pad_value: float = AIR_HU, return_masks: bool = False):
    """The 9 views x (OA, HVV, HS) of one nodule: float32 (9, 3, out_size, out_size).

    ``volume`` is CT in HU (z, y, x) with ``spacing`` mm, ``mask`` the nodule on the same grid.
    Views follow :data:`VIEW_NAMES`, patch types :data:`PATCH_TYPES`. ``centre`` (voxel (z, y, x))
    defaults to the mask's centroid; ``size_mm`` (patch width in mm) defaults to
    :func:`patch_size_mm` with ``size_factor`` and ``min_size_mm``. Each patch is sampled directly
    at ``out_size`` x ``out_size`` pixels (no later resize; the author code resized to 224). The
    image is interpolated with spline ``order`` (1 = trilinear) and padded with ``pad_value`` (air)
    beyond the volume; the mask plane is sampled on the same grid linearly, then ``>= 0.5``.

    HVV and HS are cut from the raw HU (inside / outside the sampled mask plane) and then scaled:

    - ``"minmax"`` (default, as the author code, which used 0-255): each patch is mapped to [0, 1]
      by the min and max of the pixels it keeps (all of OA; inside the mask for HVV; outside for
      HS), and the pixels it drops are set to 0, i.e. the kept region's minimum. This is not the
      same as scaling ``raw * mask``, where 0 HU would land mid-grey. A kept region of constant
      value (or none at all) maps to 0.5 (0 if empty), so the mask's shape still shows.
    - ``"window"``: a fixed HU window ``hu_window = (level, width)`` mapped to [0, 1]
      (see :func:`medsight.transforms.volume.window`), dropped pixels 0.
    - ``"none"``: raw HU, dropped pixels 0 HU, literally "0 outside".

    With ``return_masks`` also returns the sampled mask planes, uint8 (9, out_size, out_size).
    """
    volume = _check_volume(volume)
    mask = _check_mask(mask, volume)
    spacing = _triple(spacing, "spacing")
    if scaling not in SCALINGS:
        raise MedsightError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    if centre is None:
        centre = mask_centre(mask)
    if size_mm is None:
        size_mm = patch_size_mm(mask, spacing, size_factor, min_size_mm)
    centre, size_mm, out_size = _check_plane_args(centre, size_mm, out_size)
    coords = _plane_coords(centre, spacing, nine_view_planes(), size_mm, out_size)
    image = sample(volume, coords, order=order, pad_value=pad_value)  # (9, n, n)
    inside = sample((mask > 0).astype(np.float32), coords, order=1, pad_value=0.0) >= 0.5
    patches = np.stack([image, image, image], axis=1)  # (9, 3, n, n)
    keep = np.stack([np.ones_like(inside), inside, ~inside], axis=1)
    views = _scale(patches, keep, scaling, hu_window)
    return (views, inside.astype(np.uint8)) if return_masks else views
