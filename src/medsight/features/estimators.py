"""The scikit-learn transformers of the GLCM and shape features: ``GLCMTexture``, ``FourierShape``,
``Shape2D`` and ``Shape3D`` (also importable from ``medsight.features.glcm`` and ``.shape``).

They wrap the functions of :mod:`~medsight.features.glcm` and :mod:`~medsight.features.shape` and
live apart from them so that the functions, and ``medsight features``, do not import scikit-learn.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from medsight.errors import FeatureError
from medsight.features.glcm import _check_distances, _check_features, glcm_features_batch
from medsight.features.levels import _check_binning
from medsight.features.shape import (SHAPE_2D_FEATURES, SHAPE_3D_FEATURES, _as_spacing, _check_fourier_params,
                                     _fourier_orders, fourier_descriptors, shape_features_2d, shape_features_3d)

class GLCMTexture(TransformerMixin, BaseEstimator):
    """GLCM features as a scikit-learn transformer: images in, (n_samples, n_features) float64 out.

    X is a sequence whose items are an image array or an ``(image, mask)`` pair (2D or 3D, not mixed).
    Parameters are those of ``glcm_features``; ``features=None`` means all 24 of ``GLCM_FEATURES``.
    Fitting learns nothing: it checks the parameters and fixes ``feature_names_``.
    """

    def __init__(self, distances=(1,), directions=None, bin_width=None, bin_count=None, symmetric=True,
                 features=None, device=None):  # fmt: skip
        self.distances = distances
        self.directions = directions
        self.bin_width = bin_width
        self.bin_count = bin_count
        self.symmetric = symmetric
        self.features = features
        self.device = device

    def fit(self, X, y=None):
        _check_distances(self.distances)
        _check_binning(self.bin_width, self.bin_count)
        self.feature_names_ = list(_check_features(self.features))
        self.n_features_out_ = len(self.feature_names_)
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        images, masks = [], []
        for item in X:
            pair = isinstance(item, (tuple, list)) and len(item) == 2 and np.ndim(item[0]) >= 2
            images.append(item[0] if pair else item)
            masks.append(item[1] if pair else None)
        return glcm_features_batch(images, masks, distances=self.distances, directions=self.directions,
                                   bin_width=self.bin_width, bin_count=self.bin_count, symmetric=self.symmetric,
                                   features=self.feature_names_, device=self.device)  # fmt: skip

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # X is a sequence of images, not a feature table
        tags.input_tags.three_d_array = True
        return tags

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        return np.asarray(self.feature_names_, dtype=object)



class _ShapeTransformer(TransformerMixin, BaseEstimator):
    """Shared contract: X is a sequence of samples, fit learns nothing but the output names."""

    def fit(self, X, y=None):
        self.feature_names_ = self._names()
        self.n_features_out_ = len(self.feature_names_)
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        rows = [self._features(sample) for sample in X]
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), self.n_features_out_)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        return np.asarray(self.feature_names_, dtype=object)


class FourierShape(_ShapeTransformer):
    """`fourier_descriptors` of each mask (or float (N, 2) contour) in X: (n_samples, n_coefficients)."""

    def __init__(self, n_coefficients=16, n_points=128):
        self.n_coefficients = n_coefficients
        self.n_points = n_points

    def _names(self) -> list[str]:
        _check_fourier_params(self.n_coefficients, self.n_points)
        return [f"fourier_k{k:+d}" for k in _fourier_orders(self.n_coefficients)]

    def _features(self, sample) -> np.ndarray:
        return fourier_descriptors(sample, self.n_coefficients, self.n_points)


class _ShapeTable(_ShapeTransformer):
    """Selected entries of a shape-feature dict; a sample is a mask or a (mask, spacing) tuple,
    whose spacing overrides the estimator's (None: unit spacing)."""

    _all: tuple[str, ...] = ()
    _ndim = 0

    def __init__(self, features=None, spacing=None):
        self.features = features
        self.spacing = spacing

    def _names(self) -> list[str]:
        if self.spacing is not None:
            _as_spacing(self.spacing, self._ndim)
        if self.features is None:
            return list(self._all)
        names = [self.features] if isinstance(self.features, str) else list(self.features)
        unknown = sorted(set(names) - set(self._all))
        if unknown or not names:
            raise FeatureError(f"unknown shape features {unknown}; choose from {list(self._all)}")
        return names

    def _features(self, sample) -> list[float]:
        spacing = (1.0,) * self._ndim if self.spacing is None else self.spacing
        if isinstance(sample, tuple) and len(sample) == 2:
            sample, spacing = sample
        values = self._compute(sample, spacing)
        return [values[name] for name in self.feature_names_]


class Shape2D(_ShapeTable):
    """`shape_features_2d` of each 2D mask in X (largest component); `spacing` is (row, col)."""

    _all = SHAPE_2D_FEATURES
    _ndim = 2

    @staticmethod
    def _compute(mask, spacing):
        return shape_features_2d(mask, spacing)


class Shape3D(_ShapeTable):
    """`shape_features_3d` of each 3D mask in X (all foreground); `spacing` is (z, y, x)."""

    _all = SHAPE_3D_FEATURES
    _ndim = 3

    @staticmethod
    def _compute(mask, spacing):
        return shape_features_3d(mask, spacing)


__all__ = ["GLCMTexture", "FourierShape", "Shape2D", "Shape3D"]
