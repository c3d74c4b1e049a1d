"""Model registry: every network is built through ``create_model(name, **kw)``.

Classifiers share one small interface (timm-style) so CAMs and feature extraction work on all:
``forward_features(x)`` -> last feature map, ``forward_head(f)`` -> logits, ``reset_classifier(n)``,
``num_features`` and ``cam_layer`` (the name of the module whose output the CAM is taken from).
Segmenters map ``(B, C, *spatial)`` to per-pixel logits ``(B, num_classes, *spatial)``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from medsight.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def decorator(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn
    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in _REGISTRY:
        raise ConfigError(f"model.name: unknown model {name!r}; known: {', '.join(list_models())}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as exc:  # an option the builder does not take
        raise ConfigError(f"model.options for {name!r}: {exc}") from None


# Each family registers its names on import; listed here by hand, never discovered from files.
from medsight.models import arl, chestnet, multiview, ran, resnet, senet, unet  # noqa: E402,F401

__all__ = ["create_model", "list_models", "register_model"]
