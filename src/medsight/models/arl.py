"""ARL-CNN: ResNets whose blocks add an attention term with no extra layers (Zhang et al., IEEE TMI 2019).

Each block computes::

    y = ReLU(x_s + F(x) + alpha * M(F(x)) * x_s)

``F(x)`` is the residual branch after its last batch norm, ``x_s`` the identity or projection
shortcut, ``M`` a softmax normalisation of ``F(x)`` and ``alpha`` a learnable scalar per block
(an ``nn.Parameter`` of shape ``()``, initialised to ``alpha_init``, default 0.001 as when the
paper fine-tunes ARL-CNN50). The attention term adds one parameter per block and no layers.

``attention_softmax`` chooses how ``M`` normalises (the paper leaves it open):

* ``"channel"`` (default): softmax across channels at each position, so ``M`` sums to 1 over the
  channel axis at every voxel. This is what public re-implementations do; with ``C`` channels a
  typical value is ``1 / C``.
* ``"spatial"``: softmax across all positions of each channel, so ``M`` sums to 1 over the
  spatial axes per channel; a typical value is ``1 / (H * W)``, so the term is small until
  ``alpha`` grows (or is initialised larger).

``fused`` (default on) computes the attention sum and the ReLU with one Triton kernel forward and
one backward (:mod:`medsight.models.arl_fused`) where it can: channel softmax, CUDA tensors in the
channels-last layout (as medsight's loop trains on a GPU), Triton installed; elsewhere, and with
``fused=False``, the block computes the same thing in eager torch. On an H100 the kernel brings
the term's GPU cost in training ARL-CNN50 from 57-62 % of ResNet-50's kernel time to 0.5-1.5 %
(benchmarks/RESULTS.md).

With ``alpha = 0`` a block is exactly MONAI's ResNet block of the same layout (the extra term is
an exact zero), so ``arlcnn14`` with every alpha set to 0 computes what ``resnet14`` computes
with the same weights; module and parameter names match the plain ResNet's, plus ``.alpha``.

Registered: ``arlcnn14`` (bottleneck, [1, 1, 1, 1]), ``arlcnn50`` (bottleneck, [3, 4, 6, 3]) and
``arlcnn18`` (basic block, [2, 2, 2, 2]); 2D or 3D through ``spatial_dims``; every option of
:class:`~medsight.models.resnet.ResNetClassifier` (``stem``, ``width``, ``dropout``) applies.
"""

from __future__ import annotations

import functools

import torch
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
from torch import nn

from medsight.models.registry import register_model
from medsight.models.resnet import ResNetClassifier

SOFTMAX_MODES = ("channel", "spatial")

ARL_LAYOUTS = {
    "arlcnn14": ("bottleneck", [1, 1, 1, 1]),
    "arlcnn18": ("basic", [2, 2, 2, 2]),
    "arlcnn50": ("bottleneck", [3, 4, 6, 3]),
}


def block_with(block: type[nn.Module], **options) -> functools.partial:
    """``block`` with keyword options bound, usable as MONAI ResNet's ``block`` argument.

    MONAI's ResNet instantiates its block class itself and reads ``block.expansion``; a partial
    carrying ``expansion`` lets a block take options beyond MONAI's constructor signature.
    """
    factory = functools.partial(block, **options)
    factory.expansion = block.expansion  # type: ignore[attr-defined]
    return factory


def attention_map(features: torch.Tensor, mode: str = "channel") -> torch.Tensor:
    """The ARL mask ``M(F)``: a softmax of ``features`` ``(B, C, *spatial)``, same shape.

    ``"channel"`` sums to 1 over ``C`` at every position; ``"spatial"`` sums to 1 over all
    positions of each channel.

    Two things keep this cheap on a GPU, where it runs at every block on the largest tensors:
    the softmax stays in the features' dtype (autocast would make a float32 copy; the kernel
    accumulates in float32 either way), and on a channels-last tensor it runs over a view whose
    channels are the innermost axis, instead of copying the tensor to the channels-first layout.
    """
    if mode not in SOFTMAX_MODES:
        raise ValueError(f"attention_softmax must be one of {SOFTMAX_MODES}, got {mode!r}")
    with torch.autocast(features.device.type, enabled=False):
        if features.stride(1) == 1 and features.shape[1] > 1:  # channels last: (B, *spatial, C) in memory
            last = features.movedim(1, -1)
            if mode == "channel":
                return torch.softmax(last, dim=-1).movedim(-1, 1)
            return torch.softmax(last.flatten(1, -2), dim=1).view_as(last).movedim(-1, 1)
        if mode == "channel":
            return torch.softmax(features, dim=1)
        return torch.softmax(features.flatten(2), dim=-1).view_as(features)


