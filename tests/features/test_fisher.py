"""Tests of medsight.features.fisher (formulas, skimage agreement, estimator contract) and of
medsight.features.foreground (fgFV, membership maps)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from medsight.errors import FeatureError
from medsight.features import fisher
from medsight.features.fisher import FisherVector, fisher_vector, fisher_vectors
from medsight.features.foreground import ForegroundFisherVector, membership_map

from references import require


def dense_fv(x, w, mu, var, min_posterior=0.0):
    """Reference: the FV straight from the definition, posteriors from log densities."""
    x = np.asarray(x, dtype=np.float64)
    logp = np.log(w) - 0.5 * (np.log(2 * np.pi * var).sum(1) + ((x[:, None] - mu) ** 2 / var).sum(2))
    g = np.exp(logp - logp.max(1, keepdims=True))
    g /= g.sum(1, keepdims=True)
    g[g < min_posterior] = 0
    z = (x[:, None] - mu) / np.sqrt(var)  # (T, K, D)
    u = np.einsum("tk,tkd->kd", g, z) / (len(x) * np.sqrt(w)[:, None])
    v = np.einsum("tk,tkd->kd", g, z**2 - 1) / (len(x) * np.sqrt(2 * w)[:, None])
    return np.concatenate([u.ravel(), v.ravel()])


def ifv(fv):
    s = np.sign(fv) * np.sqrt(np.abs(fv))
    return s / np.linalg.norm(s)


def assert_rel(got, want, tol):
    """Max difference relative to the largest entry."""
    assert np.abs(got - want).max() <= tol * np.abs(want).max(), np.abs(got - want).max()


def blobs(rng, n_sets, k=3, d=5, spread=0.6, sizes=(20, 40)):
    centres = rng.normal(0, 3, (k, d))
    return [centres[rng.integers(0, k, t)] + rng.normal(0, spread, (t, d))
            for t in rng.integers(*sizes, n_sets)]


@pytest.fixture(scope="module")
def fitted():
    sets = blobs(np.random.default_rng(0), 12)
    return FisherVector(n_components=3, max_iter=50).fit(sets), sets


# ----------------------------------------------------------------------- formulas and skimage


def test_hand_computed_single_component():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
    w, mu, var = np.array([1.0]), np.array([[2.0, 1.0]]), np.array([[4.0, 9.0]])
    # (x - mu)/sigma = [-1/2, 1/3], [1/2, 1], [3/2, -1/3]; T = 3, w = 1
    u = np.array([1.5, 1.0]) / 3
    v = np.array([-0.25, -16 / 9]) / (3 * np.sqrt(2))
    want = np.concatenate([u, v])
    np.testing.assert_allclose(fisher_vector(x, w, mu, var, improved=False), want, rtol=1e-13)
    np.testing.assert_allclose(fisher_vector(x, w, mu, var), ifv(want), rtol=1e-13)


def skimage_gmm(fv):
    gm = GaussianMixture(fv.n_components, covariance_type="diag")
    gm.weights_, gm.means_, gm.covariances_ = fv.weights_, fv.means_, fv.variances_
    gm.precisions_cholesky_ = 1 / np.sqrt(fv.variances_)
    return gm


@pytest.mark.parametrize("improved", [False, True])
def test_agrees_with_skimage(fitted, improved):
    """skimage: [K weight grads, mean grads, -variance grads]; IFV normalised over all three."""
    skfv = pytest.importorskip("skimage.feature").fisher_vector
    fv, sets = fitted
    k, d = fv.means_.shape
    gm = skimage_gmm(fv)
    for x in sets[:4]:
        ours = fisher_vector(x, fv.weights_, fv.means_, fv.variances_, improved, min_posterior=0)
        ref = skfv(x, gm, improved=improved)
        ref = np.concatenate([ref[k:k + k * d], -ref[k + k * d:]])
        if improved:
            ref /= np.linalg.norm(ref)  # drop the weight part's share of the norm
        assert_rel(ours, ref, 1e-6)


@pytest.mark.parametrize("improved", [False, True])
def test_agrees_with_vlfeat(fitted, improved):
    """VLFeat's vl_fisher (through cyvlfeat, in float64) skips posteriors below 1e-6: min_posterior=1e-6.
    Its layout is ours. cyvlfeat needs Debian's libvlfeat-dev to build, so it is rarely installed."""
    vl_fisher = require("cyvlfeat.fisher", "cyvlfeat (VLFeat) is not installed").fisher
    fv, sets = fitted
    for x in sets[:4]:
        ours = fisher_vector(x, fv.weights_, fv.means_, fv.variances_, improved, min_posterior=1e-6)
        ref = vl_fisher(x, fv.means_, fv.variances_, fv.weights_, improved=improved)
        assert_rel(ours, ref, 1e-12)  # (without the threshold, min_posterior=0, IFV differs by up to 5e-10)


