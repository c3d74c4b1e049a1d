"""Reading CT volumes as arrays in (z, y, x) order with spacing in mm, with errors that name the file.

Formats:

- NIfTI ``.nii`` / ``.nii.gz`` (nibabel; single files through ``nifti``, one read). NIfTI stores voxels x-fastest and reports its shape and
  zooms as (x, y, z): the data are transposed to (z, y, x) (``data.transpose(2, 1, 0)``) and the
  zooms reversed, for images and masks alike. Voxels keep their stored order (no reorientation):
  element ``[k, j, i]`` of the result is NIfTI voxel ``(i, j, k)``.
- MetaImage ``.mhd`` + ``.raw`` (also ``.mha``, ``.nrrd``; SimpleITK), which already gives (z, y, x)
  arrays; spacing, origin and direction come from the header.
- DICOM series: a folder holding the slice files of one series (pydicom). HU = stored value x
  RescaleSlope + RescaleIntercept; slices are ordered by ImagePositionPatient projected on the slice
  normal (row direction x column direction), ascending; spacing is (step between slice positions,
  PixelSpacing row, PixelSpacing column). A folder that mixes series, misses a slice (a step over
  ``GAP_FACTOR`` x the median), has uneven steps (off the median by more than ``STEP_TOLERANCE``),
  slices of different sizes or unreadable files is an :class:`InputError` naming the folder or file.

Every volume comes with ``affine``: a 4x4 matrix from a voxel index (z, y, x, 1) to world coordinates
(x, y, z, 1) in mm in the DICOM / ITK patient frame (LPS: +x to the patient's left, +y posterior, +z
head), the frame of LUNA16 / Tianchi CSV coordinates. NIfTI's RAS world is converted (x, y negated).

``load(path, is_mask)`` is the :class:`~medsight.data.base.Sample` loader: images come back
``(1, D, H, W)`` as stored (int16 HU for CT), masks ``(D, H, W)`` uint8 0/1 (any non-zero voxel).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from medsight.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mhd", ".mha", ".nrrd")
GAP_FACTOR = 1.5  # a step this many times the median step means a missing slice
STEP_TOLERANCE = 0.05  # steps may differ from the median by this fraction (plus 0.01 mm)
_NOT_DICOM = {".xml", ".txt", ".json", ".csv", ".md", ".html", ".pdf", ".png", ".jpg", ".zip"}
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS
_XYZ_TO_ZYX = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


@dataclass
class VolumeInfo:
    """What a header says: shape (D, H, W), spacing (z, y, x) mm, and the voxel -> world affine."""

    path: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray  # (z, y, x, 1) index -> (x, y, z, 1) world mm (LPS)

    def voxel_to_world(self, zyx) -> np.ndarray:
        """World (x, y, z) mm of voxel indices (z, y, x); works on (..., 3) arrays."""
        zyx = np.asarray(zyx, dtype=float)
        return zyx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz) -> np.ndarray:
        """Continuous voxel indices (z, y, x) of world points (x, y, z) mm; works on (..., 3) arrays."""
        xyz = np.asarray(xyz, dtype=float)
        return (xyz - self.affine[:3, 3]) @ np.linalg.inv(self.affine[:3, :3]).T

    def contains(self, zyx) -> bool:
        """Whether continuous indices (z, y, x) fall inside the volume (voxel centres +- 0.5)."""
        zyx = np.asarray(zyx, dtype=float)
        return bool(np.all(zyx >= -0.5) and np.all(zyx <= np.asarray(self.shape) - 0.5))


@dataclass
class Volume(VolumeInfo):
    """A volume read from disk: ``array`` is (D, H, W)."""

    array: np.ndarray | None = None

    @property
    def image(self) -> np.ndarray:
        """The channel-first ``(1, D, H, W)`` view of ``array``."""
        return self.array[None]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_volume_file(path: str | Path) -> bool:
    return _suffix(Path(path)) in NIFTI_SUFFIXES + ITK_SUFFIXES


def _shape3(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """NIfTI/ITK shapes (x, y, z[, 1...]) with trailing singleton axes dropped, or an error."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(path, f"expected a 3D volume, found shape {shape}")
    return shape


