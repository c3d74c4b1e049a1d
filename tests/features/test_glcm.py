"""Tests of medsight.features.glcm: hand-computed matrices, analytic textures, agreement with
scikit-image and pyradiomics (skipped with a message when absent), bad input, the estimator contract."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks

from medsight.errors import FeatureError
from medsight.features import _glcm_kernels
from medsight.features.glcm import (
    GLCM_FEATURES,
    SKIMAGE_PROPS,
    GLCMTexture,
    _row_length,
    glcm_features,
    glcm_features_batch,
    glcm_matrices,
    graycoprops,
    offsets,
)
from medsight.features.levels import discretize

from references import require

# ------------------------------------------------------------------ hand-computed matrices

IMG4 = np.array([[0, 1, 1, 2],
                 [0, 1, 2, 2],
                 [3, 3, 0, 1],
                 [2, 0, 0, 3]])  # fmt: skip

# P[i, j] = number of pixels of level i whose neighbour at the offset has level j, counted by hand
HAND = {
    (0, 1): [[1, 3, 0, 1], [0, 1, 2, 0], [1, 0, 1, 0], [1, 0, 0, 1]],  # right
    (1, 1): [[0, 1, 0, 2], [1, 0, 2, 0], [0, 1, 0, 0], [2, 0, 0, 0]],  # down-right
    (1, 0): [[2, 0, 0, 1], [0, 1, 1, 2], [1, 1, 1, 0], [1, 0, 1, 0]],  # down
    (1, -1): [[1, 0, 0, 0], [2, 1, 0, 1], [1, 0, 1, 1], [0, 0, 1, 0]],  # down-left
}


def test_offsets_2d_are_scikit_image_steps():
    assert offsets(2).tolist() == [list(k) for k in HAND]
    assert offsets(2, (2, 3)).tolist() == [[0, 2], [1, 1], [2, 0], [1, -1], [0, 3], [2, 2], [3, 0], [2, -2]]


def test_offsets_3d_are_pyradiomics_neighbours():
    first = offsets(3)
    assert first.shape == (13, 3) and first[0].tolist() == [1, 1, 1] and first[-1].tolist() == [0, 0, 1]
    assert len({tuple(o) for o in first} | {tuple(-o) for o in first}) == 26  # a half of the 26-neighbourhood
    assert offsets(3, (1, 2)).shape == (13 + 49, 3)


def test_hand_computed_4x4_glcm():
    P, grey = glcm_matrices(IMG4, levels=4, symmetric=False)
    assert grey.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(P, np.array(list(HAND.values()), dtype=float))
    P_sym, _ = glcm_matrices(IMG4, levels=4)
    np.testing.assert_array_equal(P_sym, P + P.transpose(0, 2, 1))
    P_down, _ = glcm_matrices(IMG4, levels=4, symmetric=False, directions=[2])
    np.testing.assert_array_equal(P_down[0], HAND[(1, 0)])


def test_hand_computed_masked_glcm():
    """Pairs count only when both pixels are in the mask: here the last column is out."""
    mask = np.ones((4, 4), bool)
    mask[:, 3] = False
    P, _ = glcm_matrices(IMG4, mask, levels=4, symmetric=False, directions=[0])
    np.testing.assert_array_equal(P[0], [[1, 2, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 1]])


def test_pyradiomics_convention_drops_absent_levels():
    image = np.array([[0.0, 0, 60], [60, 60, 0]])  # levels 1 and 3 with bin width 25; 2 is absent
    P, grey = glcm_matrices(image, bin_width=25, symmetric=False, directions=[0])
    assert grey.tolist() == [1, 3]
    np.testing.assert_array_equal(P[0], [[1, 1], [1, 1]])


# ------------------------------------------------------------------ analytic textures


def checkerboard(n=8, low=0.0, high=25.0):
    return np.where(np.indices((n, n)).sum(axis=0) % 2 == 0, low, high)


def test_checkerboard_features_are_analytic():
    """Along rows and columns every pair is (1, 2) or (2, 1) with probability 1/2 each."""
    f = glcm_features(checkerboard(), bin_width=25, directions=[0, 2])
    want = {
        "Contrast": 1, "DifferenceAverage": 1, "JointEnergy": 0.5, "JointEntropy": 1, "MaximumProbability": 0.5,
        "Correlation": -1, "Autocorrelation": 2, "JointAverage": 1.5, "SumAverage": 3, "SumSquares": 0.25,
        "SumEntropy": 0, "DifferenceEntropy": 0, "DifferenceVariance": 0, "ClusterTendency": 0,
        "Id": 0.5, "Idm": 0.5, "Idn": 2 / 3, "Idmn": 0.8, "InverseVariance": 1, "Imc1": -1,
        "Imc2": math.sqrt(1 - math.exp(-2)), "MCC": 1,
    }  # fmt: skip
    for name, value in want.items():
        assert f[name] == pytest.approx(value, abs=1e-12), name
    diagonal = glcm_features(checkerboard(), bin_width=25, directions=[1])
    assert diagonal["Contrast"] == 0 and diagonal["Correlation"] == pytest.approx(1)


def test_checkerboard_graycoprops():
    P, _ = glcm_matrices(checkerboard(low=0, high=1).astype(np.uint8), levels=2, directions=[0])
    assert graycoprops(P, "contrast")[0] == pytest.approx(1)
    assert graycoprops(P, "energy")[0] == pytest.approx(math.sqrt(0.5))
    assert graycoprops(P, "entropy")[0] == pytest.approx(math.log(2))
    assert graycoprops(P, "correlation")[0] == pytest.approx(-1)


ONE_LEVEL = {name: 0.0 for name in GLCM_FEATURES} | {
    "Autocorrelation": 1.0, "JointAverage": 1.0, "SumAverage": 2.0, "Correlation": 1.0, "MCC": 1.0,
    "Id": 1.0, "Idm": 1.0, "Idmn": 1.0, "Idn": 1.0, "JointEnergy": 1.0, "MaximumProbability": 1.0,
}  # fmt: skip


@pytest.mark.parametrize(
    "image, settings",
    [(np.full((5, 6, 7), 100.0), {}), (np.arange(60.0).reshape(3, 4, 5), {"bin_width": 1000})],
    ids=["constant", "one-bin"],
)
def test_one_grey_level_gives_pyradiomics_values(image, settings):
    f = glcm_features(image, **settings)
    assert f == pytest.approx(ONE_LEVEL, abs=1e-15)
    assert all(math.isfinite(v) for v in f.values())


def test_one_grey_level_with_bin_count_sits_in_the_middle_bin():
    """numpy's histogram of a constant spans value +- 0.5, so 4 bins put it in bin 3, as pyradiomics does."""
    f = glcm_features(np.full((4, 4, 4), 7.0), bin_count=4)
    assert f["JointAverage"] == 3 and f["Autocorrelation"] == 9 and f["SumAverage"] == 6 and f["MCC"] == 1


