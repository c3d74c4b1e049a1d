"""Numba kernels of the GLCM features (:mod:`medsight.features.glcm`).

- ``mask_box``: the bounding box and size of the mask, in one pass;
- ``gather_mask``, ``scatter``: the values and padded flat indices of the mask's voxels, in one pass, and
  their levels written back into the padded level image;
- ``count_pairs``: the co-occurrence counts of every offset, in one pass over the mask's voxels
  (on the host; with a torch device, ``glcm._count`` counts there instead);
- ``texture``: pyradiomics' 24 features of every matrix of a stack, a few passes over each;
- ``mcc``: the maximal correlation coefficient of every matrix of a stack, by Householder
  tridiagonalisation and Sturm bisection, the matrices reduced side by side.

At radiomics sizes (Ng ~ 40, 13 offsets) they replace many small numpy and LAPACK calls, whose
per-call overhead was most of the time. Only ``texture`` reassociates sums (fastmath); the
eigensolver keeps IEEE arithmetic, which the bisection's exact comparisons rely on. The first
call compiles them (about 7 s); numba caches the machine code under ``__pycache__`` for the next.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_GROUP = 32  # matrices reduced side by side at most; fewer are padded to a multiple of 8 lanes
_BISECTIONS = 56  # halvings of an interval of width <= 4: below the spacing of doubles in [-1, 1]


@numba.njit(cache=True)
def mask_box(mask, lo, hi):
    """The number of voxels of the mask (z, y, x) and its bounding box, lo[axis] <= index < hi[axis],
    in one pass (instead of reductions along each axis and a count). The x extent comes from the
    rows OR-ed together, which vectorises where searching each row's ends does not."""
    nz, ny, nx = mask.shape
    columns = np.zeros(nx, np.uint8)
    lo[0], lo[1], hi[0], hi[1] = nz, ny, 0, 0
    count = 0
    for z in range(nz):
        for y in range(ny):
            row = 0
            for x in range(nx):
                inside = np.uint8(mask[z, y, x])
                row += inside
                columns[x] |= inside
            if row:
                count += row
                lo[0], hi[0] = min(lo[0], z), z + 1
                lo[1], hi[1] = min(lo[1], y), max(hi[1], y + 1)
    lo[2], hi[2] = nx, 0
    for x in range(nx):
        if columns[x]:
            lo[2], hi[2] = min(lo[2], x), x + 1
    return count


@numba.njit(cache=True)
def gather_mask(image, mask, pads, values, voxels):
    """values[j] = the j-th voxel of the mask in C order, voxels[j] = its flat index in the array
    of the mask's shape padded by pads (z, y, x) on both sides: one pass instead of a boolean
    index, a padded copy of the mask and a flatnonzero of it."""
    nz, ny, nx = mask.shape
    wide_y, wide_x = ny + 2 * pads[1], nx + 2 * pads[2]
    j = 0
    for z in range(nz):
        for y in range(ny):
            start = ((z + pads[0]) * wide_y + y + pads[1]) * wide_x + pads[2]
            for x in range(nx):
                if mask[z, y, x]:
                    values[j] = image[z, y, x]
                    voxels[j] = start + x
                    j += 1


@numba.njit(cache=True)
def count_pairs(flat, voxels, shifts, k, counts):
    """counts[o, a * k + b] += 1 for each voxel v of `voxels` with level a = flat[v] and b = flat[v + shifts[o]].

    Voxel by voxel, all offsets at a time: consecutive increments then go to different matrices,
    so they do not wait on each other as a run of equal pairs within one matrix would. flat, voxels
    and shifts (int64, none negative) are read as unsigned: numba then leaves out its wrap-around
    of negative indices, which made the loop 1.6x slower."""
    flat, voxels, shifts, k = flat.view(np.uint64), voxels.view(np.uint64), shifts.view(np.uint64), np.uint64(k)
    for i in range(len(voxels)):
        v = voxels[i]
        a = flat[v] * k
        for o in range(len(shifts)):
            counts[o, a + flat[v + shifts[o]]] += 1


@numba.njit(cache=True)
def scatter(flat, voxels, values):
    """flat[voxels[j]] = values[j]: numpy's fancy assignment takes twice as long."""
    for j in range(len(voxels)):
        flat[voxels[j]] = values[j]


