"""Fisher-vector classification (Pan et al., IEEE TIP 2019): FV, IFV or the foreground FV.

1. A CNN (``model``) is trained here as a classifier (``train``, ``augment``), or its weights are
   read from a local file (``features.fisher.cnn_weights``: our safetensors, or torchvision / timm
   ImageNet weights), in which case it is not trained.
2. Local descriptors: the cells of its last feature map, each L2-normalised, at each of the
   input ``scales`` (the image resized by that factor; the author code used up to 13 scales).
3. A diagonal GMM on the training descriptors and the chosen ``encoding``: ``fv`` (mean and
   variance gradients), ``ifv`` (plus signed square root and L2 normalisation) or ``fgfv`` (IFV
   with per-component weights learnt to maximise a linear classifier's validation accuracy,
   pruning background descriptors and re-estimating).
4. A linear SVM on the codes (``head``, C = 10 as the author code).

With ``fgfv``, ``predict`` writes each case's membership map (how much each place belongs to the
class-relevant foreground, from the scale-1 descriptor grid) to ``maps/<id>.png`` and its overlay
to ``overlays/<id>.png``.

Fitted state (network weights, GMM, component weights, SVM) is stored as arrays in safetensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

from medsight.errors import ConfigError, InputError
from medsight.recipes.base import Predictions, Recipe
from medsight.recipes.descriptors import HEADS_FILE, DescriptorRecipe
from medsight.recipes.prepare import Loaded

ENCODINGS = ("fv", "ifv", "fgfv")
FISHER_DEFAULTS = {"encoding": "fgfv", "n_components": 64, "scales": [1.0], "cnn_weights": None}


class FisherRecipe(DescriptorRecipe):
    kind = "fgfv"
    learnt = ("fisher",)
    need_masks = False  # descriptors come from the whole image

    def __init__(self, cfg, console=None):
        super().__init__(cfg, console)
        self.encoder = None
        self._train_descriptors = None

    def fisher_options(self) -> tuple[dict, dict]:
        """(recipe options, encoder options) of ``features.fisher``."""
        options = {**FISHER_DEFAULTS, **(self.cfg.features.get("fisher") or {})}
        if options["encoding"] not in ENCODINGS:
            raise ConfigError(f"features.fisher.encoding: choose from {', '.join(ENCODINGS)}, "
                              f"got {options['encoding']!r}")
        own = {k: options.pop(k) for k in FISHER_DEFAULTS}
        return own, options

    def validate(self) -> None:
        super().validate()
        self.new_encoder()
        weights = self.fisher_options()[0]["cnn_weights"]
        if weights and not Path(weights).is_file():
            raise InputError(weights, "features.fisher.cnn_weights: file not found")

    def new_encoder(self):
        from medsight.features.fisher import FisherVector, ForegroundFisherVector

        own, options = self.fisher_options()
        params = {"n_components": own["n_components"], "random_state": self.cfg.seed, **options}
        if own["encoding"] == "fgfv":
            cls = ForegroundFisherVector
        else:
            cls, params["improved"] = FisherVector, own["encoding"] == "ifv"
        try:
            return cls(**params)
        except TypeError as exc:
            raise ConfigError(f"features.fisher: {exc}") from None

    # -- local descriptors ---------------------------------------------------------------------
    @torch.no_grad()
    def local_descriptors(self, loaded: Loaded) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """Per case: its L2-normalised feature-map cells over all scales (T, C), and the grid
        shape of the first scale (whose cells come first)."""
        scales = self.fisher_options()[0]["scales"]
        self.model.eval()
        per_case: list[list[np.ndarray]] = [[] for _ in loaded.ids]
        grids: list[tuple[int, int]] = []
        start = 0
        for batch in self.eval_batches(loaded, batch_size=32):
            x = batch["x"].to(self.device)
            for s, scale in enumerate(scales):
                xs = x if scale == 1 else F.interpolate(x, scale_factor=float(scale), mode="bilinear",
                                                        align_corners=False)
                maps = self.model.forward_features(xs).float()
                if s == 0:
                    grids += [tuple(maps.shape[2:])] * len(x)
                cells = F.normalize(maps.flatten(2).transpose(1, 2), dim=2).cpu().numpy().astype(np.float64)
                for i, c in enumerate(cells):
                    per_case[start + i].append(c)
            start += len(x)
        return [np.concatenate(parts) for parts in per_case], grids

    # -- training --------------------------------------------------------------------------------
    def fit_learnt(self, run_dir, train, val, callbacks=()):
        weights = self.fisher_options()[0]["cnn_weights"]
        if weights:
            history = self.read_cnn(run_dir, Path(weights), train.images.shape[1])
        else:
            history = Recipe.fit(self, run_dir, train, val, callbacks)
        descriptors, _ = self.local_descriptors(train)
        self._train_descriptors = (train, descriptors)  # describe(train) follows: one CNN pass, not two
        self.encoder = self.new_encoder()
        own = self.fisher_options()[0]
        self.console.print(f"fitting the {own['encoding']} encoder ({own['n_components']} components) on "
                           f"{sum(len(d) for d in descriptors)} descriptors of {len(descriptors)} cases")
        if own["encoding"] == "fgfv":
            self.encoder.fit(descriptors, train.labels.numpy())
        else:
            self.encoder.fit(descriptors)
        return history

    def describe(self, loaded: Loaded) -> dict[str, np.ndarray]:
        cached, self._train_descriptors = self._train_descriptors, None
        descriptors = cached[1] if cached and cached[0] is loaded else self.local_descriptors(loaded)[0]
        return {"fisher": self.encoder.transform(descriptors)}

    def fitted_state(self) -> dict[str, np.ndarray]:
        self.run_info["encoder"] = {"type": type(self.encoder).__name__, "params": self.encoder.get_params()}
        return {**super().fitted_state(), **{f"encoder.{k}": v for k, v in self.encoder.get_state().items()}}

    def restore(self, run_dir: Path) -> None:
        from medsight.features import fisher

        Recipe.restore(self, run_dir)
        path = run_dir / HEADS_FILE
        if path.is_file():
            arrays = {k.split(".", 1)[1]: v for k, v in load_file(str(path)).items() if k.startswith("encoder.")}
            info = self.run_info["encoder"]
            encoders = {"FisherVector": fisher.FisherVector, "ForegroundFisherVector": fisher.ForegroundFisherVector}
            if info.get("type") not in encoders:
                raise InputError(run_dir / "run.json", f"unknown encoder type {info.get('type')!r}")
            try:
                self.encoder = encoders[info["type"]].from_state(info["params"], arrays)
            except ValueError as exc:
                raise InputError(path, f"encoder: {exc}") from None
        super().restore(run_dir)

    # -- maps ------------------------------------------------------------------------------------
    def write_extra(self, preds: Predictions, out_dir: Path) -> None:
        """fgFV: each case's membership map at its original size in maps/<id>.png, plus overlays."""
        if self.fisher_options()[0]["encoding"] != "fgfv":
            return
        from medsight.explain import MapWriter
        from medsight.features.fisher import membership_map

        descriptors, grids = self.local_descriptors(preds.loaded)
        writer = MapWriter(out_dir)
        by_id = {s.id: s for s in preds.dataset.samples}
        for case, d, grid in zip(preds.loaded.ids, descriptors, grids):
            image = by_id[case].load_image()
            first = d[: grid[0] * grid[1]]  # the scale-1 cells, row-major
            soft, _ = membership_map(self.encoder.membership(first), grid, image.shape[1:])
            writer.write(case, image, soft)
