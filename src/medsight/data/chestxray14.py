"""NIH ChestX-ray14 (Wang et al., CVPR 2017) in the layout its download unpacks to::

    <root>/Data_Entry_2017.csv     Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age,
                                   Patient Gender, View Position, OriginalImage[Width, Height],
                                   OriginalImagePixelSpacing[x, y]   (or Data_Entry_2017_v2020.csv)
    <root>/train_val_list.txt      official patient-wise split: one image file name per line
    <root>/test_list.txt
    <root>/images_001/images/*.png ... images_012/images/*.png   (as the official tarballs unpack)
      or <root>/images/*.png       (one flat folder; any ``images*/`` folder with PNGs, or with an
                                   ``images/`` folder of PNGs, is searched)

Each case is multi-label: ``Sample.diagnosis`` is the "Finding Labels" cell as the CSV writes it
("Atelectasis|Effusion", "No Finding" for none), and the dataset's one task, ``findings``, is a
multi-label :class:`~medsight.data.base.Task` over the 14 labels in their usual order
(``Task.targets`` turns a diagnosis into 14 zeros and ones).

Splits: "test" for the images of ``test_list.txt``; the images of ``train_val_list.txt`` are split
by patient, ``val_fraction`` (0.1) of the train_val *patients* (drawn with ``seed``) to "val", the
rest to "train". The draw is over every train_val patient of the CSV, so a partial download keeps
the same split. Without either split file every case has ``split=None``.

The PNGs are grey, but a few are stored RGB or RGBA: every sample's ``loader`` reads one channel,
``(1, H, W)`` uint8. With ``require_images=False`` rows whose image is in no ``images*`` folder
(a partial download) are left out and counted in ``Dataset.excluded``; otherwise they are an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from medsight.data.base import Dataset, Sample, Task
from medsight.data.formats import Format
from medsight.data.imageio import _open
from medsight.data.tables import read_table
from medsight.errors import InputError, MedsightError

TABLES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
TRAIN_VAL, TEST = "train_val_list.txt", "test_list.txt"
NO_FINDING = "No Finding"
CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
           "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
TASKS = {"findings": Task("findings", CLASSES, {}, multilabel=True)}
REQUIRED = ("Image Index", "Finding Labels", "Patient ID")


def _table(root: Path) -> Path | None:
    for name in TABLES:
        if (root / name).is_file():
            return root / name
    return None


def detect_chestxray14(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and _table(path) is not None


# --- reading one image ---------------------------------------------------------------------------

def read_grey(path: str | Path) -> np.ndarray:
    """A PNG (grey, RGB, RGBA, palette or 16-bit) as one channel, uint8 ``(1, H, W)``.

    RGB(A) goes through the ITU-R 601 luma (exact for grey stored as RGB); alpha is dropped;
    16-bit images are rescaled from their own min-max to 0-255."""
    img = _open(Path(path))
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        grey = arr.round().astype(np.uint8)
    elif img.mode == "L":
        grey = np.asarray(img, dtype=np.uint8)
    else:
        grey = np.asarray(img.convert("L"), dtype=np.uint8)
    return np.ascontiguousarray(grey[None])


def _load(path: Path, is_mask: bool) -> np.ndarray:
    if is_mask:
        raise InputError(path, "ChestX-ray14 has no masks")
    return read_grey(path)


# --- the layout ----------------------------------------------------------------------------------

def image_folders(root: Path) -> list[Path]:
    """The folders that hold the PNGs: each ``images*`` folder, and an ``images/`` inside it."""
    folders = []
    for top in sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("images")):
        folders.append(top)
        inner = top / "images"
        if inner.is_dir():
            folders.append(inner)
    return folders


def find_images(root: Path) -> dict[str, Path]:
    """File name -> path of every PNG in the image folders; a name found twice is an error."""
    found: dict[str, Path] = {}
    for folder in image_folders(root):
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(".png") and not entry.name.startswith(".") and entry.is_file():
                    if entry.name in found:
                        raise InputError(Path(entry.path), f"image is also at {found[entry.name]}; "
                                                           "which one is the case is ambiguous")
                    found[entry.name] = Path(entry.path)
    return found


def read_split_file(path: Path) -> dict[str, int]:
    """Image file name -> line number of a split list (blank lines skipped, a repeat is an error)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc})") from None
    names: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        if name in names:
            raise InputError(path, f"line {n}: {name} is listed twice (first on line {names[name]})")
        names[name] = n
    return names


def parse_findings(cell: str) -> str:
    """The "Finding Labels" cell, whitespace around each finding removed; ``ValueError`` naming an
    unknown finding."""
    findings = [f.strip() for f in cell.split("|")]
    TASKS["findings"].targets("|".join(findings))  # raises ValueError naming the bad finding
    return "|".join(findings)


def _int(cell: str):
    """'58', '058Y' (the first release wrote ages so) or '' -> 58 / None."""
    m = re.fullmatch(r"\s*(\d+)\s*[A-Za-z]?\s*", cell or "")
    return int(m.group(1)) if m else None


def _float(cell: str):
    try:
        return float(cell)
    except (TypeError, ValueError):
        return None


