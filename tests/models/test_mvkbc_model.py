"""The MV-KBC network: streams per patch (shared across views or not), a KBC layer per view, the
learned view weighting, and its two-class output."""

import pytest
import torch

from medsight.errors import ConfigError
from medsight.models import create_model


def tiny(**kw):
    torch.manual_seed(0)
    options = {"backbone": "resnet14", "hidden": (8, 4), "dropout": 0.0, "width": 4, **kw}
    return create_model("mvkbc", in_channels=options.get("views", 9) * options.get("patches", 3), **options).eval()


@pytest.mark.parametrize("share", [True, False])
def test_outputs_and_streams(share):
    model = tiny(share_views=share)
    x = torch.randn(2, 27, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 2) and torch.all(logits[:, 0] == 0)
    views = model.view_probs(x)
    assert views.shape == (2, 9, 2) and torch.allclose(views.sum(2), torch.ones(2, 9))
    z = model.logit_from_views(views)
    assert torch.allclose(logits.softmax(1)[:, 1], torch.sigmoid(z))  # the softmax recipes read sigmoid(z)
    assert len(model.streams) == (3 if share else 27)
    assert model.fusion.in_features == 18 and all(k.in_features == 6 for k in model.kbc)


def test_shared_streams_see_every_view_alike():
    """With shared streams, swapping two views' patches swaps their streams' outputs: each view's
    KBC then differs only by its own collaborative layer."""
    model = tiny(share_views=True)
    x = torch.randn(1, 27, 32, 32)
    swapped = x.clone()
    swapped[:, 0:3], swapped[:, 3:6] = x[:, 3:6], x[:, 0:3]
    a, b = model.stream_maps(x), model.stream_maps(swapped)
    assert all(torch.allclose(a[0][p], b[1][p]) and torch.allclose(a[1][p], b[0][p]) for p in range(3))


def test_fewer_views_and_patch_types():
    model = tiny(views=3, patches=1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2)
    assert model.fusion.in_features == 6 and model.kbc[0].in_features == 2
    with pytest.raises(ConfigError, match="in_channels=27 is not views x patches"):
        create_model("mvkbc", in_channels=27, views=3, patches=1)
    with pytest.raises(ConfigError, match="num_classes=2"):
        create_model("mvkbc", in_channels=27, num_classes=3)
