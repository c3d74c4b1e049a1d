"""Binary lesion segmentation: one foreground probability per pixel, masks at the input's size.

One network stage (``network``): a registry segmenter (``model``, e.g. ``unet``) trained from
scratch on the cases that have masks, with soft Dice + binary cross-entropy (MONAI's DiceCELoss).

- the network and its options: ``model.name``, ``model.options``; the loop: ``train.*``
- augmentation: ``augment.*`` (masks follow the geometry)
- the best epoch: validation JA (mean per-image Jaccard), unless ``train.early_stopping`` says otherwise
- test-time averaging: ``predict.tta`` (flips, the maps flipped back)
- the mask: ``predict.threshold`` on the probability, after resizing it to the input image's size
- files: ``model.safetensors``, ``history.csv``, ``training_curves.png``, ``validation_overlays.png``;
  ``predict`` writes ``masks/<id>.png`` (uint8 0/255)
- volumes (``data.preprocess: nodule_crop``, a 3D ``data.image_size``; the nodule segmenter of
  ``configs/lidc_voi_nodule_unet.yaml``): the network is 3D, the box is centred on the nodule mask's
  centroid, or on the reader's annotated centre for a case without a mask (LUNA16 / Tianchi), its
  probabilities are interpolated back onto the CT's own grid (:func:`medsight.transforms.volume.uncrop`)
  and thresholded there, so ``evaluate`` scores the masks on the CT's voxels and ``predict`` writes
  ``masks/<id>.nii.gz`` (uint8 0/1, the CT's voxel grid and spacing; origin and orientation not kept);
  ``validation_overlays.png`` shows the middle slice of each box
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from rich.console import Console

from medsight.config import NetworkConfig
from medsight.data.base import Dataset, Sample, Task
from medsight.data.imageio import write_png
from medsight.engine import select_device
from medsight.errors import InputError
from medsight.metrics import segmentation_metrics, summarize_repeats
from medsight.recipes.common import finish_run, label_stratum, load_cases, start_training
from medsight.recipes.interface import Predictions
from medsight.recipes.network import (build_network, eval_batches, fit_network, flip_average, make_optimizer,
                                      network_outputs, restore_network)
from medsight.rundir import RunDir, RunRecord
from medsight.transforms.preprocess import nodule_crop_centre, nodule_crop_mm
from medsight.transforms.volume import uncrop

SEG_METRICS = ("JA", "DI", "AC", "SE", "SP")


class SegmentationConfig(NetworkConfig):
    recipe: Literal["segmentation"]


def cases_with_masks(dataset: Dataset, task: Task | None) -> list[Sample]:
    samples = [s for s in dataset.samples if s.has_mask and s.split != "test"]
    if not samples:
        raise InputError(dataset.root, "has no lesion masks, so a segmenter cannot be trained on it")
    return samples


class SegmenterStep:
    """Soft Dice + BCE on each batch; validation scores the thresholded masks per image."""

    monitor, monitor_mode = "JA", "max"

    def __init__(self, model, threshold: float, optimizer):
        self.models = {"model": model}
        self.threshold, self.make_optimizer = threshold, optimizer
        self.loss = DiceCELoss(sigmoid=True)

    def optimizers(self):
        return {"model": self.make_optimizer(self.models["model"].parameters())}

    def train_step(self, batch, ctx):
        loss = self.loss(self.models["model"](batch["x"].to(ctx.device)).float(), batch["mask"].to(ctx.device))
        ctx.update(loss)
        return {"loss": loss}

    def validation_step(self, batch, device):
        logits = self.models["model"](batch["x"].to(device)).float()
        loss = self.loss(logits, batch["mask"].to(device)).item() * len(logits)
        return mask_scores(logits, batch["mask"], self.threshold), loss

    def validation_metrics(self, outputs):
        return mask_validation_metrics(outputs)


def mask_scores(logits: torch.Tensor, masks: torch.Tensor, threshold: float) -> list[dict]:
    """Per image: the segmentation metrics of ``sigmoid(logits) >= threshold`` against ``masks``
    (both (B, 1, H, W))."""
    pred = (logits.sigmoid() >= threshold).squeeze(1).cpu().numpy()
    truth = masks.squeeze(1).numpy() > 0
    return [segmentation_metrics(p, t) for p, t in zip(pred, truth)]


def mask_validation_metrics(outputs: list[tuple[list[dict], float]]) -> dict[str, float]:
    """The validation steps' ``(per-image metrics, summed loss)`` as the mean loss and metrics per image."""
    per_image = [m for o in outputs for m in o[0]]
    summary = summarize_repeats(per_image)
    return {"val_loss": sum(o[1] for o in outputs) / max(len(per_image), 1),
            **{k: summary[k]["mean"] for k in SEG_METRICS}}


