"""Fisher vectors of a diagonal GMM: FV and improved FV (IFV).

A code has 2*K*D floats, component-major: the K*D gradients w.r.t. the means (component 0's D
values first), then the K*D gradients w.r.t. the variances, normalised as in Perronnin, Sanchez
and Mensink (ECCV 2010):

    u_k = 1 / (T sqrt(w_k))   sum_t g_tk (x_t - mu_k) / sigma_k
    v_k = 1 / (T sqrt(2 w_k)) sum_t g_tk ((x_t - mu_k)^2 / sigma_k^2 - 1)

with g_tk the GMM posteriors. IFV (`improved=True`) adds the signed square root and L2
normalisation. There are no weight gradients (skimage.feature.fisher_vector puts K of them first,
and its variance part is -v_k).

Choices made where the sources are open:

- Posteriors below `min_posterior` are set to zero and the others are not renormalised (VLFeat
  does the same below 1e-6). CNN descriptors have nearly hard posteriors (about 1.3 components
  above 1e-4 each), so the gradients are summed only over the remaining (descriptor, component)
  pairs (numba kernels in `_fisher_kernels`, one pass each). The threshold is part of the
  definition: the signed square root magnifies what it drops, so IFV codes at 1e-4 differ from
  those at 0 by up to about 1e-2 of their largest entry on CNN-like data.
- Precision: the (T, K) log-likelihoods come from one float32 matrix product on [x, x^2, 1] (the
  dominant cost; float32 has twice the float64 throughput). A worst-case bound on its rounding
  error is evaluated per descriptor, and every descriptor whose posteriors it could move by more
  than 1e-6 in all, or one of them across min_posterior (those with a second component that is
  not negligible: about 20 % of CNN descriptors), is redone in float64 for the components near
  its top (the far ones keep the screen's value, whose error no longer matters there); in the
  others only the top component is left. The gradient sums and the codes are float64, summed
  from the centred (x - mu) / sigma. Against a dense float64
  computation of the same definition, FV codes agree to about 1e-9 of their largest entry and
  IFV codes (the square root magnifies small entries) to about 1e-7.
- An empty descriptor set is an error (FeatureError), not a zero code: an image without
  descriptors is almost always an upstream bug (an empty mask, a wrong crop).
- The foreground FV (fgFV) and its membership maps are in :mod:`medsight.features.foreground`.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from medsight.errors import FeatureError
from medsight.features import _fisher_kernels as kernels

_TOL = 1e-6  # largest posterior error the float32 screen may leave in a row
_CHUNK_ROWS = 512  # descriptors encoded together: few BLAS calls, arrays mostly in cache
_GMMS = []  # the last few (parameters, _Gmm) built, newest last (see _gmm_of)


def fisher_vector(descriptors, weights, means, variances, improved=True, min_posterior=1e-4):
    """Fisher vector of one (T, D) descriptor set: a float64 (2*K*D,) array (layout: module doc)."""
    return fisher_vectors([descriptors], weights, means, variances, improved, min_posterior)[0]


def fisher_vectors(descriptor_sets, weights, means, variances, improved=True, min_posterior=1e-4):
    """Fisher vectors of many descriptor sets at once: (n, 2*K*D). Faster than one call per set."""
    gmm = _gmm_of(weights, means, variances)
    sets = _as_sets(descriptor_sets, gmm.d)
    return gmm.encode(sets, improved, min_posterior)


def _gmm_of(weights, means, variances):
    """The _Gmm of these parameters. Its constants cost about as much as encoding an image, so the
    last few are kept, and reused while the parameters are equal (compared by value, ~20 us)."""
    params = [np.asarray(a, dtype=np.float64) for a in (weights, means, variances)]
    for known, gmm in reversed(_GMMS.copy()):  # (a copy: other threads may append)
        if all(a.shape == b.shape and (a == b).all() for a, b in zip(params, known)):
            return gmm
    gmm = _Gmm(*params)
    _GMMS.append(([a.copy() for a in params], gmm))
    del _GMMS[:-4]
    return gmm


class _Gmm:
    """A diagonal GMM and the constants the encoder derives from it."""

    def __init__(self, weights, means, variances):
        w = np.asarray(weights, dtype=np.float64)
        mu = np.asarray(means, dtype=np.float64)
        var = np.asarray(variances, dtype=np.float64)
        if mu.ndim != 2 or var.shape != mu.shape or w.shape != mu.shape[:1]:
            raise FeatureError(
                f"GMM parameters do not fit together: weights {w.shape}, means {mu.shape}, "
                f"variances {var.shape} (expected (K,), (K, D), (K, D))")
        if not (np.all(w > 0) and np.all(var > 0) and np.isfinite(mu).all()):
            raise FeatureError("GMM weights and variances must be positive and the means finite")
        self.k, self.d = k, d = mu.shape
        iv = 1.0 / var
        # exact log-likelihoods: log(w_k N(x)) = c_k - |(x - mu_k) isd_k|^2 / 2, with the
        # -D/2 log(2 pi) that all components share dropped
        self.mu = np.ascontiguousarray(mu)
        self.isd = np.sqrt(iv)
        self.c = np.log(w) - 0.5 * np.log(var).sum(1)
        # float32 screen: logits of a = [x, x^2, 1], with what all components share taken out
        # (posteriors do not change) to shrink the terms and hence the rounding, which is at most
        # (2D + 6) eps sum_i |a_i| max_k |w_ik| + 2 eps max |c| (c: the last row); the kernel
        # bounds sum_i |x_i| max_k |w_ik| by |x| |max_k |w_ik|| over the first D rows
        w32 = np.concatenate([(mu * iv).T, -0.5 * iv.T])
        c32 = self.c - 0.5 * (mu * mu * iv).sum(1)
        w32, c32 = w32 - w32.mean(1, keepdims=True), c32 - c32.mean()
        self.w32 = np.vstack([w32, c32]).astype(np.float32)
        wmax = np.abs(w32).max(1)
        self.wmax2 = np.ascontiguousarray(wmax[d:])
        eps = float(np.finfo(np.float32).eps)
        self.bound = np.array([(2 * d + 6) * eps, np.linalg.norm(wmax[:d]),
                               2 * eps * np.abs(c32).max()])
        self.code_weight = 1.0 / np.sqrt(w)  # u_k, v_k: sums over the set / (T sqrt(w_k))

    def posteriors(self, x, min_posterior=0.0):
        """(n, K) float64 posteriors of x, to within _TOL, and zeroed below min_posterior."""
        post = np.zeros((len(x), self.k))
        for start in range(0, len(x), _CHUNK_ROWS):
            chunk = np.ascontiguousarray(x[start:start + _CHUNK_ROWS], dtype=np.float64)
            rows, comps, vals = self._sparse_posteriors(chunk, min_posterior, self._buffers(len(chunk)))
            post[start + rows, comps] = vals
        return post

    def _buffers(self, size):
        """Work space for chunks of at most `size` descriptors: the screen's input and the triples."""
        return (np.empty((size, 2 * self.d + 1), np.float32), np.empty(size * self.k, np.int64),
                np.empty(size * self.k, np.int64), np.empty(size * self.k))

    def _sparse_posteriors(self, x, min_posterior, buffers):
        """(rows, components, posteriors) of float64 descriptors x (see kernels.sparse_posteriors)."""
        a, rows, comps, vals = buffers
        kernels.screen_input(x, a)
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: the kernel redoes those rows
            logit = a[:len(x)] @ self.w32
        count = kernels.sparse_posteriors(logit, x, self.wmax2, self.bound, self.mu, self.isd, self.c,
                                          float(min_posterior), _TOL, rows, comps, vals)
        if count < 0:
            raise _NotFinite(-1 - count)
        return rows[:count], comps[:count], vals[:count]

    def encode(self, sets, improved, min_posterior, empty_is_zero=False):
        """Codes of validated descriptor sets, about _CHUNK_ROWS descriptors at a time."""
        k, d = self.k, self.d
        counts = np.array([len(x) for x in sets])
        if not empty_is_zero and not counts.all():
            raise FeatureError(f"descriptor set {np.argmin(counts)} is empty")
        codes = np.zeros((len(sets), 2, k, d))
        touched = np.zeros((len(sets), k), bool)
        weight = self.code_weight / np.maximum(counts, 1)[:, None]
        size = min(_CHUNK_ROWS, max(counts.sum(), 1))
        buffers = self._buffers(size)
        x = np.empty((size, d))
        owner = np.empty(size, np.int64)
        for rows, pieces in _chunks(counts, size):
            at = 0
            for i, begin, end in pieces:
                x[at:at + end - begin] = sets[i][begin:end]
                owner[at:at + end - begin] = i
                at += end - begin
            try:
                t, comp, g = self._sparse_posteriors(x[:rows], min_posterior, buffers)
            except _NotFinite as bad:
                raise FeatureError(f"descriptor set {owner[bad.row]} has NaN, infinite or too large "
                                   f"values") from None
            kernels.accumulate(x, owner, weight, t, comp, g, len(t), self.mu, self.isd, codes, touched)
        if improved:
            kernels.finish(codes, touched)
        return codes.reshape(len(sets), -1)


