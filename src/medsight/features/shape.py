"""Shape descriptors of segmentation masks: Fourier descriptors of a 2D outline, and the 2D and 3D
shape numbers of pyradiomics (same names, same definitions); ``FourierShape``, ``Shape2D`` and
``Shape3D`` are their scikit-learn transformers (in ``estimators``, importable from here).

Choices, stated once:

- Foreground is every non-zero element; a mask with NaN or infinite values is refused.
- 2D descriptors (``largest_contour``, ``fourier_descriptors``, ``shape_features_2d``) describe the
  largest 4-connected foreground component only: a lesion outline, not the specks around it.
  Holes in that component count for ``shape_features_2d`` (area excludes them, perimeter includes
  their boundary), as in pyradiomics; the Fourier descriptors use the outer boundary only.
- 3D features use all foreground voxels, as pyradiomics does.
- Boundaries are traced at level 0.5 on the zero-padded mask, so they run halfway between
  foreground and background element centres (the pyradiomics mesh). In 2D scikit-image traces
  them; in 3D ``_mesh`` builds pyradiomics' own marching-cubes mesh, so that ambiguous cubes are
  split as pyradiomics splits them.
- A one-pixel (one-voxel) mask is valid: its boundary is a diamond (octahedron) of area 0.5
  (volume 1/6) in index units, its axis lengths are 0, and its Elongation and Flatness are
  defined as 1 (a point is as isotropic as the grid can show) instead of pyradiomics' 0/0 = NaN.
- Spacing is per array axis: (row, col) in 2D, (z, y, x) in 3D. Coordinates are in those units.
"""

from __future__ import annotations


import numpy as np

from medsight.errors import FeatureError

SHAPE_2D_FEATURES = (
    "MeshSurface", "PixelSurface", "Perimeter", "PerimeterSurfaceRatio", "Sphericity",
    "MaximumDiameter", "MajorAxisLength", "MinorAxisLength", "Elongation",
)
SHAPE_3D_FEATURES = (
    "MeshVolume", "VoxelVolume", "SurfaceArea", "SurfaceVolumeRatio", "Sphericity",
    "Compactness1", "Compactness2", "SphericalDisproportion", "MajorAxisLength",
    "MinorAxisLength", "LeastAxisLength", "Elongation", "Flatness", "Maximum3DDiameter",
    "Maximum2DDiameterSlice", "Maximum2DDiameterColumn", "Maximum2DDiameterRow",
)


# ----------------------------------------------------------------------------- input checks

