"""Class activation maps (CAM, Grad-CAM, Grad-CAM++) and their PNG output."""

import copy

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image
from torch import nn

from medsight.explain import (ExplainError, MapWriter, cam, class_maps, grad_cam, grad_cam_pp, normalize,
                              overlay_map, upsample)
from medsight.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster on a busy 2-core machine

METHODS = {"cam": lambda m, x, **kw: normalize(cam(m, x, **kw)), "gradcam": grad_cam, "gradcam++": grad_cam_pp}


# -- a model that can only see one quadrant (2D) or octant (3D) -------------------------------------
class Mask(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x):
        return x * self.mask


class OneRegion(nn.Module):
    """Channel 0 detects bright 3^d patches (box filter), channel 1 dark ones; both are zeroed outside
    ``region``; the head is global average pooling + linear (class 1 = "bright patch present")."""

    cam_layer = "see"

    def __init__(self, size, region):
        super().__init__()
        dims = len(size)
        self.conv = (nn.Conv2d, nn.Conv3d)[dims - 2](1, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight[0].fill_(1.0 / 3 ** dims)
            self.conv.weight[1].fill_(-1.0 / 3 ** dims)
        self.act = nn.ReLU()
        mask = torch.zeros(size)
        mask[region] = 1
        self.see = Mask(mask)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0, 0.5], [1.0, -0.5]]))
            self.fc.bias.zero_()

    def forward_features(self, x):
        return self.see(self.act(self.conv(x)))

    def forward_head(self, f):
        return self.fc(f.mean(dim=tuple(range(2, f.ndim))))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _patch(x, centre, value):
    x[(0,) + tuple(slice(c - 1, c + 2) for c in centre)] = value


@pytest.mark.parametrize("method", METHODS)
def test_peak_lies_in_the_only_quadrant_the_model_sees(method):
    size = (16, 16)
    model = OneRegion(size, (slice(8, 16), slice(0, 8)))  # bottom-left: index 0 (top-left) is outside
    x = torch.zeros(2, 1, *size)
    centres = [(11, 4), (13, 2)]
    for i, c in enumerate(centres):
        _patch(x[i], c, 1.0)
        _patch(x[i], (3, 12), 3.0)  # brighter, but in a quadrant the model cannot see
    maps = METHODS[method](model, x)
    assert maps.shape == (2, *size)
    for i, c in enumerate(centres):
        assert maps[i].max() == 1.0
        assert np.unravel_index(int(maps[i].argmax()), size) == c
        assert maps[i][:8].abs().sum() == 0 and maps[i][:, 8:].abs().sum() == 0


@pytest.mark.parametrize("method", METHODS)
def test_peak_lies_in_the_only_octant_the_model_sees(method):
    size = (12, 12, 12)
    model = OneRegion(size, (slice(6, 12), slice(0, 6), slice(6, 12)))
    x = torch.zeros(1, 1, *size)
    _patch(x[0], (8, 2, 9), 1.0)
    _patch(x[0], (2, 8, 2), 3.0)
    maps = METHODS[method](model, x)
    assert maps.shape == (1, *size)
    assert np.unravel_index(int(maps[0].argmax()), size) == (8, 2, 9)
    outside = torch.ones(size, dtype=torch.bool)
    outside[6:, :6, 6:] = False
    assert maps[0][outside].abs().sum() == 0


def test_explicit_target_and_all_zero_maps():
    model = OneRegion((16, 16), (slice(8, 16), slice(0, 8)))
    x = torch.zeros(1, 1, 16, 16)
    _patch(x[0], (11, 4), 1.0)
    # class 0 has only negative evidence: the ReLU'd map is all zero, returned as zeros (not nan)
    for fn in (grad_cam, grad_cam_pp):
        maps = fn(model, x, target=0)
        assert torch.equal(maps, torch.zeros_like(maps))
    raw = cam(model, x, target=0)
    assert raw.min() < 0 and torch.equal(normalize(raw), torch.zeros_like(raw))
    assert torch.equal(normalize(torch.zeros(2, 3, 3)), torch.zeros(2, 3, 3))


def test_in_place_operation_after_the_hooked_layer():
    torch.manual_seed(0)
    plain = OneRegion((16, 16), (slice(8, 16), slice(0, 8)))
    inplace = copy.deepcopy(plain)
    inplace.act = nn.ReLU(inplace=True)  # overwrites the hooked conv output in place
    x = torch.randn(2, 1, 16, 16)
    for fn in (grad_cam, grad_cam_pp):
        expected = fn(plain, x, layer="conv")
        torch.testing.assert_close(fn(inplace, x, layer="conv"), expected, atol=1e-6, rtol=0)
        inplace.requires_grad_(False)  # the hooked output is then a leaf made to require grad
        torch.testing.assert_close(fn(inplace, x, layer="conv"), expected, atol=1e-6, rtol=0)
        inplace.requires_grad_(True)