def test_independent_pairs_have_zero_information_measures():
    """P = outer((1, 1, 1), (2, 3, 5)): no mutual information, which rounding makes slightly negative."""
    counts = np.outer([1, 1, 1], [2, 3, 5])
    pairs = [(i, j) for i in range(3) for j in range(3) for _ in range(counts[i, j])]
    image = 25.0 * np.array(pairs)  # one horizontal pair per row, levels 1..3
    f = glcm_features(image, bin_width=25, directions=[0], symmetric=False)
    assert f["Imc2"] == 0 and abs(f["Imc1"]) < 1e-15
    assert f["Correlation"] == pytest.approx(0, abs=1e-15) and f["MCC"] == pytest.approx(0, abs=1e-7)


def mcc_reference(P: np.ndarray) -> float:
    """pyradiomics' MCC without its eps: sqrt of the second largest eigenvalue of Q = (P / px)(P / py)^T,
    from a general (non-symmetric) eigensolver, averaged over the offsets that have pairs."""
    values = []
    for counts in P:
        if counts.sum() == 0:
            continue
        p = counts / counts.sum()
        px, py = p.sum(axis=1), p.sum(axis=0)
        a = np.divide(p, px[:, None], out=np.zeros_like(p), where=px[:, None] > 0)
        b = np.divide(p, py[None, :], out=np.zeros_like(p), where=py[None, :] > 0)
        eig = np.sort(np.linalg.eigvals(a @ b.T).real)
        values.append(math.sqrt(max(eig[-2], 0.0)))
    return float(np.mean(values))


