"""CT volume transforms and the 9-view nodule representation, on shapes whose sections are known analytically."""

import math

import numpy as np
import pytest

from medsight.errors import MedsightError
from medsight.transforms.views import (
    PATCH_TYPES, VIEW_NAMES, extract_plane, nine_view_planes, nodule_views, patch_size_mm,
)
from medsight.transforms.volume import (
    augment_volume, bounding_box, crop_centered, crop_centered_mask, equivalent_diameter, mask_centre,
    normalise_hu, resample, resample_mask, window,
)

SPACING = np.array([2.5, 0.7, 0.7])  # thick slices, fine in-plane: the anisotropic case views must handle
SHAPE = (24, 80, 80)
CENTRE = (np.array(SHAPE) - 1) / 2 + np.array([0.3, 0.2, -0.4])  # off the voxel grid on purpose


def physical(shape=SHAPE, spacing=SPACING, centre=CENTRE):
    """mm offsets (3, *shape) of every voxel centre from ``centre``."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"))
    return (grid - np.asarray(centre, float)[:, None, None, None]) * np.asarray(spacing, float)[:, None, None, None]


def ellipsoid(semi_axes, **kw):
    p = physical(**kw)
    return (sum((p[i] / semi_axes[i]) ** 2 for i in range(3)) <= 1).astype(np.uint8)


def ct(mask, inside=40.0, outside=-800.0):
    return np.where(mask > 0, inside, outside).astype(np.float32)


def section_area(semi_axes, u, v):
    """Area of the section of the ellipsoid x^T A x <= 1 by the plane through its centre spanned by u, v."""
    a = np.diag(1.0 / np.asarray(semi_axes, float) ** 2)
    basis = np.stack([u, v], axis=1)
    return math.pi / math.sqrt(np.linalg.det(basis.T @ a @ basis))


# --------------------------------------------------------------------------- the 9 planes


def test_nine_planes_are_orthonormal_with_distinct_normals():
    planes = nine_view_planes()
    assert planes.shape == (9, 2, 3) and len(VIEW_NAMES) == 9 and PATCH_TYPES == ("OA", "HVV", "HS")
    u, v = planes[:, 0], planes[:, 1]
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1)
    np.testing.assert_allclose((u * v).sum(1), 0, atol=1e-12)
    normals = np.cross(u, v)
    cos = np.abs(normals @ normals.T)
    assert np.all(cos[~np.eye(9, dtype=bool)] < 0.99)  # no two planes coincide
    # axial / coronal / sagittal have normals z / y / x; the diagonal planes' normals are face diagonals
    z, y, x = np.eye(3)
    r = 1 / math.sqrt(2)
    documented = [(y, x), (z, x), (z, y), (z, (y + x) * r), (z, (y - x) * r), (y, (z + x) * r), (y, (z - x) * r),
                  (x, (z + y) * r), (x, (z - y) * r)]
    np.testing.assert_allclose(planes, np.array(documented), atol=1e-12)
    assert VIEW_NAMES[:5] == ("axial", "coronal", "sagittal", "diag_z_yx+", "diag_z_yx-")
    np.testing.assert_allclose(np.abs(normals[:3]), np.eye(3), atol=1e-12)
    assert np.all(np.sort(np.abs(normals[3:]), axis=1)[:, 0] < 1e-12)
    np.testing.assert_allclose(np.sort(np.abs(normals[3:]), axis=1)[:, 1:], 1 / math.sqrt(2))


def test_axis_aligned_plane_equals_the_slice_and_keeps_orientation():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=SHAPE).astype(np.float32)
    z, y, x, k = 10, 40, 38, 7
    planes = nine_view_planes()
    n = 2 * k + 1
    axial = extract_plane(volume, SPACING, (z, y, x), *planes[0], size_mm=n * SPACING[1], out_size=n)
    np.testing.assert_allclose(axial, volume[z, y - k:y + k + 1, x - k:x + k + 1], atol=1e-5)
    coronal = extract_plane(volume, SPACING, (z, y, x), *planes[1], size_mm=5 * SPACING[0], out_size=5)
    np.testing.assert_allclose(coronal[:, 2], volume[z - 2:z + 3, y, x], atol=1e-5)  # rows run along z
    sagittal = extract_plane(volume, SPACING, (z, y, x), *planes[2], size_mm=n * SPACING[1], out_size=n)
    np.testing.assert_allclose(sagittal[(n - 1) // 2], volume[z, y - k:y + k + 1, x], atol=1e-5)  # columns along y


def test_sphere_shows_a_disc_of_its_radius_in_every_view():
    r = 10.0
    mask = ellipsoid((r, r, r))
    n, size = 101, 40.0
    views, planes = nodule_views(ct(mask), mask, SPACING, centre=CENTRE, size_mm=size, out_size=n, return_masks=True)
    assert views.shape == (9, 3, n, n) and views.dtype == np.float32 and planes.shape == (9, n, n)
    pixel = size / n
    areas = planes.reshape(9, -1).sum(1) * pixel**2
    np.testing.assert_allclose(areas, math.pi * r * r, rtol=0.03)
    # and it is a disc centred in the patch, not merely the right area
    offsets = (np.arange(n) - (n - 1) / 2) * pixel
    radius = np.hypot(offsets[:, None], offsets[None, :])
    assert np.all(planes[:, radius < r - 1.5] == 1)  # 1.5 mm: about half a 2.5 mm slice plus a pixel
    assert np.all(planes[:, radius > r + 1.5] == 0)


def test_ellipsoid_sections_have_the_analytic_semi_axes():
    a, b, c = 9.0, 6.0, 4.0  # along z, y, x
    mask = ellipsoid((a, b, c))
    n, size = 121, 30.0
    _, planes = nodule_views(ct(mask), mask, SPACING, centre=CENTRE, size_mm=size, out_size=n, return_masks=True)
    pixel = size / n
    areas = planes.reshape(9, -1).sum(1) * pixel**2
    diag = 1 / math.sqrt(1 / (2 * b * b) + 1 / (2 * c * c))
    named = [math.pi * b * c, math.pi * a * c, math.pi * a * b, math.pi * a * diag]  # axial, coronal, sagittal, z|(y+x)
    np.testing.assert_allclose(areas[:4], named, rtol=0.04)
    expected = [section_area((a, b, c), u, v) for u, v in nine_view_planes()]
    np.testing.assert_allclose(areas, expected, rtol=0.04)
    # orientation: rows follow u, columns follow v (axial: rows y -> 2b, columns x -> 2c)
    extent = lambda plane, axis: plane.any(axis=1 - axis).sum() * pixel  # noqa: E731
    assert extent(planes[0], 0) == pytest.approx(2 * b, abs=2 * pixel)
    assert extent(planes[0], 1) == pytest.approx(2 * c, abs=2 * pixel)
    assert extent(planes[1], 0) == pytest.approx(2 * a, abs=2.5)  # along z: slice-limited
    assert extent(planes[2], 1) == pytest.approx(2 * b, abs=2 * pixel)


def test_rod_along_x_is_long_in_axial_and_coronal_and_a_disc_in_sagittal():
    radius = 5.0  # two slices per radius at 2.5 mm
    p = physical()
    mask = ((np.hypot(p[0], p[1]) <= radius) & (np.abs(p[2]) <= 20)).astype(np.uint8)
    n, size = 81, 50.0
    _, planes = nodule_views(ct(mask), mask, SPACING, centre=CENTRE, size_mm=size, out_size=n, return_masks=True)
    pixel = size / n
    for view in (0, 1):  # axial (y, x) and coronal (z, x): 40 mm along the columns, 6 mm across
        rows, cols = planes[view].any(axis=1).sum() * pixel, planes[view].any(axis=0).sum() * pixel
        assert cols == pytest.approx(40, abs=2) and rows == pytest.approx(2 * radius, abs=2.6)
    assert planes[2].sum() * pixel**2 == pytest.approx(math.pi * radius**2, rel=0.08)  # sagittal: a small disc
    assert planes[2].any(axis=0).sum() * pixel == pytest.approx(2 * radius, abs=2 * pixel)


@pytest.mark.parametrize("view", range(3, 9))
def test_rod_along_a_face_diagonal_tells_the_diagonal_planes_apart(view):
    # mirror-symmetric shapes look alike in the "+" and "-" planes; a rod along one diagonal does not
    planes = nine_view_planes()
    direction = planes[view, 1]
    across = int(np.argmax(np.abs(np.cross(planes[:, 0], planes[:, 1]) @ direction)))  # the plane it pierces
    assert across != view and across >= 3
    p = physical()
    along = np.einsum("i,i...->...", direction, p)
    radius = 5.0
    mask = ((np.linalg.norm(p - along * direction[:, None, None, None], axis=0) <= radius)
            & (np.abs(along) <= 20)).astype(np.uint8)
    n, size = 81, 50.0
    _, masks = nodule_views(ct(mask), mask, SPACING, centre=CENTRE, size_mm=size, out_size=n, return_masks=True)
    pixel = size / n
    assert masks[view].any(axis=0).sum() * pixel == pytest.approx(40, abs=2)  # long along v = the rod
    assert masks[view].any(axis=1).sum() * pixel == pytest.approx(2 * radius, abs=2.6)
    assert masks[across].sum() * pixel**2 == pytest.approx(math.pi * radius**2, rel=0.1)


def test_oa_hvv_hs_patches():
    rng = np.random.default_rng(1)
    mask = ellipsoid((8.0, 6.0, 5.0))
    volume = (ct(mask) + rng.normal(0, 30, SHAPE)).astype(np.float32)
    views, planes = nodule_views(volume, mask, SPACING, out_size=33, return_masks=True)
    inside = planes.astype(bool)
    assert views.shape == (9, 3, 33, 33) and inside.any(axis=(1, 2)).all() and (~inside).any(axis=(1, 2)).all()
    oa, hvv, hs = views[:, 0], views[:, 1], views[:, 2]
    assert np.all(hvv[~inside] == 0) and np.all(hs[inside] == 0)
    for patch, keep in ((oa, np.ones_like(inside)), (hvv, inside), (hs, ~inside)):
        assert patch.min() >= 0 and patch.max() <= 1
        for k in range(9):  # min-max over the kept pixels of each patch
            assert patch[k][keep[k]].min() == pytest.approx(0, abs=1e-6)
            assert patch[k][keep[k]].max() == pytest.approx(1, abs=1e-6)
    # HVV / HS are cut from the raw HU: unscaled they equal OA where kept, 0 elsewhere
    raw = nodule_views(volume, mask, SPACING, out_size=33, scaling="none")
    np.testing.assert_array_equal(raw[:, 1], np.where(inside, raw[:, 0], 0))
    np.testing.assert_array_equal(raw[:, 2], np.where(inside, 0, raw[:, 0]))
    assert raw[:, 1][inside].mean() > raw[:, 2][~inside].mean() + 500  # the nodule inside, lung outside
    windowed = nodule_views(volume, mask, SPACING, out_size=33, scaling="window", hu_window=(-600, 1500))
    np.testing.assert_allclose(windowed[:, 0], window(raw[:, 0], -600, 1500), atol=1e-6)
    # the mask planes are the same whatever the scaling, and the default size follows the nodule
    assert patch_size_mm(mask, SPACING) == pytest.approx(2 * equivalent_diameter(mask, SPACING))
    with pytest.raises(MedsightError, match="scaling"):
        nodule_views(volume, mask, SPACING, scaling="zscore")


def test_patch_size_rule_and_errors():
    sphere = ellipsoid((10.0, 10.0, 10.0))
    assert equivalent_diameter(sphere, SPACING) == pytest.approx(20, rel=0.02)
    assert patch_size_mm(sphere, SPACING) == pytest.approx(40, rel=0.02)
    assert patch_size_mm(ellipsoid((2.0, 2.0, 2.0)), SPACING) == 16.0  # the floor
    with pytest.raises(MedsightError, match="empty"):
        nodule_views(ct(sphere), np.zeros(SHAPE), SPACING)
    with pytest.raises(MedsightError, match="shape"):
        nodule_views(ct(sphere), sphere[:-1], SPACING)
    with pytest.raises(MedsightError, match="orthogonal"):
        extract_plane(ct(sphere), SPACING, CENTRE, (1, 0, 0), (1, 1, 0), 10, 5)


def test_extreme_constant_patches_are_defined():
    mask = ellipsoid((6.0, 6.0, 6.0))
    flat = np.full(SHAPE, 40.0, np.float32)  # the same HU inside and outside
    views, planes = nodule_views(flat, mask, SPACING, out_size=17, return_masks=True)
    assert np.isfinite(views).all()
    np.testing.assert_array_equal(views[:, 0], 0.5)
    np.testing.assert_array_equal(views[:, 1], np.where(planes == 1, 0.5, 0))
    np.testing.assert_array_equal(views[:, 2], np.where(planes == 1, 0, 0.5))


# --------------------------------------------------------------------------- crops, resampling, intensities


def test_crop_centered_pads_at_a_corner_and_keeps_the_centre():
    rng = np.random.default_rng(2)
    volume = rng.uniform(-900, 300, size=(20, 30, 30)).astype(np.float32)
    spacing = (2.0, 0.8, 0.8)
    crop = crop_centered(volume, (0, 0, 0), (10.0, 8.8, 8.8), spacing)  # native grid: 5 x 11 x 11 voxels
    assert crop.shape == (5, 11, 11)
    assert crop[2, 5, 5] == volume[0, 0, 0]
    assert np.all(crop[:2] == -1024) and np.all(crop[:, :5] == -1024) and np.all(crop[:, :, :5] == -1024)
    np.testing.assert_array_equal(crop[2:, 5:, 5:], volume[:3, :6, :6])
    even = crop_centered(volume, (0, 0, 0), (8.0, 8.0, 8.0), spacing)  # even: the centre falls between voxels
    assert even.shape == (4, 10, 10) and even[2, 5, 5] == volume[0, 0, 0] and even[1, 4, 4] == -1024
    resampled = crop_centered(volume, (0, 0, 0), 12.0, spacing, out_shape=(9, 15, 15))
    assert resampled.shape == (9, 15, 15) and resampled.dtype == np.float32
    assert resampled[4, 7, 7] == pytest.approx(volume[0, 0, 0])
    assert np.all(resampled[:3] == -1024) and (resampled[4:, 7:, 7:] > -1000).all()
    inner = crop_centered(volume, (10, 15, 14), (6.0, 4.0, 4.0), spacing)  # inside: plain slicing
    np.testing.assert_array_equal(inner, volume[9:12, 13:18, 12:17])
    same_grid = crop_centered(volume, (10, 15, 14), (6.0, 4.0, 4.0), spacing, out_shape=(3, 5, 5))
    np.testing.assert_allclose(same_grid, inner, atol=1e-3)
    # resampled crops sample the physical box: a ramp in mm comes back as the same ramp
    ramp = np.broadcast_to(np.arange(30.0)[None, None, :] * spacing[2], volume.shape)
    fine = crop_centered(ramp, (10, 15, 14.25), 8.0, spacing, out_shape=(4, 4, 16))
    np.testing.assert_allclose(fine[1, 1], 14.25 * spacing[2] + (np.arange(16) - 7.5) * 0.5, atol=1e-4)
    shifted = crop_centered(volume, (9.6, 15.4, 14.51), (6.0, 4.0, 4.0), spacing)  # the nearest voxel is the middle
    np.testing.assert_array_equal(shifted, volume[9:12, 13:18, 13:18])
    ints = crop_centered(np.round(volume).astype(np.int16), (0, 0, 0), 8.0, spacing)
    assert ints.dtype == np.int16 and ints[0, 0, 0] == -1024
    mask = (volume > 0).astype(np.uint8)
    mcrop = crop_centered_mask(mask, (0, 0, 0), 12.0, spacing, out_shape=(9, 15, 15))
    assert mcrop.dtype == np.uint8 and set(np.unique(mcrop)) <= {0, 1} and np.all(mcrop[:3] == 0)
    far = crop_centered(volume, (500, 0, 0), 4.0, spacing)
    assert np.all(far == -1024)


def test_resample_halves_the_shape_and_keeps_volumes():
    spacing = (1.25, 0.7, 0.7)
    shape = (40, 64, 62)
    centre = (np.array(shape) - 1) / 2
    mask = ellipsoid((9.0, 9.0, 9.0), shape=shape, spacing=spacing, centre=centre)
    out, achieved = resample(ct(mask), spacing, np.array(spacing) * 2)
    assert out.shape == (20, 32, 31) and out.dtype == np.float32
    np.testing.assert_allclose(np.array(achieved) * out.shape, np.array(spacing) * shape)  # same extent
    small, achieved_m = resample_mask(mask, spacing, np.array(spacing) * 2)
    assert small.dtype == np.uint8 and achieved_m == achieved
    volume_mm3 = mask.sum() * np.prod(spacing)
    # linear >= 0.5 keeps the halfway ties, which at factor 2 grows the mask a little (documented)
    assert small.sum() * np.prod(achieved) == pytest.approx(volume_mm3 * 1.03, rel=0.03)
    nearest, _ = resample(mask, spacing, np.array(spacing) * 2, order=0)
    assert nearest.dtype == np.uint8 and nearest.sum() * np.prod(achieved) == pytest.approx(volume_mm3, rel=0.03)
    assert volume_mm3 == pytest.approx(4 / 3 * math.pi * 9**3, rel=0.03)
    back, _ = resample_mask(small, achieved, 1.0)  # up to isotropic 1 mm
    assert back.sum() == pytest.approx(volume_mm3, rel=0.05)
    # no half-voxel drift: a linear ramp in z stays the same function of physical position
    ramp = np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None] * spacing[0], shape)
    coarse, sp = resample(ramp, spacing, 2.5)
    z_mm = (np.arange(coarse.shape[0]) + 0.5) * sp[0] - 0.5 * spacing[0]  # new voxel centres, mm from old voxel 0
    np.testing.assert_allclose(coarse[1:-1, 5, 5], z_mm[1:-1], atol=1e-3)
    same, sp_same = resample(ramp, spacing, spacing)
    np.testing.assert_array_equal(same, ramp) and sp_same == spacing


def test_window_and_normalise():
    hu = np.array([-2000, -1350, -600, 150, 3000], dtype=np.int16)
    np.testing.assert_allclose(window(hu), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(normalise_hu(hu, -1000, 400), [0, 0, 0.2857143, 0.8214286, 1], atol=1e-6)
    assert window(hu).dtype == np.float32
    with pytest.raises(MedsightError):
        window(hu, width=0)


def test_mask_centre_and_bounding_box():
    mask = np.zeros((10, 12, 14), np.uint8)
    mask[2:5, 3:9, 4:6] = 1
    np.testing.assert_allclose(mask_centre(mask), [3, 5.5, 4.5])
    np.testing.assert_allclose(mask_centre(mask, (2.5, 0.5, 0.5)), [7.5, 2.75, 2.25])
    assert bounding_box(mask) == (slice(2, 5), slice(3, 9), slice(4, 6))
    assert mask[bounding_box(mask)].all()
    with pytest.raises(MedsightError, match="empty"):
        bounding_box(np.zeros((3, 3, 3)))


# --------------------------------------------------------------------------- augmentation


def test_augment_keeps_volume_and_mask_aligned_and_replays():
    spacing = (1.5, 0.8, 0.8)
    shape = (24, 48, 48)
    # an off-centre elongated bright object, so that a misaligned mask would miss it
    centre = (np.array(shape) - 1) / 2 + np.array([2.0, 5.0, -6.0])
    mask = ellipsoid((6.0, 8.0, 4.0), shape=shape, spacing=spacing, centre=centre)
    volume = ct(mask, 100.0, -800.0)
    for seed in range(4):
        out, out_mask = augment_volume(volume, mask, np.random.default_rng(seed), spacing=spacing)
        assert out.shape == shape and out_mask.shape == shape and out_mask.dtype == np.uint8
        bright = out > -350  # the interpolated object's half-level set
        assert out_mask.sum() == pytest.approx(mask.sum(), rel=0.06)  # rigid: the volume is kept
        assert (bright & (out_mask == 1)).sum() >= 0.97 * max(bright.sum(), out_mask.sum())
        again = augment_volume(volume, mask, np.random.default_rng(seed), spacing=spacing)
        np.testing.assert_array_equal(out, again[0])
        np.testing.assert_array_equal(out_mask, again[1])
    other, _ = augment_volume(volume, mask, np.random.default_rng(99), spacing=spacing)
    assert not np.array_equal(other, out)
    # flips alone are exact, and the mask follows them
    rng = np.random.default_rng(0)
    flips = np.random.default_rng(0).random(3) < 0.5
    flipped, fmask = augment_volume(volume, mask, rng, spacing=spacing, rotate_deg=0, tilt_deg=0, shift_frac=0)
    axes = tuple(np.flatnonzero(flips))
    assert axes == (1, 2)  # seed 0 flips y and x
    np.testing.assert_allclose(flipped, np.flip(volume, axes), atol=1e-3)
    np.testing.assert_array_equal(fmask, np.flip(mask, axes))
    still, smask = augment_volume(volume, None, np.random.default_rng(5), flips=False, rotate_deg=0, tilt_deg=0,
                                  shift_frac=0)
    assert smask is None
    np.testing.assert_allclose(still, volume, atol=1e-3)


def test_augment_rotates_rigidly_in_physical_space():
    # a sphere centred on the rotation centre maps onto itself under any flip, rotation and tilt,
    # but only if the rotation is done in mm: in voxels (2 mm vs 0.7 mm) a tilt would shear it
    spacing = (2.0, 0.7, 0.7)
    shape = (20, 64, 64)
    centre = np.array([9.0, 30.0, 35.0])
    mask = ellipsoid((8.0, 8.0, 8.0), shape=shape, spacing=spacing, centre=centre)
    for seed in range(3):
        _, out = augment_volume(ct(mask), mask, np.random.default_rng(seed), spacing=spacing, tilt_deg=40,
                                shift_frac=0, centre=centre)
        overlap = (out & mask).sum() / (out | mask).sum()
        assert overlap > 0.9
    # and a shift moves it by the drawn amount, in mm
    rng = np.random.default_rng(3)
    _, shifted = augment_volume(ct(mask), mask, rng, spacing=spacing, flips=False, rotate_deg=0, tilt_deg=0,
                                shift_frac=0.1, centre=centre)
    draws = np.random.default_rng(3)
    draws.random(3), draws.uniform(-1, 1), draws.uniform(-1, 1, 2)
    shift_mm = draws.uniform(-0.1, 0.1, 3) * np.array(shape) * spacing
    np.testing.assert_allclose((mask_centre(shifted) - mask_centre(mask)) * spacing, shift_mm, atol=0.3)