class Segmentation:
    name = "segmentation"
    Config = SegmentationConfig
    needs_masks = True
    map_methods = ()

    def __init__(self, cfg: SegmentationConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)

    def train(self, run: RunDir, device: str = "auto", callbacks=()) -> RunRecord:
        from medsight.figures import save_overlays  # matplotlib: only when training

        cfg = self.cfg
        self.device_ = select_device(device)
        data, record = start_training(run, cfg, self.name, cases_with_masks, label_stratum, True, self.console)
        started = time.perf_counter()
        torch.manual_seed(cfg.seed)
        self.model_ = build_network(cfg, record.input, 1)
        step = SegmenterStep(self.model_, cfg.predict.threshold, lambda params: make_optimizer(cfg.train, params))
        record = fit_network(run, record, "network", step, data.train, data.val, cfg, self.device_, self.console,
                             callbacks)
        self.model_.eval()
        batch = next(eval_batches(data.val, record.input, 8))
        with torch.no_grad():
            prob = self.forward(batch["x"].to(self.device_)).float().cpu()
        pred = (prob[:, 0] >= cfg.predict.threshold).numpy()
        images, truths = data.val.images[:8].numpy(), data.val.masks[:8].numpy()
        if self.volumetric:  # the middle slice of each box
            middle = images.shape[2] // 2
            images, pred, truths = images[:, :, middle], pred[:, middle], truths[:, middle]
        save_overlays(images, pred, truths, data.val.ids[:8], run.path / "validation_overlays.png")
        stage = record.stage("network")
        self.record_ = finish_run(run, record, stage.validation, stage.best_epoch, time.perf_counter() - started,
                                  self.device_, self.console)
        return self.record_

    def restore(self, run: RunDir, device: str = "auto") -> Segmentation:
        self.device_ = select_device(device)
        self.record_ = run.finished_record()
        model = build_network(self.cfg, self.record_.input, 1)
        self.model_ = restore_network(model, run.stage_dir() / "model.safetensors", self.device_)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Foreground probabilities of a normalised batch, averaged over flips with predict.tta."""
        return flip_average(x, lambda t: self.model_(t).float().sigmoid(), self.cfg.predict.tta)

    def predict(self, dataset: Dataset, need_masks: bool = False) -> Predictions:
        loaded, rejected = load_cases(dataset, self.cfg, self.record_.input, need_masks, self.console)
        self.model_.eval()
        return Predictions(loaded, network_outputs(loaded, self.record_.input, self.forward, self.device_),
                           rejected, dataset)

    @property
    def volumetric(self) -> bool:
        return len(self.cfg.data.image_size) == 3

    def full_size_masks(self, preds: Predictions):
        """Each case's mask at its input image's size: probabilities resized (volumes: put back
        where the box was cut, :meth:`volume_probability`), then thresholded."""
        by_id = {s.id: s for s in preds.dataset.samples} if self.volumetric else {}
        for i, size in enumerate(preds.loaded.original_sizes):
            case = preds.loaded.ids[i]
            if self.volumetric:
                prob = self.volume_probability(preds.outputs[i, 0].numpy(), by_id[case], size)
            else:
                prob = F.interpolate(preds.outputs[i:i + 1], size=size, mode="bilinear", align_corners=False)[0, 0]
                prob = prob.numpy()
            yield case, prob >= self.cfg.predict.threshold

    def volume_probability(self, prob: np.ndarray, sample: Sample, shape: tuple[int, ...]) -> np.ndarray:
        """The probabilities of a nodule box on the grid of the CT it was cut from (``shape`` voxels)."""
        if self.cfg.data.preprocess != "nodule_crop":
            raise InputError(sample.source, f"the {self.cfg.data.preprocess!r} preprocessor cannot map a 3D "
                                            "network's output back onto the volume (nodule_crop can)")
        centre = nodule_crop_centre(sample.load_image(), sample)
        size_mm = nodule_crop_mm(self.cfg.data.preprocess_options)
        return uncrop(prob, centre, size_mm, sample.spacing, shape)

    def mask_file(self, case: str) -> str:
        return f"masks/{case}.nii.gz" if self.volumetric else f"masks/{case}.png"

    def rows(self, preds: Predictions) -> list[dict]:
        return [{"id": case, "mask": self.mask_file(case), "foreground_fraction": round(float(mask.mean()), 6)}
                for case, mask in self.full_size_masks(preds)]

    def write_files(self, preds: Predictions, folder: Path, maps: str | None = None) -> None:
        by_id = {s.id: s for s in preds.dataset.samples}
        for case, mask in self.full_size_masks(preds):
            if self.volumetric:
                write_mask_volume(folder / self.mask_file(case), mask, by_id[case].spacing)
            else:
                write_png(folder / self.mask_file(case), mask.astype(np.uint8) * 255)

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


def write_mask_volume(path: Path, mask: np.ndarray, spacing) -> None:
    """A (D, H, W) 0/1 mask as NIfTI (x, y, z order) with the voxel size ``spacing`` (z, y, x) mm."""
    import nibabel as nib

    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.astype(np.uint8).transpose(2, 1, 0)), affine), str(path))