@pytest.mark.parametrize("symmetric", [True, False])
def test_mcc_equals_the_eigenvalue_definition(symmetric):
    """Levels absent from some offsets' rows (a sparse mask over coarse noise) exercise the zero-row path."""
    rng = np.random.default_rng(11)
    image = ndimage.gaussian_filter(rng.normal(0, 100, (12, 13, 14)), 1.5)
    mask = rng.random(image.shape) > 0.6
    P, _ = glcm_matrices(image, mask, bin_width=5, symmetric=symmetric)
    got = glcm_features(image, mask, bin_width=5, symmetric=symmetric, features="MCC")["MCC"]
    assert got == pytest.approx(mcc_reference(P), rel=1e-10)


def test_mcc_is_one_for_two_separate_textures():
    """Levels {1, 2} and {3, 4} never meet: P is block-diagonal, its second eigenvalue is 1 like its first."""
    board = 25.0 * (np.indices((8, 16)).sum(axis=0) % 2)
    image = np.where(np.arange(16) < 8, board, 50 + board)
    mask = np.ones(image.shape, bool)
    mask[:, 7:9] = False  # a gap wider than the distance keeps the two apart
    assert glcm_features(image, mask, bin_width=25, features="MCC")["MCC"] == pytest.approx(1, abs=1e-12)


def test_mcc_kernel_equals_the_eigenvalue_definition_matrix_by_matrix():
    """The kernel reduces up to 32 matrices side by side: 70 of them (three groups, spare lanes in the
    last) of different sizes, symmetric or not, with absent levels (zero rows, zero columns, both, all
    but one), a block-diagonal one (second eigenvalue 1) and a two-coloured one (eigenvalue -1)."""
    rng = np.random.default_rng(2)
    n = 12
    counts = np.zeros((70, n, n))
    for i, c in enumerate(counts):
        size = rng.integers(1, n + 1)
        c[:size, :size] = rng.integers(0, 4, (size, size)) * (rng.random((size, size)) < 0.6)
        if i % 2:
            c += c.T  # symmetric, as a symmetric GLCM
        c[0, 0] += 1  # no empty matrix
    counts[5, 3, :] = counts[5, :, 3] = 0  # a level absent from a symmetric matrix
    counts[6, 2, :] = counts[6, :, 7] = 0  # a row level and another column level absent
    counts[7] = np.diag([1.0] + [0] * (n - 1))  # one level left
    counts[8] = 0
    counts[8, :3, :3] = counts[8, 5:9, 5:9] = 1  # two blocks: the second eigenvalue is 1 too
    counts[9] = 0
    counts[9, 0, 1] = counts[9, 1, 0] = counts[9, 1, 2] = counts[9, 2, 1] = 1  # bipartite: eigenvalue -1
    p = counts / counts.sum(axis=(1, 2), keepdims=True)
    got = np.empty(len(p))
    _glcm_kernels.mcc(p, p.sum(axis=2), p.sum(axis=1), got)
    want = np.array([mcc_reference(c[None]) for c in counts])
    sym = np.arange(70) % 2 == 1
    np.testing.assert_allclose(got[sym], want[sym], rtol=1e-11, atol=1e-12)
    # not symmetric: MCC is the square root of an eigenvalue, which near 0 is ~sqrt(rounding) ~ 1e-8
    np.testing.assert_allclose(got[~sym], want[~sym], rtol=1e-11, atol=5e-8)
    assert got[8] == pytest.approx(1, abs=1e-12) and got[9] == pytest.approx(1, abs=1e-12)
    assert got[7] == pytest.approx(0, abs=1e-12)


