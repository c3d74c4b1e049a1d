"""MedMNIST v2 npz files (e.g. ``dermamnist.npz``), or a folder holding exactly one of them::

    {train,val,test}_images   uint8 (N, H, W) grey or (N, H, W, 3) colour
    {train,val,test}_labels   (N, 1) class indices (multi-label (N, K) sets are not supported yet)

Images are held in memory as channel-first ``(1, H, W)`` / ``(3, H, W)`` arrays; ids are
``<split>_<row:05d>``; splits with no rows are absent. Class names come from the file name
(DermaMNIST: the HAM10000 classes, in the order ISIC 2018 uses too), the ``classes=`` option,
or default to ``class_0``, ``class_1``, ...
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from medsight.data.base import Dataset, Sample, Task
from medsight.data.formats import Format
from medsight.errors import InputError, MedsightError

SPLITS = ("train", "val", "test")
KNOWN_CLASSES = {
    "dermamnist": ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),
}


def _keys(npz: Path) -> set[str]:
    try:
        with np.load(npz, allow_pickle=False) as data:
            return set(data.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return set()


def _is_medmnist(npz: Path) -> bool:
    keys = _keys(npz)
    return any(f"{s}_images" in keys and f"{s}_labels" in keys for s in SPLITS)


def _find_npz(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix.lower() == ".npz" else None
    if path.is_dir():
        found = [p for p in path.glob("*.npz") if p.is_file()]
        return found[0] if len(found) == 1 else None
    return None


def detect_medmnist(path: str | Path) -> bool:
    npz = _find_npz(Path(path))
    return npz is not None and _is_medmnist(npz)


def medmnist_lacks(path: str | Path) -> str | None:
    npz = _find_npz(Path(path))
    if npz is None or _is_medmnist(npz):
        return None
    keys = sorted(_keys(npz))
    return (f"{npz.name} has no <split>_images with <split>_labels (splits {', '.join(SPLITS)}; "
            f"found: {', '.join(keys) or 'nothing readable'})")


def _channel_first(npz: Path, key: str, images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8:
        raise InputError(npz, f"{key} has dtype {images.dtype}, expected uint8")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise InputError(npz, f"{key} has shape {images.shape}, expected (N, H, W) or (N, H, W, 3) "
                          "(3D MedMNIST sets are not supported)")


def _labels(npz: Path, key: str, labels: np.ndarray, n: int) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise MedsightError(f"{npz}: {key} has shape {labels.shape}: multi-label MedMNIST sets "
                            "(ChestMNIST) are not supported yet")
    labels = labels.reshape(-1)
    if labels.shape[0] != n:
        raise InputError(npz, f"{key} has {labels.shape[0]} rows but the images have {n}")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) and not np.all(labels == np.round(labels))):
        raise InputError(npz, f"{key} holds non-integer labels")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise InputError(npz, f"{key} holds a negative label ({labels.min()})")
    return labels


def read_medmnist(path: str | Path, classes: list[str] | tuple[str, ...] | str | None = None,
                  **options) -> Dataset:
    if options:
        raise MedsightError(f"the medmnist reader takes only the option 'classes' "
                            f"(got {', '.join(sorted(options))})")
    path = Path(path)
    npz = _find_npz(path)
    if npz is None:
        raise InputError(path, "expected a MedMNIST .npz file or a folder holding exactly one")
    try:
        with np.load(npz, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(npz, f"cannot read npz ({exc.__class__.__name__}: {exc})") from None
    stem = npz.stem.lower()
    known = next((names for key, names in KNOWN_CLASSES.items() if key in stem), None)
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]

    parts = []  # (split, images, labels)
    for split in SPLITS:
        ikey, lkey = f"{split}_images", f"{split}_labels"
        if ikey not in arrays and lkey not in arrays:
            continue
        if ikey not in arrays or lkey not in arrays:
            raise InputError(npz, f"has {ikey if ikey in arrays else lkey} but no "
                                  f"{lkey if ikey in arrays else ikey}")
        images = arrays[ikey]
        labels = _labels(npz, lkey, arrays[lkey], images.shape[0])
        if images.shape[0]:
            parts.append((split, _channel_first(npz, ikey, images), labels))
    if not parts:
        raise InputError(npz, "no non-empty {train,val,test}_images / _labels arrays")

    names = tuple(classes) if classes else known
    if names is not None and len(set(names)) != len(names):
        raise MedsightError(f"option classes has repeated names: {', '.join(names)}")
    if names is None:
        names = tuple(f"class_{i}" for i in range(max(int(lab.max()) for _, _, lab in parts) + 1))
    samples = []
    for split, images, labels in parts:
        if labels.max() >= len(names):
            raise InputError(npz, f"{split}_labels holds label {int(labels.max())} but there are only "
                                  f"{len(names)} classes ({', '.join(names)})")
        for i in range(images.shape[0]):
            samples.append(Sample(id=f"{split}_{i:05d}", image=images[i], diagnosis=names[labels[i]],
                                  split=split, meta={"source": str(npz)}))
    tasks = {"diagnosis": Task.multiclass("diagnosis", names)}
    if "mel" in names and names == known:
        tasks["melanoma"] = Task("melanoma", ("other", "melanoma"), {c: int(c == "mel") for c in names})
    samples.sort(key=lambda s: s.id)
    return Dataset("medmnist", npz, samples, names, tasks, default_task="diagnosis")


FORMAT = Format("medmnist", read_medmnist, detect_medmnist, aliases=("dermamnist",), lacks=medmnist_lacks,
                description="a MedMNIST v2 .npz file (e.g. dermamnist.npz), or a folder holding exactly one")