# columns of `texture`'s output: glcm.GLCM_FEATURES, pyradiomics' names in alphabetical order
(AUTOCORRELATION, CLUSTER_PROMINENCE, CLUSTER_SHADE, CLUSTER_TENDENCY, CONTRAST, CORRELATION,
 DIFFERENCE_AVERAGE, DIFFERENCE_ENTROPY, DIFFERENCE_VARIANCE, ID, IDM, IDMN, IDN, IMC1, IMC2,
 INVERSE_VARIANCE, JOINT_AVERAGE, JOINT_ENERGY, JOINT_ENTROPY, MCC, MAXIMUM_PROBABILITY,
 SUM_AVERAGE, SUM_ENTROPY, SUM_SQUARES) = range(24)  # fmt: skip
_EPS = np.spacing(1.0)  # pyradiomics' epsilon, kept where it changes a value (Correlation's denominator)


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def texture(counts, symmetric, n_levels, single, with_mcc, out):
    """out[i] = pyradiomics' 24 GLCM features of the integer counts counts[i] (columns as the constants
    above), or of counts[i] + counts[i].T when `symmetric`.

    Row/column j holds grey level j + 1 (absent levels are zero rows; they change no feature, and
    after the first pass over a matrix its zero rows are skipped).
    n_levels[i] is pyradiomics' Ng (the highest level, for Idmn and Idn); single[i] marks a mask with
    one grey level, whose MCC pyradiomics defines as 1. MCC is computed only `with_mcc` (it costs as
    much as the others together). An empty matrix gives NaN.
    Entropies take 0 log 0 = 0, and HXY1 = HXY2 = HX + HY without pyradiomics' eps.
    Sums may be reassociated (fastmath), so that the loops over a row vectorise."""
    m, n = counts.shape[0], counts.shape[1]
    p = np.empty((m, n, n))
    px = np.empty((m, n))
    py = np.empty((m, n))
    # integer counts of a row (symmetrised), the rows, the columns, each level sum a + b and
    # difference |a - b|: their entropies come from _information, which needs counts, not probabilities
    row_counts = np.empty(n, counts.dtype)
    x_counts = np.empty(n, counts.dtype)
    y_counts = np.empty(n, counts.dtype)
    sum_counts = np.empty(2 * n - 1, counts.dtype)  # [s]: level sum s + 2
    diff_counts = np.empty(n, counts.dtype)  # [k]: level difference k
    for i in range(m):
        total = counts[i].sum()
        if total == 0:
            out[i] = np.nan
            p[i], px[i], py[i] = 0.0, 0.0, 0.0
            continue
        pairs = 2 * total if symmetric else total
        inverse, log_pairs = 1 / pairs, math.log2(pairs)
        y_counts[:] = 0
        sum_counts[:] = 0
        diff_counts[:] = 0
        energy = entropy = auto = 0.0
        peak = 0  # the largest count: an integer maximum vectorises, a float one (NaN rules) does not
        for a in range(n):
            x_count = 0
            weighted = 0.0
            for b in range(n):
                c = counts[i, a, b] + counts[i, b, a] if symmetric else counts[i, a, b]
                row_counts[b] = c
                peak = max(peak, c)
                x_count += c
                y_counts[b] += c
                v = c * inverse
                p[i, a, b] = v
                weighted += v * (b + 1)
                energy += v * v
            x_counts[a] = x_count
            auto += weighted * (a + 1)
            if x_count == 0:  # an absent level (a nodule's HU range often has many): nothing below to add
                continue
            for b in range(n):  # the sums a + b of row a are consecutive, and so are its b - a >= 0
                sum_counts[a + b] += row_counts[b]
            for b in range(a, n):
                diff_counts[b - a] += row_counts[b]
            for b in range(a):
                diff_counts[a - b] += row_counts[b]
            for b in range(a + 1 if symmetric else n):  # a symmetric matrix: one triangle, twice
                entropy += (2.0 if symmetric and b < a else 1.0) * _information(row_counts[b], inverse, log_pairs)
        ux = uy = 0.0
        for a in range(n):
            px[i, a], py[i, a] = x_counts[a] * inverse, y_counts[a] * inverse
            ux += px[i, a] * (a + 1)
            uy += py[i, a] * (a + 1)
        var_x = var_y = cov = hx = hy = 0.0
        for a in range(n):
            dx, dy = a + 1 - ux, a + 1 - uy
            var_x += px[i, a] * dx * dx
            var_y += py[i, a] * dy * dy
            hx += _information(x_counts[a], inverse, log_pairs)
            hy += _information(y_counts[a], inverse, log_pairs)
            if x_counts[a] > 0:
                row = 0.0
                for b in range(n):
                    row += p[i, a, b] * (b + 1 - uy)
                cov += row * dx
        f = out[i]
        f[AUTOCORRELATION], f[JOINT_AVERAGE], f[SUM_SQUARES] = auto, ux, var_x
        f[JOINT_ENERGY], f[JOINT_ENTROPY], f[MAXIMUM_PROBABILITY] = energy, entropy, peak * inverse
        sxy = math.sqrt(var_x) * math.sqrt(var_y)
        f[CORRELATION] = 1.0 if sxy == 0 else cov / (sxy + _EPS)
        tendency = shade = prominence = average = sum_entropy = 0.0
        for s in range(2 * n - 1):
            t = s + 2 - ux - uy
            p_sum = sum_counts[s] * inverse
            t2 = p_sum * t * t
            tendency += t2
            shade += t2 * t
            prominence += t2 * t * t
            average += p_sum * (s + 2)
            sum_entropy += _information(sum_counts[s], inverse, log_pairs)
        f[CLUSTER_TENDENCY], f[CLUSTER_SHADE], f[CLUSTER_PROMINENCE] = tendency, shade, prominence
        f[SUM_AVERAGE], f[SUM_ENTROPY] = average, sum_entropy
        contrast = diff_average = inv_diff = inv_diff_moment = inv_variance = diff_entropy = 0.0
        idmn = idn = 0.0
        for k in range(n):
            p_diff = diff_counts[k] * inverse
            contrast += p_diff * k * k
            diff_average += p_diff * k
            inv_diff += p_diff / (1 + k)
            inv_diff_moment += p_diff / (1 + k * k)
            if k > 0:
                inv_variance += p_diff / (k * k)
            diff_entropy += _information(diff_counts[k], inverse, log_pairs)
            ratio = k / n_levels[i]
            idmn += p_diff / (1 + ratio * ratio)
            idn += p_diff / (1 + ratio)
        diff_variance = 0.0
        for k in range(n):
            diff_variance += diff_counts[k] * inverse * (k - diff_average) * (k - diff_average)
        f[CONTRAST], f[DIFFERENCE_AVERAGE], f[DIFFERENCE_VARIANCE] = contrast, diff_average, diff_variance
        f[ID], f[IDM], f[INVERSE_VARIANCE] = inv_diff, inv_diff_moment, inv_variance
        f[DIFFERENCE_ENTROPY] = diff_entropy
        f[IDMN], f[IDN] = idmn, idn
        # the mutual information is HX + HY - HXY once the eps is gone
        div = max(hx, hy)
        f[IMC1] = (entropy - hx - hy) / div if div > 0 else 0.0
        f[IMC2] = math.sqrt(max(1 - math.exp(-2 * (hx + hy - entropy)), 0.0))
        f[MCC] = 1.0 if single[i] else np.nan
    if with_mcc:
        values = np.empty(m)
        mcc(p, px, py, values)
        for i in range(m):
            if not (single[i] or np.isnan(out[i, JOINT_ENERGY])):  # not one level, not empty
                out[i, MCC] = values[i]


