"""Readers: one module per on-disk layout, all returning a :class:`Dataset` of :class:`Sample`.

``open_dataset(path, format=None)`` detects the layout (or takes its name) and reads it;
``validate(dataset)`` loads every image and mask and returns every problem found.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from medsight.data.base import UNLABELLED, Dataset, Sample, Task
from medsight.errors import InputError, MedsightError

# format name -> "module:function"; each function takes (root: Path, **options) -> Dataset,
# and each module has ``detect_<format>(root: Path) -> bool`` ("-" in a format name becomes "_").
# Listed by hand, in detection order.
READERS: dict[str, str] = {
    "ph2": "medsight.data.ph2:read_ph2",
    "isic2017": "medsight.data.isic:read_isic2017",
    "isic2018": "medsight.data.isic:read_isic2018",
    "medmnist": "medsight.data.medmnist:read_medmnist",
    "lidc-voi": "medsight.data.lidc_voi:read_lidc_voi",
    "lidc": "medsight.data.lidc:read_lidc",
    "luna": "medsight.data.luna:read_luna",
    "chestxray14": "medsight.data.chestxray14:read_chestxray14",
    "folder": "medsight.data.folder:read_folder",
    "images": "medsight.data.folder:read_images",
    "synthetic": "medsight.data.synthetic:read_synthetic",  # generated, never detected from a path
    "synthetic-xray": "medsight.data.synthetic_xray:read_synthetic_xray",  # generated, never detected
}
GENERATED = ("synthetic", "synthetic-xray")  # formats that need no path
ALIASES = {"dermamnist": "medmnist", "ham10000": "isic2018", "lidc_voi": "lidc-voi", "lidc-idri": "lidc",
           "luna16": "luna", "tianchi": "luna"}


def _resolve(spec: str) -> Callable:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def _detector(fmt: str) -> Callable[[Path], bool]:
    module = READERS[fmt].split(":")[0]
    return getattr(importlib.import_module(module), "detect_" + fmt.replace("-", "_"))


def detect_format(path: str | Path) -> str:
    """The layout name of ``path``, or an error listing the layouts tried."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    for fmt in READERS:
        if _detector(fmt)(path):
            return fmt
    raise InputError(path, f"not a layout medsight recognises (tried {', '.join(READERS)}); "
                           "name one with --format")


def open_dataset(path: str | Path | list | None, format: str | None = None, **options) -> Dataset:
    """Read a dataset root (or, for ``images``, one image file or a list of them).

    ``format="synthetic"`` (dermoscopy) and ``format="synthetic-xray"`` (multi-label chest X-rays)
    need no path: they generate demo data from ``options``."""
    if format in GENERATED and path is None:
        return _resolve(READERS[format])(None, **options)
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            path = path[0]
        else:
            return _resolve(READERS["images"])([Path(p) for p in path], **options)
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    fmt = ALIASES.get(format, format) if format else detect_format(path)
    if fmt not in READERS:
        raise MedsightError(f"unknown format {format!r}; known: {', '.join(sorted(READERS) + sorted(ALIASES))}")
    return _resolve(READERS[fmt])(path, **options)


def validate(dataset: Dataset, task: Task | None = None) -> list[InputError]:
    """Load every image and mask; return one error per problem (unreadable file, size mismatch,
    a label outside ``task``). An empty list means the dataset is usable."""
    problems: list[InputError] = []
    for sample in dataset.samples:
        problems.extend(check_sample(sample, task))
    return problems


def _dims(shape) -> str:
    return "x".join(str(n) for n in shape)


def check_sample(sample: Sample, task: Task | None = None) -> list[InputError]:
    """The problems of one sample (empty when it is usable), loading its image and mask."""
    return load_checked(sample, task)[2]


def load_checked(sample: Sample, task: Task | None = None):
    """``(image, mask, problems)`` of one sample, each file read once; image and mask are None
    when they could not be read.

    2D: image ``(C, H, W)`` with 1 or 3 channels and mask ``(H, W)``; volumes: image ``(1, D, H, W)``
    and mask ``(D, H, W)``."""
    try:
        image = sample.load_image()
        volume = image.ndim == 4
        if volume and image.shape[0] != 1:
            return None, None, [InputError(sample.source, f"volume has shape {image.shape}, expected (1, D, H, W)")]
        if not volume and (image.ndim != 3 or image.shape[0] not in (1, 3)):
            return None, None, [InputError(sample.source, f"image has shape {image.shape}, expected (C, H, W) "
                                                          "with 1 or 3 channels, or a volume (1, D, H, W)")]
        mask = sample.load_mask()
    except InputError as exc:
        return None, None, [exc]
    problems = []
    if mask is not None and mask.shape != image.shape[1:]:
        where = sample.mask if not hasattr(sample.mask, "shape") else sample.source
        if volume:
            problems.append(InputError(where, f"mask is {_dims(mask.shape)} but its volume {sample.id} is "
                                              f"{_dims(image.shape[1:])} (D x H x W)"))
        else:
            problems.append(InputError(where, f"mask is {_dims(mask.shape[::-1])} but its image {sample.id} is "
                                              f"{image.shape[2]}x{image.shape[1]}"))
    if volume and sample.spacing is not None and len(sample.spacing) != 3:
        problems.append(InputError(sample.source, f"spacing {sample.spacing} should give 3 values (z, y, x) in mm"))
    if task is not None and sample.diagnosis is not None and task.multilabel:
        try:
            task.targets(sample.diagnosis)
        except ValueError as exc:
            problems.append(InputError(sample.source, str(exc)))
    elif task is not None and sample.diagnosis is not None and sample.diagnosis not in task.mapping:
        problems.append(InputError(sample.source, f"label {sample.diagnosis!r} is not a class of task "
                                                  f"{task.name!r} ({', '.join(task.mapping)})"))
    return image, mask, problems


__all__ = ["Dataset", "Sample", "Task", "UNLABELLED", "READERS", "open_dataset", "detect_format",
           "validate", "check_sample", "load_checked"]
