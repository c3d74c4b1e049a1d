"""Descriptor recipe: hand-crafted descriptors per case, classical heads, fused decisions.

One descriptor stage (``descriptors``, :mod:`medsight.recipes.heads`) on the preprocessed cases,
each of which needs its mask (the descriptors are computed inside it). The talk's baselines are
configs of it: 3D GLCM + SVM, multi-view features + SVM.

- the descriptors: ``features`` names ``glcm``, ``fourier``, ``shape`` with their options
  (:mod:`medsight.features.describe`); sizes in mm where the preprocessor fixes the pixel size
- the classifier: ``head.name`` (``svm``, ``boosted_mlp``) with ``head.options``; several
  descriptors decide by ``head.fusion`` (``mean``, ``vote``, ``concat``)
- the decision: a threshold chosen on the validation cases (``predict.decision``) and
  ``predict.one_vs_rest``, as the classification recipe
- files: ``heads.safetensors`` (the fitted heads as arrays) and ``validation_roc.png``
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from rich.console import Console

from medsight.config import HeadConfig, RecipeConfig
from medsight.data.base import Dataset
from medsight.engine import select_device
from medsight.recipes.classification import class_rows, decision_thresholds, evaluate_classes, one_vs_rest_classes
from medsight.recipes.common import finish_run, label_stratum, labelled_cases, load_cases, start_training
from medsight.recipes.heads import (check_head, computed_descriptor, describe, descriptor_stage, pixel_spacing,
                                    read_stage, typed_features)
from medsight.recipes.interface import Predictions
from medsight.rundir import RunDir, RunRecord

STAGE = "descriptors"


class DescriptorsConfig(RecipeConfig):
    recipe: Literal["descriptors"]
    features: dict[str, Any]  # descriptor name -> its options, in the order the heads see them
    head: HeadConfig = Field(default_factory=HeadConfig)

    @field_validator("features")
    @classmethod
    def _typed_features(cls, features):
        return typed_features(features)

    @field_validator("head")
    @classmethod
    def _head_options(cls, head):
        return check_head(head)


class Descriptors:
    name = "descriptors"
    Config = DescriptorsConfig
    needs_masks = True
    map_methods = ()

    def __init__(self, cfg: DescriptorsConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        spacing = pixel_spacing(cfg.data)
        self.descriptors = {name: computed_descriptor(name, options, spacing, self.console)
                            for name, options in cfg.features.items()}

    def train(self, run: RunDir, device: str = "auto", callbacks=()) -> RunRecord:
        from medsight.figures import plot_roc  # matplotlib: only when training

        cfg = self.cfg
        device_ = select_device(device)
        data, record = start_training(run, cfg, self.name, labelled_cases, label_stratum, True, self.console,
                                      check=lambda d: one_vs_rest_classes(cfg.predict.one_vs_rest, d.task))
        started = time.perf_counter()
        (train, names), (val, _) = describe(data.train, self.descriptors), describe(data.val, self.descriptors)
        record, self.heads_, val_proba = descriptor_stage(
            run, record, STAGE, cfg.head, train, data.train.labels.numpy(), val, data.val.labels.numpy(), cfg.predict,
            self.console, fitted={"feature_names": names})
        plot_roc(data.task, data.val.labels.numpy(), val_proba, run.path / "validation_roc.png")
        thresholds = decision_thresholds(data.task, data.val.labels.numpy(), val_proba, cfg.predict, self.console)
        self.record_ = finish_run(run, record, record.stage(STAGE).validation, None, time.perf_counter() - started,
                                  device_, self.console, thresholds)
        return self.record_

    def restore(self, run: RunDir, device: str = "auto") -> Descriptors:
        self.record_ = run.finished_record()
        self.heads_, _ = read_stage(run, self.record_, STAGE, self.cfg.head)
        return self

    def predict(self, dataset: Dataset, need_masks: bool = True) -> Predictions:
        loaded, rejected = load_cases(dataset, self.cfg, self.record_.input, True, self.console)
        if not loaded.ids:
            return Predictions(loaded, torch.zeros((0, len(self.record_.task.classes))), rejected, dataset)
        proba = self.heads_.predict_proba(describe(loaded, self.descriptors)[0])
        return Predictions(loaded, torch.from_numpy(proba), rejected, dataset)

    def rows(self, preds: Predictions) -> list[dict]:
        return class_rows(self.record_.task, preds, self.cfg.predict, self.record_.thresholds)

    def write_files(self, preds: Predictions, folder: Path, maps: str | None = None) -> None:
        pass

    def evaluate(self, dataset: Dataset, preds: Predictions) -> dict:
        return evaluate_classes(self.record_.task, dataset, preds, self.cfg.predict, self.record_.thresholds)
