"""MB-DCNN's segmentation loss on hand-made maps, its localisation map and its test-time views."""

import numpy as np
import pytest
import torch

from medsight.models import create_model
from medsight.recipes.mbdcnn_parts import (dice_loss, localisation_maps, rank_loss, segmentation_loss,
                                           segmentation_tta, two_sided_dice)


def test_dice_of_foreground_and_background_by_hand():
    p = torch.tensor([[[0.8, 0.2], [0.6, 0.0]]])
    t = torch.tensor([[[1, 0], [1, 0]]])
    fg = 1 - 2 * 1.4 / (1.6 + 2 + 1e-5)  # sum(p t) = 0.8 + 0.6, sum p = 1.6, sum t = 2
    bg = 1 - 2 * 1.8 / (2.4 + 2 + 1e-5)  # 1 - p = 0.2 0.8 0.4 1.0 against 0 1 0 1
    assert dice_loss(p, t).item() == pytest.approx(fg, rel=1e-6)
    assert two_sided_dice(p, t).item() == pytest.approx((fg + bg) / 2, rel=1e-6)
    assert dice_loss(t.float(), t).item() == pytest.approx(0, abs=1e-5)  # a perfect map


def test_rank_loss_by_hand():
    p = torch.tensor([[0.9, 0.2, 0.4, 0.7, 0.5, 0.95]])  # background: 0.9 0.2 0.4; foreground: 0.7 0.5 0.95
    t = torch.tensor([[0, 0, 0, 1, 1, 1]])
    # K = 2: the background 0.9, 0.4 against the foreground 0.5, 0.7, margin 0.3:
    # (0.9 - 0.5 + 0.3) + (0.9 - 0.7 + 0.3) + (0.4 - 0.5 + 0.3) + max(0, 0.4 - 0.7 + 0.3) = 1.4, over 4 pairs
    assert rank_loss(p, t, pixels=2, margin=0.3).item() == pytest.approx(0.35, abs=1e-6)
    # K = 30 > 3 pixels a side: all 9 pairs; 0.9 gives 0.5 + 0.7 + 0.25, 0.4 gives 0.2, 0.2 gives nothing
    assert rank_loss(p, t).item() == pytest.approx(1.65 / 9, abs=1e-6)
    assert rank_loss(p, t, pixels=2, margin=0.0).item() == pytest.approx((0.4 + 0.2) / 4, abs=1e-6)
    # well separated: no loss; an image without foreground: no rank loss; the batch is averaged
    assert rank_loss(torch.tensor([[0.1, 0.2, 0.9, 0.95]]), torch.tensor([[0, 0, 1, 1]])).item() == 0
    batch = torch.cat([p, torch.full((1, 6), 0.5)]), torch.cat([t, torch.zeros(1, 6, dtype=torch.long)])
    assert rank_loss(*batch, pixels=2).item() == pytest.approx(0.35 / 2, abs=1e-6)


def test_rank_loss_matches_the_authors_formula_when_both_sides_have_k_pixels():
    """Their form: top-k of p (1 - t) against 1 - top-k of (1 - p) t, hinge averaged over k x k pairs."""
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(3, 1, 8, 8, generator=gen)
    t = (torch.rand(3, 1, 8, 8, generator=gen) > 0.5).long()
    k = 5
    pf, tf = p.flatten(1), t.flatten(1).float()
    neg = (pf * (1 - tf)).topk(k, 1).values
    pos = 1 - ((1 - pf) * tf).topk(k, 1).values
    want = torch.relu(neg[:, :, None] - pos[:, None, :] + 0.3).mean()
    assert rank_loss(p, t, pixels=k).item() == pytest.approx(want.item(), rel=1e-6)


def test_the_loss_is_dice_plus_weighted_rank_and_trains_the_logits():
    p = torch.tensor([[[[0.9, 0.2], [0.4, 0.7]]]])
    t = torch.tensor([[[[0, 0], [1, 1]]]])
    logits = torch.log(p / (1 - p)).requires_grad_(True)
    total, dice, rank = segmentation_loss(logits, t, rank_weight=0.05)
    assert dice.item() == pytest.approx(two_sided_dice(p, t).item(), rel=1e-5)
    assert rank.item() == pytest.approx(rank_loss(p, t).item(), rel=1e-5)
    assert total.item() == pytest.approx(dice.item() + 0.05 * rank.item(), rel=1e-6)
    total.backward()
    assert logits.grad.abs().sum() > 0


def test_localisation_map_is_the_cam_over_its_positive_peak():
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=4, num_classes=3, width=8).eval()
    x = torch.randn(2, 4, 64, 64)
    maps = localisation_maps(model, x)
    assert maps.shape == (2, 1, 2, 2)
    with torch.no_grad():
        f = model.forward_features(x)
        c = model(x).argmax(1)
    raw = torch.einsum("bkhw,bk->bhw", f, model.fc.weight[c])
    want = raw / raw.clamp_min(0).flatten(1).amax(1).view(-1, 1, 1)
    assert torch.allclose(maps[:, 0], want, atol=1e-5)
    assert maps.amax((1, 2, 3)).tolist() == pytest.approx([1.0, 1.0])


def test_the_six_views_are_undone_exactly():
    """A per-pixel function commutes with rotations and flips: every view gives it back exactly."""
    x = torch.randn(2, 2, 6, 10)
    fn = lambda z: torch.sigmoid(z[:, :1] * 2 + z[:, 1:])  # noqa: E731  (the 2nd channel: a guide)
    assert torch.allclose(segmentation_tta(x, fn, views=6), fn(x), atol=1e-6)
    seen = []
    segmentation_tta(torch.zeros(1, 1, 32, 48), lambda z: seen.append(tuple(z.shape[2:])) or z, views=6,
                     scales=(1.0, 1.5))
    assert seen == [(32, 48), (48, 32)] * 2 + [(32, 48)] * 2 + [(48, 72), (72, 48)] * 2 + [(48, 72)] * 2
    # a position-dependent output: the views' mean is the mean of the transformed-back ramps
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    out = segmentation_tta(torch.zeros(1, 1, 4, 4), lambda z: ramp.expand_as(z), views=6)
    by_hand = np.mean([np.rot90(ramp[0, 0].numpy(), -k) for k in range(4)]
                      + [ramp[0, 0].numpy()[:, ::-1], ramp[0, 0].numpy()[::-1]], axis=0)
    assert np.allclose(out[0, 0].numpy(), by_hand)
