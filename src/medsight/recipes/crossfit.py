"""Cross-fitting a network's descriptor inside the training set, so that what a recipe fits on the
network's features (Fuse-TSD's CNN head, fgFV's encoder, foreground weights and SVM) learns from
features of cases the network did not train on. On its own training cases a network's features
are better separated than on new ones, and a head fitted on them trusts them too much.

The protocol (``crossfit``, with ``crossfit_folds`` k): the training cases are split into k
patient-grouped, label-stratified inner folds (:func:`inner_folds`); k networks are trained, each
on k - 1 folds and validated on the run's validation cases like the final one, and each describes
the cases of the fold it did not see (:func:`cross_fit`). Every training case is so described
exactly once, by a network that did not learn from it, and the head learns from all of them.

The network that then describes the validation, held-out and predicted cases is trained on every
training case: the usual cross-fitting (stacking) protocol, which keeps one network to predict
with, trained on the most data, at the cost of k + 1 trainings. Its features are not the inner
networks' own: they agree only as far as networks trained alike from one initialisation (all
k + 1 start from the run's seed) keep their channels' meaning. The alternative, describing a new
case with each of the k inner networks and averaging the head's probabilities over them, needs no
such agreement but costs k forward passes and k weight files at prediction; averaging the k
networks' features themselves would need the same agreement as the final network does.

Each inner network is a stage of its own (``<stage>_fold<j>``, its files in the folder of that
name in the run directory), so a resumed run reads the finished ones back and trains only the rest.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from rich.console import Console

from medsight.data.splits import kfold_indices
from medsight.errors import ConfigError
from medsight.recipes.common import TrainingData, training_groups
from medsight.recipes.prepare import Loaded, subset
from medsight.rundir import RunRecord

# (record, stage name, folder in the run directory, cases) -> (record, trained network)
FitNetwork = Callable[[RunRecord, str, str, Loaded], tuple[RunRecord, Any]]
# (network, cases) -> one description per case, in the cases' order
Describe = Callable[[Any, Loaded], Sequence[Any]]


def inner_folds(data: TrainingData, k: int, seed: int, key: str) -> list[np.ndarray]:
    """Positions in ``data.train`` of each of ``k`` patient-grouped, label-stratified folds, which
    together hold every training case once. ``key`` names the option in the error when the
    training cases hold fewer patients than folds."""
    groups = training_groups(data)
    patients = len(set(groups))
    if patients < k:
        raise ConfigError(f"{key}: {k} inner folds, but the training cases hold only {patients} patients")
    return kfold_indices(data.train.labels.numpy(), groups, k, seed)


def fold_stage(stage: str, fold: int) -> str:
    """The stage (and folder) name of the inner network that does not see fold ``fold``."""
    return f"{stage}_fold{fold}"


def cross_fit(record: RunRecord, train: Loaded, folds: list[np.ndarray], stage: str, fit: FitNetwork,
              describe: Describe, console: Console, what: str = "CNN") -> tuple[RunRecord, list]:
    """Train one network per fold on the other folds' cases (``fit``, stage and folder
    :func:`fold_stage`; a stage the record holds finished is read back by ``fit``, not trained)
    and let it ``describe`` the fold's cases. Returns the record and, for every case of
    ``train`` in its order, the description made by the network that did not learn from it."""
    described: list = [None] * len(train.ids)
    everything = np.arange(len(train.ids))
    for j, fold in enumerate(folds):
        name = fold_stage(stage, j)
        rest = np.setdiff1d(everything, fold)
        done = record.stage(name).finished
        console.print(f"cross-fitting {what} {j + 1}/{len(folds)} ({name}): "
                      + ("trained earlier, read back" if done else f"trains on {len(rest)} training cases")
                      + f"; it describes the other {len(fold)}")
        record, network = fit(record, name, name, subset(train, rest))
        if not done:
            kept = record.stage(name)
            score = kept.validation.get(kept.monitor) if kept.monitor else None
            console.print(f"cross-fitting {what} {j + 1}/{len(folds)}: best epoch {kept.best_epoch}"
                          + (f", validation {kept.monitor} {score:.4f}" if isinstance(score, float) else ""))
        for position, description in zip(fold.tolist(), describe(network, subset(train, fold))):
            described[position] = description
    return record, described
