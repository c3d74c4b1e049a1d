"""Fuse-TSD (Xie et al., Information Fusion 2018): texture, shape and deep descriptors of a nodule,
one AdaBoosted back-propagation network per descriptor, decisions fused.

Two stages on nodule volumes (``data.preprocess: nodule_crop``), each case with its mask:

1. ``cnn``: a 2D CNN (``model``, trained with ``train`` and ``augment``) learns benign vs
   malignant from each axial slice of the crop that holds at least ``features.cnn.min_pixels``
   mask pixels (a nodule too small for the rule keeps its middle slice). With
   ``features.cnn.weights`` (a local file, e.g. an earlier run's ``model.safetensors``) the CNN is
   read instead of trained, so that the heads can be re-fitted on the same slice features.
2. ``descriptors``: the hand-crafted descriptors of ``features`` (GLCM texture, Fourier shape) and
   ``cnn``, the mean over a nodule's slices of the CNN's globally pooled last-stage features
   (methods.md leaves slice aggregation open); one ``head`` per descriptor (``boosted_mlp`` in the
   paper), fused by ``head.fusion``.

Stacking (``features.cnn.head_cases``): the CNN descriptor's head must learn from CNN features of
nodules the CNN did not train on, or it learns that the features are perfect (on its own training
nodules they nearly are). ``held_back`` (the default) trains the CNN on the training nodules but
``features.cnn.held_back`` (0.25) of their patients and fits the CNN head on those held back; the
hand-crafted heads learn from every training nodule. ``crossfit`` cross-fits
(:mod:`medsight.recipes.crossfit`): ``features.cnn.crossfit_folds`` (4) inner CNNs, each trained
on all but one patient-grouped fold of the training nodules, describe the nodules of the fold
they did not see, the CNN head learns from these out-of-fold features of every training nodule,
and validation and new nodules are described by each of the k CNNs, the heads' probabilities
averaged over them (no CNN is trained on all training nodules: its features would not be the
ones the head learnt, see :mod:`~medsight.recipes.crossfit`). ``seen`` trains the CNN on every
training nodule and fits its head on them (the earlier protocol). With ``features.cnn.weights``
the same nodules are held back, so a CNN read from a ``held_back`` run of the same data, folds
and seed did not see them; with ``crossfit`` it names an earlier crossfit run directory, whose k
CNNs are read once its record shows that they described this run's folds.

Files: ``model.safetensors``, ``history.csv``, ``training_curves.png`` (the CNN; with
``crossfit`` those of each of the k CNNs in ``cnn_fold<j>/``), ``heads.safetensors``,
``validation_roc.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from rich.console import Console

from medsight.config import HeadConfig, NetworkConfig, Section
from medsight.data.base import Dataset
from medsight.engine import select_device
from medsight.errors import ConfigError
from medsight.recipes.classification import (ClassifierStep, class_rows, decision_thresholds, evaluate_classes,
                                             one_vs_rest_classes)
from medsight.recipes.common import (TrainingData, finish_run, held_back, label_stratum, labelled_cases,
                                     load_cases, start_training)
from medsight.recipes.crossfit import (FitNetwork, cross_fit, fold_weights, inner_folds, network_files,
                                       refuse_other_protocol, training_check)
from medsight.recipes.heads import (check_head, computed_descriptor, describe, descriptor_stage, pixel_spacing,
                                    read_stage, typed_features)
from medsight.recipes.interface import Predictions
from medsight.recipes.network import (build_network, class_weights, eval_batches, fit_network, make_optimizer,
                                      read_network, restore_network)
from medsight.recipes.prepare import Loaded, subset
from medsight.rundir import InputInfo, RunDir, RunRecord


class CNNFeatures(Section):
    """``features.cnn``: the learnt descriptor."""

    min_pixels: int = Field(3, ge=1)  # a slice with fewer mask pixels is not the nodule's
    weights: str | None = None  # read the CNN from this file (crossfit: the k CNNs of this run directory)
    head_cases: Literal["held_back", "seen", "crossfit"] = "held_back"  # nodules the CNN head learns from (docstring)
    held_back: float = Field(0.25, gt=0, lt=1)  # share of the training patients held back from the CNN
    crossfit_folds: int = Field(4, ge=2)  # crossfit: inner folds, one inner CNN each

    @model_validator(mode="after")
    def _protocol_options(self):
        refuse_other_protocol(self, "features.cnn", "head_cases", {"held_back": "held_back",
                                                                  "crossfit_folds": "crossfit"})
        return self


class FuseTSDConfig(NetworkConfig):
    recipe: Literal["fuse_tsd"]
    features: dict[str, Any] = Field(default_factory=dict)  # glcm / fourier / shape, and cnn
    head: HeadConfig = Field(default_factory=HeadConfig)

    @field_validator("features")
    @classmethod
    def _typed_features(cls, features):
        return typed_features(features, learnt={"cnn": CNNFeatures})

    @field_validator("head")
    @classmethod
    def _head_options(cls, head):
        return check_head(head)

    @property
    def cnn(self) -> CNNFeatures:
        return self.features.get("cnn") or CNNFeatures()


def nodule_slices(loaded: Loaded, min_pixels: int) -> tuple[Loaded, np.ndarray]:
    """The nodules' axial slices as a 2D dataset, and the nodule index of each slice."""
    if loaded.images.ndim != 5:
        raise ConfigError("fuse_tsd: needs volumes; use data.preprocess: nodule_crop")
    keep = loaded.masks.flatten(2).sum(2) >= min_pixels  # (N, D)
    empty = (~keep.any(1)).nonzero().flatten().tolist()
    keep[empty, loaded.masks.shape[1] // 2] = True  # a nodule too small for the rule keeps its middle slice
    owner, z = keep.nonzero(as_tuple=True)
    sliced = Loaded(ids=[f"{loaded.ids[i]}#z{k}" for i, k in zip(owner.tolist(), z.tolist())],
                    images=loaded.images[owner, :, z], masks=None, labels=loaded.labels[owner],
                    original_sizes=[tuple(loaded.images.shape[3:])] * len(owner))
    return sliced, owner.numpy()


@torch.no_grad()
def slice_features(model, loaded: Loaded, info: InputInfo, min_pixels: int, device) -> tuple[np.ndarray, list[str]]:
    """Each nodule's CNN descriptor: the mean over its slices of the pooled last feature map."""
    sliced, owner = nodule_slices(loaded, min_pixels)
    model.eval()
    pooled = []
    for batch in eval_batches(sliced, info, 64):
        maps = model.forward_features(batch["x"].to(device))
        pooled.append(torch.flatten(F.adaptive_avg_pool2d(maps.float(), 1), 1).cpu())
    feats = torch.cat(pooled).numpy().astype(np.float64)
    out = np.zeros((len(loaded.ids), feats.shape[1]))
    np.add.at(out, owner, feats)
    return out / np.bincount(owner, minlength=len(loaded.ids))[:, None], [f"cnn_{k}" for k in range(feats.shape[1])]


class FuseTSD:
    name = "fuse_tsd"
    Config = FuseTSDConfig
    needs_masks = True
    map_methods = ()

    def __init__(self, cfg: FuseTSDConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        spacing = pixel_spacing(cfg.data)
        self.computed = {name: computed_descriptor(name, options, spacing, self.console)
                         for name, options in cfg.features.items() if name != "cnn"}

    def descriptions(self, loaded: Loaded) -> list[dict[str, np.ndarray]]:
        """The cases' descriptors as each CNN of the run sees them: the hand-crafted ones, and
        ``cnn`` from the one CNN (``held_back``, ``seen``) or from each of the k (``crossfit``)."""
        computed, _ = describe(loaded, self.computed)
        return [{**computed, "cnn": slice_features(model, loaded, self.record_.input, self.cfg.cnn.min_pixels,
                                                   self.device_)[0]} for model in self.models_]

    def train(self, run: RunDir, device: str = "auto", callbacks=()) -> RunRecord:
        from medsight.figures import plot_roc  # matplotlib: only when training

        cfg, cnn = self.cfg, self.cfg.cnn
        crossfit = cnn.head_cases == "crossfit"
        check = training_check(cnn.weights, crossfit, cnn.crossfit_folds, cfg.seed, "features.cnn", "weights",
                               lambda d: one_vs_rest_classes(cfg.predict.one_vs_rest, d.task))
        self.device_ = select_device(device)
        data, record = start_training(run, cfg, self.name, labelled_cases, label_stratum, True, self.console,
                                      check=check)
        self.record_ = record
        started = time.perf_counter()

        fit_cnn = self._cnn_fitter(run, data, callbacks)

        def describe_fold(model, cases: Loaded) -> np.ndarray:
            return slice_features(model, cases, self.record_.input, cnn.min_pixels, self.device_)[0]

        rows = {}
        if crossfit:
            folds = inner_folds(data, cnn.crossfit_folds, cfg.seed, "features.cnn.crossfit_folds")
            record, out_of_fold, self.models_ = cross_fit(run, record, data.train, folds, "cnn", fit_cnn,
                                                          describe_fold, self.console, "slice CNN",
                                                          cnn.weights and Path(cnn.weights))
            cnn_train = np.stack(out_of_fold)
            self.console.print(f"slice CNN: the CNN head learns from the out-of-fold features of all "
                               f"{len(data.train.ids)} training nodules; new nodules are described by the "
                               f"{len(folds)} CNNs")
        else:
            cnn_cases = data.train
            if cnn.head_cases == "held_back":
                kept, back = held_back(data, cnn.held_back, cfg.seed)
                cnn_cases, rows = subset(data.train, kept), {"cnn": back}
                self.console.print(f"slice CNN: {len(kept)} training nodules; its head learns from the {len(back)} "
                                   "held back from it")
            record, model = fit_cnn(record, "cnn", "", cnn_cases)
            self.models_ = [model]
            cnn_train = describe_fold(model, data.train)
        computed, names = describe(data.train, self.computed)
        train, names["cnn"] = {**computed, "cnn": cnn_train}, [f"cnn_{k}" for k in range(cnn_train.shape[1])]
        record, self.heads_, val_proba = descriptor_stage(
            run, record, "descriptors", cfg.head, train, data.train.labels.numpy(), self.descriptions(data.val),
            data.val.labels.numpy(), cfg.predict, self.console, fitted={"feature_names": names}, rows=rows)
        plot_roc(data.task, data.val.labels.numpy(), val_proba, run.path / "validation_roc.png")
        thresholds = decision_thresholds(data.task, data.val.labels.numpy(), val_proba, cfg.predict, self.console)
        self.record_ = finish_run(run, record, record.stage("descriptors").validation, record.stage("cnn").best_epoch,
                                  time.perf_counter() - started, self.device_, self.console, thresholds)
        return self.record_

    def _cnn_fitter(self, run: RunDir, data: TrainingData, callbacks) -> FitNetwork:
        """Train a fresh slice CNN on some training nodules as a stage of the run (read back when
        the record holds it finished), or read it from ``features.cnn.weights`` (crossfit: from
        that run directory's stage folder). Every one starts from the run's seed."""
        cfg, cnn = self.cfg, self.cfg.cnn

        def fit(record: RunRecord, stage: str, folder: str, cases: Loaded):
            torch.manual_seed(cfg.seed)
            model = build_network(cfg, record.input, len(data.task.classes), spatial_dims=2)
            if cnn.weights:
                path = fold_weights(Path(cnn.weights), folder) if folder else Path(cnn.weights)
                return read_network(run, record, stage, model, path, self.device_, self.console, folder), model
            train_slices, _ = nodule_slices(cases, cnn.min_pixels)
            val_slices, _ = nodule_slices(data.val, cnn.min_pixels)
            if not record.stage(stage).finished:
                self.console.print(f"slice CNN: {len(train_slices.ids)} training, {len(val_slices.ids)} "
                                   "validation slices")
            weight = class_weights(train_slices.labels, len(data.task.classes)) \
                if cfg.train.class_weights == "balanced" else None
            step = ClassifierStep(model, data.task, weight, cfg.predict.threshold, cfg.predict.one_vs_rest,
                                  lambda params: make_optimizer(cfg.train, params))
            record = fit_network(run, record, stage, step, train_slices, val_slices, cfg, self.device_,
                                 self.console, callbacks, folder=folder)
            return record, model

        return fit

    def restore(self, run: RunDir, device: str = "auto") -> FuseTSD:
        cnn = self.cfg.cnn
        crossfit = cnn.head_cases == "crossfit"
        self.device_ = select_device(device)
        self.record_ = run.finished_record()
        self.models_ = [restore_network(build_network(self.cfg, self.record_.input, len(self.record_.task.classes),
                                                      spatial_dims=2), path, self.device_)
                        for path in network_files(run, "cnn", cnn.crossfit_folds if crossfit else None)]
        self.heads_, _ = read_stage(run, self.record_, "descriptors", self.cfg.head)
        return self

    def predict(self, dataset: Dataset, need_masks: bool = True) -> Predictions:
        loaded, rejected = load_cases(dataset, self.cfg, self.record_.input, True, self.console)
        if not loaded.ids:
            return Predictions(loaded, torch.zeros((0, len(self.record_.task.classes))), rejected, dataset)
        proba = self.heads_.mean_proba(self.descriptions(loaded))
        return Predictions(loaded, torch.from_numpy(proba), rejected, dataset)

    def rows(self, preds: Predictions) -> list[dict]:
        return class_rows(self.record_.task, preds, self.cfg.predict, self.record_.thresholds)

    def write_files(self, preds: Predictions, folder: Path, maps: str | None = None) -> None:
        pass

    def evaluate(self, dataset: Dataset, preds: Predictions) -> dict:
        return evaluate_classes(self.record_.task, dataset, preds, self.cfg.predict, self.record_.thresholds)