# -- registry models: shapes, and CAM == Grad-CAM for a GAP + linear head ------------------------------
CASES = {
    "2d": (dict(name="resnet18", in_channels=3), (3, 3, 32, 40), (3, 4, 5)),
    "3d": (dict(name="resnet18", in_channels=1, spatial_dims=3), (2, 1, 16, 24, 16), (2, 2, 3, 2)),
    "multiview": (dict(name="multiview", in_channels=9, views=9), (2, 9, 24, 32), (2, 9, 3, 4)),
}


@pytest.mark.parametrize("case", CASES)
def test_registry_shapes_and_cam_equals_grad_cam(case):
    options, shape, map_shape = CASES[case]
    torch.manual_seed(0)
    model = create_model(num_classes=3, width=8, stem="small", **options)
    x = torch.randn(shape)
    raw = cam(model, x)
    assert raw.shape == map_shape
    with torch.no_grad():
        logits = model.eval()(x)
    # a raw CAM averages (over positions, and views) to the predicted logit minus the bias
    fc = model.backbone.fc if case == "multiview" else model.fc
    pred = logits.argmax(1)
    mean = raw.flatten(1).mean(1)
    torch.testing.assert_close(mean + fc.bias.detach()[pred], logits.max(1).values, atol=1e-5, rtol=1e-5)
    gc = grad_cam(model, x)
    assert gc.shape == map_shape and (gc.flatten(1).amax(1) == 1).all()  # non-degenerate maps
    torch.testing.assert_close(gc, normalize(raw), atol=1e-5, rtol=0)  # same map up to a positive scale
    target = torch.tensor([2, 0, 1])[: shape[0]]
    torch.testing.assert_close(grad_cam(model, x, target=target), normalize(cam(model, x, target=target)),
                               atol=1e-5, rtol=0)
    pp = grad_cam_pp(model, x)
    assert pp.shape == map_shape and pp.min() >= 0 and pp.max() <= 1
    full = class_maps(model, x, method="gradcam++")
    assert full.shape == map_shape[:-len(shape[2:])] + shape[2:]
    assert upsample(raw, shape[2:]).shape == full.shape


def test_agrees_with_monai():
    visualize = pytest.importorskip("monai.visualize")
    torch.manual_seed(1)
    model = create_model("resnet18", width=8, stem="small", num_classes=3).eval()
    with torch.no_grad():  # larger gradients, so MONAI's 1e-7 in the Grad-CAM++ denominator is negligible
        model.fc.weight.mul_(20)
    x = torch.randn(1, 3, 16, 24)  # batch of one: MONAI's class score indexing is per batch, not per sample
    keep = dict(upsampler=lambda size: (lambda t: t), postprocessing=lambda t: t)
    for k in range(3):
        # MONAI leaves its hooks on the model: give it copies. Its CAM includes the fc bias.
        ref = visualize.CAM(copy.deepcopy(model), "layer4", "fc", **keep).compute_map(x, class_idx=torch.tensor([k]))
        torch.testing.assert_close(cam(model, x, target=k), ref[:, 0] - model.fc.bias[k].detach(),
                                   atol=1e-5, rtol=1e-5)
        ref = visualize.GradCAM(copy.deepcopy(model), "layer4").compute_map(x, class_idx=k)
        torch.testing.assert_close(grad_cam(model, x, target=k), normalize(ref[:, 0]), atol=1e-5, rtol=0)
        ref = visualize.GradCAMpp(copy.deepcopy(model), "layer4").compute_map(x, class_idx=k)
        torch.testing.assert_close(grad_cam_pp(model, x, target=k), normalize(ref[:, 0]), atol=1e-4, rtol=0)


# -- no side effects ------------------------------------------------------------------------------
HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
         "_full_backward_hooks", "_forward_hooks_with_kwargs")


def _state(model):
    return {
        "hooks": sum(len(getattr(m, h, {})) for m in model.modules() for h in HOOKS),
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
    }


def _same(a, b):
    assert a["hooks"] == b["hooks"] == 0
    assert a["modes"] == b["modes"] and a["requires_grad"] == b["requires_grad"]
    for u, v in zip(a["grads"] + a["buffers"], b["grads"] + b["buffers"]):
        assert (u is None and v is None) or torch.equal(u, v)


def test_no_hooks_modes_grads_or_statistics_left_behind():
    torch.manual_seed(0)
    model = create_model("resnet18", width=8, stem="small", num_classes=3).train()
    model.layer2.eval()  # mixed modes must come back as they were
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 7.0)  # an accumulated gradient stays as it was
    before = _state(model)
    x = torch.randn(2, 3, 16, 16)
    for fn in (cam, grad_cam, grad_cam_pp):
        fn(model, x)
        _same(before, _state(model))
        with pytest.raises(ExplainError, match="out of range"):
            fn(model, x, target=5)  # raises after the forward pass, with the hook in place
        _same(before, _state(model))
    with torch.no_grad():
        a = grad_cam(model, x)
    with torch.inference_mode():
        b = grad_cam(model, torch.randn(2, 3, 16, 16))
    assert a.shape == b.shape == (2, 2, 2)
    _same(before, _state(model))
    frozen = create_model("resnet18", width=8, stem="small").requires_grad_(False)
    assert grad_cam(frozen, x).shape == (2, 2, 2)  # frozen weights: gradients still reach the layer
    assert not any(p.requires_grad for p in frozen.parameters())


