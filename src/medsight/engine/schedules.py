"""Schedules over training: the learning rate per epoch, and loss weights per step.

Learning rate (``train.scheduler``): ``cosine`` annealing to 0 over the epochs, ``step`` (multiply
by gamma every ``every`` epochs), ``poly`` ((1 - e / E)^0.9, DeepLab's) or ``none``.

Loss weights (:class:`LossWeight`): a weight of 0 for ``warmup`` steps, then a ramp-up over
``rampup`` steps to ``weight``: ``sigmoid`` is exp(-5 (1 - t)^2) (Laine & Aila's temporal
ensembling, Mean Teacher's consistency weight), ``linear`` is t, for t the ramp's fraction done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

LR_SCHEDULES = ("none", "cosine", "poly", "step")


def lr_scheduler(optimizer: torch.optim.Optimizer, kind: str, epochs: int, every: int = 30, gamma: float = 0.5):
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=gamma)
    if kind == "poly":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: (1 - e / epochs) ** 0.9)
    if kind == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    raise ValueError(f"unknown learning-rate schedule {kind!r}; choose from {', '.join(LR_SCHEDULES)}")


@dataclass(frozen=True)
class LossWeight:
    """A loss weight as a function of the optimisation step (counted from 0 over the whole run)."""

    weight: float = 1.0
    warmup: int = 0  # steps at weight 0 before the ramp starts
    rampup: int = 0  # steps from 0 to the full weight (0: the full weight at once)
    shape: Literal["sigmoid", "linear"] = "sigmoid"

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return 0.0
        if self.rampup <= 0:
            return self.weight
        t = min(1.0, (step - self.warmup) / self.rampup)
        ramp = t if self.shape == "linear" else math.exp(-5.0 * (1.0 - t) ** 2)
        return self.weight * ramp
