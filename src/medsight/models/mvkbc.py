"""MV-KBC (Xie et al., IEEE TMI 2019): multi-view knowledge-based collaborative nodule classification.

The input stacks the planar views of a nodule, each as up to three patches (OA, HVV, HS), view-major
along the channel axis: ``(B, views * patches, S, S)`` (``data.preprocess: nodule_views``).

- A **stream** per patch of a view: a registry backbone on one channel, global average pooling,
  and the authors' head: FC ``hidden[0]`` ReLU, dropout, FC ``hidden[1]`` ReLU, dropout, FC 2, softmax
  (2048 / 1024 / 0.5 with ResNet-50 in the paper). ``share_views`` shares one stream per patch type
  across the views (the CPU setting); otherwise every view has its own (27 in the paper).
- A **KBC** per view (knowledge-based collaborative submodel): the view's patch softmaxes side by
  side, one learned layer to 2 units, softmax.
- The **view weighting**: the views' KBC softmaxes side by side, one learned layer to a single
  sigmoid unit, the malignancy probability. With ``size_input`` the layer also reads one number
  per nodule, its size (medsight's option, not the paper's: the log of the equivalent diameter,
  see :mod:`medsight.recipes.mvkbc`), so that the views add to what size alone says.

``forward`` returns the logits ``(0, z)`` of the two classes (benign, malignant), so that the
softmax recipes read ``sigmoid(z)`` as the malignancy probability; :meth:`MVKBC.view_probs` gives
each view's KBC output (what pre-training each view trains) and :meth:`MVKBC.stream_maps` the
streams' last feature maps (for Grad-CAM per view).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medsight.models.registry import create_model, register_model


class PatchStream(nn.Module):
    def __init__(self, backbone: str, hidden: tuple[int, int], dropout: float, **backbone_options):
        super().__init__()
        self.backbone = create_model(backbone, in_channels=1, num_classes=2, spatial_dims=2, **backbone_options)
        self.backbone.reset_classifier(0)  # the stream's own head replaces it (timm's "no classifier")
        n = self.backbone.num_features
        self.head = nn.Sequential(nn.Linear(n, hidden[0]), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden[0], hidden[1]), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden[1], 2))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, maps: torch.Tensor) -> torch.Tensor:
        """The 2-class softmax of pooled feature maps."""
        return self.head(torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1)).softmax(1)


class MVKBC(nn.Module):
    def __init__(self, views: int = 9, patches: int = 3, backbone: str = "resnet50", share_views: bool = False,
                 hidden: tuple[int, int] = (2048, 1024), dropout: float = 0.5, size_input: bool = False,
                 **backbone_options):
        super().__init__()
        self.views, self.patches, self.share_views, self.size_input = views, patches, share_views, size_input
        n_streams = patches if share_views else views * patches
        self.streams = nn.ModuleList(PatchStream(backbone, tuple(hidden), dropout, **backbone_options)
                                     for _ in range(n_streams))
        self.kbc = nn.ModuleList(nn.Linear(2 * patches, 2) for _ in range(views))
        self.fusion = nn.Linear(2 * views + int(size_input), 1)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        if c != self.views * self.patches:
            raise ValueError(f"{c} input channels for {self.views} views x {self.patches} patches")
        return x.reshape(b, self.views, self.patches, 1, *x.shape[2:])

    def stream_maps(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """The last feature map of each view's each patch stream: ``maps[v][p]``, (B, F, h, w)."""
        x = self._split(x)
        b = x.shape[0]
        if self.share_views:  # one backbone call per patch type, over every view at once
            per_patch = [self.streams[p].forward_features(x[:, :, p].flatten(0, 1)) for p in range(self.patches)]
            return [[per_patch[p].unflatten(0, (b, self.views))[:, v] for p in range(self.patches)]
                    for v in range(self.views)]
        return [[self.streams[v * self.patches + p].forward_features(x[:, v, p]) for p in range(self.patches)]
                for v in range(self.views)]

    def _stream(self, v: int, p: int) -> PatchStream:
        return self.streams[p if self.share_views else v * self.patches + p]

    def view_probs_from_maps(self, maps: list[list[torch.Tensor]]) -> torch.Tensor:
        """Each view's KBC softmax, (B, views, 2)."""
        return self.view_probs_from_patch_probs([[self._stream(v, p).forward_head(m) for p, m in enumerate(view_maps)]
                                                 for v, view_maps in enumerate(maps)])

    def view_probs_from_patch_probs(self, probs: list[list[torch.Tensor]]) -> torch.Tensor:
        """Each view's KBC softmax, (B, views, 2), from its patch streams' softmaxes ``probs[v][p]``."""
        return torch.stack([self.kbc[v](torch.cat(view, 1)).softmax(1) for v, view in enumerate(probs)], 1)

    def view_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.view_probs_from_maps(self.stream_maps(x))

    def logit_from_views(self, view_probs: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        """z of the malignancy probability sigmoid(z), (B,); ``size`` (B,) with ``size_input``."""
        inputs = view_probs.flatten(1)
        if self.size_input:
            if size is None:
                raise ValueError("this MV-KBC reads each nodule's size: pass size")
            inputs = torch.cat([inputs, size.to(inputs).reshape(-1, 1)], 1)
        return self.fusion(inputs)[:, 0]

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        z = self.logit_from_views(self.view_probs(x), size)
        return torch.stack([torch.zeros_like(z), z], 1)


@register_model
def mvkbc(in_channels: int = 27, num_classes: int = 2, spatial_dims: int = 2, views: int = 9, patches: int = 3,
          backbone: str = "resnet50", share_views: bool = False, hidden=(2048, 1024), dropout: float = 0.5,
          size_input: bool = False, **backbone_options) -> MVKBC:
    if spatial_dims != 2:
        raise TypeError("mvkbc takes 2D views (spatial_dims=2)")
    if num_classes != 2:
        raise TypeError(f"mvkbc predicts benign vs malignant (num_classes=2), got num_classes={num_classes}")
    if in_channels != views * patches:
        raise TypeError(f"in_channels={in_channels} is not views x patches = {views} x {patches}")
    if len(hidden) != 2:
        raise TypeError(f"hidden takes the two FC widths of each stream's head, got {hidden}")
    return MVKBC(views, patches, backbone, share_views, tuple(hidden), dropout, size_input, **backbone_options)
