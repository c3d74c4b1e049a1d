"""PH2 dermoscopy database (Mendonça et al., EMBC 2013) in its original layout::

    <root>/PH2_dataset.txt                                        '||'-delimited table + legends
    <root>/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp
    <root>/PH2 Dataset images/IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp   lesion mask (optional)

Column "Clinical Diagnosis" gives the class (0 common nevus, 1 atypical nevus, 2 melanoma); the
other columns (asymmetry, pigment network, ..., colors) go into ``Sample.meta``.
"""

from __future__ import annotations

import re
from pathlib import Path

from medsight.data.base import Dataset, Sample, Task
from medsight.data.formats import Format
from medsight.errors import InputError, MedsightError

TABLE = "PH2_dataset.txt"
IMAGES = "PH2 Dataset images"
CLASSES = ("common_nevus", "atypical_nevus", "melanoma")
CODES = {"0": "common_nevus", "1": "atypical_nevus", "2": "melanoma"}
TASKS = {
    "diagnosis": Task.multiclass("diagnosis", CLASSES),
    "melanoma": Task("melanoma", ("nevus", "melanoma"),
                     {"common_nevus": 0, "atypical_nevus": 0, "melanoma": 1}),
}


def detect_ph2(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / TABLE).is_file() and (path / IMAGES).is_dir()


def ph2_lacks(path: str | Path) -> str | None:
    path = Path(path)
    if not path.is_dir():
        return None
    table, images = (path / TABLE).is_file(), (path / IMAGES).is_dir()
    if table == images:
        return None
    return f"it has no folder {IMAGES!r}" if table else f"it has no {TABLE}"


def _cells(line: str) -> list[str]:
    # "|| a || b || c | d ||" -> ["a", "b", "c", "d"]: '||' and '|' both separate cells.
    return [c.strip() for c in line.strip().replace("||", "|").split("|")[1:-1]]


def _key(column: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", column.lower()).strip("_")


def _value(key: str, cell: str):
    if key == "colors":
        return [int(t) for t in cell.split() if t.isdigit()]
    if cell == "":
        return None
    return int(cell) if cell.isdigit() else cell


def parse_table(path: Path) -> list[dict]:
    """The rows of ``PH2_dataset.txt`` as dicts keyed by snake-cased column names, with
    ``_line`` (1-based line number). The legend lines after the table are ignored."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc})") from None
    table = [(n, line) for n, line in enumerate(lines, 1) if line.lstrip().startswith("||")]
    if not table:
        raise InputError(path, "no '||'-delimited table found")
    header = [_key(c) for c in _cells(table[0][1])]
    for required in ("name", "clinical_diagnosis"):
        if required not in header:
            raise InputError(path, f"header row has no column {required.replace('_', ' ').title()!r} "
                                   f"(found: {', '.join(header)})")
    rows = []
    for n, line in table[1:]:
        cells = _cells(line)
        if len(cells) != len(header):
            raise InputError(path, f"line {n}: {len(cells)} cells but the header has {len(header)}")
        row = dict(zip(header, cells))
        row["_line"] = n
        rows.append(row)
    return rows


def read_ph2(root: str | Path, **options) -> Dataset:
    if options:
        raise MedsightError(f"the ph2 reader takes no options (got {', '.join(sorted(options))})")
    root = Path(root)
    table, images = root / TABLE, root / IMAGES
    if not table.is_file():
        raise InputError(table, "file not found (not a PH2 root?)")
    if not images.is_dir():
        raise InputError(images, "folder not found (not a PH2 root?)")
    samples: dict[str, Sample] = {}
    for row in parse_table(table):
        cid, line = row["name"], row["_line"]
        if not cid:
            raise InputError(table, f"line {line}: empty Name")
        if cid in samples:
            raise InputError(table, f"line {line}: duplicate image id {cid}")
        code = row["clinical_diagnosis"]
        if code not in CODES:
            raise InputError(table, f"line {line} ({cid}): unknown Clinical Diagnosis code {code!r} "
                                    "(expected 0, 1 or 2)")
        folder = images / cid
        image = folder / f"{cid}_Dermoscopic_Image" / f"{cid}.bmp"
        if not image.is_file():
            raise InputError(image, f"image not found (listed on line {line} of {TABLE})")
        mask = folder / f"{cid}_lesion" / f"{cid}_lesion.bmp"
        meta = {k: _value(k, v) for k, v in row.items()
                if k not in ("name", "clinical_diagnosis", "_line")}
        samples[cid] = Sample(id=cid, image=image, mask=mask if mask.is_file() else None,
                              diagnosis=CODES[code], patient_id=cid, meta=meta)
    for folder in sorted(images.iterdir()):
        if folder.is_dir() and folder.name not in samples:
            raise InputError(folder, f"image folder has no row in {table}")
    return Dataset("ph2", root, [samples[k] for k in sorted(samples)], CLASSES, dict(TASKS),
                   default_task="melanoma")


FORMAT = Format("ph2", read_ph2, detect_ph2, lacks=ph2_lacks, masks="always",
                description="PH2 dermoscopy: PH2_dataset.txt and 'PH2 Dataset images/'")
