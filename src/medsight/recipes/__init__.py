"""Recipes: turn a config into model + data + loop, and expose train / predict / evaluate."""

from medsight.recipes.base import Predictions, Recipe
from medsight.recipes.classification import ClassificationRecipe
from medsight.recipes.descriptors import DescriptorRecipe, FuseTSDRecipe
from medsight.recipes.fgfv import FisherRecipe
from medsight.recipes.multilabel import MultilabelRecipe
from medsight.recipes.segmentation import SegmentationRecipe

RECIPES: dict[str, type[Recipe]] = {
    "classification": ClassificationRecipe,
    "segmentation": SegmentationRecipe,
    "multilabel": MultilabelRecipe,
    "descriptors": DescriptorRecipe,
    "fuse_tsd": FuseTSDRecipe,
    "fgfv": FisherRecipe,
}

__all__ = ["RECIPES", "Recipe", "Predictions", "ClassificationRecipe", "SegmentationRecipe",
           "MultilabelRecipe",
           "DescriptorRecipe", "FuseTSDRecipe", "FisherRecipe"]
