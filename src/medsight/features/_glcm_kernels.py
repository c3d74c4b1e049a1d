"""Numba kernels of the GLCM features' CPU path (:mod:`medsight.features.glcm`, ``device=None``).

- ``count_pairs``: the co-occurrence counts of every offset, in one pass over the mask's voxels;
- ``mcc``: the maximal correlation coefficient of every matrix of a stack, by Householder
  tridiagonalisation and Sturm bisection, the matrices bisected side by side.

At radiomics sizes (Ng ~ 40, 13 offsets) both replace many small numpy or LAPACK calls, whose
per-call overhead was most of the time. No fastmath: the bisection relies on exact comparisons.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_GROUP = 32  # matrices reduced side by side at most; fewer are padded to a multiple of 8 lanes
_BISECTIONS = 56  # halvings of an interval of width <= 4: below the spacing of doubles in [-1, 1]


@numba.njit(cache=True)
def count_pairs(flat, voxels, shifts, k, counts):
    """counts[o, a * k + b] += 1 for each voxel v of `voxels` with level a = flat[v] and b = flat[v + shifts[o]].

    Voxel by voxel, all offsets at a time: consecutive increments then go to different matrices,
    so they do not wait on each other as a run of equal pairs within one matrix would."""
    m = len(shifts)
    for i in range(len(voxels)):
        v = voxels[i]
        a = flat[v] * k
        for o in range(m):
            counts[o, a + flat[v + shifts[o]]] += 1


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
    A matrix with fewer levels than n is padded with eigenvalues -2, below all of its own (which lie
    in [-1, 1]); so are the spare lanes of the last group."""
    m, n = p.shape[0], p.shape[1]
    lanes = min(_GROUP, (m + 7) // 8 * 8)
    w = np.empty((n, n, lanes))
    size = np.empty(lanes, np.int64)
    squared = np.empty(lanes, np.bool_)  # the lane holds S - u u^T: MCC is the root of its radius
    for first in range(0, m, lanes):
        w[:] = 0.0
        size[:] = 0
        for i in range(first, min(first + lanes, m)):
            lane = i - first
            rows = np.flatnonzero(px[i] > 0)
            cols = np.flatnonzero(py[i] > 0)
            r = len(rows)
            size[lane] = r
            a = np.empty((r, len(cols)))
            for s in range(r):
                for t in range(len(cols)):
                    a[s, t] = p[i, rows[s], cols[t]] / math.sqrt(px[i, rows[s]] * py[i, cols[t]])
            squared[lane] = not _is_symmetric(p[i])
            if squared[lane]:
                a = a @ a.T
            u = np.sqrt(px[i, rows])
            for s in range(r):
                for t in range(s + 1):
                    w[s, t, lane] = a[s, t] - u[s] * u[t]
        for lane in range(lanes):
            for j in range(size[lane], n):
                w[j, j, lane] = -2.0
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
