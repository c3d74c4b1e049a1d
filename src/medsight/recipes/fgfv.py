"""Fisher-vector classification (Pan et al., IEEE TIP 2019): FV, IFV or the foreground FV.

Two stages on whole images (no masks needed):

1. ``cnn``: a CNN (``model``) trained here as a classifier (``train``, ``augment``), or read from
   a local file (``features.fisher.cnn_weights``: our safetensors, or torchvision / timm ImageNet
   weights), in which case it is not trained.
2. ``descriptors``: the local descriptors of a case are the cells of the CNN's last feature map,
   each L2-normalised, at each of the input ``scales`` (the image resized by that factor; the
   author code used up to 13 scales). A diagonal GMM on the training descriptors and the chosen
   ``encoding``: ``fv`` (mean and variance gradients), ``ifv`` (plus signed square root and L2
   normalisation) or ``fgfv`` (IFV with per-component weights learnt to maximise a linear
   classifier's validation accuracy, pruning background descriptors and re-estimating). Then a
   linear SVM on the codes (``head``, C = 10 as the author code).

Where the foreground weights are scored (``features.fisher.weight_cases``): ``held_back`` (the
default) holds ``val_fraction`` (0.25) of the training patients back from the CNN, and the
weights maximise the accuracy on those cases of an SVM fitted on the CNN's own training cases, as
they will be used on new cases; ``seen`` scores them on a random quarter of the CNN's training
cases (the author code's protocol, where the CNN had not been trained on them; here it has, so
the weights are chosen on codes better separated than new cases' will be). ``crossfit``
cross-fits (:mod:`medsight.recipes.crossfit`): ``crossfit_folds`` (4) inner CNNs, each trained on
all but one patient-grouped fold of the training cases, describe the cases of the fold they did
not see; the GMM, the foreground weights (scored on the same patient-grouped ``val_fraction`` as
``held_back``, by an SVM fitted on the other cases' out-of-fold codes) and the SVM head then all
learn from these out-of-fold descriptors of every training case, whatever the ``encoding``;
validation and new cases are encoded from each of the k CNNs' descriptors and the SVM's
probabilities averaged over them (membership maps: mg averaged), as no CNN trained on all
training cases has descriptors that mean what the inner ones' meant (:mod:`~medsight.recipes.crossfit`).
With ``cnn_weights``, the same cases are held back, so a CNN read from a ``held_back`` run of the
same data, folds and seed did not see them; with ``crossfit`` it names an earlier crossfit run
directory, whose k CNNs are read once its record shows that they described this run's folds (so
FV, IFV and fgFV can share their CNNs).

With ``fgfv``, ``predict`` writes each case's membership map (how much each place belongs to the
class-relevant foreground, from the scale-1 descriptor grid) to ``maps/<id>.png`` and its overlay
to ``overlays/<id>.png``.

Files: ``model.safetensors``, ``history.csv``, ``training_curves.png`` (the CNN; with
``crossfit`` those of each of the k CNNs in ``cnn_fold<j>/``), ``heads.safetensors`` (the GMM,
component weights and SVM as arrays), ``validation_roc.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from rich.console import Console

from medsight.config import HeadConfig, NetworkConfig, Section
from medsight.data.base import Dataset
from medsight.engine import select_device
from medsight.errors import FeatureError, InputError
from medsight.features.fisher import FisherVector
from medsight.features.foreground import ForegroundFisherVector, membership_map
from medsight.recipes.classification import (ClassifierStep, class_rows, decision_thresholds, evaluate_classes,
                                             one_vs_rest_classes)
from medsight.recipes.common import (TrainingData, finish_run, held_back, label_stratum, labelled_cases,
                                     load_cases, start_training)
from medsight.recipes.crossfit import (FitNetwork, cross_fit, fold_weights, inner_folds, network_files,
                                       refuse_other_protocol, training_check)
from medsight.recipes.heads import check_head, descriptor_stage, read_stage, typed_features
from medsight.recipes.interface import Predictions
from medsight.recipes.network import (build_network, class_weights, eval_batches, fit_network, make_optimizer,
                                      read_network, restore_network)
from medsight.recipes.prepare import Loaded, subset
from medsight.rundir import RunDir, RunRecord

ENCODERS = {"FisherVector": FisherVector, "ForegroundFisherVector": ForegroundFisherVector}


class FisherFeatures(Section):
    """``features.fisher``. The encoder settings left None take the encoder's own defaults
    (:mod:`medsight.features.fisher`, :mod:`~medsight.features.foreground`); the last group is the
    foreground FV's alone."""

    encoding: Literal["fv", "ifv", "fgfv"] = "fgfv"
    n_components: int = Field(64, ge=1)
    scales: list[float] = Field(default_factory=lambda: [1.0])
    cnn_weights: str | None = None  # read the CNN from this file (crossfit: the k CNNs of this run directory)
    weight_cases: Literal["held_back", "seen", "crossfit"] = "held_back"  # what the CNN's features fit (docstring)
    crossfit_folds: int = Field(4, ge=2)  # crossfit: inner folds, one inner CNN each
    max_descriptors: int | None = None
    reg_covar: float | None = None
    max_iter: int | None = None
    min_posterior: float | None = None
    C: float | None = None
    val_fraction: float | None = None
    steps: int | None = None
    lrs: list[float] | None = None
    prune_threshold: float | None = None
    iterations: int | None = None
    rounds: int | None = None
    svm_refits: int | None = None

    @model_validator(mode="after")
    def _protocol_options(self):
        refuse_other_protocol(self, "features.fisher", "weight_cases", {"crossfit_folds": "crossfit"})
        return self

    def encoder(self, seed: int):
        own = {"encoding", "n_components", "scales", "cnn_weights", "weight_cases", "crossfit_folds"}
        params = {"n_components": self.n_components, "random_state": seed,
                  **{k: v for k, v in self.model_dump().items() if k not in own and v is not None}}
        if self.encoding == "fgfv":
            return ForegroundFisherVector(**params)
        try:
            return FisherVector(**params, improved=self.encoding == "ifv")
        except TypeError as exc:
            raise ValueError(f"fisher: {exc} (an option of the foreground FV only)") from None


