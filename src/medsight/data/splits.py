"""Patient-grouped, label-stratified splits: hold-out validation and k-fold cross-validation.

Cases of one patient (``Sample.patient_id``, the id when absent) always land on the same side.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medsight.errors import MedsightError


def _groups(patient_ids, ids):
    return np.array([p if p is not None else i for p, i in zip(patient_ids, ids)])


def kfold_indices(labels, groups, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Test indices of each of ``folds`` stratified, patient-grouped folds (every index once)."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if folds < 2:
        raise MedsightError(f"data.folds: need at least 2 folds, got {folds}")
    if len(np.unique(groups)) < folds:
        raise MedsightError(f"data.folds: {folds} folds but only {len(np.unique(groups))} patients")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(labels)), labels, groups)]


def holdout_indices(labels, groups, fraction: float, seed: int = 0, fold: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices with about ``fraction`` of the patients in val, stratified by label:
    val is fold ``fold`` of ``round(1 / fraction)`` folds, so folds 0, 1, ... of one seed are
    disjoint and together cover every case (the members of a k-fold ensemble)."""
    folds = max(2, int(round(1 / fraction)))
    if not 0 <= fold < folds:
        raise MedsightError(f"data.val_fold: {fold} is not below the {folds} validation folds that "
                            f"data.val_fraction {fraction} makes (1 / val_fraction)")
    val = kfold_indices(labels, groups, folds, seed)[fold]
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def split_samples(samples, labels, val_fraction: float, seed: int = 0, folds: int = 0, fold: int = 0,
                  val_source: str = "official", val_fold: int = 0) -> dict:
    """Split samples into ``train`` / ``val`` / ``heldout`` / ``withheld`` lists.

    Samples that carry an official ``split`` ("train"/"val") keep it (``val_source`` "official");
    with ``val_source`` "train" the official validation cases are ``withheld`` (neither trained on
    nor used to choose anything, left for one final score) and validation is carved out of the
    training cases, as it is for layouts without an official split: fold ``val_fold`` of
    ``round(1 / val_fraction)`` stratified, patient-grouped folds. With ``folds`` > 1, fold
    ``fold`` of all the cases left is held out first.
    """
    ids = [s.id for s in samples]
    groups = _groups([s.patient_id for s in samples], ids)
    labels = np.asarray(labels)
    out = {"train": [], "val": [], "heldout": [], "withheld": []}
    rest = np.arange(len(samples))
    if val_source == "train":
        out["withheld"] = [s for s in samples if s.split == "val"]
        rest = np.array([i for i in rest if samples[i].split != "val"], dtype=int)
    elif val_source != "official":
        raise MedsightError(f"data.val_source: {val_source!r} is not 'official' or 'train'")
    if folds > 1:
        if fold >= folds:
            raise MedsightError(f"data.fold: {fold} is not below data.folds ({folds})")
        heldout = rest[kfold_indices(labels[rest], groups[rest], folds, seed)[fold]]
        out["heldout"] = [samples[i] for i in heldout]
        rest = np.setdiff1d(rest, heldout)
    official = {s.split for s in (samples[i] for i in rest)}
    if folds <= 1 and "val" in official:
        if val_fold:
            raise MedsightError("data.val_fold: the layout's official validation split is used; set "
                                "data.val_source: train to carve validation folds out of the training cases")
        out["train"] = [samples[i] for i in rest if samples[i].split == "train"]
        out["val"] = [samples[i] for i in rest if samples[i].split == "val"]
        return out
    train, val = holdout_indices(labels[rest], groups[rest], val_fraction, seed, val_fold)
    out["train"] = [samples[rest[i]] for i in train]
    out["val"] = [samples[rest[i]] for i in val]
    return out


def repeated_kfold(labels, groups, folds: int, repeats: int, seed: int = 0) -> list[tuple[int, int, np.ndarray]]:
    """``(repeat, fold, test indices)`` for ``repeats`` differently shuffled k-fold partitions."""
    return [(r, k, test) for r in range(repeats)
            for k, test in enumerate(kfold_indices(labels, groups, folds, seed + r))]


def hide_labels(labels, groups, labelled_fraction: float, seed: int = 0) -> np.ndarray:
    """A copy of ``labels`` where all but about ``labelled_fraction`` of the patients are marked
    unlabelled (-1, scikit-learn's convention), stratified by label, whole patients at a time."""
    if not 0 < labelled_fraction <= 1:
        raise MedsightError(f"labelled fraction must be in (0, 1], got {labelled_fraction}")
    labels = np.asarray(labels).copy()
    if labelled_fraction == 1:
        return labels
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    keep = np.zeros(len(labels), dtype=bool)
    patient_label = {}
    for g, y in zip(groups, labels):  # a patient's class: the largest label among their cases
        patient_label[g] = max(patient_label.get(g, y), y)
    for cls in sorted(set(patient_label.values())):
        patients = np.array(sorted(g for g, y in patient_label.items() if y == cls))
        rng.shuffle(patients)
        chosen = patients[:max(1, int(round(labelled_fraction * len(patients))))]
        keep |= np.isin(groups, chosen)
    labels[~keep] = -1
    return labels
