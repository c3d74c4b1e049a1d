"""RAN14: a residual attention network (Wang et al., CVPR 2017) scaled to 14 layers.

Wang et al. count depth along the trunk; ``ran14`` keeps ResNet14's trunk (stem convolution,
one bottleneck unit per stage = 4 x 3 convolutions, FC: 14 layers) and turns the unit of each of
the first three stages into an attention module whose output is the attention residual learning
form::

    H(x) = (1 + M(x)) * T(x)

``T`` is the stage's bottleneck unit (trunk branch, with its stride and projection shortcut) and
``M`` a soft mask in (0, 1) computed from the same input ``x`` by a bottom-up / top-down hourglass.
Exact layout (``w`` = ``width``, default 64; ``U(a -> b)`` = a bottleneck residual unit of MONAI's
ResNet, 1x1 / 3x3 / 1x1 convolutions with inner width ``b / 4``, projection shortcut when
``a != b``; ``P`` = 3x3 max-pool with stride 2; ``up`` = (bi/tri)linear interpolation)::

    stem      conv 7x7/2, BN, ReLU, max-pool 3x3/2        ("small" stem: conv 3x3/1, no pool)
    layer1    attention module; trunk U(w -> 4w), stride 1
              mask  P, U(w -> 4w) [skip: U(4w -> 4w)], P, U(4w -> 4w), up + skip, U(4w -> 4w), up
    layer2    attention module; trunk U(4w -> 8w), stride 2
              mask  P (to the trunk's resolution), P, U(4w -> 8w), up
    layer3    attention module; trunk U(8w -> 16w), stride 2
              mask  P, P, U(8w -> 16w), up
    layer4    plain unit U(16w -> 32w), stride 2
    every mask ends  conv 1x1, BN, ReLU, conv 1x1, sigmoid  (at the trunk's output size)
    head      global average pool, dropout, FC

i.e. ``mask_levels=(2, 1, 1, 0)``: two down/up levels (one skip connection) at the first stage,
one at the next two, none at the last, as Attention-56 has no attention module in its last
(7x7) stage. ``mask_levels=(2, 1, 1, 1)`` adds a one-level attention module to the last stage
too (27.4 M parameters instead of 13.0 M at width 64 and 2 classes; ResNet14 has 8.0 M: the 1x1
mask convolutions at 2048 channels dominate). ``mask_upsample="nearest"`` replaces the linear
interpolation (e.g. where deterministic CUDA kernels are required: trilinear backward is not
deterministic on CUDA).

The model is a :class:`~medsight.models.resnet.ResNetClassifier` (``forward_features``,
``forward_head``, ``reset_classifier``, ``num_features``, ``cam_layer = "layer4"``); its trunk has
ResNet14's module names, the masks live under ``layerN.0.mask``. 2D or 3D through ``spatial_dims``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.networks.nets.resnet import ResNetBottleneck
from torch import nn

from medsight.models.registry import register_model
from medsight.models.resnet import ResNetClassifier

_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _unit(in_ch: int, out_ch: int, spatial_dims: int, act, norm) -> ResNetBottleneck:
    """A stride-1 bottleneck residual unit ``in_ch -> out_ch`` (projection shortcut if needed)."""
    shortcut = None
    if in_ch != out_ch:
        shortcut = nn.Sequential(Conv[Conv.CONV, spatial_dims](in_ch, out_ch, kernel_size=1, bias=False),
                                 get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=out_ch))
    return ResNetBottleneck(in_ch, out_ch // ResNetBottleneck.expansion, spatial_dims, 1, shortcut, act, norm)


class SoftMaskBranch(nn.Module):
    """Bottom-up / top-down mask: ``(B, in_ch, *S)`` -> ``(B, out_ch, *size)`` in (0, 1).

    ``stride`` pools first to the trunk's resolution; then ``levels`` times max-pool + residual
    unit, a skip connection (one residual unit) at every level but the lowest, and on the way up
    interpolation + skip + residual unit; finally interpolation to ``size``, two 1x1 convolutions
    and a sigmoid.
    """

    def __init__(self, in_ch: int, out_ch: int, spatial_dims: int, stride: int = 1, levels: int = 1,
                 upsample: str = "linear", act=("relu", {"inplace": True}), norm="batch"):
        super().__init__()
        if levels < 1:
            raise ValueError(f"a soft mask needs at least one level, got {levels}")
        conv = Conv[Conv.CONV, spatial_dims]
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        self.entry_pools = 0 if stride == 1 else 1
        self.down = nn.ModuleList([_unit(in_ch if i == 0 else out_ch, out_ch, spatial_dims, act, norm)
                                   for i in range(levels)])
        self.skip = nn.ModuleList([_unit(out_ch, out_ch, spatial_dims, act, norm) for _ in range(levels - 1)])
        self.up = nn.ModuleList([_unit(out_ch, out_ch, spatial_dims, act, norm) for _ in range(levels - 1)])
        self.head = nn.Sequential(conv(out_ch, out_ch, kernel_size=1, bias=False),
                                  get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=out_ch),
                                  get_act_layer(name=act),
                                  conv(out_ch, out_ch, kernel_size=1))
        self.mode = _LINEAR[spatial_dims] if upsample == "linear" else "nearest"

    def _resize(self, h: torch.Tensor, size) -> torch.Tensor:
        if tuple(h.shape[2:]) == tuple(size):
            return h
        align = False if self.mode != "nearest" else None
        return F.interpolate(h, size=tuple(size), mode=self.mode, align_corners=align)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        h = x
        for _ in range(self.entry_pools):
            h = self.pool(h)
        skips = []
        for i, down in enumerate(self.down):
            h = down(self.pool(h))
            if i < len(self.skip):
                skips.append(self.skip[i](h))
        for i in reversed(range(len(self.up))):
            h = self.up[i](self._resize(h, skips[i].shape[2:]) + skips[i])
        return torch.sigmoid(self.head(self._resize(h, size)))


class AttentionBottleneck(ResNetBottleneck):
    """An attention module whose trunk is MONAI's bottleneck unit: ``(1 + M(x)) * T(x)``."""

    def __init__(self, in_planes: int, planes: int, spatial_dims: int = 3, stride: int = 1, downsample=None,
                 act=("relu", {"inplace": True}), norm="batch", mask_levels: int = 1, upsample: str = "linear"):
        super().__init__(in_planes, planes, spatial_dims, stride, downsample, act, norm)
        self.mask = SoftMaskBranch(in_planes, planes * self.expansion, spatial_dims, stride, mask_levels,
                                   upsample, act, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trunk = super().forward(x)
        return (1.0 + self.mask(x, trunk.shape[2:])) * trunk


class _StageBlocks:
    """Block factory for MONAI's ResNet: an attention module or a plain unit, chosen per stage."""

    expansion = ResNetBottleneck.expansion

    def __init__(self, width: int, mask_levels: Sequence[int], upsample: str):
        self.width, self.mask_levels, self.upsample = width, tuple(mask_levels), upsample

    def __call__(self, in_planes: int, planes: int, spatial_dims: int = 3, stride: int = 1, downsample=None,
                 act=("relu", {"inplace": True}), norm="batch") -> nn.Module:
        stage = (planes // self.width).bit_length() - 1  # stage k has planes = width * 2**k
        levels = self.mask_levels[stage]
        if levels == 0:
            return ResNetBottleneck(in_planes, planes, spatial_dims, stride, downsample, act, norm)
        return AttentionBottleneck(in_planes, planes, spatial_dims, stride, downsample, act, norm,
                                   mask_levels=levels, upsample=self.upsample)


class ResidualAttentionNet(ResNetClassifier):
    """A bottleneck ResNet whose stage units are attention modules (see the module docstring)."""

    def __init__(self, layers: Sequence[int] = (1, 1, 1, 1), in_channels: int = 3, num_classes: int = 2,
                 spatial_dims: int = 2, mask_levels: Sequence[int] = (2, 1, 1, 0), mask_upsample: str = "linear",
                 width: int = 64, **options):
        levels = tuple(mask_levels) if isinstance(mask_levels, (list, tuple)) else None
        if levels is None or len(levels) != 4 or not all(isinstance(v, int) and v >= 0 for v in levels):
            raise TypeError(f"mask_levels must be 4 non-negative integers (one per stage), got {mask_levels!r}")
        if mask_upsample not in ("linear", "nearest"):
            raise TypeError(f"mask_upsample must be 'linear' or 'nearest', got {mask_upsample!r}")
        super().__init__(_StageBlocks(width, levels, mask_upsample), list(layers), in_channels, num_classes,
                         spatial_dims, width=width, **options)
        self.mask_levels = levels


@register_model
def ran14(in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2, mask_levels=(2, 1, 1, 0),
          mask_upsample: str = "linear", **options) -> ResidualAttentionNet:
    """RAN14: ResNet14's trunk, attention modules in stages 1-3; see :mod:`medsight.models.ran`."""
    return ResidualAttentionNet((1, 1, 1, 1), in_channels, num_classes, spatial_dims, mask_levels=mask_levels,
                                mask_upsample=mask_upsample, **options)
