"""Patient-grouped splits: stratified k-fold, the official split and the held-out fold, validation
carved from the training cases with the official validation split withheld, repeated k-fold and
hidden labels."""

import numpy as np
import pytest

from medsight.data.base import Sample
from medsight.data.splits import hide_labels, kfold_indices, repeated_kfold, split_samples
from medsight.errors import MedsightError


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


def official_cases(n_train=60, n_val=20, patients=True):
    """Cases of an official train / val split, two per patient, labels 0 / 1 / 2 by patient."""
    return [Sample(id=f"c{i}", image=np.zeros((3, 4, 4), np.uint8), diagnosis=str((i // 2) % 3),
                   patient_id=f"p{i // 2}" if patients else None, split="val" if i >= n_train else "train")
            for i in range(n_train + n_val)]


def test_val_source_train_withholds_the_official_validation_cases():
    samples = official_cases()
    labels = [int(s.diagnosis) for s in samples]
    out = split_samples(samples, labels, 0.2, seed=3, val_source="train")
    official_val = {s.id for s in samples if s.split == "val"}
    assert {s.id for s in out["withheld"]} == official_val
    used = [s.id for part in ("train", "val") for s in out[part]]
    assert sorted(used) == sorted(s.id for s in samples if s.split == "train")  # each training case once
    assert len(out["val"]) == 12 and not out["heldout"]
    # stratified: each class keeps its share (4 of each); patients stay on one side
    assert sorted(s.diagnosis for s in out["val"]) == ["0"] * 4 + ["1"] * 4 + ["2"] * 4
    assert not {s.patient_id for s in out["val"]} & {s.patient_id for s in out["train"]}
    again = split_samples(samples, labels, 0.2, seed=3, val_source="train")  # seeded
    assert [s.id for s in again["val"]] == [s.id for s in out["val"]]
    other = split_samples(samples, labels, 0.2, seed=4, val_source="train")
    assert [s.id for s in other["val"]] != [s.id for s in out["val"]]


def test_the_validation_folds_of_the_training_cases_partition_them():
    samples = official_cases(n_train=50, n_val=10, patients=False)
    labels = [int(s.diagnosis) for s in samples]
    folds = [split_samples(samples, labels, 0.2, seed=0, val_source="train", val_fold=k) for k in range(5)]
    vals = [{s.id for s in f["val"]} for f in folds]
    assert sorted(i for v in vals for i in v) == sorted(s.id for s in samples if s.split == "train")
    assert vals[0] == {s.id for s in split_samples(samples, labels, 0.2, seed=0, val_source="train")["val"]}
    for f, v in zip(folds, vals):
        assert {s.id for s in f["train"]} == {s.id for s in samples if s.split == "train"} - v


def test_validation_folds_need_the_training_cases_and_a_fold_that_exists():
    samples = official_cases()
    labels = [int(s.diagnosis) for s in samples]
    with pytest.raises(MedsightError, match="data.val_source: train"):
        split_samples(samples, labels, 0.2, val_fold=1)  # the official val split is in use
    with pytest.raises(MedsightError, match="not below the 5 validation folds"):
        split_samples(samples, labels, 0.2, val_source="train", val_fold=5)
    # with a held-out fold as well, the official validation cases take part in neither
    cv = split_samples(samples, labels, 0.25, folds=4, fold=1, val_source="train")
    withheld = {s.id for s in cv["withheld"]}
    assert len(withheld) == 20 and all(not withheld & {s.id for s in cv[p]} for p in ("train", "val", "heldout"))
    assert len(cv["heldout"]) + len(cv["train"]) + len(cv["val"]) == 60
