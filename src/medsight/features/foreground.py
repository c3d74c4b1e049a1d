"""The foreground Fisher vector (fgFV, Pan et al., IEEE TIP 2019) and its membership maps.

IFV codes (:mod:`medsight.features.fisher`) with one learnt weight per Gaussian: components that
describe the class-relevant foreground keep a high weight, background ones are pruned, and the
GMM is re-estimated on the descriptors that remain. The choices made where the paper is open are
listed on :class:`ForegroundFisherVector`; :func:`membership_map` paints how much each place of an
image belongs to the foreground.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.utils.validation import check_is_fitted

from medsight.errors import FeatureError
from medsight.features.fisher import _CHUNK_ROWS, FisherVector, _as_sets, _gmm_of


class ForegroundFisherVector(FisherVector):
    """Foreground Fisher vector (fgFV, Pan et al., IEEE TIP 2019): IFV with per-Gaussian weights.

    fit(X, y) fits the GMM (on all sets; y = -1 marks an unlabelled set, used for the GMM only),
    encodes, and learns a weight c_l >= 0 per Gaussian that maximises a smooth surrogate of the
    validation accuracy of a linear SVM (sklearn LinearSVC with `C`, one-vs-rest) on the
    re-weighted codes. fit(X, y, validation=...) names the labelled sets that score the weights
    (a boolean mask or indices; e.g. cases the network that made the descriptors did not learn
    from, so that the weights are chosen for new cases); without it a stratified `val_fraction`
    of the labelled sets is held out at random; the
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

    def fit(self, X, y, validation=None):
        from sklearn.model_selection import train_test_split

        sets = _as_sets(X, check_finite=True)
        y = np.asarray(y)
        if y.shape != (len(sets),):
            raise FeatureError(f"y has shape {y.shape}, expected one label per set ({len(sets)})")
        labelled = np.flatnonzero(y != -1) if y.dtype.kind in "iuf" else np.arange(len(y))
        if validation is not None:
            chosen = np.zeros(len(sets), bool)
            chosen[np.asarray(validation)] = True
            train, val = labelled[~chosen[labelled]], labelled[chosen[labelled]]
            if len(np.unique(y[val])) < 2:
                raise FeatureError("the validation sets that score the foreground weights hold fewer than two classes")
        else:
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
        """(T,) foreground membership mg(x) = sum_l c_l g_l(x) in [0, 1]; 0 where a filter dropped
        x. After pruning iterations the last model was fitted on the descriptors the filters kept,
        so its mg ranks those among themselves and is lower than the first model's."""
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
    """Paint membership values over an image: (soft map in [0, 1] for display, binary foreground mask).

    mg holds one value per descriptor-grid cell, row-major (as CNN feature-map cells); it lies in
    [0, 1] (posteriors summing to 1, weighted by c <= 1). The grid is upsampled bilinearly with cell
    centres on pixel centres and smoothed with a Gaussian of `sigma` grid cells. The mask is that
    smoothed mg above the absolute `threshold` (methods.md: thresholded at 0.5), then closed and
    opened with a disk of half a cell's radius (at least 1 pixel): an image whose descriptors all
    have low membership has no foreground. The soft map is the smoothed mg min-max normalised per
    image (a constant map gives zeros), for display only: it always spans [0, 1].
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
    mask = np.pad(up > threshold, pad, mode="edge")
    mask = ndimage.binary_opening(ndimage.binary_closing(mask, disk), disk)
    return soft, mask[pad:-pad, pad:-pad]
