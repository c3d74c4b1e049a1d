"""Multi-label classification (ChestX-ray14's 14 findings): one sigmoid per class.

A case may carry several findings (``Sample.diagnosis`` ``"Atelectasis|Effusion"``, ``"No Finding"``
for none; :meth:`~medsight.data.base.Task.targets` turns it into one 0/1 per class). Differences
from the single-label :class:`~medsight.recipes.classification.ClassificationRecipe` it extends:

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
* figure: ``validation_roc.png``, one ROC curve per finding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsight.data.base import Dataset, Task
from medsight.engine import TrainingModule
from medsight.errors import ConfigError, InputError
from medsight.metrics import multilabel_metrics
from medsight.recipes.base import Predictions
from medsight.recipes.classification import ClassificationRecipe
from medsight.recipes.prepare import Loaded
from medsight.transforms.augment import grid_crops

NO_FINDING = "No Finding"


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


class MultilabelModule(TrainingModule):
    monitor, monitor_mode = "mean AUC", "max"

    def __init__(self, model, task: Task, pos_weight: torch.Tensor | None):
        super().__init__(model)
        self.task, self.pos_weight = task, pos_weight

    def training_step(self, batch, device):
        x, y = batch["x"].to(device), batch["y"].to(device)
        pw = None if self.pos_weight is None else self.pos_weight.to(device)
        if hasattr(self.model, "branch_logits"):
            return sum(bce(logits, y, pw) for logits in self.model.branch_logits(x))
        return bce(self.model(x), y, pw)

    def validation_step(self, batch, device):
        logits = self.model(batch["x"].to(device)).float()
        y = batch["y"].to(device)
        loss = bce(logits, y, None).item() * len(y)
        return torch.sigmoid(logits).cpu(), y.cpu(), loss

    def validation_metrics(self, outputs):
        proba = torch.cat([o[0] for o in outputs]).numpy()
        y = torch.cat([o[1] for o in outputs]).numpy()
        return {"val_loss": sum(o[2] for o in outputs) / max(len(y), 1),
                **multilabel_task_metrics(self.task, y, proba)}


class MultilabelRecipe(ClassificationRecipe):
    kind = "multilabel"

    def labelled(self, dataset: Dataset, task: Task | None):
        if task is None or not task.multilabel:
            what = "has no labels" if task is None else f"task {task.name!r} is single-label"
            raise InputError(dataset.root, f"{what}; the multilabel recipe needs a multi-label task such as "
                                           "ChestX-ray14's findings (use recipe: classification for one label "
                                           "per case)")
        return [s for s in dataset.samples if s.diagnosis is not None and s.split != "test"]

    def split_label(self, task: Task | None, sample) -> int:
        """Stratum of a case: 1 + the index of its first finding in class order, 0 for none."""
        hits = np.flatnonzero(task.targets(sample.diagnosis) > 0) if sample.diagnosis is not None else []
        return int(hits[0]) + 1 if len(hits) else 0

    def one_vs_rest(self):
        if self.cfg.predict.one_vs_rest:
            raise ConfigError("predict.one_vs_rest: not used by the multilabel recipe (every class gets its "
                              "own sigmoid and AUC)")
        return None

    def training_module(self, model, train: Loaded):
        self.one_vs_rest()
        pos_weight = None
        if self.cfg.train.class_weights == "balanced":
            y = train.labels
            known = (y >= 0)
            pos = (y == 1).sum(0).float()
            neg = (known & (y == 0)).sum(0).float()
            pos_weight = neg / pos.clamp_min(1)
        return MultilabelModule(model, self.task, pos_weight)

    def forward(self, x):
        predict = self.cfg.predict
        probs = lambda t: self.tta(t, lambda u: torch.sigmoid(self.model(u).float()))  # noqa: E731
        if predict.crops == 1:
            return probs(x)
        return torch.stack([probs(c) for c in grid_crops(x, predict.crop_fraction)]).mean(0)

    def reported(self) -> list[str]:
        return list(self.task.classes)

    def rows(self, preds: Predictions):
        proba = preds.outputs.numpy()
        classes, threshold = self.task.classes, self.cfg.predict.threshold
        rows = []
        for i, case in enumerate(preds.loaded.ids):
            found = [c for k, c in enumerate(classes) if proba[i, k] >= threshold]
            rows.append({"id": case, **{f"p_{c}": round(float(proba[i, k]), 6) for k, c in enumerate(classes)},
                         "pred": "|".join(found) or NO_FINDING})
        return rows

    def evaluate(self, dataset: Dataset, preds: Predictions) -> dict:
        by_id = {s.id: s for s in dataset.samples}
        keep = [i for i, c in enumerate(preds.loaded.ids) if by_id[c].diagnosis is not None]
        if not keep:
            raise InputError(dataset.root, "no labelled cases to evaluate")
        targets = []
        for i in keep:
            sample = by_id[preds.loaded.ids[i]]
            try:
                targets.append(self.task.targets(sample.diagnosis))
            except ValueError as exc:
                raise InputError(sample.source, str(exc)) from None
        y = np.stack(targets)
        proba = preds.outputs.numpy()[keep]
        return {"n": len(keep), "metrics": multilabel_task_metrics(self.task, y, proba)}

    def val_figures(self, val: Loaded, run_dir: Path) -> None:
        if not val.ids:
            return
        from medsight.report import plt
        from sklearn.metrics import roc_curve

        with torch.no_grad():
            self.model.eval()
            proba = torch.cat([self.forward(b["x"].to(self.device)).float().cpu()
                               for b in self.eval_batches(val)]).numpy()
        y = val.labels.numpy()
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        drawn = 0
        for k, name in enumerate(self.task.classes):
            truth = y[:, k] == 1
            if truth.all() or not truth.any():  # ROC undefined for this finding here
                continue
            fpr, tpr, _ = roc_curve(truth, proba[:, k])
            ax.plot(fpr, tpr, lw=1, label=name)
            drawn += 1
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        if drawn:
            ax.legend(fontsize=6 if drawn > 6 else 8)
        fig.tight_layout()
        fig.savefig(run_dir / "validation_roc.png", dpi=110)
        plt.close(fig)