def test_mcc_kernel_with_a_group_of_empty_matrices():
    """Offsets without pairs give empty matrices (a one-slice image with 3D offsets); a whole group of
    them has no level at all, and the kernel must still reduce it (to values nobody reads)."""
    rng = np.random.default_rng(5)
    counts = np.zeros((40, 6, 6))
    counts[:32] = rng.integers(1, 5, (32, 6, 6))
    counts[:32] += counts[:32].transpose(0, 2, 1)
    p = counts / np.maximum(counts.sum(axis=(1, 2), keepdims=True), 1)
    got = np.empty(40)
    _glcm_kernels.mcc(p, p.sum(axis=2), p.sum(axis=1), got)  # matrices 32-39: the second group, all empty
    np.testing.assert_allclose(got[:32], [mcc_reference(c[None]) for c in counts[:32]], rtol=1e-11)


# ------------------------------------------------------------------ discretisation


def test_discretize_bin_width_by_hand():
    image = np.array([-30, -1, 0, 24, 25, 49, 50])[None]
    levels, n = discretize(image, bin_width=25)
    assert levels.tolist() == [[1, 2, 3, 3, 4, 4, 5]] and n == 5
    as_float, _ = discretize(image.astype(float), bin_width=25.0)  # search path = integer formula
    np.testing.assert_array_equal(as_float, levels)
    default, _ = discretize(image)
    np.testing.assert_array_equal(default, levels)


def test_discretize_bin_count_and_mask_by_hand():
    image = np.arange(12.0).reshape(3, 4)
    mask = image <= 10  # 11 is outside: edges over 0..10 are 0, 2, 4, 6, 8, 10 (+1)
    levels, n = discretize(image, mask, bin_count=5)
    assert levels.tolist() == [[1, 1, 2, 2], [3, 3, 4, 4], [5, 5, 5, 0]] and n == 5


# ------------------------------------------------------------------ scikit-image


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_matrices_and_props_equal_scikit_image(symmetric, seed):
    skf = pytest.importorskip("skimage.feature")
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 8, (19, 23)).astype(np.uint8)
    image[:4, :5] = 7  # some structure, so that correlation is not ~0
    distances, angles = [1, 2, 3, 5], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    want = skf.graycomatrix(image, distances, angles, levels=8, symmetric=symmetric)
    P, grey = glcm_matrices(image, distances=distances, levels=8, symmetric=symmetric)
    np.testing.assert_array_equal(P, want.reshape(8, 8, -1).transpose(2, 0, 1))
    assert grey.tolist() == list(range(8))
    for prop in SKIMAGE_PROPS:
        np.testing.assert_allclose(graycoprops(P, prop), skf.graycoprops(want, prop).ravel(), rtol=1e-12,
                                   atol=1e-14, err_msg=prop)  # fmt: skip


def test_graycoprops_of_empty_and_flat_matrices_match_scikit_image():
    skf = pytest.importorskip("skimage.feature")
    P = np.zeros((3, 3, 3))
    P[1, 2, 2] = 5
    P[2, 1] = [1, 2, 3]  # rows all level 1: std_i = 0 < std_j
    for prop in SKIMAGE_PROPS:
        want = skf.graycoprops(P.transpose(1, 2, 0)[:, :, None, :], prop).ravel()
        np.testing.assert_allclose(graycoprops(P, prop), want, atol=1e-12, err_msg=prop)


