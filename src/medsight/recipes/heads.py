"""The descriptor stage: descriptors of each case, one classical head per descriptor (or one on all
of them side by side), their probabilities fused.

A descriptor is a function from loaded cases to an ``(n_cases, n_features)`` matrix and its
feature names: the hand-crafted ones of ``features`` (:func:`computed_descriptor`: GLCM texture, Fourier and shape
descriptors inside each case's mask), or a recipe's learnt ones (pooled CNN features, Fisher
vectors). ``head`` chooses the classifier (``svm`` or ``boosted_mlp``) and ``head.fusion`` how
several descriptors decide together: ``mean`` of the heads' probabilities, majority ``vote``, or
``concat`` (one head on all descriptors side by side).

The stage's arrays go to ``heads.safetensors`` (each head's state under ``<head>.``, and any
other fitted estimator of the recipe under its own prefix); what rebuilds them goes into the run
record. Nothing is pickled.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress
from safetensors.numpy import load_file, save_file

from medsight.config import DataConfig, HeadConfig, PredictConfig
from medsight.errors import FeatureError, InputError
from medsight.features.classifiers import HEADS
from medsight.features.describe import DESCRIPTOR_OPTIONS, describe_cases, descriptor_options
from medsight.metrics import binary_metrics
from medsight.recipes.classification import one_vs_rest_classes, task_metrics
from medsight.recipes.prepare import Loaded
from medsight.rundir import RunDir, RunRecord, StageRecord
from medsight.transforms.preprocess import nodule_crop_mm

HEADS_FILE = "heads.safetensors"
Descriptor = Callable[[Loaded], tuple[np.ndarray, list[str]]]  # cases -> (matrix, feature names)


def typed_features(features: dict[str, Any], learnt: Mapping[str, type] = {}) -> dict[str, Any]:
    """``features`` with each descriptor's options validated by its options class, in the
    config's order; ``learnt`` adds the recipe's own descriptors to the hand-crafted ones."""
    known = {**DESCRIPTOR_OPTIONS, **learnt}
    if not features and not learnt:
        raise ValueError(f"name at least one descriptor ({', '.join(known)})")
    out = {}
    for name, options in features.items():
        if name not in known:
            raise ValueError(f"unknown descriptor {name!r}; known: {', '.join(known)}")
        cls = known[name]
        try:
            out[name] = options if isinstance(options, cls) else cls.model_validate(options or {})
        except ValidationError as exc:
            problems = [f"{'.'.join(map(str, e['loc']))}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
                        for e in exc.errors()]
            raise ValueError(f"{name}: " + "; ".join(problems)) from None
    return out


def check_head(head: HeadConfig) -> HeadConfig:
    """``head``, when the head accepts its options (a config validator)."""
    try:
        HEADS[head.name](**head.options)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    return head


def pixel_spacing(data: DataConfig) -> tuple[float, ...] | None:
    """mm per pixel / voxel of the preprocessed arrays, where the preprocessor fixes it."""
    size_mm = data.preprocess_options.get("size_mm")
    if data.preprocess == "nodule_crop":
        return tuple(float(m) / n for m, n in zip(nodule_crop_mm(data.preprocess_options), data.image_size))
    if data.preprocess == "nodule_views" and size_mm:
        return (float(size_mm) / data.image_size[0],) * 2
    return None


def computed_descriptor(name: str, options, spacing, console: Console) -> Descriptor:
    """A hand-crafted descriptor of ``features`` (it needs each case's mask). A case it cannot
    describe is an error naming the case."""
    def describe(loaded: Loaded) -> tuple[np.ndarray, list[str]]:
        images = [loaded.images[i].numpy() for i in range(len(loaded.ids))]
        masks = [loaded.masks[i].numpy() for i in range(len(loaded.ids))]
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            progress.add_task(f"{name} descriptors", total=None)
            try:
                return describe_cases(name, images, masks, spacing, descriptor_options(name, options))
            except FeatureError as exc:
                where = loaded.ids[exc.index] if exc.index is not None else f"features.{name}"
                raise InputError(where, f"descriptor {name}: {exc}") from None

    return describe


def describe(loaded: Loaded, descriptors: Mapping[str, Descriptor]) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """Every descriptor of the cases: ({name: matrix}, {name: feature names})."""
    out = {name: fn(loaded) for name, fn in descriptors.items()}
    return {name: X for name, (X, _) in out.items()}, {name: names for name, (_, names) in out.items()}


# -- heads ---------------------------------------------------------------------------------------------
class Heads:
    """One head per descriptor (or one on all, ``fusion: concat``), probabilities fused."""

    def __init__(self, head: HeadConfig):
        self.head = head

    def inputs(self, described: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.head.fusion == "concat":
            return {"all": np.concatenate(list(described.values()), axis=1)}
        return dict(described)

    def fit(self, described: Mapping[str, np.ndarray], y: np.ndarray, rows: Mapping[str, Any] = {}) -> Heads:
        """Fit each head; ``rows`` limits a descriptor's head to some training cases (positions),
        e.g. those the network that made the descriptor did not learn from (with ``concat``, the
        one head learns from the cases every limited descriptor allows)."""
        if self.head.fusion == "concat" and rows:
            rows = {"all": sorted(set.intersection(*(set(map(int, r)) for r in rows.values())))}
        self.heads_ = {}
        for name, X in self.inputs(described).items():
            keep = np.asarray(rows[name]) if name in rows else slice(None)
            if len(np.unique(y[keep])) < 2:
                raise InputError(name, "the training cases of this descriptor's head hold a single class")
            self.heads_[name] = HEADS[self.head.name](**self.head.options).fit(X[keep], y[keep])
        return self

    def probas(self, described: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each head's class probabilities."""
        return {name: self.heads_[name].predict_proba(X) for name, X in self.inputs(described).items()}

    def fuse(self, probas: Mapping[str, np.ndarray]) -> np.ndarray:
        stacked = np.stack(list(probas.values()))  # (heads, n, classes)
        if self.head.fusion == "vote":
            return np.eye(stacked.shape[2])[stacked.argmax(2)].mean(0)
        return stacked.mean(0)

    def predict_proba(self, described: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.fuse(self.probas(described))

    def mean_probas(self, descriptions: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Each head's class probabilities averaged over several descriptions of the same cases
        (a cross-fitted recipe's networks each describe them once)."""
        each = [self.probas(described) for described in descriptions]
        return {name: np.mean([p[name] for p in each], axis=0) for name in each[0]}

    def mean_proba(self, descriptions: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        return self.fuse(self.mean_probas(descriptions))

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(what rebuilds the heads, for the run record; their arrays, ``<head>.<key>``)."""
        info = {name: {"type": self.head.name, "params": head.get_params()} for name, head in self.heads_.items()}
        arrays = {f"{name}.{key}": value for name, head in self.heads_.items() for key, value in head.get_state().items()}
        return info, arrays

    def restore(self, info: Mapping[str, dict], arrays: Mapping[str, np.ndarray], source) -> Heads:
        self.heads_ = {}
        for name, head in info.items():
            state = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.split(".", 1)[0] == name}
            try:
                self.heads_[name] = HEADS[head["type"]].from_state(head["params"], state)
            except FeatureError as exc:
                raise InputError(source, f"head {name}: {exc}") from None
        return self


def descriptor_stage(run: RunDir, record: RunRecord, stage: str, head: HeadConfig,
                     train: Mapping[str, np.ndarray], y_train: np.ndarray,
                     val: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                     y_val: np.ndarray, predict: PredictConfig, console: Console, fitted: Mapping[str, Any] = {},
                     arrays: Mapping[str, np.ndarray] = {}, rows: Mapping[str, Any] = {}
                     ) -> tuple[RunRecord, Heads, np.ndarray]:
    """Fit the heads on the training cases' descriptors, score the validation cases, and save the
    stage (with the recipe's other ``fitted`` estimators and their ``arrays``; ``rows``: see
    :meth:`Heads.fit`). ``val`` may be several descriptions of the validation cases (one per
    network of a cross-fitted recipe): each head's probabilities are then averaged over them
    (:meth:`Heads.mean_probas`). The stage is the last of its recipe and takes seconds to
    minutes, so an interrupted run fits it again.
    Returns the record, the heads and the fused validation probabilities."""
    task = record.task
    if len(np.unique(y_train)) < 2:
        raise InputError(record.data.root, "the training cases hold a single class")
    heads = Heads(head).fit(train, y_train, rows)
    probas = heads.mean_probas([val] if isinstance(val, Mapping) else val)
    proba = heads.fuse(probas)
    metrics = task_metrics(task, y_val, proba, predict.threshold, one_vs_rest_classes(predict.one_vs_rest, task))
    if len(probas) > 1 and task.is_binary:  # how each descriptor does alone
        for name, p in probas.items():
            metrics[f"{name} AUC"] = binary_metrics(y_val, p[:, 1])["AUC"]
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if "AUC" in k or k == "ACC")
    console.print(f"validation: {shown}")
    info, head_arrays = heads.state()
    save_file({**head_arrays, **arrays}, str(run.stage_dir() / HEADS_FILE))
    record = record.with_stage(stage, StageRecord(finished=True, validation=metrics,
                                                  fitted={"heads": info, **fitted}))
    run.write_record(record)
    return record, heads, proba


def read_stage(run: RunDir, record: RunRecord, stage: str, head: HeadConfig) -> tuple[Heads, dict[str, np.ndarray]]:
    """The heads of a finished stage, and all arrays of its file (for the recipe's other estimators)."""
    path = run.stage_dir() / HEADS_FILE
    if not path.is_file():
        raise InputError(run.path, f"not a finished medsight run directory ({HEADS_FILE} is missing)")
    try:
        arrays = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(path, f"cannot read the heads ({exc})") from None
    return Heads(head).restore(record.stage(stage).fitted["heads"], arrays, path), arrays
