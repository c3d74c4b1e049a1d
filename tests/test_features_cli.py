"""``medsight features glcm|shape``: one image and mask, or a whole dataset, to one CSV row per case."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsight.cli import main
from medsight.data.folder import write_folder
from medsight.data.synthetic import make_dermoscopy
from medsight.features.glcm import glcm_features
from medsight.features.shape import SHAPE_2D_FEATURES, FourierShape, Shape2D, shape_features_3d

from references import require


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, " ".join(capsys.readouterr().err.split())


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def save_png(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def save_nifti(array_zyx: np.ndarray, spacing_zyx, path: Path) -> Path:
    affine = np.diag([spacing_zyx[2], spacing_zyx[1], spacing_zyx[0], 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), affine), str(path))
    return path


def ellipsoid(shape=(20, 40, 40), semi=(6.0, 9.0, 12.0), spacing=(2.0, 1.0, 0.8)):
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    return (sum((g / a) ** 2 for g, a in zip(grids, semi)) <= 1).astype(np.uint8)


@pytest.fixture
def volume_case(tmp_path):
    spacing = (2.0, 1.0, 0.8)
    mask = ellipsoid(spacing=spacing)
    rng = np.random.default_rng(0)
    ct = np.where(mask > 0, 40, -800) + rng.normal(0, 60, mask.shape)
    return (save_nifti(ct.astype(np.int16), spacing, tmp_path / "ct.nii.gz"),
            save_nifti(mask.astype(np.int16), spacing, tmp_path / "mask.nii.gz"), ct.astype(np.int16), mask, spacing)


def test_shape_of_one_volume_uses_its_spacing(volume_case, tmp_path, capsys):
    image, mask_file, _, mask, spacing = volume_case
    out = tmp_path / "shape.csv"
    code, err = cli(capsys, "features", "shape", image, "--mask", mask_file, "--out", out)
    assert code == 0, err
    (row,) = rows_of(out)
    assert row["id"] == "ct"
    expected = shape_features_3d(mask, spacing)
    for name in ("MeshVolume", "SurfaceArea", "Sphericity", "Elongation", "Flatness"):
        assert float(row[name]) == pytest.approx(expected[name], rel=1e-9)
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["kind"] == "shape" and settings["cases"] == 1 and settings["features"] == list(row)[1:]
    assert settings["mask"] == str(mask_file)


def test_glcm_of_one_volume_in_its_own_units(volume_case, tmp_path, capsys):
    image, mask_file, ct, mask, _ = volume_case
    out = tmp_path / "glcm.csv"
    code, err = cli(capsys, "features", "glcm", image, "--mask", mask_file, "--bin-width", "10",
                    "--distance", "1", "--distance", "2", "--out", out)
    assert code == 0, err
    (row,) = rows_of(out)
    expected = glcm_features(ct.astype(np.float64), mask, distances=(1, 2), bin_width=10.0)
    assert len(row) == 1 + len(expected)
    for name, value in expected.items():
        assert float(row[name]) == pytest.approx(value, rel=1e-9, abs=1e-12)
    settings = json.loads(out.with_suffix(".json").read_text())["settings"]
    assert settings["bin_width"] == 10.0 and settings["distances"] == [1, 2]


def test_shape_of_a_2d_image_adds_fourier_descriptors(tmp_path, capsys):
    yy, xx = np.mgrid[:64, :64]
    mask = (((yy - 32) / 12.0) ** 2 + ((xx - 30) / 20.0) ** 2 <= 1).astype(np.uint8)
    image = save_png(np.full((64, 64, 3), 90, np.uint8), tmp_path / "lesion.png")
    mask_file = save_png(mask * 255, tmp_path / "lesion_mask.png")
    out = tmp_path / "shape2d.csv"
    code, err = cli(capsys, "features", "shape", image, "--mask", mask_file, "--coefficients", "6", "--out", out)
    assert code == 0, err
    (row,) = rows_of(out)
    assert [f"Fourier{k}" for k in range(6)] == [k for k in row if k.startswith("Fourier")]
    assert float(row["PixelSurface"]) == mask.sum()
    # the same estimators as the recipes' descriptors: Shape2D's columns, then FourierShape's, exactly
    shape2d = Shape2D().fit(None).transform([(mask, (1.0, 1.0))])[0]
    fourier = FourierShape(n_coefficients=6).fit(None).transform([mask.astype(bool)])[0]
    assert list(row)[1:] == [*SHAPE_2D_FEATURES, *(f"Fourier{k}" for k in range(6))]
    assert [float(v) for k, v in row.items() if k != "id"] == [*shape2d.tolist(), *fourier.tolist()]


def test_a_whole_dataset_gives_one_row_per_case(tmp_path, capsys):
    root = tmp_path / "synth"
    write_folder(make_dermoscopy(n=5, size=48, seed=2), root)
    out = tmp_path / "all.csv"
    code, err = cli(capsys, "features", "glcm", root, "--bin-count", "16", "--out", out)
    assert code == 0, err
    rows = rows_of(out)
    assert len(rows) == 5 and len({r["id"] for r in rows}) == 5
    assert all(np.isfinite(float(v)) for r in rows for k, v in r.items() if k != "id")


def test_empty_mask_is_an_error_naming_the_file_and_writes_nothing(tmp_path, capsys):
    image = save_png(np.full((32, 32), 100, np.uint8), tmp_path / "img.png")
    mask_file = save_png(np.zeros((32, 32), np.uint8), tmp_path / "empty_mask.png")
    out = tmp_path / "f.csv"
    code, err = cli(capsys, "features", "glcm", image, "--mask", mask_file, "--out", out)
    assert code == 2
    assert "no foreground" in err and "empty_mask.png" in err.replace(" ", "")
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not list(tmp_path.glob("*.partial"))


def test_constant_image_has_defined_glcm_values(tmp_path, capsys):
    image = save_png(np.full((32, 32), 100, np.uint8), tmp_path / "flat.png")
    mask_file = save_png(np.pad(np.full((16, 16), 255, np.uint8), 8), tmp_path / "flat_mask.png")
    out = tmp_path / "flat.csv"
    code, err = cli(capsys, "features", "glcm", image, "--mask", mask_file, "--out", out)
    assert code == 0, err
    (row,) = rows_of(out)
    assert float(row["Contrast"]) == 0 and float(row["JointEnergy"]) == 1
    assert all(np.isfinite(float(v)) for k, v in row.items() if k != "id")


def test_nan_inside_the_mask_is_an_error(volume_case, tmp_path, capsys):
    _, mask_file, ct, mask, spacing = volume_case
    bad = ct.astype(np.float32)
    bad[mask > 0] = np.nan
    image = save_nifti(bad, spacing, tmp_path / "nan.nii.gz")
    code, err = cli(capsys, "features", "glcm", image, "--mask", mask_file, "--out", tmp_path / "n.csv")
    assert code == 2 and "NaN" in err and "nan.nii.gz" in err.replace(" ", "")


def test_mask_of_another_size_is_an_error(volume_case, tmp_path, capsys):
    image, _, _, _, spacing = volume_case
    small = save_nifti(np.ones((4, 4, 4), np.int16), spacing, tmp_path / "small_mask.nii.gz")
    code, err = cli(capsys, "features", "shape", image, "--mask", small, "--out", tmp_path / "s.csv")
    assert code == 2 and "small_mask.nii.gz" in err.replace(" ", "")


def test_usage_errors(volume_case, tmp_path, capsys):
    image, mask_file, *_ = volume_case
    existing = tmp_path / "exists.csv"
    existing.write_text("keep me")
    code, err = cli(capsys, "features", "glcm", image, "--mask", mask_file, "--out", existing)
    assert code == 2 and "exists" in err and existing.read_text() == "keep me"
    code, _ = cli(capsys, "features", "glcm", image, "--mask", mask_file, "--bin-width", "5", "--bin-count", "8",
                  "--out", tmp_path / "x.csv")
    assert code == 2
    code, err = cli(capsys, "features", "glcm", image, "--mask", tmp_path / "missing.nii.gz", "--out", tmp_path / "y.csv")
    assert code == 2 and "missing.nii.gz" in err.replace(" ", "")


def test_features_of_real_nodules_equal_pyradiomics_extractor(tmp_path, capsys, lidc_vois):
    """Three shared LIDC VOIs through ``medsight features glcm,shape``, against pyradiomics' own
    extractor (what its batch command runs) reading the same NIfTI files with the same settings."""
    require("radiomics", "pyradiomics is not installed")
    import logging

    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(binWidth=25)
    extractor.disableAllFeatures()
    extractor.enableFeatureClassByName("glcm")
    extractor.enableFeatureClassByName("shape")
    for image in sorted((lidc_vois / "VOIs" / "image").glob("*.nii.gz"))[:3]:
        mask_file = lidc_vois / "VOIs" / "nodule_mask" / image.name
        reference = {k.split("_", 2)[2]: float(v) for k, v in extractor.execute(str(image), str(mask_file)).items()
                     if k.startswith("original_")}
        out = tmp_path / f"{image.name}.csv"
        code, err = cli(capsys, "features", "glcm,shape", image, "--mask", mask_file, "--out", out)
        assert code == 0, err
        (row,) = rows_of(out)
        # pyradiomics' names: 24 GLCM and 14 shape features; its extractor leaves out the three it deprecates
        assert set(row) - {"id"} - set(reference) == {"Compactness1", "Compactness2", "SphericalDisproportion"}
        for name, value in reference.items():
            # 1e-6: pyradiomics adds an eps inside MCC, and it keeps the NIfTI zooms as float32 (0.82226598)
            # where medsight reads them to 6 decimals (0.822266), 2e-8 apart; with one spacing the shape
            # features agree to 1e-11 (tests/features/test_shape.py)
            assert float(row[name]) == pytest.approx(value, rel=1e-6, abs=1e-12), (image.name, name)


def test_shape_refuses_nan_inside_the_mask(volume_case, tmp_path, capsys):
    """The README's contract holds for shape too, although shape reads only the mask."""
    _, mask_file, ct, mask, spacing = volume_case
    bad = ct.astype(np.float32)
    bad[tuple(np.argwhere(mask > 0)[0])] = np.nan
    image = save_nifti(bad, spacing, tmp_path / "nan_inside.nii.gz")
    out = tmp_path / "s.csv"
    code, err = cli(capsys, "features", "shape", image, "--mask", mask_file, "--out", out)
    assert code == 2 and "NaN" in err and "nan_inside.nii.gz" in err.replace(" ", "")
    assert not out.exists()
    outside = ct.astype(np.float32)
    outside[tuple(np.argwhere(mask == 0)[0])] = np.nan  # outside the mask: not read, not an error
    image = save_nifti(outside, spacing, tmp_path / "nan_outside.nii.gz")
    code, err = cli(capsys, "features", "shape", image, "--mask", mask_file, "--out", out)
    assert code == 0, err


