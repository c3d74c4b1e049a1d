"""Recipes: one module per method, each a config schema and a class of the :class:`Recipe`
protocol (:mod:`medsight.recipes.interface`). The list of recipes lives here, once."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from medsight.config import RecipeConfig, raw_config, validated
from medsight.errors import ConfigError
from medsight.models.registry import check_model
from medsight.recipes.classification import Classification
from medsight.recipes.descriptors import Descriptors
from medsight.recipes.fgfv import Fisher
from medsight.recipes.fuse_tsd import FuseTSD
from medsight.recipes.interface import Predictions, Recipe
from medsight.recipes.mbdcnn import MBDCNN
from medsight.recipes.multilabel import Multilabel
from medsight.recipes.mvkbc import MVKBCRecipe
from medsight.recipes.segmentation import Segmentation
from medsight.recipes.semi import SemiRecipe
from medsight.rundir import CONFIG_FILE, RunDir

RECIPES: dict[str, type[Recipe]] = {r.name: r for r in (Segmentation, Classification, Multilabel, Descriptors,
                                                          FuseTSD, Fisher, MVKBCRecipe, MBDCNN, SemiRecipe)}


def parse_config(raw: dict, source: str = "config") -> RecipeConfig:
    """``raw`` validated with the schema of the recipe it names (a union keyed on ``recipe``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    if raw.get("recipe") not in RECIPES:
        got = "missing" if "recipe" not in raw else f"unknown recipe {raw['recipe']!r}"
        raise ConfigError(f"{source}: recipe: {got}; choose from {', '.join(RECIPES)}")
    cfg = validated(RECIPES[raw["recipe"]].Config, raw, source)
    model = getattr(cfg, "model", None)
    if model is not None:  # the model name and options, before a run directory or any data is touched
        try:
            check_model(model.name, model.options)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return cfg


def load_config(path: str | Path, overrides: list[str] = (), epochs: int | None = None,
                data: str | None = None, seed: int | None = None) -> RecipeConfig:
    """Read a config file, apply ``--set`` overrides and the dedicated flags, validate."""
    raw = raw_config(path, overrides, epochs=epochs, data=data, seed=seed)
    if epochs is not None and raw.get("recipe") in RECIPES and "train" not in RECIPES[raw["recipe"]].Config.model_fields:
        raise ConfigError(f"--epochs: the {raw['recipe']} recipe trains no network")
    return parse_config(raw, str(path))


def recipe_for(cfg: RecipeConfig, console: Console | None = None) -> Recipe:
    return RECIPES[cfg.recipe](cfg, console)


def load_recipe(run_dir: str | Path, device: str = "auto", console: Console | None = None) -> Recipe:
    """The recipe of the finished run in ``run_dir``, with its fitted state read back."""
    run = RunDir(run_dir)
    record = run.finished_record()
    raw = run.read_config()
    if record.version < 2 and isinstance(raw, dict) and raw.get("recipe") in RECIPES:
        # layout 1 wrote every section of one shared schema, the ones this recipe does not use too
        raw = {k: v for k, v in raw.items() if k in RECIPES[raw["recipe"]].Config.model_fields}
    cfg = parse_config(raw, str(run.path / CONFIG_FILE))
    return recipe_for(cfg, console).restore(run, device)


__all__ = ["RECIPES", "Predictions", "Recipe", "load_config", "load_recipe", "parse_config", "recipe_for"]