def _chunks(counts, size):
    """Chunks of at most `size` consecutive descriptors over all sets: (rows, [(set, begin, end)])."""
    pieces, rows = [], 0
    for i in np.flatnonzero(counts):
        begin = 0
        while begin < counts[i]:
            end = min(counts[i], begin + size - rows)
            pieces.append((i, begin, end))
            rows += end - begin
            begin = end
            if rows == size:
                yield rows, pieces
                pieces, rows = [], 0
    if pieces:
        yield rows, pieces


class _NotFinite(FeatureError):
    """A descriptor with NaN, infinite or too large values (the encoder names its set)."""

    def __init__(self, row):
        self.row = row
        super().__init__(f"descriptor {row} has NaN, infinite or too large values")


def _as_sets(X, dim=None, check_finite=False):
    """Validate a sequence of (T, D) descriptor arrays; float32 stays float32."""
    if isinstance(X, np.ndarray) and X.dtype != object and X.ndim != 3:
        raise FeatureError(f"expected a sequence of (T, D) descriptor arrays, got one array of "
                           f"shape {X.shape} (wrap a single set in a list)")
    sets = []
    for i, x in enumerate(X):
        try:
            x = np.asarray(x)
            if x.dtype not in (np.float32, np.float64):
                x = x.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise FeatureError(f"descriptor set {i} is not numeric: {err}") from None
        if x.ndim != 2:
            raise FeatureError(f"descriptor set {i}: expected a (T, D) array, got shape {x.shape}")
        if dim is not None and x.shape[1] != dim:
            raise FeatureError(f"descriptor set {i}: descriptors have D={x.shape[1]}, "
                               f"the GMM expects D={dim}")
        if len(x) == 0:
            raise FeatureError(f"descriptor set {i} is empty: a Fisher vector needs descriptors")
        if check_finite and not np.isfinite(x).all():
            raise FeatureError(f"descriptor set {i} has NaN or infinite values")
        dim = x.shape[1]
        sets.append(x)
    if not sets:
        raise FeatureError("no descriptor sets given")
    return sets


