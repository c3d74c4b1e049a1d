"""Readers: one module per on-disk layout, all returning a :class:`Dataset` of :class:`Sample`.

Each reader module declares its layout(s) as a :class:`~medsight.data.formats.Format` (``FORMAT`` or
``FORMATS``); ``FORMATS`` below lists them all in detection order. ``open_dataset(path, format=None)``
detects the layout (or takes its name) and reads it;
``validate(dataset)`` loads every image and mask and returns every problem found.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsight.data import chestxray14, folder, isic, lidc, lidc_voi, luna, medmnist, ph2, synthetic, synthetic_xray
from medsight.data.base import UNLABELLED, Dataset, Sample, Task
from medsight.data.formats import Format
from medsight.errors import InputError, MedsightError

# Every format, listed by hand in detection order: the first whose ``detect`` accepts a path wins,
# so the specific layouts come before the catch-alls (folder, images). Generated formats come last.
FORMATS: tuple[Format, ...] = (
    ph2.FORMAT,
    *isic.FORMATS,  # isic2017, isic2018
    medmnist.FORMAT,
    lidc_voi.FORMAT,
    lidc.FORMAT,
    luna.FORMAT,
    chestxray14.FORMAT,
    *folder.FORMATS,  # folder, images
    synthetic.FORMAT,
    synthetic_xray.FORMAT,
)
GENERATED = tuple(f.name for f in FORMATS if f.generated)  # formats that need no path
_BY_NAME = {name: f for f in FORMATS for name in (f.name, *f.aliases)}


def get_format(name: str) -> Format:
    """The format called ``name`` (or one of its aliases), or an error listing the known names."""
    if name not in _BY_NAME:
        known = sorted(f.name for f in FORMATS) + sorted(a for f in FORMATS for a in f.aliases)
        raise MedsightError(f"unknown format {name!r}; known: {', '.join(known)}")
    return _BY_NAME[name]


def detect_format(path: str | Path) -> str:
    """The layout name of ``path``, or an error listing the layouts tried."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    for fmt in FORMATS:
        if fmt.detect is not None and fmt.detect(path):
            return fmt.name
    near = [(f, gap) for f in FORMATS if f.lacks is not None for gap in [f.lacks(path)] if gap]
    if near:  # the first in detection order is the closest: the specific layouts come first
        closest, gap = near[0]
        others = "".join(f"; it is also like {f.name} ({g})" for f, g in near[1:])
        raise InputError(path, f"not a layout medsight recognises. Closest: {closest.name} ({closest.description}), "
                               f"but {gap}{others}. Fix that, or name a layout with --format")
    raise InputError(path, f"not a layout medsight recognises (tried {', '.join(f.name for f in FORMATS)}); "
                           "name one with --format")


def open_dataset(path: str | Path | list | None, format: str | None = None, **options) -> Dataset:
    """Read a dataset root (or, for ``images``, one image file or a list of them).

    ``format="synthetic"`` (dermoscopy) and ``format="synthetic-xray"`` (multi-label chest X-rays)
    need no path: they generate demo data from ``options``."""
    named = _BY_NAME.get(format)
    if named is not None and named.generated and path is None:
        return named.read(None, **options)
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            path = path[0]
        else:
            return get_format("images").read([Path(p) for p in path], **options)
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    fmt = get_format(format) if format else get_format(detect_format(path))
    return fmt.read(path, **options)


def validate(dataset: Dataset, task: Task | None = None, progress=None) -> list[InputError]:
    """Load every image and mask; return one error per problem (unreadable file, size mismatch,
    a label outside ``task``, a mask the layout promises missing or empty). An empty list means
    the dataset is usable. ``progress`` wraps the loop over the cases (:func:`medsight.progress.track`)."""
    return check_dataset(dataset, task, progress)[0]


def check_dataset(dataset: Dataset, task: Task | None = None, progress=None
                  ) -> tuple[list[InputError], list[InputError]]:
    """``(problems, warnings)`` of every case, each file read once (what ``medsight data check``
    reports). Where the layout gives every case a mask (``Format.masks == "always"``: PH2, LIDC),
    a case without one or with an all-zero mask is a problem; where masks are optional, an all-zero
    mask is a warning, and so are cases without a mask beside cases with one. ``progress`` wraps
    the loop over the cases (:func:`medsight.progress.track`)."""
    fmt = _BY_NAME.get(dataset.name)
    promise = fmt.masks if fmt is not None else "optional"
    problems: list[InputError] = []
    warnings: list[InputError] = []
    for sample in (progress or iter)(dataset.samples):
        _, mask, found = load_checked(sample, task)
        problems.extend(found)
        if promise == "always" and not sample.has_mask:
            problems.append(InputError(sample.source, f"no mask, although the {dataset.name} layout gives every "
                                                      "case one"))
        elif mask is not None and not np.any(mask):
            where = sample.mask if isinstance(sample.mask, Path) else sample.source
            (problems if promise == "always" else warnings).append(InputError(where, "mask is empty (all zero)"))
    with_mask = sum(s.has_mask for s in dataset.samples)
    if promise != "always" and 0 < with_mask < len(dataset.samples):
        missing = [s.id for s in dataset.samples if not s.has_mask]
        warnings.append(InputError(dataset.root, f"{len(missing)} of {len(dataset.samples)} cases have no mask "
                                                 f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"))
    return problems, warnings


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


__all__ = ["Dataset", "Sample", "Task", "UNLABELLED", "Format", "FORMATS", "GENERATED", "get_format",
           "open_dataset", "detect_format", "validate", "check_dataset", "check_sample", "load_checked"]