# ------------------------------------------------------------------ pyradiomics


def pyradiomics_glcm(image, mask, **settings) -> dict:
    radiomics = require("radiomics", "pyradiomics is not installed")
    from radiomics import glcm
    import SimpleITK as sitk

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    mask = np.ones(image.shape, np.uint8) if mask is None else mask.astype(np.uint8)
    ext = glcm.RadiomicsGLCM(sitk.GetImageFromArray(image), sitk.GetImageFromArray(mask), **settings)
    ext.enableAllFeatures()
    assert radiomics is not None
    return {k: float(v) for k, v in ext.execute().items()}


def assert_features_equal(got: dict, want: dict, rtol=1e-9):
    """Equal to rtol; MCC to 1e-6, since pyradiomics adds eps to px * py inside it (felt with many rare levels)."""
    assert set(got) == set(want) == set(GLCM_FEATURES)
    for name in GLCM_FEATURES:
        tol = max(rtol, 1e-6) if name == "MCC" else rtol
        assert got[name] == pytest.approx(want[name], rel=tol, abs=1e-12), name


def volumes():
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 120, (14, 15, 16))
    smooth = ndimage.gaussian_filter(rng.normal(0, 1, (14, 15, 16)), 2)
    smooth = (40 + 300 * smooth / smooth.std()).round().astype(np.int16)  # HU-like, integer
    z, y, x = np.indices(noise.shape)
    ball = (z - 7) ** 2 + (y - 7) ** 2 + (x - 8) ** 2 < 36
    blobby = ndimage.binary_opening(rng.random(noise.shape) > 0.35) | ball
    return {"noise": (noise, ball), "smooth": (smooth, blobby), "unmasked": (smooth, None)}


PYRADIOMICS_CASES = [
    ("noise", {"bin_width": 25}),
    ("noise", {"bin_count": 16}),
    ("noise", {"bin_width": 10, "symmetric": False}),  # 67 of 80 levels present: rows of absent levels skipped
    ("smooth", {"bin_width": 25}),
    ("smooth", {"bin_width": 40, "symmetric": False}),
    ("smooth", {"bin_count": 32, "distances": (1, 2)}),
    ("unmasked", {"bin_width": 60, "distances": (3,)}),
]


@pytest.mark.parametrize("case, settings", PYRADIOMICS_CASES, ids=[f"{c}-{s}" for c, s in PYRADIOMICS_CASES])
def test_features_equal_pyradiomics_3d(case, settings):
    image, mask = volumes()[case]
    want = pyradiomics_glcm(image, mask, binWidth=settings.get("bin_width"), binCount=settings.get("bin_count"),
                            symmetricalGLCM=settings.get("symmetric", True),
                            distances=list(settings.get("distances", (1,))))  # fmt: skip
    assert_features_equal(glcm_features(image, mask, **settings), want)


@pytest.mark.parametrize("symmetric", [True, False])
def test_2d_features_equal_pyradiomics_force2d(symmetric):
    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(rng.normal(0, 60, (24, 27)), 1)
    mask = np.ones(image.shape, bool)
    mask[:3], mask[:, -4:] = False, False
    want = pyradiomics_glcm(image[None], mask[None], binWidth=5, force2D=True, symmetricalGLCM=symmetric)
    assert_features_equal(glcm_features(image, mask, bin_width=5, symmetric=symmetric), want)
    # pyradiomics' in-plane neighbourhood at distance 2 (8 steps) is the 3D one on a one-slice volume
    want2 = pyradiomics_glcm(image[None], mask[None], binWidth=5, force2D=True, distances=[2])
    assert_features_equal(glcm_features(image[None], mask[None], bin_width=5, distances=(2,)), want2)


def test_constant_image_equals_pyradiomics():
    image = np.full((5, 6, 7), 100.0)
    assert_features_equal(glcm_features(image), pyradiomics_glcm(image, None, binWidth=25), rtol=1e-15)


