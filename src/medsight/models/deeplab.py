"""DeepLabv3+ (Chen et al., ECCV 2018) on a registry ResNet encoder, as MB-DCNN's segmentation networks.

Layout (the MB-DCNN authors' DeepLabv3+, with a ResNet in place of their aligned Xception):

* encoder: a registry ResNet (``encoder``, ``encoder_options``) whose last stage is dilated
  (strides 1, 3x3 convolutions dilated 2), so its features are at output stride 16;
* ASPP on them: a 1x1 branch, three 3x3 branches dilated 6 / 12 / 18 and image pooling (global
  mean, 1x1 conv, broadcast back), concatenated and fused by a 1x1 conv to ``aspp_channels``
  (each conv with BN + ReLU), then dropout 0.5;
* guide (``guide_channels`` > 0, enhanced-SN): a map of the lesion (mask-CN's localisation map)
  resized to the ASPP grid, joined to the ASPP output and fused back to ``aspp_channels`` by a
  1x1 conv + BN + ReLU;
* decoder: the ASPP output upsampled to stride 4 and joined to a 48-channel 1x1 projection of the
  encoder's stride-4 features (``layer1``), two 3x3 convs (``decoder_channels``, dropout 0.5 / 0.1),
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

from medsight.models.registry import create_model, register_model

ASPP_RATES = (6, 12, 18)


def dilate_stage(stage: nn.Module, rate: int = 2) -> None:
    """Replace the stride of every convolution of ``stage`` by dilation ``rate`` (in place): the
    stage keeps its input's resolution and its receptive field grows as if it had subsampled."""
    for module in stage.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
            if module.kernel_size[0] > 1:
                module.dilation = (rate, rate)
                module.padding = (module.kernel_size[0] // 2 * rate, module.kernel_size[1] // 2 * rate)


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
                 shortcut_channels: int = 48, guide_channels: int = 0, dropout: float = 0.5):
        super().__init__()
        self.encoder = create_model(encoder, in_channels=in_channels, num_classes=2, spatial_dims=2,
                                    **(encoder_options or {}))
        if not all(hasattr(self.encoder, f"layer{k}") for k in range(1, 5)):
            raise TypeError(f"encoder {encoder!r} is not a ResNet (conv1, layer1..layer4)")
        self.encoder.reset_classifier(0)
        dilate_stage(self.encoder.layer4, 2)  # output stride 32 -> 16
        with torch.no_grad():  # channel counts of the stride-4 and the last features
            low, high = self.features(torch.zeros(1, in_channels, 32, 32))
        self.aspp = ASPP(high.shape[1], aspp_channels)
        self.aspp_dropout = nn.Dropout(dropout)
        self.guide_channels = guide_channels
        self.guide = conv_bn_relu(aspp_channels + guide_channels, aspp_channels, 1) if guide_channels else None
        self.shortcut = conv_bn_relu(low.shape[1], shortcut_channels, 1)
        self.decoder = nn.Sequential(conv_bn_relu(aspp_channels + shortcut_channels, decoder_channels, 3),
                                     nn.Dropout(dropout),
                                     conv_bn_relu(decoder_channels, decoder_channels, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        for module in [self.aspp, self.guide, self.shortcut, self.decoder, self.classifier]:
            if module is not None:
                _init(module)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stride-4 features, stride-16 features) of the encoder."""
        e = self.encoder
        x = e.act(e.bn1(e.conv1(x)))
        if not e.no_max_pool:
            x = e.maxpool(x)
        low = e.layer1(x)
        return low, e.layer4(e.layer3(e.layer2(low)))

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
