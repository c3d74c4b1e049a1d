"""The steps every recipe shares, as functions: open the data, choose and split its cases, load
them, start and finish the run directory, read cases to predict, write the predictions.

A recipe calls these in its own ``train`` and ``predict``; nothing here knows which method it serves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from rich.console import Console

from medsight.config import RecipeConfig
from medsight.data import GENERATED, open_dataset
from medsight.data.base import Dataset, Sample, Task
from medsight.data.splits import holdout_indices, split_samples
from medsight.engine.distributed import broadcast_object, gather_objects, world
from medsight.errors import InputError, MedsightError
from medsight.io import write_csv, write_new_folder
from medsight.recipes.familiar import profile
from medsight.recipes.interface import Predictions
from medsight.recipes.prepare import Loaded, channel_stats, load_samples, subset
from medsight.rundir import DataInfo, InputInfo, RunDir, RunRecord
from medsight.transforms.preprocess import make_preprocess


@dataclass(frozen=True)
class TrainingData:
    """What training reads: the task, the split and the loaded training and validation cases."""

    dataset: Dataset
    task: Task | None
    split: dict[str, list[Sample]]  # train, val, heldout, withheld
    train: Loaded
    val: Loaded
    input: InputInfo  # the channels, size and normalisation of the network input


# -- choosing cases ---------------------------------------------------------------------------------
def labelled_cases(dataset: Dataset, task: Task | None) -> list[Sample]:
    """The cases a classifier learns from: labelled ones outside an official test split."""
    if task is None:
        raise InputError(dataset.root, "has no labels, so a classifier cannot be trained on it")
    return [s for s in dataset.samples if s.diagnosis is not None and s.split != "test"]


def label_stratum(task: Task | None, sample: Sample) -> int:
    """The class a case is stratified by when validation (or a fold) is split off."""
    return task.label_of(sample.diagnosis) if task and sample.diagnosis is not None else 0


def held_back(data: TrainingData, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held back) positions of the training cases: about ``fraction`` of their patients,
    stratified by label, held back from a network, so that what a recipe fits on the network's
    outputs (a head, fgFV's foreground weights) is fitted on cases the network did not learn from."""
    kept, back = holdout_indices(data.train.labels.numpy(), training_groups(data), fraction, seed)
    return kept.tolist(), back.tolist()


def training_groups(data: TrainingData) -> list[str]:
    """The patient of each training case, in ``data.train``'s order (the case's id when it has none)."""
    by_id = {s.id: s for s in data.split["train"]}
    return [by_id[i].patient_id or i for i in data.train.ids]


# -- before training ------------------------------------------------------------------------------
def open_data(cfg: RecipeConfig) -> Dataset:
    """The config's dataset (``data.root``, set by ``--data``; generated data needs none)."""
    data = cfg.data
    if data.root is None and data.format not in GENERATED:
        raise MedsightError("no data: pass --data PATH or set data.root in the config")
    return open_dataset(data.root, format=data.format, **data.options)


def preprocessor(cfg: RecipeConfig, channels: int | None):
    """How a case becomes the network input (``channels`` None: the input's own)."""
    data = cfg.data
    return make_preprocess(data.preprocess, data.image_size, channels, **data.preprocess_options)


def prepare_training(cfg: RecipeConfig, recipe: str, select: Callable[[Dataset, Task | None], list[Sample]],
                     stratum: Callable[[Task | None, Sample], int], need_masks: bool,
                     console: Console) -> TrainingData:
    """Open the data, choose the cases ``select`` keeps, split them (patients kept together,
    stratified by ``stratum``) and load the training and validation cases. Writes nothing."""
    dataset = open_data(cfg)
    task = dataset.task(cfg.data.task) if dataset.tasks else None
    samples = select(dataset, task)
    if len(samples) < 4:
        raise InputError(dataset.root, f"only {len(samples)} usable cases for the {recipe} recipe")
    data = cfg.data
    split = split_samples(samples, [stratum(task, s) for s in samples], data.val_fraction, data.split_seed,
                          data.folds, data.fold, data.val_source, data.val_fold)
    preprocess = preprocessor(cfg, channels=None)
    train, _ = load_samples(split["train"], preprocess, task, need_masks, console=console,
                            description="loading training cases")
    val, _ = load_samples(split["val"], preprocess, task, need_masks, console=console,
                          description="loading validation cases")
    mean, std = channel_stats(train.images)
    by_id = {s.id: s for s in split["train"]}
    info = InputInfo(train.images.shape[1], tuple(train.images.shape[2:]), tuple(mean), tuple(std),
                     **profile([by_id[i] for i in train.ids], train.images, train.original_sizes))
    return TrainingData(dataset, task, split, train, val, info)


def start_training(run: RunDir, cfg: RecipeConfig, recipe: str, select: Callable[[Dataset, Task | None], list[Sample]],
                   stratum: Callable[[Task | None, Sample], int], need_masks: bool, console: Console,
                   check: Callable[[TrainingData], object] | None = None) -> tuple[TrainingData, RunRecord]:
    """Everything before a recipe's first stage, in the order that never leaves a run directory in
    the way: refuse a folder that may not be written (before any data is read), prepare the data
    (:func:`prepare_training`), let ``check`` refuse settings the data contradicts, and only then
    write the run directory (or take up the unfinished run in it)."""
    resuming = run.resumable(cfg.to_dict(), cfg.completed)
    data = prepare_training(cfg, recipe, select, stratum, need_masks, console)
    if check is not None:
        check(data)
    return data, start_run(run, cfg, recipe, data, resuming, console)


