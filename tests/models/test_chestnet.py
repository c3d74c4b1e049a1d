"""ChestNet: a classification branch and a CAM attention branch (medsight.models.chestnet).

The tests check shapes, the documented attention normalisation, that the CAM weights are Grad-CAM's,
that the logits average the two branches and that the classifier resets. The multi-label recipe
that trains it is tested in tests/recipes/test_multilabel.py.

These tiny networks run with one intra-op thread (the ``one_thread`` fixture of conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from medsight.errors import ConfigError
from medsight.models import create_model
from medsight.models.chestnet import ChestNet

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> ChestNet:
    torch.manual_seed(0)
    return create_model("chestnet", in_channels=1, num_classes=kw.pop("num_classes", 5), width=8, **kw)


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 1, 64, 64)), (3, (2, 1, 32, 32, 32))])
def test_shapes_branches_and_average(spatial_dims, shape):
    model = tiny(spatial_dims=spatial_dims).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        logits = model(x)
        cls, att = model.branch_logits(x)
        features = model.forward_features(x)
        maps = model.attention_maps(features)
    assert logits.shape == cls.shape == att.shape == (2, 5)
    assert torch.allclose(logits, (cls + att) / 2, atol=1e-6)  # the diagnosis averages both branches
    assert not torch.allclose(cls, att)  # two different branches
    assert features.shape[:2] == (2, model.num_features) and model.num_features == 64
    assert maps.shape == (2, 5, *features.shape[2:])
    with torch.no_grad():
        assert torch.allclose(model.forward_head(features), logits, atol=1e-6)
        assert torch.allclose(cls, model.backbone.forward_head(features), atol=1e-6)  # GAP + linear
    seen = []
    handle = model.get_submodule(model.cam_layer).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], features)  # cam_layer gives the attention branch's input


def test_softmax_maps_are_distributions_and_flat_cam_gives_gap():
    model = tiny().eval()
    x = torch.randn(3, 1, 96, 96)
    with torch.no_grad():
        f = model.forward_features(x)
        a = model.attention_maps(f)
        assert f.shape[2:] == (3, 3)
        assert (a >= 0).all()
        assert torch.allclose(a.flatten(2).sum(-1), torch.ones(3, 5), atol=1e-5)
        cam = torch.einsum("kc,bchw->bkhw", model.backbone.fc.weight, f)
        assert torch.allclose(a, torch.softmax(cam.clamp_min(0).flatten(2), -1).view_as(a), atol=1e-5)
        # a flat CAM (all classification weights zero) gives uniform maps: attention pooling = GAP
        model.backbone.fc.weight.zero_()
        a0 = model.attention_maps(f)
        assert torch.allclose(a0, torch.full_like(a0, 1 / 9))
        _, att = model.branch_logits(x)
        pooled = model.att_conv(f).mean((2, 3))
        assert torch.allclose(att, model.att_fc(pooled), atol=1e-5)


def test_sigmoid_maps_and_probability_average():
    model = tiny(normalise="sigmoid", combine="probabilities").eval()
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        f = model.forward_features(x)
        a = model.attention_maps(f)
        cam = torch.einsum("kc,bchw->bkhw", model.backbone.fc.weight, f)
        assert torch.allclose(a, torch.sigmoid(cam), atol=1e-6)
        assert ((a > 0) & (a < 1)).all()
        cls, att = model.branch_logits(x)
        p = torch.sigmoid(model(x))
    assert torch.allclose(p, (torch.sigmoid(cls) + torch.sigmoid(att)) / 2, atol=1e-5)


def test_cam_weights_are_grad_cam_weights():
    """For GAP + linear, Grad-CAM's channel weight (gradient of logit c averaged over positions)
    is w_ck / positions: the attention maps use Grad-CAM's weights."""
    model = tiny().eval()
    f = model.forward_features(torch.randn(2, 1, 96, 96)).detach().requires_grad_(True)
    cls = model.backbone.forward_head(f)
    positions = f.shape[2] * f.shape[3]
    for c in range(5):
        (grad,) = torch.autograd.grad(cls[:, c].sum(), f, retain_graph=True)
        weights = grad.mean((2, 3)) * positions  # (B, C), the same for every sample
        assert torch.allclose(weights, model.backbone.fc.weight[c].expand(2, -1), atol=1e-6)


@pytest.mark.parametrize("detach", [True, False])
def test_detach_cam_controls_gradient_into_classifier_weights(detach):
    model = tiny(detach_cam=detach)
    _, att = model.branch_logits(torch.randn(2, 1, 96, 96))
    att.sum().backward()
    grad = model.backbone.fc.weight.grad
    assert (grad is None or not grad.any()) if detach else grad.abs().sum() > 0
    assert model.att_fc.weight.grad.abs().sum() > 0


def test_reset_classifier_and_options():
    model = tiny()
    model.reset_classifier(3)
    x = torch.randn(2, 1, 64, 64)
    cls, att = model.branch_logits(x)
    assert model(x).shape == cls.shape == att.shape == (2, 3)
    assert model.attention_maps(model.forward_features(x)).shape[1] == 3
    with pytest.raises(ConfigError, match="normalise"):
        create_model("chestnet", num_classes=2, normalise="max")
    with pytest.raises(ConfigError, match="combine"):
        create_model("chestnet", num_classes=2, combine="max")
    with pytest.raises(ConfigError, match="resnet18"):
        create_model("chestnet", num_classes=2, bogus=1)  # backbone options are checked by the backbone
