"""Model registry and interface, batch augmentation, patient-grouped splits."""

import numpy as np
import pytest
import torch

from medsight.config import AugmentConfig
from medsight.data.base import Sample
from medsight.data.splits import kfold_indices, split_samples
from medsight.errors import ConfigError
from medsight.models import create_model, list_models
from medsight.transforms.augment import augment_batch


def test_registry_lists_and_rejects():
    assert {"resnet18", "resnet50", "unet"} <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("resnet1000")
    with pytest.raises(ConfigError, match="model.options"):
        create_model("resnet18", no_such_option=1)


@pytest.mark.parametrize("dims,shape", [(2, (2, 3, 64, 64)), (3, (2, 1, 32, 32, 32))])
def test_resnet_interface(dims, shape):
    model = create_model("resnet18", in_channels=shape[1], num_classes=4, spatial_dims=dims).eval()
    x = torch.randn(shape)
    features = model.forward_features(x)
    assert features.shape[:2] == (2, model.num_features) and features.ndim == dims + 2
    assert torch.allclose(model.forward_head(features), model(x))
    assert dict(model.named_modules())[model.cam_layer] is model.layer4
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)


def test_resnet_uses_the_standard_stem():
    # MONAI defaults to a stride-1 first convolution; the ImageNet layout downsamples 4x before layer1
    model = create_model("resnet18")
    assert model.conv1.stride == (2, 2) and model.forward_features(torch.zeros(1, 3, 64, 64)).shape[-1] == 2
    small = create_model("resnet18", stem="small")
    assert small.forward_features(torch.zeros(1, 3, 32, 32)).shape[-1] == 4
    params = sum(p.numel() for p in model.parameters())
    assert 11.1e6 < params < 11.3e6  # torchvision's resnet18 with 2 classes: 11,177,538


def test_unet_shapes():
    model = create_model("unet", channels=(4, 8, 16), num_res_units=0)
    assert model(torch.zeros(1, 3, 32, 48)).shape == (1, 1, 32, 48)


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


def test_kfold_groups_patients_and_stratifies():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 2)  # two cases per patient
    labels = np.repeat(rng.integers(0, 2, 60), 2)
    folds = kfold_indices(labels, groups, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(120))
    for test in folds:
        other = np.setdiff1d(np.arange(120), test)
        assert not set(groups[test]) & set(groups[other])
        assert abs(labels[test].mean() - labels.mean()) < 0.15


def test_split_samples_respects_official_split_and_heldout_fold():
    samples = [Sample(id=f"c{i}", image=np.zeros((3, 4, 4), np.uint8), diagnosis="a",
                      split="val" if i < 5 else "train") for i in range(20)]
    out = split_samples(samples, [i % 2 for i in range(20)], 0.2)
    assert {s.id for s in out["val"]} == {f"c{i}" for i in range(5)} and len(out["train"]) == 15
    cv = split_samples(samples, [i % 2 for i in range(20)], 0.25, folds=4, fold=1)
    ids = [s.id for part in cv.values() for s in part]
    assert sorted(ids) == sorted(s.id for s in samples) and len(cv["heldout"]) == 5


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


def test_multiview_shares_one_backbone_and_averages_views():
    model = create_model("multiview", in_channels=9, num_classes=2, views=9, backbone="resnet18", width=8).eval()
    x = torch.randn(2, 9, 32, 32)
    per_view = torch.stack([model.backbone(x[:, v:v + 1]) for v in range(9)], 1).mean(1)
    assert torch.allclose(model(x), per_view, atol=1e-5)
    single = create_model("resnet18", in_channels=1, num_classes=2, width=8)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in single.parameters())
    with pytest.raises(ConfigError, match="multiple of views"):
        create_model("multiview", in_channels=10, views=9)


def test_repeated_kfold_and_hidden_labels():
    from medsight.data.splits import hide_labels, repeated_kfold

    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(100), 2)
    labels = np.repeat(rng.integers(0, 2, 100), 2)
    runs = repeated_kfold(labels, groups, 5, repeats=3, seed=0)
    assert len(runs) == 15
    first = [t for r, _, t in runs if r == 0]
    second = [t for r, _, t in runs if r == 1]
    assert sorted(np.concatenate(first).tolist()) == list(range(200))
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))  # reshuffled

    hidden = hide_labels(labels, groups, 0.2, seed=0)
    kept = hidden != -1
    assert np.array_equal(hidden[kept], labels[kept])
    assert abs(kept.mean() - 0.2) < 0.03
    for cls in (0, 1):  # stratified: about 20 % of each class keeps its label
        assert abs(kept[labels == cls].mean() - 0.2) < 0.05
    for g in range(100):  # whole patients
        assert kept[groups == g].all() or not kept[groups == g].any()


def test_grid_crops_cover_the_corners_and_centre():
    from medsight.transforms.augment import grid_crops

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