def test_offsets_and_discretisation_equal_pyradiomics():
    require("radiomics", "pyradiomics is not installed")
    from radiomics import cMatrices, imageoperations

    angles = cMatrices.generate_angles(np.array([9, 9, 9]), np.array([1]), False, False, 0)
    np.testing.assert_array_equal(offsets(3), angles)
    noise, mask = volumes()["noise"]
    hu = noise.round()  # integer HU stored as float: the integer formula, which must give the same levels
    cases = [(image, settings) for image in (noise, hu, hu.astype(np.float32), hu.astype(np.int16))
             for settings in ({"binWidth": 25}, {"binWidth": 7.5}, {"binCount": 13})]
    cases.append((hu.astype(np.float32) * 1e5, {"binWidth": 3e6}))  # beyond float32's exact integers
    for image, settings in cases:
        want, _ = imageoperations.binImage(image, mask, **settings)
        got, _ = discretize(image, mask, bin_width=settings.get("binWidth"), bin_count=settings.get("binCount"))
        np.testing.assert_array_equal(got, want, err_msg=f"{image.dtype} {settings}")


def test_mask_box_equals_numpy():
    rng = np.random.default_rng(4)
    masks = [rng.random((5, 6, 7)) > 0.97, np.ones((3, 4, 5), bool), np.zeros((2, 3, 4), bool)]
    masks[2][1, 2, 3] = True  # one voxel, in a corner
    for mask in masks + [m.transpose(2, 0, 1) for m in masks]:  # C order and strided views
        lo, hi = np.empty(3, np.int64), np.empty(3, np.int64)
        assert _glcm_kernels.mask_box(mask, lo, hi) == mask.sum()
        where = np.argwhere(mask)
        np.testing.assert_array_equal(lo, where.min(axis=0))
        np.testing.assert_array_equal(hi, where.max(axis=0) + 1)


def test_count_rows_are_an_odd_number_of_cache_lines():
    for cells in range(1, 5000):
        length = _row_length(cells)
        assert cells <= length < cells + 16 and length % 8 == 0 and (length // 8) % 2 == 1, cells


def test_padded_count_rows_equal_a_direct_count():
    """31 levels + the zero level make rows of 32 x 32 cells, the case the padding is for."""
    image = np.random.default_rng(9).integers(0, 31, (6, 7, 8))
    P, _ = glcm_matrices(image, levels=31, symmetric=False)
    for got, (dz, dy, dx) in zip(P, offsets(3)):
        z, y, x = image.shape
        a = image[max(0, -dz):z - max(0, dz), max(0, -dy):y - max(0, dy), max(0, -dx):x - max(0, dx)]
        b = image[max(0, dz):z + min(0, dz), max(0, dy):y + min(0, dy), max(0, dx):x + min(0, dx)]
        want = np.zeros((31, 31))
        np.add.at(want, (a.ravel(), b.ravel()), 1)
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ batches and the torch path


def test_batch_equals_one_by_one():
    vols = volumes()
    images = [vols["noise"][0], vols["smooth"][0], vols["smooth"][0][2:9, 1:12, 3:15]]  # different Ng and shapes
    masks = [vols["noise"][1], vols["smooth"][1], None]
    batch = glcm_features_batch(images, masks, bin_width=25)
    assert batch.shape == (3, 24) and batch.dtype == np.float64
    for row, image, mask in zip(batch, images, masks):
        single = glcm_features(image, mask, bin_width=25)
        np.testing.assert_allclose(row, [single[n] for n in GLCM_FEATURES], rtol=1e-12)
    subset = glcm_features_batch(images, masks, bin_width=25, features=["MCC", "Contrast"])
    np.testing.assert_allclose(subset, batch[:, [GLCM_FEATURES.index("MCC"), GLCM_FEATURES.index("Contrast")]])


def test_batch_sorts_and_splits_by_grey_levels():
    """A 2D image with 260 levels gets a stack of its own, the others share one; rows keep their order."""
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 8, (20, 20)), rng.integers(0, 260, (40, 40)), rng.integers(0, 3, (9, 9))]
    names = ["Contrast", "Idmn", "JointEntropy", "SumAverage"]  # no MCC: a 260 x 260 eigensolve is slow here
    batch = glcm_features_batch(images, bin_width=1, features=names)
    for row, image in zip(batch, images):
        want = glcm_features(image, bin_width=1, features=names)
        assert row.tolist() == pytest.approx(list(want.values()), rel=1e-12)


