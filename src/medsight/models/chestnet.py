"""ChestNet / Thorax-Net (Wang & Xia 2018; IEEE JBHI 2020): a classifier plus an attention branch
that classifies from the classifier's own class activation maps.

From the papers (docs/methods.md):

* a **classification branch**: a ResNet, global average pooling and one linear layer giving one
  sigmoid output per finding (14 on ChestX-ray14);
* an **attention branch** that turns the classification branch's last feature maps into one
  attention map per class with Grad-CAM-like weights, and classifies from those maps;
* the **diagnosis averages both branches**.

Open in the papers (our choices, each an option):

* the backbone: any registry classifier with ``forward_features`` / ``forward_head`` and an
  ``fc`` linear layer (``backbone="resnet18"``, default; its options such as ``width``, ``stem``,
  ``dropout`` pass through);
* the attention maps. For a GAP + linear head the Grad-CAM weight of channel ``k`` for class ``c``
  (the gradient of logit ``c`` w.r.t. ``F_k`` averaged over positions) is ``w_ck / n_positions``,
  so Grad-CAM here *is* the CAM up to a positive scale: ``CAM_c = sum_k w_ck F_k`` with ``w`` the
  classification branch's linear weights (no bias). ``normalise`` turns it into a map over positions:

  - ``"softmax"`` (default): ``A_c = softmax_over_positions(ReLU(CAM_c) / temperature)``. Each map
    is a distribution (non-negative, sums to 1 over positions). Positions with no positive evidence
    all get the same baseline weight, so a flat or all-negative CAM gives the uniform map and the
    attention pooling below reduces to global average pooling;
  - ``"sigmoid"``: ``A_c = sigmoid(CAM_c / temperature)`` at each position (in (0, 1), not summing
    to 1; no ReLU first, which would pin every position at >= 0.5), and pooling divides by
    ``sum_p A_c(p)``, so it is again a weighted average of positions.

  ``detach_cam=True`` (default) computes the maps without gradient, as Grad-CAM is a read-out of a
  trained classifier: the attention branch's loss then trains its own layers and, through the
  pooled features, the backbone, but never the classification branch's linear weights;
  ``detach_cam=False`` lets it shape the maps too;
* the attention layers: the feature maps pass through one 1x1 convolution + batch norm + ReLU of the
  attention branch's own (``attention_conv=True``; ``False`` pools the backbone features directly),
  giving ``G``; class ``c``'s pooled feature is the ``A_c``-weighted average of ``G`` over positions,
  ``z_c = sum_p A_c(p) G(p)``, and its score ``v_c . z_c + b_c`` (one weight vector per class:
  ``att_fc``, an ``nn.Linear(num_features, num_classes)`` used row by row);
* how the branches combine: ``combine="logits"`` (default) returns ``(cls + att) / 2``, the mean of
  the two branches' logits (a geometric-mean-of-odds blend that stays a logit, so the recipes apply
  the sigmoid and train with BCE-with-logits as for any classifier); ``combine="probabilities"``
  averages the two sigmoids, as the papers describe the diagnosis, and returns the logit of that
  mean (``sigmoid(forward(x))`` is then exactly the averaged probability). The two agree on which
  side of 0.5 a case falls whenever the branches agree, and differ little in AUC;
* the loss and schedule belong to the recipe (:mod:`medsight.recipes.multilabel`: the sum of both
  branches' BCEs, via :meth:`ChestNet.branch_logits`).

The classifier interface of the registry: ``forward_features`` (the backbone's last feature map),
``forward_head`` (both branches from those features, combined), ``reset_classifier``,
``num_features`` and ``cam_layer`` (``"backbone.layer4"`` for the ResNets, for Grad-CAM; plain CAM
does not apply because the head is not GAP + linear). Works in 2D and 3D (``spatial_dims``).
ImageNet weights go into the backbone: ``load_pretrained(model.backbone, path)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medsight.models.registry import create_model, register_model

NORMALISE = ("softmax", "sigmoid")
COMBINE = ("logits", "probabilities")


class ChestNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 14, spatial_dims: int = 2,
                 backbone: str = "resnet18", normalise: str = "softmax", temperature: float = 1.0,
                 detach_cam: bool = True, attention_conv: bool = True, combine: str = "logits",
                 **backbone_options):
        super().__init__()
        if normalise not in NORMALISE:
            raise TypeError(f"normalise must be one of {NORMALISE}, got {normalise!r}")
        if combine not in COMBINE:
            raise TypeError(f"combine must be one of {COMBINE}, got {combine!r}")
        if not temperature > 0:
            raise TypeError(f"temperature must be > 0, got {temperature!r}")
        if backbone == "chestnet":
            raise TypeError("backbone cannot be chestnet itself")
        self.backbone = create_model(backbone, in_channels=in_channels, num_classes=num_classes,
                                     spatial_dims=spatial_dims, **backbone_options)
        for attr in ("forward_features", "forward_head", "num_features", "fc", "cam_layer"):
            if not hasattr(self.backbone, attr):
                raise TypeError(f"backbone {backbone!r} lacks {attr}: it must be a GAP + linear registry classifier")
        self.normalise, self.temperature = normalise, float(temperature)
        self.detach_cam, self.combine = bool(detach_cam), combine
        self.num_features = self.backbone.num_features
        self.num_classes = num_classes
        self.cam_layer = f"backbone.{self.backbone.cam_layer}"
        c = self.num_features
        if attention_conv:
            conv = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2] if spatial_dims in (2, 3) else None
            norm = (nn.BatchNorm2d, nn.BatchNorm3d)[spatial_dims - 2] if conv else None
            if conv is None:
                raise TypeError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
            self.att_conv = nn.Sequential(conv(c, c, 1, bias=False), norm(c), nn.ReLU(inplace=True))
        else:
            self.att_conv = nn.Identity()
        self.att_fc = nn.Linear(c, num_classes)

    # -- the two branches ---------------------------------------------------------------------
    def cam(self, features: torch.Tensor) -> torch.Tensor:
        """Raw class activation maps ``(B, K, *spatial)``: ``sum_k w_ck F_k`` with the classification
        branch's linear weights (no bias); Grad-CAM's maps up to a positive per-class scale."""
        w = self.backbone.fc.weight
        if self.detach_cam:
            w, features = w.detach(), features.detach()
        return torch.einsum("kc,bc...->bk...", w.to(features.dtype), features)

    def attention_maps(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised class-wise attention maps ``(B, K, *spatial)`` from the backbone's features:
        a distribution over positions per map (``"softmax"``) or values in (0, 1) (``"sigmoid"``)."""
        cam = self.cam(features).float()
        flat = cam.flatten(2)
        if self.normalise == "softmax":
            a = torch.softmax(F.relu(flat) / self.temperature, dim=-1)
        else:
            a = torch.sigmoid(flat / self.temperature)
        return a.view_as(cam)

    def branch_logits_from_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls = self.backbone.forward_head(features)
        a = self.attention_maps(features).flatten(2)  # (B, K, P)
        if self.normalise == "sigmoid":
            a = a / a.sum(-1, keepdim=True).clamp_min(1e-6)
        g = self.att_conv(features).flatten(2)  # (B, C, P)
        z = torch.einsum("bkp,bcp->bkc", a.to(g.dtype), g)  # per-class attention-pooled features
        att = (z * self.att_fc.weight.to(z.dtype)).sum(-1) + self.att_fc.bias.to(z.dtype)
        return cls, att

    def branch_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(classification_logits, attention_logits)``, each ``(B, num_classes)``, for the loss."""
        return self.branch_logits_from_features(self.forward_features(x))

    # -- the registry classifier interface ---------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        cls, att = self.branch_logits_from_features(features)
        if self.combine == "logits":
            return (cls + att) / 2
        p = (torch.sigmoid(cls.float()) + torch.sigmoid(att.float())) / 2
        return torch.logit(p, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """New linear layers for ``num_classes`` in both branches (the attention maps follow)."""
        self.backbone.reset_classifier(num_classes)
        self.att_fc = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes


@register_model
def chestnet(in_channels: int = 1, num_classes: int = 14, spatial_dims: int = 2, **options) -> ChestNet:
    return ChestNet(in_channels, num_classes, spatial_dims, **options)


__all__ = ["ChestNet", "chestnet"]
