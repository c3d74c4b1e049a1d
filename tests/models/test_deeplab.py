"""DeepLabv3+ (MB-DCNN's coarse-SN and enhanced-SN) and mask-CN's 4-channel input."""

import pytest
import torch

from medsight.models import create_model
from medsight.models.resnet import dilate_stage
from medsight.models.pretrained import load_pretrained

SMALL = {"encoder_options": {"width": 8}, "aspp_channels": 16, "decoder_channels": 16, "shortcut_channels": 8}


def test_the_encoder_ends_at_output_stride_16_and_the_decoder_at_the_input_size():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus", in_channels=3, num_classes=1, **SMALL).eval()
    x = torch.randn(2, 3, 64, 96)
    low, high = model.features(x)
    assert low.shape[2:] == (16, 24) and high.shape[2:] == (4, 6)  # strides 4 and 16 (32 undilated)
    assert model.encoder.level_channels == (low.shape[1], high.shape[1])
    assert model(x).shape == (2, 1, 64, 96)
    assert model(x.transpose(2, 3)).shape == (2, 1, 96, 64)  # a rotated non-square image
    rates = sorted(b[0].dilation[0] for b in model.aspp.branches)
    assert rates == [1, 6, 12, 18] and len(model.aspp.branches) == 4  # + the image-pooling branch
    assert model.shortcut[0].out_channels == 8


def test_dilating_a_stage_keeps_its_resolution_and_its_weights():
    torch.manual_seed(0)
    net = create_model("resnet18", in_channels=3, num_classes=2, width=8).eval()
    before = {k: v.clone() for k, v in net.layer4.state_dict().items()}
    dilate_stage(net.layer4, 2)
    x = torch.randn(1, 32, 8, 8)
    assert net.layer4(x).shape[2:] == (8, 8)
    assert all(torch.equal(before[k], v) for k, v in net.layer4.state_dict().items())
    convs = [m for m in net.layer4.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.stride == (1, 1) for c in convs)
    assert {c.dilation for c in convs if c.kernel_size == (3, 3)} == {(2, 2)}


def test_the_image_pooling_branch_sees_the_whole_image():
    """A change in one corner reaches the ASPP output everywhere (through the pooled branch)."""
    torch.manual_seed(0)
    model = create_model("deeplabv3plus", in_channels=3, num_classes=1, **SMALL).eval()
    x = torch.randn(1, 64, 12, 12)
    y = model.aspp(x)
    x2 = x.clone()
    x2[..., 0, 0] += 10
    changed = (model.aspp(x2) - y).abs().amax(1)[0]
    assert bool((changed > 0).all())


def test_enhanced_sn_starts_from_coarse_sn_and_reads_its_guide():
    torch.manual_seed(0)
    coarse = create_model("deeplabv3plus", in_channels=3, num_classes=1, **SMALL)
    enhanced = create_model("deeplabv3plus", in_channels=3, num_classes=1, guide_channels=1, **SMALL)
    result = enhanced.load_state_dict(coarse.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith("guide.") for k in result.missing_keys)
    assert enhanced.guide[0].in_channels == 16 + 1
    enhanced.eval()
    x = torch.randn(2, 3, 64, 64)
    a = enhanced(x, torch.zeros(2, 1, 4, 4))
    b = enhanced(x, torch.ones(2, 1, 7, 7))  # any resolution; resized to the ASPP grid
    assert a.shape == (2, 1, 64, 64) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="takes a guide"):
        enhanced(x)
    with pytest.raises(ValueError, match="takes no guide"):
        coarse(x, torch.zeros(2, 1, 4, 4))


def test_mask_cn_gets_its_mask_filters_from_the_mean_of_the_rgb_ones():
    torch.manual_seed(0)
    rgb = create_model("resnet18", in_channels=3, num_classes=1000, width=8).state_dict()
    maskcn = create_model("resnet18", in_channels=4, num_classes=3, width=8)
    report = load_pretrained(maskcn, rgb)
    w = maskcn.conv1.weight.detach()
    assert torch.equal(w[:, :3], rgb["conv1.weight"])
    assert torch.allclose(w[:, 3], rgb["conv1.weight"].mean(1))
    assert "conv1.weight" in report.adapted and "fc.weight" in report.skipped
    # and into coarse-SN's encoder, which keeps the torchvision names
    coarse = create_model("deeplabv3plus", in_channels=3, num_classes=1, **SMALL)
    report = load_pretrained(coarse.encoder, rgb)
    assert not report.missing and torch.equal(coarse.encoder.layer4[0].conv1.weight, rgb["layer4.0.conv1.weight"])
