"""Descriptor recipes: hand-crafted (and learnt) descriptors per case, classical heads, fused decisions.

``descriptors`` computes the descriptors named in ``features`` (``glcm``, ``fourier``, ``shape``;
see :mod:`medsight.features.describe`) on each preprocessed case, fits one ``head`` (SVM or
AdaBoosted back-propagation networks) per descriptor and fuses their probabilities
(``head.fusion``: ``mean`` or ``vote``), or fits one head on all descriptors side by side
(``concat``). The talk's baselines are configs of it: 3D GLCM + SVM, multi-view features + SVM.

``fuse_tsd`` (Xie et al., Information Fusion 2018) adds the third descriptor of Fuse-TSD: a CNN
(``model``) trained slice by slice on the nodule's axial slices inside the recipe, whose pooled
features are averaged over each nodule's slices.

Fitted heads are saved as arrays in ``heads.safetensors`` (no pickle); the CNN, when there is
one, in ``model.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from safetensors.numpy import load_file, save_file

from medsight.data.base import Dataset
from medsight.errors import ConfigError, FeatureError, InputError
from medsight.features.classifiers import HEADS
from medsight.features.describe import describe_case
from medsight.recipes.base import Predictions, Recipe
from medsight.recipes.classification import ClassificationRecipe, task_metrics
from medsight.recipes.prepare import Loaded, load_samples

HEADS_FILE = "heads.safetensors"


class DescriptorRecipe(ClassificationRecipe):
    kind = "descriptors"
    need_masks = True  # descriptors are computed inside the case's mask
    learnt: tuple[str, ...] = ()  # descriptors the recipe learns itself rather than computes

    def __init__(self, cfg, console=None):
        super().__init__(cfg, console)
        self.heads: dict[str, object] = {}

    def validate(self) -> None:
        self.computed()
        self.new_head()

    # -- descriptors -------------------------------------------------------------------------
    def computed(self) -> dict[str, dict]:
        """The hand-crafted descriptors of ``features``, with their options."""
        chosen = {k: v for k, v in self.cfg.features.items() if k not in self.learnt}
        if not chosen and not self.learnt:
            raise ConfigError("features: name at least one descriptor (glcm, fourier, shape)")
        return chosen

    def pixel_spacing(self) -> tuple[float, ...] | None:
        """mm per pixel / voxel of the preprocessed arrays, where the preprocessor fixes it."""
        data, size_mm = self.cfg.data, self.cfg.data.preprocess_options.get("size_mm")
        if data.preprocess == "nodule_crop":
            size_mm = size_mm or (32.0, 32.0, 32.0)
            return tuple(float(m) / n for m, n in zip(size_mm, data.image_size))
        if data.preprocess == "nodule_views" and size_mm:
            return (float(size_mm) / data.image_size[0],) * 2
        return None

    def describe(self, loaded: Loaded) -> dict[str, np.ndarray]:
        """Descriptor name -> (n_cases, n_features), every descriptor of ``features``."""
        out, names = {}, {}
        spacing = self.pixel_spacing()
        with Progress(console=self.console, transient=True, disable=not self.console.is_terminal) as progress:
            for name, options in self.computed().items():
                rows = []
                for i in progress.track(range(len(loaded.ids)), description=f"{name} descriptors"):
                    try:
                        vec, names[name] = describe_case(name, loaded.images[i].numpy(), loaded.masks[i].numpy(),
                                                         spacing, **options)
                    except FeatureError as exc:
                        raise InputError(loaded.ids[i], f"descriptor {name}: {exc}") from None
                    rows.append(vec)
                out[name] = np.stack(rows) if rows else np.zeros((0, 0))
        self.run_info["feature_names"] = {**self.run_info.get("feature_names", {}), **names}
        return out

    # -- heads ---------------------------------------------------------------------------------
    def head_inputs(self, described: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.cfg.head.fusion == "concat":
            return {"all": np.concatenate(list(described.values()), axis=1)}
        return described

    def new_head(self):
        head = self.cfg.head
        try:
            return HEADS[head.name](**head.options)
        except TypeError as exc:
            raise ConfigError(f"head.options: {exc}") from None

    def fuse(self, probas: dict[str, np.ndarray]) -> np.ndarray:
        stacked = np.stack(list(probas.values()))  # (heads, n, classes)
        if self.cfg.head.fusion == "vote":
            return np.eye(stacked.shape[2])[stacked.argmax(2)].mean(0)
        return stacked.mean(0)

    def head_probas(self, described: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: self.heads[name].predict_proba(X) for name, X in self.head_inputs(described).items()}

    # -- training --------------------------------------------------------------------------------
    def fit_learnt(self, run_dir: Path, train: Loaded, val: Loaded, callbacks=()) -> list[dict]:
        """Train what the descriptors need before the heads (nothing here); returns the history."""
        self.run_info["best_epoch"] = None
        return []

    def read_cnn(self, run_dir: Path, path: Path, in_channels: int) -> list[dict]:
        """Take the network's weights from ``path`` (a medsight run's, or torchvision / timm names)
        instead of training it; they are copied into the run, which then holds all it needs."""
        from medsight.engine.checkpoint import save_weights
        from medsight.engine.loop import BEST_WEIGHTS
        from medsight.models.pretrained import load_pretrained

        torch.manual_seed(self.cfg.seed)
        self.model = self.build_model(in_channels)
        report = load_pretrained(self.model, path)
        self.console.print(f"CNN weights from {path}: {report}")
        self.model.to(self.device)
        save_weights(self.model.state_dict(), run_dir / BEST_WEIGHTS)
        self.run_info["best_epoch"] = None
        return []

    def fit(self, run_dir: Path, train: Loaded, val: Loaded, callbacks=()) -> list[dict]:
        history = self.fit_learnt(run_dir, train, val, callbacks)
        y = train.labels.numpy()
        if len(np.unique(y)) < 2:
            raise InputError(self.run_info["data"]["root"], "the training cases hold a single class")
        inputs = self.head_inputs(self.describe(train))
        self.heads = {name: self.new_head().fit(X, y) for name, X in inputs.items()}
        self.save_heads(run_dir)
        probas = self.head_probas(self.describe(val))
        self._val_proba = self.fuse(probas)
        yv = val.labels.numpy()
        metrics = task_metrics(self.task, yv, self._val_proba, self.cfg.predict.threshold, self.one_vs_rest())
        if len(probas) > 1 and self.task.is_binary:  # how each descriptor does alone
            from medsight.metrics import binary_metrics

            for name, p in probas.items():
                metrics[f"{name} AUC"] = binary_metrics(yv, p[:, 1])["AUC"]
        self.run_info["validation"] = metrics
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if "AUC" in k or k == "ACC")
        self.console.print(f"validation: {shown}")
        return history

    def fitted_state(self) -> dict[str, np.ndarray]:
        """Everything fitted besides a network, as named arrays (the heads' state, by head name);
        what is needed to rebuild it goes into run.json."""
        self.run_info["heads"] = {name: {"type": self.cfg.head.name, "params": head.get_params()}
                                  for name, head in self.heads.items()}
        return {f"{name}.{key}": value for name, head in self.heads.items()
                for key, value in head.get_state().items()}

    def save_heads(self, run_dir: Path) -> None:
        save_file(self.fitted_state(), str(run_dir / HEADS_FILE))

    def restore(self, run_dir: Path) -> None:
        path = run_dir / HEADS_FILE
        if not path.is_file():
            raise InputError(run_dir, f"not a finished medsight run directory ({HEADS_FILE} is missing)")
        arrays = load_file(str(path))
        for name, info in self.run_info["heads"].items():
            state = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.split(".", 1)[0] == name}
            try:
                self.heads[name] = HEADS[info["type"]].from_state(info["params"], state)
            except FeatureError as exc:
                raise InputError(path, f"head {name}: {exc}") from None

    # -- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, dataset: Dataset, need_masks: bool = True) -> Predictions:
        loaded, rejected = load_samples(dataset.samples, self.preprocess(self.run_info["in_channels"]), None,
                                        need_masks=self.need_masks, skip_bad=True, console=self.console,
                                        description="loading cases")
        if not loaded.ids:
            return Predictions(loaded, torch.zeros((0, len(self.task.classes))), rejected, dataset)
        proba = self.fuse(self.head_probas(self.describe(loaded)))
        return Predictions(loaded, torch.from_numpy(proba), rejected, dataset)

    def val_figures(self, val: Loaded, run_dir: Path) -> None:
        from medsight.report import plot_roc

        plot_roc(self.task, val.labels.numpy(), self._val_proba, run_dir / "validation_roc.png")


class FuseTSDRecipe(DescriptorRecipe):
    """Fuse-TSD: GLCM texture, Fourier shape and slice-by-slice CNN features of a nodule, one
    AdaBoosted back-propagation network per descriptor, decisions fused.

    The CNN (``model``, trained with ``train`` and ``augment``) learns benign vs malignant from
    each axial slice of the nodule crop that holds at least ``features.cnn.min_pixels`` mask
    pixels; a nodule's CNN descriptor is the mean of its slices' globally pooled last-stage
    features (methods.md leaves slice aggregation open). With ``features.cnn.weights`` (a local
    file, e.g. an earlier run's ``model.safetensors``) the CNN is read instead of trained, so
    that the heads can be re-fitted on the same slice features."""

    kind = "fuse_tsd"
    learnt = ("cnn",)

    def cnn_options(self) -> dict:
        options = dict(self.cfg.features.get("cnn") or {})
        unknown = set(options) - {"min_pixels", "weights"}
        if unknown:
            raise ConfigError(f"features.cnn: unknown option(s) {sorted(unknown)} (known: min_pixels, weights)")
        return {"min_pixels": int(options.get("min_pixels", 3)), "weights": options.get("weights")}

    def validate(self) -> None:
        super().validate()
        weights = self.cnn_options()["weights"]
        if weights and not Path(weights).is_file():
            raise InputError(weights, "features.cnn.weights: file not found")

    def slices(self, loaded: Loaded) -> tuple[Loaded, np.ndarray]:
        """The nodules' axial slices as a 2D dataset, and the nodule index of each slice."""
        if loaded.images.ndim != 5:
            raise ConfigError("fuse_tsd: needs volumes; use data.preprocess: nodule_crop")
        keep = loaded.masks.flatten(2).sum(2) >= self.cnn_options()["min_pixels"]  # (N, D)
        empty = (~keep.any(1)).nonzero().flatten().tolist()
        keep[empty, loaded.masks.shape[1] // 2] = True  # a nodule too small for the rule keeps its middle slice
        owner, z = keep.nonzero(as_tuple=True)
        sliced = Loaded(ids=[f"{loaded.ids[i]}#z{k}" for i, k in zip(owner.tolist(), z.tolist())],
                        images=loaded.images[owner, :, z], masks=None, labels=loaded.labels[owner],
                        original_sizes=[tuple(loaded.images.shape[3:])] * len(owner))
        return sliced, owner.numpy()

    def model_options(self) -> dict:
        return {**self.network.options, "spatial_dims": 2}

    def fit_learnt(self, run_dir, train, val, callbacks=()):
        weights = self.cnn_options()["weights"]
        if weights:
            return self.read_cnn(run_dir, Path(weights), train.images.shape[1])
        train_slices, _ = self.slices(train)
        val_slices, _ = self.slices(val)
        self.console.print(f"slice CNN: {len(train_slices.ids)} training, {len(val_slices.ids)} validation slices")
        return Recipe.fit(self, run_dir, train_slices, val_slices, callbacks)

    def restore(self, run_dir: Path) -> None:
        Recipe.restore(self, run_dir)
        super().restore(run_dir)

    @torch.no_grad()
    def describe(self, loaded: Loaded) -> dict[str, np.ndarray]:
        out = super().describe(loaded)
        sliced, owner = self.slices(loaded)
        self.model.eval()
        pooled = []
        for batch in self.eval_batches(sliced, batch_size=64):
            maps = self.model.forward_features(batch["x"].to(self.device))
            pooled.append(torch.flatten(F.adaptive_avg_pool2d(maps.float(), 1), 1).cpu())
        feats = torch.cat(pooled).numpy().astype(np.float64)
        cnn = np.zeros((len(loaded.ids), feats.shape[1]))
        np.add.at(cnn, owner, feats)
        out["cnn"] = cnn / np.bincount(owner, minlength=len(loaded.ids))[:, None]
        self.run_info.setdefault("feature_names", {})["cnn"] = [f"cnn_{k}" for k in range(feats.shape[1])]
        return out
