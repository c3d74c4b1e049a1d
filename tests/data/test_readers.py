"""Dataset readers: small fixtures of every layout written into tmp_path, plus the real datasets in
../shared/datasets or $MEDSIGHT_DATASETS (each test skipped when its dataset is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.data import Task, detect_format, open_dataset, validate
from medsight.data.check import format_summary, summarize
from medsight.data.folder import detect_folder, read_folder, read_images
from medsight.data.isic import read_isic2017, read_isic2018
from medsight.data.medmnist import read_medmnist
from medsight.data.ph2 import read_ph2
from medsight.errors import InputError, MedsightError

# --- fixture writers -----------------------------------------------------------------------------

def write_image(path: Path, size=(12, 10), mode="RGB", seed=0) -> Path:
    """A small random image of ``size`` (width, height); the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def write_mask(path: Path, size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[2:6, 3:8] = 255
    Image.fromarray(arr).save(path)
    return path


def write_garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image \x00\x01\x02" * 10)
    return path


PH2_HEADER = ("||   Name   || Histological Diagnosis || Clinical Diagnosis || Asymmetry | Pigment Network | "
              "Dots/Globules | Streaks | Regression Areas | Blue-Whitish Veil || Colors ||")
PH2_LEGEND = "\nLegends for the Clinical Diagnosis:\n0 - Common Nevus;\n1 - Atypical Nevus;\n2 - Melanoma.\n"


def ph2_row(cid: str, code: str, histo: str = "") -> str:
    return f"||   {cid} || {histo:>22} || {code:>18} ||         1 |              AT |  A |  A |  A |  P ||    3 4 ||"


def make_ph2(root: Path, cases=(("IMD003", "0"), ("IMD010", "1"), ("IMD020", "2")), masks=True,
             extra_rows=()) -> Path:
    rows = [ph2_row(cid, code, "Melanoma" if code == "2" else "") for cid, code in cases] + list(extra_rows)
    (root).mkdir(parents=True, exist_ok=True)
    (root / "PH2_dataset.txt").write_text("\n".join([PH2_HEADER, *rows]) + "\n" + PH2_LEGEND)
    for cid, _ in cases:
        case = root / "PH2 Dataset images" / cid
        write_image(case / f"{cid}_Dermoscopic_Image" / f"{cid}.bmp")
        if masks:
            write_mask(case / f"{cid}_lesion" / f"{cid}_lesion.bmp")
    return root


def make_isic2017(root: Path) -> Path:
    train = {"ISIC_0000001": ("0.0", "0.0"), "ISIC_0000002": ("1.0", "0.0"), "ISIC_0000003": ("0.0", "1.0")}
    val = {"ISIC_0000010": ("1.0", "0.0")}
    for long, rows in (("Training", train), ("Validation", val)):
        lines = ["image_id,melanoma,seborrheic_keratosis"] + [f"{k},{m},{s}" for k, (m, s) in rows.items()]
        (root / f"ISIC-2017_{long}_Part3_GroundTruth.csv").parent.mkdir(parents=True, exist_ok=True)
        (root / f"ISIC-2017_{long}_Part3_GroundTruth.csv").write_text("\n".join(lines) + "\n")
        for k in rows:
            write_image(root / f"ISIC-2017_{long}_Data" / f"{k}.jpg")
    # the official Data folders also hold superpixel PNGs, which are not cases
    write_image(root / "ISIC-2017_Training_Data" / "ISIC_0000001_superpixels.png")
    (root / "ISIC-2017_Training_Data_metadata.csv").write_text(
        "image_id,age_approximate,sex\nISIC_0000001,55,female\nISIC_0000002,unknown,unknown\n")
    write_mask(root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000002_segmentation.png")
    write_image(root / "ISIC-2017_Test_Data" / "ISIC_0000100.jpg")  # no ground truth: unlabelled
    return root


ISIC2018_COLUMNS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def isic2018_row(image: str, dx: str) -> str:
    return ",".join([image] + ["1.0" if c.lower() == dx else "0.0" for c in ISIC2018_COLUMNS])


def make_isic2018(root: Path, rows=(("ISIC_0024306", "nv"), ("ISIC_0024307", "mel"), ("ISIC_0024308", "vasc"))):
    root.mkdir(parents=True, exist_ok=True)
    lines = ["image," + ",".join(ISIC2018_COLUMNS)] + [r if isinstance(r, str) else isic2018_row(*r) for r in rows]
    (root / "ISIC2018_Task3_Training_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    folder = root / "ISIC2018_Task3_Training_Input"
    for r in rows:
        write_image(folder / f"{(r if isinstance(r, str) else r[0]).split(',')[0]}.jpg")
    (folder / "ATTRIBUTION.txt").write_text("not an image")
    (root / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text(
        "image,lesion_id,diagnosis_confirm_type\nISIC_0024306,HAM_0000001,histopathology\n"
        "ISIC_0024307,HAM_0000001,histopathology\n")
    return root


def make_ham(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp\n"
        "HAM_0000118,ISIC_0025030,bkl,histo,80.0,male,scalp\n"
        "HAM_0002730,ISIC_0026769,mel,histo,,female,back\n")
    write_image(root / "HAM10000_images_part_1" / "ISIC_0027419.jpg")
    write_image(root / "HAM10000_images_part_1" / "ISIC_0025030.jpg")
    write_image(root / "HAM10000_images_part_2" / "ISIC_0026769.jpg")
    return root


def make_npz(path: Path, n=(5, 3, 0), grey=False, labels=None, size=6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        shape = (count, size, size) if grey else (count, size, size, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (labels[split] if labels and split in labels
                                     else (np.arange(count) % 7).reshape(-1, 1).astype(np.uint8))
    np.savez_compressed(path, **arrays)
    return path


def make_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_image(root / "a1.png")
    write_image(root / "b2.jpg", size=(20, 16))
    write_image(root / "c3.bmp", mode="L")
    write_image(root / "u4.png")
    write_mask(root / "masks" / "a1.png")
    (root / "labels.csv").write_text(
        "id,label,mask,patient_id,split,site\n"
        "b2,malignant,,p1,train,arm\n"
        "a1,benign,masks/a1.png,p1,Validation,leg\n"
        "c3,benign,,p2,,\n"
        "u4,,,,,\n")
    return root


def assert_names(exc_info, *parts):
    message = str(exc_info.value)
    for part in parts:
        assert str(part) in message, f"{part!r} not in {message!r}"


# --- PH2 -----------------------------------------------------------------------------------------

def test_ph2_reads_ids_labels_tasks_masks_meta(tmp_path):
    root = make_ph2(tmp_path / "ph2")
    assert detect_format(root) == "ph2"
    ds = open_dataset(root)
    assert ds.name == "ph2" and [s.id for s in ds.samples] == ["IMD003", "IMD010", "IMD020"]
    assert [s.diagnosis for s in ds.samples] == ["common_nevus", "atypical_nevus", "melanoma"]
    assert ds.classes == ("common_nevus", "atypical_nevus", "melanoma")
    assert ds.default_task == "melanoma"
    mel = ds.task()
    assert mel.classes == ("nevus", "melanoma")
    assert [mel.label_of(s.diagnosis) for s in ds.samples] == [0, 0, 1]
    assert [ds.task("diagnosis").label_of(s.diagnosis) for s in ds.samples] == [0, 1, 2]
    s = ds.samples[2]
    assert s.patient_id == "IMD020" and s.split is None
    assert s.mask == root / "PH2 Dataset images/IMD020/IMD020_lesion/IMD020_lesion.bmp"
    assert s.meta["asymmetry"] == 1 and s.meta["colors"] == [3, 4]
    assert s.meta["pigment_network"] == "AT" and s.meta["blue_whitish_veil"] == "P"
    assert s.meta["histological_diagnosis"] == "Melanoma"
    assert ds.samples[0].meta["histological_diagnosis"] is None
    assert s.load_image().shape == (3, 10, 12) and s.load_mask().shape == (10, 12)
    assert validate(ds, ds.task()) == []


def test_ph2_missing_mask_is_none(tmp_path):
    ds = read_ph2(make_ph2(tmp_path / "ph2", masks=False))
    assert all(s.mask is None for s in ds.samples)


def test_ph2_unknown_code(tmp_path):
    root = make_ph2(tmp_path / "ph2", cases=(("IMD003", "0"), ("IMD004", "7")))
    with pytest.raises(InputError) as exc:
        read_ph2(root)
    assert_names(exc, "PH2_dataset.txt", "IMD004", "'7'")


def test_ph2_row_without_image(tmp_path):
    root = make_ph2(tmp_path / "ph2", extra_rows=[ph2_row("IMD099", "1")])
    with pytest.raises(InputError) as exc:
        read_ph2(root)
    assert_names(exc, "IMD099.bmp", "not found")


def test_ph2_folder_without_row(tmp_path):
    root = make_ph2(tmp_path / "ph2")
    write_image(root / "PH2 Dataset images/IMD050/IMD050_Dermoscopic_Image/IMD050.bmp")
    with pytest.raises(InputError) as exc:
        read_ph2(root)
    assert_names(exc, "IMD050", "no row", "PH2_dataset.txt")


def test_ph2_duplicate_id(tmp_path):
    root = make_ph2(tmp_path / "ph2", extra_rows=[ph2_row("IMD003", "1")])
    with pytest.raises(InputError) as exc:
        read_ph2(root)
    assert_names(exc, "PH2_dataset.txt", "duplicate", "IMD003")


def test_ph2_mask_size_mismatch_and_garbage_image(tmp_path):
    root = make_ph2(tmp_path / "ph2")
    write_mask(root / "PH2 Dataset images/IMD010/IMD010_lesion/IMD010_lesion.bmp", size=(8, 8))
    write_garbage(root / "PH2 Dataset images/IMD020/IMD020_Dermoscopic_Image/IMD020.bmp")
    problems = validate(read_ph2(root))
    assert len(problems) == 2
    assert all(isinstance(p, InputError) for p in problems)
    assert "IMD010_lesion.bmp" in str(problems[0]) and "8x8" in str(problems[0])
    assert "IMD020.bmp" in str(problems[1]) and "cannot read" in str(problems[1])


def test_ph2_rejects_unknown_option(tmp_path):
    with pytest.raises(MedsightError, match="no options"):
        read_ph2(make_ph2(tmp_path / "ph2"), classes=["x"])


# --- ISIC 2017 -----------------------------------------------------------------------------------

def test_isic2017_reads_splits_labels_meta_masks(tmp_path):
    root = make_isic2017(tmp_path / "isic")
    assert detect_format(root) == "isic2017"
    ds = open_dataset(root)
    by_id = {s.id: s for s in ds.samples}
    assert list(by_id) == sorted(by_id) == ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003",
                                            "ISIC_0000010", "ISIC_0000100"]
    assert [s.split for s in ds.samples] == ["train", "train", "train", "val", "test"]
    assert [s.diagnosis for s in ds.samples] == ["nevus", "melanoma", "seborrheic_keratosis", "melanoma", None]
    assert ds.default_task == "diagnosis" and set(ds.tasks) == {"diagnosis", "melanoma", "seborrheic_keratosis"}
    sk = ds.task("seborrheic_keratosis")
    assert sk.classes == ("other", "seborrheic_keratosis")
    assert [sk.label_of(s.diagnosis) for s in ds.samples] == [0, 0, 1, 0, -1]
    assert [ds.task("melanoma").label_of(s.diagnosis) for s in ds.samples] == [0, 1, 0, 1, -1]
    assert by_id["ISIC_0000001"].meta == {"age_approximate": 55, "sex": "female"}
    assert by_id["ISIC_0000002"].meta == {"age_approximate": None, "sex": None}
    assert by_id["ISIC_0000003"].meta == {}
    assert by_id["ISIC_0000002"].mask.name == "ISIC_0000002_segmentation.png"
    assert by_id["ISIC_0000001"].mask is None
    assert len(ds.subset("train")) == 3 and len(ds.subset("test")) == 1
    assert validate(ds, ds.task()) == []


def test_isic2017_both_ones(tmp_path):
    root = make_isic2017(tmp_path / "isic")
    gt = root / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    gt.write_text("image_id,melanoma,seborrheic_keratosis\nISIC_0000010,1.0,1.0\n")
    with pytest.raises(InputError) as exc:
        read_isic2017(root)
    assert_names(exc, gt.name, "line 2", "both 1")


def test_isic2017_bad_value_and_missing_image(tmp_path):
    root = make_isic2017(tmp_path / "isic")
    gt = root / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    gt.write_text("image_id,melanoma,seborrheic_keratosis\nISIC_0000010,0.5,0.0\n")
    with pytest.raises(InputError) as exc:
        read_isic2017(root)
    assert_names(exc, gt.name, "0.5")
    gt.write_text("image_id,melanoma,seborrheic_keratosis\nISIC_0000010,1.0,0.0\nISIC_0000011,0.0,0.0\n")
    with pytest.raises(InputError) as exc:
        read_isic2017(root)
    assert_names(exc, "ISIC_0000011.jpg", "not found", gt.name)


def test_isic2017_missing_column_and_extra_image(tmp_path):
    root = make_isic2017(tmp_path / "isic")
    write_image(root / "ISIC-2017_Validation_Data" / "ISIC_0000099.jpg")
    with pytest.raises(InputError) as exc:
        read_isic2017(root)
    assert_names(exc, "ISIC_0000099.jpg", "no row")
    gt = root / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    gt.write_text("image_id,melanoma\nISIC_0000010,1.0\n")
    with pytest.raises(InputError) as exc:
        read_isic2017(root)
    assert_names(exc, gt.name, "seborrheic_keratosis")


# --- ISIC 2018 / HAM10000 --------------------------------------------------------------------------

def test_isic2018_task3(tmp_path):
    root = make_isic2018(tmp_path / "isic2018")
    assert detect_format(root) == "isic2018"
    ds = open_dataset(root)
    assert [s.id for s in ds.samples] == ["ISIC_0024306", "ISIC_0024307", "ISIC_0024308"]
    assert [s.diagnosis for s in ds.samples] == ["nv", "mel", "vasc"]
    assert ds.classes == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    assert [ds.task().label_of(s.diagnosis) for s in ds.samples] == [5, 4, 6]
    assert ds.task("melanoma").classes == ("other", "melanoma")
    assert [ds.task("melanoma").label_of(s.diagnosis) for s in ds.samples] == [0, 1, 0]
    assert [s.patient_id for s in ds.samples] == ["HAM_0000001", "HAM_0000001", None]
    assert {s.split for s in ds.samples} == {"train"}
    assert validate(ds, ds.task()) == []


@pytest.mark.parametrize("row", ["ISIC_0000001,1.0,1.0,0.0,0.0,0.0,0.0,0.0",
                                 "ISIC_0000001,0.0,0.0,0.0,0.0,0.0,0.0,0.0"])
def test_isic2018_not_one_hot(tmp_path, row):
    root = make_isic2018(tmp_path / "isic2018", rows=(("ISIC_0024306", "nv"), row))
    with pytest.raises(InputError) as exc:
        read_isic2018(root)
    assert_names(exc, "ISIC2018_Task3_Training_GroundTruth.csv", "line 3", "exactly one")


def test_ham10000(tmp_path):
    root = make_ham(tmp_path / "ham")
    assert detect_format(root) == "isic2018"
    ds = open_dataset(root, format="ham10000")
    assert [s.id for s in ds.samples] == ["ISIC_0025030", "ISIC_0026769", "ISIC_0027419"]
    assert [s.diagnosis for s in ds.samples] == ["bkl", "mel", "bkl"]
    assert [s.patient_id for s in ds.samples] == ["HAM_0000118", "HAM_0002730", "HAM_0000118"]
    assert ds.samples[0].meta == {"dx_type": "histo", "age": 80, "sex": "male", "localization": "scalp"}
    assert ds.samples[1].meta["age"] is None
    assert ds.samples[1].image.parent.name == "HAM10000_images_part_2"


def test_ham10000_missing_image_and_unknown_dx(tmp_path):
    root = make_ham(tmp_path / "ham")
    (root / "HAM10000_images_part_2" / "ISIC_0026769.jpg").unlink()
    with pytest.raises(InputError) as exc:
        read_isic2018(root)
    assert_names(exc, "HAM10000_metadata.csv", "ISIC_0026769.jpg", "not found")
    write_image(root / "HAM10000_images_part_2" / "ISIC_0026769.jpg")
    meta = root / "HAM10000_metadata.csv"
    meta.write_text(meta.read_text().replace(",mel,", ",melanoma,"))
    with pytest.raises(InputError) as exc:
        read_isic2018(root)
    assert_names(exc, "HAM10000_metadata.csv", "line 4", "melanoma")


# --- MedMNIST ------------------------------------------------------------------------------------

def test_dermamnist(tmp_path):
    npz = make_npz(tmp_path / "derma" / "dermamnist.npz", n=(9, 3, 0))
    assert detect_format(npz) == "medmnist" and detect_format(npz.parent) == "medmnist"
    ds = open_dataset(npz.parent, format="dermamnist")
    assert len(ds) == 12 and {s.split for s in ds.samples} == {"train", "val"}  # empty test is absent
    assert [s.id for s in ds.samples][:2] == ["train_00000", "train_00001"] and ds.samples[-1].id == "val_00002"
    assert ds.classes == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    s = ds.samples[4]
    assert s.diagnosis == "mel" and ds.task("melanoma").label_of(s.diagnosis) == 1
    assert ds.task().label_of(s.diagnosis) == 4
    assert s.image.shape == (3, 6, 6) and s.image.dtype == np.uint8
    raw = np.load(npz)["train_images"][4]
    assert np.array_equal(s.image.transpose(1, 2, 0), raw)
    assert s.meta["source"] == str(npz) and str(npz) in s.source
    assert validate(ds, ds.task()) == []


def test_medmnist_grey_and_class_names(tmp_path):
    labels = {"train": np.array([[0], [1], [1], [0]]), "val": np.array([[1]]), "test": np.array([[0]])}
    npz = make_npz(tmp_path / "breastmnist.npz", n=(4, 1, 1), grey=True, labels=labels)
    ds = read_medmnist(npz)
    assert ds.classes == ("class_0", "class_1") and set(ds.tasks) == {"diagnosis"}
    assert ds.samples[0].image.shape == (1, 6, 6)
    assert [s.split for s in ds.samples] == ["test", "train", "train", "train", "train", "val"]
    named = read_medmnist(npz, classes=["malignant", "benign"])
    assert [s.diagnosis for s in named.subset("train").samples] == ["malignant", "benign", "benign", "malignant"]


def test_medmnist_label_out_of_range(tmp_path):
    npz = make_npz(tmp_path / "dermamnist.npz", n=(3, 2, 0),
                   labels={"val": np.array([[1], [7]], np.uint8)})
    with pytest.raises(InputError) as exc:
        read_medmnist(npz)
    assert_names(exc, "dermamnist.npz", "val_labels", "7")
    npz = make_npz(tmp_path / "other.npz", n=(3, 0, 0), labels={"train": np.array([[0], [1], [2]])})
    with pytest.raises(InputError) as exc:
        read_medmnist(npz, classes="a,b")
    assert_names(exc, "other.npz", "train_labels")


def test_medmnist_multilabel_not_supported(tmp_path):
    npz = make_npz(tmp_path / "chestmnist.npz", n=(2, 0, 0), grey=True,
                   labels={"train": np.zeros((2, 14), np.uint8), "val": np.zeros((0, 14), np.uint8),
                           "test": np.zeros((0, 14), np.uint8)})
    with pytest.raises(MedsightError, match="multi-label"):
        read_medmnist(npz)


def test_medmnist_detection_needs_one_medmnist_npz(tmp_path):
    make_npz(tmp_path / "two" / "a.npz")
    make_npz(tmp_path / "two" / "b.npz")
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    from medsight.data.medmnist import detect_medmnist
    assert not detect_medmnist(tmp_path / "two")
    assert not detect_medmnist(tmp_path / "plain.npz")
    write_garbage(tmp_path / "broken.npz")
    assert not detect_medmnist(tmp_path / "broken.npz")
    with pytest.raises(InputError) as exc:
        read_medmnist(tmp_path / "broken.npz")
    assert_names(exc, "broken.npz", "cannot read")


# --- folder + labels.csv ---------------------------------------------------------------------------

def test_folder_reads_labels_masks_splits_meta(tmp_path):
    root = make_folder(tmp_path / "mine")
    assert detect_format(root) == "folder"
    ds = open_dataset(root)
    assert [s.id for s in ds.samples] == ["a1", "b2", "c3", "u4"]
    assert [s.diagnosis for s in ds.samples] == ["benign", "malignant", "benign", None]
    assert ds.classes == ("benign", "malignant")
    task = ds.task()
    assert task.name == "label" and task.is_binary and task.positive == "malignant"
    assert [task.label_of(s.diagnosis) for s in ds.samples] == [0, 1, 0, -1]
    a1, b2, c3, u4 = ds.samples
    assert a1.mask == root / "masks" / "a1.png" and b2.mask is None
    assert [s.split for s in ds.samples] == ["val", "train", None, None]
    assert [s.patient_id for s in ds.samples] == ["p1", "p1", "p2", None]
    assert a1.meta == {"site": "leg"} and c3.meta == {"site": None}
    assert b2.image.name == "b2.jpg" and c3.image.name == "c3.bmp"
    assert c3.load_image().shape == (3, 10, 12)
    assert validate(ds, task) == []


def test_folder_options(tmp_path):
    root = make_folder(tmp_path / "mine")
    ds = read_folder(root, positive="benign")
    assert ds.task().classes == ("malignant", "benign")
    ds = read_folder(root, classes=["malignant", "benign", "unsure"])
    assert ds.classes == ("malignant", "benign", "unsure") and not ds.task().is_binary
    with pytest.raises(InputError) as exc:
        read_folder(root, classes=["benign", "unsure"])
    assert_names(exc, "labels.csv", "line 2", "'malignant'")
    with pytest.raises(MedsightError, match="positive"):
        read_folder(root, positive="unsure")
    with pytest.raises(MedsightError, match="options"):
        read_folder(root, postive="benign")


def test_folder_image_column_image_dir_and_numeric_labels(tmp_path):
    root = tmp_path / "mine"
    write_image(root / "pics" / "x.png")
    write_image(root / "pics" / "y.tif")
    write_image(root / "elsewhere" / "z_scan.jpg")
    (root / "table.csv").write_text("id,label,image\nx,10,\ny,2,\nz,2,elsewhere/z_scan.jpg\n")
    assert detect_format(root) == "folder"
    ds = read_folder(root, image_dir="pics")
    assert ds.classes == ("2", "10")  # numeric labels sort as numbers
    assert [s.image.name for s in ds.samples] == ["x.png", "y.tif", "z_scan.jpg"]
    assert ds.task().label_of("10") == 1


def test_folder_missing_image_and_duplicate_id(tmp_path):
    root = make_folder(tmp_path / "mine")
    (root / "b2.jpg").unlink()
    with pytest.raises(InputError) as exc:
        read_folder(root)
    assert_names(exc, "labels.csv", "line 2", "b2")
    write_image(root / "b2.jpg")
    table = root / "labels.csv"
    table.write_text(table.read_text() + "a1,malignant,,,,\n")
    with pytest.raises(InputError) as exc:
        read_folder(root)
    assert_names(exc, "labels.csv", "line 6", "duplicate", "'a1'")


def test_folder_missing_mask_bad_split_and_missing_column(tmp_path):
    root = make_folder(tmp_path / "mine")
    (root / "masks" / "a1.png").unlink()
    with pytest.raises(InputError) as exc:
        read_folder(root)
    assert_names(exc, "a1.png", "mask not found", "labels.csv")
    (root / "labels.csv").write_text("id,label,split\na1,benign,holdout\n")
    with pytest.raises(InputError) as exc:
        read_folder(root)
    assert_names(exc, "labels.csv", "holdout")
    (root / "labels.csv").write_text("id,diagnosis\na1,benign\n")
    assert not detect_folder(root)
    with pytest.raises(InputError) as exc:
        read_folder(root)
    assert_names(exc, "labels.csv", "label")


def test_folder_mask_size_mismatch_garbage_image_and_label_outside_task(tmp_path):
    root = make_folder(tmp_path / "mine")
    write_mask(root / "masks" / "a1.png", size=(5, 7))
    write_garbage(root / "c3.bmp")
    ds = read_folder(root)
    problems = validate(ds, Task.multiclass("label", ("benign",)))
    messages = [str(p) for p in problems]
    assert len(problems) == 3, messages
    assert "a1.png" in messages[0] and "5x7" in messages[0]
    assert "b2.jpg" in messages[1] and "'malignant'" in messages[1]
    assert "c3.bmp" in messages[2] and "cannot read" in messages[2]


def test_read_table_text_and_parsed_modes_and_errors(tmp_path):
    from medsight.data.tables import read_table

    table = tmp_path / "t.csv"
    table.write_text(" id ,n,uid\nA, 1,007\nB,,\n")
    text = read_table(table, ("id",))  # label tables: all text, "" for empty, blanks dropped
    assert list(text.columns) == ["id", "n", "uid"] and text.values.tolist() == [["A", "1", "007"], ["B", "", ""]]
    parsed = read_table(table, dtype={"uid": str})  # numbers as numbers, NaN for empty
    assert parsed["n"].iloc[0] == 1 and np.isnan(parsed["n"].iloc[1]) and parsed["uid"].iloc[0] == "007"
    assert read_table(table, dtype=None)["uid"].iloc[0] == 7
    with pytest.raises(InputError) as exc:
        read_table(table, ("id", "label", "mask"), hint="; try again")
    assert_names(exc, "t.csv", "missing column(s) label, mask (found: id, n, uid); try again")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "latin1.csv").write_bytes(b"id,label\n\xe9,1\n")
    for name, error in (("missing.csv", "FileNotFoundError"), ("empty.csv", "EmptyDataError"),
                        ("latin1.csv", "UnicodeDecodeError")):
        with pytest.raises(InputError) as exc:
            read_table(tmp_path / name)
        assert_names(exc, name, f"cannot read CSV ({error}: ")


# --- plain images ----------------------------------------------------------------------------------

def test_images_from_folder_file_and_list(tmp_path):
    folder = tmp_path / "imgs"
    a = write_image(folder / "a.png")
    b = write_image(folder / "b.JPG")
    (folder / "notes.txt").write_text("ignored")
    assert detect_format(folder) == "images" and detect_format(a) == "images"
    ds = open_dataset(folder)
    assert ds.name == "images" and [s.id for s in ds.samples] == ["a", "b"]
    assert ds.classes == () and ds.tasks == {} and all(s.diagnosis is None for s in ds.samples)
    assert [s.id for s in open_dataset(a).samples] == ["a"]
    assert [s.id for s in open_dataset([str(b), str(a)]).samples] == ["a", "b"]
    assert [s.id for s in read_images([a]).samples] == ["a"]


def test_images_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as exc:
        read_images(empty)
    assert_names(exc, "empty", "no images found")
    with pytest.raises(InputError):
        detect_format(empty)
    write_image(tmp_path / "dup" / "a.png")
    write_image(tmp_path / "dup" / "a.jpg")
    with pytest.raises(InputError) as exc:
        read_images(tmp_path / "dup")
    assert_names(exc, "a.png", "a.jpg", "'a'")
    with pytest.raises(InputError) as exc:
        read_images([tmp_path / "dup" / "a.png", tmp_path / "missing.png"])
    assert_names(exc, "missing.png", "not found")
    garbage = write_garbage(tmp_path / "bad" / "scan.png")
    problems = validate(read_images(garbage))
    assert len(problems) == 1 and str(garbage) in str(problems[0])


# --- data check ------------------------------------------------------------------------------------

def test_summarize_and_format(tmp_path):
    root = make_folder(tmp_path / "mine")
    summary = summarize(read_folder(root))
    assert summary["format"] == "folder" and summary["cases"] == 4 and summary["patients"] == 2
    assert summary["splits"] == {"none": 2, "train": 1, "val": 1}
    assert summary["tasks"] == {"label": {"benign": 2, "malignant": 1}}
    assert summary["with_mask"] == 1 and summary["unlabelled"] == 1
    assert summary["image_height"] == {"min": 10, "median": 10.0, "max": 16}
    assert summary["image_width"]["max"] == 20
    assert summary["problems"] == []
    text = format_summary(summary)
    assert "cases       4" in text and "benign 2" in text and "problems    none" in text

    write_garbage(root / "c3.bmp")
    summary = summarize(read_folder(root))
    assert len(summary["problems"]) == 1 and "c3.bmp" in summary["problems"][0]
    assert "c3.bmp" in format_summary(summary)
    assert "problems" not in summarize(read_folder(root), check_files=False)


def test_summarize_multisplit_dataset(tmp_path):
    summary = summarize(read_isic2017(make_isic2017(tmp_path / "isic")))
    assert summary["splits"] == {"test": 1, "train": 3, "val": 1}
    assert summary["classes_per_split"]["train"] == {"nevus": 1, "melanoma": 1, "seborrheic_keratosis": 1}
    assert summary["tasks"]["melanoma"] == {"other": 2, "melanoma": 2}
    assert "val: melanoma 1" in format_summary(summary)


# --- real datasets (the conftest fixtures: ../shared/datasets or $MEDSIGHT_DATASETS) ----------------

def test_real_ph2(ph2):
    ds = open_dataset(ph2)
    assert ds.name == "ph2" and len(ds) == 140
    counts = {c: sum(s.diagnosis == c for s in ds.samples) for c in ds.classes}
    assert counts == {"common_nevus": 56, "atypical_nevus": 56, "melanoma": 28}
    assert all(s.has_mask for s in ds.samples)
    for s in ds.samples[::35]:
        image, mask = s.load_image(), s.load_mask()
        assert image.shape[1:] == mask.shape and 0 < mask.mean() < 1
    assert validate(ds, ds.task()) == []


def test_real_isic2017(isic2017):
    ds = open_dataset(isic2017)
    assert ds.name == "isic2017"
    for split, n, mel, sk in (("train", 2000, 374, 254), ("val", 150, 30, 42)):
        part = ds.subset(split)
        assert len(part) == n
        assert sum(s.diagnosis == "melanoma" for s in part.samples) == mel
        assert sum(s.diagnosis == "seborrheic_keratosis" for s in part.samples) == sk
    assert sum(s.meta.get("sex") is not None for s in ds.samples) > 1500
    for s in ds.samples[::500]:
        assert s.load_image().shape == (3, 256, 256)


def test_real_dermamnist(dermamnist):
    ds = open_dataset(dermamnist)
    assert ds.name == "medmnist" and len(ds.classes) == 7
    assert len(ds.subset("train")) == 7007 and len(ds.subset("val")) == 1003 and len(ds.subset("test")) == 0
    assert ds.samples[0].image.shape == (3, 28, 28)
    assert {s.diagnosis for s in ds.samples} == set(ds.classes)
