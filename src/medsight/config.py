"""Recipe configs: YAML validated into typed objects.

The sections every recipe shares live here; each recipe's schema (a :class:`RecipeConfig`
subclass) lives beside the recipe, and :mod:`medsight.recipes` picks it by the config's
``recipe``. An unknown key or a value of the wrong type is a :class:`ConfigError` naming the key
(``train.epochs: Input should be a valid integer``), made in one place (:func:`validated`).
Overrides use dotted keys (``--set train.lr=0.001``) whose values are parsed as YAML scalars,
never evaluated as code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medsight.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    format: str | None = None  # detected from the folder when None
    root: str | None = None  # overridden by --data
    task: str | None = None  # the layout's default task when None
    options: dict[str, Any] = Field(default_factory=dict)  # passed to the reader
    image_size: tuple[int, ...] = (128, 128)  # (height, width), or (depth, height, width), the network sees
    preprocess: str = "resize"  # how a case becomes the network's input (medsight.transforms.preprocess)
    preprocess_options: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(0.2, gt=0, lt=1)  # validation carved from the training cases (no official val split)
    # official: the layout's own validation split, where it has one, chooses the epoch and threshold;
    # train: validation is carved from the training cases and the official one is withheld for one final score
    val_source: Literal["official", "train"] = "official"
    val_fold: int = Field(0, ge=0)  # which of the round(1 / val_fraction) folds of the training cases validates
    folds: int = Field(0, ge=0)  # > 1: hold out fold `fold` of a patient-grouped stratified k-fold
    fold: int = Field(0, ge=0)
    split_seed: int = 0


class ModelConfig(Section):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)  # passed to create_model


class AugmentConfig(Section):
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True  # multiples of 90 degrees in the (H, W) plane; square inputs only
    zflip: bool = False  # flip the depth axis of volumes
    rotate: float = Field(0.0, ge=0, le=180)  # extra random rotation, degrees
    scale: tuple[float, float] = (1.0, 1.0)  # random zoom range; above 1 zooms in (a random crop)
    translate: float = Field(0.0, ge=0, le=0.5)  # random shift, fraction of the image size
    brightness: float = Field(0.0, ge=0, le=1)
    contrast: float = Field(0.0, ge=0, le=1)


class EarlyStopping(Section):
    metric: str  # a validation metric name, e.g. AUC, JA, val_loss
    mode: Literal["max", "min"] = "max"
    patience: int = Field(10, ge=1)


class TrainConfig(Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["none", "cosine", "poly", "step"] = "cosine"
    step_every: int = Field(30, ge=1)  # scheduler "step": multiply the lr by step_gamma every step_every epochs
    step_gamma: float = Field(0.5, gt=0, le=1)
    class_weights: Literal["none", "balanced"] = "none"  # classification: weight CE by inverse frequency
    early_stopping: EarlyStopping | None = None
    checkpoint_every: int = Field(0, ge=0)  # also save the resume state every N steps within an epoch (0: never)
    # keep an average of the weights (medsight.engine.averaging): ema, an exponential moving average
    # of every step (the best epoch chosen on it); swa, the mean of the last swa_epochs epochs
    weight_average: Literal["none", "ema", "swa"] = "none"
    ema_decay: float = Field(0.998, gt=0, lt=1)
    swa_epochs: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _swa_chooses_no_epoch(self):
        if self.weight_average == "swa" and self.early_stopping is not None:
            raise ValueError("weight_average: swa keeps the mean of the last swa_epochs epochs and chooses no "
                             "epoch, so early_stopping does not apply; remove it (--set train.early_stopping=null)")
        return self


class PredictConfig(Section):
    threshold: float = Field(0.5, gt=0, lt=1)  # mask threshold; binary decision threshold with decision: fixed
    # binary classifiers (and one_vs_rest classes): how the decision threshold on the positive class's
    # probability is chosen on the validation cases and stored in the run (medsight.metrics.thresholds)
    decision: Literal["youden", "sensitivity", "fixed"] = "youden"
    target_sensitivity: float = Field(0.9, gt=0, le=1)  # decision: sensitivity
    tta: bool = False  # average over flips at test time
    crops: Literal[1, 9] = 1  # classification: average over a 3x3 grid of crops (ARL-CNN's 9-crop testing)
    crop_fraction: float = Field(0.8, gt=0, le=1)  # side of each test crop, fraction of the image
    one_vs_rest: list[str] | None = None  # classification: report these classes one-vs-rest from one softmax


class HeadConfig(Section):
    """The classical classifier of descriptor recipes: one per descriptor, their probabilities fused."""
    name: Literal["svm", "boosted_mlp"] = "svm"
    options: dict[str, Any] = Field(default_factory=dict)  # passed to the head (medsight.features.classifiers)
    # several descriptors: average their heads' probabilities, majority vote, or one head on all side by side
    fusion: Literal["mean", "vote", "concat"] = "mean"


class RecipeConfig(Section):
    """What every recipe's config has; a recipe's schema subclasses it, names itself in
    ``recipe: Literal[...]`` and adds its own sections."""

    recipe: str
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def completed(self, saved: dict) -> dict:
        """A config saved by an earlier medsight with the keys added since at their defaults (which
        keep the behaviour it ran with), to compare with this one; ``saved`` as it is if it no
        longer validates."""
        try:
            return type(self).model_validate(saved).to_dict()
        except ValidationError:
            return saved


class NetworkConfig(RecipeConfig):
    """A recipe that trains a network: the network, its training and the augmentation of its batches."""

    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


def _error_text(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":  # a validator's own message, without pydantic's prefix
            msg = str(err["ctx"]["error"])
        else:
            msg = err["msg"]
        lines.append(f"{key}: {msg}")
    return f"{source}: " + "; ".join(lines)


def validated(schema: type[BaseModel], raw: Any, source: str = "config"):
    """``raw`` validated as ``schema``; every problem found goes into one :class:`ConfigError`
    naming the keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_error_text(exc, source)) from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return raw


def set_key(raw: dict, key: str, value: Any) -> None:
    """Set dotted ``key`` in a raw config dict, creating sections on the way."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{key!r}: empty key")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def apply_override(raw: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to a raw config dict in place; the value is parsed as YAML."""
    key, sep, text = assignment.partition("=")
    if not sep:
        raise ConfigError(f"--set {assignment}: expected key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    set_key(raw, key.strip(), value)


def raw_config(path: str | Path, overrides: list[str] = (), epochs: int | None = None,
               data: str | None = None, seed: int | None = None) -> dict:
    """A config file's keys with the ``--set`` overrides and the dedicated flags applied, not yet validated."""
    raw = read_yaml(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    for key, value in {"train.epochs": epochs, "data.root": data, "seed": seed}.items():
        if value is not None:
            set_key(raw, key, str(value) if key == "data.root" else value)
    return raw
