"""MB-DCNN (Xie et al., IEEE TMI 2020): segmentation and classification of skin lesions that
bootstrap each other. Three stages, each a network trained from scratch (or from local weights):

1. ``coarse`` (coarse-SN): a segmenter (``coarse.model``, default the registry's ``deeplabv3plus``:
   DeepLabv3+ on a ResNet dilated to output stride 16) on the cases that have masks, with the
   Dice + rank loss of ``loss.*`` (:mod:`medsight.recipes.mbdcnn_parts`). With ``coarse.trained``
   (a finished run directory, mbdcnn or segmentation, or a weights file) it is read instead: the
   transfer setting, e.g. a PH2 segmenter for ISIC-2017 without masks; the source and the
   normalisation it was trained with are recorded in the run. Its masks (``predict.views``
   test-time views) are the 4th input channel of mask-CN, for every labelled case. Files in ``coarse/``.
2. ``maskcn`` (mask-CN): a registry classifier (``maskcn.model``) on RGB + coarse mask (4 channels;
   ``maskcn.mask_channel: false`` leaves the mask out, the ablation), cross-entropy on every
   labelled case (``train.class_weights: balanced`` stands in for the authors' extra crops of the
   minority classes). Its class activation map of the predicted class is the localisation map.
   Files in ``maskcn/``.
3. ``enhanced`` (enhanced-SN, unless ``enhanced.enabled: false``): coarse-SN's layout with the
   localisation map joined to the ASPP output (``guide_channels: 1``), initialised from coarse-SN,
   mask-CN frozen, on the cases with masks. Files in ``enhanced/``.

- pixel labels: ``data.mask_fraction`` keeps that fraction of the training and validation masks
  (chosen with ``data.split_seed``), the talk's curve of JA against the pixel-labelled images.
- local ImageNet weights: ``coarse.pretrained`` (into the encoder), ``maskcn.pretrained`` (the
  4th-channel filters become the mean of the RGB ones); the classifier layer is left out.
- training: ``train.*`` for every stage, with a stage's own ``<stage>.train`` overrides (all but
  ``epochs``: ``--epochs`` sets every stage's length); ``augment.*`` moves images and masks alike.
- the best epoch: validation JA (segmentation), AUC / BMA / mean one-vs-rest AUC (mask-CN).
- test time: ``predict.views`` (6: identity, 3 rotations, 2 flips) x ``predict.scales`` for
  enhanced-SN (coarse-SN: the views at scale 1), ``predict.crops: 9`` for mask-CN.
- ``predict`` writes ``masks/<id>.png`` (enhanced-SN's, coarse-SN's without it; the input's size),
  ``predictions.csv`` (``p_<class>``, ``pred``, ``mask``) and with ``--maps cam`` (or gradcam,
  gradcam++) mask-CN's maps; ``evaluate`` reports JA DI AC SE SP (and ``coarse JA`` ...) on the
  cases with masks and the task's classification metrics on the labelled ones.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from rich.console import Console

from medsight.config import AugmentConfig, DataConfig, ModelConfig, NetworkConfig, PredictConfig, RecipeConfig, \
    Section, TrainConfig
from medsight.data.base import Dataset
from medsight.data.imageio import write_png
from medsight.engine import select_device
from medsight.errors import InputError
from medsight.metrics import segmentation_metrics, summarize_repeats
from medsight.models import create_model
from medsight.recipes.classification import (ClassifierStep, class_rows, decision_thresholds, labelled_outputs,
                                             one_vs_rest_classes, task_metrics)
from medsight.recipes.common import finish_run, label_stratum, labelled_cases, load_cases, start_training
from medsight.recipes.interface import CAM_METHODS, Predictions
from medsight.recipes.mbdcnn_parts import (SegmentationStep, localisation_maps, segmentation_loss,
                                           segmentation_tta, stage_batches, stage_stream)
from medsight.recipes.mbdcnn_sources import (coarse_input, coarse_source, kept_masks, pixel_labelled, predict_batches,
                                             read_coarse, renormalise)
from medsight.recipes.network import class_weights, crop_average, fit_network, make_optimizer, restore_network
from medsight.recipes.prepare import Loaded
from medsight.recipes.segmentation import SEG_METRICS
from medsight.rundir import InputInfo, RunDir, RunRecord

STAGES = ("coarse", "maskcn", "enhanced")
TRAINING_LOGS = ("epoch", "loss", "dice_loss", "rank_loss", "lr", "seconds")  # not validation metrics


# -- the config ----------------------------------------------------------------------------------------
class MBDCNNData(DataConfig):
    mask_fraction: float = Field(1.0, ge=0, le=1)  # the fraction of the masks the segmenters may see


class MBDCNNPredict(PredictConfig):
    crops: Literal[1, 9] = 9  # mask-CN: the 3x3 grid of crops
    views: Literal[1, 6] = 6  # segmentation: identity, 3 quarter turns, 2 flips
    scales: list[float] = Field(default_factory=lambda: [1.0, 256 / 224, 288 / 224])  # enhanced-SN's

    @field_validator("scales")
    @classmethod
    def _positive(cls, scales: list[float]) -> list[float]:
        if not scales or min(scales) <= 0:
            raise ValueError("give one or more positive factors (1.0: the network's input size)")
        return scales

    @field_validator("tta")
    @classmethod
    def _no_flip_tta(cls, tta: bool) -> bool:
        if tta:
            raise ValueError("the mbdcnn recipe averages over predict.views and predict.scales instead")
        return tta


class SegLoss(Section):
    rank_weight: float = Field(0.05, ge=0)  # w in Dice + w x rank
    rank_pixels: int = Field(30, ge=1)  # K hardest pixels of each side, per image
    rank_margin: float = Field(0.3, ge=0)


class Stage(Section):
    train: dict[str, Any] = Field(default_factory=dict)  # overrides of the shared train section

    @field_validator("train")
    @classmethod
    def _overrides(cls, train: dict) -> dict:
        if "epochs" in train:
            raise ValueError("epochs: every stage trains train.epochs (set by --epochs)")
        unknown = set(train) - set(TrainConfig.model_fields)
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
        return train


class CoarseSN(Stage):
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="deeplabv3plus"))
    pretrained: str | None = None  # local ImageNet weights for the encoder
    trained: str | None = None  # a finished coarse-SN to read instead of training one


class MaskCN(Stage):
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="resnet18"))
    pretrained: str | None = None  # local ImageNet weights (4th-channel filters: the mean of the RGB ones)
    mask_channel: bool = True


class EnhancedSN(Stage):
    enabled: bool = True


class MBDCNNConfig(RecipeConfig):
    recipe: Literal["mbdcnn"]
    data: MBDCNNData = Field(default_factory=MBDCNNData)
    predict: MBDCNNPredict = Field(default_factory=MBDCNNPredict)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: SegLoss = Field(default_factory=SegLoss)
    coarse: CoarseSN = Field(default_factory=CoarseSN)
    maskcn: MaskCN = Field(default_factory=MaskCN)
    enhanced: EnhancedSN = Field(default_factory=EnhancedSN)

    @model_validator(mode="after")
    def _stage_training(self):
        for name in STAGES:
            TrainConfig.model_validate({**self.train.model_dump(), **getattr(self, name).train})
        return self

    def stage(self, name: str) -> NetworkConfig:
        """What the shared network functions read for one stage: its model, training and the augmentation."""
        section = getattr(self, name)
        model = self.coarse.model if name == "enhanced" else section.model
        train = TrainConfig.model_validate({**self.train.model_dump(), **section.train})
        return NetworkConfig(recipe=self.recipe, seed=self.seed, data=self.data, predict=self.predict, model=model,
                             train=train, augment=self.augment)


@dataclass
class MBDCNNPredictions(Predictions):
    """``outputs``: mask-CN's class probabilities (N, classes); beside them the foreground
    probabilities of enhanced-SN (coarse-SN's without it) and coarse-SN, and the localisation maps."""

    segmentation: torch.Tensor | None = None  # (N, 1, H, W)
    coarse: torch.Tensor | None = None  # (N, 1, H, W)
    maps: torch.Tensor | None = None  # (N, h, w)


class MBDCNN:
    name = "mbdcnn"
    Config = MBDCNNConfig
    needs_masks = False
    map_methods = CAM_METHODS

    def __init__(self, cfg: MBDCNNConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)

    # -- the networks ------------------------------------------------------------------------------
    def build(self, name: str, info: InputInfo, classes: int) -> torch.nn.Module:
        model = self.cfg.stage(name).model
        options = dict(model.options)
        if name == "enhanced":
            options["guide_channels"] = 1
        channels = info.channels + (name == "maskcn" and self.cfg.maskcn.mask_channel)
        return create_model(model.name, in_channels=channels, num_classes=1 if name != "maskcn" else classes,
                            **options)

    def loss(self, logits, mask):
        o = self.cfg.loss
        return segmentation_loss(logits, mask, o.rank_weight, o.rank_pixels, o.rank_margin)

    def coarse_probs(self, x: torch.Tensor) -> torch.Tensor:
        """coarse-SN's foreground probabilities of a batch normalised as this run's inputs."""
        x = renormalise(x, self.record_.input, self.coarse_input_)
        return segmentation_tta(x, lambda t: torch.sigmoid(self.coarse_(t).float()), self.cfg.predict.views)

    @torch.no_grad()
    def coarse_masks(self, loaded: Loaded) -> torch.Tensor:
        """(N, H, W) uint8 0/1: coarse-SN's masks of the cases, the views averaged."""
        self.coarse_.eval()
        out = [(self.coarse_probs(b["x"].to(self.device_)) >= self.cfg.predict.threshold)[:, 0].to(torch.uint8).cpu()
               for b in stage_batches(loaded, None, self.record_.input, 16)]
        return torch.cat(out) if out else torch.zeros((0, *loaded.images.shape[2:]), dtype=torch.uint8)

    def maskcn_input(self, batch: dict, device) -> torch.Tensor:
        x = batch["x"].to(device)
        return torch.cat([x, batch["coarse"].to(device)], 1) if self.cfg.maskcn.mask_channel else x

    def guide(self, batch: dict, device) -> torch.Tensor:
        """The localisation map of mask-CN (frozen, eval mode) for a batch."""
        return localisation_maps(self.maskcn_, self.maskcn_input(batch, device))

    # -- training ----------------------------------------------------------------------------------
    def fit(self, run, record, stage: str, step, train: Loaded, val: Loaded, coarse: dict, callbacks,
            join: bool = False) -> RunRecord:
        """Train one stage on ``train`` (its coarse masks ``coarse["train"]``), validating on ``val``."""
        cfg, info = self.cfg.stage(stage), record.input
        stream = stage_stream(train, coarse["train"], info, cfg.augment, cfg.train.batch_size, self.device_, join)
        return fit_network(run, record, stage, step, train, val, cfg, self.device_, self.console, callbacks,
                           folder=stage, stream=stream,
                           validation=lambda: stage_batches(val, coarse["val"], info, cfg.train.batch_size, join))

    def check(self, data) -> None:
        """Refuse, before the run directory is written, settings the data contradicts."""
        cfg = self.cfg
        one_vs_rest_classes(cfg.predict.one_vs_rest, data.task)
        masks = {part: len(kept_masks([s.id for s in data.split[part] if s.has_mask], cfg.data.mask_fraction,
                                      cfg.data.split_seed)) for part in ("train", "val")}
        for network, needed in (("coarse-SN", not cfg.coarse.trained), ("enhanced-SN", cfg.enhanced.enabled)):
            if needed and not (masks["train"] and masks["val"]):
                raise InputError(data.dataset.root, f"{network} needs training and validation cases with masks "
                                 f"({masks['train']} / {masks['val']} here); raise data.mask_fraction, or read "
                                 "coarse-SN from a finished run (coarse.trained) and set enhanced.enabled: false")
        if cfg.coarse.trained:
            read_coarse(self.build("coarse", data.input, 1), cfg.coarse.trained, data.input.channels)

    def train(self, run: RunDir, device: str = "auto", callbacks=()) -> RunRecord:
        cfg = self.cfg
        self.device_ = select_device(device)
        data, record = start_training(run, cfg, self.name, labelled_cases, label_stratum, False, self.console,
                                      check=self.check)
        started = time.perf_counter()
        self.record_, classes = record, len(data.task.classes)
        seg_train, seg_val = pixel_labelled(data, cfg, self.console)
        optimizer = lambda name: lambda params: make_optimizer(cfg.stage(name).train, params)  # noqa: E731

        # 1. coarse-SN on the cases with masks, or read from elsewhere
        torch.manual_seed(cfg.seed)
        self.coarse_ = self.build("coarse", record.input, 1)
        if cfg.coarse.trained:
            record = coarse_source(run, record, self.coarse_, cfg.coarse.trained, self.device_, self.console)
        else:
            _load_local(self.coarse_.encoder, cfg.coarse.pretrained, self.console)
            step = SegmentationStep(self.coarse_, self.loss, cfg.predict.threshold, optimizer("coarse"))
            record = self.fit(run, record, "coarse", step, seg_train, seg_val, {"train": None, "val": None}, callbacks)
        self.record_, self.coarse_input_ = record, coarse_input(record)
        coarse = {"train": self.coarse_masks(data.train), "val": self.coarse_masks(data.val)}

        # 2. mask-CN on every labelled case, the coarse mask as its 4th channel
        torch.manual_seed(cfg.seed)
        self.maskcn_ = self.build("maskcn", record.input, classes)
        _load_local(self.maskcn_, cfg.maskcn.pretrained, self.console)
        balanced = cfg.stage("maskcn").train.class_weights == "balanced"
        step = ClassifierStep(self.maskcn_, data.task, class_weights(data.train.labels, classes) if balanced else None,
                              cfg.predict.threshold, cfg.predict.one_vs_rest, optimizer("maskcn"))
        record = self.fit(run, record, "maskcn", step, data.train, data.val, coarse, callbacks,
                          join=cfg.maskcn.mask_channel)
        self.maskcn_.eval().requires_grad_(False)

        # 3. enhanced-SN, from coarse-SN, guided by the frozen mask-CN's localisation maps
        self.enhanced_ = None
        if cfg.enhanced.enabled:
            torch.manual_seed(cfg.seed)
            self.enhanced_ = self.build("enhanced", record.input, 1)
            self.enhanced_.load_state_dict(self.coarse_.state_dict(), strict=False)  # all but the guide's conv
            seg_coarse = {part: coarse[part][[getattr(data, part).ids.index(i) for i in cases.ids]]
                          for part, cases in (("train", seg_train), ("val", seg_val))}
            step = SegmentationStep(self.enhanced_, self.loss, cfg.predict.threshold, optimizer("enhanced"),
                                    guide=self.guide)
            record = self.fit(run, record, "enhanced", step, seg_train, seg_val, seg_coarse, callbacks)
        record = record.with_stage("coarse", dataclasses.replace(
            record.stage("coarse"), fitted={**record.stage("coarse").fitted,
                                            "pixel_labelled": {"train": len(seg_train.ids), "val": len(seg_val.ids)}}))
        validation = {(k if name == "maskcn" else f"{name} {k}"): v for name in STAGES if name in record.stages
                      for k, v in record.stage(name).validation.items() if k not in TRAINING_LOGS}
        val_proba = predict_batches(data.val, record.input, lambda x: {"proba": self.classify(x)[2]},
                                    self.device_)["proba"].numpy()
        thresholds = decision_thresholds(data.task, data.val.labels.numpy(), val_proba, cfg.predict, self.console)
        self.record_ = finish_run(run, record, validation, None, time.perf_counter() - started, self.device_,
                                  self.console, thresholds)
        return self.record_

    def restore(self, run: RunDir, device: str = "auto") -> MBDCNN:
        self.device_ = select_device(device)
        self.record_ = record = run.finished_record()
        info, classes = record.input, len(record.task.classes)
        self.coarse_ = restore_network(self.build("coarse", info, 1), run.stage_dir("coarse") / "model.safetensors",
                                       self.device_)
        self.coarse_input_ = coarse_input(record)
        self.maskcn_ = restore_network(self.build("maskcn", info, classes),
                                       run.stage_dir("maskcn") / "model.safetensors", self.device_)
        self.enhanced_ = None
        if "enhanced" in record.stages:
            self.enhanced_ = restore_network(self.build("enhanced", info, 1),
                                             run.stage_dir("enhanced") / "model.safetensors", self.device_)
        return self

    # -- predicting --------------------------------------------------------------------------------
    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a normalised batch: coarse-SN's foreground probabilities, mask-CN's input and its
        class probabilities (over crops)."""
        p = self.cfg.predict
        self.coarse_.eval()
        self.maskcn_.eval()
        coarse = self.coarse_probs(x)
        x4 = self.maskcn_input({"x": x, "coarse": (coarse >= p.threshold).float()}, x.device)
        return coarse, x4, crop_average(x4, lambda t: self.maskcn_(t).float().softmax(1), p.crops, p.crop_fraction)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything MB-DCNN says about a normalised batch: coarse and final foreground
        probabilities, class probabilities (over crops) and localisation maps."""
        p = self.cfg.predict
        coarse, x4, proba = self.classify(x)
        maps = localisation_maps(self.maskcn_, x4)
        seg = coarse
        if self.enhanced_ is not None:
            self.enhanced_.eval()
            guide = F.interpolate(maps, size=x.shape[2:], mode="bilinear", align_corners=False)
            seg = segmentation_tta(torch.cat([x, guide], 1),
                                   lambda z: torch.sigmoid(self.enhanced_(z[:, :-1], z[:, -1:]).float()),
                                   p.views, p.scales)
        return {"proba": proba, "segmentation": seg, "coarse": coarse, "maps": maps[:, 0]}

    def predict(self, dataset: Dataset, need_masks: bool = False) -> MBDCNNPredictions:
        loaded, rejected = load_cases(dataset, self.cfg, self.record_.input, need_masks, self.console)
        if not loaded.ids:
            return MBDCNNPredictions(loaded, torch.zeros((0, len(self.record_.task.classes))), rejected, dataset)
        out = predict_batches(loaded, self.record_.input, self.forward, self.device_)
        return MBDCNNPredictions(loaded, out["proba"], rejected, dataset, out["segmentation"], out["coarse"],
                                 out["maps"])

    def full_size_masks(self, preds: MBDCNNPredictions, which: str = "segmentation"):
        """Each case's mask at its input image's size: probabilities resized, then thresholded."""
        probs = getattr(preds, which)
        for i, (h, w) in enumerate(preds.loaded.original_sizes):
            prob = F.interpolate(probs[i:i + 1], size=(h, w), mode="bilinear", align_corners=False)
            yield preds.loaded.ids[i], (prob[0, 0] >= self.cfg.predict.threshold).numpy()

    def rows(self, preds: MBDCNNPredictions) -> list[dict]:
        rows = class_rows(self.record_.task, preds, self.cfg.predict, self.record_.thresholds)
        return [{**row, "mask": f"masks/{row['id']}.png"} for row in rows]

    def write_files(self, preds: MBDCNNPredictions, folder: Path, maps: str | None = None) -> None:
        for case, mask in self.full_size_masks(preds):
            write_png(folder / "masks" / f"{case}.png", mask.astype(np.uint8) * 255)
        if maps:
            from medsight.explain import MapWriter, class_maps

            writer, by_id = MapWriter(folder), {s.id: s for s in preds.dataset.samples}
            for i, case in enumerate(preds.loaded.ids):
                if maps == "cam":  # the localisation map as enhanced-SN saw it
                    m = preds.maps[i]
                else:
                    x = _normalised(preds.loaded, i, self.record_.input).to(self.device_)
                    coarse = (preds.coarse[i:i + 1].to(self.device_) >= self.cfg.predict.threshold).float()
                    x4 = self.maskcn_input({"x": x, "coarse": coarse}, self.device_)
                    m = class_maps(self.maskcn_, x4, maps)[0].cpu()
                writer.write(case, by_id[case].load_image(), m.clamp_min(0))

    def evaluate(self, dataset: Dataset, preds: MBDCNNPredictions) -> dict:
        """Segmentation on the cases with masks (enhanced-SN's, and coarse-SN's as ``coarse <metric>``),
        classification on the labelled ones."""
        by_id = {s.id: s for s in dataset.samples}
        metrics, std, n_masks = {}, {}, 0
        for which, prefix in (("segmentation", ""), ("coarse", "coarse ")):
            per_image = [segmentation_metrics(mask, truth > 0) for case, mask in self.full_size_masks(preds, which)
                         if (truth := by_id[case].load_mask()) is not None]
            if per_image:
                summary, n_masks = summarize_repeats(per_image), len(per_image)
                metrics.update({prefix + k: summary[k]["mean"] for k in SEG_METRICS})
                std.update({prefix + k: summary[k]["std"] for k in SEG_METRICS})
        task, p, thresholds, extra = self.record_.task, self.cfg.predict, self.record_.thresholds, {}
        if any(by_id[c].diagnosis is not None for c in preds.loaded.ids):
            y, proba, _, labels = labelled_outputs(dataset, preds, task)
            ovr = one_vs_rest_classes(p.one_vs_rest, task)
            metrics.update(task_metrics(task, y, proba, p.threshold, ovr, thresholds))
            extra["labels"] = labels.to_json()
            if thresholds:  # chosen on validation; the fixed threshold's metrics beside them
                extra.update(threshold=dict(thresholds), fixed_threshold=p.threshold,
                             fixed_threshold_metrics=task_metrics(task, y, proba, p.threshold, ovr))
        if not metrics:
            raise InputError(dataset.root, "no cases with labels or masks to evaluate")
        return {"n": len(preds.loaded.ids), "n_masks": n_masks, "metrics": metrics, "segmentation_std": std, **extra}


# -- helpers ---------------------------------------------------------------------------------------------
def _load_local(model: torch.nn.Module, path: str | None, console: Console) -> None:
    if path:
        from medsight.models.pretrained import load_pretrained

        console.print(f"weights from {path}: {load_pretrained(model, path)}")


def _normalised(loaded: Loaded, i: int, info: InputInfo) -> torch.Tensor:
    from medsight.recipes.prepare import normalise

    return normalise(loaded.images[i:i + 1], info.mean, info.std)