def torch_devices():
    torch = pytest.importorskip("torch")
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_torch_path_equals_host_path(device):
    if device not in torch_devices():
        pytest.skip("no CUDA device")
    image, mask = volumes()["smooth"]
    for settings in ({"bin_width": 25}, {"bin_count": 8, "symmetric": False, "distances": (1, 2)}):
        want = glcm_features(image, mask, **settings)
        got = glcm_features(image, mask, device=device, **settings)
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12)
    P, grey = glcm_matrices(IMG4, levels=4, device=device)
    np.testing.assert_array_equal(P, glcm_matrices(IMG4, levels=4)[0])


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "image, mask, message",
    [
        (np.zeros((4, 4)), np.zeros((4, 4)), "mask has no foreground"),
        (np.array([[1.0, np.nan], [2.0, 3.0]]), None, "NaN or inf inside the mask"),
        (np.array([[1.0, np.inf], [2.0, 3.0]]), None, "NaN or inf inside the mask"),
        (np.zeros((4, 4)), np.ones((4, 5)), "differs from image shape"),
        (np.zeros((2, 4, 4)), np.ones((4, 4)), "differs from image shape"),
        (np.zeros(5), None, "2D or 3D"),
        (np.zeros((2, 2, 2, 2)), None, "2D or 3D"),
        (np.zeros((3, 3)), np.eye(3)[::-1] * np.eye(3), "no pair of mask voxels"),
        (np.array([[0, 1], [2, 4_000_000_000]], np.uint32), None, "grey levels in the mask"),  # bin width 25
    ],
)  # fmt: skip
def test_bad_input_raises_feature_error(image, mask, message):
    with pytest.raises(FeatureError, match=message):
        glcm_features(image, mask)


def test_nan_outside_the_mask_is_fine():
    image = checkerboard()
    image[0, 0] = np.nan
    mask = np.ones(image.shape, bool)
    mask[0] = False
    assert math.isfinite(glcm_features(image, mask)["Contrast"])


def test_half_precision_image_equals_its_float32_copy():
    image = np.random.default_rng(4).normal(0, 60, (10, 12, 12)).astype(np.float16)
    assert glcm_features(image, bin_width=10) == glcm_features(image.astype(np.float32), bin_width=10)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"bin_width": 25, "bin_count": 8}, "not both"),
        ({"bin_width": 0}, "bin_width"),
        ({"bin_count": 2.5}, "bin_count"),
        ({"distances": (0,)}, "distances"),
        ({"directions": [4]}, "directions"),
        ({"features": ["Contrast", "Homogeneity1"]}, "unknown GLCM features"),
    ],
)
def test_bad_settings_raise(settings, message):
    with pytest.raises(FeatureError, match=message):
        glcm_features(checkerboard(), **settings)


def test_batch_errors_name_the_image():
    with pytest.raises(FeatureError, match="image 1: mask has no foreground"):
        glcm_features_batch([checkerboard(), checkerboard()], [None, np.zeros((8, 8))])
    with pytest.raises(FeatureError, match="image 1: images in one batch must be all 2D or all 3D"):
        glcm_features_batch([checkerboard(), checkerboard()[None]])
    with pytest.raises(FeatureError, match="one mask"):
        glcm_features_batch([checkerboard()], [None, None])


