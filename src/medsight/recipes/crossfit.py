"""Cross-fitting a network's descriptor inside the training set, so that what a recipe fits on the
network's features (Fuse-TSD's CNN head, fgFV's encoder, foreground weights and SVM) learns from
features of cases the network did not train on. On its own training cases a network's features
are better separated than on new ones, and a head fitted on them trusts them too much.

The protocol (``crossfit``, with ``crossfit_folds`` k): the training cases are split into k
patient-grouped, label-stratified inner folds (:func:`inner_folds`); k networks are trained, each
on k - 1 folds (validated, for its epoch, on the run's validation cases), and each describes the
cases of the fold it did not see (:func:`cross_fit`). Every training case is so described exactly
once, by a network that did not learn from it, and the head learns from all of them.

Validation, held-out and new cases are described by each of the k networks, and the head's
probabilities are averaged over the k descriptions (:meth:`medsight.recipes.heads.Heads.mean_proba`):
the head then reads each network's features as it learnt them, and no case it scores was
trained on by the network that described it. The usual stacking protocol instead trains one more
network on every training case to describe new cases; that holds for base models whose outputs
are predictions, but a network's features are its own coordinates, and another network's (even
one from the same initialisation) do not mean the same. Measured on a synthetic fgFV run
(benchmarks/RESULTS.md, issue 18 cross-fitting): the same channel of an inner and such a final
network correlated at r 0.17, and the validation AUC was 0.23 with the final network against
0.93 averaging the k. Averaging the k networks' features before the head would mix coordinates
in the same way. The price: k forward passes and k weight files at prediction, k trainings.

Each inner network is a stage of its own (``<stage>_fold<j>``, its files in the folder of that
name in the run directory, the ids of the cases it described in its stage record), so a resumed
run reads the finished ones back and trains only the rest. A recipe can read the k networks from
an earlier crossfit run directory instead (:func:`fold_weights`), once :func:`check_earlier_run`
has found that they described the same cases as this run's folds would.
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


def fold_weights(run: Path, name: str) -> Path:
    """The weights of inner network ``name`` in crossfit run directory ``run``."""
    return run / name / "model.safetensors"


def network_files(run: RunDir, stage: str, folds: int | None) -> list[Path]:
    """The weights of the networks that describe new cases: the ``folds`` inner networks of a
    crossfit run, or (``folds`` None) the run's one network."""
    if folds is None:
        return [run.stage_dir() / "model.safetensors"]
    return [fold_weights(run.path, fold_stage(stage, j)) for j in range(folds)]


def check_earlier_run(run: Path, stage: str, folds: list[np.ndarray], ids: Sequence[str]) -> None:
    """Before anything is written: ``run`` is an earlier crossfit run directory whose inner
    networks (:func:`fold_weights`) described the same cases as ``folds`` of the training cases
    ``ids`` (same data, split, seed and number of folds), so that each still describes cases it
    did not learn from."""
    if not run.is_dir():
        raise InputError(run, "not found: with crossfit, name an earlier crossfit run directory")
    try:
        record = RunDir(run).read_record()
    except InputError as exc:
        raise InputError(run, f"not a crossfit run directory: no readable run record ({exc})") from None
    for j, fold in enumerate(folds):
        name = fold_stage(stage, j)
        described = record.stage(name).fitted.get("describes")
        if described is None or not fold_weights(run, name).is_file():
            raise InputError(run, f"not a finished crossfit run with {len(folds)} inner folds "
                                  f"({fold_weights(run, name)} or its stage record is missing)")
        if sorted(described) != sorted(ids[i] for i in fold):
            raise InputError(run / "run.json", f"its inner network {name} described other cases than this "
                                               "run's fold (another split, seed or number of folds)")


def refuse_other_protocol(section, prefix: str, protocol: str, options: dict[str, str]) -> None:
    """A section validator's check: each of ``options`` (option -> the ``protocol`` value it belongs
    to) set away from its default while ``protocol`` names another would be ignored, so refuse it.
    A run's saved config holds every default, so a default value is not a choice."""
    chosen = getattr(section, protocol)
    for option, belongs in options.items():
        if getattr(section, option) != type(section).model_fields[option].default and chosen != belongs:
            raise ValueError(f"{prefix}.{option} applies to {protocol}: {belongs}, not {chosen}")


def training_check(weights: str | None, crossfit: bool, k: int, seed: int, prefix: str, weights_key: str,
                   also: Callable[[TrainingData], None]) -> Callable[[TrainingData], None]:
    """Check a recipe's network-weights option now (crossfit: an earlier run directory, else a
    file), and return the check that ``start_training`` runs on the split before the run directory
    is written: ``also``, then (crossfit) the inner folds and the earlier run's match with them.
    ``prefix`` is the options' section (``features.cnn``), ``weights_key`` the weights option's name."""
    if weights and not (Path(weights).is_dir() if crossfit else Path(weights).is_file()):
        raise InputError(weights, f"{prefix}.{weights_key}: " + ("no such run directory" if crossfit
                                                                 else "file not found"))

    def check(data: TrainingData) -> None:
        also(data)
        if crossfit:
            folds = inner_folds(data, k, seed, f"{prefix}.crossfit_folds")
            if weights:
                check_earlier_run(Path(weights), "cnn", folds, data.train.ids)

    return check


def cross_fit(run: RunDir, record: RunRecord, train: Loaded, folds: list[np.ndarray], stage: str, fit: FitNetwork,
              describe: Describe, console: Console, what: str = "CNN", source: Path | None = None
              ) -> tuple[RunRecord, list, list]:
    """Train one network per fold on the other folds' cases (``fit``, stage and folder
    :func:`fold_stage`; a stage the record holds finished is read back by ``fit``, not trained)
    and let it ``describe`` the fold's cases, whose ids the stage's record keeps. Returns the
    record, for every case of ``train`` in its order the description made by the network that did
    not learn from it, and the k networks. ``source``: the earlier crossfit run, when ``fit``
    reads the networks from it (for the progress lines)."""
    described: list = [None] * len(train.ids)
    networks = []
    everything = np.arange(len(train.ids))
    for j, fold in enumerate(folds):
        name = fold_stage(stage, j)
        rest = np.setdiff1d(everything, fold)
        done = record.stage(name).finished
        console.print(f"cross-fitting {what} {j + 1}/{len(folds)} ({name}): "
                      + ("finished earlier, read back" if done else f"read from {fold_weights(source, name)}"
                         if source else f"trains on {len(rest)} training cases")
                      + f"; it describes the other {len(fold)}")
        record, network = fit(record, name, name, subset(train, rest))
        networks.append(network)
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
    return record, described, networks
