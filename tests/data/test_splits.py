"""Patient-grouped splits: stratified k-fold, the official split and the held-out fold, repeated
k-fold and hidden labels."""

import numpy as np

from medsight.data.base import Sample
from medsight.data.splits import hide_labels, kfold_indices, repeated_kfold, split_samples


def test_kfold_groups_patients_and_stratifies():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 2)  # two cases per patient
    labels = np.repeat(rng.integers(0, 2, 60), 2)
    folds = kfold_indices(labels, groups, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(120))
    for test in folds:
        other = np.setdiff1d(np.arange(120), test)
        assert not set(groups[test]) & set(groups[other])
        assert abs(labels[test].mean() - labels.mean()) < 0.15


def test_split_samples_respects_official_split_and_heldout_fold():
    samples = [Sample(id=f"c{i}", image=np.zeros((3, 4, 4), np.uint8), diagnosis="a",
                      split="val" if i < 5 else "train") for i in range(20)]
    out = split_samples(samples, [i % 2 for i in range(20)], 0.2)
    assert {s.id for s in out["val"]} == {f"c{i}" for i in range(5)} and len(out["train"]) == 15
    cv = split_samples(samples, [i % 2 for i in range(20)], 0.25, folds=4, fold=1)
    ids = [s.id for part in cv.values() for s in part]
    assert sorted(ids) == sorted(s.id for s in samples) and len(cv["heldout"]) == 5


def test_repeated_kfold_and_hidden_labels():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(100), 2)
    labels = np.repeat(rng.integers(0, 2, 100), 2)
    runs = repeated_kfold(labels, groups, 5, repeats=3, seed=0)
    assert len(runs) == 15
    first = [t for r, _, t in runs if r == 0]
    second = [t for r, _, t in runs if r == 1]
    assert sorted(np.concatenate(first).tolist()) == list(range(200))
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))  # reshuffled

    hidden = hide_labels(labels, groups, 0.2, seed=0)
    kept = hidden != -1
    assert np.array_equal(hidden[kept], labels[kept])
    assert abs(kept.mean() - 0.2) < 0.03
    for cls in (0, 1):  # stratified: about 20 % of each class keeps its label
        assert abs(kept[labels == cls].mean() - 0.2) < 0.05
    for g in range(100):  # whole patients
        assert kept[groups == g].all() or not kept[groups == g].any()
