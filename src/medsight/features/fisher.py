"""Fisher vectors of a diagonal GMM: FV, improved FV (IFV) and the foreground FV (fgFV).

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
- The fgFV choices are listed on ForegroundFisherVector.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
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


class ForegroundFisherVector(FisherVector):
    """Foreground Fisher vector (fgFV, Pan et al., IEEE TIP 2019): IFV with per-Gaussian weights.

    fit(X, y) fits the GMM (on all sets; y = -1 marks an unlabelled set, used for the GMM only),
    encodes, and learns a weight c_l >= 0 per Gaussian that maximises a smooth surrogate of the
    validation accuracy of a linear SVM (sklearn LinearSVC with `C`, one-vs-rest) on the
    re-weighted codes. A stratified `val_fraction` of the labelled sets is held out; the
    surrogate is the mean over them of tanh(margin) (binary: y * decision value; multiclass:
    the true class's score minus the best other's). Adam (torch, float64, full batch) runs
    `steps` steps from the same start for each rate in `lrs`, projecting onto c >= 0 after each
    step, and the rate with the best final surrogate wins. Round 1 binarises c (c_l > 0 -> 1)
    and drops the zero components for good; later rounds (`rounds` in all) learn continuous c.
    c is scaled to a maximum of 1. Membership mg(x) = sum_l c_l g_l(x). Then, `iterations`
    times, descriptors with mg <= `prune_threshold` are dropped and the GMM and the weights are
    re-fitted on the rest. Everything is deterministic given `random_state`.

    Choices made where the paper is open:

    - Re-weighting: c_l multiplies component l's two blocks (mean and variance gradients) of the
      code, then the code is L2-normalised again when `improved`.
    - SVM inside the optimisation: each round fits LinearSVC on the training codes re-weighted
      with the round's starting c, and Adam optimises c against that fixed SVM (its per-block
      scores are precomputed, so a step is cheap); `svm_refits > 1` re-fits it that many times
      per round on the current c.
    - Pruning is a cascade: the model of every earlier iteration is kept as a filter
      (`filters_`), and transform / membership drop a descriptor as soon as one filter gives it
      mg <= prune_threshold, then encode what is left with the last GMM (a set left empty gets
      a zero code). So training and test codes are built the same way, and background
      descriptors do not land in Gaussians that were fitted on foreground only. Iterating stops
      early when fewer than n_components descriptors would remain.
    """

    def __init__(self, n_components=64, improved=True, max_descriptors=128_000, reg_covar=1e-4,
                 max_iter=100, random_state=0, min_posterior=1e-4, C=10.0, val_fraction=0.25,
                 steps=300, lrs=(0.1, 0.01, 0.001), prune_threshold=1e-3, iterations=2,
                 rounds=2, svm_refits=1):
        super().__init__(n_components, improved, max_descriptors, reg_covar, max_iter,
                         random_state, min_posterior)
        self.C = C
        self.val_fraction = val_fraction
        self.steps = steps
        self.lrs = lrs
        self.prune_threshold = prune_threshold
        self.iterations = iterations
        self.rounds = rounds
        self.svm_refits = svm_refits

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    def fit(self, X, y):
        from sklearn.model_selection import train_test_split

        sets = _as_sets(X, check_finite=True)
        y = np.asarray(y)
        if y.shape != (len(sets),):
            raise FeatureError(f"y has shape {y.shape}, expected one label per set ({len(sets)})")
        labelled = np.flatnonzero(y != -1) if y.dtype.kind in "iuf" else np.arange(len(y))
        try:
            train, val = train_test_split(labelled, test_size=self.val_fraction,
                                          stratify=y[labelled], random_state=self.random_state)
        except ValueError as err:
            raise FeatureError(f"cannot hold out a stratified validation part: {err}") from None
        if len(np.unique(y[train])) < 2:
            raise FeatureError("the foreground Fisher vector needs at least two labelled classes")
        self.filters_ = []
        for it in range(self.iterations + 1):
            if it:
                pruned = [x[mg > self.prune_threshold]
                          for x, mg in zip(sets, self._memberships(sets, self._model()))]
                if sum(map(len, pruned)) < self.n_components:
                    break  # too little foreground left to re-fit: keep the current model
                self.filters_.append(self._model())
                sets = pruned
            self._fit_gmm([x for x in sets if len(x)])
            codes = self._gmm().encode(sets, self.improved, self.min_posterior, empty_is_zero=True)
            self.component_weights_ = self._learn_weights(codes, y, train, val)
        return self

    def transform(self, X):
        check_is_fitted(self, "component_weights_")
        sets = self._filter(_as_sets(X, self.means_.shape[1], check_finite=True))
        codes = self._gmm().encode(sets, self.improved, self.min_posterior, empty_is_zero=True)
        return self._reweight(codes, self.component_weights_)

    def membership(self, descriptors):
        """(T,) foreground membership mg(x) = sum_l c_l g_l(x); 0 where a filter dropped x."""
        check_is_fitted(self, "component_weights_")
        x = _as_sets([descriptors], self.means_.shape[1], check_finite=True)[0]
        mg = np.zeros(len(x))
        alive = self._filter([x], keep_index=True)[0]
        mg[alive] = self._memberships([x[alive]], self._model())[0]
        return mg

    def get_state(self):
        check_is_fitted(self, "component_weights_")
        state = self._model()
        for i, f in enumerate(self.filters_):
            state.update({f"filter{i}.{key}": value for key, value in f.items()})
        return state

    def _set_state(self, state):
        super()._set_state(state)
        if "component_weights" not in state:
            raise FeatureError("foreground Fisher vector state lacks component_weights")
        self.component_weights_ = np.asarray(state["component_weights"], dtype=np.float64)
        n = len({key.split(".")[0] for key in state if key.startswith("filter")})
        self.filters_ = [{key: np.asarray(state[f"filter{i}.{key}"], dtype=np.float64)
                          for key in ("weights", "means", "variances", "component_weights")}
                         for i in range(n)]

    def _model(self):
        return {"weights": self.weights_, "means": self.means_, "variances": self.variances_,
                "component_weights": self.component_weights_}

    @staticmethod
    def _memberships(sets, model):
        """mg of every descriptor of every set under one model (no posterior threshold)."""
        gmm = _gmm_of(model["weights"], model["means"], model["variances"])
        x = np.concatenate(sets)
        mg = np.empty(len(x))
        for s in range(0, len(x), _CHUNK_ROWS):
            post = gmm.posteriors(x[s:s + _CHUNK_ROWS])
            mg[s:s + _CHUNK_ROWS] = post @ model["component_weights"]
        return np.split(mg, np.cumsum([len(x) for x in sets])[:-1])

    def _filter(self, sets, keep_index=False):
        """The descriptors of each set that every filter keeps (or their boolean masks)."""
        alive = [np.ones(len(x), bool) for x in sets]
        for f in self.filters_:
            mgs = self._memberships([x[a] for x, a in zip(sets, alive)], f)
            for a, mg in zip(alive, mgs):
                a[a] = mg > self.prune_threshold
        return alive if keep_index else [x[a] for x, a in zip(sets, alive)]

    def _reweight(self, codes, c):
        out = (codes.reshape(len(codes), 2, len(c), -1) * c[:, None]).reshape(len(codes), -1)
        if self.improved:
            norm = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norm, out=out, where=norm > 0)
        return out

    def _svm_terms(self, codes, y, train, val, c):
        """Fit the SVM on the re-weighted training codes; its per-block scores of the val codes."""
        from sklearn.svm import LinearSVC

        k = len(c)
        svm = LinearSVC(C=self.C, random_state=self.random_state)
        svm.fit(self._reweight(codes[train], c), y[train])
        w = svm.coef_.reshape(len(svm.coef_), 2, k, -1)
        zv = codes[val].reshape(len(val), 2, k, -1)
        scores = np.einsum("vskd,mskd->vmk", zv, w)
        return scores, svm.intercept_, _ovr_target(svm.classes_, y[val])

    def _learn_weights(self, codes, y, train, val):
        """Per-Gaussian weights c (max 1) for one GMM, in `rounds` rounds (class docstring)."""
        k = self.n_components
        zv = codes[val].reshape(len(val), 2, k, -1)
        sq = np.einsum("vskd,vskd->vk", zv, zv)  # squared norm of each validation block
        c = np.ones(k)
        for r in range(self.rounds):
            start = self._svm_terms(codes, y, train, val, c)
            best = None
            for lr in self.lrs:
                ci = c.copy()
                parts = np.array_split(np.arange(self.steps), max(self.svm_refits, 1))
                for n, part in enumerate(parts):
                    terms = start if n == 0 else self._svm_terms(codes, y, train, val, ci)
                    ci, value = _adam(ci, c > 0, *terms, sq, lr, len(part), self.improved)
                if best is None or value > best[1]:
                    best = (ci, value)
            c = best[0]
            if r == 0 and self.rounds > 1:
                c = (c > 0).astype(np.float64)
        if c.max() <= 0:  # nothing helped: keep every component rather than none
            return np.ones(k)
        return c / c.max()


def _ovr_target(classes, y):
    """Binary: +-1 per sample; multiclass: index of the true class (the margin's reference)."""
    if len(classes) == 2:
        return np.where(y == classes[1], 1.0, -1.0)
    return np.searchsorted(classes, y)


def _surrogate(c, scores, sq, intercept, target, improved):
    """Mean tanh of the SVM margin on re-weighted codes, from precomputed per-block terms."""
    import torch

    s = scores @ c  # (n_val, n_scores)
    if improved:
        s = s / torch.sqrt((sq @ (c * c)).clamp_min(1e-24))[:, None]  # clamp inside: sqrt'(0) is inf
    s = s + intercept
    if s.shape[1] == 1:
        margin = s[:, 0] * target
    else:
        true = s.gather(1, target[:, None])[:, 0]
        other = s.scatter(1, target[:, None], float("-inf")).amax(1)  # .max(1) is slow
        margin = true - other
    return torch.tanh(margin).mean()


def _adam(c0, free, scores, intercept, target, sq, lr, steps, improved):
    """`steps` Adam steps (torch autograd, betas 0.9 / 0.999) ascending the surrogate from c0,
    projected onto c >= 0 and c = 0 off `free`; returns c and the final surrogate value."""
    import torch

    scores, sq, intercept = (torch.as_tensor(a) for a in (scores, sq, intercept))
    target = torch.as_tensor(target)
    if len(intercept) > 1:
        target = target.long()
    keep = torch.as_tensor(free, dtype=torch.float64)  # components dropped earlier stay at 0
    c = torch.tensor(c0, dtype=torch.float64, requires_grad=True)
    m, v = torch.zeros_like(c), torch.zeros_like(c)
    # torch.optim.Adam's update written out: that class's first use imports torch._dynamo (~1 s)
    for step in range(1, steps + 1):
        (grad,) = torch.autograd.grad(-_surrogate(c, scores, sq, intercept, target, improved), c)
        with torch.no_grad():
            m.mul_(0.9).add_(grad, alpha=0.1)
            v.mul_(0.999).addcmul_(grad, grad, value=0.001)
            c -= lr * (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8)
            c.clamp_(min=0.0).mul_(keep)
    with torch.no_grad():
        value = float(_surrogate(c, scores, sq, intercept, target, improved))
    return c.detach().numpy().copy(), value


def membership_map(mg, grid_shape, image_shape, sigma=1.0, threshold=0.5):
    """Paint membership values over an image: (soft map in [0, 1], binary foreground mask).

    mg holds one value per descriptor-grid cell, row-major (as CNN feature-map cells). The grid
    is upsampled bilinearly with cell centres on pixel centres, smoothed with a Gaussian of
    `sigma` grid cells, min-max normalised (a constant map gives zeros), thresholded (> threshold),
    then closed and opened with a disk of half a cell's radius (at least 1 pixel).
    """
    gh, gw = grid_shape
    h, w = image_shape
    mg = np.asarray(mg, dtype=np.float64)
    if mg.size != gh * gw:
        raise FeatureError(f"{mg.size} membership values do not fill a {gh}x{gw} grid")
    rows = (np.arange(h) + 0.5) * gh / h - 0.5
    cols = (np.arange(w) + 0.5) * gw / w - 0.5
    up = ndimage.map_coordinates(mg.reshape(gh, gw), np.meshgrid(rows, cols, indexing="ij"),
                                 order=1, mode="nearest")
    cell = (h / gh + w / gw) / 2
    up = ndimage.gaussian_filter(up, sigma * cell)
    lo, hi = up.min(), up.max()
    soft = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    r = max(1, round(cell / 2))
    disk = np.hypot(*np.mgrid[-r:r + 1, -r:r + 1]) <= r
    # edge padding, wide enough for both erosions: the image border neither erodes nor rounds
    pad = 2 * r + 2
    mask = np.pad(soft > threshold, pad, mode="edge")
    mask = ndimage.binary_opening(ndimage.binary_closing(mask, disk), disk)
    return soft, mask[pad:-pad, pad:-pad]
