"""Batch augmentation in torch for 2D images, 3D volumes and their masks, driven by an explicit generator.

Every random choice comes from the ``torch.Generator`` passed in, so a seeded epoch replays exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medsight.errors import ConfigError


def augment_batch(images: torch.Tensor, masks: torch.Tensor | None, cfg, generator: torch.Generator):
    """Randomly flip, rotate, zoom and jitter ``images`` (B, C, *spatial float) and ``masks`` (B, 1, *spatial).

    ``cfg`` is an :class:`medsight.config.AugmentConfig`. Masks follow the geometry (nearest
    neighbour) and skip the intensity changes. Volumes (3 spatial axes) take flips, ``zflip`` and
    quarter turns in the (H, W) plane; free rotation and zoom are 2D only.
    """
    b = images.shape[0]
    volumetric = images.ndim == 5
    intensity_dims = tuple(range(1, images.ndim))

    def coin(p=0.5):
        return torch.rand(b, generator=generator) < p

    def per_sample(fn, which, x):
        if x is None or not which.any():
            return x
        x, which = x.clone(), which.to(x.device)
        x[which] = fn(x[which])
        return x

    if cfg.hflip:
        flip = coin()
        images, masks = (per_sample(lambda t: t.flip(-1), flip, t) for t in (images, masks))
    if cfg.vflip:
        flip = coin()
        images, masks = (per_sample(lambda t: t.flip(-2), flip, t) for t in (images, masks))
    if cfg.zflip and volumetric:
        flip = coin()
        images, masks = (per_sample(lambda t: t.flip(-3), flip, t) for t in (images, masks))
    if cfg.rot90 and images.shape[-1] == images.shape[-2]:
        k = torch.randint(0, 4, (b,), generator=generator)
        for turns in (1, 2, 3):
            images, masks = (per_sample(lambda t: torch.rot90(t, turns, (-2, -1)), k == turns, t)
                             for t in (images, masks))
    lo, hi = cfg.scale
    affine = cfg.rotate > 0 or (lo, hi) != (1.0, 1.0) or cfg.translate > 0
    if affine and volumetric:
        raise ConfigError("augment.rotate, scale and translate are 2D only; use flips and rot90 for volumes")
    if affine:  # rotation, zoom (a zoom above 1 is a random crop) and shift in one resampling
        angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(cfg.rotate)
        zoom = lo + torch.rand(b, generator=generator) * (hi - lo)
        shift = (torch.rand(2, b, generator=generator) * 2 - 1) * 2 * cfg.translate  # [-1, 1] spans the image
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[0]], 1),
                             torch.stack([sin, cos, shift[1]], 1)], 1).to(images)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if masks is not None:
            masks = F.grid_sample(masks, grid.to(masks.dtype), mode="nearest", padding_mode="reflection",
                                  align_corners=False)
    if cfg.brightness > 0:
        shift = (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * cfg.brightness
        shift = shift.view(b, *(1,) * (images.ndim - 1))
        images = images + shift.to(images) * images.std(dim=intensity_dims, keepdim=True)
    if cfg.contrast > 0:
        factor = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * cfg.contrast
        factor = factor.view(b, *(1,) * (images.ndim - 1))
        mean = images.mean(dim=intensity_dims, keepdim=True)
        images = (images - mean) * factor.to(images) + mean
    return images, masks


def grid_crops(images: torch.Tensor, fraction: float = 0.8, per_side: int = 3) -> list[torch.Tensor]:
    """``per_side``^2 crops of ``fraction`` of the side on a regular grid (corners, edges, centre),
    each resampled back to the input size: the 9-crop test-time averaging of ARL-CNN and mask-CN."""
    if images.ndim != 4:
        raise ConfigError("predict.crops: multi-crop averaging is 2D only")
    b = images.shape[0]
    offsets = torch.linspace(-(1 - fraction), 1 - fraction, per_side) if per_side > 1 else torch.zeros(1)
    crops = []
    for dy in offsets:
        for dx in offsets:
            theta = torch.tensor([[fraction, 0.0, float(dx)], [0.0, fraction, float(dy)]]).expand(b, 2, 3)
            grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
            crops.append(F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False))
    return crops