_LOG2 = np.log2(np.maximum(np.arange(4096), 1))  # log2 of the counts a matrix mostly holds, looked up


@numba.njit(cache=True)
def _information(count, inverse, log_pairs):
    """-p log2 p of a cell (or marginal) holding `count` of the pairs, p = count * inverse; 0 at p = 0.

    As p (log2 pairs - log2 count): the logarithm of an integer below 4096 is a table look-up, where
    log2 p of each cell was most of the features' time."""
    if count <= 0:
        return 0.0
    log_count = _LOG2[count] if count < len(_LOG2) else math.log2(count)
    return count * inverse * (log_pairs - log_count)


@numba.njit(cache=True)
def mcc(p, px, py, out):
    """out[i] = the maximal correlation coefficient of the joint distribution p[i] (marginals px[i], py[i]).

    pyradiomics' MCC is sqrt of the second largest eigenvalue of Q = Dx^-1 P Dy^-1 P^T. On the levels
    that occur, Q is similar to S = A A^T with A = Dx^-1/2 P Dy^-1/2, whose top eigenvalue is 1 with
    eigenvector u = sqrt(px); so MCC^2 is the spectral radius of S - u u^T. When p[i] is symmetric
    (a symmetric GLCM), S = A^2 and MCC is the spectral radius of A - u u^T itself: no product, no
    square root.

    The matrices are reduced up to _GROUP at a time side by side, in the lanes of w[row, col, lane]:
    at Ng ~ 40 a loop over one matrix's row is too short to run fast, a loop over the lanes is not.
    Only the levels that occur are kept (the cost grows as their number cubed, and a nodule's
    matrices often miss some of its Ng levels: 51 of 60 in a large LIDC one), and a matrix with
    fewer of them than the largest of its group is padded with eigenvalues -2, below all of its own
    (which lie in [-1, 1]); so are the spare lanes of the last group."""
    m = p.shape[0]
    lanes = min(_GROUP, (m + 7) // 8 * 8)
    levels = np.zeros(m + lanes, np.int64)  # the levels that occur in each matrix (0 for the spare lanes)
    for i in range(m):
        levels[i] = np.count_nonzero(px[i] > 0)
    buffer = np.empty(max(levels.max(), 1) ** 2 * lanes)
    size = np.empty(lanes, np.int64)
    squared = np.empty(lanes, np.bool_)  # the lane holds S - u u^T: MCC is the root of its radius
    for first in range(0, m, lanes):
        # the group's matrices without the levels absent from all of them (at least one row: a group of
        # empty matrices, whose values are not used, still makes a matrix)
        n = max(levels[first:first + lanes].max(), 1)
        w = buffer[: n * n * lanes].reshape(n, n, lanes)
        for lane in range(lanes):  # only lower triangles are written: only they are read
            i = first + lane
            r = 0
            if i < m:
                rows = np.flatnonzero(px[i] > 0)
                r = len(rows)
                u = np.sqrt(px[i, rows])
                squared[lane] = not _is_symmetric(p[i])
                if squared[lane]:
                    cols = np.flatnonzero(py[i] > 0)
                    a = np.empty((r, len(cols)))
                    for s in range(r):
                        for c in range(len(cols)):
                            a[s, c] = p[i, rows[s], cols[c]] / (u[s] * math.sqrt(py[i, cols[c]]))
                    for s in range(r):
                        for t in range(s + 1):
                            product = 0.0
                            for c in range(len(cols)):
                                product += a[s, c] * a[t, c]
                            w[s, t, lane] = product - u[s] * u[t]
                else:
                    rx = 1 / u
                    for s in range(r):
                        for t in range(s + 1):
                            w[s, t, lane] = p[i, rows[s], rows[t]] * rx[s] * rx[t] - u[s] * u[t]
            size[lane] = r
            for s in range(r, n):
                for t in range(s):
                    w[s, t, lane] = 0.0
                w[s, s, lane] = -2.0
        d, e2 = _tridiagonalise(w)
        smallest, largest = _spectrum_ends(d, e2, n - size)
        for i in range(first, min(first + lanes, m)):
            lane = i - first
            radius = max(largest[lane], -smallest[lane], 0.0)
            out[i] = math.sqrt(radius) if squared[lane] else radius


@numba.njit(cache=True)
def _is_symmetric(a):
    for s in range(len(a)):
        for t in range(s):
            if a[s, t] != a[t, s]:
                return False
    return True


@numba.njit(cache=True)
def _tridiagonalise(w):
    """Householder reduction of the symmetric matrices w[:, :, lane] (their lower triangles are read
    and overwritten) to their diagonals d and squared off-diagonals e2 (row, lane); e2[j] couples
    rows j and j + 1."""
    n, _, lanes = w.shape
    d = np.zeros((n, lanes))
    e2 = np.zeros((n, lanes))
    v = np.zeros((n, lanes))
    q = np.zeros((n, lanes))
    beta = np.empty(lanes)
    half = np.empty(lanes)
    for k in range(n - 2):
        # reflector H = I - beta v v^T with v = x - alpha e1 maps column k's tail x onto alpha e1;
        # beta = 2 / |v|^2, or 0 where the tail is already zero (nothing to reflect)
        for lane in range(lanes):
            x0 = w[k + 1, k, lane]
            norm2 = 0.0
            for j in range(k + 1, n):
                norm2 += w[j, k, lane] * w[j, k, lane]
            alpha = -math.copysign(math.sqrt(norm2), x0)
            d[k, lane] = w[k, k, lane]
            e2[k, lane] = norm2
            v[k + 1, lane] = x0 - alpha
            beta[lane] = 1.0 / (norm2 - x0 * alpha) if norm2 > 0.0 else 0.0
        for j in range(k + 2, n):
            for lane in range(lanes):
                v[j, lane] = w[j, k, lane]
        # trailing block B <- H B H = B - v z^T - z v^T with z = q - (beta v.q / 2) v, q = beta B v;
        # B is read and updated in its lower triangle only (half the memory traffic)
        for s in range(k + 1, n):
            for lane in range(lanes):
                q[s, lane] = w[s, s, lane] * v[s, lane]
        for s in range(k + 2, n):
            for t in range(k + 1, s):
                for lane in range(lanes):
                    q[s, lane] += w[s, t, lane] * v[t, lane]
                    q[t, lane] += w[s, t, lane] * v[s, lane]
        for lane in range(lanes):
            half[lane] = 0.0
        for s in range(k + 1, n):
            for lane in range(lanes):
                q[s, lane] *= beta[lane]
                half[lane] += v[s, lane] * q[s, lane]
        for lane in range(lanes):
            half[lane] *= 0.5 * beta[lane]
        for s in range(k + 1, n):
            for lane in range(lanes):
                q[s, lane] -= half[lane] * v[s, lane]
        for s in range(k + 1, n):
            for t in range(k + 1, s + 1):
                for lane in range(lanes):
                    w[s, t, lane] -= v[s, lane] * q[t, lane] + q[s, lane] * v[t, lane]
    for lane in range(lanes):
        if n >= 2:
            d[n - 2, lane] = w[n - 2, n - 2, lane]
            e2[n - 2, lane] = w[n - 1, n - 2, lane] * w[n - 1, n - 2, lane]
        d[n - 1, lane] = w[n - 1, n - 1, lane]
    return d, e2


@numba.njit(cache=True)
def _spectrum_ends(d, e2, padding):
    """(smallest, largest) eigenvalue in each lane of the tridiagonal matrices (d, e2) (row, lane),
    whose eigenvalues lie in [-2, 2]; padding[lane] of them are the padding's -2, below all others.

    Bisection on Sturm counts (how many eigenvalues lie below x), both ends of every lane side by
    side: each count is a chain of divisions, and the lanes let those chains overlap."""
    n, lanes = d.shape
    lo = np.full((2, lanes), -2.0)  # [0]: the smallest eigenvalue's bracket, [1]: the largest's
    hi = np.full((2, lanes), 2.0)
    x = np.empty((2, lanes))
    q = np.empty((2, lanes))
    below = np.empty((2, lanes), np.int64)
    tiny = np.finfo(np.float64).tiny
    for _ in range(_BISECTIONS):
        for end in range(2):
            for lane in range(lanes):
                x[end, lane] = 0.5 * (lo[end, lane] + hi[end, lane])
                q[end, lane] = d[0, lane] - x[end, lane]
                below[end, lane] = q[end, lane] < 0.0
        for j in range(1, n):
            for end in range(2):
                for lane in range(lanes):
                    prev = q[end, lane] if q[end, lane] != 0.0 else -tiny
                    q[end, lane] = d[j, lane] - x[end, lane] - e2[j - 1, lane] / prev
                    below[end, lane] += q[end, lane] < 0.0
        # x lies below the sought eigenvalue while at most `target` eigenvalues lie below x: the
        # padding's alone for the smallest, all but one for the largest
        for end in range(2):
            for lane in range(lanes):
                target = padding[lane] if end == 0 else n - 1
                if below[end, lane] <= target:
                    lo[end, lane] = x[end, lane]
                else:
                    hi[end, lane] = x[end, lane]
    ends = 0.5 * (lo + hi)
    return ends[0], ends[1]
