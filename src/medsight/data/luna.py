"""LUNA16 and Tianchi 2017 lung nodule data: MetaImage CT volumes plus a CSV of world coordinates::

    <root>/[subset0/ ... | train_subset00/ ...]<seriesuid>.mhd (+ .raw)   CT volumes, int16 HU, any depth
    <root>/[CSVFILES/ | csv/train/]annotations.csv    seriesuid, coordX, coordY, coordZ, diameter_mm
    <root>/[...]candidates.csv (or candidates_V2.csv)  seriesuid, coordX, coordY, coordZ, class (0/1)

The CSV is ``annotations.csv`` when exactly one is found under the root, else ``candidates.csv`` /
``candidates_V2.csv``; option ``csv=`` (relative to the root) names another. One sample per row,
id ``<seriesuid>_<k>`` (k = 0, 1, ... in CSV order within the series). ``image`` is the whole volume,
loaded lazily by :func:`medsight.data.volumeio.load` as (1, D, H, W) (the crop around the nodule comes
later, in the transforms); there is no mask. World (x, y, z) mm become voxel indices (z, y, x) through
each header's origin, spacing and direction: ``meta["center_zyx"]`` (continuous indices),
``meta["center_xyz_mm"]``, and ``diameter_mm`` or ``class``. ``patient_id`` is the seriesuid (the
CSVs name no patient).

Labels: annotations.csv rows are nodules without a malignancy label (``diagnosis`` None): the
unlabelled nodules of the semi-supervised methods (task ``malignancy``, classes benign / malignant,
for joining labelled LIDC data). candidates.csv rows are "nodule" (class 1) or "non_nodule" (0),
task ``nodule``.

Bad input: a row whose seriesuid has no volume, or whose coordinate lies outside its volume, is an
error naming the CSV line; with ``skip_missing=True`` / ``skip_outside=True`` such rows are left out
and listed in ``Dataset.excluded`` with the reason instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsight.data import volumeio
from medsight.data.base import Dataset, Sample, Task
from medsight.data.formats import Format
from medsight.data.lidc_voi import TASKS as MALIGNANCY_TASKS
from medsight.data.tables import read_table, require_columns
from medsight.errors import InputError, MedsightError

ANNOTATIONS = ("annotations.csv",)
CANDIDATES = ("candidates.csv", "candidates_V2.csv")
COORDS = ("coordX", "coordY", "coordZ")
CANDIDATE_CLASSES = ("non_nodule", "nodule")


def _csv_files(root: Path, names: tuple[str, ...]) -> list[Path]:
    found = []
    for pattern in ("", "*/", "*/*/"):
        for name in names:
            found.extend(p for p in root.glob(pattern + name) if p.is_file())
    return sorted(set(found))


def _header(path: Path) -> set[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return {c.strip().strip('"') for c in fh.readline().strip().split(",")}
    except OSError:
        return set()


def _volumes(root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for p in root.rglob("*.mhd"):
        if p.is_file() and not p.name.startswith("."):
            found.setdefault(p.stem, []).append(p)
    return found


def detect_luna(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_dir():
        return False
    tables = _csv_files(path, ANNOTATIONS + CANDIDATES)
    if not any({"seriesuid", *COORDS} <= _header(t) for t in tables):
        return False
    return any(path.glob("*.mhd")) or any(path.glob("*/*.mhd")) or any(path.glob("*/*/*.mhd"))


def luna_lacks(path: str | Path) -> str | None:
    path = Path(path)
    if not path.is_dir():
        return None
    tables = [t for t in _csv_files(path, ANNOTATIONS + CANDIDATES) if {"seriesuid", *COORDS} <= _header(t)]
    volumes = any(path.glob("*.mhd")) or any(path.glob("*/*.mhd")) or any(path.glob("*/*/*.mhd"))
    if bool(tables) == volumes:
        return None
    return ("it has no .mhd volumes (in the folder or two levels below)" if tables else
            f"it has no {' or '.join(ANNOTATIONS + CANDIDATES)} with columns seriesuid, {', '.join(COORDS)}")


def _pick_csv(root: Path, csv: str | Path | None) -> Path:
    if csv is not None:
        table = root / csv
        if not table.is_file():
            raise InputError(table, "CSV file not found")
        return table
    for names in (ANNOTATIONS, CANDIDATES):
        found = _csv_files(root, names)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise InputError(root, f"several {' / '.join(names)} files: {', '.join(str(p.relative_to(root)) for p in found)}"
                                   "; name one with the option csv=")
    raise InputError(root, f"no {' or '.join(ANNOTATIONS + CANDIDATES)} found (name one with the option csv=)")


def read_luna(root: str | Path, csv: str | Path | None = None, skip_missing: bool = False,
              skip_outside: bool = False, **options) -> Dataset:
    if options:
        raise MedsightError("the luna reader takes the options csv, skip_missing, skip_outside "
                            f"(got {', '.join(sorted(options))})")
    import pandas as pd  # here, not at the top: importing medsight.data stays cheap

    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "folder not found")
    table = _pick_csv(root, csv)
    df = read_table(table, dtype={"seriesuid": str})  # numbers as numbers, series uids as text
    candidates = "class" in df.columns and "diameter_mm" not in df.columns
    require_columns(table, df.columns, ("seriesuid", *COORDS, "class" if candidates else "diameter_mm"),
                    hint="; expected annotations (… diameter_mm) or candidates (… class)")
    for c in COORDS + (("diameter_mm",) if not candidates else ("class",)):
        bad = pd.to_numeric(df[c], errors="coerce").isna()
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise InputError(table, f"line {line}: {c} {df[c].iloc[line - 2]!r} is not a number")
    if candidates and not df["class"].isin([0, 1]).all():
        line = int(np.flatnonzero(~df["class"].isin([0, 1]).to_numpy())[0]) + 2
        raise InputError(table, f"line {line}: class {df['class'].iloc[line - 2]!r} is not 0 or 1")

    uids = df["seriesuid"].fillna("").astype(str).str.strip()
    if (uids == "").any():
        raise InputError(table, f"line {int(np.flatnonzero((uids == '').to_numpy())[0]) + 2}: empty seriesuid")
    df["seriesuid"] = uids
    volumes = _volumes(root)
    samples: list[Sample] = []
    excluded: dict[str, str] = {}
    missing_rows: list[tuple[int, str]] = []
    outside_rows: list[tuple[int, str, str]] = []
    df["_line"] = np.arange(len(df)) + 2
    for uid, rows in df.groupby("seriesuid", sort=False):
        uid = str(uid).strip()
        ids = [f"{uid}_{k}" for k in range(len(rows))]
        paths = volumes.get(uid, [])
        if len(paths) > 1:
            raise InputError(root, f"series {uid} has several volumes: {', '.join(str(p) for p in paths)}")
        if not paths:
            missing_rows.extend((int(line), uid) for line in rows["_line"])
            excluded.update({cid: f"no volume {uid}.mhd under {root}" for cid in ids})
            continue
        info = volumeio.read_itk_info(paths[0])
        xyz = rows[list(COORDS)].to_numpy(dtype=float)
        zyx = info.world_to_voxel(xyz)
        for cid, line, w, v, row in zip(ids, rows["_line"], xyz, zyx, rows.to_dict("records")):
            if not info.contains(v):
                why = (f"world ({w[0]:.2f}, {w[1]:.2f}, {w[2]:.2f}) mm is voxel (z, y, x) = "
                       f"({v[0]:.1f}, {v[1]:.1f}, {v[2]:.1f}), outside the {'x'.join(map(str, info.shape))} volume")
                outside_rows.append((int(line), uid, why))
                excluded[cid] = why
                continue
            meta = {"seriesuid": uid, "center_zyx": tuple(float(t) for t in v),
                    "center_xyz_mm": tuple(float(t) for t in w), "line": int(line)}
            if candidates:
                meta["class"] = int(row["class"])
                diagnosis = CANDIDATE_CLASSES[meta["class"]]
            else:
                meta["diameter_mm"] = float(row["diameter_mm"])
                diagnosis = None
            samples.append(Sample(id=cid, image=paths[0], diagnosis=diagnosis, patient_id=uid, meta=meta,
                                  spacing=info.spacing, loader=volumeio.load))
    if missing_rows and not skip_missing:
        uids = sorted({u for _, u in missing_rows})
        raise InputError(table, f"line {missing_rows[0][0]}: series {missing_rows[0][1]} has no volume "
                                f"{missing_rows[0][1]}.mhd under {root} ({len(missing_rows)} row(s) of {len(uids)} "
                                "series lack one; skip_missing=True leaves them out and lists them)")
    if outside_rows and not skip_outside:
        line, uid, why = outside_rows[0]
        raise InputError(table, f"line {line} ({uid}): {why}"
                                + (f" ({len(outside_rows)} rows in all)" if len(outside_rows) > 1 else "")
                                + "; skip_outside=True leaves such rows out and lists them")
    if not samples:
        raise InputError(table, "no nodules" + (f" ({len(excluded)} rows excluded)" if excluded else ""))
    if candidates:
        tasks = {"nodule": Task.multiclass("nodule", CANDIDATE_CLASSES)}
        return Dataset("luna", root, samples, CANDIDATE_CLASSES, tasks, default_task="nodule", excluded=excluded)
    return Dataset("luna", root, samples, (), dict(MALIGNANCY_TASKS), default_task="malignancy", excluded=excluded)


FORMAT = Format("luna", read_luna, detect_luna, aliases=("luna16", "tianchi"), lacks=luna_lacks,
                description="LUNA16 / Tianchi: <seriesuid>.mhd CT volumes and annotations.csv or candidates.csv")
