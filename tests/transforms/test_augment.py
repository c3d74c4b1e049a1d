"""Batch augmentation: masks move with their images, the generator replays it, 2D and 3D, grid
crops and translation."""

import pytest
import torch

from medsight.config import AugmentConfig
from medsight.errors import ConfigError
from medsight.transforms.augment import augment_batch, grid_crops


def test_augment_moves_masks_with_images():
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(16, 3, 32, 32)
    masks = torch.zeros(16, 1, 32, 32)
    images[:, :, 2:10, 4:20] = 1.0
    masks[:, :, 2:10, 4:20] = 1.0
    cfg = AugmentConfig(hflip=True, vflip=True, rot90=True)
    out_images, out_masks = augment_batch(images, masks, cfg, g)
    assert torch.equal(out_images[:, 0:1], out_masks)  # identical geometry
    assert not torch.equal(out_masks, masks)  # something moved
    assert out_masks.sum() == masks.sum()  # flips and quarter turns keep every pixel


def test_augment_is_replayed_by_its_generator():
    x = torch.randn(8, 3, 24, 24)
    cfg = AugmentConfig(rotate=30, scale=(0.8, 1.2), brightness=0.2, contrast=0.2)
    a, _ = augment_batch(x, None, cfg, torch.Generator().manual_seed(4))
    b, _ = augment_batch(x, None, cfg, torch.Generator().manual_seed(4))
    c, _ = augment_batch(x, None, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_affine_masks_stay_binary():
    masks = (torch.rand(4, 1, 32, 32) > 0.5).float()
    _, out = augment_batch(torch.randn(4, 3, 32, 32), masks, AugmentConfig(rotate=45, scale=(0.7, 1.3)),
                           torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_augment_volumes():
    g = torch.Generator().manual_seed(1)
    volumes = torch.zeros(8, 1, 6, 16, 16)
    volumes[:, :, 0:2, 1:5, 2:9] = 1.0
    cfg = AugmentConfig(hflip=True, vflip=True, zflip=True, rot90=True, brightness=0.1, contrast=0.1)
    out, masks = augment_batch(volumes, volumes.clone(), cfg, g)
    assert out.shape == volumes.shape and masks.sum() == volumes.sum()
    assert torch.equal(masks > 0.5, out > out.flatten(1).median(1).values.view(-1, 1, 1, 1, 1))
    with pytest.raises(ConfigError, match="2D only"):
        augment_batch(volumes, None, AugmentConfig(rotate=10), g)


def test_grid_crops_cover_the_corners_and_centre():
    x = torch.zeros(1, 1, 30, 30)
    x[..., :3, :3] = 1.0  # a bright top-left corner
    crops = grid_crops(x, fraction=0.8)
    assert len(crops) == 9 and all(c.shape == x.shape for c in crops)
    assert crops[0][..., :3, :3].mean() > 0.9  # the top-left crop keeps the corner at its corner
    assert crops[4][..., :3, :3].mean() < 0.1 and crops[8].sum() < 1e-6  # the centre and bottom-right miss it
    assert torch.allclose(grid_crops(x, fraction=1.0, per_side=1)[0], x, atol=1e-6)


def test_translate_shifts_images():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 6:10, 6:10] = 1.0
    out, _ = augment_batch(x, None, AugmentConfig(hflip=False, vflip=False, rot90=False, translate=0.25),
                           torch.Generator().manual_seed(0))
    centres = [(o[0] > 0.5).nonzero().float().mean(0) for o in out]
    assert max(abs(c - 7.5).max() for c in centres) > 2  # moved by several pixels
    assert all(o.sum() > 0 for o in out)
