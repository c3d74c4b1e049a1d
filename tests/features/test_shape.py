"""Shape descriptors: analytic answers (discs, squares, polygons, spheres, boxes, ellipsoids),
agreement with pyradiomics, invariances, bad input, and the scikit-learn estimator contract."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import ndimage
from scipy.special import ellipeinc

pytest.importorskip("skimage")
from skimage.draw import polygon as fill_polygon  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils import estimator_checks  # noqa: E402

from medsight.errors import FeatureError  # noqa: E402
from medsight.features.shape import (  # noqa: E402
    SHAPE_2D_FEATURES,
    SHAPE_3D_FEATURES,
    FourierShape,
    Shape2D,
    Shape3D,
    fourier_descriptors,
    largest_contour,
    shape_features_2d,
    shape_features_3d,
)

from references import require

# Order of the kept coefficients (documented): k = 2, -1, 3, -2, 4, -3, ...
K16 = np.array([2, -1, 3, -2, 4, -3, 5, -4, 6, -5, 7, -6, 8, -7, 9, -8])


# ----------------------------------------------------------------------------- shapes

def disc(radius, size=64, centre=(31.7, 32.2)):
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def square(side, pad=2):
    mask = np.zeros((side + 2 * pad, side + 2 * pad), np.uint8)
    mask[pad:pad + side, pad:pad + side] = 1
    return mask


def as_contour(z):
    """Complex points z = col + i*row -> (row, col) array."""
    return np.column_stack([z.imag, z.real])


def ellipse_z(a, b, n=4000):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return a * np.cos(t) + 1j * b * np.sin(t)


def regular_polygon_z(n, radius=1.0, angle=0.0):
    return radius * np.exp(1j * (angle + 2 * np.pi * np.arange(n) / n))


# An irregular, non-symmetric hexagon (complex, centred near 0) to rasterise and transform.
BLOB = np.array([1.0 + 0.1j, 0.5 + 0.9j, -0.4 + 0.7j, -1.0 - 0.1j, -0.3 - 0.8j, 0.6 - 0.6j])


def rasterise(z, size=96):
    """Mask of the polygon z (complex, pixel units) centred in a size x size image."""
    z = z + (size / 2 + 0.37) * (1 + 1j)
    mask = np.zeros((size, size), bool)
    mask[fill_polygon(z.imag, z.real, mask.shape)] = True
    return mask


def similar(z, angle, scale, shift):
    return scale * np.exp(1j * angle) * z + shift


# ----------------------------------------------------------------------------- largest_contour

def test_largest_contour_is_closed_counter_clockwise_and_independent_of_tracing_direction():
    mask = square(5)
    mask[0:2, 0:2] = 1  # a smaller second component: ignored
    for m in (mask, mask[::-1], mask[:, ::-1], mask.T):
        contour = largest_contour(m)
        assert contour.dtype == np.float64 and contour.ndim == 2 and contour.shape[1] == 2
        assert not np.allclose(contour[0], contour[-1])
        x, y = contour[:, 1], contour[:, 0]
        signed_area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
        assert signed_area == pytest.approx(5 * 5 - 0.5)  # positive: counter-clockwise
    # Coordinates are in the unpadded mask's (row, col): the 5x5 square spans rows 2..6.
    contour = largest_contour(mask)
    assert contour[:, 0].min() == pytest.approx(1.5) and contour[:, 0].max() == pytest.approx(6.5)


def test_largest_contour_orientation_does_not_depend_on_the_tracer(monkeypatch):
    import skimage.measure

    mask = rasterise(20 * BLOB)
    contour, descriptors, features = largest_contour(mask), fourier_descriptors(mask), shape_features_2d(mask)
    trace = skimage.measure.find_contours
    monkeypatch.setattr(skimage.measure, "find_contours", lambda *a, **k: [c[::-1] for c in trace(*a, **k)])
    reversed_contour = largest_contour(mask)
    assert not np.array_equal(reversed_contour, contour)  # the patched tracer was used
    np.testing.assert_array_equal(np.sort(reversed_contour, axis=0), np.sort(contour, axis=0))
    x, y = reversed_contour[:, 1], reversed_contour[:, 0]
    assert np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0
    np.testing.assert_allclose(fourier_descriptors(mask), descriptors, atol=1e-3)
    assert shape_features_2d(mask) == pytest.approx(features, rel=1e-12)


def test_largest_contour_ignores_holes_and_diagonal_neighbours():
    ring = disc(20) & ~disc(8)
    outer = largest_contour(ring)
    assert np.hypot(outer[:, 0] - 31.7, outer[:, 1] - 32.2).min() > 18
    # Pixels touching only at a corner are separate components (as the tracer sees them).
    mask = np.zeros((8, 8), bool)
    mask[1:3, 1:3] = True  # 4 pixels
    mask[3:6, 3:6] = True  # 9 pixels, touches the first at one corner
    assert largest_contour(mask)[:, 0].min() == pytest.approx(2.5)


# ----------------------------------------------------------------------------- Fourier: analytic

def test_fourier_circle_is_all_zero():
    assert fourier_descriptors(as_contour(np.exp(1j * np.linspace(0, 6.28, 500)))).max() < 1e-4
    assert fourier_descriptors(disc(20)).max() < 0.005  # rasterised


@pytest.mark.parametrize("n", [3, 4, 5, 7])
def test_fourier_regular_polygon_has_energy_only_at_1_plus_mn_with_1_over_k2(n):
    descriptors = fourier_descriptors(as_contour(regular_polygon_z(n, 3.0, 0.3)))
    expected = np.where((K16 - 1) % n == 0, 1.0 / K16.astype(float) ** 2, 0.0)
    np.testing.assert_allclose(descriptors, expected, atol=3e-4)


def _ellipse_arc_length_descriptors(a, b, ks, m=4096):
    """|c_k|/|c_1| of the ellipse parametrised by arc length, by quadrature in t with the exact
    arc length s(t) = a [E(t + pi/2 | e^2) - E(pi/2 | e^2)] (independent of resampling + FFT)."""
    t = np.linspace(0, 2 * np.pi, m, endpoint=False)
    e2 = 1 - (b / a) ** 2
    s = a * (ellipeinc(t + np.pi / 2, e2) - ellipeinc(np.pi / 2, e2))
    length = a * (ellipeinc(2 * np.pi + np.pi / 2, e2) - ellipeinc(np.pi / 2, e2))
    speed = np.sqrt(a**2 * np.sin(t) ** 2 + b**2 * np.cos(t) ** 2)
    z = a * np.cos(t) + 1j * b * np.sin(t)
    c = {k: np.sum(z * np.exp(-2j * np.pi * k * s / length) * speed) for k in (1, *ks)}
    return np.array([abs(c[k]) / abs(c[1]) for k in ks])


@pytest.mark.parametrize("a,b", [(2.0, 1.0), (3.0, 1.0), (1.05, 1.0)])
def test_fourier_ellipse_matches_arc_length_spectrum(a, b):
    descriptors = fourier_descriptors(as_contour(ellipse_z(a, b)))
    np.testing.assert_allclose(descriptors, _ellipse_arc_length_descriptors(a, b, K16), atol=1e-5)
    # In the ellipse's own parameter t the spectrum is Z1 = (a+b)/2, Z-1 = (a-b)/2 only; arc-length
    # resampling moves a quarter of it to k = 3, to first order in e = (a-b)/(a+b).
    e = (a - b) / (a + b)
    if e < 0.05:
        assert descriptors[1] == pytest.approx(0.75 * e, abs=e**2)  # k = -1
        assert descriptors[2] == pytest.approx(0.25 * e, abs=e**2)  # k = 3
    assert descriptors[1] + descriptors[2] == pytest.approx(e, rel=0.12)


# ----------------------------------------------------------------------------- Fourier: invariance

@pytest.mark.parametrize("shape", ["ellipse", "pentagon", "blob"])
def test_fourier_contour_invariant_to_similarity_start_point_and_direction(shape):
    z = {"ellipse": ellipse_z(2.0, 1.2, 300), "pentagon": regular_polygon_z(5),
         "blob": BLOB}[shape]
    reference = fourier_descriptors(as_contour(z))
    assert reference.max() > 0.02  # not trivially zero
    for angle, scale, shift, roll in [(0.7, 3.0, 5 - 2j, 0), (2.5, 0.1, -40 + 7j, 1),
                                      (-1.2, 17.0, 0j, 2)]:
        moved = np.roll(similar(z, angle, scale, shift), roll)
        np.testing.assert_allclose(fourier_descriptors(as_contour(moved)), reference, atol=1e-3)
        np.testing.assert_allclose(fourier_descriptors(as_contour(moved[::-1])), reference, atol=1e-3)


def test_fourier_rasterised_masks_agree_with_contour_within_rasterisation_tolerance():
    blob = 25 * BLOB
    reference = fourier_descriptors(as_contour(blob))
    pentagon = fourier_descriptors(as_contour(25 * regular_polygon_z(5)))
    for angle, scale, shift in [(0.0, 1.0, 0j), (0.6, 1.4, 3.3 - 1.2j), (2.9, 0.8, -5.5 + 2j)]:
        mask = rasterise(similar(blob, angle, scale, shift))
        descriptors = fourier_descriptors(mask)
        np.testing.assert_allclose(descriptors, reference, atol=0.01)
        np.testing.assert_allclose(fourier_descriptors(mask.T), descriptors, atol=0.005)  # mirror
        assert np.abs(descriptors - pentagon).max() > 0.05  # a different shape is far away
    mask = rasterise(blob)
    np.testing.assert_array_equal(fourier_descriptors(mask), fourier_descriptors(largest_contour(mask)))


def test_fourier_lengths_and_order():
    z = as_contour(regular_polygon_z(5))
    assert fourier_descriptors(z, n_coefficients=3, n_points=5).shape == (3,)  # n + 2 points suffice
    # Truncation keeps a prefix: the same coefficients in the same order.
    np.testing.assert_allclose(fourier_descriptors(z, 8), fourier_descriptors(z)[:8], atol=1e-12)
    # The pentagon's first two non-zero terms are k = -4 (index 7) and k = 6 (index 8).
    d = fourier_descriptors(z, 9)
    assert d[7] == pytest.approx(1 / 16, abs=1e-3) and d[8] == pytest.approx(1 / 36, abs=1e-3)


# ----------------------------------------------------------------------------- 2D features

def test_shape2d_disc_area_perimeter_and_axes():
    r = 20
    f = shape_features_2d(disc(r))
    assert set(f) == set(SHAPE_2D_FEATURES) and all(type(v) is float for v in f.values())
    assert f["MeshSurface"] == pytest.approx(np.pi * r**2, rel=0.005)
    assert f["PixelSurface"] == pytest.approx(np.pi * r**2, rel=0.005)
    # The level-0.5 contour of a digitised circle is a chamfered staircase: ~5% longer than 2 pi r.
    assert 1.03 < f["Perimeter"] / (2 * np.pi * r) < 1.07
    assert f["MaximumDiameter"] == pytest.approx(2 * r, abs=1.0)
    assert f["MajorAxisLength"] == pytest.approx(2 * r, rel=0.005)  # 4 sqrt(r^2 / 4)
    assert f["Elongation"] == pytest.approx(1.0, abs=0.01)
    assert 0.93 < f["Sphericity"] < 0.97
    assert f["PerimeterSurfaceRatio"] == pytest.approx(f["Perimeter"] / f["MeshSurface"])


@pytest.mark.parametrize("side", [1, 2, 5])
def test_shape2d_square_exact_with_anisotropic_spacing(side):
    sy, sx = 2.0, 0.5
    f = shape_features_2d(square(side), spacing=(sy, sx))
    # Square of side s with its corners cut by 45-degree chamfers of legs 0.5 (index units).
    assert f["MeshSurface"] == pytest.approx((side**2 - 0.5) * sy * sx)
    chamfer = np.hypot(0.5 * sy, 0.5 * sx)
    assert f["Perimeter"] == pytest.approx(2 * (side - 1) * (sy + sx) + 4 * chamfer)
    assert f["PixelSurface"] == pytest.approx(side**2 * sy * sx)
    if side == 1:  # one pixel: a diamond, zero axes, Elongation defined as 1
        assert f["MajorAxisLength"] == 0 and f["Elongation"] == 1.0
    else:
        assert f["Elongation"] == pytest.approx(sx / sy)


def test_shape2d_ring_and_largest_component():
    ring = disc(20) & ~disc(8)
    f = shape_features_2d(ring)
    assert f["MeshSurface"] == pytest.approx(np.pi * (20**2 - 8**2), rel=0.01)  # hole excluded
    assert 1.03 < f["Perimeter"] / (2 * np.pi * (20 + 8)) < 1.08  # both boundaries
    speck = ring.copy()
    speck[0:3, 0:3] = True
    assert shape_features_2d(speck) == f


def _radiomics_features(module, cls, mask, spacing, names):
    import SimpleITK as sitk

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    image = sitk.GetImageFromArray(mask.astype(np.float32))
    label = sitk.GetImageFromArray(mask.astype(np.uint8))
    for im in (image, label):
        im.SetSpacing([float(s) for s in spacing[::-1]])  # SimpleITK is (x, y, z)
    extractor = getattr(module, cls)(image, label)
    return {name: float(getattr(extractor, f"get{name}FeatureValue")()) for name in names}


def _largest(mask):
    labels, _ = ndimage.label(mask)
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def test_shape2d_agrees_with_pyradiomics():
    shape2D = require("radiomics.shape2D", "pyradiomics is not installed")
    rng = np.random.default_rng(0)
    noise = rng.random((30, 30)) > 0.4  # many saddle configurations
    blob = ndimage.gaussian_filter(rng.normal(size=(40, 40)), 2) > 0.05
    cases = [(disc(20), (1.0, 1.0)), (disc(20) & ~disc(8), (0.7, 1.3)), (blob, (1.2, 0.9)),
             (noise, (1.0, 1.0)), (square(1), (1.0, 2.0))]
    names = [n for n in SHAPE_2D_FEATURES if n != "Elongation"]  # pyradiomics: 0/0 for one pixel
    for mask, spacing in cases:
        ours = shape_features_2d(mask, spacing)
        # pyradiomics uses all pixels; we use the largest component, so give it that component.
        theirs = _radiomics_features(shape2D, "RadiomicsShape2D", _largest(mask), spacing, names)
        for name in names:
            assert ours[name] == pytest.approx(theirs[name], rel=1e-9), name


# ----------------------------------------------------------------------------- 3D features

def ball(radius, spacing=(1.0, 1.0, 1.0), semi_axes=None):
    """Ellipsoid mask (semi-axes in physical units, along z, y, x), off-grid centre."""
    semi = np.array(semi_axes or (radius,) * 3, float)
    spacing = np.asarray(spacing, float)
    shape = np.ceil(2 * semi / spacing).astype(int) + 4
    grid = np.indices(shape) * spacing[:, None, None, None]
    centre = (shape - 1) / 2 * spacing + np.array([0.23, -0.17, 0.31]) * spacing
    return (((grid - centre[:, None, None, None]) / semi[:, None, None, None]) ** 2).sum(0) <= 1


def test_shape3d_sphere():
    r = 10
    f = shape_features_3d(ball(r))
    assert set(f) == set(SHAPE_3D_FEATURES) and all(type(v) is float for v in f.values())
    assert f["MeshVolume"] == pytest.approx(4 / 3 * np.pi * r**3, rel=0.01)
    assert f["VoxelVolume"] == pytest.approx(4 / 3 * np.pi * r**3, rel=0.01)
    # Marching cubes on a binary mask is faceted: its area is ~8% above 4 pi r^2 at any radius,
    # so sphericity is ~0.92, not 1.
    assert 1.05 < f["SurfaceArea"] / (4 * np.pi * r**2) < 1.10
    assert 0.90 < f["Sphericity"] < 0.95
    assert f["MajorAxisLength"] == pytest.approx(4 * r / np.sqrt(5), rel=0.01)  # var = r^2/5
    assert f["Elongation"] == pytest.approx(1, abs=0.01) and f["Flatness"] == pytest.approx(1, abs=0.01)
    assert f["Maximum3DDiameter"] == pytest.approx(2 * r, abs=1.0)
    # The correlated compactness numbers follow from volume and area as defined.
    assert f["Compactness2"] == pytest.approx(f["Sphericity"] ** 3)
    assert f["Compactness1"] == pytest.approx(f["Sphericity"] ** 1.5 / (6 * np.pi))
    assert f["SphericalDisproportion"] == pytest.approx(1 / f["Sphericity"])
    assert f["SurfaceVolumeRatio"] == pytest.approx(f["SurfaceArea"] / f["MeshVolume"])


def test_shape3d_ellipsoid_anisotropic_spacing():
    a, b, c = 12.0, 8.0, 6.0
    spacing = (1.2, 0.8, 1.0)
    f = shape_features_3d(ball(0, spacing, semi_axes=(c, a, b)), spacing)  # longest along y
    assert f["MeshVolume"] == pytest.approx(4 / 3 * np.pi * a * b * c, rel=0.015)
    p = 1.6075  # Knud Thomsen's approximation, within 1.1% of the true ellipsoid area
    thomsen = 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    assert 1.05 < f["SurfaceArea"] / thomsen < 1.12  # the same marching-cubes excess as a sphere
    assert f["Elongation"] == pytest.approx(b / a, rel=0.02)
    assert f["Flatness"] == pytest.approx(c / a, rel=0.02)
    for name, axis in [("MajorAxisLength", a), ("MinorAxisLength", b), ("LeastAxisLength", c)]:
        assert f[name] == pytest.approx(4 * axis / np.sqrt(5), rel=0.02), name
    assert f["Maximum3DDiameter"] == pytest.approx(2 * a, rel=0.03)


@pytest.mark.parametrize("box,spacing", [((5, 5, 5), (1.0, 1.0, 1.0)), ((3, 6, 4), (2.0, 0.5, 1.5)),
                                         ((1, 1, 1), (1.0, 1.0, 1.0))])
def test_shape3d_box_exact(box, spacing):
    mask = np.zeros(tuple(n + 2 for n in box), bool)
    mask[1:-1, 1:-1, 1:-1] = True
    f = shape_features_3d(mask, spacing)
    # The level-0.5 mesh of a box of n voxels per side is the box of the voxel centres (L = n - 1)
    # grown by the octahedron |x|+|y|+|z| <= 1/2 (Minkowski sum): its volume follows exactly.
    lz, ly, lx = (n - 1 for n in box)
    volume = lx * ly * lz + (lx * ly + ly * lz + lx * lz) + 0.5 * (lx + ly + lz) + 1 / 6
    assert f["MeshVolume"] == pytest.approx(volume * np.prod(spacing), rel=1e-12)
    assert f["VoxelVolume"] == pytest.approx(np.prod(box) * np.prod(spacing))
    if box[0] == box[1] == box[2] and spacing == (1.0, 1.0, 1.0):
        side = box[0] - 1  # faces, 45-degree edge chamfers and corner triangles
        area = 6 * side**2 + 6 * np.sqrt(2) * side + np.sqrt(3)
        assert f["SurfaceArea"] == pytest.approx(area, rel=1e-12)
        assert f["Maximum3DDiameter"] == pytest.approx(np.sqrt(3 * side**2 + 2 * side + 1) if side
                                                       else 1.0)
    if box == (1, 1, 1):  # one voxel: an octahedron, zero axes, ratios defined as 1
        assert f["MajorAxisLength"] == 0.0 and f["Elongation"] == 1.0 and f["Flatness"] == 1.0
    # In-plane diameters between mesh vertices (edge midpoints): in a plane through voxel centres
    # the farthest pair is a side's outer midpoint to the opposite corner's row, (n_u, n_v - 1) or
    # (n_u - 1, n_v) apart in voxel steps; the plane between two layers gives only (n_u - 1, n_v - 1).
    for name, axis in (("Maximum2DDiameterSlice", 0), ("Maximum2DDiameterColumn", 1), ("Maximum2DDiameterRow", 2)):
        (nu, su), (nv, sv) = [(box[k], spacing[k]) for k in range(3) if k != axis]
        expected = max(np.hypot(nu * su, (nv - 1) * sv), np.hypot((nu - 1) * su, nv * sv))
        assert f[name] == pytest.approx(expected, rel=1e-12), name


def test_shape3d_uses_all_components():
    two = np.zeros((6, 6, 12), bool)
    two[1:4, 1:4, 1:4] = True
    two[1:4, 1:4, 7:10] = True
    one = shape_features_3d(two[:, :, :6])
    both = shape_features_3d(two)
    assert both["VoxelVolume"] == 2 * one["VoxelVolume"]
    assert both["MeshVolume"] == pytest.approx(2 * one["MeshVolume"])
    assert both["SurfaceArea"] == pytest.approx(2 * one["SurfaceArea"])


def _bounding_box(mask):
    box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(mask))
    return mask[box]


def _pyradiomics_3d(mask, spacing):
    """pyradiomics' shape features as its extractor (and ``pyradiomics`` command) computes them: on
    the mask cropped to its bounding box."""
    shape = require("radiomics.shape", "pyradiomics is not installed")
    return _radiomics_features(shape, "RadiomicsShape", _bounding_box(mask), spacing, SHAPE_3D_FEATURES)


def test_shape3d_agrees_with_pyradiomics():
    """Every feature to rounding, voxel noise included: the same marching-cubes mesh as pyradiomics
    (its classic table and its handling of cubes whose corner 7 is inside), in the same place."""
    rng = np.random.default_rng(0)
    blob = ndimage.gaussian_filter(rng.normal(size=(16, 18, 17)), 2) > 0.05
    smooth = [(ball(8), (1.0, 1.0, 1.0)), (ball(0, (1.2, 0.8, 1.0), (6.0, 12.0, 8.0)), (1.2, 0.8, 1.0)),
              (ball(0, (2.5, 0.7, 0.7), (5.0, 7.0, 9.0)), (2.5, 0.7, 0.7))]
    noise = [(np.pad(rng.random((6, 7, 8)) > 0.5, 2), tuple(rng.uniform(0.5, 2.0, 3))) for _ in range(8)]
    for mask, spacing in smooth + [(blob, (1.5, 1.0, 0.7))] + noise:
        ours = shape_features_3d(mask, spacing)
        theirs = _pyradiomics_3d(mask, spacing)
        for name in SHAPE_3D_FEATURES:
            assert ours[name] == pytest.approx(theirs[name], rel=1e-11), name


def test_shape3d_agrees_with_pyradiomics_on_real_nodules(lidc_vois):
    """One LIDC VOI mask in eight (85 nodules) with their own spacing."""
    nib = pytest.importorskip("nibabel")
    from medsight.data import volumeio

    files = sorted((lidc_vois / "VOIs" / "nodule_mask").glob("*.nii.gz"))[::8]
    assert len(files) > 80
    for path in files:
        volume = volumeio.read_nifti(path)
        mask = volume.array > 0
        ours = shape_features_3d(mask, volume.spacing)
        theirs = _pyradiomics_3d(mask, volume.spacing)
        for name in SHAPE_3D_FEATURES:
            assert ours[name] == pytest.approx(theirs[name], rel=1e-11), (path.name, name)
    assert nib is not None


def test_mesh_table_is_the_classic_marching_cubes_table():
    """``_mesh.TRIANGLES`` is the first half of the classic (Lorensen / Bourke) table that
    scikit-image ships, the half pyradiomics uses."""
    import base64

    luts = pytest.importorskip("skimage.measure._marching_cubes_lewiner_luts")
    from medsight.features._mesh import TRIANGLES

    shape, text = luts.CASESCLASSIC
    table = np.frombuffer(base64.decodebytes(text.encode()), dtype=np.int8).reshape(shape)
    for config, row in enumerate(TRIANGLES):
        edges = [int(e, 16) for triangle in row.split() for e in triangle]
        assert edges == [int(e) for e in table[config] if e >= 0], config


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,message", [
    (lambda: shape_features_2d(np.zeros((5, 5))), "no foreground"),
    (lambda: shape_features_3d(np.zeros((3, 5, 5))), "no foreground"),
    (lambda: largest_contour(np.zeros((5, 5), bool)), "no foreground"),
    (lambda: fourier_descriptors(np.zeros((5, 5), np.uint8)), "no foreground"),
    (lambda: shape_features_2d(np.ones((3, 5, 5))), "2D mask"),
    (lambda: shape_features_3d(np.ones((5, 5))), "3D mask"),
    (lambda: largest_contour(np.ones(5)), "2D mask"),
    (lambda: shape_features_2d(square(3), spacing=(1.0, 0.0)), "spacing"),
    (lambda: shape_features_3d(np.ones((2, 2, 2)), spacing=(1.0, -1.0, 1.0)), "spacing"),
    (lambda: shape_features_3d(np.ones((2, 2, 2)), spacing=(1.0, 1.0)), "spacing"),
    (lambda: shape_features_2d(square(3), spacing=(np.nan, 1.0)), "spacing"),
    (lambda: shape_features_2d(np.full((3, 3), np.nan)), "NaN"),
    (lambda: fourier_descriptors(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])), "no area"),
    (lambda: fourier_descriptors(np.array([[0.0, 0.0], [1.0, 1.0]])), "at least 3"),
    (lambda: fourier_descriptors(square(3), n_coefficients=0), "n_coefficients"),
    (lambda: fourier_descriptors(square(3), n_coefficients=16, n_points=17), "n_points"),
])
def test_bad_input_raises_feature_error(call, message):
    with pytest.raises(FeatureError, match=message) as info:
        call()
    assert isinstance(info.value, ValueError)


def test_one_pixel_mask_is_defined():
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True
    assert largest_contour(mask).shape == (4, 2)  # a diamond
    d = fourier_descriptors(mask)  # a square: energy at k = 1 + 4m only
    np.testing.assert_allclose(d, np.where((K16 - 1) % 4 == 0, 1.0 / K16.astype(float) ** 2, 0),
                               atol=1e-3)
    f = shape_features_2d(mask)
    assert np.isfinite(list(f.values())).all() and f["MeshSurface"] == 0.5


# ----------------------------------------------------------------------------- estimators

@pytest.mark.parametrize("estimator", [FourierShape(), Shape2D(), Shape3D()])
@pytest.mark.parametrize("check", [
    estimator_checks.check_get_params_invariance, estimator_checks.check_set_params,
    estimator_checks.check_no_attributes_set_in_init,
    estimator_checks.check_parameters_default_constructible,
])
def test_sklearn_estimator_checks(estimator, check):
    check(type(estimator).__name__, estimator)


def test_fourier_shape_transformer():
    masks = [disc(10), rasterise(20 * BLOB), square(4)]
    est = FourierShape(n_coefficients=4)
    with pytest.raises(NotFittedError):
        est.transform(masks)
    assert est.fit(masks) is est
    assert list(est.get_feature_names_out()) == ["fourier_k+2", "fourier_k-1", "fourier_k+3",
                                                 "fourier_k-2"]
    assert est.n_features_out_ == 4
    out = est.transform(masks)
    assert out.shape == (3, 4) and out.dtype == np.float64
    np.testing.assert_array_equal(out[1], fourier_descriptors(masks[1], 4))
    with pytest.raises(FeatureError, match="n_points"):
        FourierShape(n_coefficients=8, n_points=4).fit(masks)


def test_shape_tables_transform_with_features_and_spacing_pairs():
    est = Shape2D(features=["Perimeter", "MeshSurface"], spacing=(2.0, 2.0)).fit([square(3)])
    assert list(est.get_feature_names_out()) == ["Perimeter", "MeshSurface"]
    out = est.transform([square(3), (square(3), (1.0, 1.0))])
    f = shape_features_2d(square(3))
    np.testing.assert_allclose(out, [[2 * f["Perimeter"], 4 * f["MeshSurface"]],
                                     [f["Perimeter"], f["MeshSurface"]]])

    cube = np.ones((3, 3, 3), bool)
    est = Shape3D().fit([cube])
    assert est.n_features_out_ == len(SHAPE_3D_FEATURES)
    out = est.transform([cube, (cube, (2.0, 1.0, 1.0))])
    assert out.shape == (2, len(SHAPE_3D_FEATURES)) == (2, 17) and out.dtype == np.float64
    volume = list(SHAPE_3D_FEATURES).index("VoxelVolume")
    assert out[:, volume].tolist() == [27.0, 54.0]
    assert Shape3D(features="Flatness").fit([]).transform(np.stack([cube, cube])).shape == (2, 1)
    with pytest.raises(FeatureError, match="unknown shape features"):
        Shape3D(features=["Volume"]).fit([cube])
    with pytest.raises(FeatureError, match="spacing"):
        Shape3D(spacing=(1.0, 1.0)).fit([cube])


def test_fourier_shape_in_pipeline_and_grid_search_separates_discs_from_pentagons():
    rng = np.random.default_rng(0)
    masks, labels = [], []
    for i in range(24):
        radius, angle = rng.uniform(12, 20), rng.uniform(0, 2 * np.pi)
        shift = complex(*rng.uniform(-4, 4, 2))
        z = regular_polygon_z(5 if i % 2 else 64, radius, angle) + shift  # 64-gon: a disc
        masks.append(rasterise(z, 56))
        labels.append(i % 2)
    pipe = make_pipeline(FourierShape(), StandardScaler(), LogisticRegression())
    search = GridSearchCV(pipe, {"fouriershape__n_coefficients": [2, 8]}, cv=3)
    search.fit(masks, labels)
    # k = 2 and -1 do not see 5-fold symmetry (a tie would keep 2); 8 coefficients reach k = -4.
    assert search.best_params_ == {"fouriershape__n_coefficients": 8}
    assert search.best_score_ == 1.0
    assert search.cv_results_["mean_test_score"][0] < 0.8
    assert search.predict(masks[:4]).tolist() == labels[:4]
    assert clone(pipe).get_params()["fouriershape__n_points"] == 128
