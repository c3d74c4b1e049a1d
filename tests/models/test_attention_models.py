"""ARL-CNN, SE-Net, RAN and local pretrained-weight loading (tiny widths and inputs: seconds on 2 cores)."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from medsight.errors import ConfigError, InputError
from medsight.models import create_model, list_models
from medsight.models.arl import ARLBasicBlock, ARLBottleneck, attention_map
from medsight.models.pretrained import adapt_input_channels, load_pretrained, map_key
from medsight.models.ran import AttentionBottleneck

ATTENTION_MODELS = ["arlcnn14", "arlcnn18", "arlcnn50", "senet14", "senet50", "ran14"]
W = 8  # width of the test models: 8/16/32/64 (x4 for bottlenecks) channels per stage


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters, so eval-mode outputs test something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def test_registry_has_the_attention_family():
    assert set(ATTENTION_MODELS) | {"resnet14"} <= set(list_models())


@pytest.mark.parametrize("name", ATTENTION_MODELS + ["resnet14"])
@pytest.mark.parametrize("dims,shape", [(2, (2, 3, 32, 32)), (3, (1, 1, 16, 16, 16))])
def test_shapes_and_interface(name, dims, shape):
    torch.manual_seed(0)
    model = create_model(name, in_channels=shape[1], num_classes=3, spatial_dims=dims, width=W).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        assert features.shape[:2] == (shape[0], model.num_features) and features.ndim == dims + 2
        assert logits.shape == (shape[0], 3)
        assert torch.allclose(model.forward_head(features), logits)
        assert dict(model.named_modules())[model.cam_layer] is model.layer4
        model.reset_classifier(5)
        assert model(x).shape == (shape[0], 5) and model.fc.in_features == model.num_features


@pytest.mark.parametrize("plain,arl,dims,mode", [("resnet14", "arlcnn14", 2, "channel"),
                                                  ("resnet14", "arlcnn14", 3, "spatial"),
                                                  ("resnet18", "arlcnn18", 2, "spatial")])
def test_alpha_zero_is_exactly_the_plain_resnet(plain, arl, dims, mode):
    torch.manual_seed(1)
    resnet = randomise_norms(create_model(plain, num_classes=3, spatial_dims=dims, width=W))
    model = create_model(arl, num_classes=3, spatial_dims=dims, width=W, alpha_init=0.0, attention_softmax=mode)
    result = model.load_state_dict(resnet.state_dict(), strict=False)
    assert not result.unexpected_keys and all(k.endswith(".alpha") for k in result.missing_keys)
    model.eval()
    x = torch.randn((2, 3) + (24,) * dims)
    with torch.no_grad():
        assert torch.equal(model(x), resnet(x))
        for alpha in model.alphas():
            alpha.fill_(0.5)
        assert not torch.allclose(model(x), resnet(x))  # the attention term does something


def test_alpha_is_a_learnable_scalar_per_block():
    model = create_model("arlcnn14", width=W, alpha_init=0.25)
    blocks = [m for m in model.modules() if isinstance(m, ARLBottleneck)]
    assert len(blocks) == 4 and model.alphas() == [b.alpha for b in blocks]
    params = dict(model.named_parameters())
    for name in ("layer1.0.alpha", "layer4.0.alpha"):
        assert isinstance(params[name], nn.Parameter) and params[name].requires_grad
        assert params[name].shape == () and params[name].item() == 0.25
    assert create_model("arlcnn14", width=W).layer1[0].alpha.item() == pytest.approx(0.001)
    assert len(create_model("arlcnn50", width=W).alphas()) == 16
    assert all(isinstance(m, ARLBasicBlock) for m in create_model("arlcnn18", width=W).layer2)
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # train mode: alpha receives a gradient
    assert all(a.grad is not None and a.grad.abs() > 0 for a in model.alphas())


@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (2, 5, 3, 4, 2)])
def test_attention_softmax_normalisation(shape):
    f = torch.randn(shape) * 3
    channel = attention_map(f, "channel")
    spatial = attention_map(f, "spatial")
    assert channel.shape == spatial.shape == f.shape and (channel > 0).all() and (spatial > 0).all()
    assert torch.allclose(channel.sum(1), torch.ones(shape[:1] + shape[2:]))
    assert torch.allclose(spatial.flatten(2).sum(-1), torch.ones(shape[:2]))
    # "channel": the channel with the largest response wins at each position
    assert torch.equal(channel.argmax(1), f.argmax(1))
    with pytest.raises(ConfigError, match="attention_softmax"):
        create_model("arlcnn14", attention_softmax="pixel")
    with pytest.raises(ConfigError, match="alpha_init"):
        create_model("arlcnn14", alpha_init="big")


@pytest.mark.parametrize("mode", ["channel", "spatial"])
@pytest.mark.parametrize("shape", [(2, 6, 5, 4), (2, 6, 3, 4, 5)])
def test_attention_map_is_the_same_in_either_memory_layout(shape, mode):
    f = torch.randn(shape) * 3
    layout = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    want = attention_map(f, mode)
    got = attention_map(f.to(memory_format=layout), mode)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert got.is_contiguous(memory_format=layout), "the mask keeps the layout (no copy to channels first)"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # no float32 copy under autocast
        assert attention_map(f.bfloat16(), mode).dtype == torch.bfloat16


def test_parameter_counts():
    for plain, arl, blocks in [("resnet14", "arlcnn14", 4), ("resnet50", "arlcnn50", 16), ("resnet18", "arlcnn18", 8)]:
        assert n_params(create_model(arl, width=W)) == n_params(create_model(plain, width=W)) + blocks
    # SE: per block C -> C/16 -> C with biases (never below one hidden unit)
    se = sum(2 * c * (c // 16) + c // 16 + c for c in (4 * W, 8 * W, 16 * W, 32 * W))
    assert n_params(create_model("senet14", width=W)) == n_params(create_model("resnet14", width=W)) + se
    assert n_params(create_model("senet14", width=W)) > n_params(create_model("resnet14", width=W))
    assert n_params(create_model("ran14", width=W)) > n_params(create_model("resnet14", width=W))


def test_ran_modules_are_attention_residual():
    torch.manual_seed(2)
    model = create_model("ran14", width=W).eval()
    assert [isinstance(model.get_submodule(f"layer{k}.0"), AttentionBottleneck) for k in (1, 2, 3, 4)] == \
        [True, True, True, False]
    assert len(model.layer1[0].mask.skip) == 1 and len(model.layer2[0].mask.skip) == 0
    every = create_model("ran14", width=W, mask_levels=(1, 1, 1, 1), spatial_dims=3)
    assert isinstance(every.layer4[0], AttentionBottleneck)
    block = model.layer2[0]
    x = torch.randn(2, 4 * W, 15, 15)  # odd size: the mask is resized to the trunk's output
    with torch.no_grad():
        trunk = super(AttentionBottleneck, block).forward(x)  # the plain bottleneck unit
        mask = block.mask(x, trunk.shape[2:])
        assert mask.shape == trunk.shape == (2, 8 * W, 8, 8)
        assert ((mask > 0) & (mask < 1)).all()
        assert torch.allclose(block(x), (1 + mask) * trunk)
    with pytest.raises(ConfigError, match="mask_levels"):
        create_model("ran14", mask_levels=(1, 1))


def _fake_checkpoint(model: nn.Module, style: str) -> dict:
    """Our model's weights under torchvision / timm names (MONAI's ResNet already uses torchvision's)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if style == "torchvision-old":  # old torchvision files have no num_batches_tracked
        return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if style == "ddp":
        return {"state_dict": {"module." + k: v for k, v in state.items()}}
    if style == "timm-head":
        return {k.replace("fc.", "head.fc.") if k.startswith("fc.") else k: v for k, v in state.items()}
    if style == "timm-se":  # timm's SE layers are 1x1 convolutions named fc1 / fc2
        return {k.replace("se.fc.0.", "se.fc1.").replace("se.fc.2.", "se.fc2."):
                v[..., None, None] if (".se.fc." in k and v.ndim == 2) else v for k, v in state.items()}
    return state


