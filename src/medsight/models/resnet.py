"""ResNet classifiers for 2D and 3D, built on MONAI's ResNet with the usual ImageNet layout.

MONAI's defaults use a stride-1 first convolution (4x the compute in 2D); we pass
``conv1_t_stride=2, bias_downsample=False`` for the standard layout, and ``stem="small"``
(3x3 stride-1 convolution, no max-pool) for tiny inputs such as 28-px MedMNIST images.

As a segmentation encoder (DeepLabv3+), ``output_stride`` 16 (or 8) dilates the last stage (and the
one before) instead of subsampling, and :meth:`ResNetClassifier.forward_levels` gives ``layer1``'s
features (stride 4 with the ImageNet stem) beside the last ones.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn

from medsight.models.registry import register_model

def dilate_stage(stage: nn.Module, rate: int = 2) -> None:
    """Replace the stride of every convolution of ``stage`` by dilation ``rate`` (in place): the
    stage keeps its input's resolution and its receptive field grows as if it had subsampled."""
    for module in stage.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            dims = len(module.kernel_size)
            module.stride = (1,) * dims
            if max(module.kernel_size) > 1:
                module.dilation = (rate,) * dims
                module.padding = tuple(k // 2 * rate for k in module.kernel_size)


LAYOUTS = {
    "resnet14": ("bottleneck", [1, 1, 1, 1]),  # ARL-CNN14's baseline: stem + 4 bottlenecks + FC
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}


class ResNetClassifier(ResNet):
    cam_layer = "layer4"

    def __init__(self, block, layers, in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2,
                 stem: str = "imagenet", width: int = 64, dropout: float = 0.0, output_stride: int = 32):
        if stem not in ("imagenet", "small"):
            raise TypeError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        small = stem == "small"
        super().__init__(block, layers, [width, 2 * width, 4 * width, 8 * width], spatial_dims=spatial_dims,
                         n_input_channels=in_channels, conv1_t_size=3 if small else 7,
                         conv1_t_stride=1 if small else 2, no_max_pool=small, num_classes=num_classes,
                         bias_downsample=False)
        self.num_features = self.fc.in_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.level_channels = (width * self.layer1[0].expansion, self.num_features)  # layer1, layer4
        if output_stride <= 16:
            dilate_stage(self.layer4, 2 if output_stride == 16 else 4)
        if output_stride == 8:
            dilate_stage(self.layer3, 2)

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(``layer1``'s features, ``layer4``'s) for a segmentation decoder."""
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_levels(x)[1]

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
