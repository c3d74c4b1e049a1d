"""ISIC challenge layouts: ISIC 2017 Part 3 and ISIC 2018 Task 3 / HAM10000.

ISIC 2017 (``{S}`` is Training, Validation or Test; each split is optional)::

    <root>/ISIC-2017_{S}_Part3_GroundTruth.csv     image_id,melanoma,seborrheic_keratosis (0.0/1.0)
    <root>/ISIC-2017_{S}_Data/ISIC_*.jpg            (a split with images but no CSV is unlabelled)
    <root>/ISIC-2017_{S}_Data_metadata.csv          image_id,age_approximate,sex (optional; also
                                                    found inside the _Data folder)
    <root>/ISIC-2017_{S}_Part1_GroundTruth/<id>_segmentation.png   lesion masks (optional)

ISIC 2018 Task 3::

    <root>/ISIC2018_Task3_{S}_GroundTruth.csv       image,MEL,NV,BCC,AKIEC,BKL,DF,VASC (one-hot)
                                                    (or the same name inside a folder of that name)
    <root>/ISIC2018_Task3_{S}_Input/<image>.jpg
    <root>/ISIC2018_Task3_{S}_LesionGroupings.csv   image,lesion_id (optional: patient_id)

HAM10000 (when there is no ISIC2018_Task3 file)::

    <root>/HAM10000_metadata.csv                    lesion_id,image_id,dx,dx_type,age,sex,...
    <root>/HAM10000_images_part_1/, HAM10000_images_part_2/  (or HAM10000_images/ or images/)

The 2018 classes are in the MedMNIST order, so DermaMNIST and ISIC 2018 share label indices.
"""

from __future__ import annotations

from pathlib import Path

from medsight.data.base import Dataset, Sample, Task
from medsight.data.formats import Format
from medsight.data.tables import read_table
from medsight.errors import InputError, MedsightError

SPLITS = {"Training": "train", "Validation": "val", "Test": "test"}

CLASSES_2017 = ("nevus", "melanoma", "seborrheic_keratosis")
TASKS_2017 = {
    "diagnosis": Task.multiclass("diagnosis", CLASSES_2017),
    "melanoma": Task.one_vs_rest("melanoma", CLASSES_2017),
    "seborrheic_keratosis": Task.one_vs_rest("seborrheic_keratosis", CLASSES_2017),
}

CLASSES_2018 = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
TASKS_2018 = {
    "diagnosis": Task.multiclass("diagnosis", CLASSES_2018),
    "melanoma": Task("melanoma", ("other", "melanoma"), {c: int(c == "mel") for c in CLASSES_2018}),
}
HAM_IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images", "images")


# --- helpers -------------------------------------------------------------------------------------

def _no_options(fmt: str, options: dict) -> None:
    if options:
        raise MedsightError(f"the {fmt} reader takes no options (got {', '.join(sorted(options))})")


def _binary(path: Path, line: int, column: str, cell: str) -> int:
    try:
        value = float(cell)
    except ValueError:
        value = None
    if value not in (0.0, 1.0):
        raise InputError(path, f"line {line}: {column} is {cell!r}, expected 0 or 1")
    return int(value)


def _jpgs(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file()}


def _age(cell: str):
    cell = cell.strip()
    try:
        return int(float(cell))
    except ValueError:
        return None


def _meta(row: dict, skip: tuple[str, ...]) -> dict:
    meta = {}
    for key, cell in row.items():
        if key in skip:
            continue
        if key in ("age", "age_approximate"):
            meta[key] = _age(cell)
        else:
            meta[key] = None if cell.strip().lower() in ("", "unknown") else cell.strip()
    return meta


def _label_rows(path: Path, df, id_col: str):
    """(line, id, row dict) per row, rejecting empty and duplicate ids."""
    seen: dict[str, int] = {}
    for i, row in enumerate(df.to_dict("records")):
        line, cid = i + 2, row[id_col].strip()
        if not cid:
            raise InputError(path, f"line {line}: empty {id_col}")
        if cid in seen:
            raise InputError(path, f"line {line}: duplicate {id_col} {cid} (first on line {seen[cid]})")
        seen[cid] = line
        yield line, cid, row


