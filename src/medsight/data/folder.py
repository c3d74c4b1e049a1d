"""A user's own folder of images with a labels CSV, and plain unlabelled images.

``folder`` layout::

    <root>/labels.csv        (or the folder's only .csv) columns id,label[,image][,mask][,patient_id][,split][,...]
    <root>/<id>.png          (any of IMAGE_SUFFIXES; or in ``image_dir``; or the path in column ``image``)

Paths in the ``image`` and ``mask`` columns are relative to the root. An empty label is an
unlabelled case; other columns go into ``Sample.meta``. Classes are the sorted labels (numerically
when all are integers) unless ``classes=`` gives the order; task "label" is multi-class, binary
with the last class positive when there are two (``positive=`` picks it).

``images`` layout: one image file, a list of them, or a folder of images with no CSV; unlabelled,
ids are the file stems.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from medsight.data.base import Dataset, Sample, Task
from medsight.data.formats import Format
from medsight.data.imageio import IMAGE_SUFFIXES
from medsight.data.tables import read_table
from medsight.errors import InputError, MedsightError
from medsight.io import umasked

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}
COLUMNS = ("id", "label", "image", "mask", "patient_id", "split")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _find_csv(root: Path) -> Path | None:
    if (root / "labels.csv").is_file():
        return root / "labels.csv"
    found = [p for p in root.glob("*.csv") if p.is_file()]
    return found[0] if len(found) == 1 else None


def _header(table: Path) -> list[str] | None:
    try:
        with open(table, encoding="utf-8", errors="replace") as fh:
            return [c.strip().strip('"') for c in fh.readline().strip().split(",")]
    except OSError:
        return None


def detect_folder(path: str | Path) -> bool:
    path = Path(path)
    table = _find_csv(path) if path.is_dir() else None
    header = _header(table) if table is not None else None
    return header is not None and {"id", "label"} <= set(header)


def folder_lacks(path: str | Path) -> str | None:
    """What a folder holding a CSV lacks to be read as the folder layout."""
    path = Path(path)
    if not path.is_dir():
        return None
    tables = sorted(p.name for p in path.glob("*.csv") if p.is_file())
    table = _find_csv(path)
    if table is None:
        return (f"it has {len(tables)} CSV files ({', '.join(tables[:5])}) and no labels.csv to choose"
                if tables else None)
    header = _header(table)
    if header is None:
        return f"{table.name} cannot be read"
    missing = [c for c in ("id", "label") if c not in header]
    return f"{table.name} has no column {' or '.join(repr(c) for c in missing)} (found: {', '.join(header)})"


def _sort_labels(labels: set[str]) -> tuple[str, ...]:
    if all(lab.lstrip("-").isdigit() for lab in labels):
        return tuple(sorted(labels, key=int))
    return tuple(sorted(labels))


def _label_task(classes: tuple[str, ...], positive: str | None) -> dict[str, Task]:
    if positive is not None:
        if positive not in classes:
            raise MedsightError(f"option positive={positive!r} is not a class ({', '.join(classes)})")
        if len(classes) != 2:
            raise MedsightError(f"option positive= needs exactly two classes, not {len(classes)}")
        classes = tuple(c for c in classes if c != positive) + (positive,)
    return {"label": Task.multiclass("label", classes)} if classes else {}


def read_folder(root: str | Path, csv: str | Path | None = None, image_dir: str | Path | None = None,
                classes: Sequence[str] | str | None = None, positive: str | None = None,
                **options) -> Dataset:
    if options:
        raise MedsightError(f"the folder reader takes the options csv, image_dir, classes, positive "
                            f"(got {', '.join(sorted(options))})")
    root = Path(root)
    table = root / csv if csv is not None else _find_csv(root)
    if table is None:
        raise InputError(root, "no labels.csv (and not exactly one .csv) in this folder")
    if not table.is_file():
        raise InputError(table, "file not found")
    folder = root / image_dir if image_dir is not None else root
    if not folder.is_dir():
        raise InputError(folder, "image folder not found")
    df = read_table(table, ("id", "label"))
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    by_stem: dict[str, list[Path]] = {}
    for p in _images_in(folder):
        by_stem.setdefault(p.stem, []).append(p)

    samples: dict[str, Sample] = {}
    lines: dict[str, int] = {}
    for i, row in enumerate(df.to_dict("records")):
        line, cid = i + 2, row["id"].strip()
        where = f"line {line} of {table.name}"
        if not cid:
            raise InputError(table, f"line {line}: empty id")
        if cid in samples:
            raise InputError(table, f"line {line}: duplicate id {cid!r} (first on line {lines[cid]})")
        label = row["label"].strip() or None
        if classes and label is not None and label not in classes:
            raise InputError(table, f"line {line} ({cid}): label {label!r} is not one of the classes "
                                    f"{', '.join(classes)}")
        if row.get("image", "").strip():
            image = root / row["image"].strip()
            if not image.is_file():
                raise InputError(image, f"image not found ({where})")
        elif (folder / cid).is_file():
            image = folder / cid
        else:
            found = by_stem.get(cid, [])
            if len(found) != 1:
                problem = (f"no image named {cid}.<{'|'.join(s[1:] for s in IMAGE_SUFFIXES)}> in {folder}"
                           if not found else f"several images named {cid}: {', '.join(p.name for p in found)}")
                raise InputError(table, f"line {line}: {problem}")
            image = found[0]
        mask = None
        if row.get("mask", "").strip():
            mask = root / row["mask"].strip()
            if not mask.is_file():
                raise InputError(mask, f"mask not found ({where})")
        split = row.get("split", "").strip().lower() or None
        if split is not None and split not in SPLIT_NAMES:
            raise InputError(table, f"line {line} ({cid}): split {row['split']!r} is not train, val or test")
        meta = {k: (v.strip() or None) for k, v in row.items() if k not in COLUMNS}
        samples[cid] = Sample(id=cid, image=image, mask=mask, diagnosis=label,
                              patient_id=row.get("patient_id", "").strip() or None,
                              split=SPLIT_NAMES.get(split), meta=meta)
        lines[cid] = line
    if not samples:
        raise InputError(table, "no rows")
    names = tuple(classes) if classes else _sort_labels({s.diagnosis for s in samples.values()} - {None})
    if len(set(names)) != len(names):
        raise MedsightError(f"option classes has repeated names: {', '.join(names)}")
    tasks = _label_task(names, positive)
    return Dataset("folder", root, [samples[k] for k in sorted(samples)], names, tasks,
                   default_task="label" if tasks else None)


def detect_images(path: str | Path) -> bool:
    path = Path(path)
    if path.is_file():
        return _is_image(path)
    return path.is_dir() and not any(path.glob("*.csv")) and bool(_images_in(path))


def read_images(path: str | Path | Sequence[str | Path], **options) -> Dataset:
    if options:
        raise MedsightError(f"the images reader takes no options (got {', '.join(sorted(options))})")
    if isinstance(path, (str, Path)) and Path(path).is_dir():
        root = Path(path)
        files = _images_in(root)
        if not files:
            raise InputError(root, f"no images found (looked for {', '.join('*' + s for s in IMAGE_SUFFIXES)})")
    else:
        files = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
        if not files:
            raise MedsightError("no image files given")
        for p in files:
            if not p.is_file():
                raise InputError(p, "file not found")
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(p, f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
        root = Path(os.path.commonpath([str(p.resolve().parent) for p in files]))
    samples: dict[str, Sample] = {}
    for p in files:
        if p.stem in samples:
            raise InputError(p, f"two images have the id {p.stem!r}: {samples[p.stem].image} and {p}")
        samples[p.stem] = Sample(id=p.stem, image=p)
    return Dataset("images", root, [samples[k] for k in sorted(samples)], (), {}, default_task=None)


# -- writing the folder layout ---------------------------------------------------------------------
def _safe_id(sample_id: str) -> str:
    if not sample_id or sample_id in (".", "..") or any(c in sample_id for c in '/\\\0'):
        raise MedsightError(f"cannot write case id {sample_id!r} as a file name")
    return sample_id


def write_folder(dataset: Dataset, out_dir: str | Path) -> Path:
    """Write ``dataset`` in medsight's ``folder`` layout under ``out_dir`` and return its path.

    Writes ``images/<id>.png`` (RGB or grey), ``masks/<id>.png`` (0/255, for samples with a mask)
    and ``labels.csv`` with header ``id,label,image,mask`` (paths relative to ``out_dir``; empty
    label / mask where a sample has none). Refuses an ``out_dir`` that exists and is not an empty
    folder. Everything is written into a temporary sibling folder that is renamed into place at the
    end, so a failure leaves nothing half-written.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise MedsightError(f"{out_dir}: exists and is not a folder; refusing to write a dataset there")
        if any(out_dir.iterdir()):
            raise MedsightError(f"{out_dir}: folder exists and is not empty; refusing to overwrite it")
    ids = [_safe_id(s.id) for s in dataset.samples]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise MedsightError(f"{out_dir}: duplicate case ids {dup[:5]}; cannot write them as files")

    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out_dir.name}.", suffix=".part"))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        rows = []
        for sample in dataset.samples:
            image = np.asarray(sample.load_image())
            if image.dtype != np.uint8:
                raise MedsightError(f"{sample.source}: image is {image.dtype}, write_folder writes uint8 only")
            arr = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
            image_rel = f"images/{sample.id}.png"
            Image.fromarray(np.ascontiguousarray(arr)).save(tmp / image_rel, format="PNG")
            mask_rel = ""
            mask = sample.load_mask()
            if mask is not None:
                mask_rel = f"masks/{sample.id}.png"
                Image.fromarray(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)).save(tmp / mask_rel, format="PNG")
            rows.append([sample.id, sample.diagnosis or "", image_rel, mask_rel])
        with open(tmp / "labels.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "label", "image", "mask"])
            writer.writerows(rows)
        os.chmod(tmp, umasked(0o777))  # mkdtemp makes it private; a new folder follows the umask
        if out_dir.exists():  # an empty folder: replace it
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir



FORMATS = (
    Format("folder", read_folder, detect_folder, lacks=folder_lacks, masks="optional",
           description="a folder of images with labels.csv (id,label[,image][,mask][,patient_id][,split])"),
    Format("images", read_images, detect_images,
           description="one image file, a list of them, or a folder of images with no CSV (unlabelled)"),
)