def _meta(row: dict) -> dict:
    get = lambda key: (row.get(key) or "").strip()  # noqa: E731
    meta = {
        "age": _int(get("Patient Age")),
        "gender": get("Patient Gender") or None,
        "view_position": get("View Position") or None,
        "follow_up": _int(get("Follow-up #")),
    }
    width, height = _int(get("OriginalImage[Width")), _int(get("Height]"))
    if width is not None and height is not None:
        meta["original_size"] = (width, height)  # (width, height) in pixels, as the CSV gives it
    sx, sy = _float(get("OriginalImagePixelSpacing[x")), _float(get("y]"))
    if sx is not None and sy is not None:
        meta["pixel_spacing"] = (sx, sy)  # (x, y) in mm
    return meta


def patient_val_split(patients, val_fraction: float = 0.1, seed: int = 0) -> set[str]:
    """The patients drawn for validation: ``round(val_fraction * n)`` of the distinct ``patients``
    (at least one when ``val_fraction > 0`` and there are two or more), seeded."""
    unique = sorted(set(patients))
    n_val = int(round(val_fraction * len(unique)))
    if val_fraction > 0 and n_val == 0 and len(unique) >= 2:
        n_val = 1
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i] for i in order[:n_val]}


def read_chestxray14(root: str | Path, val_fraction: float = 0.1, seed: int = 0, require_images: bool = True,
                     **options) -> Dataset:
    if options:
        raise MedsightError("the chestxray14 reader takes the options val_fraction, seed, require_images "
                            f"(got {', '.join(sorted(options))})")
    try:
        val_fraction, seed = float(val_fraction), int(seed)
    except (TypeError, ValueError) as exc:
        raise MedsightError(f"chestxray14: bad option ({exc})") from None
    if not 0.0 <= val_fraction < 1.0:
        raise MedsightError(f"chestxray14: val_fraction must be in [0, 1), got {val_fraction}")
    if seed < 0:
        raise MedsightError(f"chestxray14: seed must be >= 0, got {seed}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such folder")
    table = _table(root)
    if table is None:
        raise InputError(root / TABLES[0], "file not found (not a ChestX-ray14 root?)")
    df = read_table(table, required=REQUIRED)

    # the official split files: both or neither
    lists = {name: root / name for name in (TRAIN_VAL, TEST)}
    present = [name for name, p in lists.items() if p.is_file()]
    if len(present) == 1:
        missing = TEST if present == [TRAIN_VAL] else TRAIN_VAL
        raise InputError(lists[missing], f"file not found (the official split needs it next to {present[0]})")
    split_of: dict[str, str] = {}
    if present:
        train_val, test = read_split_file(lists[TRAIN_VAL]), read_split_file(lists[TEST])
        for name, n in test.items():
            if name in train_val:
                raise InputError(lists[TEST], f"line {n}: {name} is also in {TRAIN_VAL} "
                                              f"(line {train_val[name]}); an image has one split")
        split_of = {**{k: "train_val" for k in train_val}, **{k: "test" for k in test}}

    # the CSV rows
    rows: dict[str, tuple[int, dict]] = {}
    for i, row in enumerate(df.to_dict("records")):
        line, name = i + 2, row["Image Index"].strip()
        if not name:
            raise InputError(table, f"line {line}: empty Image Index")
        if name in rows:
            raise InputError(table, f"line {line}: duplicate Image Index {name} (first on line {rows[name][0]})")
        if not row["Patient ID"].strip():
            raise InputError(table, f"line {line} ({name}): empty Patient ID")
        try:
            row["Finding Labels"] = parse_findings(row["Finding Labels"])
        except ValueError as exc:
            raise InputError(table, f"line {line} ({name}): {exc}") from None
        if split_of and name not in split_of:
            raise InputError(table, f"line {line}: {name} is in neither {TRAIN_VAL} nor {TEST}")
        rows[name] = (line, row)
    for name, split in split_of.items():
        if name not in rows:
            listing = lists[TRAIN_VAL if split == "train_val" else TEST]
            raise InputError(listing, f"{name} has no row in {table.name}")

    # images
    images = find_images(root)
    for name, path in images.items():
        if name not in rows:
            raise InputError(path, f"image has no row in {table}")
    excluded: dict[str, str] = {}
    for name, (line, _) in rows.items():
        if name not in images:
            if require_images:
                where = ", ".join(str(f.relative_to(root)) for f in image_folders(root)) or "none found"
                raise InputError(table, f"line {line}: image {name} is in no images*/ folder ({where}); "
                                        "read the labels of a partial download with require_images=False")
            excluded[Path(name).stem] = "image not downloaded (in no images*/ folder)"

    val_patients = patient_val_split(
        [row["Patient ID"].strip() for name, (_, row) in rows.items() if split_of.get(name) == "train_val"],
        val_fraction, seed)
    samples = []
    for name in sorted(rows):
        if name not in images:
            continue
        row = rows[name][1]
        patient = row["Patient ID"].strip()
        split = split_of.get(name)
        if split == "train_val":
            split = "val" if patient in val_patients else "train"
        samples.append(Sample(id=Path(name).stem, image=images[name], diagnosis=row["Finding Labels"],
                              patient_id=patient, split=split, meta=_meta(row), loader=_load))
    return Dataset("chestxray14", root, samples, CLASSES, dict(TASKS), default_task="findings",
                   excluded=excluded)


FORMAT = Format("chestxray14", read_chestxray14, detect_chestxray14,
                description="NIH ChestX-ray14: Data_Entry_2017.csv and images*/ folders of PNGs")

__all__ = ["CLASSES", "FORMAT", "NO_FINDING", "TASKS", "detect_chestxray14", "read_chestxray14", "read_grey",
           "find_images", "image_folders", "patient_val_split"]
