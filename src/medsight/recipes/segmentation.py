"""Binary lesion segmentation: one foreground probability per pixel, masks at the input's size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from medsight.data.base import Dataset, Task
from medsight.data.imageio import write_png
from medsight.engine import TrainingModule
from medsight.errors import InputError
from medsight.metrics import segmentation_metrics, summarize_repeats
from medsight.models import create_model
from medsight.recipes.base import Predictions, Recipe
from medsight.recipes.prepare import Loaded

SEG_METRICS = ("JA", "DI", "AC", "SE", "SP")


class SegmenterModule(TrainingModule):
    monitor, monitor_mode = "JA", "max"

    def __init__(self, model, threshold: float):
        super().__init__(model)
        self.threshold = threshold
        self.loss = DiceCELoss(sigmoid=True)  # soft Dice + binary cross-entropy

    def training_step(self, batch, device):
        return self.loss(self.model(batch["x"].to(device)).float(), batch["mask"].to(device))

    def validation_step(self, batch, device):
        logits = self.model(batch["x"].to(device)).float()
        loss = self.loss(logits, batch["mask"].to(device)).item() * len(logits)
        pred = (logits.sigmoid() >= self.threshold).squeeze(1).cpu().numpy()
        truth = batch["mask"].squeeze(1).numpy() > 0
        return [segmentation_metrics(p, t) for p, t in zip(pred, truth)], loss

    def validation_metrics(self, outputs):
        per_image = [m for o in outputs for m in o[0]]
        summary = summarize_repeats(per_image)
        return {"val_loss": sum(o[1] for o in outputs) / len(per_image),
                **{k: summary[k]["mean"] for k in SEG_METRICS}}


class SegmentationRecipe(Recipe):
    kind = "segmentation"
    need_masks = True

    def labelled(self, dataset: Dataset, task: Task | None):
        samples = [s for s in dataset.samples if s.has_mask and s.split != "test"]
        if not samples:
            raise InputError(dataset.root, "has no lesion masks, so a segmenter cannot be trained on it")
        return samples

    def build_model(self, in_channels: int):
        return create_model(self.network.name, in_channels=in_channels, num_classes=1, **self.model_options())

    def training_module(self, model, train: Loaded):
        return SegmenterModule(model, self.cfg.predict.threshold)

    def forward(self, x):
        return self.tta(x, lambda t: self.model(t).float().sigmoid())

    def full_size_masks(self, preds: Predictions):
        """Each case's mask at its input image's size: probabilities resized, then thresholded."""
        for i, (h, w) in enumerate(preds.loaded.original_sizes):
            prob = F.interpolate(preds.outputs[i:i + 1], size=(h, w), mode="bilinear", align_corners=False)
            yield preds.loaded.ids[i], (prob[0, 0] >= self.cfg.predict.threshold).numpy()

    def rows(self, preds: Predictions):
        rows = []
        for case, mask in self.full_size_masks(preds):
            rows.append({"id": case, "mask": f"masks/{case}.png", "foreground_fraction": round(float(mask.mean()), 6)})
        return rows

    def write_extra(self, preds: Predictions, out_dir: Path) -> None:
        for case, mask in self.full_size_masks(preds):
            write_png(out_dir / "masks" / f"{case}.png", mask.astype(np.uint8) * 255)

    def evaluate(self, dataset: Dataset, preds: Predictions) -> dict:
        by_id = {s.id: s for s in dataset.samples}
        per_image = []
        for case, mask in self.full_size_masks(preds):
            truth = by_id[case].load_mask()
            if truth is not None:
                per_image.append(segmentation_metrics(mask, truth > 0))
        if not per_image:
            raise InputError(dataset.root, "no cases with masks to evaluate")
        summary = summarize_repeats(per_image)
        return {"n": len(per_image), "metrics": {k: summary[k]["mean"] for k in SEG_METRICS},
                "std": {k: summary[k]["std"] for k in SEG_METRICS}}

    def val_figures(self, val: Loaded, run_dir: Path) -> None:
        from medsight.report import save_overlays

        with torch.no_grad():
            self.model.eval()
            batch = next(self.eval_batches(val, batch_size=8))
            prob = self.forward(batch["x"].to(self.device)).float().cpu()
        pred = (prob[:, 0] >= self.cfg.predict.threshold).numpy()
        save_overlays(val.images[:8].numpy(), pred, val.masks[:8].numpy(), val.ids[:8],
                      run_dir / "validation_overlays.png")
