"""Image classification: one label per case from a softmax (binary or multi-class tasks).

One network stage (``network``): a registry classifier (``model``) trained from scratch with
cross-entropy on the labelled cases outside an official test split.

- the network and its options: ``model.name``, ``model.options`` (``spatial_dims`` follows the data)
- class-weighted cross-entropy: ``train.class_weights: balanced``
- augmentation: ``augment.*``; the loop: ``train.*`` (optimiser, schedule, ``early_stopping``)
- weights kept: the best epoch's, or an average (``train.weight_average: ema | swa``)
- the validation cases: the layout's official split, or with ``data.val_source: train`` fold
  ``data.val_fold`` of the training cases (the official one withheld for one final score)
- the best epoch: validation AUC (binary), BMA (multi-class) or, with ``predict.one_vs_rest``,
  the mean one-vs-rest AUC, unless ``train.early_stopping.metric`` names another
- test-time averaging: ``predict.tta`` (flips), ``predict.crops: 9`` (a 3x3 grid of crops of side
  ``predict.crop_fraction``, ARL-CNN's 9-crop testing)
- the ISIC-2017 protocol: ``predict.one_vs_rest: [melanoma, seborrheic_keratosis]`` reports
  "<class> AUC / ACC / SEN / SPE" per listed class and "mean AUC" from the one 3-class softmax
- the decision (binary, and each one-vs-rest class): a threshold on the positive class's
  probability chosen on the validation cases by ``predict.decision`` (``youden``: Youden's J,
  the default; ``sensitivity``: the most specific threshold reaching ``predict.target_sensitivity``;
  ``fixed``: ``predict.threshold``), stored in ``run.json`` and used by ``predict`` and
  ``evaluate`` (which also reports the metrics at ``predict.threshold``); the argmax otherwise
- ``predict --maps cam|gradcam|gradcam++``: each case's map of its predicted class
- files: ``model.safetensors``, ``history.csv``, ``training_curves.png``, ``validation_roc.png``
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from medsight.config import NetworkConfig, PredictConfig
from medsight.data.base import Dataset, Task
from medsight.engine import select_device
from medsight.errors import ConfigError, InputError
from medsight.metrics import binary_metrics, multiclass_metrics
from medsight.metrics.thresholds import choose_threshold
from medsight.recipes.common import finish_run, label_stratum, labelled_cases, load_cases, start_training
from medsight.recipes.interface import CAM_METHODS, Predictions
from medsight.recipes.labels import LabelMapping, label_mapping
from medsight.recipes.network import (build_network, class_weights, crop_average, fit_network, flip_average,
                                      make_optimizer, network_outputs, restore_network, write_class_maps)
from medsight.rundir import RunDir, RunRecord

OVR_METRICS = ("AUC", "ACC", "SEN", "SPE")  # reported per one-vs-rest class, as in the ISIC-2017 tables


class ClassificationConfig(NetworkConfig):
    recipe: Literal["classification"]


def task_metrics(task: Task, y: np.ndarray, proba: np.ndarray, threshold: float,
                 one_vs_rest: list[str] | None = None, thresholds: Mapping[str, float] = {}) -> dict[str, float]:
    """Binary metrics for a binary task; for a multi-class one either the multi-class metrics or,
    with ``one_vs_rest``, "<class> AUC" / ACC / SEN / SPE per listed class from the same softmax
    plus "mean AUC" (the ISIC-2017 protocol: melanoma and SK from one 3-class network). A class's
    decision threshold is ``thresholds[class]`` where given, else ``threshold``."""
    if task.is_binary:
        return binary_metrics(y, proba[:, 1], threshold=thresholds.get(task.positive, threshold))
    if not one_vs_rest:
        return multiclass_metrics(y, proba, classes=list(task.classes))
    out = {}
    for name in one_vs_rest:
        k = task.classes.index(name)
        scores = binary_metrics(y == k, proba[:, k], threshold=thresholds.get(name, threshold))
        out.update({f"{name} {m}": scores[m] for m in OVR_METRICS})
    out["mean AUC"] = float(np.nanmean([out[f"{n} AUC"] for n in one_vs_rest]))
    return out


def decision_thresholds(task: Task, y: np.ndarray, proba: np.ndarray, predict: PredictConfig,
                        console: Console | None = None) -> dict[str, float]:
    """The decision threshold of each positive class (a binary task's positive class, or each
    ``predict.one_vs_rest`` class), chosen on the validation cases ``(y, proba)`` by
    ``predict.decision``; empty for ``fixed`` and for arg-max decisions. A class whose validation
    cases are all of one kind keeps ``predict.threshold`` (and says so)."""
    if predict.decision == "fixed":
        return {}
    classes = [task.positive] if task.is_binary else list(predict.one_vs_rest or ())
    out = {}
    for name in classes:
        k = task.classes.index(name)
        try:
            out[name] = choose_threshold(y == k, proba[:, k], predict.decision, predict.target_sensitivity)
        except ValueError as exc:
            out[name] = predict.threshold
            if console is not None:
                console.print(f"[yellow]{name}: no threshold chosen on validation ({exc}); "
                              f"using predict.threshold {predict.threshold}[/yellow]")
    if out and console is not None:
        console.print(f"decision threshold ({predict.decision}, on validation): "
                      + ", ".join(f"{name} {t:.4f}" for name, t in out.items()))
    return out


def one_vs_rest_classes(listed: list[str] | None, task: Task) -> list[str] | None:
    """``predict.one_vs_rest``, checked against the task."""
    if listed and task.is_binary:
        raise ConfigError("predict.one_vs_rest: the task is already binary")
    unknown = set(listed or ()) - set(task.classes)
    if unknown:
        raise ConfigError(f"predict.one_vs_rest: {sorted(unknown)} are not classes of task {task.name!r} "
                          f"({', '.join(task.classes)})")
    return listed


class ClassifierStep:
    """Cross-entropy (optionally class-weighted) on each batch; validation scores the softmax."""

    monitor, monitor_mode = "AUC", "max"

    def __init__(self, model, task: Task, weight: torch.Tensor | None, threshold: float,
                 one_vs_rest: list[str] | None, optimizer):
        self.models = {"model": model}
        self.task, self.weight, self.threshold, self.one_vs_rest = task, weight, threshold, one_vs_rest
        self.make_optimizer = optimizer
        if one_vs_rest:
            self.monitor = "mean AUC"

    def optimizers(self):
        return {"model": self.make_optimizer(self.models["model"].parameters())}

    def train_step(self, batch, ctx):
        logits = self.models["model"](batch["x"].to(ctx.device))
        weight = None if self.weight is None else self.weight.to(ctx.device)
        loss = F.cross_entropy(logits.float(), batch["y"].to(ctx.device), weight=weight)
        ctx.update(loss)
        return {"loss": loss}

    def validation_step(self, batch, device):
        logits = self.models["model"](batch["x"].to(device)).float()
        y = batch["y"].to(device)
        return logits.softmax(1).cpu(), y.cpu(), F.cross_entropy(logits, y, reduction="sum").item()

    def validation_metrics(self, outputs):
        proba = torch.cat([o[0] for o in outputs]).numpy()
        y = torch.cat([o[1] for o in outputs]).numpy()
        metrics = task_metrics(self.task, y, proba, self.threshold, self.one_vs_rest)
        return {"val_loss": sum(o[2] for o in outputs) / max(len(y), 1), **metrics}


class Classification:
    name = "classification"
    Config = ClassificationConfig
    needs_masks = False
    map_methods = CAM_METHODS

    def __init__(self, cfg: ClassificationConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)

    # -- training ------------------------------------------------------------------------------
    def train(self, run: RunDir, device: str = "auto", callbacks=()) -> RunRecord:
        from medsight.figures import plot_roc  # matplotlib: only when training

        cfg = self.cfg
        self.device_ = select_device(device)
        data, record = start_training(run, cfg, self.name, labelled_cases, label_stratum, False, self.console,
                                      check=lambda d: one_vs_rest_classes(cfg.predict.one_vs_rest, d.task))
        ovr = cfg.predict.one_vs_rest
        started = time.perf_counter()
        torch.manual_seed(cfg.seed)
        self.model_ = build_network(cfg, record.input, len(data.task.classes))
        weight = class_weights(data.train.labels, len(data.task.classes)) \
            if cfg.train.class_weights == "balanced" else None
        step = ClassifierStep(self.model_, data.task, weight, cfg.predict.threshold, ovr,
                              lambda params: make_optimizer(cfg.train, params))
        record = fit_network(run, record, "network", step, data.train, data.val, cfg, self.device_, self.console,
                             callbacks)
        self.model_.eval()
        val_proba = network_outputs(data.val, record.input, self.forward, self.device_, cfg.train.batch_size)
        plot_roc(data.task, data.val.labels.numpy(), val_proba.numpy(), run.path / "validation_roc.png")
        thresholds = decision_thresholds(data.task, data.val.labels.numpy(), val_proba.numpy(), cfg.predict,
                                         self.console)
        stage = record.stage("network")
        self.record_ = finish_run(run, record, stage.validation, stage.best_epoch, time.perf_counter() - started,
                                  self.device_, self.console, thresholds)
        return self.record_

    def restore(self, run: RunDir, device: str = "auto") -> Classification:
        self.device_ = select_device(device)
        self.record_ = run.finished_record()
        model = build_network(self.cfg, self.record_.input, len(self.record_.task.classes))
        self.model_ = restore_network(model, run.stage_dir() / "model.safetensors", self.device_)
        return self

    # -- predicting ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a normalised batch, averaged over flips and crops as configured."""
        p = self.cfg.predict
        probs = lambda t: flip_average(t, lambda u: self.model_(u).float().softmax(1), p.tta)  # noqa: E731
        return crop_average(x, probs, p.crops, p.crop_fraction)

    def predict(self, dataset: Dataset, need_masks: bool = False) -> Predictions:
        loaded, rejected = load_cases(dataset, self.cfg, self.record_.input, need_masks, self.console)
        self.model_.eval()
        return Predictions(loaded, network_outputs(loaded, self.record_.input, self.forward, self.device_),
                           rejected, dataset)

    def rows(self, preds: Predictions) -> list[dict]:
        return class_rows(self.record_.task, preds, self.cfg.predict, self.record_.thresholds)

    def write_files(self, preds: Predictions, folder: Path, maps: str | None = None) -> None:
        if maps:
            write_class_maps(self.model_, preds.loaded, self.record_.input, preds.dataset, folder, maps,
                             self.device_, self.cfg.data.preprocess)

    def evaluate(self, dataset: Dataset, preds: Predictions) -> dict:
        return evaluate_classes(self.record_.task, dataset, preds, self.cfg.predict, self.record_.thresholds)


