"""DeepLabv3+ (Chen et al., ECCV 2018) on a registry encoder, as MB-DCNN's segmentation networks.

Layout (the MB-DCNN authors' DeepLabv3+):

* encoder: a registry classifier (``encoder``, ``encoder_options``) built at ``output_stride`` 16
  (its last stage dilated instead of subsampling) that gives ``forward_levels(x)`` -> (stride-4
  features, last features) and ``level_channels``: a ResNet (``resnet18`` ...: ``layer1`` and
  ``layer4``) or the paper's aligned Xception (``xception``: the second entry block's inner
  features and the exit flow's);
* ASPP on the last features: a 1x1 branch, three 3x3 branches dilated 6 / 12 / 18 and image
  pooling (global mean, 1x1 conv, broadcast back), concatenated and fused by a 1x1 conv to
  ``aspp_channels`` (each conv with BN + ReLU), then dropout 0.5;
* guide (``guide_channels`` > 0, enhanced-SN): a map of the lesion (mask-CN's localisation map)
  resized to the ASPP grid, joined to the ASPP output and fused back to ``aspp_channels`` by a
  1x1 conv + BN + ReLU;
* decoder: the ASPP output upsampled to stride 4 and joined to a ``shortcut_channels`` 1x1
  projection of the stride-4 features, two 3x3 convs (``decoder_channels``, dropout 0.5 / 0.1),
  a 1x1 classifier, upsampled bilinearly to the input size.

Every spatial size works (the upsampling goes to the exact size of the level above), also the
transposed shape of a rotated non-square image. Weights start as the authors' (Kaiming, fan-out).
ImageNet weights for the encoder come from a local file through
:func:`medsight.models.pretrained.load_pretrained` applied to ``model.encoder``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medsight.errors import ConfigError
from medsight.models.registry import create_model, register_model

ASPP_RATES = (6, 12, 18)


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2 * dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and an image-pooling branch, fused by 1x1."""

    def __init__(self, c_in: int, c_out: int, rates: tuple[int, ...] = ASPP_RATES):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(c_in, c_out, 1)]
                                      + [conv_bn_relu(c_in, c_out, 3, r) for r in rates])
        self.pool = conv_bn_relu(c_in, c_out, 1)
        self.project = conv_bn_relu(c_out * (len(rates) + 2), c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x.mean((2, 3), keepdim=True)).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1))


class DeepLabV3Plus(nn.Module):
    """``forward(x, guide=None)`` -> per-pixel logits ``(B, num_classes, H, W)``; ``guide``
    ``(B, guide_channels, h, w)`` at any resolution when the network has guide channels."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, encoder: str = "resnet18",
                 encoder_options: dict | None = None, aspp_channels: int = 256, decoder_channels: int = 256,
                 shortcut_channels: int = 48, guide_channels: int = 0, dropout: float = 0.5,
                 output_stride: int = 16):
        super().__init__()
        try:
            self.encoder = create_model(encoder, in_channels=in_channels, num_classes=2, spatial_dims=2,
                                        output_stride=output_stride, **(encoder_options or {}))
        except ConfigError as exc:
            raise TypeError(f"encoder {encoder!r} with encoder_options {encoder_options or {}}: {exc}") from None
        if not hasattr(self.encoder, "forward_levels"):
            raise TypeError(f"encoder {encoder!r} gives no stride-4 features (forward_levels); use a resnet or xception")
        self.encoder.reset_classifier(0)
        low_channels, high_channels = self.encoder.level_channels
        self.aspp = ASPP(high_channels, aspp_channels)
        self.aspp_dropout = nn.Dropout(dropout)
        self.guide_channels = guide_channels
        self.guide = conv_bn_relu(aspp_channels + guide_channels, aspp_channels, 1) if guide_channels else None
        self.shortcut = conv_bn_relu(low_channels, shortcut_channels, 1)
        self.decoder = nn.Sequential(conv_bn_relu(aspp_channels + shortcut_channels, decoder_channels, 3),
                                     nn.Dropout(dropout),
                                     conv_bn_relu(decoder_channels, decoder_channels, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        for module in [self.aspp, self.guide, self.shortcut, self.decoder, self.classifier]:
            if module is not None:
                _init(module)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stride-4 features, stride-16 features) of the encoder."""
        return self.encoder.forward_levels(x)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        if (guide is None) != (self.guide is None):
            raise ValueError("this network takes a guide map" if guide is None else "this network takes no guide map")
        low, high = self.features(x)
        y = self.aspp_dropout(self.aspp(high))
        if self.guide is not None:
            g = F.interpolate(guide.to(y.dtype), size=y.shape[2:], mode="bilinear", align_corners=False)
            y = self.guide(torch.cat([y, g], 1))
        y = F.interpolate(y, size=low.shape[2:], mode="bilinear", align_corners=False)
        y = self.classifier(self.decoder(torch.cat([y, self.shortcut(low)], 1)))
        return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_model
def deeplabv3plus(in_channels: int = 3, num_classes: int = 1, spatial_dims: int = 2, **options) -> DeepLabV3Plus:
    """DeepLabv3+ (coarse-SN); ``guide_channels: 1`` makes MB-DCNN's enhanced-SN."""
    if spatial_dims != 2:
        raise TypeError("deeplabv3plus is 2D only")
    return DeepLabV3Plus(in_channels, num_classes, **options)