# --- NIfTI ----------------------------------------------------------------------------------------

def _nifti(path: Path):
    import nibabel as nib

    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types (ImageFileError, OSError, EOFError, ...)
        raise InputError(path, f"cannot read NIfTI ({exc.__class__.__name__}: {exc})") from None


def _nifti_info(path: Path, header) -> VolumeInfo:
    x, y, z = _shape3(path, header.get_data_shape())
    zooms = [round(float(v), 6) for v in header.get_zooms()[:3]]
    affine = _LPS @ np.asarray(header.get_best_affine(), dtype=float) @ _XYZ_TO_ZYX  # the image's affine
    return VolumeInfo(path, (z, y, x), (zooms[2], zooms[1], zooms[0]), affine)


def read_nifti(path: str | Path) -> Volume:
    from medsight.data import nifti

    path = Path(path)
    fast = nifti.read(path)  # one read and decompression; None: nibabel's own path
    if fast is not None:
        header, data = fast
    else:
        img = _nifti(path)
        header = img.header
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as exc:
            raise InputError(path, f"cannot read NIfTI data ({exc.__class__.__name__}: {exc})") from None
    info = _nifti_info(path, header)
    data = data.reshape(data.shape[:3])
    return Volume(**vars(info), array=np.ascontiguousarray(data.transpose(2, 1, 0)))


# --- MetaImage and other ITK formats -------------------------------------------------------------

def _itk_affine(spacing_xyz, origin_xyz, direction) -> np.ndarray:
    d = np.asarray(direction, dtype=float).reshape(3, 3)  # column c: world direction of index axis c
    affine = np.eye(4)
    affine[:3, :3] = (d * np.asarray(spacing_xyz, dtype=float))[:, ::-1]
    affine[:3, 3] = origin_xyz
    return affine


def _itk_info(path: Path, size, spacing, origin, direction) -> VolumeInfo:
    if len(size) != 3:
        raise InputError(path, f"expected a 3D volume, found {len(size)} dimensions (size {tuple(size)})")
    x, y, z = (int(s) for s in size)
    return VolumeInfo(path, (z, y, x), tuple(float(s) for s in spacing[::-1]),
                      _itk_affine(spacing, origin, direction))


def _itk_error(path: Path, exc: Exception) -> InputError:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "rror" in ln or "annot" in ln), lines[-1] if lines else "")
    return InputError(path, f"cannot read volume ({detail})")


def read_itk_info(path: str | Path) -> VolumeInfo:
    """The header of an mhd/mha/nrrd volume, without reading its voxels."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _itk_error(path, exc) from None
    return _itk_info(path, reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def read_itk(path: str | Path) -> Volume:
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _itk_error(path, exc) from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"expected one value per voxel, found {img.GetNumberOfComponentsPerPixel()}")
    info = _itk_info(path, img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    return Volume(**vars(info), array=sitk.GetArrayFromImage(img))


# --- DICOM series --------------------------------------------------------------------------------

@dataclass
class DicomSeries(VolumeInfo):
    """A DICOM series folder's headers: ``files`` in slice order (ascending along the normal)."""

    files: tuple[Path, ...] = ()
    series_uid: str = ""


