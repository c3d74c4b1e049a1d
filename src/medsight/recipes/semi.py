"""Semi-supervised MV-KBC: the ``mvkbc`` recipe's network, input, loss and augmentation, trained
with labelled and unlabelled nodules side by side (``semi.algorithm``):

- ``supervised``: the labelled nodules alone, the reference at the same label fraction (with
  ``data.labelled_fraction: 1`` it is the ``mvkbc`` recipe, weight for weight);
- ``mean_teacher`` and ``fixmatch``: the steps of :mod:`medsight.recipes.semi_steps`;
- ``ssac``: MK-SSAC, MV-KBC with adversarial autoencoders and transition layers, two stages
  (:mod:`medsight.recipes.semi_ssac`, options in the ``ssac`` section);
- ``aae``: MK-AAE, each MV-KBC stream the encoder of a semi-supervised adversarial autoencoder
  (:mod:`medsight.recipes.semi_aae`, options in the ``aae`` section);
- ``catgan``: MK-CatGAN, the MV-KBC network as a categorical GAN's discriminator
  (:mod:`medsight.recipes.semi_catgan`, options in the ``catgan`` section);
- ``ladder``: MK-Ladder, each MV-KBC stream the encoder of a Ladder network
  (:mod:`medsight.recipes.semi_ladder`, options in the ``ladder`` section).

The data (:mod:`medsight.data.label_fraction`): validation and held-out cases are split off the
labelled cases exactly as every supervised recipe does (the same folds); then within the training
patients ``data.labelled_fraction`` of the patients of each class keep their labels (whole patients,
chosen by ``data.split_seed``) and the others' nodules become unlabelled (label -1), joined by the
reader's unlabelled cases of patients outside validation and held-out (LIDC rating-3 nodules with
``data.options.rating3: unlabelled``) unless ``semi.reader_unlabelled`` is false, and by every
nodule of another dataset, ``data.unlabelled`` (a root; ``data.unlabelled_format``, e.g. ``luna``
for LUNA16 / Tianchi ``annotations.csv`` nodules, detected when null; ``data.unlabelled_options``
for its reader), whose patients must be other patients. Its nodules without a mask take the masks
of a nodule segmenter, ``data.unlabelled_masks``: a finished run of
``configs/lidc_voi_nodule_unet.yaml`` (:mod:`medsight.recipes.unlabelled_nodules`). They are only
ever unlabelled training data. ``split.json`` lists the ``unlabelled`` ids beside ``train``, ``val``
and ``heldout``. The normalisation is taken
over all training patients' nodules, labelled or not (the same for every algorithm).

Defaults are USB's (microsoft/Semi-supervised-learning) for each algorithm where one is not given:
unlabelled batch ``semi.uratio`` x ``train.batch_size`` (Mean Teacher 1, FixMatch 7; the talk's
four, which USB has not: 1), unlabelled loss weight ``semi.unsup_weight`` (50, 1; the talk's four
weigh their losses in their own sections), EMA decay 0.999, FixMatch threshold 0.95. Mean
Teacher's weight ramps up over the first ``semi.rampup`` (0.4) of the training steps, on the
sigmoid exp(-5 (1 - t)^2) of Tarvainen & Valpola (USB's ramp is linear). An epoch is one pass over
the labelled nodules (``semi.epoch_length``), so every algorithm takes the same optimiser steps as
the supervised reference; the unlabelled stream restarts when it runs out.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from medsight.config import AugmentConfig, DataConfig, Section
from medsight.engine import EMA, LossWeight, Stream, select_device, two_stream_steps
from medsight.data.label_fraction import hide_patients, reader_unlabelled
from medsight.recipes.common import (TrainingData, label_stratum, labelled_cases, prepare_training, preprocessor,
                                     start_run)
from medsight.recipes.mvkbc import MVKBCConfig, MVKBCRecipe, MVKBCStep, augment_patches, patch_stream
from medsight.recipes.network import fit_network, make_optimizer, restore_network
from medsight.recipes.prepare import Loaded, load_samples, normalise, subset
from medsight.recipes.semi_aae import AAEOptions, fit_aae
from medsight.recipes.semi_catgan import CatGANOptions, fit_catgan
from medsight.recipes.semi_ladder import LadderOptions, fit_ladder
from medsight.recipes.semi_ssac import SSACOptions, fit_ssac, ssac_network
from medsight.recipes.semi_steps import FixMatchStep, MeanTeacherStep
from medsight.recipes.unlabelled_nodules import UnlabelledSource
from medsight.rundir import InputInfo, RunDir, RunRecord

# the talk's algorithms (not USB's): unlabelled ratio 1 (medsight's), loss weights in their own sections
OWN_FITS = {"ssac": fit_ssac, "aae": fit_aae, "catgan": fit_catgan, "ladder": fit_ladder}
ALGORITHMS = ("supervised", "mean_teacher", "fixmatch", *OWN_FITS)
USB_UNLABELLED_RATIO = {"supervised": 1, "mean_teacher": 1, "fixmatch": 7, **dict.fromkeys(OWN_FITS, 1)}
USB_UNSUP_WEIGHT = {"supervised": 0.0, "mean_teacher": 50.0, "fixmatch": 1.0, **dict.fromkeys(OWN_FITS, 0.0)}


class SemiData(DataConfig):
    labelled_fraction: float = Field(1.0, gt=0, le=1)  # of the training patients, stratified by class
    unlabelled: str | None = None  # another dataset's root: all its nodules join the unlabelled training data
    unlabelled_format: str | None = None  # its layout (luna for LUNA16 / Tianchi); detected when None
    unlabelled_options: dict[str, Any] = Field(default_factory=dict)  # passed to its reader
    unlabelled_masks: str | None = None  # a finished nodule segmenter run: masks for its nodules without one

    @model_validator(mode="after")
    def _unlabelled_source(self):
        if self.unlabelled is None and (self.unlabelled_masks or self.unlabelled_format or self.unlabelled_options):
            raise ValueError("data.unlabelled_masks, unlabelled_format and unlabelled_options describe "
                             "data.unlabelled (another dataset's root), which is not set")
        return self

    def unlabelled_source(self, device: str = "cpu") -> UnlabelledSource | None:
        """``data.unlabelled`` opened and checked (no voxel read), None when not set."""
        if self.unlabelled is None:
            return None
        return UnlabelledSource(self.unlabelled, self.unlabelled_format, self.unlabelled_options,
                                self.unlabelled_masks, device)


def strong_augment() -> AugmentConfig:
    """FixMatch's strong view: the weak geometry pushed further (any rotation, shifts of a fifth)
    and strong intensity changes, no zoom (size tells malignancy; a zoom would change the label)."""
    return AugmentConfig(hflip=True, vflip=True, rot90=False, rotate=180, translate=0.2, brightness=0.5,
                         contrast=0.5)


class SemiOptions(Section):
    algorithm: Literal["supervised", "mean_teacher", "fixmatch", "ssac", "aae", "catgan", "ladder"] = "supervised"
    uratio: int | None = Field(None, ge=1)  # unlabelled batch = uratio x train.batch_size (None: USB's)
    unsup_weight: float | None = Field(None, ge=0)  # the unlabelled loss's weight (None: USB's)
    rampup: float = Field(0.4, ge=0, le=1)  # mean_teacher: fraction of the training steps to reach the weight
    ema: float = Field(0.999, ge=0, le=1)  # mean_teacher: the teacher's decay
    ema_warmup: bool = True  # mean_teacher: decay min(ema, 1 - 1 / (t + 1)) at the t-th update
    threshold: float = Field(0.95, gt=0.5, le=1)  # fixmatch: confidence a pseudo-label needs
    strong: AugmentConfig = Field(default_factory=strong_augment)  # fixmatch: the strong view (per patch unit)
    cutout: float = Field(0.5, ge=0, lt=1)  # fixmatch: side of the square cut out of each strong patch
    epoch_length: Literal["labelled", "unlabelled"] = "labelled"
    reader_unlabelled: bool = True  # also learn from the reader's unlabelled cases (rating3: unlabelled)

    @property
    def ratio(self) -> int:
        return self.uratio if self.uratio is not None else USB_UNLABELLED_RATIO[self.algorithm]

    @property
    def weight(self) -> float:
        return self.unsup_weight if self.unsup_weight is not None else USB_UNSUP_WEIGHT[self.algorithm]


class SemiConfig(MVKBCConfig):
    recipe: Literal["semi"]  # type: ignore[assignment]
    data: SemiData
    semi: SemiOptions = Field(default_factory=SemiOptions)
    ssac: SSACOptions = Field(default_factory=SSACOptions)  # semi.algorithm: ssac
    aae: AAEOptions = Field(default_factory=AAEOptions)  # semi.algorithm: aae
    catgan: CatGANOptions = Field(default_factory=CatGANOptions)  # semi.algorithm: catgan
    ladder: LadderOptions = Field(default_factory=LadderOptions)  # semi.algorithm: ladder

    @model_validator(mode="after")
    def _one_stage(self):
        if self.mvkbc.pretrain_views:
            raise ValueError("the semi recipe trains the network end to end; set mvkbc.pretrain_views: false")
        algorithm = self.semi.algorithm
        if algorithm in OWN_FITS and self.semi.unsup_weight is not None:
            raise ValueError(f"semi.unsup_weight: {algorithm} weighs its losses in its own section ({algorithm}.*)")
        if algorithm == "catgan" and self.mvkbc.size_input:
            raise ValueError("mvkbc.size_input: catgan's generated nodules have no size (no mask)")
        return self


# -- the data --------------------------------------------------------------------------------------------
def join_loaded(a: Loaded, b: Loaded) -> Loaded:
    if not b.ids:
        return a
    if not a.ids:
        return b
    masks = None if a.masks is None or b.masks is None else torch.cat([a.masks, b.masks])
    return Loaded(a.ids + b.ids, torch.cat([a.images, b.images]), masks, torch.cat([a.labels, b.labels]),
                  a.original_sizes + b.original_sizes)


def with_unlabelled(data: TrainingData, cfg: SemiConfig, need_masks: bool, console,
                    source: UnlabelledSource | None = None) -> tuple[TrainingData, Loaded]:
    """The training data with only the labelled patients' nodules in ``train``, and the unlabelled
    nodules (labels -1): the hidden training patients', then the reader's own, then ``source``'s."""
    train = data.split["train"]
    keep, hide = hide_patients(train, data.train.labels.tolist(), cfg.data.labelled_fraction, cfg.data.split_seed)
    extra = reader_unlabelled(data.dataset, data.split) if cfg.semi.reader_unlabelled else []
    if source is not None:
        source.check_apart(data.dataset)
        extra = extra + source.nodules(console)
    extra_loaded, _ = load_samples(extra, preprocessor(cfg, None), None, need_masks, console=console,
                                   description="loading unlabelled cases")
    hidden = subset(data.train, hide)
    hidden.labels = torch.full_like(hidden.labels, -1)
    split = {**data.split, "train": [train[i] for i in keep], "unlabelled": [train[i] for i in hide] + extra}
    return dataclasses.replace(data, split=split, train=subset(data.train, keep)), join_loaded(hidden, extra_loaded)