def test_settings_record_the_effective_bin_width(volume_case, tmp_path, capsys):
    image, mask_file, *_ = volume_case
    code, err = cli(capsys, "features", "glcm", image, "--mask", mask_file, "--out", tmp_path / "g.csv")
    assert code == 0, err
    settings = json.loads((tmp_path / "g.json").read_text())["settings"]
    assert settings["bin_width"] == 25.0 and settings["bin_count"] is None
    code, err = cli(capsys, "features", "glcm", image, "--mask", mask_file, "--bin-count", "16",
                    "--out", tmp_path / "c.csv")
    assert code == 0, err
    settings = json.loads((tmp_path / "c.json").read_text())["settings"]
    assert settings["bin_width"] is None and settings["bin_count"] == 16


def test_two_kinds_in_one_command_are_the_two_commands_side_by_side(volume_case, tmp_path, capsys):
    image, mask_file, *_ = volume_case
    for kind in ("glcm", "shape", "glcm,shape"):
        code, err = cli(capsys, "features", kind, image, "--mask", mask_file, "--out", tmp_path / f"{kind}.csv")
        assert code == 0, err
    (glcm,), (shape,), (both,) = (rows_of(tmp_path / f"{k}.csv") for k in ("glcm", "shape", "glcm,shape"))
    assert both == {**glcm, **shape} and list(both) == [*glcm, *list(shape)[1:]]
    assert json.loads((tmp_path / "glcm,shape.json").read_text())["kind"] == "glcm,shape"
    code, err = cli(capsys, "features", "glcm,texture", image, "--mask", mask_file, "--out", tmp_path / "x.csv")
    assert code == 2 and "glcm,texture" in err and not (tmp_path / "x.csv").exists()


