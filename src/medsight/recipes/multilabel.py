"""Multi-label classification (ChestX-ray14's 14 findings): one sigmoid per class.

A case may carry several findings (``Sample.diagnosis`` ``"Atelectasis|Effusion"``, ``"No Finding"``
for none; :meth:`~medsight.data.base.Task.targets` turns it into one 0/1 per class). One network
stage (``network``), as :mod:`~medsight.recipes.classification` but for several labels per case:

* training loss: binary cross-entropy with logits per class. A model with ``branch_logits``
  (ChestNet: classification and attention branch) is trained on the *sum* of both branches' BCEs,
  so each branch learns to diagnose on its own and the averaged diagnosis is their mean; any other
  registry classifier is trained on its logits. ``train.class_weights: balanced`` sets the per-class
  ``pos_weight`` to negatives / positives among the training cases;
* validation: "<finding> AUC" per class and their mean "mean AUC" (classes absent or always present
  in the validation set are undefined, left out of the mean); the best epoch is the one of highest
  mean AUC unless ``train.early_stopping`` names another metric;
* prediction: sigmoid probabilities, averaged over flips (``predict.tta``) and the 3x3 crops
  (``predict.crops: 9``) as for single-label classification; ``predictions.csv`` has ``id``, one
  ``p_<finding>`` column per class and ``pred``, the ``"|"``-joined findings with probability >=
  ``predict.threshold`` (``"No Finding"`` when none);
* evaluation: the talk's table, one AUC column per finding plus "mean AUC";
* validation split (when the layout has no official one): stratified by each case's first finding
  in class order (``"No Finding"`` its own stratum), patients kept together;
* ``predict --maps cam|gradcam|gradcam++``: each case's map of its most probable finding;
* figure: ``validation_roc.png``, one ROC curve per finding.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from medsight.config import NetworkConfig
from medsight.data.base import Dataset, Sample, Task
from medsight.engine import select_device
from medsight.errors import ConfigError, InputError
from medsight.metrics import multilabel_metrics
from medsight.recipes.common import finish_run, load_cases, start_training
from medsight.recipes.interface import CAM_METHODS, Predictions
from medsight.recipes.network import (build_network, crop_average, fit_network, flip_average, make_optimizer,
                                      network_outputs, restore_network, write_class_maps)
from medsight.rundir import RunDir, RunRecord

NO_FINDING = "No Finding"


class MultilabelConfig(NetworkConfig):
    recipe: Literal["multilabel"]


def multilabel_task_metrics(task: Task, y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """"<class> AUC" for every class (nan where undefined) and "mean AUC" over the defined ones."""
    scores = multilabel_metrics(y, proba, labels=list(task.classes))
    out = {f"{c} AUC": scores[f"AUC[{c}]"] for c in task.classes}
    out["mean AUC"] = scores["AUC"]
    return out


def bce(logits: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None) -> torch.Tensor:
    """Mean binary cross-entropy over the known targets (entries of -1, unlabelled, are left out)."""
    known = (y >= 0).float()
    loss = F.binary_cross_entropy_with_logits(logits.float(), y.clamp_min(0).float(), pos_weight=pos_weight,
                                              reduction="none")
    return (loss * known).sum() / known.sum().clamp_min(1)


def multilabel_cases(dataset: Dataset, task: Task | None) -> list[Sample]:
    if task is None or not task.multilabel:
        what = "has no labels" if task is None else f"task {task.name!r} is single-label"
        raise InputError(dataset.root, f"{what}; the multilabel recipe needs a multi-label task such as "
                                       "ChestX-ray14's findings (use recipe: classification for one label "
                                       "per case)")
    return [s for s in dataset.samples if s.diagnosis is not None and s.split != "test"]


def first_finding(task: Task | None, sample: Sample) -> int:
    """Stratum of a case: 1 + the index of its first finding in class order, 0 for none."""
    hits = np.flatnonzero(task.targets(sample.diagnosis) > 0) if sample.diagnosis is not None else []
    return int(hits[0]) + 1 if len(hits) else 0


def positive_weights(y: torch.Tensor) -> torch.Tensor:
    """Negatives / positives per class among the known targets (train.class_weights: balanced)."""
    known = (y >= 0)
    pos = (y == 1).sum(0).float()
    neg = (known & (y == 0)).sum(0).float()
    return neg / pos.clamp_min(1)


class MultilabelStep:
    """BCE per class; a model with ``branch_logits`` (ChestNet) is trained on the sum of its branches' BCEs."""

    monitor, monitor_mode = "mean AUC", "max"

    def __init__(self, model, task: Task, pos_weight: torch.Tensor | None, optimizer):
        self.models = {"model": model}
        self.task, self.pos_weight, self.make_optimizer = task, pos_weight, optimizer

    def optimizers(self):
        return {"model": self.make_optimizer(self.models["model"].parameters())}

    def train_step(self, batch, ctx):
        model = self.models["model"]
        x, y = batch["x"].to(ctx.device), batch["y"].to(ctx.device)
        pw = None if self.pos_weight is None else self.pos_weight.to(ctx.device)
        if hasattr(model, "branch_logits"):
            loss = sum(bce(logits, y, pw) for logits in model.branch_logits(x))
        else:
            loss = bce(model(x), y, pw)
        ctx.update(loss)
        return {"loss": loss}

    def validation_step(self, batch, device):
        logits = self.models["model"](batch["x"].to(device)).float()
        y = batch["y"].to(device)
        loss = bce(logits, y, None).item() * len(y)
        return torch.sigmoid(logits).cpu(), y.cpu(), loss

    def validation_metrics(self, outputs):
        proba = torch.cat([o[0] for o in outputs]).numpy()
        y = torch.cat([o[1] for o in outputs]).numpy()
        return {"val_loss": sum(o[2] for o in outputs) / max(len(y), 1),
                **multilabel_task_metrics(self.task, y, proba)}