@pytest.mark.parametrize("min_posterior", [0.0, 1e-4, 0.05, 0.45, 1 - 1e-7])
def test_fast_path_equals_dense(min_posterior):
    """Hard and soft posteriors mixed; batched, per set and float32 input give the dense values
    (1 - 1e-7: tops near the threshold)."""
    rng = np.random.default_rng(1)
    k, d = 6, 8
    w = rng.dirichlet(np.ones(k))
    mu = rng.normal(0, 2, (k, d))
    var = rng.uniform(0.3, 2.0, (k, d))
    sets = blobs(rng, 7, k=4, d=d, spread=1.5, sizes=(1, 400))
    sets.append(0.5 * (mu[0] + mu[1]) + rng.normal(0, 0.01, (5, d)))  # near ties
    want = np.stack([dense_fv(x, w, mu, var, min_posterior) for x in sets])
    got = fisher_vectors(sets, w, mu, var, improved=False, min_posterior=min_posterior)
    assert_rel(got, want, 1e-8)
    one = fisher_vector(sets[2], w, mu, var, improved=False, min_posterior=min_posterior)
    assert_rel(one, want[2], 1e-8)
    x32 = [x.astype(np.float32) for x in sets]
    want32 = np.stack([dense_fv(x, w, mu, var, min_posterior) for x in x32])
    assert_rel(fisher_vectors(x32, w, mu, var, False, min_posterior), want32, 1e-8)


def test_chunks_pieces_and_empty_sets_equal_dense(monkeypatch):
    """Chunks of 16 descriptors: a set split into pieces, sets packed into one chunk with an empty
    set between them (written apart), empty sets as zero codes (the fgFV case)."""
    monkeypatch.setattr(fisher, "_CHUNK_ROWS", 16)
    rng = np.random.default_rng(5)
    k, d = 5, 6
    w = rng.dirichlet(np.ones(k))
    mu = rng.normal(0, 2, (k, d))
    var = rng.uniform(0.3, 2.0, (k, d))
    sizes = [40, 3, 5, 0, 4, 20, 0, 2, 33]
    sets = [mu[rng.integers(0, k, t)] + rng.normal(0, 1.2, (t, d)) for t in sizes]
    gmm = fisher._gmm_of(w, mu, var)
    for min_posterior in (0.0, 1e-4):
        got = gmm.encode(sets, False, min_posterior, empty_is_zero=True)
        for x, code in zip(sets, got):
            if len(x):  # (posteriors to within 1e-6: at 0, the float32 ones show at 1e-8)
                assert_rel(code, dense_fv(x, w, mu, var, min_posterior), 1e-7)
            else:
                assert not code.any()


def test_gmm_constants_follow_in_place_changes():
    """The GMM constants are cached between calls, but not past a change of the parameters."""
    rng = np.random.default_rng(6)
    w, mu, var = np.full(3, 1 / 3), rng.normal(0, 2, (3, 4)), np.ones((3, 4))
    x = rng.normal(0, 2, (30, 4))
    first = fisher_vector(x, w, mu, var, improved=False)
    assert_rel(first, dense_fv(x, w, mu, var, 1e-4), 1e-8)
    mu += 0.5
    assert_rel(fisher_vector(x, w, mu, var, improved=False), dense_fv(x, w, mu, var, 1e-4), 1e-8)