@pytest.fixture(scope="module")
def voi_dataset(tmp_path_factory) -> Path:
    """24 synthetic nodule VOIs in the lidc-voi layout, one with an empty mask (a rejected case)."""
    from builders import write_vois

    root = write_vois(tmp_path_factory.mktemp("vois") / "vois", n_patients=12)
    empty = root / "VOIs" / "nodule_mask" / "LIDC-IDRI-0005_R_2.nii.gz"
    mask = nib.load(str(empty))
    nib.save(nib.Nifti1Image(np.zeros(mask.shape, np.int16), mask.affine), str(empty))
    return root


def test_jobs_give_the_same_csv_as_one_process(voi_dataset, tmp_path, capsys):
    outputs = {}
    for jobs in (1, 2, 3):
        out = tmp_path / f"jobs{jobs}.csv"
        code, err = cli(capsys, "features", "glcm,shape", voi_dataset, "--jobs", jobs, "--out", out)
        assert code == 0, err
        assert "1 case(s) rejected" in err and "LIDC-IDRI-0005_R_2" in err
        outputs[jobs] = out.read_bytes()
        rejected = json.loads(out.with_suffix(".json").read_text())["rejected"]
        assert len(rejected) == 1 and "no foreground" in rejected[0]
    assert outputs[1] == outputs[2] == outputs[3]
    rows = rows_of(tmp_path / "jobs1.csv")
    assert len(rows) == 23 and [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    code, err = cli(capsys, "features", "shape", voi_dataset, "--jobs", 0, "--out", tmp_path / "zero.csv")
    assert code == 2 and "--jobs" in err


def test_jobs_keep_the_pixel_limit(tmp_path, capsys):
    """A worker process applies the command's --max-pixels as the parent does."""
    from medsight.data import imageio

    root = tmp_path / "lesions"
    write_folder(make_dermoscopy(n=4, size=40, seed=3), root)
    try:
        code, err = cli(capsys, "--max-pixels", "1000", "features", "shape", root, "--jobs", 2,
                        "--out", tmp_path / "s.csv")
    finally:
        imageio.set_max_pixels(imageio.DEFAULT_MAX_PIXELS)
    assert code == 2 and "4 case(s) rejected" in err and "over the limit of 1,000" in err