class FisherVector(TransformerMixin, BaseEstimator):
    """Fisher vector encoder: fit a diagonal GMM on descriptor sets, transform sets to codes.

    X is a sequence of (T_i, D) arrays (one per image). The GMM is scikit-learn's
    GaussianMixture, k-means initialised, fitted on at most `max_descriptors` randomly sampled
    descriptors; `reg_covar` is added to every variance, which acts as the covariance floor.
    """

    def __init__(self, n_components=64, improved=True, max_descriptors=128_000, reg_covar=1e-4,
                 max_iter=100, random_state=0, min_posterior=1e-4):
        self.n_components = n_components
        self.improved = improved
        self.max_descriptors = max_descriptors
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.random_state = random_state
        self.min_posterior = min_posterior

    def fit(self, X, y=None):
        self._fit_gmm(_as_sets(X, check_finite=True))
        return self

    def transform(self, X):
        check_is_fitted(self, "means_")
        gmm = self._gmm()
        return gmm.encode(_as_sets(X, gmm.d), self.improved, self.min_posterior)

    def posteriors(self, descriptors):
        """(T, K) posteriors of one descriptor set under the fitted GMM (no threshold, to 1e-6)."""
        check_is_fitted(self, "means_")
        gmm = self._gmm()
        return gmm.posteriors(_as_sets([descriptors], gmm.d, check_finite=True)[0])

    def get_state(self):
        """Fitted state as a dict of numpy arrays (for safetensors; no pickle)."""
        check_is_fitted(self, "means_")
        return {"weights": self.weights_, "means": self.means_, "variances": self.variances_}

    @classmethod
    def from_state(cls, params, state):
        """A fitted estimator from get_params() and get_state()."""
        est = cls(**params)
        est._set_state(state)
        return est

    def _set_state(self, state):
        missing = {"weights", "means", "variances"} - set(state)
        if missing:
            raise FeatureError(f"Fisher vector state lacks {', '.join(sorted(missing))}")
        self.weights_ = np.asarray(state["weights"], dtype=np.float64)
        self.means_ = np.asarray(state["means"], dtype=np.float64)
        self.variances_ = np.asarray(state["variances"], dtype=np.float64)
        _gmm_of(self.weights_, self.means_, self.variances_)  # checks that they fit together

    def _gmm(self):
        return _gmm_of(self.weights_, self.means_, self.variances_)

    def _fit_gmm(self, sets):
        x = np.concatenate(sets).astype(np.float64, copy=False)
        if len(x) < self.n_components:
            raise FeatureError(f"{len(x)} descriptors cannot fit a GMM with "
                               f"{self.n_components} components")
        if len(x) > self.max_descriptors:
            rng = check_random_state(self.random_state)
            x = x[np.sort(rng.choice(len(x), self.max_descriptors, replace=False))]
        gm = GaussianMixture(self.n_components, covariance_type="diag", reg_covar=self.reg_covar,
                             max_iter=self.max_iter, init_params="kmeans",
                             random_state=self.random_state).fit(x)
        self.weights_, self.means_, self.variances_ = gm.weights_, gm.means_, gm.covariances_
