"""Descriptor classifiers: agreement with scikit-learn, boosting behaviour, array-only state."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.estimator_checks import (
    check_get_params_invariance, check_no_attributes_set_in_init, check_parameters_default_constructible,
    check_set_params,
)

from medsight.errors import FeatureError
from medsight.features.classifiers import BoostedMLP, SVMHead

# BoostedMLP's networks are tiny: with two threads on a busy 2-core machine OpenMP's barriers made
# the boosting test take 200 s instead of 1 s
pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=120, classes=2, seed=0):
    return make_classification(n_samples=n, n_features=6, n_informative=4, n_redundant=0, n_classes=classes,
                               random_state=seed)


def _scaled(X):
    s = X.std(0)
    return (X - X.mean(0)) / np.where(s > 1e-12, s, 1)


def test_rbf_svm_decision_equals_sklearn():
    X, y = _data()
    head = SVMHead(kernel="rbf", C=2.0).fit(X, y)
    Z = _scaled(X)
    ref = SVC(kernel="rbf", C=2.0, gamma=1.0 / (Z.shape[1] * Z.var()), class_weight="balanced").fit(Z, y)
    np.testing.assert_allclose(head.decision_function(X), ref.decision_function(Z), rtol=1e-9, atol=1e-9)
    assert set(head.predict(X)) <= {0, 1}
    assert (head.predict(X) == ref.predict(Z)).all()


def test_linear_svm_multiclass_equals_liblinear():
    X, y = _data(classes=3)
    head = SVMHead(kernel="linear", C=0.5).fit(X, y)
    ref = LinearSVC(C=0.5, class_weight="balanced", max_iter=20000, random_state=0).fit(_scaled(X), y)
    np.testing.assert_allclose(head.decision_function(X), ref.decision_function(_scaled(X)), rtol=1e-9, atol=1e-9)
    proba = head.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1)
    assert proba.shape == (len(X), 3)


@pytest.mark.parametrize("cls", [SVMHead, BoostedMLP])
def test_state_round_trip_gives_identical_outputs(cls):
    X, y = _data()
    head = cls().fit(X, y) if cls is SVMHead else cls(n_estimators=3, steps=50).fit(X, y)
    state = head.get_state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    again = cls.from_state(head.get_params(), state)
    np.testing.assert_array_equal(again.predict_proba(X), head.predict_proba(X))
    with pytest.raises(FeatureError, match="state lacks"):
        cls.from_state(head.get_params(), {})


def test_boosting_beats_a_single_member_and_weights_errors():
    # XOR-like: a tiny network underfits; boosting adds members that fix its mistakes
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (300, 2))
    y = ((X[:, 0] * X[:, 1]) > 0).astype(int)
    single = BoostedMLP(n_estimators=1, hidden=2, steps=150, random_state=1).fit(X, y)
    boosted = BoostedMLP(n_estimators=15, hidden=2, steps=150, random_state=1).fit(X, y)
    assert len(boosted.alphas_) > 1 and (boosted.alphas_ > 0).all()
    assert (boosted.predict(X) == y).mean() > (single.predict(X) == y).mean()


def test_boosting_stops_on_a_perfect_member():
    X = np.r_[np.zeros((20, 2)), np.ones((20, 2)) * 5]
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    head = BoostedMLP(n_estimators=8, steps=100).fit(X, y)
    assert len(head.alphas_) == 1
    assert (head.predict(X) == y).all()


@pytest.mark.parametrize("cls", [SVMHead, BoostedMLP])
def test_estimator_contract(cls):
    name = cls.__name__
    check_parameters_default_constructible(name, cls())
    check_no_attributes_set_in_init(name, cls())
    check_get_params_invariance(name, cls())
    check_set_params(name, cls())
    X, y = _data(n=60)
    grid = {"C": [0.5, 2.0]} if cls is SVMHead else {"hidden": [4, 8]}
    base = cls() if cls is SVMHead else cls(n_estimators=2, steps=30)
    search = GridSearchCV(clone(base), grid, cv=3).fit(X, y)
    assert search.best_score_ > 0.6


def test_bad_input_is_a_clear_error():
    X, y = _data(n=20)
    with pytest.raises(FeatureError, match="single class"):
        SVMHead().fit(X, np.zeros(20, int))
    X[0, 0] = np.nan
    with pytest.raises(FeatureError, match="NaN"):
        BoostedMLP().fit(X, y)
    with pytest.raises(FeatureError, match="labels"):
        SVMHead().fit(np.ones((5, 2)), [0, 1])


def test_svm_without_standardising_sees_the_raw_input():
    X, y = _data()
    head = SVMHead(kernel="linear", C=0.5, standardize=False).fit(X, y)
    ref = LinearSVC(C=0.5, class_weight="balanced", max_iter=20000, random_state=0).fit(X, y)
    np.testing.assert_allclose(head.decision_function(X), ref.decision_function(X), rtol=1e-9, atol=1e-9)