class Multilabel:
    name = "multilabel"
    Config = MultilabelConfig
    needs_masks = False
    map_methods = CAM_METHODS

    def __init__(self, cfg: MultilabelConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        if cfg.predict.one_vs_rest:
            raise ConfigError("predict.one_vs_rest: not used by the multilabel recipe (every class gets its "
                              "own sigmoid and AUC)")

    def train(self, run: RunDir, device: str = "auto", callbacks=()) -> RunRecord:
        from medsight.figures import plot_rocs  # matplotlib: only when training

        cfg = self.cfg
        self.device_ = select_device(device)
        data, record = start_training(run, cfg, self.name, multilabel_cases, first_finding, False, self.console)
        started = time.perf_counter()
        torch.manual_seed(cfg.seed)
        self.model_ = build_network(cfg, record.input, len(data.task.classes))
        pos_weight = positive_weights(data.train.labels) if cfg.train.class_weights == "balanced" else None
        step = MultilabelStep(self.model_, data.task, pos_weight, lambda params: make_optimizer(cfg.train, params))
        record = fit_network(run, record, "network", step, data.train, data.val, cfg, self.device_, self.console,
                             callbacks)
        if data.val.ids:
            self.model_.eval()
            proba = network_outputs(data.val, record.input, self.forward, self.device_, cfg.train.batch_size)
            plot_rocs(data.task, data.val.labels.numpy(), proba.numpy(), run.path / "validation_roc.png")
        stage = record.stage("network")
        self.record_ = finish_run(run, record, stage.validation, stage.best_epoch, time.perf_counter() - started,
                                  self.device_, self.console)
        return self.record_

    def restore(self, run: RunDir, device: str = "auto") -> Multilabel:
        self.device_ = select_device(device)
        self.record_ = run.finished_record()
        model = build_network(self.cfg, self.record_.input, len(self.record_.task.classes))
        self.model_ = restore_network(model, run.stage_dir() / "model.safetensors", self.device_)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-class sigmoid probabilities, averaged over flips and crops as configured."""
        p = self.cfg.predict
        probs = lambda t: flip_average(t, lambda u: torch.sigmoid(self.model_(u).float()), p.tta)  # noqa: E731
        return crop_average(x, probs, p.crops, p.crop_fraction)

    def predict(self, dataset: Dataset, need_masks: bool = False) -> Predictions:
        loaded, rejected = load_cases(dataset, self.cfg, self.record_.input, need_masks, self.console)
        self.model_.eval()
        return Predictions(loaded, network_outputs(loaded, self.record_.input, self.forward, self.device_),
                           rejected, dataset)

    def rows(self, preds: Predictions) -> list[dict]:
        proba = preds.outputs.numpy()
        classes, threshold = self.record_.task.classes, self.cfg.predict.threshold
        rows = []
        for i, case in enumerate(preds.loaded.ids):
            found = [c for k, c in enumerate(classes) if proba[i, k] >= threshold]
            rows.append({"id": case, **{f"p_{c}": round(float(proba[i, k]), 6) for k, c in enumerate(classes)},
                         "pred": "|".join(found) or NO_FINDING})
        return rows

    def write_files(self, preds: Predictions, folder: Path, maps: str | None = None) -> None:
        if maps:
            write_class_maps(self.model_, preds.loaded, self.record_.input, preds.dataset, folder, maps,
                             self.device_, self.cfg.data.preprocess)

    def evaluate(self, dataset: Dataset, preds: Predictions) -> dict:
        task = self.record_.task
        by_id = {s.id: s for s in dataset.samples}
        keep = [i for i, c in enumerate(preds.loaded.ids) if by_id[c].diagnosis is not None]
        if not keep:
            raise InputError(dataset.root, "no labelled cases to evaluate")
        targets = []
        for i in keep:
            sample = by_id[preds.loaded.ids[i]]
            try:
                targets.append(task.targets(sample.diagnosis))
            except ValueError as exc:
                raise InputError(sample.source, str(exc)) from None
        proba = preds.outputs.numpy()[keep]
        return {"n": len(keep), "metrics": multilabel_task_metrics(task, np.stack(targets), proba)}
