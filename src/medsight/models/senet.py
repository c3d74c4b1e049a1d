"""SE-ResNets: bottleneck blocks with squeeze-and-excitation (Hu et al., CVPR 2018).

The SE layer (MONAI's ``ChannelSELayer``: global average pool, FC to ``C / reduction``, ReLU, FC
back to ``C``, sigmoid, channel-wise rescaling) acts on the residual branch after its last batch
norm and before the addition of the shortcut, as in the SE-ResNet of the paper::

    y = ReLU(x_s + SE(F(x)))

Registered: ``senet14`` (bottleneck, [1, 1, 1, 1]; the ARL-CNN paper's SE-Net14 baseline) and
``senet50`` (bottleneck, [3, 4, 6, 3]); 2D or 3D through ``spatial_dims``; option
``se_reduction`` (default 16) plus every :class:`~medsight.models.resnet.ResNetClassifier` option.
Module names match the plain ResNet's, plus ``layerN.M.se.fc.{0,2}`` for the SE layers.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import ChannelSELayer
from monai.networks.nets.resnet import ResNetBottleneck

from medsight.models.registry import register_model
from medsight.models.arl import block_with
from medsight.models.resnet import ResNetClassifier

SE_LAYOUTS = {
    "senet14": [1, 1, 1, 1],
    "senet50": [3, 4, 6, 3],
}


class SEBottleneck(ResNetBottleneck):
    """MONAI's bottleneck block with squeeze-and-excitation on the residual branch."""

    def __init__(self, in_planes: int, planes: int, spatial_dims: int = 3, stride: int = 1, downsample=None,
                 act=("relu", {"inplace": True}), norm="batch", reduction: int = 16):
        super().__init__(in_planes, planes, spatial_dims, stride, downsample, act, norm)
        channels = planes * self.expansion
        # never squeeze below one channel (narrow test-sized models)
        self.se = ChannelSELayer(spatial_dims, channels, r=min(reduction, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.act(out + residual)


class SEResNet(ResNetClassifier):
    """A :class:`ResNetClassifier` built from :class:`SEBottleneck` blocks."""

    def __init__(self, layers, in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2,
                 se_reduction: int = 16, **options):
        if isinstance(se_reduction, bool) or not isinstance(se_reduction, int) or se_reduction < 1:
            raise TypeError(f"se_reduction must be a positive integer, got {se_reduction!r}")
        super().__init__(block_with(SEBottleneck, reduction=se_reduction), layers, in_channels, num_classes,
                         spatial_dims, **options)


def _builder(name: str):
    layers = SE_LAYOUTS[name]

    def build(in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2, se_reduction: int = 16,
              **options) -> SEResNet:
        return SEResNet(layers, in_channels, num_classes, spatial_dims, se_reduction=se_reduction, **options)

    build.__name__ = name
    build.__doc__ = f"SE-ResNet with bottleneck blocks {layers}; see :mod:`medsight.models.senet`."
    return build


for _name in SE_LAYOUTS:
    register_model(_builder(_name))
