"""Preprocessors: how a case becomes the fixed-size uint8 array a network sees.

A preprocessor maps ``(image, mask, sample)`` to ``(image uint8 (C, *size), mask uint8 (*size) or
None)``; ``mask`` is the case's mask when it has one (already read), else None. Recipes name one in ``data.preprocess`` (default ``resize``); the arrays are made once,
kept in memory as uint8, and normalised per batch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from medsight.data.base import Sample
from medsight.errors import ConfigError, MedsightError
from medsight.transforms.views import PATCH_TYPES, VIEW_NAMES, nodule_views
from medsight.transforms.volume import crop_centered, crop_centered_mask, mask_centre, normalise_hu

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


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> 0..255 uint8 (how every preprocessor stores its output)."""
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _nodule(image, mask, sample, annotated_centre: bool = False):
    """The CT volume (D, H, W), the nodule mask and its voxel centre (the mask's centroid). With
    ``annotated_centre``, a case without a mask is centred on the reader's ``meta["center_zyx"]``
    (LUNA16 / Tianchi nodules) and its mask is None."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise MedsightError(f"{sample.source}: expected a CT volume (1, D, H, W), got shape {image.shape}")
    if sample.spacing is None:
        raise MedsightError(f"{sample.source}: the volume has no voxel spacing")
    nodule = mask if mask is not None else sample.load_mask()  # called alone, without the mask read
    if nodule is None and annotated_centre and sample.meta.get("center_zyx") is not None:
        return image[0], None, np.asarray(sample.meta["center_zyx"], dtype=np.float64)
    if nodule is None or not nodule.any():
        raise MedsightError(f"{sample.source}: no nodule mask" + (" or annotated centre" if annotated_centre else "")
                            + " to centre the crop on")
    return image[0], nodule, mask_centre(nodule)


NODULE_CROP_MM = (32.0, 32.0, 32.0)  # nodule_crop's box (z, y, x) without data.preprocess_options.size_mm


def nodule_crop_mm(preprocess_options: dict):
    """The box (z, y, x, in mm) that :func:`nodule_crop` cuts with these ``data.preprocess_options``."""
    return preprocess_options.get("size_mm", NODULE_CROP_MM)


def nodule_crop_centre(image, sample) -> np.ndarray:
    """The voxel (z, y, x) that :func:`nodule_crop` centres ``sample``'s box on."""
    return _nodule(image, None, sample, annotated_centre=True)[2]


def nodule_crop(size: tuple[int, ...], channels: int | None, size_mm=NODULE_CROP_MM,
                hu_window=(-1000.0, 400.0)) -> Preprocess:
    """A box of ``size_mm`` (z, y, x) around the nodule mask's centroid (a case without a mask: the
    reader's annotated centre, ``meta["center_zyx"]``), resampled to ``size`` (D, H, W) voxels in one
    trilinear interpolation (air beyond the volume), HU clipped to ``hu_window`` and scaled to [0, 1].
    A fixed physical size keeps nodule size visible to the network."""
    if len(size) != 3:
        raise ConfigError(f"data.image_size: nodule_crop takes (depth, height, width), got {list(size)}")
    lo, hi = hu_window

    def apply(image, mask, sample):
        volume, nodule, centre = _nodule(image, mask, sample, annotated_centre=True)
        box = crop_centered(volume, centre, size_mm, sample.spacing, out_shape=size)
        out_mask = None if mask is None else crop_centered_mask(mask, centre, size_mm, sample.spacing, out_shape=size)
        return _to_uint8(normalise_hu(box, lo, hi))[None], out_mask

    return apply


def nodule_views_pre(size: tuple[int, ...], channels: int | None, patches=("OA",), size_mm: float | None = None,
                     size_factor: float = 1.5, min_size_mm: float = 16.0, scaling: str = "minmax",
                     views=VIEW_NAMES) -> Preprocess:
    """The planar views of methods.md through the nodule centre (``views``: all 9 by default, or
    some of :data:`~medsight.transforms.views.VIEW_NAMES`), each as the chosen patch types (OA,
    HVV, HS), stacked view-major along the channel axis: ``(len(views) * len(patches), S, S)``.
    With the case's mask, also the nodule mask sampled on each output channel's plane.

    The patch width is ``size_mm`` or ``max(size_factor x equivalent diameter, min_size_mm)``;
    1.5 rather than the views module's 2.0 because the shared LIDC VOIs are cut tight around the
    nodule and a wider patch mostly shows padding."""
    if len(size) != 2 or size[0] != size[1]:
        raise ConfigError(f"data.image_size: nodule_views takes a square (S, S), got {list(size)}")
    chosen = [PATCH_TYPES.index(p) for p in patches] if set(patches) <= set(PATCH_TYPES) else None
    if not chosen:
        raise ConfigError(f"data.preprocess_options.patches: choose from {PATCH_TYPES}, got {list(patches)}")
    planes = [VIEW_NAMES.index(v) for v in views] if set(views) <= set(VIEW_NAMES) else None
    if not planes:
        raise ConfigError(f"data.preprocess_options.views: choose from {VIEW_NAMES}, got {list(views)}")

    def apply(image, mask, sample):
        volume, nodule, centre = _nodule(image, mask, sample)
        patches_, masks_ = nodule_views(volume, nodule, sample.spacing, centre, size_mm, size[0], scaling=scaling,
                                        size_factor=size_factor, min_size_mm=min_size_mm, return_masks=True)
        patches_, masks_ = patches_[planes], masks_[planes]
        view_masks = None if mask is None else np.repeat(masks_, len(chosen), axis=0)  # one per output channel
        return _to_uint8(patches_[:, chosen].reshape(-1, size[0], size[1])), view_masks

    return apply


PREPROCESSORS: dict[str, Callable[..., Preprocess]] = {
    "resize": resize, "nodule_crop": nodule_crop, "nodule_views": nodule_views_pre,
}


def make_preprocess(name: str, size: tuple[int, ...], channels: int | None = None, **options) -> Preprocess:
    """The preprocessor ``name`` for outputs of spatial ``size``; ``channels`` None keeps the input's."""
    if name not in PREPROCESSORS:
        raise ConfigError(f"data.preprocess: unknown preprocessor {name!r}; known: {', '.join(sorted(PREPROCESSORS))}")
    try:
        return PREPROCESSORS[name](tuple(size), channels, **options)
    except TypeError as exc:
        raise ConfigError(f"data.preprocess_options for {name!r}: {exc}") from None
