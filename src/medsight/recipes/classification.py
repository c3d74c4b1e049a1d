"""Image classification: one label per case from a softmax (binary or multi-class tasks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsight.data.base import Dataset, Task
from medsight.engine import TrainingModule
from medsight.errors import InputError
from medsight.metrics import binary_metrics, multiclass_metrics
from medsight.models import create_model
from medsight.recipes.base import Predictions, Recipe
from medsight.recipes.prepare import Loaded


def task_metrics(task: Task, y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    if task.is_binary:
        return binary_metrics(y, proba[:, 1], threshold=threshold)
    return multiclass_metrics(y, proba, classes=list(task.classes))


class ClassifierModule(TrainingModule):
    monitor, monitor_mode = "AUC", "max"

    def __init__(self, model, task: Task, class_weight: torch.Tensor | None, threshold: float):
        super().__init__(model)
        self.task, self.class_weight, self.threshold = task, class_weight, threshold

    def training_step(self, batch, device):
        logits = self.model(batch["x"].to(device))
        weight = None if self.class_weight is None else self.class_weight.to(device)
        return F.cross_entropy(logits.float(), batch["y"].to(device), weight=weight)

    def validation_step(self, batch, device):
        logits = self.model(batch["x"].to(device)).float()
        y = batch["y"].to(device)
        return logits.softmax(1).cpu(), y.cpu(), F.cross_entropy(logits, y, reduction="sum").item()

    def validation_metrics(self, outputs):
        proba = torch.cat([o[0] for o in outputs]).numpy()
        y = torch.cat([o[1] for o in outputs]).numpy()
        metrics = task_metrics(self.task, y, proba, self.threshold)
        return {"val_loss": sum(o[2] for o in outputs) / max(len(y), 1), **metrics}


class ClassificationRecipe(Recipe):
    kind = "classification"

    def labelled(self, dataset: Dataset, task: Task | None):
        if task is None:
            raise InputError(dataset.root, "has no labels, so a classifier cannot be trained on it")
        return [s for s in dataset.samples if s.diagnosis is not None and s.split != "test"]

    def build_model(self, in_channels: int):
        return create_model(self.cfg.model.name, in_channels=in_channels, num_classes=len(self.task.classes),
                            **self.model_options())

    def training_module(self, model, train: Loaded):
        weight = None
        if self.cfg.train.class_weights == "balanced":
            counts = torch.bincount(train.labels, minlength=len(self.task.classes)).float()
            weight = counts.sum() / (len(counts) * counts.clamp_min(1))
        return ClassifierModule(model, self.task, weight, self.cfg.predict.threshold)

    def forward(self, x):
        return self.tta(x, lambda t: self.model(t).float().softmax(1))

    def columns(self) -> list[str]:
        """The p_<class> columns: the positive class alone for a binary task, every class otherwise."""
        classes = self.task.classes
        return [f"p_{classes[-1]}"] if self.task.is_binary else [f"p_{c}" for c in classes]

    def decide(self, proba: np.ndarray) -> np.ndarray:
        if self.task.is_binary:
            return (proba[:, 1] >= self.cfg.predict.threshold).astype(int)
        return proba.argmax(1)

    def rows(self, preds: Predictions):
        proba = preds.outputs.numpy()
        decided = self.decide(proba) if len(proba) else []
        classes, binary = self.task.classes, self.task.is_binary
        rows = []
        for i, case in enumerate(preds.loaded.ids):
            probs = [proba[i, 1]] if binary else proba[i]
            row = {"id": case, **{c: round(float(p), 6) for c, p in zip(self.columns(), probs)}}
            row["pred"] = classes[decided[i]]
            rows.append(row)
        return rows

    def evaluate(self, dataset: Dataset, preds: Predictions) -> dict:
        by_id = {s.id: s for s in dataset.samples}
        keep = [i for i, c in enumerate(preds.loaded.ids) if by_id[c].diagnosis is not None]
        if not keep:
            raise InputError(dataset.root, "no labelled cases to evaluate")
        unknown = {by_id[preds.loaded.ids[i]].diagnosis for i in keep} - set(self.task.mapping)
        if unknown:
            raise InputError(dataset.root, f"labels {sorted(unknown)} are not classes of task {self.task.name!r}")
        y = np.array([self.task.label_of(by_id[preds.loaded.ids[i]].diagnosis) for i in keep])
        proba = preds.outputs.numpy()[keep]
        return {"n": len(keep), "metrics": task_metrics(self.task, y, proba, self.cfg.predict.threshold)}

    def val_figures(self, val: Loaded, run_dir: Path) -> None:
        from medsight.report import plot_roc

        batches = list(self.eval_batches(val))
        with torch.no_grad():
            self.model.eval()
            proba = torch.cat([self.forward(b["x"].to(self.device)).float().cpu() for b in batches]).numpy()
        plot_roc(self.task, val.labels.numpy(), proba, run_dir / "validation_roc.png")