def _as_mask(mask, ndim: int) -> np.ndarray:
    """The boolean foreground of a `ndim`-dimensional mask, or FeatureError."""
    try:
        array = np.asarray(mask, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FeatureError(f"mask is not numeric: {exc}") from None
    if array.ndim != ndim:
        raise FeatureError(f"expected a {ndim}D mask, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise FeatureError("mask has NaN or infinite values")
    foreground = array != 0
    if not foreground.any():
        raise FeatureError("mask has no foreground")
    return foreground


def _as_spacing(spacing, ndim: int) -> np.ndarray:
    try:
        values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise FeatureError(f"spacing must be {ndim} positive numbers, got {spacing!r}") from None
    if values.size != ndim or not np.isfinite(values).all() or (values <= 0).any():
        raise FeatureError(f"spacing must be {ndim} positive numbers, got {spacing!r}")
    return values


def _largest_component(foreground: np.ndarray) -> np.ndarray:
    # Face connectivity matches find_contours(fully_connected="low"): pixels touching only at a
    # corner are traced as separate outlines, so they are separate components here too.
    from scipy import ndimage  # imported when used: 0.3 s that the 3D features do not need

    labels, n = ndimage.label(foreground)
    if n == 1:
        return foreground
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (np.argmax(sizes) + 1)  # ties: the first in raster order


# ----------------------------------------------------------------------------- geometry helpers

def _signed_area(points: np.ndarray) -> float:
    """Shoelace area of a closed (row, col) polygon; positive when counter-clockwise in the
    (x=col, y=row) plane."""
    x, y = points[:, 1], points[:, 0]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _closed_length(points: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(points, axis=0, append=points[:1]), axis=1).sum())


def _line_ends(points: np.ndarray, axis: int) -> np.ndarray:
    """Whether each point is first or last along `axis` among the points that share its other
    coordinates. A convex-hull vertex is a line end along every axis (a point between two others
    is not a vertex), so the farthest pair of a set, or of a plane of it, is among them."""
    others = [points[:, k] for k in range(points.shape[1]) if k != axis]
    order = np.lexsort((points[:, axis], *others))  # by the other coordinates, then along the axis
    line = np.column_stack(others)[order]
    new = np.any(line[1:] != line[:-1], axis=1)
    ends = np.empty(len(points), dtype=bool)
    ends[order] = np.concatenate([[True], new]) | np.concatenate([new, [True]])
    return ends


def _max_distance(points: np.ndarray) -> float:
    """Largest pairwise distance, searched among the line ends along every axis; the convex hull
    thins them further when many remain (Qhull costs ~0.3 ms, all pairs of 256 points less)."""
    if len(points) < 2:
        return 0.0
    points = points[np.logical_and.reduce([_line_ends(points, k) for k in range(points.shape[1])])]
    if len(points) > 256:
        from scipy.spatial import ConvexHull, QhullError

        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # all points on a line or plane: all pairs of them is still right
            pass
    squared = sum((points[:, k, None] - points[None, :, k]) ** 2 for k in range(points.shape[1]))
    return float(np.sqrt(squared.max()))


def _axis_eigenvalues(foreground: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of the population covariance of the element-centre coordinates."""
    coords = np.argwhere(foreground) * spacing
    coords -= coords.mean(axis=0)
    covariance = coords.T @ coords / len(coords)
    return np.clip(np.linalg.eigvalsh(covariance), 0.0, None)  # rounding can give -1e-16


def _ratio(small: float, large: float) -> float:
    return float(np.sqrt(small / large)) if large > 0 else 1.0  # a single element: isotropic


def _traced_contours(component: np.ndarray) -> list[np.ndarray]:
    """All closed level-0.5 contours of a 2D component, in (row, col) index units, the repeated
    closing point dropped. Outer boundary and holes wind in opposite senses (scikit-image)."""
    from skimage.measure import find_contours  # optional dependency, imported when used

    padded = np.pad(component.astype(np.float64), 1)
    return [c[:-1] - 1.0 for c in find_contours(padded, 0.5)]


# ----------------------------------------------------------------------------- 2D

def largest_contour(mask) -> np.ndarray:
    """Outer boundary of the largest 4-connected foreground region of a 2D mask.

    Returns a float (N, 2) array of (row, col) points, traced at level 0.5 on the zero-padded
    mask, closed (the first point is not repeated), holes ignored. The orientation is fixed to
    counter-clockwise in the (x=col, y=row) plane, i.e. positive shoelace area of
    z = col + i*row (on a displayed image, rows pointing down, it looks clockwise).
    """
    component = _largest_component(_as_mask(mask, 2))
    # The outer boundary encloses the holes, so it has the largest absolute area.
    outer = max(_traced_contours(component), key=lambda c: abs(_signed_area(c)))
    return outer if _signed_area(outer) > 0 else outer[::-1].copy()


def _fourier_orders(n_coefficients: int) -> np.ndarray:
    """k = 2, -1, 3, -2, 4, -3, ...: term k adds a |k-1|-lobed ripple to the circle Z1, so this
    order is by increasing lobe count and truncation keeps the coarse shape."""
    j = np.arange(n_coefficients)
    return np.where(j % 2 == 0, 2 + j // 2, -(1 + j // 2))


def _check_fourier_params(n_coefficients, n_points) -> None:
    if not isinstance(n_coefficients, (int, np.integer)) or n_coefficients < 1:
        raise FeatureError(f"n_coefficients must be a positive integer, got {n_coefficients!r}")
    # Frequencies 2..p and -1..-q fill FFT bins 2..N-1 without overlap only when N >= n + 2.
    if not isinstance(n_points, (int, np.integer)) or n_points < n_coefficients + 2:
        raise FeatureError(
            f"n_points must be an integer >= n_coefficients + 2 = {n_coefficients + 2}, got {n_points!r}")


def _is_contour(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] == 2 and array.dtype.kind == "f"


def _resample(points: np.ndarray, n_points: int) -> np.ndarray:
    """`n_points` points equally spaced by arc length along the closed polygon, from its first point."""
    closed = np.vstack([points, points[:1]])
    steps = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    s = np.linspace(0.0, arc[-1], n_points, endpoint=False)
    return np.column_stack([np.interp(s, arc, closed[:, 0]), np.interp(s, arc, closed[:, 1])])


def fourier_descriptors(contour_or_mask, n_coefficients: int = 16, n_points: int = 128) -> np.ndarray:
    """Fourier descriptors invariant to translation, rotation, scale and starting point.

    Input: a closed contour, a float (N, 2) array of (row, col) points (first point not repeated;
    either orientation), or a 2D mask (bool or integer dtype; its `largest_contour`). A float array
    of shape (N, 2) is always read as a contour.

    The contour becomes z = col + i*row, turned counter-clockwise, resampled to `n_points`
    equally spaced by arc length, and transformed: Z = fft(z). Z0 (translation) is dropped,
    magnitudes remove rotation and starting point, dividing by |Z1| removes scale. Kept: |Z_k|/|Z1|
    for k = 2, -1, 3, -2, 4, -3, ... (`n_coefficients` of them), ordered by the number of lobes
    |k-1| that term adds to the circle Z1. A circle gives all zeros; a regular n-gon only
    k = 1 + m*n, with |Z_k|/|Z1| = 1/k^2. An ellipse z = a cos t + i b sin t has only
    Z_{+-1} = (a +- b)/2 in its own parameter t, but not by arc length: to first order in
    e = (a-b)/(a+b) the k = -1 descriptor is 3e/4 and k = 3 is e/4 (2:1 ellipse: 0.260, 0.075).

    Starting point invariance is up to resampling: the samples start at the first point.
    """
    _check_fourier_params(n_coefficients, n_points)
    array = np.asarray(contour_or_mask)
    if _is_contour(array):
        points = array.astype(np.float64)
        if len(points) < 3 or not np.isfinite(points).all():
            raise FeatureError("contour needs at least 3 finite (row, col) points")
        area = _signed_area(points)
        if area == 0:
            raise FeatureError("contour encloses no area")
        if area < 0:
            points = points[::-1]
    else:
        points = largest_contour(array)

    samples = _resample(points, n_points)
    spectrum = np.fft.fft(samples[:, 1] + 1j * samples[:, 0])
    scale = abs(spectrum[1])
    if scale == 0:
        raise FeatureError("contour has no first harmonic (degenerate outline)")
    return np.abs(spectrum[_fourier_orders(n_coefficients)]) / scale  # negative k wraps to N+k


def shape_features_2d(mask, spacing=(1.0, 1.0)) -> dict[str, float]:
    """pyradiomics shape2D numbers of the largest 4-connected foreground component of a 2D mask.

    Mesh numbers (MeshSurface, Perimeter, MaximumDiameter) come from the level-0.5 contours of the
    zero-padded component, holes included; PixelSurface and the axis lengths from the pixel centres
    (4*sqrt(eigenvalue) of their covariance). `spacing` is (row, col). Keys: SHAPE_2D_FEATURES.
    """
    spacing = _as_spacing(spacing, 2)
    component = _largest_component(_as_mask(mask, 2))
    contours = [c * spacing for c in _traced_contours(component)]

    area = abs(sum(_signed_area(c) for c in contours))  # holes wind the other way and subtract
    perimeter = sum(_closed_length(c) for c in contours)
    minor, major = _axis_eigenvalues(component, spacing)
    features = {
        "MeshSurface": area,
        "PixelSurface": float(component.sum() * spacing.prod()),
        "Perimeter": perimeter,
        "PerimeterSurfaceRatio": perimeter / area,
        "Sphericity": 2.0 * np.sqrt(np.pi * area) / perimeter,
        "MaximumDiameter": _max_distance(np.vstack(contours)),
        "MajorAxisLength": 4.0 * np.sqrt(major),
        "MinorAxisLength": 4.0 * np.sqrt(minor),
        "Elongation": _ratio(minor, major),
    }
    return {name: float(value) for name, value in features.items()}


# ----------------------------------------------------------------------------- 3D

def shape_features_3d(mask, spacing=(1.0, 1.0, 1.0)) -> dict[str, float]:
    """pyradiomics shape (3D) numbers of all foreground voxels of a (D, H, W) mask.

    Surface: pyradiomics' marching cubes at level 0.5 on the zero-padded mask (``_mesh``), with
    `spacing` (z, y, x); volume from the same closed mesh by the divergence theorem. The diameters
    are the largest distances between mesh vertices: over all of them (Maximum3DDiameter), and
    between vertices in the same axial plane (equal z: ...Slice), coronal plane (equal y:
    ...Column) or sagittal plane (equal x: ...Row). The axis lengths are 4*sqrt(eigenvalue) of the
    voxel-centre covariance. Every number equals pyradiomics' to rounding. Keys: SHAPE_3D_FEATURES.
    """
    from medsight.features._mesh import mesh_features

    spacing = _as_spacing(spacing, 3)
    foreground = _bounding_box(_as_mask(mask, 3))
    area, volume, diameter, slice_diameter, column_diameter, row_diameter = mesh_features(foreground, spacing)

    least, minor, major = _axis_eigenvalues(foreground, spacing)
    sphere_area = (36.0 * np.pi * volume**2) ** (1.0 / 3.0)  # area of the sphere of this volume
    features = {
        "MeshVolume": volume,
        "VoxelVolume": float(foreground.sum() * spacing.prod()),
        "SurfaceArea": area,
        "SurfaceVolumeRatio": area / volume,
        "Sphericity": sphere_area / area,
        "Compactness1": volume / (np.sqrt(np.pi) * area**1.5),
        "Compactness2": 36.0 * np.pi * volume**2 / area**3,
        "SphericalDisproportion": area / sphere_area,
        "MajorAxisLength": 4.0 * np.sqrt(major),
        "MinorAxisLength": 4.0 * np.sqrt(minor),
        "LeastAxisLength": 4.0 * np.sqrt(least),
        "Elongation": _ratio(minor, major),
        "Flatness": _ratio(least, major),
        "Maximum3DDiameter": diameter,
        "Maximum2DDiameterSlice": slice_diameter,
        "Maximum2DDiameterColumn": column_diameter,
        "Maximum2DDiameterRow": row_diameter,
    }
    return {name: float(value) for name, value in features.items()}


def _bounding_box(foreground: np.ndarray) -> np.ndarray:
    """The foreground's bounding box, as pyradiomics crops it before its shape features: the mesh
    is then built in the same place, which matters for the volume where ambiguous cubes leave
    cracks in the classic marching-cubes surface (voxel noise), and the work shrinks."""
    box = []
    for axis in range(foreground.ndim):
        present = np.flatnonzero(foreground.any(axis=tuple(k for k in range(foreground.ndim) if k != axis)))
        box.append(slice(present[0], present[-1] + 1))
    return foreground[tuple(box)]


# ----------------------------------------------------------------------------- estimators

def __getattr__(name):
    # The scikit-learn transformers live in ``estimators`` so that ``medsight features`` does not
    # import scikit-learn (about a second); ``from medsight.features.shape import Shape3D`` works.
    if name in ("FourierShape", "Shape2D", "Shape3D"):
        from medsight.features import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SHAPE_2D_FEATURES", "SHAPE_3D_FEATURES", "largest_contour", "fourier_descriptors",
    "shape_features_2d", "shape_features_3d", "FourierShape", "Shape2D", "Shape3D",
]
