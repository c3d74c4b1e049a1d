"""Numba kernels of the Fisher-vector encoder (:mod:`medsight.features.fisher`).

The encoder's one dense step, the float32 screening product of the log-likelihoods, stays with
BLAS; these kernels do everything around it in one pass each, so that the near-hard posteriors of
CNN descriptors (about 1.3 components above 1e-4 per descriptor) cost what they touch:

- ``screen_input``: a = [x, x^2, 1] in float32, the screen's left operand;
- ``sparse_posteriors``: the posteriors from the screened logits, redone exactly in float64 where
  float32 rounding could matter, as (row, component, posterior) triples;
- ``accumulate``: the gradient sums of those triples into the codes;
- ``finish``: IFV's signed square root and L2 normalisation.

``fastmath`` allows only reassociation and contraction (so that LLVM vectorises the sums); NaN and
infinity keep their meaning, which the finiteness checks rely on.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_FAST = {"reassoc", "contract"}
# components this far (nats) below the top count as 0: e^-50 ~ 2e-22, far below any tolerance
_FAR = 50.0


@numba.njit(cache=True, fastmath=_FAST)
def screen_input(x, a):
    """a[:n] = [x, x^2, 1] in float32 (x^2 squared in float64, then rounded once)."""
    n, d = x.shape
    for t in range(n):
        for j in range(d):
            a[t, j] = x[t, j]
            a[t, d + j] = x[t, j] * x[t, j]
        a[t, 2 * d] = 1.0


@numba.njit(cache=True, fastmath=_FAST)
def sparse_posteriors(logit, x, wmax2, bound, mu, isd, c, min_posterior, tol, rows, comps, vals):
    """Posteriors of the rows of x, as triples in rows / comps / vals; returns their number, or
    -1 - t when row t has NaN, infinite or too large values.

    logit: the float32 screen (n, K), off by at most err(t) = bound[0] (bound[1] |x| + x^2 . wmax2)
    + bound[2] in each entry. A row is kept from the screen when that error cannot move its
    posteriors by tol in all nor one of them across min_posterior; with min_posterior > 0 only its
    top component is left then (the others are below min_posterior). Otherwise the components
    within `reach` of the top are redone in float64 (c - |(x - mu) isd|^2 / 2; all of them if
    err >= 1) and the farther ones keep the screen's value, off by a factor within e^(+-2 err):
    `reach` makes their errors add up to less than tol / 10 of the top's weight. Posteriors below
    min_posterior are dropped and the others not renormalised."""
    n, k = logit.shape
    d = x.shape[1]
    p = np.empty(k)
    exact = np.empty(k)  # float64 log-likelihoods (NaN: not redone)
    count = 0
    for t in range(n):
        sq = 0.0
        sw = 0.0
        for j in range(d):
            v = x[t, j] * x[t, j]
            sq += v
            sw += v * wmax2[j]
        if not (math.isfinite(sq) and math.isfinite(sw)):
            return -1 - t
        err = bound[0] * (bound[1] * math.sqrt(sq) + sw) + bound[2]
        top = 0
        for j in range(1, k):
            if logit[t, j] > logit[t, top]:
                top = j
        total = 0.0
        for j in range(k):
            gap = float(logit[t, j]) - float(logit[t, top])
            p[j] = math.exp(gap) if gap > -_FAR else 0.0
            total += p[j]
        slack = 2.0 * err + 1e-6
        floor = tol / math.expm1(slack)
        if min_posterior > 0:
            floor = min(floor, total * min_posterior * math.exp(-slack))
        redo = not (total - 1.0 < floor and err < 1.0)  # (also where the screen is NaN)
        if min_posterior > 0 and total * min_posterior * math.exp(slack) > 1.0:
            redo = True  # the top itself near min_posterior
        if not redo:
            if min_posterior > 0:
                rows[count], comps[count], vals[count] = t, top, 1.0 / total
                count += 1
            else:
                for j in range(k):
                    if p[j] > 0:
                        rows[count], comps[count], vals[count] = t, j, p[j] / total
                        count += 1
            continue
        # exact where the screen's error could matter: within `reach` of the top
        reach = 2.0 * err + max(0.0, math.log(k * math.expm1(2.0 * err) / (0.1 * tol)))
        best = -np.inf
        for j in range(k):
            if err < 1.0 and float(logit[t, j]) - float(logit[t, top]) < -reach:
                exact[j] = np.nan  # keeps the screen's value
                continue
            q = 0.0
            for i in range(d):
                z = (x[t, i] - mu[j, i]) * isd[j, i]
                q += z * z
            exact[j] = c[j] - 0.5 * q
            best = max(best, exact[j])
        if not math.isfinite(best):
            return -1 - t
        shift = math.exp(exact[top] - best) if err < 1.0 else 0.0  # the screen's scale to the exact one
        total = 0.0
        for j in range(k):
            p[j] = p[j] * shift if math.isnan(exact[j]) else math.exp(exact[j] - best)
            total += p[j]
        for j in range(k):
            g = p[j] / total
            if g > 0 and g >= min_posterior:
                rows[count], comps[count], vals[count] = t, j, g
                count += 1
    return count


@numba.njit(cache=True, fastmath=_FAST)
def accumulate(x, owner, weight, rows, comps, vals, count, mu, isd, codes, touched):
    """Add the triples' gradient terms to codes (sets, 2, K, D): g z to the mean part and
    g (z^2 - 1) / sqrt(2) to the variance part, z = (x - mu) isd, g scaled by weight[set, k]
    (1 / (T sqrt(w_k)) for a set of T descriptors); touched[set, k] marks what was added to."""
    d = x.shape[1]
    root_half = math.sqrt(0.5)
    for i in range(count):
        t, j = rows[i], comps[i]
        m = owner[t]
        g = vals[i] * weight[m, j]
        gv = g * root_half
        touched[m, j] = True
        u = codes[m, 0, j]
        v = codes[m, 1, j]
        for e in range(d):
            z = (x[t, e] - mu[j, e]) * isd[j, e]
            u[e] += g * z
            v[e] += gv * (z * z - 1.0)


@numba.njit(cache=True, fastmath=_FAST)
def finish(codes, touched):
    """IFV in place: signed square root, then unit L2 norm per set (untouched components are 0)."""
    sets, _, k, d = codes.shape
    for m in range(sets):
        total = 0.0  # |signed sqrt(c)|^2 = |c|
        for part in range(2):
            for j in range(k):
                if touched[m, j]:
                    for e in range(d):
                        total += abs(codes[m, part, j, e])
        if total == 0.0:
            continue
        scale = 1.0 / math.sqrt(total)
        for part in range(2):
            for j in range(k):
                if touched[m, j]:
                    row = codes[m, part, j]
                    for e in range(d):
                        row[e] = math.copysign(math.sqrt(abs(row[e])), row[e]) * scale
