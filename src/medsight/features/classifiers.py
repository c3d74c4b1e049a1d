"""Classical classifiers on descriptors whose fitted state is plain arrays.

Recipes save a fitted head with :meth:`get_state` into safetensors and rebuild it with
:meth:`from_state`: no pickle is ever written or read. Both heads are scikit-learn estimators
(``fit`` returns self, fitted state ends in ``_``) and standardise their input first.

- :class:`SVMHead`: a support vector machine, one-vs-rest (one binary SVM for a binary task).
- :class:`BoostedMLP`: SAMME AdaBoost of small back-propagation networks, the per-descriptor
  classifier of Fuse-TSD.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.svm import SVC, LinearSVC

from medsight.errors import FeatureError


def _check_xy(X, y=None) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise FeatureError(f"expected a (n_samples, n_features) array, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise FeatureError("descriptors contain NaN or infinite values")
    if y is None:
        return X, None
    y = np.asarray(y)
    if y.shape != (len(X),):
        raise FeatureError(f"{len(X)} samples but {y.shape} labels")
    return X, y


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(0)
    scale = X.std(0)
    return mean, np.where(scale > 1e-12, scale, 1.0)  # constant features stay 0 after scaling


class _ArrayState:
    """get_state / from_state for estimators whose fitted attributes are arrays."""

    _state: tuple[str, ...] = ()

    def get_state(self) -> dict[str, np.ndarray]:
        return {name: np.ascontiguousarray(getattr(self, name)) for name in self._state}

    @classmethod
    def from_state(cls, params: dict, state: dict[str, np.ndarray]):
        est = cls(**params)
        missing = set(cls._state) - set(state)
        if missing:
            raise FeatureError(f"{cls.__name__} state lacks {sorted(missing)}")
        for name in cls._state:
            setattr(est, name, np.asarray(state[name]))
        return est


class SVMHead(_ArrayState, ClassifierMixin, BaseEstimator):
    """Standardised descriptors -> SVM, one-vs-rest.

    ``standardize=False`` leaves the input as it is: Fisher vectors are already normalised, and
    scaling their many near-constant dimensions to unit variance drowns the signal in noise
    (on PH2 it turned a held-out AUC of 0.89 into 0.27).

    ``kernel="rbf"`` uses libsvm (``SVC``) per class; ``"linear"`` uses liblinear (``LinearSVC``).
    The decision values are what the SVM says; probabilities are their logistic (binary: p >= 0.5
    exactly when the SVM says positive) or softmax (multi-class), so rankings and AUC are the
    SVM's own. Platt scaling was left out: on the training set the decision values are overfit,
    and an internal cross-validation would make results depend on its folds.
    """

    _state = ("classes_", "mean_", "scale_", "support_vectors_", "dual_coef_", "sv_owner_", "intercept_",
              "gamma_", "coef_")

    def __init__(self, kernel: str = "rbf", C: float = 1.0, gamma: str | float = "scale",
                 class_weight: str | None = "balanced", max_iter: int = 20000, standardize: bool = True):
        self.kernel = kernel
        self.standardize = standardize
        self.C = C
        self.gamma = gamma
        self.class_weight = class_weight
        self.max_iter = max_iter

    def fit(self, X, y):
        X, y = _check_xy(X, y)
        if self.kernel not in ("rbf", "linear"):
            raise FeatureError(f"kernel must be 'rbf' or 'linear', got {self.kernel!r}")
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise FeatureError("training labels hold a single class")
        self.mean_, self.scale_ = _standardise(X) if self.standardize else (np.zeros(X.shape[1]), np.ones(X.shape[1]))
        Z = (X - self.mean_) / self.scale_
        targets = self.classes_[1:] if len(self.classes_) == 2 else self.classes_
        if self.kernel == "linear":
            svm = LinearSVC(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter, random_state=0)
            svm.fit(Z, y)
            self.coef_, self.intercept_ = svm.coef_.copy(), svm.intercept_.copy()
            self.support_vectors_ = np.zeros((0, X.shape[1]))
            self.dual_coef_ = self.sv_owner_ = np.zeros(0)
            self.gamma_ = np.zeros(1)
            return self
        gamma = 1.0 / (Z.shape[1] * Z.var()) if self.gamma == "scale" and Z.var() > 0 else self.gamma
        gamma = 1.0 if isinstance(gamma, str) else float(gamma)
        svs, duals, owners, intercepts = [], [], [], []
        for k, cls in enumerate(targets):
            svm = SVC(kernel="rbf", C=self.C, gamma=gamma, class_weight=self.class_weight, max_iter=-1)
            svm.fit(Z, (y == cls).astype(int))
            svs.append(svm.support_vectors_)
            duals.append(svm.dual_coef_[0])
            owners.append(np.full(len(svm.support_), k))
            intercepts.append(svm.intercept_[0])
        self.support_vectors_ = np.concatenate(svs)
        self.dual_coef_ = np.concatenate(duals)
        self.sv_owner_ = np.concatenate(owners).astype(np.int64)
        self.intercept_ = np.array(intercepts)
        self.gamma_ = np.array([gamma])
        self.coef_ = np.zeros((0, X.shape[1]))
        return self

    def decision_function(self, X) -> np.ndarray:
        """(n,) for a binary task (positive = classes_[1]), else (n, n_classes)."""
        X, _ = _check_xy(X)
        Z = (X - self.mean_) / self.scale_
        if self.coef_.size:
            d = Z @ self.coef_.T + self.intercept_
        else:
            sq = (Z ** 2).sum(1)[:, None] + (self.support_vectors_ ** 2).sum(1)[None] - 2 * Z @ self.support_vectors_.T
            kernel = np.exp(-self.gamma_[0] * np.maximum(sq, 0.0)) * self.dual_coef_  # (n, n_sv)
            n_out = len(self.intercept_)
            d = np.stack([kernel[:, self.sv_owner_ == k].sum(1) for k in range(n_out)], 1) + self.intercept_
        return d[:, 0] if d.shape[1] == 1 else d

    def predict_proba(self, X) -> np.ndarray:
        d = self.decision_function(X)
        if d.ndim == 1:
            p = expit(d)
            return np.stack([1 - p, p], 1)
        return _softmax(d)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]


class BoostedMLP(_ArrayState, ClassifierMixin, BaseEstimator):
    """SAMME AdaBoost of one-hidden-layer back-propagation networks (Fuse-TSD's classifier).

    Each round trains a network (``hidden`` ReLU units, softmax output) on the standardised
    descriptors with the boosting weights as per-sample loss weights (full-batch Adam, ``steps``
    steps), then re-weights the cases it got wrong by ``exp(alpha)``, ``alpha = log((1 - err) /
    err) + log(K - 1)``. Boosting stops early when a round is perfect or no better than chance.
    ``predict_proba`` averages the members' softmax outputs weighted by their alphas (a soft
    SAMME vote, so scores rank cases finely enough for an AUC).
    """

    _state = ("classes_", "mean_", "scale_", "alphas_", "w1_", "b1_", "w2_", "b2_")

    def __init__(self, n_estimators: int = 10, hidden: int = 32, steps: int = 300, lr: float = 0.01,
                 weight_decay: float = 1e-3, random_state: int = 0):
        self.n_estimators = n_estimators
        self.hidden = hidden
        self.steps = steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.random_state = random_state

    def _train_member(self, Z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, k: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        n_in = Z.shape[1]
        params = [torch.randn(n_in, self.hidden, generator=gen, dtype=Z.dtype) * (2.0 / n_in) ** 0.5,
                  torch.zeros(self.hidden, dtype=Z.dtype),
                  torch.randn(self.hidden, k, generator=gen, dtype=Z.dtype) * (1.0 / self.hidden) ** 0.5,
                  torch.zeros(k, dtype=Z.dtype)]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.steps):
            opt.zero_grad()
            loss = (F.cross_entropy(_mlp(Z, *params), y, reduction="none") * w).sum()
            loss.backward()
            opt.step()
        return [p.detach() for p in params]

    def fit(self, X, y):
        X, y = _check_xy(X, y)
        self.classes_ = np.unique(y)
        k = len(self.classes_)
        if k < 2:
            raise FeatureError("training labels hold a single class")
        self.mean_, self.scale_ = _standardise(X)
        Z = torch.from_numpy((X - self.mean_) / self.scale_)
        target = torch.from_numpy(np.searchsorted(self.classes_, y))
        w = torch.full((len(X),), 1.0 / len(X), dtype=Z.dtype)
        members, alphas = [], []
        for m in range(self.n_estimators):
            params = self._train_member(Z, target, w, k, self.random_state * 1000 + m)
            with torch.no_grad():
                miss = (_mlp(Z, *params).argmax(1) != target).to(Z.dtype)
            err = float((w * miss).sum() / w.sum())
            if err >= 1 - 1 / k and members:  # no better than chance: stop boosting
                break
            alpha = np.log((1 - err) / err) + np.log(k - 1) if 0 < err < 1 - 1 / k else (10.0 if err == 0 else 1.0)
            members.append(params)
            alphas.append(alpha)
            if err == 0:  # a perfect member: later rounds would see no misclassified case
                break
            w = w * torch.exp(alpha * miss)
            w = w / w.sum()
        stacked = [torch.stack(p).numpy() for p in zip(*members)]
        self.w1_, self.b1_, self.w2_, self.b2_ = stacked
        self.alphas_ = np.array(alphas)
        return self

    def predict_proba(self, X) -> np.ndarray:
        X, _ = _check_xy(X)
        Z = (X - self.mean_) / self.scale_
        hidden = np.maximum(np.einsum("nf,mfh->mnh", Z, self.w1_) + self.b1_[:, None], 0)
        proba = _softmax(np.einsum("mnh,mhk->mnk", hidden, self.w2_) + self.b2_[:, None])
        return np.einsum("m,mnk->nk", self.alphas_ / self.alphas_.sum(), proba)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]


def _mlp(x, w1, b1, w2, b2):
    return torch.relu(x @ w1 + b1) @ w2 + b2


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


HEADS = {"svm": SVMHead, "boosted_mlp": BoostedMLP}
