"""The aligned Xception: its layout and strides, as a classifier (mask-CN, 4 channels) and as
DeepLabv3+'s encoder, and its weights from files with timm's or the MB-DCNN authors' key names."""

import re

import pytest
import torch
from safetensors.torch import save_file

from medsight.errors import ConfigError
from medsight.explain import cam
from medsight.models import create_model
from medsight.models.pretrained import load_pretrained
from medsight.models.registry import check_model

TINY = {"width": 4, "middle_blocks": 2}  # 4 stem channels, 2 middle blocks: a 7-block network


def test_xception_65_has_the_paper_layout():
    with torch.device("meta"):  # no memory: the full-size network
        model = create_model("xception", in_channels=3, num_classes=1000)
    separable = [m for m in model.modules() if type(m).__name__ == "SeparableConv"]
    assert len(model.blocks) == 3 + 16 + 2 and len(separable) == 3 * 21
    convs = 2 + len(separable) + 1  # the stem, every separable conv counted once, the classifier: 65 + 1
    assert convs == 66
    assert [b.stack.conv3.conv_pw.out_channels for b in model.blocks[:3]] == [128, 256, 728]
    assert [b.stack[k].conv_pw.out_channels for b in model.blocks[-2:] for k in range(3)] == \
        [728, 1024, 1024, 1536, 1536, 2048]
    assert model.blocks[-1].shortcut is None and not model.blocks[-1].residual
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())  # strided convolutions instead
    params = sum(p.numel() for p in model.parameters())
    assert 39.8e6 < params < 40.0e6  # timm's xception65 with 1000 classes: 39.92 M
    check_model("xception", {"width": 8, "output_stride": 16})
    with pytest.raises(ConfigError, match="output_stride"):
        create_model("xception", output_stride=4)
    with pytest.raises(ConfigError, match="unexpected keyword"):
        check_model("xception", {"depth": 65})


