"""Class activation maps for registry classifiers: CAM, Grad-CAM and Grad-CAM++, plus PNG writers.

Every function is written once for any number of spatial dimensions (2D images, 3D volumes).

- :func:`cam` (Zhou et al. 2016) needs a head that is global average pooling + one linear layer
  (the registry's ResNets and whatever else keeps that head). It returns the *raw* map
  ``sum_k w[c, k] * f_k(position)`` at feature resolution, without the bias and without ReLU or
  normalisation, so that ``map.mean(spatial) + bias[c] == logit[c]`` exactly.
- :func:`grad_cam` (Selvaraju et al. 2017) and :func:`grad_cam_pp` (Chattopadhay et al. 2018) work
  for any differentiable model: they hook the module named by ``layer`` (default ``model.cam_layer``)
  and return ``ReLU(map) / max`` per sample, in ``[0, 1]`` at that layer's resolution. A map with no
  positive evidence anywhere (all zero after the ReLU) is returned as all zeros, never NaN.
- :func:`upsample` resizes maps to an input size (linear / bilinear / trilinear,
  ``align_corners=False``); :func:`class_maps` is the one call ``predict --maps`` needs
  (normalised maps of the predicted class at the input's size).
- :class:`MapWriter` writes ``maps/<id>.png`` (grey uint8 0-255, the input image's exact height and
  width) and ``overlays/<id>.png`` (RGB: a colormap blended on the image).

Shapes. The batch is ``x: (B, C, *spatial)``. Maps are ``(B, *spatial)``; for a model that runs its
feature extractor once per view (:class:`medsight.models.multiview.MultiView`: the hooked layer sees
``B * views`` rows) they are ``(B, views, *spatial)``, one map per view, never averaged (the views are
different planes, so their pixels do not correspond). Normalisation then runs over all views of a
sample together, so a view with little evidence stays dim.

Side effects: none. The model runs in eval mode (dropout off, BatchNorm on its running statistics)
and every module's train/eval flag is restored afterwards; the forward hook is removed in a
``finally`` block even when the call raises; gradients are taken with :func:`torch.autograd.grad`
with respect to the hooked activation only, so no parameter's ``.grad`` is touched and no
``requires_grad`` flag is changed (frozen models work too). The calls work inside ``torch.no_grad()``
and ``torch.inference_mode()``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsight.errors import MedsightError

__all__ = ["ExplainError", "MapWriter", "cam", "class_maps", "final_linear", "grad_cam", "grad_cam_pp",
           "map_to_uint8", "normalize", "overlay_map", "upsample"]

METHODS = ("cam", "gradcam", "gradcam++")


class ExplainError(MedsightError, ValueError):
    """A model or argument that the requested explanation cannot work with."""


# -- helpers ------------------------------------------------------------------------------------------
@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode inside the block; every module's own flag restored afterwards (mixed modes too)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _input(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        raise ExplainError(f"expected an input batch (B, C, *spatial), got "
                           f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    return x.clone() if x.is_inference() else x.detach()


def _targets(logits: torch.Tensor, target) -> torch.Tensor:
    """Class index per sample: ``None`` -> the predicted class; an int -> that class for all."""
    if logits.ndim != 2:
        raise ExplainError(f"the model's output has shape {tuple(logits.shape)}; class maps need logits (B, classes)")
    b, k = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, dtype=torch.long, device=logits.device)
    if t.ndim == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ExplainError(f"target must be an int or one class per sample ({b}), got shape {tuple(t.shape)}")
    if ((t < 0) | (t >= k)).any():
        raise ExplainError(f"target {t.tolist()} out of range for {k} classes")
    return t


def _per_sample(maps: torch.Tensor, batch: int) -> torch.Tensor:
    """``(N, *spatial)`` -> ``(B, *spatial)`` when N == B, else ``(B, N // B, *spatial)`` (views)."""
    n = maps.shape[0]
    if n == batch:
        return maps
    if n % batch:
        raise ExplainError(f"the layer produced {n} maps for a batch of {batch}")
    return maps.reshape(batch, n // batch, *maps.shape[1:])


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """``ReLU(maps) / max`` per sample (over every dimension but the first); all-zero maps stay zero."""
    m = maps.float().clamp_min(0)
    peak = m.flatten(1).amax(1).view(-1, *[1] * (m.ndim - 1))
    return m / torch.where(peak > 0, peak, torch.ones_like(peak))


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``(..., *spatial)`` maps to ``size`` (its length = the number of spatial dimensions).

    Linear, bilinear or trilinear interpolation with ``align_corners=False`` (MONAI's and the
    segmentation recipe's convention); leading dimensions (batch, views) are kept.
    """
    size = tuple(int(s) for s in size)
    d = len(size)
    if not 1 <= d <= 3 or maps.ndim < d:
        raise ExplainError(f"cannot resize maps of shape {tuple(maps.shape)} to {size}")
    lead = maps.shape[:maps.ndim - d]
    flat = maps.float().reshape(-1, 1, *maps.shape[maps.ndim - d:])
    mode = ("linear", "bilinear", "trilinear")[d - 1]
    out = F.interpolate(flat, size=size, mode=mode, align_corners=False)
    return out.reshape(*lead, *size)


def final_linear(model: nn.Module) -> nn.Linear:
    """The classifier's last linear layer: ``fc`` (or ``classifier`` / ``head`` / ``last_linear``) when
    it is an ``nn.Linear``, searched through a ``backbone`` attribute, else the model's last ``nn.Linear``."""
    for name in ("fc", "classifier", "head", "last_linear"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Linear):
            return module
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        try:
            return final_linear(backbone)
        except ExplainError:
            pass
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ExplainError(f"{type(model).__name__} has no linear classifier layer, so CAM does not apply; "
                           "use grad_cam")
    return linears[-1]


def _layer(model: nn.Module, layer) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    if layer is None:
        layer = getattr(model, "cam_layer", None)
        if not layer:
            raise ExplainError(f"{type(model).__name__} has no cam_layer; pass layer='<module name>' "
                               "(see model.named_modules())")
    try:
        return model.get_submodule(layer)
    except AttributeError:
        raise ExplainError(f"{type(model).__name__} has no module named {layer!r}") from None


# -- CAM ------------------------------------------------------------------------------------------
def cam(model: nn.Module, x: torch.Tensor, target=None) -> torch.Tensor:
    """Class activation maps at feature resolution: ``(B, *spatial)``, or ``(B, views, *spatial)``.

    ``map[c](p) = sum_k fc.weight[c, k] * features[k](p)`` with the features of
    ``model.forward_features`` and the class ``target`` (default: each sample's predicted class).
    Raw values (no bias, no ReLU, no normalisation): ``map.mean(spatial) + fc.bias[c]`` is the logit,
    averaged over views for a multi-view model. Use :func:`normalize` and :func:`upsample` to display.

    Raises :class:`ExplainError` unless the head is global average pooling + one linear layer,
    which is checked numerically against ``model.forward_head`` on these very features.
    """
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise ExplainError(f"{type(model).__name__} has no forward_features / forward_head; CAM needs the "
                           "registry classifier interface (or use grad_cam)")
    fc = final_linear(model)
    x = _input(x)
    with _eval_mode(model), torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
        t = _targets(logits, target)
        if features.ndim < 3 or features.shape[1] != fc.in_features:
            raise ExplainError(f"{type(model).__name__}'s head is not global average pooling + linear: features "
                               f"of shape {tuple(features.shape)} do not feed its last linear layer "
                               f"({fc.in_features} inputs), so CAM does not apply; use grad_cam")
        f = features.float()
        pooled = fc(f.mean(dim=tuple(range(2, f.ndim))).to(fc.weight.dtype)).float()
        expected = pooled if pooled.shape[0] == logits.shape[0] else \
            _per_sample(pooled, logits.shape[0]).mean(1)
        scale = max(1.0, float(logits.abs().max()))
        if expected.shape != logits.shape or not torch.allclose(expected, logits.float(), rtol=1e-4,
                                                                 atol=1e-4 * scale):
            raise ExplainError(f"{type(model).__name__}'s head is not global average pooling + linear, "
                               "so CAM does not apply; use grad_cam")
        rows = t.repeat_interleave(f.shape[0] // t.shape[0]) if f.shape[0] != t.shape[0] else t
        weights = fc.weight.float()[rows]  # (N, F)
        maps = torch.einsum("nk...,nk->n...", f, weights)
    return _per_sample(maps, x.shape[0])


# -- Grad-CAM and Grad-CAM++ -----------------------------------------------------------------------
def _gradient_maps(model: nn.Module, x: torch.Tensor, target, layer, combine) -> torch.Tensor:
    module = _layer(model, layer)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise ExplainError(f"the hooked layer returns {type(output).__name__}, not a tensor")
        act = output if output.requires_grad else output.detach().requires_grad_(True)
        captured.append(act)
        return act.clone()  # later in-place operations (ReLU(inplace=True)) must not alter `act`

    with _eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        x = _input(x)  # an inference-mode tensor is cloned here, outside inference mode
        handle = module.register_forward_hook(hook)
        try:
            logits = model(x)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ExplainError(f"the hooked layer ran {len(captured)} times in one forward pass; "
                               "choose a layer that runs once")
        t = _targets(logits, target)
        act = captured[0]
        if act.ndim < 3:
            raise ExplainError(f"the hooked layer's output {tuple(act.shape)} has no spatial dimensions")
        score = logits.gather(1, t[:, None]).sum()  # samples are independent in eval mode
        if not score.requires_grad:
            raise ExplainError("the model's output does not depend on the hooked layer")
        (grad,) = torch.autograd.grad(score, act, allow_unused=True)
        if grad is None:
            raise ExplainError("the model's output does not depend on the hooked layer")
    maps = combine(act.detach().float(), grad.float())
    return normalize(_per_sample(maps, x.shape[0]))


def _grad_cam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    weights = g.mean(dim=tuple(range(2, g.ndim)), keepdim=True)  # alpha_k: gradients averaged over positions
    return (weights * a).sum(1)


def _grad_cam_pp(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    spatial = tuple(range(2, g.ndim))
    g2, g3 = g.pow(2), g.pow(3)
    denom = 2 * g2 + (a * g3).sum(dim=spatial, keepdim=True)
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    weights = (alpha * g.clamp_min(0)).sum(dim=spatial, keepdim=True)
    return (weights * a).sum(1)


def grad_cam(model: nn.Module, x: torch.Tensor, target=None, layer=None) -> torch.Tensor:
    """Grad-CAM of class ``target`` (default: predicted) at ``layer`` (a name or module; default
    ``model.cam_layer``): ``ReLU(sum_k mean_p(dy_c/dA_k) A_k)`` normalised to [0, 1] per sample.

    Returns ``(B, *spatial)`` at the layer's resolution, or ``(B, views, *spatial)`` when the layer
    sees ``B * views`` rows (MultiView). All-zero maps are returned as zeros. For a GAP + linear head
    and the last feature layer this equals ``normalize(cam(...))``.
    """
    return _gradient_maps(model, x, target, layer, _grad_cam)


def grad_cam_pp(model: nn.Module, x: torch.Tensor, target=None, layer=None) -> torch.Tensor:
    """Grad-CAM++: per-position weights ``alpha = g^2 / (2 g^2 + sum_p A g^3)`` (``g = dy_c/dA``, the
    closed form for piecewise-linear networks), channel weights ``sum_p alpha ReLU(g)``.

    The paper's ``exp(y_c)`` factor is a positive per-sample constant that normalisation removes, so
    it is left out (it overflows for large logits). Same shapes and normalisation as :func:`grad_cam`.
    """
    return _gradient_maps(model, x, target, layer, _grad_cam_pp)


def class_maps(model: nn.Module, x: torch.Tensor, method: str = "gradcam", target=None, layer=None,
               size: Sequence[int] | None = None) -> torch.Tensor:
    """Maps in [0, 1] resized to ``size`` (default: the input's spatial size): what ``predict --maps``
    writes. ``method`` is ``"cam"``, ``"gradcam"`` or ``"gradcam++"``."""
    if method == "cam":
        maps = normalize(cam(model, x, target))
    elif method == "gradcam":
        maps = grad_cam(model, x, target, layer)
    elif method == "gradcam++":
        maps = grad_cam_pp(model, x, target, layer)
    else:
        raise ExplainError(f"unknown map method {method!r}; choose one of {', '.join(METHODS)}")
    return upsample(maps, tuple(x.shape[2:]) if size is None else size)


# -- PNG output -----------------------------------------------------------------------------------
def _numpy(a) -> np.ndarray:
    return a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _unit(m: np.ndarray) -> np.ndarray:
    """Maps already in [0, 1] unchanged; anything else ReLU'd and divided by its maximum."""
    m = np.nan_to_num(m.astype(np.float64))
    if m.size and (m.min() < 0 or m.max() > 1):
        m = np.clip(m, 0, None)
        m = m / m.max() if m.max() > 0 else m
    return m


def _resize(m: np.ndarray, size: Sequence[int]) -> np.ndarray:
    if tuple(m.shape) == tuple(size):
        return m
    return upsample(torch.from_numpy(np.ascontiguousarray(m)), size).double().numpy()


def _rgb(image: np.ndarray) -> np.ndarray:
    """A channel-first ``(C, H, W)`` image as RGB uint8 ``(H, W, 3)``: 3 or 4 channels as colour, any
    other count as the channel mean in grey; non-uint8 data scaled from its own min-max."""
    img = image[:3] if image.shape[0] in (3, 4) else image.mean(0, keepdims=True)
    if image.dtype == np.uint8:
        img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    else:
        img = img.astype(np.float64)
        lo, hi = float(img.min()), float(img.max())
        img = np.round((img - lo) / (hi - lo) * 255).astype(np.uint8) if hi > lo else np.zeros(img.shape, np.uint8)
    img = img.transpose(1, 2, 0)
    return np.ascontiguousarray(np.repeat(img, 3, -1) if img.shape[-1] == 1 else img)


def _layout(image, cam_map) -> tuple[np.ndarray, np.ndarray]:
    """``(channel-first image, map)`` -> ``(RGB uint8 (H, W, 3), map in [0, 1] at (H, W))``.

    2D: image ``(C, H, W)`` or ``(H, W)``, map ``(h, w)``. Views: image ``(views * c, H, W)`` and map
    ``(views, h, w)`` are tiled left to right into ``(H, views * W)``. 3D: image ``(C, D, H, W)``, map
    ``(d, h, w)``: the axial slice (first spatial axis) through the map's maximum.
    """
    img, m = _numpy(image), _unit(_numpy(cam_map))
    if m.ndim not in (2, 3):
        raise ExplainError(f"a map to write must be 2D or 3D (views or volume), got shape {m.shape}")
    if img.ndim == m.ndim == 2:
        img = img[None]
    if img.ndim == m.ndim == 3:  # views
        v = m.shape[0]
        if img.shape[0] % v:
            raise ExplainError(f"{img.shape[0]} image channels do not split into {v} views")
        c = img.shape[0] // v
        size = img.shape[1:]
        rgb = np.concatenate([_rgb(img[i * c:(i + 1) * c]) for i in range(v)], axis=1)
        return rgb, np.concatenate([_resize(m[i], size) for i in range(v)], axis=1)
    if img.ndim != m.ndim + 1:
        raise ExplainError(f"image of shape {img.shape} and map of shape {m.shape} do not match")
    m = _resize(m, img.shape[1:])
    if m.ndim == 3:  # a volume: the slice through the peak
        k = int(np.unravel_index(np.argmax(m), m.shape)[0])
        return _rgb(img[:, k]), m[k]
    return _rgb(img), m


def map_to_uint8(image, cam_map) -> np.ndarray:
    """The map as a grey uint8 (0-255) array at the image's exact (H, W) (see :class:`MapWriter`)."""
    _, m = _layout(image, cam_map)
    return np.round(np.clip(m, 0, 1) * 255).astype(np.uint8)


def overlay_map(image, cam_map, cmap: str = "jet", alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``: ``(1 - alpha) * image + alpha * colormap(map)``."""
    return _blend(*_layout(image, cam_map), cmap, alpha)


def _blend(rgb: np.ndarray, m: np.ndarray, cmap: str, alpha: float) -> np.ndarray:
    from matplotlib import colormaps

    colour = colormaps[cmap](np.clip(m, 0, 1))[..., :3] * 255.0
    out = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colour
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


class MapWriter:
    """Writes ``OUT_DIR/maps/<id>.png`` (grey map, uint8 0-255, the input image's exact size) and,
    unless ``overlays=None``, ``OUT_DIR/overlays/<id>.png`` (RGB, the colormap blended on the image).

    ``write(case_id, image, cam_map)`` takes the original image as read (channel-first: ``(C, H, W)``,
    ``(C, D, H, W)`` for a volume) and a map at any resolution: ``(h, w)``, ``(views, h, w)`` or
    ``(d, h, w)`` (see :func:`_layout` for views and volumes). Maps in [0, 1] are written as they
    are; other maps (raw CAM) are ReLU'd and divided by their maximum first. Writes are atomic.
    """

    def __init__(self, out_dir: str | Path, maps: str = "maps", overlays: str | None = "overlays",
                 cmap: str = "jet", alpha: float = 0.45):
        from matplotlib import colormaps

        if cmap not in colormaps:
            raise ExplainError(f"unknown colormap {cmap!r}")
        self.out_dir, self.maps, self.overlays = Path(out_dir), maps, overlays
        self.cmap, self.alpha = cmap, alpha

    def write(self, case_id: str, image, cam_map) -> dict[str, Path]:
        from medsight.data.imageio import write_png

        rgb, m = _layout(image, cam_map)
        grey = np.round(np.clip(m, 0, 1) * 255).astype(np.uint8)
        paths = {"map": self.out_dir / self.maps / f"{case_id}.png"}
        write_png(paths["map"], grey)
        if self.overlays:
            paths["overlay"] = self.out_dir / self.overlays / f"{case_id}.png"
            write_png(paths["overlay"], _blend(rgb, m, self.cmap, self.alpha))
        return paths