def test_float32_screen_falls_back_when_rounding_is_large():
    """Two soft neighbours far from a third Gaussian, small variances: float32 logits are off by
    many nats, so every row must be redone in float64 (the remaining error is float64's)."""
    rng = np.random.default_rng(2)
    mu = np.array([[0.0, 0.0, 0.0], [0.02, 0.0, 0.01], [300.0, 0.0, 0.0]])
    var = np.full((3, 3), 1e-3)
    w = np.full(3, 1 / 3)
    x = mu[rng.integers(0, 3, 60)] + rng.normal(0, 0.03, (60, 3))
    assert_rel(fisher_vector(x, w, mu, var, False), dense_fv(x, w, mu, var, 1e-4), 1e-6)


def test_redone_rows_keep_their_far_components():
    """A descriptor halfway between two Gaussians is redone in float64 near its top; a third
    Gaussian about 12 nats further keeps the screen's value, which must still be its posterior
    (to the screen's accuracy), not a zero."""
    mu = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 5.0]])
    var, w = np.full((3, 2), 1.0), np.full(3, 1 / 3)
    x = np.array([[0.5, 0.0], [0.5, 0.1], [0.45, -0.1]])
    logp = -0.5 * ((x[:, None] - mu) ** 2 / var).sum(2)
    want = np.exp(logp - logp.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    assert 1e-6 < want[:, 2].max() < 1e-5  # far (> 6 nats below the top) yet not negligible
    got = fisher._gmm_of(w, mu, var).posteriors(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_values_beyond_float32_are_encoded_in_float64():
    """A descriptor too large for the float32 screen (its square overflows) is redone exactly;
    one whose square overflows float64 too is an error."""
    rng = np.random.default_rng(3)
    mu, var, w = rng.normal(size=(3, 4)), np.full((3, 4), 0.5), np.full(3, 1 / 3)
    x = rng.normal(size=(6, 4))
    x[2, 1] = 1e30
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no overflow warnings from the screen either)
        assert_rel(fisher_vector(x, w, mu, var, False), dense_fv(x, w, mu, var, 1e-4), 1e-12)
    x[2, 1] = 1e200
    with pytest.raises(FeatureError, match="set 0 has NaN, infinite or too large values"):
        fisher_vector(x, w, mu, var)


def test_ifv_is_unit_signed_square_root(fitted):
    fv, sets = fitted
    raw = fisher_vector(sets[0], fv.weights_, fv.means_, fv.variances_, improved=False)
    code = fisher_vector(sets[0], fv.weights_, fv.means_, fv.variances_)
    assert np.linalg.norm(code) == pytest.approx(1.0, abs=1e-12)
    assert np.array_equal(np.sign(code), np.sign(raw))
    np.testing.assert_allclose(code**2 * np.abs(raw).sum(), np.abs(raw), rtol=1e-10, atol=1e-15)


def test_descriptors_at_the_means_have_zero_mean_gradient():
    mu = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    var = np.ones((3, 2))
    x = np.repeat(mu, [3, 1, 2], axis=0)  # cross posteriors < 1e-4 are dropped
    code = fisher_vector(x, np.full(3, 1 / 3), mu, var, improved=False)
    np.testing.assert_allclose(code[:6], 0, atol=1e-15)
    # each descriptor sits at its mean: (0 - 1) per dimension
    np.testing.assert_allclose(code[6:].reshape(3, 2),
                               -np.array([3, 1, 2])[:, None] / (6 * np.sqrt(2 / 3)) * np.ones(2))


# ------------------------------------------------------------------------------------ fgFV


def fg_problem(rng, n, d=16, shift=0.3, nuisance=3.0):
    """Sets of 12 foreground descriptors (clusters 0-1, shifted by +-shift with the class) and
    48 background ones (clusters 2-7, all shifted by a random per-set nuisance, no class signal)."""
    centres = np.random.default_rng(99).normal(0, 6, (8, d))
    sets, labels, fg = [], [], []
    for i in range(n):
        label = i % 2
        f = centres[rng.integers(0, 2, 12)] + rng.normal(0, 1, (12, d)) + (2 * label - 1) * shift
        b = centres[rng.integers(2, 8, 48)] + rng.normal(0, 1, (48, d)) + nuisance * rng.normal(0, 1, d)
        order = rng.permutation(60)
        sets.append(np.concatenate([f, b])[order])
        fg.append(np.r_[np.ones(12, bool), np.zeros(48, bool)][order])
        labels.append(label)
    return sets, np.array(labels), fg, centres


@pytest.fixture(scope="module")
def fg_data():
    rng = np.random.default_rng(0)
    return fg_problem(rng, 60), fg_problem(rng, 200)


@pytest.fixture(scope="module")
def fg_fitted(fg_data):
    """One learning stage (no pruning): the weights and the codes."""
    (train, y, _, _), _ = fg_data
    return ForegroundFisherVector(n_components=8, iterations=0, steps=100, lrs=(0.1, 0.01)).fit(train, y)


@pytest.fixture(scope="module")
def fg_pruned(fg_data):
    """With one prune-and-re-fit iteration: the first model becomes a filter."""
    (train, y, _, _), _ = fg_data
    return ForegroundFisherVector(n_components=8, iterations=1, steps=100, lrs=(0.1, 0.01)).fit(train, y)


def test_fgfv_weights_favour_the_signal_components(fg_data, fg_fitted):
    centres = fg_data[0][3]
    nearest = np.linalg.norm(fg_fitted.means_[:, None] - centres, axis=2).argmin(1)
    signal = fg_fitted.component_weights_[nearest < 2]
    noise = fg_fitted.component_weights_[nearest >= 2]
    assert len(signal) and len(noise)
    assert signal.min() > 0.5 and noise.max() < 0.2, (signal, noise)
    assert fg_fitted.component_weights_.max() == 1.0 and fg_fitted.component_weights_.min() >= 0


def test_fgfv_codes_beat_plain_ifv(fg_data, fg_fitted):
    (train, y, _, _), (test, y_test, _, _) = fg_data
    plain = FisherVector(n_components=8).fit(train)
    acc_plain = LinearSVC(C=10).fit(plain.transform(train), y).score(plain.transform(test), y_test)
    model = fg_fitted
    acc_fg = LinearSVC(C=10).fit(model.transform(train), y).score(model.transform(test), y_test)
    assert acc_fg >= acc_plain and acc_fg > 0.95, (acc_fg, acc_plain)
    assert np.allclose(np.linalg.norm(model.transform(test[:5]), axis=1), 1)


@pytest.mark.parametrize("pruned", [False, True])
def test_membership_is_higher_on_the_foreground(fg_data, fg_fitted, fg_pruned, pruned):
    _, (test, _, fg, _) = fg_data
    model = fg_pruned if pruned else fg_fitted
    assert len(model.filters_) == int(pruned)
    mg = np.concatenate([model.membership(x) for x in test[:20]])
    is_fg = np.concatenate(fg[:20])
    assert mg[is_fg].mean() > 10 * mg[~is_fg].mean(), (mg[is_fg].mean(), mg[~is_fg].mean())
    assert np.quantile(mg[is_fg], 0.1) > np.quantile(mg[~is_fg], 0.95)
    if pruned:  # the filter drops (nearly) all background descriptors and keeps the foreground
        assert (mg[~is_fg] == 0).mean() > 0.95 and (mg[is_fg] > 0).mean() > 0.95
    else:
        assert mg[is_fg].mean() > 0.5 and mg[~is_fg].mean() < 0.05


def test_membership_map_recovers_a_painted_square(fg_data, fg_fitted, fg_pruned):
    centres = fg_data[0][3]
    rng = np.random.default_rng(5)
    inside = np.zeros((14, 14), bool)
    inside[3:9, 5:12] = True
    which = np.where(inside.ravel(), rng.integers(0, 2, 196), rng.integers(2, 8, 196))
    cells = centres[which] + rng.normal(0, 1, (196, centres.shape[1]))
    truth = inside[np.arange(112) * 14 // 112][:, np.arange(120) * 14 // 120]
    dice = lambda m: 2 * (m & truth).sum() / (m.sum() + truth.sum())  # noqa: E731
    soft, mask = membership_map(fg_fitted.membership(cells), (14, 14), (112, 120))
    assert soft.shape == mask.shape == (112, 120) and 0 <= soft.min() and soft.max() == 1
    assert dice(mask) > 0.8, dice(mask)
    # after a pruning iteration the last GMM was fitted on foreground descriptors alone and its
    # weights rank them among themselves (foreground mg about 0.3 here): the absolute threshold
    # keeps less, while the per-image display map still outlines the square
    soft, mask = membership_map(fg_pruned.membership(cells), (14, 14), (112, 120))
    assert dice(soft > 0.5) > 0.8 and mask.sum() < (soft > 0.5).sum()


def test_membership_map_by_value():
    # one full cell of a 2x2 grid on a 4x4 image: bilinear weights 1, 3/4, 1/4, 0 along each axis
    # (cell centres on pixel centres, the edge held), so the map is their outer product
    a = np.array([1, 0.75, 0.25, 0])
    soft, mask = membership_map(np.array([1.0, 0, 0, 0]), (2, 2), (4, 4), sigma=0)
    assert np.allclose(soft, np.outer(a, a))
    # above 0.5: 1, 0.75, 0.75, 0.5625 (the top-left 2x2); opening with the radius-1 disk (a plus)
    # removes the corner pixel (1, 1), whose lower and right neighbours are outside
    expected = np.zeros((4, 4), bool)
    expected[0, :2] = expected[:2, 0] = True
    assert np.array_equal(mask, expected)


def test_membership_threshold_is_absolute():
    # every descriptor has low membership (0.2, one cell 0.4): no foreground, although the map
    # normalised per image for display spans [0, 1] and would put a foreground at the 0.4 cell
    mg = np.full(16, 0.2)
    mg[5] = 0.4
    soft, mask = membership_map(mg, (4, 4), (32, 32))
    assert soft.min() == 0 and soft.max() == 1 and (soft > 0.5).any()
    assert not mask.any()
    # the same pattern at full membership is foreground around that cell, and only there
    soft_high, mask_high = membership_map(mg / 0.4, (4, 4), (32, 32), sigma=0)
    assert mask_high[8:16, 8:16].all() and not mask_high[24:, 24:].any()


def test_membership_map_edges():
    soft, mask = membership_map(np.zeros(16), (4, 4), (32, 32))
    assert not soft.any() and not mask.any()
    full = membership_map(np.r_[np.ones(15), 0.0], (4, 4), (32, 32), sigma=0)[1]
    assert full[0].all() and full[:, 0].all() and not full[-1, -1]  # the border erodes nothing
    with pytest.raises(FeatureError, match="4x4"):
        membership_map(np.zeros(15), (4, 4), (32, 32))


def test_fgfv_validation_names_the_sets_that_score_the_weights():
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(3)
    sets, y = blobs(rng, 24, k=4, d=3), np.arange(24) % 2
    params = dict(n_components=4, steps=20, iterations=0, max_iter=20)
    _, val = train_test_split(np.arange(24), test_size=0.25, stratify=y, random_state=0)
    mask = np.isin(np.arange(24), val)
    by_default = ForegroundFisherVector(**params).fit(sets, y).component_weights_
    for given in (val, mask):  # the default's own split, given as indices or as a mask: the same weights
        got = ForegroundFisherVector(**params).fit(sets, y, validation=given).component_weights_
        assert np.allclose(got, by_default, atol=1e-3), (got, by_default)  # (summed in another order)
    other = ForegroundFisherVector(**params).fit(sets, y, validation=np.flatnonzero(~mask)[:6]).component_weights_
    assert not np.allclose(other, by_default, atol=1e-2), other
    with pytest.raises(FeatureError, match="fewer than two classes"):
        ForegroundFisherVector(**params).fit(sets, y, validation=[0, 2, 4])


def test_fgfv_multiclass_and_unlabelled_sets_run():
    rng = np.random.default_rng(3)
    sets = blobs(rng, 30, k=4, d=3)
    y = np.r_[np.arange(24) % 3, -np.ones(6, int)]
    model = ForegroundFisherVector(n_components=4, steps=10, iterations=1, max_iter=20)
    codes = model.fit(sets, y).transform(sets)
    assert codes.shape == (30, 24) and np.allclose(np.linalg.norm(codes, axis=1), 1)


def test_fgfv_is_deterministic(fg_data, fg_fitted):
    (train, y, _, _), (test, _, _, _) = fg_data
    again = clone(fg_fitted).fit(train, y)
    assert np.array_equal(again.component_weights_, fg_fitted.component_weights_)
    assert np.array_equal(again.transform(test[:5]), fg_fitted.transform(test[:5]))


# ------------------------------------------------------------------------ estimator contract


@pytest.mark.parametrize("cls", [FisherVector, ForegroundFisherVector])
def test_sklearn_checks(cls):
    name = cls.__name__
    check_parameters_default_constructible(name, cls())
    check_no_attributes_set_in_init(name, cls())
    check_get_params_invariance(name, cls())
    check_set_params(name, cls())


def test_clone_params_pipeline_and_grid_search(fitted):
    _, sets = fitted
    fv = FisherVector(n_components=3, max_iter=30)
    assert clone(fv).get_params() == fv.get_params()
    assert fv.set_params(n_components=2).n_components == 2
    rng = np.random.default_rng(4)
    y = np.arange(20) % 2
    data = [x + 2.0 * label for x, label in zip(blobs(rng, 20, d=5), y)]
    pipe = Pipeline([("fv", FisherVector(n_components=2, max_iter=30)), ("svm", LinearSVC())])
    assert pipe.fit(data, y).score(data, y) > 0.9
    search = GridSearchCV(pipe, {"fv__n_components": [2, 3]}, cv=2).fit(data, y)
    assert search.best_params_["fv__n_components"] in (2, 3)
    assert search.predict(data[:3]).shape == (3,)


@pytest.mark.parametrize("which", ["fv", "fgfv"])
def test_state_round_trip_through_safetensors(tmp_path, fitted, fg_data, fg_pruned, which):
    from safetensors.numpy import load_file, save_file

    if which == "fv":
        model, sets = fitted
    else:
        model, sets = fg_pruned, fg_data[1][0][:5]
    save_file(model.get_state(), str(tmp_path / "state.safetensors"))
    back = type(model).from_state(model.get_params(), load_file(str(tmp_path / "state.safetensors")))
    assert np.array_equal(back.transform(sets), model.transform(sets))
    with pytest.raises(FeatureError, match="lacks"):
        type(model).from_state(model.get_params(), {"means": model.means_})


def test_posteriors(fitted):
    fv, sets = fitted
    post = fv.posteriors(sets[0])
    np.testing.assert_allclose(post, skimage_gmm(fv).predict_proba(sets[0]), atol=1e-12)


# -------------------------------------------------------------------------------- bad input


def test_bad_input_raises_feature_error(fitted):
    fv, sets = fitted
    d = sets[0].shape[1]
    with pytest.raises(FeatureError, match="D=4, the GMM expects D=5"):
        fv.transform([sets[0], sets[1][:, :4]])
    nan = sets[1].copy()
    nan[3, 2] = np.nan
    with pytest.raises(FeatureError, match="set 1 has NaN"):
        fv.transform([sets[0], nan])
    with pytest.raises(FeatureError, match="set 1 has NaN"):
        FisherVector(n_components=2).fit([sets[0], nan])
    with pytest.raises(FeatureError, match="set 0 is empty"):
        fv.transform([np.empty((0, d))])
    with pytest.raises(FeatureError, match="cannot fit a GMM with 3 components"):
        FisherVector(n_components=3).fit([sets[0][:2]])
    with pytest.raises(FeatureError, match="sequence of"):
        fv.transform(sets[0])  # one set, not wrapped in a list
    with pytest.raises(ValueError):  # FeatureError is a ValueError for scikit-learn code
        fisher_vector(sets[0], fv.weights_, fv.means_[:, :2], fv.variances_)
    with pytest.raises(FeatureError, match="two labelled classes"):
        ForegroundFisherVector(n_components=2).fit(sets, np.r_[np.zeros(9), -np.ones(3)])
    with pytest.raises(FeatureError, match="one label per set"):
        ForegroundFisherVector(n_components=2).fit(sets, np.zeros(3))


def test_weight_learning_gradient_stays_finite_when_every_weight_is_zero():
    # all weights clamped to 0 (nothing helped) once made sqrt's infinite slope at 0 poison c with NaN
    import torch

    from medsight.features.foreground import _surrogate

    rng = np.random.default_rng(0)
    scores, sq = torch.as_tensor(rng.normal(size=(6, 3, 4))), torch.as_tensor(rng.uniform(1, 2, (6, 4)))
    c = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    target = torch.as_tensor([0, 1, 2, 0, 1, 2])
    (grad,) = torch.autograd.grad(_surrogate(c, scores, sq, torch.zeros(3, dtype=torch.float64), target, True), c)
    assert torch.isfinite(grad).all()