def test_strides_and_dilation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 96)
    for stride in (32, 16, 8):
        model = create_model("xception", num_classes=3, output_stride=stride, **TINY).eval()
        low, high = model.forward_levels(x)
        assert low.shape[1:] == (model.level_channels[0], 16, 24)  # stride 4 whatever the output stride
        assert high.shape[1:] == (model.level_channels[1], 64 // stride, 96 // stride)
        assert torch.equal(high, model.forward_features(x))
    sixteen = create_model("xception", output_stride=16, **TINY)
    dilations = [b.stack.conv1.conv_dw.dilation[0] for b in sixteen.blocks]
    strides = [b.stack.conv3.conv_dw.stride[0] for b in sixteen.blocks]
    assert strides == [2, 2, 2, 1, 1, 1, 1] and dilations == [1, 1, 1, 1, 1, 1, 2]  # the exit flow's last block
    assert sixteen.blocks[-2].shortcut.conv.stride == (1, 1)


def test_the_classifier_interface_and_its_cam():
    torch.manual_seed(0)
    model = create_model("xception", in_channels=4, num_classes=3, dropout=0.2, **TINY).eval()
    x = torch.randn(2, 4, 64, 64)
    assert model(x).shape == (2, 3)
    assert torch.allclose(model.forward_head(model.forward_features(x)), model(x))
    assert dict(model.named_modules())[model.cam_layer] is model.blocks
    maps = cam(model, x)  # checks that the head is pooling + linear
    assert maps.shape == (2, 2, 2)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_deeplab_on_the_xception_encoder_ends_at_stride_16():
    torch.manual_seed(0)
    options = {"encoder": "xception", "encoder_options": TINY, "aspp_channels": 16, "decoder_channels": 16,
               "shortcut_channels": 8}
    model = create_model("deeplabv3plus", in_channels=3, num_classes=1, **options).eval()
    x = torch.randn(2, 3, 64, 96)
    low, high = model.features(x)
    assert low.shape[2:] == (16, 24) and high.shape[2:] == (4, 6)
    assert model(x).shape == (2, 1, 64, 96) and model(x.transpose(2, 3)).shape == (2, 1, 96, 64)
    assert model.aspp.branches[0][0].in_channels == model.encoder.num_features
    guided = create_model("deeplabv3plus", in_channels=3, num_classes=1, guide_channels=1, **options).eval()
    assert guided(x, torch.rand(2, 1, 8, 8)).shape == (2, 1, 64, 96)
    with torch.device("meta"):  # the paper-size segmenter, without memory
        full = create_model("deeplabv3plus", in_channels=3, num_classes=1, encoder="xception")
    assert full.encoder.level_channels == (256, 2048) and full.shortcut[0].in_channels == 256
    with pytest.raises(ConfigError, match="encoder 'unet'"):
        create_model("deeplabv3plus", encoder="unet")


def authors_name(key: str, last_block: int) -> str:
    """Our key as the MB-DCNN authors' Xception names it (written out here by hand, from their
    net/xception.py: conv1/bn1, conv2/bn2, block1..blockN with skip/skipbn and sepconv1..3 of
    depthwise/bn1/pointwise/bn2, and the exit convolutions conv3..conv5)."""
    inner = {"conv_dw": "depthwise", "bn_dw": "bn1", "conv_pw": "pointwise", "bn_pw": "bn2"}
    if m := re.fullmatch(r"stem\.([01])\.(conv|bn)\.(.+)", key):
        return f"{m[2]}{int(m[1]) + 1}.{m[3]}"
    if m := re.fullmatch(r"blocks\.(\d+)\.shortcut\.(conv|bn)\.(.+)", key):
        return f"block{int(m[1]) + 1}.{'skip' if m[2] == 'conv' else 'skipbn'}.{m[3]}"
    m = re.fullmatch(r"blocks\.(\d+)\.stack\.conv([123])\.(\w+)\.(.+)", key)
    assert m, key
    if int(m[1]) == last_block:
        return f"conv{int(m[2]) + 2}.{inner[m[3]]}.{m[4]}"
    return f"block{int(m[1]) + 1}.sepconv{m[2]}.{inner[m[3]]}.{m[4]}"


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with random batch-norm statistics, so that loading them shows in the outputs."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return model.eval()


def test_weights_with_timm_names_load_and_reproduce_the_outputs(tmp_path):
    torch.manual_seed(0)
    source = _randomised(create_model("xception", num_classes=5, **TINY))
    state = {("head." + k if k.startswith("fc.") else k): v for k, v in source.state_dict().items()}
    save_file({"module." + k: v.contiguous() for k, v in state.items()}, tmp_path / "xception65.safetensors")
    torch.manual_seed(1)
    target = create_model("xception", num_classes=5, **TINY).eval()
    x = torch.randn(2, 3, 48, 48)
    assert not torch.allclose(target(x), source(x))
    report = load_pretrained(target, tmp_path / "xception65.safetensors", strict=True)
    assert not report.missing and not report.unexpected and not report.adapted
    assert torch.equal(target(x), source(x))


def test_weights_with_the_authors_names_load_into_the_encoder(tmp_path):
    torch.manual_seed(0)
    options = {"encoder": "xception", "encoder_options": {"width": 4, "middle_blocks": 16}, "aspp_channels": 8,
               "decoder_channels": 8, "shortcut_channels": 4}
    source = create_model("deeplabv3plus", in_channels=3, num_classes=1, **options)
    _randomised(source.encoder)
    last = len(source.encoder.blocks) - 1
    assert last == 20  # the authors' block1..block20, then conv3..conv5
    state = {"module.backbone." + authors_name(k, last): v for k, v in source.encoder.state_dict().items()}
    assert "module.backbone.block20.sepconv3.depthwise.weight" in state and "module.backbone.conv5.bn2.bias" in state
    state["module.aspp.branch1.0.weight"] = torch.zeros(8, 16, 1, 1)  # their decoder is not ours: left out
    torch.save(state, tmp_path / "deeplab_authors.pth")
    torch.manual_seed(1)
    target = create_model("deeplabv3plus", in_channels=3, num_classes=1, **options).eval()
    report = load_pretrained(target.encoder, tmp_path / "deeplab_authors.pth")
    assert not report.missing and report.unexpected == ["module.aspp.branch1.0.weight"]
    x = torch.randn(1, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(target.features(x), source.eval().features(x)))


def test_mask_cn_gets_its_mask_filters_from_the_mean_of_the_rgb_ones():
    torch.manual_seed(0)
    rgb = create_model("xception", in_channels=3, num_classes=1000, **TINY).state_dict()
    maskcn = create_model("xception", in_channels=4, num_classes=2, **TINY)
    report = load_pretrained(maskcn, rgb)
    w, w_rgb = maskcn.stem[0].conv.weight.detach(), rgb["stem.0.conv.weight"]
    assert torch.equal(w[:, :3], w_rgb) and torch.allclose(w[:, 3], w_rgb.mean(1))
    assert "stem.0.conv.weight" in report.adapted and set(report.skipped) == {"fc.weight", "fc.bias"}
    assert not report.missing
