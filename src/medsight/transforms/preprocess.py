"""Preprocessors: how a case becomes the fixed-size uint8 array a network sees.

A preprocessor maps ``(image, mask, sample)`` to ``(image uint8 (C, *size), mask uint8 (*size) or
None)``. Recipes name one in ``data.preprocess`` (default ``resize``); the arrays are made once,
kept in memory as uint8, and normalised per batch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from medsight.data.base import Sample
from medsight.errors import ConfigError, MedsightError

Preprocess = Callable[[np.ndarray, "np.ndarray | None", Sample], tuple[np.ndarray, "np.ndarray | None"]]


def match_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """Grey <-> RGB so that an image has ``channels`` channels (None keeps it as it is)."""
    if channels is None or image.shape[0] == channels:
        return image
    if channels == 1:
        return image.mean(axis=0, keepdims=True).round().astype(np.uint8)
    if image.shape[0] == 1:
        return np.repeat(image, channels, axis=0)
    raise MedsightError(f"cannot turn a {image.shape[0]}-channel image into {channels} channels")


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) uint8 -> (C, *size) uint8 with antialiased bilinear resampling."""
    if image.shape[1:] == tuple(size):
        return image
    planes = [np.asarray(Image.fromarray(c).resize((size[1], size[0]), Image.BILINEAR)) for c in image]
    return np.stack(planes)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) 0/1 -> (*size) 0/1: bilinear on 0/255 then >= 128, which keeps thin parts better than nearest."""
    if mask.shape == tuple(size):
        return mask.astype(np.uint8)
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.BILINEAR))
    return (resized >= 128).astype(np.uint8)


def resize(size: tuple[int, ...], channels: int | None) -> Preprocess:
    """2D images resized to ``size`` (height, width)."""
    if len(size) != 2:
        raise ConfigError(f"data.image_size: the resize preprocessor takes (height, width), got {list(size)}")

    def apply(image, mask, sample):
        if image.ndim != 3:
            raise MedsightError(f"{sample.source}: the resize preprocessor takes 2D images, got shape {image.shape}")
        return resize_image(match_channels(image, channels), size), None if mask is None else resize_mask(mask, size)

    return apply


PREPROCESSORS: dict[str, Callable[..., Preprocess]] = {"resize": resize}


def make_preprocess(name: str, size: tuple[int, ...], channels: int | None = None, **options) -> Preprocess:
    """The preprocessor ``name`` for outputs of spatial ``size``; ``channels`` None keeps the input's."""
    if name not in PREPROCESSORS:
        raise ConfigError(f"data.preprocess: unknown preprocessor {name!r}; known: {', '.join(sorted(PREPROCESSORS))}")
    try:
        return PREPROCESSORS[name](tuple(size), channels, **options)
    except TypeError as exc:
        raise ConfigError(f"data.preprocess_options for {name!r}: {exc}") from None
