"""ResNet classifiers for 2D and 3D, built on MONAI's ResNet with the usual ImageNet layout.

MONAI's defaults use a stride-1 first convolution (4x the compute in 2D); we pass
``conv1_t_stride=2, bias_downsample=False`` for the standard layout, and ``stem="small"``
(3x3 stride-1 convolution, no max-pool) for tiny inputs such as 28-px MedMNIST images.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn

from medsight.models.registry import register_model

LAYOUTS = {
    "resnet14": ("bottleneck", [1, 1, 1, 1]),  # ARL-CNN14's baseline: stem + 4 bottlenecks + FC
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}


class ResNetClassifier(ResNet):
    cam_layer = "layer4"

    def __init__(self, block, layers, in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2,
                 stem: str = "imagenet", width: int = 64, dropout: float = 0.0):
        if stem not in ("imagenet", "small"):
            raise TypeError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        small = stem == "small"
        super().__init__(block, layers, [width, 2 * width, 4 * width, 8 * width], spatial_dims=spatial_dims,
                         n_input_channels=in_channels, conv1_t_size=3 if small else 7,
                         conv1_t_stride=1 if small else 2, no_max_pool=small, num_classes=num_classes,
                         bias_downsample=False)
        self.num_features = self.fc.in_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(features), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier for ``num_classes``; 0 removes it (``forward_head`` then gives the pooled
        features), as timm's ``reset_classifier(0)``."""
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


def _builder(name: str):
    block, layers = LAYOUTS[name]

    def build(in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2, **options) -> ResNetClassifier:
        return ResNetClassifier(block, layers, in_channels, num_classes, spatial_dims, **options)

    build.__name__ = name
    return build


for _name in LAYOUTS:
    register_model(_builder(_name))