def test_levels_mode_checks_values():
    with pytest.raises(FeatureError, match="levels=4"):
        glcm_matrices(IMG4 + 1, levels=4)
    with pytest.raises(FeatureError, match="levels=4"):
        glcm_matrices(IMG4.astype(float), levels=4)
    with pytest.raises(FeatureError, match="no bin_width"):
        glcm_matrices(IMG4, levels=4, bin_width=2)


# ------------------------------------------------------------------ scikit-learn estimator


@pytest.mark.parametrize(
    "check",
    [
        estimator_checks.check_get_params_invariance,
        estimator_checks.check_set_params,
        estimator_checks.check_no_attributes_set_in_init,
        estimator_checks.check_parameters_default_constructible,
        estimator_checks.check_estimator_cloneable,
        estimator_checks.check_estimator_repr,
        estimator_checks.check_do_not_raise_errors_in_init_or_set_params,
        estimator_checks.check_mixin_order,
        estimator_checks.check_valid_tag_types,
        estimator_checks.check_estimators_overwrite_params,
        estimator_checks.check_dont_overwrite_parameters,
        estimator_checks.check_fit_check_is_fitted,
    ],
    ids=lambda c: c.__name__,
)
def test_sklearn_estimator_checks(check):
    check("GLCMTexture", GLCMTexture())


def textures(n_per_class=12, seed=0):
    """Two classes of 2D texture: fine noise and smooth blobs, with a circular mask on every other image."""
    rng = np.random.default_rng(seed)
    disc = np.hypot(*(np.indices((24, 24)) - 11.5)) < 10
    X, y = [], []
    for i in range(2 * n_per_class):
        label = i % 2
        image = rng.normal(0, 40, (24, 24))
        if label:
            image = ndimage.gaussian_filter(image, 2) * 5
        X.append((image, disc) if i % 4 < 2 else image)
        y.append(label)
    return X, np.array(y)


def test_transformer_output_and_names():
    X, _ = textures(3)
    est = GLCMTexture(bin_width=10, features=["Contrast", "JointEntropy", "MCC"])
    out = est.fit(X).transform(X)
    assert out.shape == (6, 3) and out.dtype == np.float64
    assert est.get_feature_names_out().tolist() == ["Contrast", "JointEntropy", "MCC"] == est.feature_names_
    assert est.n_features_out_ == 3
    image, mask = X[0]
    assert out[0].tolist() == pytest.approx(list(glcm_features(image, mask, bin_width=10, features=est.features).values()))
    assert GLCMTexture().fit(X).get_feature_names_out().tolist() == list(GLCM_FEATURES)
    stack = np.stack([x[0] if isinstance(x, tuple) else x for x in X])  # an (n, H, W) array is n images
    np.testing.assert_allclose(est.transform(stack)[2:4], out[2:4])


def test_transformer_validates_in_fit_and_needs_fit():
    with pytest.raises(FeatureError, match="not both"):
        GLCMTexture(bin_width=10, bin_count=8).fit([])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        GLCMTexture().transform([checkerboard()])


def test_pipeline_and_grid_search_separate_two_textures():
    X, y = textures()
    pipe = make_pipeline(GLCMTexture(bin_width=10), StandardScaler(), LogisticRegression(max_iter=500))
    assert pipe.fit(X, y).score(X, y) == 1.0
    grid = GridSearchCV(
        make_pipeline(GLCMTexture(features=["Contrast", "Correlation"]), StandardScaler(), LogisticRegression()),
        {"glcmtexture__bin_width": [5, 20], "glcmtexture__distances": [(1,), (1, 2)]},
        cv=3,
    )
    grid.fit(X, y)
    assert grid.best_score_ >= 0.9
    assert clone(grid.best_estimator_).get_params()["glcmtexture__bin_width"] in (5, 20)
