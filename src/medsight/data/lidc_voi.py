"""LIDC-IDRI nodule volumes of interest (the layout of ../shared/datasets/lidc_vois)::

    <root>/MetadatabyNoduleMaxVoting.csv              one row per nodule: patient_id, nodule_id, seriesuid,
                                                      coordX/Y/Z, diameter_mm, bbox*, Diagnosis (Benign/Malign),
                                                      Malignancy_value (1-5) and the other LIDC characteristics
    <root>/VOIs/image/LIDC-IDRI-XXXX_R_N.nii.gz        nodule-centred CT crop, int16 HU
    <root>/VOIs/nodule_mask/LIDC-IDRI-XXXX_R_N.nii.gz  its nodule mask, 0/1

``N`` in a file name is the row's ``nodule_id``: ``LIDC-IDRI-0003_R_2`` is nodule 2 of patient
LIDC-IDRI-0003, and that stem is the sample id. Volumes load lazily through
:func:`medsight.data.volumeio.load` ((1, D, H, W) in (z, y, x) order); spacing (z, y, x) comes from the
NIfTI header, read at open time together with the mask header to check that both grids agree. The
CSV's other columns go into ``Sample.meta`` under snake-case names (``diameter_mm``,
``malignancy_value``, ``internal_structure``, ...).

Labels (option ``label_rule``): ``"diagnosis"`` (default) is the dataset's own ``Diagnosis`` column;
``"malignancy"`` applies the literature rule to ``Malignancy_value``: < 3 benign, > 3 malignant, and
a rating of 3 as ``rating3`` says: ``"exclude"`` (default), ``"benign"``, ``"malignant"`` or
``"unlabelled"`` (kept as samples without a label, ``diagnosis`` None: what semi-supervised recipes
learn from and supervised ones leave out). Excluded nodules are not samples; ``Dataset.excluded``
lists them with the reason.

Every VOI needs a metadata row and a mask of the image's shape, and every row a VOI: problems are
collected and raised as one :class:`InputError` listing them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from medsight.data import volumeio
from medsight.data.base import Dataset, Sample, Task
from medsight.data.formats import Format
from medsight.data.tables import read_table
from medsight.errors import InputError, MedsightError

METADATA = "MetadatabyNoduleMaxVoting.csv"
IMAGES = Path("VOIs") / "image"
MASKS = Path("VOIs") / "nodule_mask"
SUFFIX = ".nii.gz"
CLASSES = ("benign", "malignant")
TASKS = {"malignancy": Task.multiclass("malignancy", CLASSES)}
LABEL_RULES = ("diagnosis", "malignancy")
RATING3 = ("exclude", "benign", "malignant")
DIAGNOSES = {"benign": "benign", "malign": "malignant", "malignant": "malignant"}
VOI_RATING3 = RATING3 + ("unlabelled",)  # this reader also keeps rating-3 nodules without a label
MAX_LISTED = 10


def check_rating3(rating3: str, allowed: tuple[str, ...] = RATING3) -> str:
    if rating3 not in allowed:
        raise MedsightError(f"option rating3={rating3!r}: expected one of {', '.join(allowed)}")
    return rating3


def label_from_rating(rating: float, rating3: str = "exclude") -> str | None:
    """The literature rule on a (mean) malignancy rating 1-5: < 3 benign, > 3 malignant, exactly 3
    as ``rating3`` says; ``None`` means excluded."""
    if math.isclose(rating, 3.0):
        return None if rating3 == "exclude" else rating3
    return "benign" if rating < 3 else "malignant"


def raise_problems(root: Path, what: str, problems: list[tuple[Path, str]]) -> None:
    """One error for a batch of problems: naming the file when there is one, else counting and
    listing them."""
    if not problems:
        return
    if len(problems) == 1:
        raise InputError(*problems[0])
    listed = "\n".join(f"  - {p}: {msg}" for p, msg in problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise InputError(root, f"{len(problems)} {what}:\n{listed}{more}")


def _key(column: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", re.sub(r"([a-z])([A-Z])", r"\1_\2", column).lower()).strip("_")


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _stems(folder: Path) -> dict[str, Path]:
    return {p.name[: -len(SUFFIX)]: p for p in folder.iterdir()
            if p.name.endswith(SUFFIX) and not p.name.startswith(".")}


def detect_lidc_voi(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / METADATA).is_file() and (path / IMAGES).is_dir()


def lidc_voi_lacks(path: str | Path) -> str | None:
    path = Path(path)
    if not path.is_dir():
        return None
    table, images = (path / METADATA).is_file(), (path / IMAGES).is_dir()
    if table == images:
        return None
    return f"it has no folder {IMAGES}" if table else f"it has no {METADATA}"


def read_lidc_voi(root: str | Path, label_rule: str = "diagnosis", rating3: str = "exclude",
                  metadata: str | Path = METADATA, **options) -> Dataset:
    if options:
        raise MedsightError(f"the lidc-voi reader takes the options label_rule, rating3, metadata "
                            f"(got {', '.join(sorted(options))})")
    if label_rule not in LABEL_RULES:
        raise MedsightError(f"option label_rule={label_rule!r}: expected one of {', '.join(LABEL_RULES)}")
    check_rating3(rating3, VOI_RATING3)
    root = Path(root)
    table, images, masks = root / metadata, root / IMAGES, root / MASKS
    for folder in (images, masks):
        if not folder.is_dir():
            raise InputError(folder, "folder not found (not an LIDC VOI root?)")
    if not table.is_file():
        raise InputError(table, "file not found (not an LIDC VOI root?)")
    needed = ("patient_id", "nodule_id", "Diagnosis" if label_rule == "diagnosis" else "Malignancy_value")
    df = read_table(table, needed, dtype=None)  # numbers as numbers: nodule_id, Malignancy_value, sizes

    rows: dict[str, tuple[int, dict]] = {}
    for i, row in enumerate(df.to_dict("records")):
        line = i + 2
        patient, nodule = str(row["patient_id"]).strip(), row["nodule_id"]
        try:
            nodule = int(nodule)
        except (TypeError, ValueError):
            raise InputError(table, f"line {line}: nodule_id {nodule!r} is not a whole number") from None
        cid = f"{patient}_R_{nodule}"
        if cid in rows:
            raise InputError(table, f"line {line}: duplicate nodule {patient} {nodule} (first on line {rows[cid][0]})")
        rows[cid] = (line, row)

    image_files, mask_files = _stems(images), _stems(masks)
    problems: list[tuple[Path, str]] = []
    for cid in sorted(set(image_files) - set(rows)):
        problems.append((image_files[cid], f"VOI has no row in {table.name} (patient_id and nodule_id)"))
    for cid in sorted(set(rows) - set(image_files)):
        problems.append((table, f"line {rows[cid][0]}: nodule {cid} has no VOI {IMAGES / (cid + SUFFIX)}"))
    for cid in sorted(set(mask_files) - set(image_files)):
        problems.append((mask_files[cid], "mask has no image"))

    samples: list[Sample] = []
    excluded: dict[str, str] = {}
    keys = {column: _key(column) for column in df.columns}  # once, not per row: 673 rows x 33 columns
    for cid in sorted(set(rows) & set(image_files), key=lambda c: (rows[c][1]["patient_id"], int(rows[c][1]["nodule_id"]))):
        line, row = rows[cid]
        image = image_files[cid]
        if cid not in mask_files:
            problems.append((image, f"no mask {MASKS / image.name}"))
            continue
        try:
            info, mask_info = volumeio.read_info(image), volumeio.read_info(mask_files[cid])
        except InputError as exc:
            problems.append((Path(exc.path), exc.problem))
            continue
        if info.shape != mask_info.shape:
            problems.append((mask_files[cid], f"mask is {'x'.join(map(str, mask_info.shape))} but its image is "
                                              f"{'x'.join(map(str, info.shape))} (D x H x W)"))
            continue
        if label_rule == "diagnosis":
            text = str(row["Diagnosis"]).strip().lower()
            if text not in DIAGNOSES:
                raise InputError(table, f"line {line} ({cid}): Diagnosis {row['Diagnosis']!r} is not Benign or Malign")
            diagnosis = DIAGNOSES[text]
        else:
            rating = _plain(row["Malignancy_value"])
            if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not 1 <= rating <= 5:
                raise InputError(table, f"line {line} ({cid}): Malignancy_value {rating!r} is not a rating 1-5")
            unlabelled = rating3 == "unlabelled" and math.isclose(float(rating), 3.0)
            diagnosis = None if unlabelled else label_from_rating(float(rating), rating3)
            if diagnosis is None and not unlabelled:
                excluded[cid] = f"Malignancy_value 3 (label_rule=malignancy, rating3={rating3})"
                continue
        meta = {keys[k]: _plain(v) for k, v in row.items() if k != "patient_id"}
        samples.append(Sample(id=cid, image=image, mask=mask_files[cid], diagnosis=diagnosis,
                              patient_id=str(row["patient_id"]).strip(), meta=meta, spacing=info.spacing,
                              loader=volumeio.load))
    raise_problems(root, "problems with the LIDC VOIs", problems)
    if not samples:
        raise InputError(root, "no nodules" + (f" ({len(excluded)} excluded by the label rule)" if excluded else ""))
    return Dataset("lidc-voi", root, samples, CLASSES, dict(TASKS), default_task="malignancy", excluded=excluded)


FORMAT = Format("lidc-voi", read_lidc_voi, detect_lidc_voi, aliases=("lidc_voi",), lacks=lidc_voi_lacks, masks="always",
                description="LIDC-IDRI nodule VOIs: MetadatabyNoduleMaxVoting.csv and VOIs/{image,nodule_mask}/")
