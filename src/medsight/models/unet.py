"""U-Net for binary or multi-class segmentation, 2D or 3D (MONAI's residual U-Net)."""

from __future__ import annotations

from monai.networks.nets import UNet

from medsight.models.registry import register_model


@register_model
def unet(in_channels: int = 3, num_classes: int = 1, spatial_dims: int = 2,
         channels: tuple[int, ...] = (16, 32, 64, 128, 256), num_res_units: int = 2,
         norm: str = "batch", dropout: float = 0.0) -> UNet:
    """``num_classes=1`` gives one foreground logit per pixel (sigmoid); more gives softmax logits.
    Each level halves the resolution, so inputs must be divisible by 2**(len(channels) - 1)."""
    channels = tuple(channels)
    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
                channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=num_res_units,
                norm=norm, dropout=dropout)
