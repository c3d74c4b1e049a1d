"""The networks: every one is built through ``create_model(name, **kw)`` (:mod:`medsight.models.registry`).

Classifiers share one small interface (timm-style) so CAMs and feature extraction work on all:
``forward_features(x)`` -> last feature map, ``forward_head(f)`` -> logits, ``reset_classifier(n)``,
``num_features`` and ``cam_layer`` (the name of the module whose output the CAM is taken from).
Segmenters map ``(B, C, *spatial)`` to per-pixel logits ``(B, num_classes, *spatial)``.
Classifiers that can be a segmenter's encoder (the ResNets, ``xception``) also take ``output_stride``
(32, 16, 8) and give ``forward_levels(x)`` -> (stride-4 features, last features) with their
``level_channels``.
"""

from __future__ import annotations

from medsight.models.registry import create_model, list_models, register_model

# Each family registers its names on import; listed here by hand, never discovered from files.
from medsight.models import arl, chestnet, deeplab, multiview, mvkbc, ran, resnet, senet, unet, xception  # noqa: F401

__all__ = ["create_model", "list_models", "register_model"]