def attention_sum(out: torch.Tensor, residual: torch.Tensor, alpha: torch.Tensor, mode: str) -> torch.Tensor:
    """``out + residual + alpha * M(out) * residual``: the block's output before its activation.

    ``out + residual`` comes first, so at alpha = 0 the sum is bit-identical to MONAI's
    ``out += residual``."""
    return out + residual + alpha * attention_map(out, mode) * residual


def _check_options(alpha_init, attention_softmax) -> float:
    if attention_softmax not in SOFTMAX_MODES:
        raise TypeError(f"attention_softmax must be one of {SOFTMAX_MODES}, got {attention_softmax!r}")
    if isinstance(alpha_init, bool) or not isinstance(alpha_init, (int, float)):
        raise TypeError(f"alpha_init must be a number, got {alpha_init!r}")
    return float(alpha_init)


class _ARLMixin:
    """The attention residual combination shared by the basic and bottleneck ARL blocks."""

    def _init_arl(self, alpha_init: float, attention_softmax: str, fused: bool) -> None:
        self.alpha = nn.Parameter(torch.tensor(_check_options(alpha_init, attention_softmax)))
        self.attention_softmax = attention_softmax
        self.fused = bool(fused)

    def _combine(self, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.fused and self.attention_softmax == "channel" and isinstance(self.act, nn.ReLU):
            from medsight.models import arl_fused  # imports Triton: only when asked for

            if arl_fused.supports(out, residual):
                return arl_fused.fused_attention_relu(out, residual, self.alpha)
        return self.act(attention_sum(out, residual, self.alpha, self.attention_softmax))

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def extra_repr(self) -> str:
        return f"attention_softmax={self.attention_softmax!r}, fused={self.fused}"


class ARLBottleneck(_ARLMixin, ResNetBottleneck):
    """MONAI's bottleneck block (1x1, 3x3, 1x1 convolutions) with the ARL attention term."""

    def __init__(self, in_planes: int, planes: int, spatial_dims: int = 3, stride: int = 1, downsample=None,
                 act=("relu", {"inplace": True}), norm="batch", alpha_init: float = 0.001,
                 attention_softmax: str = "channel", fused: bool = True):
        super().__init__(in_planes, planes, spatial_dims, stride, downsample, act, norm)
        self._init_arl(alpha_init, attention_softmax, fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self._combine(out, self._shortcut(x))


class ARLBasicBlock(_ARLMixin, ResNetBlock):
    """MONAI's basic block (two 3x3 convolutions) with the ARL attention term."""

    def __init__(self, in_planes: int, planes: int, spatial_dims: int = 3, stride: int = 1, downsample=None,
                 act=("relu", {"inplace": True}), norm="batch", alpha_init: float = 0.001,
                 attention_softmax: str = "channel", fused: bool = True):
        super().__init__(in_planes, planes, spatial_dims, stride, downsample, act, norm)
        self._init_arl(alpha_init, attention_softmax, fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self._combine(out, self._shortcut(x))


_ARL_BLOCKS = {"basic": ARLBasicBlock, "bottleneck": ARLBottleneck}


class ARLResNet(ResNetClassifier):
    """A :class:`ResNetClassifier` built from ARL blocks (same interface, same module names)."""

    def __init__(self, block: str, layers, in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2,
                 alpha_init: float = 0.001, attention_softmax: str = "channel", fused: bool = True, **options):
        if block not in _ARL_BLOCKS:
            raise TypeError(f"block must be one of {sorted(_ARL_BLOCKS)}, got {block!r}")
        alpha_init = _check_options(alpha_init, attention_softmax)
        if not isinstance(fused, bool):
            raise TypeError(f"fused must be true or false, got {fused!r}")
        factory = block_with(_ARL_BLOCKS[block], alpha_init=alpha_init, attention_softmax=attention_softmax,
                             fused=fused)
        super().__init__(factory, layers, in_channels, num_classes, spatial_dims, **options)

    def alphas(self) -> list[nn.Parameter]:
        """The per-block attention weights, in forward order."""
        return [m.alpha for m in self.modules() if isinstance(m, _ARLMixin)]


def _builder(name: str):
    block, layers = ARL_LAYOUTS[name]

    def build(in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2, alpha_init: float = 0.001,
              attention_softmax: str = "channel", fused: bool = True, **options) -> ARLResNet:
        return ARLResNet(block, layers, in_channels, num_classes, spatial_dims, alpha_init=alpha_init,
                         attention_softmax=attention_softmax, fused=fused, **options)

    build.__name__ = name
    build.__doc__ = f"ARL-CNN with {block} blocks {layers}; see :mod:`medsight.models.arl`."
    return build


for _name in ARL_LAYOUTS:
    register_model(_builder(_name))
