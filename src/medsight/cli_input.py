"""What ``predict`` and ``evaluate`` do with their INPUT before and after the recipe sees it: read it
(for ``evaluate``, as the run read its training data), keep the split asked for, and tell the user
about cases that look unlike the training data or could not be read."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from medsight.errors import MedsightError


def open_input(inputs: tuple[str, ...], fmt: str | None, recipe=None):
    """The INPUT dataset. For evaluation (``recipe`` given), input in the layout the run was trained
    on is read with the run's reader options (e.g. LIDC's ``label_rule``), so its labels mean what
    they meant in training."""
    from medsight.data import detect_format, open_dataset

    if not inputs:
        raise click.UsageError("give an INPUT: a dataset root, a folder of images or image files")
    options = {}
    if (recipe is not None and recipe.cfg.data.options and len(inputs) == 1
            and (fmt or detect_format(inputs[0])) == recipe.record_.data.format):
        options = dict(recipe.cfg.data.options)
    return open_dataset(list(inputs) if len(inputs) > 1 else inputs[0], format=fmt, **options)


def restrict_to_split(dataset, split: str | None, runs: list[Path]):
    """The cases of ``split``: an official split of the layout, or ``heldout``, the fold the runs held out."""
    if split is None:
        return dataset
    if split == "heldout":
        from medsight.ensemble import heldout_ids

        ids = heldout_ids(runs)
        dataset.samples = [s for s in dataset.samples if s.id in ids]
        return dataset
    subset = dataset.subset(split)
    if not subset.samples:
        raise MedsightError(f"{dataset.root}: has no cases in split {split!r}")
    return subset


def warn_if_unlike_training(record, preds, console: Console) -> None:
    """One warning when the cases clearly differ from the run's training images; never a refusal."""
    from medsight.recipes.familiar import differences

    loaded = preds.loaded
    by_id = {s.id: s for s in preds.dataset.samples} if preds.dataset is not None else {}
    found = differences(record.input, [by_id[i] for i in loaded.ids if i in by_id], loaded.images,
                        loaded.original_sizes)
    if found:
        console.print(f"[yellow]warning: these cases look unlike the data the run was trained on ({'; '.join(found)}); "
                      "its predictions may not hold for them[/yellow]")


def report_rejected(rejected, console: Console) -> None:
    if rejected:
        console.print(f"[yellow]{len(rejected)} case(s) rejected:[/yellow]")
        for problem in rejected:
            console.print(f"  - {problem}")