@pytest.mark.parametrize("name,style,fmt", [("resnet14", "torchvision-old", "safetensors"),
                                             ("resnet14", "ddp", "pth"),
                                             ("resnet14", "timm-head", "pth"),
                                             ("senet14", "timm-se", "safetensors")])
def test_pretrained_round_trip(tmp_path, name, style, fmt):
    torch.manual_seed(3)
    source = randomise_norms(create_model(name, width=W, num_classes=4))
    state = _fake_checkpoint(source, style)
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    model = create_model(name, width=W, num_classes=4)
    report = load_pretrained(model, path, strict=True)
    assert not report.missing and not report.unexpected and not report.skipped
    assert bool(report.adapted) == (style == "timm-se")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source(x))


def test_pretrained_skips_the_classifier_and_reports():
    source = create_model("resnet14", width=W, num_classes=1000).state_dict()
    source["extra.weight"] = torch.zeros(1)
    model = create_model("arlcnn14", width=W, num_classes=3)
    fc_before = model.fc.weight.clone()
    report = load_pretrained(model, source)
    assert set(report.skipped) == {"fc.weight", "fc.bias"} and torch.equal(model.fc.weight, fc_before)
    assert sorted(report.missing) == sorted(f"layer{k}.0.alpha" for k in (1, 2, 3, 4))
    assert report.unexpected == ["extra.weight"]
    assert torch.equal(model.conv1.weight, source["conv1.weight"])
    with pytest.raises(InputError, match="do not fit"):
        load_pretrained(model, source, strict=True)
    assert map_key("module.model.layer1.0.downsample.0.weight") == "layer1.0.downsample.0.weight"


