"""Batch augmentation in torch for 2D images and their masks, driven by an explicit generator.

Every random choice comes from the ``torch.Generator`` passed in, so a seeded epoch replays exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment_batch(images: torch.Tensor, masks: torch.Tensor | None, cfg, generator: torch.Generator):
    """Randomly flip, rotate, zoom and jitter ``images`` (B, C, H, W float) and ``masks`` (B, 1, H, W).

    ``cfg`` is an :class:`medsight.config.AugmentConfig`. Masks follow the geometry (nearest
    neighbour) and skip the intensity changes.
    """
    b = images.shape[0]

    def coin(p=0.5):
        return torch.rand(b, generator=generator) < p

    def per_sample(fn, which, x):
        if x is None or not which.any():
            return x
        x = x.clone()
        x[which] = fn(x[which])
        return x

    if cfg.hflip:
        flip = coin()
        images, masks = (per_sample(lambda t: t.flip(-1), flip, t) for t in (images, masks))
    if cfg.vflip:
        flip = coin()
        images, masks = (per_sample(lambda t: t.flip(-2), flip, t) for t in (images, masks))
    if cfg.rot90 and images.shape[-1] == images.shape[-2]:
        k = torch.randint(0, 4, (b,), generator=generator)
        for turns in (1, 2, 3):
            images, masks = (per_sample(lambda t: torch.rot90(t, turns, (-2, -1)), k == turns, t)
                             for t in (images, masks))
    lo, hi = cfg.scale
    if cfg.rotate > 0 or (lo, hi) != (1.0, 1.0):
        angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(cfg.rotate)
        zoom = lo + torch.rand(b, generator=generator) * (hi - lo)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1),
                             torch.stack([sin, cos, torch.zeros(b)], 1)], 1).to(images)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if masks is not None:
            masks = F.grid_sample(masks, grid.to(masks.dtype), mode="nearest", padding_mode="reflection",
                                  align_corners=False)
    if cfg.brightness > 0:
        shift = (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * cfg.brightness
        images = images + shift.to(images) * images.std(dim=(1, 2, 3), keepdim=True)
    if cfg.contrast > 0:
        factor = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * cfg.contrast
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * factor.to(images) + mean
    return images, masks