# -- what every recipe with one label per case writes and reports (the descriptor recipes too) -----
def class_rows(task: Task, preds: Predictions, predict: PredictConfig,
               thresholds: Mapping[str, float] = {}) -> list[dict]:
    """predictions.csv rows: ``id``, ``p_<class>`` for the positive class of a binary task (the
    one-vs-rest classes, or every class, otherwise) and ``pred``: the positive class when its
    probability reaches the run's chosen threshold (``thresholds``, else ``predict.threshold``;
    binary), the most probable class otherwise."""
    proba = preds.outputs.numpy()
    if task.is_binary:
        reported = [task.positive]
        cut = thresholds.get(task.positive, predict.threshold)
        decided = (proba[:, 1] >= cut).astype(int) if len(proba) else []
    else:
        reported = one_vs_rest_classes(predict.one_vs_rest, task) or list(task.classes)
        decided = proba.argmax(1) if len(proba) else []
    columns = [(f"p_{c}", task.classes.index(c)) for c in reported]
    return [{"id": case, **{name: round(float(proba[i, k]), 6) for name, k in columns},
             "pred": task.classes[decided[i]]} for i, case in enumerate(preds.loaded.ids)]


def evaluate_classes(task: Task, dataset: Dataset, preds: Predictions, predict: PredictConfig,
                     thresholds: Mapping[str, float] = {}) -> dict:
    """The task's metrics on the predicted cases that carry a label, at the run's chosen
    ``thresholds``; where the run has them, also ``threshold`` (what they are) and
    ``fixed_threshold_metrics``: the same metrics at ``predict.threshold``; ``labels``: how the
    input's labels were mapped onto the task."""
    y, proba, n, labels = labelled_outputs(dataset, preds, task)
    ovr = one_vs_rest_classes(predict.one_vs_rest, task)
    out = {"n": n, "metrics": task_metrics(task, y, proba, predict.threshold, ovr, thresholds)}
    if thresholds:
        out.update(threshold=dict(thresholds), fixed_threshold=predict.threshold,
                   fixed_threshold_metrics=task_metrics(task, y, proba, predict.threshold, ovr))
    return {**out, "labels": labels.to_json()}


def labelled_outputs(dataset: Dataset, preds: Predictions, task: Task
                     ) -> tuple[np.ndarray, np.ndarray, int, LabelMapping]:
    """(labels, outputs, count, how the labels were mapped) of the predicted cases that carry a
    label; the labels map onto ``task`` by :func:`medsight.recipes.labels.label_mapping`."""
    by_id = {s.id: s for s in dataset.samples}
    keep = [i for i, c in enumerate(preds.loaded.ids) if by_id[c].diagnosis is not None]
    if not keep:
        raise InputError(dataset.root, "no labelled cases to evaluate")
    diagnoses = [by_id[preds.loaded.ids[i]].diagnosis for i in keep]
    labels = label_mapping(task, dataset, set(diagnoses))
    y = np.array([labels.mapping[d] for d in diagnoses])
    return y, preds.outputs.numpy()[keep], len(keep), labels
