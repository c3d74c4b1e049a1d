"""Data writers shared by the tests: small datasets in the layouts medsight reads, written into a
test's folder. Tests import them as ``import builders`` (``pythonpath = ["tests"]`` in pyproject.toml).

- ``write_vois``: LIDC nodule VOIs (NIfTI image + mask, the max-voting CSV), size deciding malignancy
- ``make_chestxray14``: the NIH ChestX-ray14 layout with the fixed rows ``ROWS`` (``TEST_IMAGES`` in
  the test list), PNGs in grey, RGB and RGBA
- ``write_nih``: any dataset of grey images (the synthetic X-rays) in the ChestX-ray14 layout
- ``write_isic2017_splits``: the ISIC-2017 layout, a training and a validation split of synthetic lesions
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the configs shipped with the project

# --- CT nodules ------------------------------------------------------------------------------------

SPACING = (2.0, 0.7, 0.7)  # (z, y, x) mm, anisotropic like CT


def sphere(shape, centre, radius_mm, spacing=SPACING):
    """A 0/1 ball of ``radius_mm`` around ``centre`` (voxels) on a grid of ``spacing`` mm."""
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)], indexing="ij")
    return (sum(g ** 2 for g in grids) <= radius_mm ** 2).astype(np.uint8)


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


# --- ChestX-ray14 ----------------------------------------------------------------------------------

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
# image, findings, follow-up, patient, age, gender, view
ROWS = [
    ("00000001_000.png", "Cardiomegaly|Emphysema", 0, 1, 58, "M", "PA"),
    ("00000001_001.png", "Cardiomegaly|Effusion", 1, 1, 58, "M", "PA"),
    ("00000001_002.png", "No Finding", 2, 1, 58, "M", "PA"),
    ("00000001_003.png", "Hernia", 3, 1, 59, "M", "PA"),
    ("00000002_000.png", "No Finding", 0, 2, 81, "M", "PA"),
    ("00000003_000.png", "Hernia", 0, 3, 74, "F", "PA"),
    ("00000003_001.png", "Atelectasis|Effusion|Infiltration", 1, 3, 75, "F", "AP"),
    ("00000004_000.png", "Mass|Nodule", 0, 4, 82, "M", "AP"),
    ("00000005_000.png", "Pleural_Thickening", 0, 5, 69, "F", "PA"),
    ("00000006_000.png", "No Finding", 0, 6, 12, "F", "PA"),
    ("00000007_000.png", "Pneumothorax", 0, 7, 40, "M", "PA"),
    ("00000008_000.png", "Edema|Consolidation|Pneumonia|Fibrosis", 0, 8, 33, "F", "AP"),
]
TEST_IMAGES = ("00000007_000.png", "00000008_000.png")
MODES = ("L", "RGB", "RGBA")


def grey_of(name: str, size=(8, 6)) -> np.ndarray:
    """The grey pixels (H, W) written for ``name``, whatever the PNG mode."""
    seed = int(name[:8]) * 10 + int(name[9:12])
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)


def write_png(path: Path, grey: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        arr = grey
    elif mode == "RGB":
        arr = np.stack([grey] * 3, axis=-1)
    else:
        arr = np.stack([grey] * 3 + [np.full_like(grey, 255)], axis=-1)
    Image.fromarray(arr, mode).save(path)


def csv_line(name, findings, follow_up, patient, age, gender, view) -> str:
    return f"{name},{findings},{follow_up},{patient},{age},{gender},{view},2500,2048,0.143,0.139,"


def make_chestxray14(root: Path, rows=ROWS, test=TEST_IMAGES, flat=False, skip_images=(), extra_train=(),
                     extra_test=()) -> Path:
    """The NIH layout: CSV, split lists, PNGs in images_001/images and images_002/images (or a flat
    images/ folder), the image modes cycling through grey, RGB and RGBA."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017.csv").write_text("\n".join([HEADER] + [csv_line(*r) for r in rows]) + "\n")
    names = [r[0] for r in rows]
    (root / "train_val_list.txt").write_text(
        "\n".join([n for n in names if n not in test] + list(extra_train)) + "\n")
    (root / "test_list.txt").write_text("\n".join([n for n in names if n in test] + list(extra_test)) + "\n")
    for i, name in enumerate(names):
        if name in skip_images:
            continue
        folder = root / "images" if flat else root / ("images_001" if i < len(names) // 2 else "images_002") / "images"
        write_png(folder / name, grey_of(name), MODES[i % 3])
    return root


def write_nih(dataset, root: Path, test_ids=()) -> Path:
    """A synthetic-xray dataset in the ChestX-ray14 layout (CSV, split lists, grey PNGs)."""
    (root / "images").mkdir(parents=True)
    lines = ["Image Index,Finding Labels,Patient ID"]
    train_val, test = [], []
    for s in dataset.samples:
        name = f"{s.id}.png"
        Image.fromarray(s.image[0], "L").save(root / "images" / name)
        lines.append(f"{name},{s.diagnosis},{s.patient_id}")
        (test if s.id in test_ids else train_val).append(name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return root


# --- ISIC 2017 ------------------------------------------------------------------------------------

def write_isic2017_splits(root: Path, n_train: int = 36, n_val: int = 12, size: int = 32, seed: int = 3) -> Path:
    """The ISIC-2017 Part 3 layout with a Training and a Validation split of synthetic lesions:
    malignant ones are melanomas, and the benign ones nevi and seborrheic keratoses in turn."""
    from medsight.data.synthetic import make_dermoscopy

    cases = make_dermoscopy(n=n_train + n_val, size=size, seed=seed).samples
    for long, part in (("Training", cases[:n_train]), ("Validation", cases[n_train:])):
        folder = root / f"ISIC-2017_{long}_Data"
        folder.mkdir(parents=True)
        rows = ["image_id,melanoma,seborrheic_keratosis"]
        for i, sample in enumerate(part):
            cid = f"ISIC_{long[0]}{i:06d}"
            Image.fromarray(np.ascontiguousarray(sample.image.transpose(1, 2, 0))).save(folder / f"{cid}.jpg")
            melanoma, sk = sample.diagnosis == "malignant", sample.diagnosis == "benign" and i % 2 == 1
            rows.append(f"{cid},{float(melanoma)},{float(sk)}")
        (root / f"ISIC-2017_{long}_Part3_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    return root
