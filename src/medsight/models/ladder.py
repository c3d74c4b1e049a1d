"""The Ladder network's decoder (Rasmus et al., NeurIPS 2015) for one MV-KBC stream (MK-Ladder).

The levels of a stream: 0 its input patch (1, S, S), 1-4 the maps after its ResNet's 4 stages,
5 its 2-class softmax. Top-down, :class:`LadderDecoder` rebuilds every level of the clean pass
from the noisy pass: u_5 = BN(noisy softmax), and for l = 4 .. 0 u_l = BN(V_l(zhat_{l+1})), where
V_4 is a linear layer from the 2 outputs to level 4's map and V_l (l < 4) a nearest upsampling to
level l's size and a 1x1 conv to its channels (medsight's choice: 3x3 costs 9x the compute on the
largest maps); the BatchNorms have no affine terms, as the paper's. Each level's estimate mixes its
noisy value (the lateral connection) and u_l with the paper's "vanilla" combinator, per channel:

    zhat = (z_noisy - mu(u)) * nu(u) + mu(u),
    mu(u) = a1 sigmoid(a2 u + a3) + a4 u + a5,   nu(u) = a6 sigmoid(a7 u + a8) + a9 u + a10,

started at a2 = a7 = a10 = 1 and 0 elsewhere, so zhat starts as the noisy value (medsight's start).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Combinator(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        start = torch.zeros(10, channels)
        start[[1, 6, 9]] = 1.0  # a2, a7, a10
        self.a = nn.Parameter(start)

    def forward(self, z_noisy: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        a = self.a.reshape(10, 1, -1, *([1] * (u.ndim - 2)))  # per channel, broadcast over rows and space
        mu = a[0] * torch.sigmoid(a[1] * u + a[2]) + a[3] * u + a[4]
        nu = a[5] * torch.sigmoid(a[6] * u + a[7]) + a[8] * u + a[9]
        return (z_noisy - mu) * nu + mu


class LadderDecoder(nn.Module):
    """Estimates of every level of one stream, bottom (input) first."""

    def __init__(self, channels: list[int], sizes: list[tuple[int, int]], outputs: int = 2):
        """``channels`` and ``sizes``: levels 0-4 (input, 4 stages); ``outputs``: level 5's width."""
        super().__init__()
        self.channels, self.sizes = list(channels), [tuple(s) for s in sizes]
        top_h, top_w = self.sizes[-1]
        self.top_norm = nn.BatchNorm1d(outputs, affine=False)
        self.top = Combinator(outputs)
        self.from_top = nn.Linear(outputs, channels[-1] * top_h * top_w)
        self.down = nn.ModuleList(nn.Conv2d(channels[l + 1], channels[l], 1) for l in range(len(channels) - 1))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c, affine=False) for c in channels)
        self.combinators = nn.ModuleList(Combinator(c) for c in channels)

    def forward(self, noisy: list[torch.Tensor]) -> list[torch.Tensor]:
        """``noisy``: levels 0-5 of the noisy pass -> the denoised estimates of levels 0-5."""
        top = self.top(noisy[-1], self.top_norm(noisy[-1]))
        estimates = [top]
        v = self.from_top(top).reshape(len(top), self.channels[-1], *self.sizes[-1])
        for l in range(len(self.channels) - 1, -1, -1):
            if l < len(self.channels) - 1:
                v = self.down[l](F.interpolate(estimates[0], size=self.sizes[l], mode="nearest"))
            estimates.insert(0, self.combinators[l](noisy[l], self.norms[l](v)))
        return estimates


def denoising_cost(estimate: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the estimate and the clean value, both normalised by the clean
    batch's per-channel mean and std (constants; the mean cancels), as the paper's
    ||z - zhat_BN||^2 / size."""
    estimate, clean = estimate.float(), clean.float()  # (bf16 under autocast: the squares in float32)
    dims = [0] + list(range(2, clean.ndim))
    std = clean.detach().std(dims, keepdim=True).clamp_min(1e-4) if clean.numel() > clean.shape[1] else 1.0
    return (((estimate - clean) / std) ** 2).mean()  # the mean cancels in the difference
