"""MV-KBC (Xie et al., IEEE TMI 2019): benign vs malignant nodules from 9 views x 3 patch types.

Input: ``data.preprocess: nodule_views`` with ``patches: [OA, HVV, HS]`` (methods.md: the raw
patch, the nodule's voxels alone, the surroundings alone) over the 9 planes through the nodule
centre; ``preprocess_options.views`` keeps fewer planes and ``patches`` fewer types (the ablations).
The network is the registry's ``mvkbc`` (:mod:`medsight.models.mvkbc`): one stream per patch (a
backbone and the authors' FC head), a knowledge-based collaborative layer per view, and a learned
weighting of the views into one sigmoid. Stages:

1. ``kbc`` (``mvkbc.pretrain_views: true``, the paper's first step): every view's KBC (its streams
   and its collaborative layer) learns the label alone; the nine are trained side by side as
   independent heads of one network (the sum of their losses), which with separate streams is
   nine separate trainings in one loop. Files in ``kbc/``.
2. ``network``: the whole network end to end (from the pre-trained views when there are), on the
   fused probability. ``model.safetensors``, ``history.csv`` ...

- the loss (``mvkbc.penalty``): ``paper`` (default), binary cross-entropy weighted by
  ``mvkbc.fn_weight`` (2) on false negatives (malignant, scored below 0.5) and 1 otherwise, per
  nodule, as the paper describes; ``released``, what the authors' Keras code computes instead:
  Keras' BCE with its arguments swapped (the labels, clipped to [1e-7, 1 - 1e-7], are the
  "predictions"), about 15.9 |y - p| in float32, a weighted L1, whose (B, 1) weights times (B,) losses
  broadcast to (B, B), so the weight becomes a batch factor 1 + (fraction of false negatives);
  ``none``, plain BCE. The paper's is the default: it is the stated method and a proper likelihood.
- augmentation (``augment.*``) per ``mvkbc.augment_unit``: ``patch`` (default: every patch its own
  rotation, flips and shift, as the authors augmented each patch image separately), ``view`` (a
  view's three patches together) or ``nodule`` (all 27 alike).
- the decision: a threshold on the malignancy probability chosen on the validation nodules
  (``predict.decision``, as the classification recipe); the best epoch: validation AUC.
- ``predict --maps gradcam``: each view's Grad-CAM for the fused prediction (the sum over its
  patch streams), the views tiled left to right over their OA patches in ``maps/<id>.png``.
- the label rule: the reader's ``data.options.label_rule`` (``diagnosis``, the CSV's consensus,
  or ``malignancy``, the paper's mean rating < 3 / > 3 with 3 left out).
- ``mvkbc.size_input`` (medsight's, not the paper's; off by default): the view weighting also reads
  the nodule's size, the log of the equivalent diameter of its cross-sections in the view planes
  (from the nodule mask sampled on each plane, ``preprocess_options.size_mm`` wide): the size the
  HVV and HS patches show, given to the last layer as one number, so that the views add to it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from rich.console import Console

from medsight.config import DataConfig, NetworkConfig, Section
from medsight.data.base import Dataset
from medsight.engine import Stream, select_device
from medsight.metrics import binary_metrics
from medsight.recipes.classification import class_rows, decision_thresholds, evaluate_classes
from medsight.recipes.common import finish_run, label_stratum, labelled_cases, load_cases, start_training
from medsight.recipes.interface import Predictions
from medsight.models import create_model
from medsight.recipes.network import eval_batches, fit_network, make_optimizer, restore_network
from medsight.recipes.prepare import Loaded, normalise
from medsight.rundir import InputInfo, RunDir, RunRecord
from medsight.transforms.augment import augment_batch
from medsight.transforms.views import VIEW_NAMES


class MVKBCOptions(Section):
    penalty: Literal["paper", "released", "none"] = "paper"
    fn_weight: float = Field(2.0, gt=0)  # the weight of a false negative (paper and released losses)
    pretrain_views: bool = False  # train each view's KBC first (stage kbc)
    augment_unit: Literal["patch", "view", "nodule"] = "patch"
    size_input: bool = False  # the view weighting also reads the nodule's size


class MVKBCConfig(NetworkConfig):
    recipe: Literal["mvkbc"]
    mvkbc: MVKBCOptions = Field(default_factory=MVKBCOptions)

    @field_validator("data")
    @classmethod
    def _views(cls, data: DataConfig) -> DataConfig:
        if data.preprocess != "nodule_views":
            raise ValueError("the mvkbc recipe reads the planar views: set data.preprocess: nodule_views")
        return data

    @field_validator("model")
    @classmethod
    def _network(cls, model):
        if model.name != "mvkbc":
            raise ValueError(f"the mvkbc recipe trains the mvkbc network, got {model.name!r}")
        return model

    @model_validator(mode="after")
    def _size(self):
        if self.mvkbc.size_input and not self.data.preprocess_options.get("size_mm"):
            raise ValueError("mvkbc.size_input: the nodule's size is read off patches of a fixed width; "
                             "set data.preprocess_options.size_mm")
        return self

    @property
    def mm_per_pixel(self) -> float:
        return float(self.data.preprocess_options.get("size_mm", 0)) / self.data.image_size[0]

    @property
    def views(self) -> int:
        return len(self.data.preprocess_options.get("views", VIEW_NAMES))

    @property
    def patch_names(self) -> list[str]:
        return list(self.data.preprocess_options.get("patches", ("OA",)))

    @property
    def patches(self) -> int:
        return len(self.patch_names)


# -- the losses ------------------------------------------------------------------------------------------
def penalty_loss(z: torch.Tensor, y: torch.Tensor, fn_weight: float = 2.0) -> torch.Tensor:
    """The paper's: mean over nodules of w * BCE(sigmoid(z), y), w = ``fn_weight`` for a false
    negative (y = 1, p < 0.5) and 1 otherwise (w is a constant to the gradient)."""
    y = y.float()
    false_negative = (y == 1) & (z.detach() < 0)  # p < 0.5
    weight = torch.where(false_negative, fn_weight, 1.0)
    return (weight * F.binary_cross_entropy_with_logits(z, y, reduction="none")).mean()


def released_penalty_loss(p: torch.Tensor, y: torch.Tensor, fn_weight: float = 2.0) -> torch.Tensor:
    """What the authors' Keras code computes for probabilities ``p`` and labels ``y`` (both (B,)):
    ``K.binary_crossentropy(y_pred, y_true)`` takes the labels as its output, clipped to
    [eps, 1 - eps] (eps = 1e-7) and turned into logits x, and the predictions as its target, so each
    nodule costs sigmoid_cross_entropy(labels=p, logits=x) = |x| |y - p| + a constant (|x| = 15.9 for
    a malignant nodule in float32, 16.1 for a benign one). Its weights (B, 1): 1 where |y - p| <= 0.5,
    ``fn_weight`` where y - p > 0.5, 1 more where y - p <= -0.5 (so a benign nodule at exactly
    p = 0.5 weighs 2); times the (B,) costs they broadcast to (B, B), whose mean (Keras') is
    mean(w) * mean(cost)."""
    eps = torch.tensor(1e-7, dtype=torch.float32)
    target = y.float().clamp(eps, 1 - eps)
    x = torch.log(target / (1 - target))
    cost = torch.relu(x) - x * p + torch.log1p(torch.exp(-x.abs()))
    sub = (y.float() - p).detach()
    w = (sub.abs() <= 0.5).float() + fn_weight * (sub > 0.5).float() + (sub <= -0.5).float()
    return (w[:, None] * cost[None, :]).mean()


def nodule_loss(z: torch.Tensor, y: torch.Tensor, options: MVKBCOptions) -> torch.Tensor:
    if options.penalty == "paper":
        return penalty_loss(z, y, options.fn_weight)
    if options.penalty == "released":
        return released_penalty_loss(torch.sigmoid(z), y, options.fn_weight)
    return F.binary_cross_entropy_with_logits(z, y.float())


def nodule_size(masks: torch.Tensor, mm_per_pixel: float) -> torch.Tensor:
    """log(d / 10 mm) per nodule, d = 2 sqrt(A / pi) the equivalent diameter of A, the mean area (mm^2)
    of the nodule mask over its view planes; ``masks`` (B, C, S, S) or (B, 1, C, S, S), one per patch."""
    m = masks.reshape(masks.shape[0], -1, *masks.shape[-2:]).float()
    area = m.sum((2, 3)).mean(1) * mm_per_pixel ** 2
    return torch.log((2 * torch.sqrt(area / math.pi)).clamp_min(0.5) / 10.0)


def logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


# -- the steps --------------------------------------------------------------------------------------------
class MVKBCStep:
    """The fused output's loss (stage ``network``), or with ``per_view`` the sum over views of
    each view's KBC loss (stage ``kbc``); validation scores the same output."""

    monitor, monitor_mode = "AUC", "max"

    def __init__(self, model, options: MVKBCOptions, optimizer, per_view: bool = False, mm_per_pixel: float = 0.0):
        self.models = {"model": model}
        self.options, self.make_optimizer, self.per_view = options, optimizer, per_view
        self.mm_per_pixel = mm_per_pixel

    def optimizers(self):
        return {"model": self.make_optimizer(self.models["model"].parameters())}

    def logits(self, batch: dict, device: torch.device, model=None) -> torch.Tensor:
        """(B,) fused logits of ``model`` (the step's own when None), or (B, views) per-view logits
        with ``per_view``."""
        model, x = self.models["model"] if model is None else model, batch["x"].to(device)
        if self.per_view:
            return logit(model.view_probs(x)[..., 1].float())
        size = nodule_size(batch["mask"], self.mm_per_pixel).to(device) if self.options.size_input else None
        return model(x, size)[:, 1].float()

    def loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if z.ndim == 1:
            return nodule_loss(z, y, self.options)
        return sum(nodule_loss(z[:, v], y, self.options) for v in range(z.shape[1]))

    def train_step(self, batch, ctx):
        loss = self.loss(self.logits(batch, ctx.device), batch["y"].to(ctx.device))
        ctx.update(loss)
        return {"loss": loss}

    def validation_step(self, batch, device):
        y = batch["y"].to(device)
        z = self.logits(batch, device)
        return torch.sigmoid(z).cpu(), y.cpu(), self.loss(z, y).item() * len(y)

    def validation_metrics(self, outputs):
        p = torch.cat([o[0] for o in outputs]).numpy()
        y = torch.cat([o[1] for o in outputs]).numpy()
        score = p if p.ndim == 1 else p.mean(1)  # per view: the views' mean, to pick the epoch
        return {"val_loss": sum(o[2] for o in outputs) / max(len(y), 1), **binary_metrics(y, score)}


def augment_patches(x: torch.Tensor, augment, cfg: MVKBCConfig, gen: torch.Generator) -> torch.Tensor:
    """``x`` (B, views * patches, S, S) augmented by ``augment`` per ``mvkbc.augment_unit``."""
    unit = {"patch": 1, "view": cfg.patches, "nodule": cfg.views * cfg.patches}[cfg.mvkbc.augment_unit]
    b, c = x.shape[:2]
    x, _ = augment_batch(x.reshape(b * c // unit, unit, *x.shape[2:]), None, augment, gen)
    return x.reshape(b, c, *x.shape[2:])


def patch_stream(loaded: Loaded, info: InputInfo, cfg: MVKBCConfig, device: torch.device) -> Stream:
    """Shuffled, normalised batches whose patches are augmented per ``mvkbc.augment_unit``."""
    def batch(idx: torch.Tensor, gen: torch.Generator) -> dict:
        x = normalise(loaded.images[idx].to(device), info.mean, info.std)
        mask = None if loaded.masks is None else loaded.masks[idx]  # as sampled: the size ignores augmentation
        return {"x": augment_patches(x, cfg.augment, cfg, gen), "mask": mask, "y": loaded.labels[idx]}

    return Stream(len(loaded.ids), cfg.train.batch_size, batch)


class MVKBCRecipe:
    name = "mvkbc"
    Config = MVKBCConfig
    needs_masks = False
    map_methods = ("gradcam",)

    def __init__(self, cfg: MVKBCConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)

    def build(self, info: InputInfo):
        """The network for the configured views and patch types."""
        options = {**self.cfg.model.options, "views": self.cfg.views, "patches": self.cfg.patches,
                   "size_input": self.cfg.mvkbc.size_input}
        return create_model("mvkbc", in_channels=info.channels, num_classes=2, **options)

    def size(self, batch: dict) -> torch.Tensor | None:
        """Each nodule's size for the view weighting (with ``mvkbc.size_input``), else None."""
        if not self.cfg.mvkbc.size_input:
            return None
        return nodule_size(batch["mask"], self.cfg.mm_per_pixel).to(self.device_)

    @torch.no_grad()
    def outputs(self, loaded: Loaded, batch_size: int = 32) -> torch.Tensor:
        """(N, 2) class probabilities of the loaded cases."""
        self.model_.eval()
        out = [self.model_(b["x"].to(self.device_), self.size(b)).float().softmax(1).cpu()
               for b in eval_batches(loaded, self.record_.input, batch_size)]
        return torch.cat(out) if out else torch.zeros((0, 2))

    def train(self, run: RunDir, device: str = "auto", callbacks=()) -> RunRecord:
        cfg = self.cfg
        self.device_ = select_device(device)
        data, record = start_training(run, cfg, self.name, labelled_cases, label_stratum, cfg.mvkbc.size_input,
                                      self.console)
        started = time.perf_counter()
        torch.manual_seed(cfg.seed)
        self.model_ = self.build(record.input)
        stream = patch_stream(data.train, record.input, cfg, self.device_)
        optimizer = lambda params: make_optimizer(cfg.train, params)  # noqa: E731
        if cfg.mvkbc.pretrain_views:
            step = MVKBCStep(self.model_, cfg.mvkbc, optimizer, per_view=True)
            record = fit_network(run, record, "kbc", step, data.train, data.val, cfg, self.device_, self.console,
                                 callbacks, folder="kbc", stream=stream)
        step = MVKBCStep(self.model_, cfg.mvkbc, optimizer, mm_per_pixel=cfg.mm_per_pixel)
        record = fit_network(run, record, "network", step, data.train, data.val, cfg, self.device_, self.console,
                             callbacks, stream=stream)
        return self.finish(run, record, data, started)

    def finish(self, run: RunDir, record: RunRecord, data, started: float) -> RunRecord:
        """After the ``network`` stage: the validation ROC, the decision thresholds chosen on the
        validation cases, the run marked finished."""
        from medsight.figures import plot_roc  # matplotlib: only when training

        self.record_ = record
        val_proba = self.outputs(data.val, self.cfg.train.batch_size)
        plot_roc(data.task, data.val.labels.numpy(), val_proba.numpy(), run.path / "validation_roc.png")
        stage = record.stage("network")
        thresholds = decision_thresholds(data.task, data.val.labels.numpy(), val_proba.numpy(), self.cfg.predict,
                                         self.console)
        self.record_ = finish_run(run, record, stage.validation, stage.best_epoch, time.perf_counter() - started,
                                  self.device_, self.console, thresholds)
        return self.record_

    def restore(self, run: RunDir, device: str = "auto") -> MVKBCRecipe:
        self.device_ = select_device(device)
        self.record_ = run.finished_record()
        self.model_ = restore_network(self.build(self.record_.input), run.stage_dir() / "model.safetensors",
                                      self.device_)
        return self

    def predict(self, dataset: Dataset, need_masks: bool = False) -> Predictions:
        loaded, rejected = load_cases(dataset, self.cfg, self.record_.input, need_masks or self.cfg.mvkbc.size_input,
                                      self.console)
        return Predictions(loaded, self.outputs(loaded), rejected, dataset)

    def rows(self, preds: Predictions) -> list[dict]:
        return class_rows(self.record_.task, preds, self.cfg.predict, self.record_.thresholds)

    def write_files(self, preds: Predictions, folder: Path, maps: str | None = None) -> None:
        """With ``--maps gradcam``: each view's Grad-CAM of the fused output over its OA patch."""
        if not maps:
            return
        from medsight.explain import MapWriter

        writer = MapWriter(folder)
        names = self.cfg.patch_names
        oa = names.index("OA") if "OA" in names else 0  # the patch the maps are drawn over
        start = 0
        for batch in eval_batches(preds.loaded, self.record_.input, 16):
            maps_ = view_grad_cams(self.model_, batch["x"].to(self.device_), self.size(batch)).cpu().numpy()
            for i, m in enumerate(maps_):
                images = preds.loaded.images[start + i].numpy()[oa::self.cfg.patches]  # (views, S, S)
                writer.write(preds.loaded.ids[start + i], images, m)
            start += len(maps_)

    def evaluate(self, dataset: Dataset, preds: Predictions) -> dict:
        return evaluate_classes(self.record_.task, dataset, preds, self.cfg.predict, self.record_.thresholds)


def view_grad_cams(model, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
    """(B, views, S, S) in [0, 1]: per view, ReLU of the sum over its patch streams of the feature
    maps weighted by the spatial mean of d z / d map (Grad-CAM of the fused logit z), upsampled to
    the patch size and scaled by each view's maximum."""
    model.eval()
    with torch.enable_grad():
        maps = model.stream_maps(x.detach())
        flat = [m for view in maps for m in view]
        for m in flat:
            m.retain_grad()
        z = model.logit_from_views(model.view_probs_from_maps(maps), size)
        grads = torch.autograd.grad(z.sum(), flat)
    per_stream = [(g.mean((2, 3), keepdim=True) * m).sum(1) for m, g in zip(flat, grads)]
    views = torch.stack(per_stream).unflatten(0, (len(maps), len(maps[0]))).sum(1).transpose(0, 1)  # (B, V, h, w)
    cams = F.interpolate(torch.relu(views).detach(), size=x.shape[2:], mode="bilinear", align_corners=False)
    top = cams.flatten(2).amax(2).clamp_min(1e-12)[..., None, None]
    return cams / top
