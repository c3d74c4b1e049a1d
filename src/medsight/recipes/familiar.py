"""What a run was trained on, and whether the data it is applied to looks alike.

Training records a profile of its training images in the run (:class:`medsight.rundir.InputInfo`):
their file formats, the range of their sizes and (2D) aspect ratios as read, and the range (1st to
99th percentile) of each channel's per-image mean and standard deviation of the network input
(scaled to [0, 1]). ``predict`` and ``evaluate`` compare the cases they read with it and warn,
once, when they differ clearly; they never refuse (a model may be applied to anything, knowingly).

"Clearly" is any of: another file format (in-memory arrays have none and are not compared); most
cases more than twice as small or large as any training image, or with an aspect ratio more than
a quarter off the training range; more than a quarter of the cases with a channel statistic
outside the training range widened by a quarter of its width on each side. On the real data
(tests/recipes/test_familiar.py): a PH2 profile against the ISIC-2017 validation images differs
in format (bmp / jpg) and aspect ratio (1.33-1.39 / 1.0), while its colour statistics are only
moderately off (16 % of the cases outside, not warned); ISIC-2017 training against its own
validation images: nothing. With a margin of a tenth, 42 % of a 12-image synthetic sample fell
outside the range of a 32-image training set of the same generator, hence the quarter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medsight.data.base import Sample

QUANTILES = (0.01, 0.99)
MARGIN = 0.25  # of the training range's width, on each side
OUTSIDE_FRACTION = 0.25  # of the cases, to call the input unlike the training data
SIZE_FACTOR = 2.0
ASPECT_FACTOR = 1.25


def file_format(sample: Sample) -> str | None:
    """The image file's format by its name (``bmp``, ``jpg``, ``nii.gz``); None for arrays."""
    if not isinstance(sample.image, Path):
        return None
    name = sample.image.name.lower()
    if name.endswith(".nii.gz"):
        return "nii.gz"
    suffix = Path(name).suffix.lstrip(".")
    return {"jpeg": "jpg", "tif": "tiff"}.get(suffix, suffix) or None


def image_statistics(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-image, per-channel mean and std of uint8 network inputs scaled to [0, 1]: two (N, C) arrays."""
    x = images.float().div_(255).flatten(2)
    return x.mean(2).numpy(), x.std(2).numpy()


def profile(samples: list[Sample], images: torch.Tensor, sizes: list[tuple[int, ...]]) -> dict:
    """The InputInfo fields that describe the training images: ``formats``, ``sizes`` (smallest and
    largest size along each axis), ``image_mean`` and ``image_std`` (per channel, the 1st and 99th
    percentile over the images)."""
    if not len(images):
        return {}
    means, stds = image_statistics(images)
    ranges = lambda a: tuple(tuple(round(float(v), 4) for v in np.quantile(a[:, c], QUANTILES))  # noqa: E731
                             for c in range(a.shape[1]))
    sizes_array = np.array(sizes)
    aspects = _aspects(sizes)
    return {"formats": tuple(sorted({f for f in map(file_format, samples) if f})),
            "sizes": (tuple(int(v) for v in sizes_array.min(0)), tuple(int(v) for v in sizes_array.max(0))),
            "aspect": None if aspects is None else (round(float(aspects.min()), 4), round(float(aspects.max()), 4)),
            "image_mean": ranges(means), "image_std": ranges(stds)}


def differences(info, samples: list[Sample], images: torch.Tensor, sizes: list[tuple[int, ...]]) -> list[str]:
    """How the cases (their samples, network inputs and sizes as read) clearly differ from the
    training images ``info`` (an InputInfo) describes; [] when alike or when the run has no profile."""
    out = []
    formats = {f for f in map(file_format, samples) if f}
    if info.formats and formats and not formats <= set(info.formats):
        out.append(f"{', '.join(sorted(formats - set(info.formats)))} images, where the run was trained on "
                   f"{', '.join(info.formats)}")
    if info.sizes and sizes and len(sizes[0]) == len(info.sizes[0]):
        small, large = np.array(info.sizes[0]) / SIZE_FACTOR, np.array(info.sizes[1]) * SIZE_FACTOR
        off = [bool(np.any(np.array(s) < small) or np.any(np.array(s) > large)) for s in sizes]
        if np.mean(off) > 0.5:
            out.append(f"{sum(off)} of {len(sizes)} images more than {SIZE_FACTOR:g}x smaller or larger than the "
                       f"training images ({_size(info.sizes[0])} to {_size(info.sizes[1])})")
    aspects = _aspects(sizes)
    if info.aspect and aspects is not None:
        off = (aspects < info.aspect[0] / ASPECT_FACTOR) | (aspects > info.aspect[1] * ASPECT_FACTOR)
        if off.mean() > 0.5:
            out.append(f"{int(off.sum())} of {len(off)} images of another aspect ratio (width / height "
                       f"{np.median(aspects[off]):.2f}, the training images' {info.aspect[0]:.2f} to {info.aspect[1]:.2f})")
    if info.image_mean and len(images) and images.shape[1] == len(info.image_mean):
        means, stds = image_statistics(images)
        outside = _outside(means, info.image_mean) | _outside(stds, info.image_std)
        if outside.mean() > OUTSIDE_FRACTION:
            out.append(f"{int(outside.sum())} of {len(outside)} images with colour or intensity statistics outside "
                       "the training images' range")
    return out


def _outside(values: np.ndarray, ranges) -> np.ndarray:
    low, high = np.array(ranges, dtype=float).T
    width = high - low
    return ((values < low - MARGIN * width) | (values > high + MARGIN * width)).any(1)


def _aspects(sizes: list[tuple[int, ...]]) -> np.ndarray | None:
    """Width / height of 2D images; None for volumes or no images."""
    if not sizes or len(sizes[0]) != 2:
        return None
    return np.array([w / max(h, 1) for h, w in sizes], dtype=float)


def _size(size) -> str:
    return "x".join(str(v) for v in size)