def _dicom_candidates(folder: Path) -> list[Path]:
    """The folder's slice files: its ``.dcm`` files, or else every file that is not obviously
    something else (LIDC series folders also hold the readers' XML)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    dcm = [p for p in files if p.suffix.lower() == ".dcm"]
    return dcm or [p for p in files if p.suffix.lower() not in _NOT_DICOM]


def _floats(ds, name: str, n: int, path: Path) -> np.ndarray:
    value = getattr(ds, name, None)
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        out = None
    if out is None or out.shape != (n,):
        raise InputError(path, f"DICOM tag {name} is missing or malformed ({value!r}); cannot place the slice")
    return out


def _problem_files(files, limit: int = 3) -> str:
    names = [p.name for p in files]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


@lru_cache(maxsize=8)
def _dicom_series_cached(folder: str, stamp: tuple) -> DicomSeries:
    return _scan_dicom_series(Path(folder))


def dicom_series_info(folder: str | Path) -> DicomSeries:
    """Read and check the headers of the DICOM series in ``folder`` (no pixel data); cached while
    the folder's listing is unchanged."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "DICOM series folder not found")
    return _dicom_series_cached(str(folder.resolve()), folder_stamp(folder))


def folder_stamp(folder: Path) -> tuple:
    """Changes when files are added to, removed from or replaced in ``folder`` (a cache key)."""
    stat = folder.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _scan_dicom_series(folder: Path) -> DicomSeries:
    import pydicom

    files = _dicom_candidates(folder)
    if not files:
        raise InputError(folder, "no DICOM files in this folder")
    headers = []
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception as exc:  # InvalidDicomError, OSError, and pydicom's parse errors
            raise InputError(p, f"cannot read DICOM ({exc.__class__.__name__}: {exc})") from None
        headers.append(ds)

    by_series: dict[str, list[Path]] = {}
    for p, ds in zip(files, headers):
        by_series.setdefault(str(getattr(ds, "SeriesInstanceUID", "<none>")), []).append(p)
    if len(by_series) > 1:
        parts = [f"{uid} ({len(ps)} files, e.g. {ps[0].name})" for uid, ps in by_series.items()]
        raise InputError(folder, f"{len(by_series)} DICOM series are mixed in one folder: " + "; ".join(parts)
                                 + " (put each series in its own folder)")

    for p, ds in zip(files, headers):
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InputError(p, "multi-frame DICOM is not supported (expected one file per slice)")
    sizes = [(int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))) for ds in headers]
    common = max(set(sizes), key=sizes.count)
    odd = [p for p, s in zip(files, sizes) if s != common]
    if odd:
        found = sorted(set(sizes) - {common})
        raise InputError(folder, f"slices of different sizes: most are {common[0]}x{common[1]} (rows x columns) "
                                 f"but {_problem_files(odd)} {'is' if len(odd) == 1 else 'are'} "
                                 + ", ".join(f"{r}x{c}" for r, c in found))

    orient = [_floats(ds, "ImageOrientationPatient", 6, p) for p, ds in zip(files, headers)]
    odd = [p for p, o in zip(files, orient) if not np.allclose(o, orient[0], atol=1e-3)]
    if odd:
        raise InputError(folder, f"slices with different orientations: {_problem_files(odd)} differ from "
                                 f"{files[0].name} (ImageOrientationPatient)")
    row_dir, col_dir = orient[0][:3], orient[0][3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([_floats(ds, "ImagePositionPatient", 3, p) for p, ds in zip(files, headers)])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    files = [files[i] for i in order]
    headers = [headers[i] for i in order]
    positions, along = positions[order], along[order]
    pixel = _floats(headers[0], "PixelSpacing", 2, files[0])

    steps = np.diff(along)
    if len(steps):
        same = np.flatnonzero(steps < 1e-3)
        if len(same):
            i = same[0]
            raise InputError(folder, f"two slices at the same position ({along[i]:.3f} mm): "
                                     f"{files[i].name} and {files[i + 1].name} (duplicate files?)")
        median = float(np.median(steps))
        gaps = np.flatnonzero(steps > GAP_FACTOR * median)
        if len(gaps):
            i = gaps[0]
            raise InputError(folder, f"missing slice(s): a step of {steps[i]:.3f} mm between {files[i].name} "
                                     f"({along[i]:.3f} mm) and {files[i + 1].name} ({along[i + 1]:.3f} mm) where "
                                     f"the slice spacing is {median:.3f} mm"
                                     + (f" ({len(gaps)} gaps in all)" if len(gaps) > 1 else ""))
        uneven = np.flatnonzero(np.abs(steps - median) > STEP_TOLERANCE * median + 0.01)
        if len(uneven):
            i = uneven[0]
            raise InputError(folder, f"uneven slice spacing: steps from {steps.min():.3f} to {steps.max():.3f} mm "
                                     f"(median {median:.3f}), e.g. {steps[i]:.3f} mm between {files[i].name} and "
                                     f"{files[i + 1].name}")
        dz = median
        step = (positions[-1] - positions[0]) / (len(files) - 1)
    else:
        dz = float(getattr(headers[0], "SpacingBetweenSlices", 0) or getattr(headers[0], "SliceThickness", 0) or 1.0)
        step = normal * dz

    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_dir * pixel[0]
    affine[:3, 2] = row_dir * pixel[1]
    affine[:3, 3] = positions[0]
    return DicomSeries(folder, (len(files), common[0], common[1]), (dz, float(pixel[0]), float(pixel[1])),
                       affine, tuple(files), next(iter(by_series)))


def _rescale(ds, path: Path) -> tuple[float, float]:
    try:
        return float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        raise InputError(path, "RescaleSlope / RescaleIntercept are not numbers") from None


def read_dicom_series(folder: str | Path) -> Volume:
    """The series in ``folder`` in HU: int16 when slopes and intercepts are whole numbers and the
    values fit, float32 otherwise."""
    import pydicom

    info = dicom_series_info(folder)
    slices, rescale = [], []
    for p in info.files:
        try:
            ds = pydicom.dcmread(p)
            pixels = ds.pixel_array
        except Exception as exc:
            raise InputError(p, f"cannot read DICOM pixel data ({exc.__class__.__name__}: {exc}); compressed "
                                "transfer syntaxes need pylibjpeg or gdcm") from None
        if pixels.shape != info.shape[1:]:
            raise InputError(p, f"pixel data is {pixels.shape}, the header says {info.shape[1:]}")
        slices.append(pixels)
        rescale.append(_rescale(ds, p))
    whole = all(float(s).is_integer() and float(b).is_integer() for s, b in rescale)
    out = np.empty(info.shape, dtype=np.int64 if whole else np.float32)
    for k, (pixels, (slope, intercept)) in enumerate(zip(slices, rescale)):
        if whole:
            out[k] = pixels.astype(np.int64) * int(slope) + int(intercept)
        else:
            out[k] = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if whole:
        lo, hi = (int(out.min()), int(out.max())) if out.size else (0, 0)
        out = out.astype(np.int16 if -32768 <= lo and hi <= 32767 else np.int32)
    return Volume(info.path, info.shape, info.spacing, info.affine, array=out)


# --- any of them ---------------------------------------------------------------------------------

def read_volume(path: str | Path) -> Volume:
    """A NIfTI or ITK file, or a DICOM series folder."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path)
    if suffix in ITK_SUFFIXES:
        return read_itk(path)
    if not path.exists():
        raise InputError(path, "file not found")
    raise InputError(path, f"not a volume format medsight reads (expected a DICOM series folder or "
                           f"{', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES)})")


def read_info(path: str | Path) -> VolumeInfo:
    """The shape, spacing and affine of a volume from its header(s) only."""
    path = Path(path)
    if path.is_dir():
        return dicom_series_info(path)
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        from medsight.data import nifti

        header = nifti.read_header(path)  # the first bytes only; None: nibabel's own path
        return _nifti_info(path, _nifti(path).header if header is None else header)
    if suffix in ITK_SUFFIXES:
        return read_itk_info(path)
    return read_volume(path)  # raises the right error


def load(path: str | Path, is_mask: bool = False) -> np.ndarray:
    """The :class:`~medsight.data.base.Sample` loader: image ``(1, D, H, W)``, mask ``(D, H, W)`` uint8."""
    array = read_volume(path).array
    return (array > 0).astype(np.uint8) if is_mask else array[None]
