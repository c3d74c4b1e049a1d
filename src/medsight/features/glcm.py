"""Grey-level co-occurrence matrix (GLCM) texture features, 2D and 3D, as pyradiomics and scikit-image define them.

- ``glcm_features`` / ``glcm_features_batch``: the 24 pyradiomics features (``GLCM_FEATURES``), computed
  per offset and averaged over the offsets, as pyradiomics' default (no distance weighting).
- ``glcm_matrices``: the co-occurrence counts; with ``levels=N`` they equal scikit-image's ``graycomatrix``.
- ``graycoprops``: scikit-image's statistics of those matrices.
- ``GLCMTexture``: the scikit-learn transformer over a sequence of images or ``(image, mask)`` pairs.

Choices, written down once:

- Discretisation is pyradiomics' (:func:`medsight.features.levels.discretize`): fixed bin width
  (default 25) with edges on multiples of the width, or fixed bin count with numpy's histogram
  edges; levels are 1-based inside the mask.
- Neighbourhoods (``offsets``): 2D arrays (rows, cols) use scikit-image's four angles; 3D arrays (z, y, x)
  use pyradiomics' neighbours at infinity-norm distance d (13 for d=1, 49 for d=2).
  For d > 1 the two conventions differ; to get pyradiomics' 2D neighbourhood (its ``force2D``), give a 2D
  image as one slice, ``image[None]``.
- A pair counts when both voxels are inside the mask; P[i, j] counts level i at v and level j at v + offset.
  Symmetric matrices add the transpose. Offsets without any pair are left out of the mean, as in
  pyradiomics; an image with no pair at all is an error.
- Only one grey level in the mask (a flat region, or settings that leave one bin): pyradiomics' values,
  which for that level g are Autocorrelation g², JointAverage g, SumAverage 2g, Correlation 1, MCC 1,
  Id = Idm = Idmn = Idn = JointEnergy = MaximumProbability = 1, and 0 for the others, entropies included
  (pyradiomics gives -3.2e-16 there, the trace of its log2(p + eps)). g is 1 with a bin width; with a
  bin count numpy's histogram puts a constant in the middle bin (3 of 4), as in pyradiomics.
- Entropies use 0 log 0 = 0 rather than pyradiomics' log2(p + eps); the values differ by about 1e-15.
  HXY1 = HXY2 = HX + HY without that eps. Imc2 is 0 where rounding would make it imaginary (pyradiomics
  gives NaN in that rare case). MCC comes from a symmetric eigensolver (see ``_glcm_kernels.mcc``) and
  equals the eigenvalue definition to ~1e-15; it differs from pyradiomics by the eps pyradiomics adds to
  px * py inside it: ~1e-9 relative at radiomics sizes, up to ~1e-5 where levels are rare (px py ~ 1e-10,
  as in a 64^3 cube with 70-200 levels).
- The work is done by numba kernels (``_glcm_kernels``): gathering the mask's voxels, counting the pairs,
  and the 24 features of all the matrices of a call at once. With ``device`` ("cuda", or "cpu" for tests)
  the counting, the one step that grows with the volume, runs in torch on that device; the matrices
  (Ng x Ng per offset) then come back to the host for the features, which at radiomics sizes take
  microseconds, less than the kernel launches a device would need for them.
- Speed (32^3 mask of ~10^4 voxels, Ng 35, 13 offsets, ~0.42 ms in all, one thread): MCC is about two
  fifths, a Householder tridiagonalisation and a bisection per matrix; counting (~0.65 ns per pair) a fifth;
  gathering and discretising the voxels, the other 23 features, and the checks and calls about an eighth
  each. Ask for the other features only (``features=``) when MCC is not needed.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np

from medsight.errors import FeatureError
from medsight.features import _glcm_kernels
from medsight.features.levels import _check_binning, _check_finite, _check_input, _digitize

GLCM_FEATURES = (
    "Autocorrelation", "ClusterProminence", "ClusterShade", "ClusterTendency", "Contrast", "Correlation",
    "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance", "Id", "Idm", "Idmn", "Idn", "Imc1", "Imc2",
    "InverseVariance", "JointAverage", "JointEnergy", "JointEntropy", "MCC", "MaximumProbability",
    "SumAverage", "SumEntropy", "SumSquares",
)  # fmt: skip
_MAX_COUNT_BYTES = 2**31  # the counts of one image (int64) beyond which settings are refused as mistaken
SKIMAGE_PROPS = ("contrast", "dissimilarity", "homogeneity", "ASM", "energy", "correlation",
                 "mean", "variance", "std", "entropy")  # fmt: skip


# ---------------------------------------------------------------- neighbourhoods


def offsets(ndim: int, distances: Sequence[int] = (1,)) -> np.ndarray:
    """Pixel steps (n, ndim) between the two members of a pair, distance by distance.

    2D (row, col): scikit-image's angles 0, pi/4, pi/2, 3pi/4 as it applies them,
    (round(sin a * d), round(cos a * d)): (0, d), (r, r), (d, 0), (r, -r) with r = round(0.707 d).
    (Its docs draw pi/2 as "up"; its code steps down a row, and so do we, so the matrices are equal.)
    3D (z, y, x): pyradiomics' neighbours, every step at infinity-norm d in one half-space, in its order
    (13 for d = 1, 49 for d = 2).
    """
    if ndim not in (2, 3):
        raise FeatureError(f"image must be 2D or 3D, got {ndim}D")
    return _offsets(ndim, _check_distances(distances)).copy()


@functools.lru_cache(maxsize=16)
def _offsets(ndim: int, distances: tuple[int, ...]) -> np.ndarray:
    rows = []
    for d in distances:
        if ndim == 2:
            rows += [(round(np.sin(a) * d), round(np.cos(a) * d)) for a in np.arange(4) * np.pi / 4]
        else:
            cube = itertools.product(range(d, -d - 1, -1), repeat=3)  # descending, pyradiomics' order
            rows += [s for s in cube if max(map(abs, s)) == d and s > (0, 0, 0)]
    out = np.array(rows, dtype=np.int64)
    out.flags.writeable = False  # shared by every call
    return out


def _check_distances(distances) -> tuple[int, ...]:
    ds = tuple(np.atleast_1d(np.asarray(distances)).tolist())
    if not ds or not all(isinstance(d, int) and d >= 1 for d in ds):
        raise FeatureError(f"distances must be positive integers, got {distances!r}")
    return ds


def _chosen_offsets(ndim, distances, directions) -> np.ndarray:
    offs = _offsets(ndim, _check_distances(distances))
    if directions is None:
        return offs
    idx = np.atleast_1d(np.asarray(directions))
    if idx.size == 0 or idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= len(offs):
        raise FeatureError(f"directions must be indices into the {len(offs)} offsets, got {directions!r}")
    return offs[idx]


# ---------------------------------------------------------------- the masked voxels as levels


def _level_image(image, mask, pad, binning=None, levels=None):
    """(level_image, voxels, values, n): the mask's bounding box as levels (intp), 0 outside, with `pad`
    zeros around it; the flat indices of the mask's voxels in it; their levels; the highest level.

    The zero border lets every neighbour within `pad` be read without bounds checks: it counts as
    outside. Levels are pyradiomics' discretisation, or with `levels` the image's own values + 1
    (scikit-image's convention), in which case n is `levels`."""
    lo, hi = np.empty(3, dtype=np.int64), np.empty(3, dtype=np.int64)
    count = _glcm_kernels.mask_box(mask.reshape((-1,) + mask.shape[-2:]), lo, hi)  # a 2D mask is one slice
    box = tuple(slice(a, b) for a, b in zip(lo.tolist(), hi.tolist()))[-mask.ndim:]
    image, mask = image[box], mask[box]
    values = np.empty(count, dtype=image.dtype)
    voxels = np.empty(len(values), dtype=np.int64)
    pads = np.array([0 if image.ndim == 2 else pad, pad, pad])  # a 2D image is one slice, unpadded in z
    _glcm_kernels.gather_mask(image.reshape((-1,) + image.shape[-2:]), mask.reshape((-1,) + mask.shape[-2:]),
                              pads, values, voxels)  # fmt: skip
    _check_finite(values)
    if levels is None:
        values = _digitize(values, *binning)
        n = int(values.max())
    else:
        if not (isinstance(levels, (int, np.integer)) and levels >= 1):
            raise FeatureError(f"levels must be a positive integer, got {levels!r}")
        if image.dtype.kind not in "iu" or values.min() < 0 or values.max() >= levels:
            raise FeatureError(f"levels={levels} needs an integer image with values 0..{levels - 1} in the mask")
        values, n = values.astype(np.intp) + 1, int(levels)
    level_image = np.zeros(tuple(d + 2 * pad for d in mask.shape), dtype=np.intp)
    _glcm_kernels.scatter(level_image.reshape(-1), voxels, values)
    return level_image, voxels, values, n


# ---------------------------------------------------------------- counting


def _backend(device):
    """(xp, to_xp): numpy on the host when device is None, else torch on that device."""
    if device is None:
        return np, np.asarray
    import torch

    dev = torch.device(device)
    return torch, lambda a: torch.as_tensor(np.asarray(a), device=dev)


def _to_numpy(x) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


def _count(xp, to_xp, level_image, voxels, values, offs: np.ndarray, n: int):
    """Co-occurrence counts (n_offsets, n, n) from ``_level_image``'s level image, voxels and values.

    Each pair (v, v + offset) counts in cell level(v) * (n+1) + level(v + offset) of its offset's row:
    in one numba pass over the voxels on the CPU, as one gather and one bincount in torch. Column 0
    (a neighbour outside the mask) and row 0 (empty) are then dropped."""
    k = n + 1
    if len(offs) * k * k * 8 > _MAX_COUNT_BYTES:
        raise FeatureError(f"{n} grey levels in the mask: {len(offs)} co-occurrence matrices of {n} x {n} "
                           f"would take {len(offs) * k * k * 8 / 2**30:.1f} GiB; use a larger bin_width or a "
                           f"bin_count")
    strides = np.array(level_image.strides) // level_image.itemsize  # flat index step of each axis
    shifts = offs @ strides  # all > 0: the offsets lie in one half-space, and so v + shift is in range
    flat = level_image.reshape(-1)
    if xp is np:
        counts = np.zeros((len(shifts), _row_length(k * k)), dtype=np.intp)
        _glcm_kernels.count_pairs(flat, voxels, shifts, k, counts)
        counts = counts[:, : k * k]
    else:  # torch, meant for a GPU: all shifts in one gather and one bincount
        flat, v, shifts = to_xp(flat), to_xp(voxels), to_xp(shifts)
        codes = xp.take(flat, v[None, :] + shifts[:, None]) + to_xp(values * k)[None, :]
        codes += (xp.arange(len(shifts), device=flat.device) * (k * k))[:, None]
        counts = xp.bincount(codes.reshape(-1), minlength=len(shifts) * k * k)
    return counts.reshape(len(offs), k, k)[:, 1:, 1:]


def _row_length(cells: int) -> int:
    """Length of a counts row (int64) of at least `cells`: a whole, odd number of 64-byte lines.

    In a smooth region the offsets of one voxel increment the same cell of each matrix. Rows a
    multiple of 4 KiB apart (32 x 32 cells, Ng 31) put those cells in one set of the L1 cache, more
    than it holds at once: counting was 3x slower there. An odd number of lines apart, the cells of
    up to 64 matrices fall in different sets."""
    lines = -(-cells // 8)
    return 8 * (lines + 1 - lines % 2)


# ---------------------------------------------------------------- matrices


def glcm_matrices(image, mask=None, *, distances=(1,), directions=None, bin_width=None, bin_count=None,
                  levels=None, symmetric=True, device=None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Co-occurrence counts P (n_offsets, Ng, Ng), float64, and the grey level of each row.

    Offsets are ``offsets(image.ndim, distances)``, or the rows ``directions`` picks from it.
    ``levels=N``: the image already holds integers 0..N-1 (scikit-image's convention): no discretisation,
    no level removal, rows are levels 0..N-1, and P equals ``graycomatrix(image, distances, angles, N,
    symmetric)`` (levels, levels, n_dist, n_angle) moved to (n_dist * n_angle, levels, levels).
    Otherwise pyradiomics' convention: discretise (``discretize``), then drop the levels absent from the mask.
    """
    image, mask = _check_input(image, mask)
    offs = _chosen_offsets(image.ndim, distances, directions)
    if levels is not None and (bin_width, bin_count) != (None, None):
        raise FeatureError("levels=N takes the image's values as levels: give no bin_width or bin_count")
    binning = None if levels is not None else _check_binning(bin_width, bin_count)
    level_image, voxels, values, n = _level_image(image, mask, int(np.abs(offs).max()), binning, levels)
    xp, to_xp = _backend(device)
    counts = _to_numpy(_count(xp, to_xp, level_image, voxels, values, offs, n)).astype(np.float64)
    if symmetric:
        counts = counts + counts.swapaxes(1, 2)
    if levels is not None:
        return counts, np.arange(levels)
    present = np.flatnonzero(np.bincount(values))  # pyradiomics drops the levels absent from the mask
    keep = present - 1
    return counts[:, keep][:, :, keep], present


# ---------------------------------------------------------------- features


def _check_features(features) -> tuple[str, ...]:
    if features is None:
        return GLCM_FEATURES
    names = (features,) if isinstance(features, str) else tuple(features)
    unknown = [f for f in names if f not in GLCM_FEATURES]
    if unknown or not names:
        raise FeatureError(f"unknown GLCM features {unknown}; choose from {', '.join(GLCM_FEATURES)}")
    return names


def glcm_features_batch(images, masks=None, *, distances=(1,), directions=None, bin_width=None, bin_count=None,
                        symmetric=True, features=None, device=None) -> np.ndarray:  # fmt: skip
    """Features of many images: (n_images, n_features) float64, columns in ``features`` order.

    Each image is discretised and counted on its own; the feature maths then runs on stacks of
    matrices, many images and all their offsets at once (images sorted by Ng and padded to the
    largest Ng of their stack, stacks of ~0.5 MB so that the temporaries stay in cache).
    Images must be all 2D or all 3D; ``masks`` is None or one mask (or None) per image.
    Errors name the image's index.
    """
    images = list(images)
    masks = [None] * len(images) if masks is None else list(masks)
    if len(masks) != len(images) or not images:
        raise FeatureError(f"need one mask (or None) per image, got {len(images)} images and {len(masks)} masks")
    names = _check_features(features)
    binning = _check_binning(bin_width, bin_count)
    xp, to_xp = _backend(device)
    counted, offs = [], None
    for idx, (image, mask) in enumerate(zip(images, masks)):
        try:
            image, mask = _check_input(image, mask)
            offs = _chosen_offsets(image.ndim, distances, directions) if offs is None else offs
            if image.ndim != offs.shape[1]:
                raise FeatureError("images in one batch must be all 2D or all 3D")
            counted.append(_counted(xp, to_xp, image, mask, offs, binning))
        except FeatureError as err:
            raise FeatureError(f"image {idx}: {err}") from None
    if len(counted) == 1:
        return _stack_features(counted, symmetric, names)
    out = np.empty((len(images), len(names)))
    for run in _stacks([counts.shape[0] * n * n for counts, n, _ in counted], budget=2**16):
        out[run] = _stack_features([counted[i] for i in run], symmetric, names)
    return out


def _counted(xp, to_xp, image, mask, offs, binning):
    """(counts (n_offsets, n, n), n, whether the mask holds one grey level) of one checked image."""
    level_image, voxels, values, n = _level_image(image, mask, int(np.abs(offs).max()), binning)
    counts = _to_numpy(_count(xp, to_xp, level_image, voxels, values, offs, n))
    if not counts.any():
        raise FeatureError("no pair of mask voxels at these distances and directions")
    return counts, n, int(values.min()) == n


def _stacks(sizes, budget):
    """Indices in runs of similar size: sorted by size, a run grows while its padded stack
    (run length x largest size) stays within budget; a larger item gets a run of its own."""
    run = []
    for i in np.argsort(sizes, kind="stable"):
        if run and (len(run) + 1) * sizes[i] > budget:
            yield run
            run = []
        run.append(i)
    yield run


def _stack_features(counted, symmetric, names) -> np.ndarray:
    """(n_images, n_features): the features of every offset of every image in one kernel call
    (``_glcm_kernels.texture``), then, as pyradiomics by default, their mean over the offsets that
    have at least one pair."""
    n_off, n_max = counted[0][0].shape[0], max(n for _, n, _ in counted)
    if len(counted) == 1:
        stack = counted[0][0]
    else:
        # padded to the largest Ng: the zero rows and columns are absent levels, which change no feature
        stack = np.zeros((len(counted), n_off, n_max, n_max), dtype=counted[0][0].dtype)
        for row, (counts, n, _) in zip(stack, counted):
            row[:, :n, :n] = counts
        stack = stack.reshape(-1, n_max, n_max)
    n_levels = np.repeat(np.array([n for _, n, _ in counted], dtype=np.float64), n_off)
    single = np.repeat(np.array([one for _, _, one in counted]), n_off)
    values = np.empty((len(stack), len(GLCM_FEATURES)))
    _glcm_kernels.texture(stack, bool(symmetric), n_levels, single, "MCC" in names, values)
    valid = ~np.isnan(values[:, _glcm_kernels.JOINT_ENERGY]).reshape(len(counted), n_off, 1)  # has pairs
    if names != GLCM_FEATURES:
        values = values[:, [GLCM_FEATURES.index(name) for name in names]]
    values = values.reshape(len(counted), n_off, -1)
    return np.where(valid, values, 0.0).sum(axis=1) / valid.sum(axis=1)


def glcm_features(image, mask=None, *, distances=(1,), directions=None, bin_width=None, bin_count=None,
                  symmetric=True, features=None, device=None) -> dict[str, float]:  # fmt: skip
    """pyradiomics' GLCM features of one image: {name: value}, as RadiomicsGLCM.execute() with the same settings.

    ``features`` restricts the output to those names (MCC, the one costly feature, is skipped when not
    asked for). See the module docstring for the conventions and the one-grey-level values.
    """
    names = _check_features(features)
    row = glcm_features_batch([image], [mask], distances=distances, directions=directions, bin_width=bin_width,
                              bin_count=bin_count, symmetric=symmetric, features=names, device=device)[0]  # fmt: skip
    return dict(zip(names, row.tolist()))


# ---------------------------------------------------------------- scikit-image statistics


def graycoprops(P, prop: str = "contrast") -> np.ndarray:
    """scikit-image's ``graycoprops`` for matrices (n_offsets, N, N) from ``glcm_matrices(..., levels=N)``.

    Same definitions as scikit-image 0.26: each matrix normalised to sum 1 (an empty one stays 0),
    levels counted from 0, 'mean' / 'variance' / 'std' of the row level, natural-log 'entropy',
    'correlation' 1 where a standard deviation is below 1e-15. Returns one value per offset.
    """
    if prop not in SKIMAGE_PROPS:
        raise ValueError(f"{prop} is an invalid property; choose from {', '.join(SKIMAGE_PROPS)}")
    P = np.asarray(P, dtype=np.float64)
    if P.ndim == 2:
        P = P[None]
    if P.ndim != 3 or P.shape[1] != P.shape[2]:
        raise ValueError(f"P must be (n_offsets, N, N), got shape {P.shape}")
    total = P.sum(axis=(1, 2), keepdims=True)
    P = P / np.where(total == 0, 1, total)
    i = np.arange(P.shape[1], dtype=np.float64)
    if prop in ("contrast", "dissimilarity", "homogeneity"):
        diff = i[:, None] - i[None, :]
        w = {"contrast": diff**2, "dissimilarity": np.abs(diff), "homogeneity": 1 / (1 + diff**2)}[prop]
        return (P * w).sum(axis=(1, 2))
    if prop in ("ASM", "energy"):
        asm = (P * P).sum(axis=(1, 2))
        return asm if prop == "ASM" else np.sqrt(asm)
    if prop == "entropy":
        return -(P * np.log(np.where(P > 0, P, 1))).sum(axis=(1, 2))
    px, py = P.sum(axis=2), P.sum(axis=1)
    mean_i, mean_j = px @ i, py @ i
    di, dj = i[None, :] - mean_i[:, None], i[None, :] - mean_j[:, None]
    var_i = (px * di * di).sum(axis=1)
    if prop in ("mean", "variance", "std"):
        return {"mean": mean_i, "variance": var_i, "std": np.sqrt(var_i)}[prop]
    std_i, std_j = np.sqrt(var_i), np.sqrt((py * dj * dj).sum(axis=1))
    cov = np.einsum("mij,mi,mj->m", P, di, dj)
    flat = (std_i < 1e-15) | (std_j < 1e-15)
    return np.where(flat, 1.0, cov / np.where(flat, 1.0, std_i * std_j))


# ---------------------------------------------------------------- scikit-learn estimator


def __getattr__(name):
    # GLCMTexture lives in ``estimators`` so that ``medsight features`` does not import
    # scikit-learn (about a second); ``from medsight.features.glcm import GLCMTexture`` works.
    if name == "GLCMTexture":
        from medsight.features.estimators import GLCMTexture

        return GLCMTexture
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
