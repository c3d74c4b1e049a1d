"""An exponential moving average of a model: Mean Teacher's teacher, or smoother weights to evaluate.

After each :meth:`EMA.update`, every floating-point parameter and buffer of the copy becomes
``d * ema + (1 - d) * model`` and every other buffer (BatchNorm's batch counter) is copied.
With ``warmup`` the decay is ``min(decay, 1 - 1 / (t + 1))`` at the t-th update (Tarvainen &
Valpola's Mean Teacher), so the early average is not dominated by the random initial weights.
The copy is a module of its own: a stage lists it among its models, and the loop moves,
checkpoints and saves it with them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False):
        super().__init__()
        if not 0 <= decay <= 1:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def current_decay(self) -> float:
        t = int(self.updates)
        return min(self.decay, 1 - 1 / (t + 1)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ours, theirs = self.module.state_dict(), model.state_dict()
        for key, value in ours.items():
            if value.is_floating_point():
                value.mul_(d).add_(theirs[key].detach(), alpha=1 - d)
            else:
                value.copy_(theirs[key])
        self.updates += 1
