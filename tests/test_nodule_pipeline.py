"""Nodule preprocessors and the LIDC image baselines end to end, on nodule volumes written here."""

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsight.cli import main
from medsight.data.base import Sample
from medsight.errors import MedsightError
from medsight.transforms.preprocess import make_preprocess

CONFIGS = Path(__file__).parents[1] / "configs"
SPACING = (2.0, 0.7, 0.7)  # (z, y, x) mm, anisotropic like CT


def sphere(shape, centre, radius_mm, spacing=SPACING):
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)], indexing="ij")
    return (sum(g ** 2 for g in grids) <= radius_mm ** 2).astype(np.uint8)


def nodule_sample(radius_mm=6.0, shape=(20, 60, 60), centre=(9.5, 31.0, 28.0)):
    mask = sphere(shape, centre, radius_mm)
    volume = np.where(mask > 0, 40, -850).astype(np.int16)[None]
    return Sample(id="n", image=volume, mask=mask, spacing=SPACING), volume, mask


def test_nodule_crop_keeps_physical_size():
    sample, volume, mask = nodule_sample(radius_mm=6.0)
    crop, _ = make_preprocess("nodule_crop", (16, 32, 32), size_mm=(32, 32, 32))(volume, None, sample)
    assert crop.shape == (1, 16, 32, 32) and crop.dtype == np.uint8
    bright = crop[0] > 127  # 40 HU vs -850 HU with the window [-1000, 400]
    sphere_fraction = 4 / 3 * np.pi * 6.0 ** 3 / 32 ** 3
    assert abs(bright.mean() - sphere_fraction) / sphere_fraction < 0.15
    assert bright[7:9, 15:17, 15:17].all()  # centred on the mask's centroid
    big, _ = make_preprocess("nodule_crop", (16, 32, 32))(*nodule_sample(radius_mm=10.0)[1:], nodule_sample(10.0)[0])
    assert (big[0] > 127).mean() > 3 * bright.mean()  # a larger nodule looks larger: size stays visible


def test_nodule_views_channels_and_patch_types():
    sample, volume, mask = nodule_sample()
    views, _ = make_preprocess("nodule_views", (32, 32), patches=["OA", "HVV", "HS"])(volume, None, sample)
    assert views.shape == (27, 32, 32) and views.dtype == np.uint8
    oa, hvv, hs = views[0::3], views[1::3], views[2::3]
    assert oa.max() == 255 and oa.min() == 0
    inside = oa > 127  # the nodule in each view
    assert (hvv[~inside] == 0).all() and (hs[inside] == 0).all()
    only_oa, _ = make_preprocess("nodule_views", (32, 32))(volume, None, sample)
    assert np.array_equal(only_oa, oa)


def test_nodule_preprocessors_refuse_what_they_cannot_use():
    sample, volume, _ = nodule_sample()
    with pytest.raises(MedsightError, match="CT volume"):
        make_preprocess("nodule_crop", (8, 8, 8))(np.zeros((3, 8, 8), np.uint8), None, sample)
    empty = Sample(id="e", image=volume, mask=np.zeros(volume.shape[1:], np.uint8), spacing=SPACING)
    with pytest.raises(MedsightError, match="no nodule mask"):
        make_preprocess("nodule_crop", (8, 8, 8))(volume, None, empty)


def write_vois(root: Path, n_patients=12) -> Path:
    """Two nodules a patient: malignant ones large, benign ones small (size decides, as in LIDC)."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_patients):
        for k, malignant in ((1, p % 2 == 0), (2, p % 3 == 0)):
            radius = rng.uniform(7, 10) if malignant else rng.uniform(2.5, 4.5)
            mask = sphere((16, 40, 40), (7.5 + rng.uniform(-1, 1), 20, 20), radius)
            volume = np.where(mask > 0, 30, -800) + rng.normal(0, 30, mask.shape)
            stem = f"LIDC-IDRI-{p:04d}_R_{k}"
            affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
            for folder, data in (("image", volume.astype(np.int16)), ("nodule_mask", mask.astype(np.int16))):
                (root / "VOIs" / folder).mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine),
                         str(root / "VOIs" / folder / f"{stem}.nii.gz"))
            rows.append({"patient_id": f"LIDC-IDRI-{p:04d}", "nodule_id": k, "diameter_mm": round(2 * radius, 2),
                         "Diagnosis": "Malign" if malignant else "Benign", "Malignancy_value": 5 if malignant else 1})
    with open(root / "MetadatabyNoduleMaxVoting.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("config,extra", [
    ("lidc_voi_resnet3d.yaml", ["--set", "model.options.width=8", "--set", "data.image_size=[8,16,16]"]),
    ("lidc_voi_multiview.yaml", ["--set", "model.options.width=8", "--set", "data.image_size=[24,24]"]),
])
def test_lidc_baselines_train_predict_evaluate(tmp_path, capsys, config, extra):
    data = write_vois(tmp_path / "vois")
    run = tmp_path / "run"
    args = ["--data", str(data), "--out", str(run), "--epochs", "2", "--device", "cpu",
            "--set", "data.folds=3", "--set", "data.fold=0", "--set", "data.val_fraction=0.3", *extra]
    assert main(["train", str(CONFIGS / config), *args]) == 0
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    lines = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "id,p_malignant,pred" and len(lines) == 25
    capsys.readouterr()
    assert main(["evaluate", str(run), str(data), "--split", "heldout", "--out", str(tmp_path / "m.json")]) == 0
    table = capsys.readouterr().out
    assert "AUC" in table and "SEN" in table and "SPE" in table