def cutout(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Each patch of ``x`` (B, C, S, S) with a square of side ``fraction`` x S set to 0 (the
    normalised mean) around a uniformly drawn centre, clipped at the border (FixMatch's last strong step)."""
    if fraction <= 0:
        return x
    b, c, h, w = x.shape
    side = max(1, round(fraction * min(h, w)))
    cy, cx = (torch.randint(0, n, (b, c, 1, 1), generator=gen) for n in (h, w))
    top, left = cy - side // 2, cx - side // 2
    ys, xs = torch.arange(h).view(1, 1, h, 1), torch.arange(w).view(1, 1, 1, w)
    inside = (ys >= top) & (ys < top + side) & (xs >= left) & (xs < left + side)
    return x.masked_fill(inside.to(x.device), 0.0)


def unlabelled_stream(loaded: Loaded, info: InputInfo, cfg: SemiConfig, device: torch.device) -> Stream:
    """Batches of ``semi.ratio`` x ``train.batch_size`` unlabelled nodules, each in two augmented
    views: ``student`` and ``teacher`` (Mean Teacher: two independent weak views, ``augment``), or
    ``weak`` (``augment``) and ``strong`` (``semi.strong`` and cutout) for FixMatch; one ``weak`` view
    for the others (SSAC's R)."""
    semi = cfg.semi
    names = {"mean_teacher": ("student", "teacher"), "fixmatch": ("weak", "strong")}.get(semi.algorithm, ("weak",))

    def batch(idx: torch.Tensor, gen: torch.Generator) -> dict:
        x = normalise(loaded.images[idx].to(device), info.mean, info.std)
        out = {"mask": None if loaded.masks is None else loaded.masks[idx], "y": loaded.labels[idx]}
        for name in names:
            if name == "strong":
                out[name] = cutout(augment_patches(x, semi.strong, cfg, gen), semi.cutout, gen)
            else:
                out[name] = augment_patches(x, cfg.augment, cfg, gen)
        return out

    return Stream(len(loaded.ids), cfg.train.batch_size * semi.ratio, batch)


# -- the recipe ------------------------------------------------------------------------------------------
class SemiRecipe(MVKBCRecipe):
    name = "semi"
    Config = SemiConfig

    def build(self, info: InputInfo):
        """MV-KBC's network; for ``ssac`` inside :class:`medsight.models.ssac.SSACNet`."""
        net = super().build(info)
        return ssac_network(net, info, self.cfg.ssac) if self.cfg.semi.algorithm == "ssac" else net

    def step(self, cfg: SemiConfig, stream: Stream, unlabelled: Stream):
        """The algorithm's step; Mean Teacher's loss weight ramps over ``semi.rampup`` of the steps."""
        semi = cfg.semi
        optimizer = lambda params: make_optimizer(cfg.train, params)  # noqa: E731
        if semi.algorithm == "supervised":
            return MVKBCStep(self.model_, cfg.mvkbc, optimizer, mm_per_pixel=cfg.mm_per_pixel)
        if semi.algorithm == "fixmatch":
            return FixMatchStep(self.model_, cfg.mvkbc, optimizer, LossWeight(semi.weight), semi.threshold,
                                mm_per_pixel=cfg.mm_per_pixel)
        total = cfg.train.epochs * two_stream_steps(stream, unlabelled, semi.epoch_length)
        weight = LossWeight(semi.weight, rampup=round(semi.rampup * total), shape="sigmoid")
        return MeanTeacherStep(self.model_, cfg.mvkbc, optimizer, weight, semi.ema, semi.ema_warmup,
                               mm_per_pixel=cfg.mm_per_pixel)

    def train(self, run: RunDir, device: str = "auto", callbacks=()) -> RunRecord:
        """As :func:`medsight.recipes.common.start_training`, with the unlabelled cases taken out
        of the training cases before the run directory (and its split) is written."""
        cfg = self.cfg
        self.device_ = select_device(device)
        resuming = run.resumable(cfg.to_dict(), cfg.completed)
        need_masks = cfg.mvkbc.size_input
        source = cfg.data.unlabelled_source(device)  # its folder and segmenter checked before any data is read
        data = prepare_training(cfg, self.name, labelled_cases, label_stratum, need_masks, self.console)
        data, unlabelled = with_unlabelled(data, cfg, need_masks, self.console, source)
        record = start_run(run, cfg, self.name, data, resuming, self.console)
        self.console.print(f"semi ({cfg.semi.algorithm}): {len(unlabelled.ids)} unlabelled training cases")
        started = time.perf_counter()
        torch.manual_seed(cfg.seed)
        self.model_ = self.build(record.input)
        stream = patch_stream(data.train, record.input, cfg, self.device_)
        ulb = None if cfg.semi.algorithm == "supervised" else unlabelled_stream(unlabelled, record.input, cfg,
                                                                                self.device_)
        if cfg.semi.algorithm in OWN_FITS:
            fit = OWN_FITS[cfg.semi.algorithm]
            record = fit(run, record, self.model_, data, stream, ulb, cfg, self.device_, self.console, callbacks)
            return self.finish(run, record, data, started)
        step = self.step(cfg, stream, ulb)
        record = fit_network(run, record, "network", step, data.train, data.val, cfg, self.device_, self.console,
                             callbacks, stream=stream, unlabelled=ulb, epoch_length=cfg.semi.epoch_length)
        if isinstance(step, MeanTeacherStep):
            self.model_ = step.teacher  # the teacher scores validation and predicts
        return self.finish(run, record, data, started)

    def restore(self, run: RunDir, device: str = "auto") -> SemiRecipe:
        if self.cfg.semi.algorithm != "mean_teacher":
            return super().restore(run, device)
        self.device_ = select_device(device)
        self.record_ = run.finished_record()
        teacher = restore_network(EMA(self.build(self.record_.input)), run.stage_dir() / "teacher.safetensors",
                                  self.device_)
        self.model_ = teacher.module
        return self
