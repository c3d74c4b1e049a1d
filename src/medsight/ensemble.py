"""Several finished runs predicting as one: the mean of their outputs.

``medsight predict RUN_DIR... INPUT`` and ``medsight evaluate RUN_DIR... INPUT``: the leading
arguments that are run directories (they hold a ``run.json``) are the members. The typical use is
a k-fold ensemble over a training set: k runs of one config with ``data.val_source: train`` and
``data.val_fold`` 0 .. k-1, each choosing its epoch and threshold on its own fold, scored once
together on the official validation (or test) set, which none of them saw.

The members must share recipe, task (name and classes) and network input (channels and size);
anything else is an error naming the run. Each member reads and preprocesses the cases itself
(with its own normalisation) and the ensemble averages their outputs: class probabilities, or
mask probability maps. Its rows, files and metrics are those of its first member's recipe on
the mean outputs, at decision thresholds that are the mean of the members' (each chosen on its
own validation cases; a class lacking one in some member is decided at ``predict.threshold``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch
from rich.console import Console

from medsight.data.base import Dataset
from medsight.errors import InputError, MedsightError
from medsight.recipes.interface import Predictions, Recipe
from medsight.rundir import RECORD_FILE, RunDir


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RECORD_FILE).is_file()


def split_runs(run_dir: Path, inputs: Sequence[str]) -> tuple[list[Path], tuple[str, ...]]:
    """(the run directories, the inputs): ``run_dir`` and the leading ``inputs`` that are runs."""
    runs, rest = [Path(run_dir)], list(inputs)
    while rest and is_run_dir(rest[0]):
        runs.append(Path(rest.pop(0)))
    return runs, tuple(rest)


def load_runs(runs: list[Path], device: str = "auto", console: Console | None = None):
    """The recipe of the one run, or the :class:`Ensemble` of several."""
    from medsight.recipes import load_recipe

    if len(runs) == 1:
        return load_recipe(runs[0], device, console)
    seen = set()
    for run in runs:
        if run.resolve() in seen:
            raise MedsightError(f"{run}: named twice; an ensemble's members are different runs")
        seen.add(run.resolve())
    return Ensemble([load_recipe(run, device, console) for run in runs], runs)


class Ensemble:
    """Finished recipes of one task and input, predicting the mean of their outputs."""

    map_methods: tuple[str, ...] = ()  # maps belong to one network

    def __init__(self, members: list[Recipe], paths: list[Path]):
        first = members[0].record_
        for member, path in zip(members[1:], paths[1:]):
            record = member.record_
            problems = [f"{what} {theirs} against {ours}" for what, theirs, ours in (
                ("recipe", record.recipe, first.recipe),
                ("task", _task(record.task), _task(first.task)),
                ("input (channels, size)", (record.input.channels, record.input.image_size),
                 (first.input.channels, first.input.image_size)),
                ("reader options", member.cfg.data.options, members[0].cfg.data.options))
                if theirs != ours]
            if problems:
                raise InputError(path, f"cannot join an ensemble with {paths[0]}: {'; '.join(problems)}")
        self.members, self.paths = members, paths
        self.lead = members[0]
        self.lead.record_ = dataclasses.replace(first, thresholds=mean_thresholds([m.record_.thresholds
                                                                                   for m in members]))
        self.record_ = self.lead.record_
        self.cfg = self.lead.cfg
        self.name = f"{first.recipe} ensemble"
        self.needs_masks = any(m.needs_masks for m in members)

    def predict(self, dataset: Dataset, need_masks: bool = False) -> Predictions:
        parts = []
        for member, path in zip(self.members, self.paths):
            preds = member.predict(dataset, need_masks=need_masks)
            if type(preds) is not Predictions:
                raise InputError(path, f"the {member.name} recipe predicts more than one output per case; "
                                       "its runs cannot be averaged")
            if parts and preds.loaded.ids != parts[0].loaded.ids:
                raise InputError(path, f"predicted other cases than {self.paths[0]}")
            parts.append(preds)
        outputs = torch.stack([p.outputs for p in parts]).mean(0)
        return dataclasses.replace(parts[0], outputs=outputs)

    def rows(self, preds: Predictions) -> list[dict]:
        return self.lead.rows(preds)

    def write_files(self, preds: Predictions, folder: Path, maps: str | None = None) -> None:
        self.lead.write_files(preds, folder, None)

    def evaluate(self, dataset: Dataset, preds: Predictions) -> dict:
        return self.lead.evaluate(dataset, preds)


def _task(task) -> tuple | None:
    return None if task is None else (task.name, tuple(task.classes), task.multilabel)


def mean_thresholds(thresholds: list[dict[str, float]]) -> dict[str, float]:
    """Per class, the mean of the members' decision thresholds, for the classes all of them have."""
    shared = set.intersection(*(set(t) for t in thresholds)) if thresholds else set()
    return {name: sum(t[name] for t in thresholds) / len(thresholds) for name in sorted(shared)}


# -- which cases the runs saw -----------------------------------------------------------------------
def cases_used(runs: list[Path], ids: list[str], same_data: bool) -> dict[str, int]:
    """How many of ``ids`` some run trained on, and some run validated on (chose its epoch or
    threshold with): none unless the input is the runs' own training data."""
    if not same_data:
        return {"train": 0, "val": 0}
    ids = set(ids)
    return {split: len(ids & {i for run in runs for i in RunDir(run).split_ids(split)}) for split in ("train", "val")}


def heldout_ids(runs: list[Path]) -> set[str]:
    """The cases the runs held out (``--split heldout``): the same for every member."""
    sets = [set(RunDir(run).split_ids("heldout")) for run in runs]
    if not sets[0]:
        raise MedsightError(f"{runs[0]}: the run held no fold out (train it with data.folds > 1)")
    for run, ids in zip(runs[1:], sets[1:]):
        if ids != sets[0]:
            raise InputError(run, f"holds out other cases than {runs[0]}; --split heldout needs the same fold")
    return sets[0]
