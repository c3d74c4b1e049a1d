"""Turning samples into network-ready tensors: preprocess once, keep uint8 in memory, normalise per batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console

from medsight.data import load_checked
from medsight.data.base import Sample, Task
from medsight.errors import InputError
from medsight.progress import track
from medsight.transforms.preprocess import Preprocess


@dataclass
class Loaded:
    """Samples resized to the network's input size, plus what is needed to map outputs back."""

    ids: list[str]
    images: torch.Tensor  # (N, C, *spatial) uint8
    masks: torch.Tensor | None  # (N, *spatial) uint8 0/1, at the network's size
    # (N,) int64 class index, -1 where unlabelled; for a multi-label task (N, K) int64 of
    # Task.targets: one 0/1 per class, all -1 where unlabelled
    labels: torch.Tensor | None
    original_sizes: list[tuple[int, ...]]  # spatial shape of each input image


def load_samples(samples: list[Sample], preprocess: Preprocess, task: Task | None = None,
                 need_masks: bool = False, skip_bad: bool = False, console: Console | None = None,
                 description: str = "loading") -> tuple[Loaded, list[InputError]]:
    """Read, check and preprocess ``samples``. Bad cases raise the first problem found, unless
    ``skip_bad``: then they are left out and returned as the list of rejections."""
    console = console or Console(stderr=True)
    ids, images, masks, labels, sizes, rejected = [], [], [], [], [], []
    multilabel = task is not None and task.multilabel
    for sample in track(samples, description, console):
        image, mask, problems = load_checked(sample, task)
        if need_masks and not sample.has_mask:
            problems.append(InputError(sample.source, "no mask, but this recipe needs one to evaluate or train"))
        if problems:
            if not skip_bad:
                raise problems[0]
            for problem in problems:
                problem.case_id = sample.id
            rejected.extend(problems)
            continue
        image_out, mask_out = preprocess(image, mask, sample)
        ids.append(sample.id)
        sizes.append(tuple(image.shape[1:]))
        images.append(image_out)
        if need_masks:
            masks.append(mask_out)
        if multilabel:
            labels.append(task.targets(sample.diagnosis))
        else:
            labels.append(task.label_of(sample.diagnosis) if task is not None else -1)
    if not ids:
        empty = (0, len(task.classes)) if multilabel else (0,)
        return Loaded([], torch.zeros((0,), dtype=torch.uint8), None, torch.zeros(empty, dtype=torch.int64), []), rejected
    return Loaded(
        ids=ids,
        images=torch.from_numpy(np.stack(images)),
        masks=torch.from_numpy(np.stack(masks).astype(np.uint8)) if need_masks else None,
        labels=torch.from_numpy(np.stack(labels).astype(np.int64)) if multilabel else
        torch.tensor(labels, dtype=torch.int64),
        original_sizes=sizes,
    ), rejected


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (the run's normalisation)."""
    x = images.float().div_(255).transpose(0, 1).flatten(1)
    mean, std = x.mean(1), x.std(1).clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    x = images.float().div_(255)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


def subset(loaded: Loaded, index) -> Loaded:
    """The cases ``index`` (a sequence of positions) of ``loaded``."""
    index = [int(i) for i in index]
    pick = torch.tensor(index, dtype=torch.long)
    return Loaded(ids=[loaded.ids[i] for i in index], images=loaded.images[pick],
                  masks=None if loaded.masks is None else loaded.masks[pick],
                  labels=None if loaded.labels is None else loaded.labels[pick],
                  original_sizes=[loaded.original_sizes[i] for i in index])
