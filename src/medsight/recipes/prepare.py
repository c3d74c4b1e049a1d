"""Turning samples into network-ready tensors: resize once, keep uint8 in memory, normalise per batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from medsight.data import check_sample
from medsight.data.base import Sample, Task
from medsight.errors import InputError, MedsightError


@dataclass
class Loaded:
    """Samples resized to the network's input size, plus what is needed to map outputs back."""

    ids: list[str]
    images: torch.Tensor  # (N, C, H, W) uint8
    masks: torch.Tensor | None  # (N, H, W) uint8 0/1, at the network's size
    labels: torch.Tensor | None  # (N,) int64, -1 where unlabelled
    original_sizes: list[tuple[int, int]]  # (H, W) of each input image


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[0] == channels:
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
    if mask.shape == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask * 255).resize((size[1], size[0]), Image.BILINEAR)) >= 128


def load_samples(samples: list[Sample], size: tuple[int, int], channels: int, task: Task | None = None,
                 need_masks: bool = False, skip_bad: bool = False, console: Console | None = None,
                 description: str = "loading") -> tuple[Loaded, list[InputError]]:
    """Read, check and resize ``samples``. Bad cases raise the first problem found, unless
    ``skip_bad``: then they are left out and returned as the list of rejections."""
    console = console or Console(stderr=True)
    ids, images, masks, labels, sizes, rejected = [], [], [], [], [], []
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        for sample in progress.track(samples, description=description):
            problems = check_sample(sample, task)
            if need_masks and not sample.has_mask:
                problems.append(InputError(sample.source, "no mask, but this recipe needs one to evaluate or train"))
            if problems:
                if not skip_bad:
                    raise problems[0]
                rejected.extend(problems)
                continue
            image = sample.load_image()
            ids.append(sample.id)
            sizes.append(tuple(image.shape[1:]))
            images.append(resize_image(match_channels(image, channels), size))
            if need_masks:
                masks.append(resize_mask(sample.load_mask(), size))
            labels.append(task.label_of(sample.diagnosis) if task is not None else -1)
    if not ids:
        return Loaded([], torch.zeros((0, channels, *size), dtype=torch.uint8), None, None, []), rejected
    return Loaded(
        ids=ids,
        images=torch.from_numpy(np.stack(images)),
        masks=torch.from_numpy(np.stack(masks).astype(np.uint8)) if need_masks else None,
        labels=torch.tensor(labels, dtype=torch.int64),
        original_sizes=sizes,
    ), rejected


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (the run's normalisation)."""
    x = images.float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    x = images.float().div_(255)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None,
                  drop_last: bool = False) -> list[torch.Tensor]:
    if n == 0:
        return []
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    chunks = list(order.split(batch_size))
    if drop_last and len(chunks) > 1 and len(chunks[-1]) < batch_size:
        chunks = chunks[:-1]
    return chunks
