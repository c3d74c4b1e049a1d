"""One 2D backbone shared over several views of a case (the 9 planar views of a nodule), scores averaged.

The input stacks the views along the channel axis: ``(B, views * channels_per_view, H, W)``. Each
view goes through the same backbone; the per-view logits are averaged (log-space averaging of
the view scores), so the model is a drop-in classifier for the classification recipe.
"""

from __future__ import annotations

import torch
from torch import nn

from medsight.models.registry import create_model, register_model


class MultiView(nn.Module):
    def __init__(self, backbone: nn.Module, views: int):
        super().__init__()
        self.backbone, self.views = backbone, views
        self.num_features = getattr(backbone, "num_features", None)
        self.cam_layer = "backbone." + backbone.cam_layer if hasattr(backbone, "cam_layer") else None

    def _per_view(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        if c % self.views:
            raise ValueError(f"{c} input channels do not split into {self.views} views")
        return x.reshape(b * self.views, c // self.views, *x.shape[2:])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps of every view: ``(B * views, F, h, w)``."""
        return self.backbone.forward_features(self._per_view(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.backbone.forward_head(features)
        return logits.reshape(-1, self.views, logits.shape[-1]).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.backbone.reset_classifier(num_classes)


@register_model
def multiview(in_channels: int = 9, num_classes: int = 2, views: int = 9, backbone: str = "resnet18",
              spatial_dims: int = 2, **backbone_options) -> MultiView:
    if spatial_dims != 2:
        raise TypeError("multiview takes 2D views (spatial_dims=2)")
    if in_channels % views:
        raise TypeError(f"in_channels={in_channels} is not a multiple of views={views}")
    net = create_model(backbone, in_channels=in_channels // views, num_classes=num_classes, **backbone_options)
    return MultiView(net, views)