def _match_images(table: Path | None, folder: Path, labels: dict[str, tuple[int, str | None]]):
    """Pair the labelled ids with the folder's images; every one of each must have the other."""
    if not folder.is_dir():
        raise InputError(folder, f"image folder not found (needed by {table.name})")
    images = _jpgs(folder)
    for cid, (line, _) in labels.items():
        if cid not in images:
            raise InputError(folder / f"{cid}.jpg", f"image not found (listed on line {line} of {table.name})")
    for cid in sorted(images):
        if cid not in labels:
            raise InputError(images[cid], f"image has no row in {table}")
    return images


def _add(samples: dict[str, Sample], sample: Sample, where: Path) -> None:
    if sample.id in samples:
        raise InputError(where, f"image id {sample.id} appears in two splits "
                                f"({samples[sample.id].split} and {sample.split})")
    samples[sample.id] = sample


# --- ISIC 2017 -----------------------------------------------------------------------------------

def detect_isic2017(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any(
        (path / f"ISIC-2017_{s}_Part3_GroundTruth.csv").is_file() or (path / f"ISIC-2017_{s}_Data").is_dir()
        for s in SPLITS)


def _metadata_2017(root: Path, name: str) -> dict[str, dict]:
    for where in (root / f"{name}_metadata.csv", root / name / f"{name}_metadata.csv"):
        if where.is_file():
            df = read_table(where, ("image_id",))
            return {row["image_id"].strip(): _meta(row, ("image_id",)) for row in df.to_dict("records")}
    return {}


def read_isic2017(root: str | Path, **options) -> Dataset:
    _no_options("isic2017", options)
    root = Path(root)
    samples: dict[str, Sample] = {}
    for long, split in SPLITS.items():
        table = root / f"ISIC-2017_{long}_Part3_GroundTruth.csv"
        folder = root / f"ISIC-2017_{long}_Data"
        if not table.is_file() and not folder.is_dir():
            continue
        labels: dict[str, tuple[int, str | None]] = {}
        if table.is_file():
            df = read_table(table, ("image_id", "melanoma", "seborrheic_keratosis"))
            for line, cid, row in _label_rows(table, df, "image_id"):
                mel = _binary(table, line, "melanoma", row["melanoma"])
                sk = _binary(table, line, "seborrheic_keratosis", row["seborrheic_keratosis"])
                if mel and sk:
                    raise InputError(table, f"line {line} ({cid}): melanoma and seborrheic_keratosis are both 1")
                labels[cid] = (line, "melanoma" if mel else "seborrheic_keratosis" if sk else "nevus")
            images = _match_images(table, folder, labels)
        else:
            images = _jpgs(folder)
            labels = {cid: (0, None) for cid in images}
        meta = _metadata_2017(root, f"ISIC-2017_{long}_Data")
        masks = root / f"ISIC-2017_{long}_Part1_GroundTruth"
        for cid, (_, diagnosis) in labels.items():
            mask = masks / f"{cid}_segmentation.png"
            _add(samples, Sample(id=cid, image=images[cid], mask=mask if mask.is_file() else None,
                                 diagnosis=diagnosis, split=split, meta=dict(meta.get(cid, {}))),
                 table if table.is_file() else folder)
    if not samples:
        raise InputError(root, "no ISIC-2017_*_Part3_GroundTruth.csv or ISIC-2017_*_Data folder found")
    return Dataset("isic2017", root, [samples[k] for k in sorted(samples)], CLASSES_2017,
                   dict(TASKS_2017), default_task="diagnosis")


# --- ISIC 2018 task 3 / HAM10000 ------------------------------------------------------------------

def _task3_file(root: Path, name: str) -> Path | None:
    for where in (root / f"{name}.csv", root / name / f"{name}.csv"):
        if where.is_file():
            return where
    return None


def detect_isic2018(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_dir():
        return False
    return (path / "HAM10000_metadata.csv").is_file() or any(
        _task3_file(path, f"ISIC2018_Task3_{s}_GroundTruth") or (path / f"ISIC2018_Task3_{s}_Input").is_dir()
        for s in SPLITS)


def _ham_metadata(root: Path) -> dict[str, dict]:
    table = root / "HAM10000_metadata.csv"
    if not table.is_file():
        return {}
    df = read_table(table, ("lesion_id", "image_id", "dx"))
    rows = {}
    for line, cid, row in _label_rows(table, df, "image_id"):
        dx = row["dx"].strip().lower()
        if dx not in CLASSES_2018:
            raise InputError(table, f"line {line} ({cid}): unknown dx {dx!r} (expected one of "
                                    f"{', '.join(CLASSES_2018)})")
        rows[cid] = {"line": line, "dx": dx, "lesion_id": row["lesion_id"].strip() or None,
                     "meta": _meta(row, ("image_id", "lesion_id", "dx"))}
    return rows


def _read_task3(root: Path, ham: dict[str, dict]) -> dict[str, Sample]:
    samples: dict[str, Sample] = {}
    for long, split in SPLITS.items():
        table = _task3_file(root, f"ISIC2018_Task3_{long}_GroundTruth")
        folder = root / f"ISIC2018_Task3_{long}_Input"
        if table is None and not folder.is_dir():
            continue
        labels: dict[str, tuple[int, str | None]] = {}
        if table is not None:
            df = read_table(table, ("image",) + tuple(c.upper() for c in CLASSES_2018))
            for line, cid, row in _label_rows(table, df, "image"):
                hot = [c for c in CLASSES_2018 if _binary(table, line, c.upper(), row[c.upper()])]
                if len(hot) != 1:
                    raise InputError(table, f"line {line} ({cid}): {len(hot)} classes are 1, expected exactly one")
                labels[cid] = (line, hot[0])
            images = _match_images(table, folder, labels)
        else:
            images = _jpgs(folder)
            labels = {cid: (0, None) for cid in images}
        groups = _task3_file(root, f"ISIC2018_Task3_{long}_LesionGroupings")
        lesions = {}
        if groups is not None:
            df = read_table(groups, ("image", "lesion_id"))
            lesions = dict(zip(df["image"].str.strip(), df["lesion_id"].str.strip()))
        for cid, (_, diagnosis) in labels.items():
            extra = ham.get(cid, {})
            _add(samples, Sample(id=cid, image=images[cid], diagnosis=diagnosis, split=split,
                                 patient_id=lesions.get(cid) or extra.get("lesion_id"),
                                 meta=dict(extra.get("meta", {}))),
                 table or folder)
    return samples


def _read_ham(root: Path, ham: dict[str, dict]) -> dict[str, Sample]:
    table = root / "HAM10000_metadata.csv"
    images: dict[str, Path] = {}
    for name in HAM_IMAGE_DIRS:
        if (root / name).is_dir():
            images.update(_jpgs(root / name))
    samples = {}
    for cid, row in ham.items():
        if cid not in images:
            searched = [d + "/" for d in HAM_IMAGE_DIRS if (root / d).is_dir()] or ["(no image folder)"]
            raise InputError(table, f"line {row['line']}: image {cid}.jpg not found in {', '.join(searched)}")
        samples[cid] = Sample(id=cid, image=images[cid], diagnosis=row["dx"], patient_id=row["lesion_id"],
                              meta=dict(row["meta"]))
    return samples


def read_isic2018(root: str | Path, **options) -> Dataset:
    _no_options("isic2018", options)
    root = Path(root)
    ham = _ham_metadata(root)
    samples = _read_task3(root, ham)
    if not samples and ham:
        samples = _read_ham(root, ham)
    if not samples:
        raise InputError(root, "no ISIC2018_Task3_* ground truth or input folder, and no HAM10000_metadata.csv")
    return Dataset("isic2018", root, [samples[k] for k in sorted(samples)], CLASSES_2018,
                   dict(TASKS_2018), default_task="diagnosis")


FORMATS = (
    Format("isic2017", read_isic2017, detect_isic2017, masks="optional",
           description="ISIC 2017 Part 3: ISIC-2017_*_Part3_GroundTruth.csv and ISIC-2017_*_Data/"),
    Format("isic2018", read_isic2018, detect_isic2018, aliases=("ham10000",),
           description="ISIC 2018 Task 3 (ISIC2018_Task3_*) or HAM10000 (HAM10000_metadata.csv)"),
)