def test_pretrained_adapts_the_first_convolution():
    torch.manual_seed(4)
    rgb = randomise_norms(create_model("resnet14", width=W))
    weight = rgb.conv1.weight.detach()
    x = torch.randn(2, 1, 32, 32)
    grey = create_model("resnet14", width=W, in_channels=1)
    report = load_pretrained(grey, rgb.state_dict(), strict=True)
    assert list(report.adapted) == ["conv1.weight"]
    assert torch.allclose(grey.conv1.weight, weight.sum(1, keepdim=True))
    with torch.no_grad():  # a grey image seen as RGB by the RGB model = the grey model on one channel
        assert torch.allclose(grey.eval()(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-5)

    four = create_model("resnet14", width=W, in_channels=4)
    load_pretrained(four, rgb.state_dict(), strict=True)
    assert torch.equal(four.conv1.weight[:, :3], weight)
    assert torch.allclose(four.conv1.weight[:, 3], weight.mean(1))  # MB-DCNN's mask channel init
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # an empty 4th channel leaves the RGB response unchanged
        assert torch.allclose(four.eval()(torch.cat([img, torch.zeros(2, 1, 32, 32)], 1)), rgb(img), atol=1e-5)
    assert adapt_input_channels(weight, 2).shape[1] == 2


def test_pretrained_inflates_2d_weights_into_3d_and_rejects_bad_files(tmp_path):
    flat = create_model("resnet14", width=W)
    volume = create_model("resnet14", width=W, spatial_dims=3, in_channels=1)
    report = load_pretrained(volume, flat.state_dict(), strict=True)
    assert "input channels 3 -> 1" in report.adapted["conv1.weight"] and "layer1.0.conv2.weight" in report.adapted
    assert torch.allclose(volume.layer1[0].conv2.weight.sum(2), flat.layer1[0].conv2.weight, atol=1e-6)
    with pytest.raises(InputError, match="not found"):
        load_pretrained(volume, tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable"):
        load_pretrained(volume, bad)