class FisherConfig(NetworkConfig):
    recipe: Literal["fgfv"]
    features: dict[str, Any] = Field(default_factory=dict)  # fisher: FisherFeatures
    head: HeadConfig = Field(default_factory=HeadConfig)

    @field_validator("features")
    @classmethod
    def _typed_features(cls, features):
        typed = typed_features(features, learnt={"fisher": FisherFeatures})
        unknown = set(typed) - {"fisher"}
        if unknown:
            raise ValueError(f"{sorted(unknown)}: the fgfv recipe encodes its CNN's features alone")
        typed.get("fisher", FisherFeatures()).encoder(0)  # an option the encoder does not take fails here
        return typed

    @field_validator("head")
    @classmethod
    def _head_options(cls, head):
        return check_head(head)

    @property
    def fisher(self) -> FisherFeatures:
        return self.features.get("fisher") or FisherFeatures()


@torch.no_grad()
def local_descriptors(model, loaded: Loaded, info, scales: list[float], device
                      ) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Per case: its L2-normalised feature-map cells over all scales (T, C), and the grid shape of
    the first scale (whose cells come first)."""
    model.eval()
    per_case: list[list[np.ndarray]] = [[] for _ in loaded.ids]
    grids: list[tuple[int, int]] = []
    start = 0
    for batch in eval_batches(loaded, info, 32):
        x = batch["x"].to(device)
        for s, scale in enumerate(scales):
            xs = x if scale == 1 else F.interpolate(x, scale_factor=float(scale), mode="bilinear", align_corners=False)
            maps = model.forward_features(xs).float()
            if s == 0:
                grids += [tuple(maps.shape[2:])] * len(x)
            cells = F.normalize(maps.flatten(2).transpose(1, 2), dim=2).cpu().numpy().astype(np.float64)
            for i, c in enumerate(cells):
                per_case[start + i].append(c)
        start += len(x)
    return [np.concatenate(parts) for parts in per_case], grids


class Fisher:
    name = "fgfv"
    Config = FisherConfig
    needs_masks = False
    map_methods = ()  # fgfv's membership maps are always written

    def __init__(self, cfg: FisherConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)

    def train(self, run: RunDir, device: str = "auto", callbacks=()) -> RunRecord:
        from medsight.figures import plot_roc  # matplotlib: only when training

        cfg, opts = self.cfg, self.cfg.fisher
        crossfit = opts.weight_cases == "crossfit"
        check = training_check(opts.cnn_weights, crossfit, opts.crossfit_folds, cfg.seed, "features.fisher",
                               "cnn_weights", lambda d: one_vs_rest_classes(cfg.predict.one_vs_rest, d.task))
        self.device_ = select_device(device)
        data, record = start_training(run, cfg, self.name, labelled_cases, label_stratum, False, self.console,
                                      check=check)
        self.record_ = record
        started = time.perf_counter()

        fit_cnn = self._cnn_fitter(run, data, callbacks)
        back = None  # the training cases that score the foreground weights
        cnn_cases = data.train
        if opts.encoding == "fgfv" and opts.weight_cases != "seen":
            kept, back = held_back(data, opts.val_fraction or 0.25, cfg.seed)
            if not crossfit:  # held_back: the CNN does not learn from them
                cnn_cases = subset(data.train, kept)
                self.console.print(f"CNN: {len(kept)} training cases; {len(back)} held back for the foreground weights")
        if crossfit:
            folds = inner_folds(data, opts.crossfit_folds, cfg.seed, "features.fisher.crossfit_folds")
            record, descriptors, self.models_ = cross_fit(
                run, record, data.train, folds, "cnn", fit_cnn,
                lambda model, cases: local_descriptors(model, cases, self.record_.input, opts.scales,
                                                       self.device_)[0],
                self.console, "CNN", opts.cnn_weights and Path(opts.cnn_weights))
            self.console.print(f"CNN: the encoding and the SVM learn from the out-of-fold descriptors of all "
                               f"{len(data.train.ids)} training cases; new cases are described by the {len(folds)} CNNs")
        else:
            record, model = fit_cnn(record, "cnn", "", cnn_cases)
            self.models_ = [model]
            (descriptors, _), = self.local_descriptors(data.train)
        self.encoder_ = opts.encoder(cfg.seed)
        self.console.print(f"fitting the {opts.encoding} encoder ({opts.n_components} components) on "
                           f"{sum(len(d) for d in descriptors)} descriptors of {len(descriptors)} cases")
        y = data.train.labels.numpy()
        if opts.encoding == "fgfv":  # the foreground weights are learnt for the labels
            self.encoder_.fit(descriptors, y, validation=back)
        else:
            self.encoder_.fit(descriptors)
        train = {"fisher": self.encoder_.transform(descriptors)}
        val = self.codes(data.val)
        encoder = {"type": type(self.encoder_).__name__, "params": self.encoder_.get_params()}
        record, self.heads_, val_proba = descriptor_stage(
            run, record, "descriptors", cfg.head, train, y, val, data.val.labels.numpy(), cfg.predict, self.console,
            fitted={"encoder": encoder}, arrays={f"encoder.{k}": v for k, v in self.encoder_.get_state().items()})
        plot_roc(data.task, data.val.labels.numpy(), val_proba, run.path / "validation_roc.png")
        thresholds = decision_thresholds(data.task, data.val.labels.numpy(), val_proba, cfg.predict, self.console)
        self.record_ = finish_run(run, record, record.stage("descriptors").validation, record.stage("cnn").best_epoch,
                                  time.perf_counter() - started, self.device_, self.console, thresholds)
        return self.record_

    def _cnn_fitter(self, run: RunDir, data: TrainingData, callbacks) -> FitNetwork:
        """Train a fresh CNN on some training cases as a stage of the run (read back when the
        record holds it finished), or read it from ``features.fisher.cnn_weights`` (crossfit: from
        that run directory's stage folder). Every one starts from the run's seed."""
        cfg, weights = self.cfg, self.cfg.fisher.cnn_weights

        def fit(record: RunRecord, stage: str, folder: str, cases: Loaded):
            torch.manual_seed(cfg.seed)
            model = build_network(cfg, record.input, len(data.task.classes))
            if weights:
                path = fold_weights(Path(weights), folder) if folder else Path(weights)
                return read_network(run, record, stage, model, path, self.device_, self.console, folder), model
            weight = class_weights(cases.labels, len(data.task.classes)) \
                if cfg.train.class_weights == "balanced" else None
            step = ClassifierStep(model, data.task, weight, cfg.predict.threshold, cfg.predict.one_vs_rest,
                                  lambda params: make_optimizer(cfg.train, params))
            record = fit_network(run, record, stage, step, cases, data.val, cfg, self.device_, self.console,
                                 callbacks, folder=folder)
            return record, model

        return fit

    def local_descriptors(self, loaded: Loaded) -> list[tuple[list[np.ndarray], list[tuple[int, int]]]]:
        """:func:`local_descriptors` of the cases by each CNN of the run (one, or crossfit's k)."""
        return [local_descriptors(model, loaded, self.record_.input, self.cfg.fisher.scales, self.device_)
                for model in self.models_]

    def codes(self, loaded: Loaded) -> list[dict[str, np.ndarray]]:
        """The cases' codes from each CNN's descriptors, for the heads' :meth:`~Heads.mean_proba`."""
        return [{"fisher": self.encoder_.transform(descriptors)} for descriptors, _ in self.local_descriptors(loaded)]

    def restore(self, run: RunDir, device: str = "auto") -> Fisher:
        self.device_ = select_device(device)
        self.record_ = run.finished_record()
        opts = self.cfg.fisher
        self.models_ = [restore_network(build_network(self.cfg, self.record_.input, len(self.record_.task.classes)),
                                        path, self.device_)
                        for path in network_files(run, "cnn", opts.crossfit_folds if opts.weight_cases == "crossfit"
                                                  else None)]
        self.heads_, arrays = read_stage(run, self.record_, "descriptors", self.cfg.head)
        info = self.record_.stage("descriptors").fitted.get("encoder", {})
        if info.get("type") not in ENCODERS:
            raise InputError(run.path / "run.json", f"unknown encoder type {info.get('type')!r}")
        state = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("encoder.")}
        try:
            self.encoder_ = ENCODERS[info["type"]].from_state(info["params"], state)
        except (FeatureError, ValueError) as exc:
            raise InputError(run.path / "heads.safetensors", f"encoder: {exc}") from None
        return self

    def predict(self, dataset: Dataset, need_masks: bool = False) -> Predictions:
        loaded, rejected = load_cases(dataset, self.cfg, self.record_.input, need_masks, self.console)
        if not loaded.ids:
            return Predictions(loaded, torch.zeros((0, len(self.record_.task.classes))), rejected, dataset)
        return Predictions(loaded, torch.from_numpy(self.heads_.mean_proba(self.codes(loaded))), rejected, dataset)

    def rows(self, preds: Predictions) -> list[dict]:
        return class_rows(self.record_.task, preds, self.cfg.predict, self.record_.thresholds)

    def write_files(self, preds: Predictions, folder: Path, maps: str | None = None) -> None:
        """fgFV: each case's membership map at its original size in maps/<id>.png, plus overlays."""
        if self.cfg.fisher.encoding != "fgfv":
            return
        from medsight.explain import MapWriter

        described = self.local_descriptors(preds.loaded)
        grids = described[0][1]  # the same grid from every CNN (one architecture)
        writer = MapWriter(folder)
        by_id = {s.id: s for s in preds.dataset.samples}
        for i, (case, grid) in enumerate(zip(preds.loaded.ids, grids)):
            image = by_id[case].load_image()
            cells = grid[0] * grid[1]  # the scale-1 cells come first, row-major
            mg = np.mean([self.encoder_.membership(descriptors[i][:cells]) for descriptors, _ in described], axis=0)
            soft, _ = membership_map(mg, grid, image.shape[1:])
            writer.write(case, image, soft)

    def evaluate(self, dataset: Dataset, preds: Predictions) -> dict:
        return evaluate_classes(self.record_.task, dataset, preds, self.cfg.predict, self.record_.thresholds)