def test_hook_removed_when_the_forward_pass_raises():
    model = create_model("resnet18", width=8, stem="small")
    with pytest.raises(RuntimeError):
        grad_cam(model, torch.randn(1, 5, 16, 16))  # wrong channel count: fails inside the forward pass
    assert sum(len(getattr(m, h, {})) for m in model.modules() for h in HOOKS) == 0


# -- errors ----------------------------------------------------------------------------------------
class MLPHead(OneRegion):
    def __init__(self):
        super().__init__((8, 8), (slice(0, 8), slice(0, 8)))
        del self.fc
        self.head = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))

    def forward_head(self, f):
        return self.head(f.mean(dim=(2, 3)))


class MaxPoolHead(OneRegion):
    def __init__(self):
        super().__init__((8, 8), (slice(0, 8), slice(0, 8)))

    def forward_head(self, f):
        return self.fc(f.amax(dim=(2, 3)))


def test_clear_errors():
    x = torch.rand(2, 1, 8, 8)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ExplainError, match="no cam_layer"):
        grad_cam(plain, x)
    assert grad_cam(plain, x, layer="1").shape == (2, 6, 6)  # a named layer works on any model
    with pytest.raises(ExplainError, match="no module named 'nope'"):
        grad_cam(plain, x, layer="nope")
    with pytest.raises(ExplainError, match="no spatial dimensions"):
        grad_cam(plain, x, layer="4")
    with pytest.raises(ExplainError, match="forward_features"):
        cam(plain, x)
    for model in (MLPHead(), MaxPoolHead()):
        with pytest.raises(ExplainError, match="not global average pooling"):
            cam(model, x)
        assert grad_cam(model, x).shape == (2, 8, 8)  # Grad-CAM still applies
    with pytest.raises(ExplainError, match="unknown map method"):
        class_maps(MLPHead(), x, method="saliency")
    with pytest.raises(ExplainError, match="one class per sample"):
        grad_cam(MaxPoolHead(), x, target=[0, 1, 1])


# -- PNG output ------------------------------------------------------------------------------------
def _png(path):
    with Image.open(path) as img:
        return img.mode, np.asarray(img)


def test_maps_written_at_the_input_size(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 37, 53), dtype=np.uint8)
    m = torch.zeros(4, 5)
    m[0, 4] = 1.0  # the top-right cell
    paths = MapWriter(tmp_path).write("case 1", image, m)
    assert paths["map"] == tmp_path / "maps" / "case 1.png"
    mode, grey = _png(paths["map"])
    assert mode == "L" and grey.shape == (37, 53) and grey.dtype == np.uint8 and grey.max() == 255
    r, c = np.unravel_index(grey.argmax(), grey.shape)
    assert r < 37 / 4 and c > 53 * 3 / 4
    mode, rgb = _png(paths["overlay"])
    assert mode == "RGB" and rgb.shape == (37, 53, 3)
    expected = 0.55 * image.transpose(1, 2, 0) + 0.45 * 255 * colormaps["jet"](grey / 255.0)[..., :3]
    assert np.abs(rgb.astype(float) - expected).max() <= 2.5  # image and map aligned, blended
    assert not list(tmp_path.rglob("*.part"))

    raw = torch.tensor([[-2.0, 1.0], [3.0, 0.5]])  # a raw CAM: ReLU'd and scaled by its maximum
    grey = MapWriter(tmp_path, overlays=None, cmap="inferno").write("raw", image[0], raw)
    assert set(grey) == {"map"}
    _, arr = _png(grey["map"])
    assert arr.shape == (37, 53) and arr.max() == 255 and arr[0, 0] == 0
    assert overlay_map(image, raw, cmap="inferno").shape == (37, 53, 3)


def test_views_and_volumes_written(tmp_path):
    writer = MapWriter(tmp_path)
    views = writer.write("nodule", np.zeros((9, 20, 22), np.uint8), torch.rand(9, 3, 4))
    assert _png(views["map"])[1].shape == (20, 9 * 22) and _png(views["overlay"])[1].shape == (20, 198, 3)
    m = torch.zeros(2, 3, 4)
    m[1, 1, 2] = 1.0
    volume = np.random.default_rng(0).normal(size=(1, 10, 12, 14)).astype(np.float32)  # float CT
    paths = writer.write("ct", volume, m)
    _, grey = _png(paths["map"])
    assert grey.shape == (12, 14) and grey.max() > 0
    assert _png(paths["overlay"])[1].shape == (12, 14, 3)
    with pytest.raises(ExplainError, match="do not match"):
        writer.write("bad", np.zeros((10, 12)), torch.rand(2, 3, 4))
