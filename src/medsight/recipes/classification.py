"""Image classification: one label per case from a softmax (binary or multi-class tasks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsight.data.base import Dataset, Task
from medsight.engine import TrainingModule
from medsight.errors import ConfigError, InputError
from medsight.metrics import binary_metrics, multiclass_metrics
from medsight.models import create_model
from medsight.recipes.base import Predictions, Recipe
from medsight.recipes.prepare import Loaded, batch_indices
from medsight.transforms.augment import grid_crops


OVR_METRICS = ("AUC", "ACC", "SEN", "SPE")  # reported per one-vs-rest class, as in the ISIC-2017 tables


def task_metrics(task: Task, y: np.ndarray, proba: np.ndarray, threshold: float,
                 one_vs_rest: list[str] | None = None) -> dict[str, float]:
    """Binary metrics for a binary task; for a multi-class one either the multi-class metrics or,
    with ``one_vs_rest``, "<class> AUC" / ACC / SEN / SPE per listed class from the same softmax
    plus "mean AUC" (the ISIC-2017 protocol: melanoma and SK from one 3-class network)."""
    if task.is_binary:
        return binary_metrics(y, proba[:, 1], threshold=threshold)
    if not one_vs_rest:
        return multiclass_metrics(y, proba, classes=list(task.classes))
    out = {}
    for name in one_vs_rest:
        k = task.classes.index(name)
        scores = binary_metrics(y == k, proba[:, k], threshold=threshold)
        out.update({f"{name} {m}": scores[m] for m in OVR_METRICS})
    out["mean AUC"] = float(np.nanmean([out[f"{n} AUC"] for n in one_vs_rest]))
    return out


class ClassifierModule(TrainingModule):
    monitor, monitor_mode = "AUC", "max"

    def __init__(self, model, task: Task, class_weight: torch.Tensor | None, threshold: float,
                 one_vs_rest: list[str] | None = None):
        super().__init__(model)
        self.task, self.class_weight, self.threshold = task, class_weight, threshold
        self.one_vs_rest = one_vs_rest
        if one_vs_rest:
            self.monitor = "mean AUC"

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
        metrics = task_metrics(self.task, y, proba, self.threshold, self.one_vs_rest)
        return {"val_loss": sum(o[2] for o in outputs) / max(len(y), 1), **metrics}


class ClassificationRecipe(Recipe):
    kind = "classification"

    def labelled(self, dataset: Dataset, task: Task | None):
        if task is None:
            raise InputError(dataset.root, "has no labels, so a classifier cannot be trained on it")
        return [s for s in dataset.samples if s.diagnosis is not None and s.split != "test"]

    def build_model(self, in_channels: int):
        return create_model(self.network.name, in_channels=in_channels, num_classes=len(self.task.classes),
                            **self.model_options())

    def training_module(self, model, train: Loaded):
        weight = None
        if self.cfg.train.class_weights == "balanced":
            counts = torch.bincount(train.labels, minlength=len(self.task.classes)).float()
            weight = counts.sum() / (len(counts) * counts.clamp_min(1))
        return ClassifierModule(model, self.task, weight, self.cfg.predict.threshold, self.one_vs_rest())

    def one_vs_rest(self) -> list[str] | None:
        listed = self.cfg.predict.one_vs_rest
        if listed and self.task.is_binary:
            raise ConfigError("predict.one_vs_rest: the task is already binary")
        unknown = set(listed or ()) - set(self.task.classes)
        if unknown:
            raise ConfigError(f"predict.one_vs_rest: {sorted(unknown)} are not classes of task {self.task.name!r} "
                              f"({', '.join(self.task.classes)})")
        return listed

    def forward(self, x):
        predict = self.cfg.predict
        probs = lambda t: self.tta(t, lambda u: self.model(u).float().softmax(1))  # noqa: E731
        if predict.crops == 1:
            return probs(x)
        return torch.stack([probs(c) for c in grid_crops(x, predict.crop_fraction)]).mean(0)

    def reported(self) -> list[str]:
        """The classes with a p_<class> column: the positive class of a binary task, the
        predict.one_vs_rest classes when set, every class otherwise."""
        if self.task.is_binary:
            return [self.task.positive]
        return self.one_vs_rest() or list(self.task.classes)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        if self.task.is_binary:
            return (proba[:, 1] >= self.cfg.predict.threshold).astype(int)
        return proba.argmax(1)

    def rows(self, preds: Predictions):
        proba = preds.outputs.numpy()
        decided = self.decide(proba) if len(proba) else []
        classes = self.task.classes
        columns = [(f"p_{c}", classes.index(c)) for c in self.reported()]
        return [{"id": case, **{name: round(float(proba[i, k]), 6) for name, k in columns},
                 "pred": classes[decided[i]]} for i, case in enumerate(preds.loaded.ids)]

    maps: str | None = None  # set by `predict --maps METHOD`: cam, gradcam or gradcam++

    def write_extra(self, preds: Predictions, out_dir: Path) -> None:
        """With ``maps`` set: the class activation map of the predicted class of each case, at its
        input image's size, in maps/<id>.png, and blended over the image in overlays/<id>.png."""
        if not self.maps:
            return
        from medsight.explain import MapWriter, class_maps

        if self.cfg.data.preprocess != "resize":
            raise ConfigError(f"--maps: maps are drawn back onto 2D images; the {self.cfg.data.preprocess!r} "
                              "preprocessor does not map its input back to the original")
        writer = MapWriter(out_dir)
        by_id = {s.id: s for s in preds.dataset.samples}
        for batch_ids, batch in zip(batch_indices(len(preds.loaded.ids), 32), self.eval_batches(preds.loaded, 32)):
            maps = class_maps(self.model, batch["x"].to(self.device), self.maps).cpu().numpy()
            for i, m in zip(batch_ids.tolist(), maps):
                case = preds.loaded.ids[i]
                writer.write(case, by_id[case].load_image(), m)

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
        return {"n": len(keep), "metrics": task_metrics(self.task, y, proba, self.cfg.predict.threshold,
                                                         self.one_vs_rest())}

    def val_figures(self, val: Loaded, run_dir: Path) -> None:
        from medsight.report import plot_roc

        batches = list(self.eval_batches(val))
        with torch.no_grad():
            self.model.eval()
            proba = torch.cat([self.forward(b["x"].to(self.device)).float().cpu() for b in batches]).numpy()
        plot_roc(self.task, val.labels.numpy(), proba, run_dir / "validation_roc.png")
