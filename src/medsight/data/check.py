"""What ``medsight data check`` reports: counts, image sizes, masks, and every problem found.

``summarize(dataset)`` returns a JSON-friendly dict; ``format_summary`` renders it as text.
Problems and warnings come from :func:`medsight.data.check_dataset` (which loads every image and mask):
problems make ``data check`` exit with code 2, warnings are listed only.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from medsight.data import check_dataset
from medsight.data.base import Dataset, Sample
from medsight.data.imageio import image_size
from medsight.errors import InputError

MAX_LISTED = 20  # problems printed by format_summary; the count is always given


def _size(sample: Sample) -> tuple[int, int] | None:
    """(height, width) from the array or the image file's header (None if unreadable)."""
    if isinstance(sample.image, np.ndarray):
        return tuple(int(x) for x in sample.image.shape[-2:])
    try:
        return image_size(sample.image)
    except InputError:  # check_dataset() reports it
        return None


def _stats(values: list[int]) -> dict:
    return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}


def _spacing_stats(samples) -> dict | None:
    """Voxel spacing (mm) per axis over the volumes, or None for 2D data."""
    spacings = np.array([s.spacing for s in samples if s.spacing is not None], dtype=float)
    if not len(spacings):
        return None
    return {stat: [round(float(v), 3) for v in fn(spacings, axis=0)]
            for stat, fn in (("min", np.min), ("median", np.median), ("max", np.max))}


def summarize(dataset: Dataset, check_files: bool = True, progress=None) -> dict:
    """Counts per split and per class of every task, image sizes, masks and (unless
    ``check_files`` is false) the problems and warnings :func:`check_dataset` finds with the default task
    (``progress`` wraps its loop over the cases, as :func:`medsight.progress.track`)."""
    samples = dataset.samples
    splits = Counter(s.split or "none" for s in samples)
    tasks = {}
    for name, task in dataset.tasks.items():
        counts = Counter(task.classes[task.mapping[s.diagnosis]] for s in samples
                         if s.diagnosis is not None and s.diagnosis in task.mapping)
        tasks[name] = {c: counts.get(c, 0) for c in task.classes}
    per_split = {}
    for split in sorted(splits):
        counts = Counter(s.diagnosis for s in samples if (s.split or "none") == split)
        per_split[split] = {c: counts[c] for c in dataset.classes if counts[c]}
    sizes = [sz for sz in map(_size, samples) if sz is not None]
    summary = {
        "format": dataset.name,
        "root": str(dataset.root),
        "cases": len(samples),
        "patients": len({s.patient_id for s in samples if s.patient_id is not None}),
        "splits": dict(sorted(splits.items())),
        "classes": list(dataset.classes),
        "classes_per_split": per_split,
        "default_task": dataset.default_task,
        "tasks": tasks,
        "image_height": _stats([h for h, _ in sizes]) if sizes else None,
        "image_width": _stats([w for _, w in sizes]) if sizes else None,
        "with_mask": sum(s.has_mask for s in samples),
        "unlabelled": sum(s.diagnosis is None for s in samples),
        "spacing": _spacing_stats(samples),
        "excluded": dict(Counter(dataset.excluded.values())),
    }
    if check_files:
        task = dataset.task() if dataset.default_task else None
        problems, warnings = check_dataset(dataset, task, progress)
        summary["problems"] = [str(p) for p in problems]
        summary["warnings"] = [str(w) for w in warnings]
    return summary


def format_summary(summary: dict) -> str:
    """Readable text for ``medsight data check``."""
    out = [f"format      {summary['format']}",
           f"root        {summary['root']}",
           f"cases       {summary['cases']}" + (f" ({summary['patients']} patients)" if summary["patients"] else ""),
           "splits      " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()),
           f"with mask   {summary['with_mask']}",
           f"unlabelled  {summary['unlabelled']}"]
    h, w = summary["image_height"], summary["image_width"]
    if h and w:
        out.append(f"image size  min {h['min']}x{w['min']}, median {h['median']:g}x{w['median']:g}, "
                   f"max {h['max']}x{w['max']} (height x width)")
    if summary.get("spacing"):
        sp = summary["spacing"]
        out.append(f"spacing mm  min {sp['min']}, median {sp['median']}, max {sp['max']} (z, y, x)")
    if summary.get("excluded"):
        out.append(f"excluded    {sum(summary['excluded'].values())}: "
                   + "; ".join(f"{n} {reason}" for reason, n in summary["excluded"].items()))
    for name, counts in summary["tasks"].items():
        default = " (default)" if name == summary["default_task"] else ""
        out.append(f"task {name}{default}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    if len(summary["classes_per_split"]) > 1:
        for split, counts in summary["classes_per_split"].items():
            out.append(f"  {split}: " + (", ".join(f"{c} {n}" for c, n in counts.items()) or "unlabelled"))
    for warning in summary.get("warnings", [])[:MAX_LISTED]:
        out.append(f"warning     {warning}")
    if len(summary.get("warnings", [])) > MAX_LISTED:
        out.append(f"warning     ... and {len(summary['warnings']) - MAX_LISTED} more")
    if "problems" in summary:
        problems = summary["problems"]
        if not problems:
            out.append("problems    none")
        else:
            out.append(f"problems    {len(problems)}")
            out.extend(f"  - {p}" for p in problems[:MAX_LISTED])
            if len(problems) > MAX_LISTED:
                out.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(out)
