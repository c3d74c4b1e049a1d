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
name in the run directory, the ids of the cases it described in its stage record), so a resumed
run reads the finished ones back and trains only the rest. A recipe that reads its network from
an earlier crossfit run's ``model.safetensors`` reads the inner ones from beside it
(:func:`earlier_fold`), once :func:`check_earlier_run` has found that they described the same
cases as this run's folds would.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from rich.console import Console

from medsight.data.splits import kfold_indices
from medsight.errors import ConfigError, InputError
from medsight.recipes.common import TrainingData, training_groups
from medsight.recipes.prepare import Loaded, subset
from medsight.rundir import RunDir, RunRecord

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


def earlier_fold(weights: Path, name: str) -> Path:
    """Where the crossfit run whose final network is ``weights`` keeps inner network ``name``."""
    return weights.parent / name / weights.name


def check_earlier_run(weights: Path, stage: str, folds: list[np.ndarray], ids: Sequence[str]) -> None:
    """Before anything is written: ``weights`` is the final network of an earlier crossfit run
    whose inner networks (beside it, :func:`earlier_fold`) described the same cases as ``folds``
    of the training cases ``ids`` (same data, split, seed and number of folds), so that each still
    describes cases it did not learn from."""
    try:
        record = RunDir(weights.parent).read_record()
    except InputError as exc:
        raise InputError(weights, f"crossfit reads its inner networks from the run directory of this file, "
                                  f"and that holds no readable run record ({exc})") from None
    for j, fold in enumerate(folds):
        name = fold_stage(stage, j)
        described = record.stage(name).fitted.get("describes")
        if described is None or not earlier_fold(weights, name).is_file():
            raise InputError(weights, f"not the network of a finished crossfit run with {len(folds)} inner folds "
                                      f"({earlier_fold(weights, name)} or its stage record is missing)")
        if sorted(described) != sorted(ids[i] for i in fold):
            raise InputError(weights.parent / "run.json", f"its inner network {name} described other cases than "
                                                          "this run's fold (another split, seed or number of folds)")


def cross_fit(run: RunDir, record: RunRecord, train: Loaded, folds: list[np.ndarray], stage: str, fit: FitNetwork,
              describe: Describe, console: Console, what: str = "CNN", source: Path | None = None
              ) -> tuple[RunRecord, list]:
    """Train one network per fold on the other folds' cases (``fit``, stage and folder
    :func:`fold_stage`; a stage the record holds finished is read back by ``fit``, not trained)
    and let it ``describe`` the fold's cases, whose ids the stage's record keeps. Returns the
    record and, for every case of ``train`` in its order, the description made by the network
    that did not learn from it. ``source``: the earlier run's final network, when ``fit`` reads
    the inner networks from that run (for the progress lines)."""
    described: list = [None] * len(train.ids)
    everything = np.arange(len(train.ids))
    for j, fold in enumerate(folds):
        name = fold_stage(stage, j)
        rest = np.setdiff1d(everything, fold)
        done = record.stage(name).finished
        console.print(f"cross-fitting {what} {j + 1}/{len(folds)} ({name}): "
                      + ("finished earlier, read back" if done else f"read from {earlier_fold(source, name)}"
                         if source else f"trains on {len(rest)} training cases")
                      + f"; it describes the other {len(fold)}")
        record, network = fit(record, name, name, subset(train, rest))
        if not done and not source:
            kept = record.stage(name)
            score = kept.validation.get(kept.monitor) if kept.monitor else None
            console.print(f"cross-fitting {what} {j + 1}/{len(folds)}: best epoch {kept.best_epoch}"
                          + (f", validation {kept.monitor} {score:.4f}" if isinstance(score, float) else ""))
        held = subset(train, fold)
        for position, description in zip(fold.tolist(), describe(network, held)):
            described[position] = description
        record = record.with_stage(name, dataclasses.replace(record.stage(name), fitted={"describes": held.ids}))
        run.write_record(record)
    return record, described