def start_run(run: RunDir, cfg: RecipeConfig, recipe: str, data: TrainingData, resuming: bool,
              console: Console) -> RunRecord:
    """The run's record, written with the split once the data has been read and checked: a new
    one, or the saved one when resuming (its normalisation and finished stages are kept)."""
    if resuming:
        record = run.read_record()
    else:
        run.create(cfg.to_dict())
        dataset, split = data.dataset, data.split
        record = RunRecord(recipe=recipe, task=data.task, input=data.input,
                           data=DataInfo(dataset.name, str(dataset.root), len(data.train.ids), len(data.val.ids),
                                         len(split["heldout"])))
    record = broadcast_object(record)  # among torchrun's processes, rank 0's run (the others write nowhere)
    held, withheld = len(data.split["heldout"]), len(data.split.get("withheld", ()))
    console.print(f"{recipe} recipe: {len(data.train.ids)} training, {len(data.val.ids)} validation cases"
                  + (f", {held} held out" if held else "")
                  + (f"; the {withheld} official validation cases withheld (data.val_source: train)" if withheld else ""))
    run.write_record(record)
    run.write_split({k: [s.id for s in v] for k, v in data.split.items()})
    return record


def finish_run(run: RunDir, record: RunRecord, validation: Mapping[str, float], best_epoch: int | None,
               seconds: float, device: torch.device, console: Console,
               thresholds: Mapping[str, float] = {}) -> RunRecord:
    """Write the validation metrics and mark the run finished (with the decision ``thresholds``
    chosen on the validation cases, for the recipes that have them)."""
    run.write_metrics(validation, best_epoch)
    record = dataclasses.replace(record, finished=True, train_seconds=round(seconds, 1), device=str(device),
                                 thresholds=dict(thresholds), world_size=world().size)
    run.write_record(record)
    console.print(f"done: run in {run}" if best_epoch is None else f"done: best epoch {best_epoch}, run in {run}")
    return record


# -- predicting ---------------------------------------------------------------------------------------
def load_cases(dataset: Dataset, cfg: RecipeConfig, info: InputInfo, need_masks: bool,
               console: Console) -> tuple[Loaded, list[InputError]]:
    """Every case of ``dataset`` preprocessed as in training; unreadable cases are returned as rejections."""
    return load_samples(dataset.samples, preprocessor(cfg, info.channels), None, need_masks, skip_bad=True,
                        console=console, description="loading cases")


def write_predictions(out_dir: Path, rows: list[dict], write_files: Callable[[Path], None],
                      rejected: list[InputError] = ()) -> Path:
    """``predictions.csv``, ``rejected.csv`` (``id, path, reason``: one row per problem of each
    case that could not be predicted; only the header when there is none) and the recipe's other
    files (masks, maps) in a new ``out_dir``, atomically."""
    def fill(folder: Path) -> None:
        write_csv(folder / "predictions.csv", rows)
        write_csv(folder / "rejected.csv", [{"id": r.case_id, "path": r.path, "reason": r.problem} for r in rejected],
                  fields=["id", "path", "reason"])
        write_files(folder)

    return write_new_folder(Path(out_dir), fill)


def predict_shared(recipe, dataset: Dataset, need_masks: bool = False) -> Predictions:
    """``recipe.predict`` of every case of ``dataset``; among torchrun's processes each predicts
    every n-th case and all of them get every prediction back, in the input's order."""
    w = world()
    if w.size == 1:
        return recipe.predict(dataset, need_masks=need_masks)
    mine = dataclasses.replace(dataset, samples=dataset.samples[w.rank::w.size])
    preds = recipe.predict(mine, need_masks=need_masks)
    rejected = [(r.path, r.problem) if isinstance(r, InputError) else (None, str(r)) for r in preds.rejected]
    parts = gather_objects((preds.loaded, preds.outputs, rejected), w)
    order = {s.id: i for i, s in enumerate(dataset.samples)}
    loaded = [p[0] for p in parts if p[0].ids]
    if not loaded:
        return Predictions(parts[0][0], parts[0][1], _rejections(parts), dataset)
    merged = Loaded(ids=[c for part in loaded for c in part.ids],
                    images=torch.cat([part.images for part in loaded]),
                    masks=None if loaded[0].masks is None else torch.cat([part.masks for part in loaded]),
                    labels=None if loaded[0].labels is None else torch.cat([part.labels for part in loaded]),
                    original_sizes=[size for part in loaded for size in part.original_sizes])
    outputs = torch.cat([p[1] for p in parts if p[0].ids])
    index = sorted(range(len(merged.ids)), key=lambda i: order[merged.ids[i]])
    return Predictions(subset(merged, index), outputs[index], _rejections(parts), dataset)


def _rejections(parts) -> list[InputError]:
    return [InputError(path, problem) for part in parts for path, problem in part[2]]
