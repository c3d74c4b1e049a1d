"""What a recipe is to the command line: a protocol, not a base class.

As torchtune's recipe interface puts it, an interface is "not a vehicle for code reuse": a recipe
reuses the shared steps by calling functions (:mod:`medsight.recipes.common` for data, runs and
outputs, :mod:`medsight.recipes.network` for network stages, :mod:`medsight.recipes.heads` for
descriptor stages), so one recipe file read top to bottom shows the whole method.

A recipe is built from its config (parameters only, as scikit-learn's estimators); ``train`` fits
it into a run directory and ``restore`` reads a finished run back. Either leaves the fitted state
in attributes ending in ``_`` (``record_``, ``model_``, ``heads_``) that ``predict`` and the
writers use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Protocol

import torch
from rich.console import Console

from medsight.config import RecipeConfig
from medsight.data.base import Dataset
from medsight.errors import InputError
from medsight.recipes.prepare import Loaded
from medsight.rundir import RunDir, RunRecord

CAM_METHODS = ("gradcam", "gradcam++", "cam")


@dataclass
class Predictions:
    loaded: Loaded  # the cases that were predicted
    outputs: torch.Tensor  # recipe-specific: class probabilities, or foreground probability maps
    rejected: list[InputError]
    dataset: Dataset | None = None  # where the cases came from (for maps drawn on the originals)


class Recipe(Protocol):
    name: ClassVar[str]  # what a config's ``recipe`` names
    Config: ClassVar[type[RecipeConfig]]  # the config schema
    needs_masks: ClassVar[bool]  # whether a case must have a mask to be predicted or evaluated
    map_methods: ClassVar[tuple[str, ...]]  # what ``predict --maps`` accepts; () when the recipe has none
    record_: RunRecord

    def __init__(self, cfg: RecipeConfig, console: Console | None = None) -> None: ...

    def train(self, run: RunDir, device: str = "auto", callbacks: tuple[Callable[[int, dict], None], ...] = ()
              ) -> RunRecord:
        """Train into ``run`` (new, or an unfinished run of the same config to resume)."""

    def restore(self, run: RunDir, device: str = "auto") -> Recipe:
        """The fitted state of the finished run in ``run``; returns self."""

    def predict(self, dataset: Dataset, need_masks: bool = False) -> Predictions:
        """Outputs for every readable case of ``dataset`` (``need_masks``: reject cases without a mask)."""

    def rows(self, preds: Predictions) -> list[dict]:
        """predictions.csv rows (``id`` first), one per predicted case."""

    def write_files(self, preds: Predictions, folder: Path, maps: str | None = None) -> None:
        """Files beside predictions.csv: masks, and with ``maps`` (one of ``map_methods``) the maps."""

    def evaluate(self, dataset: Dataset, preds: Predictions) -> dict:
        """``{"n": cases, "metrics": {...}}`` (and ``"std"`` for per-image metrics) on the labelled cases."""
