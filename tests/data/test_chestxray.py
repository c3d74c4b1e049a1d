"""ChestX-ray14 reader (a tiny fixture in the NIH layout, written into tmp_path by builders), multi-label tasks,
and the synthetic multi-label chest X-rays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.data import Sample, Task, check_sample, detect_format, open_dataset, validate
from medsight.data.chestxray14 import CLASSES, read_chestxray14, read_grey
from medsight.data.synthetic_xray import image_rng, make_chest_xray, make_chest_xrays
from medsight.errors import InputError, MedsightError

from builders import ROWS, TEST_IMAGES, grey_of, make_chestxray14, write_png


def assert_names(exc_info, *parts):
    message = str(exc_info.value)
    for part in parts:
        assert str(part) in message, f"{part!r} not in {message!r}"


# --- the reader ----------------------------------------------------------------------------------

def test_chestxray14_ids_labels_targets_splits_meta(tmp_path):
    root = make_chestxray14(tmp_path / "cxr")
    assert detect_format(root) == "chestxray14"
    ds = open_dataset(root)
    assert ds.name == "chestxray14" and len(ds) == 12 and ds.excluded == {}
    assert [s.id for s in ds.samples] == sorted(Path(r[0]).stem for r in ROWS)
    by_id = {s.id: s for s in ds.samples}
    assert by_id["00000003_001"].diagnosis == "Atelectasis|Effusion|Infiltration"
    assert by_id["00000002_000"].diagnosis == "No Finding"

    task = ds.task()
    assert ds.default_task == "findings" and task.name == "findings" and task.multilabel
    assert task.classes == CLASSES == ds.classes and len(CLASSES) == 14 and task.mapping == {}
    assert CLASSES[0] == "Atelectasis" and CLASSES[12] == "Pleural_Thickening" and CLASSES[-1] == "Hernia"
    t = task.targets(by_id["00000003_001"].diagnosis)
    assert t.tolist() == [1, 0, 1, 1] + [0] * 10
    assert task.targets(by_id["00000008_000"].diagnosis).nonzero()[0].tolist() == [6, 8, 9, 11]
    assert task.targets("No Finding").tolist() == [0] * 14

    # splits: the test list, and train_val cut by patient
    assert {s.id for s in ds.samples if s.split == "test"} == {"00000007_000", "00000008_000"}
    assert {s.split for s in ds.samples} <= {"train", "val", "test"}
    val_patients = {s.patient_id for s in ds.samples if s.split == "val"}
    train_patients = {s.patient_id for s in ds.samples if s.split == "train"}
    assert len(val_patients) == 1 and val_patients.isdisjoint(train_patients)  # round(0.1 * 6 patients)
    assert train_patients | val_patients == {"1", "2", "3", "4", "5", "6"}

    s = by_id["00000003_001"]
    assert s.patient_id == "3" and s.mask is None
    assert by_id["00000003_000"].image == root / "images_001" / "images" / "00000003_000.png"
    assert by_id["00000008_000"].image == root / "images_002" / "images" / "00000008_000.png"
    assert s.meta["age"] == 75 and s.meta["gender"] == "F" and s.meta["view_position"] == "AP"
    assert s.meta["follow_up"] == 1
    assert s.meta["original_size"] == (2500, 2048) and s.meta["pixel_spacing"] == (0.143, 0.139)
    assert validate(ds, task) == []


def test_chestxray14_reads_grey_rgb_and_rgba_as_one_channel(tmp_path):
    root = make_chestxray14(tmp_path / "cxr")
    ds = read_chestxray14(root)
    modes = set()
    for sample in ds.samples:
        modes.add(Image.open(sample.image).mode)
        image = sample.load_image()
        assert image.shape == (1, 6, 8) and image.dtype == np.uint8
        np.testing.assert_array_equal(image[0], grey_of(sample.image.name))
    assert modes == {"L", "RGB", "RGBA"}
    assert check_sample(ds.samples[0], ds.task()) == []


def test_read_grey_names_a_broken_file(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError) as exc:
        read_grey(bad)
    assert_names(exc, "x.png")


def test_chestxray14_val_split_is_patient_wise_and_counts_patients(tmp_path):
    # 20 train_val patients with 1 to 4 images each (flat images/ folder), 2 test patients
    rows = []
    for p in range(1, 23):
        for k in range((p % 4) + 1):
            rows.append((f"{p:08d}_{k:03d}.png", "No Finding" if k % 2 else "Mass", k, p, 30 + p, "M", "PA"))
    test = tuple(r[0] for r in rows if r[3] > 20)
    root = make_chestxray14(tmp_path / "cxr", rows=rows, test=test, flat=True)
    ds = read_chestxray14(root)
    assert all(s.image.parent == root / "images" for s in ds.samples)
    splits = {}
    for s in ds.samples:
        splits.setdefault(s.patient_id, set()).add(s.split)
    assert all(len(v) == 1 for v in splits.values())  # a patient never straddles two splits
    val = sorted(p for p, v in splits.items() if v == {"val"})
    assert len(val) == 2  # 10 % of the 20 train_val patients, whatever their image counts
    assert {p for p, v in splits.items() if v == {"test"}} == {"21", "22"}
    assert read_chestxray14(root, seed=0).samples == ds.samples  # seeded
    other = {tuple(sorted({s.patient_id for s in read_chestxray14(root, seed=k).samples if s.split == "val"}))
             for k in range(1, 6)}
    assert len(other) > 1 and all(len(v) == 2 for v in other)
    quarter = read_chestxray14(root, val_fraction=0.25)
    assert len({s.patient_id for s in quarter.samples if s.split == "val"}) == 5
    assert all(s.split in ("train", "test") for s in read_chestxray14(root, val_fraction=0).samples)


def test_chestxray14_partial_download_keeps_labels_and_split(tmp_path):
    missing = ("00000001_001.png", "00000004_000.png")
    root = make_chestxray14(tmp_path / "cxr", skip_images=missing)
    with pytest.raises(InputError) as exc:
        read_chestxray14(root)
    assert_names(exc, "Data_Entry_2017.csv", "00000001_001.png", "require_images=False")
    partial = read_chestxray14(root, require_images=False)
    assert len(partial) == 10 and sorted(partial.excluded) == ["00000001_001", "00000004_000"]
    full = read_chestxray14(make_chestxray14(tmp_path / "full"))
    full_split = {s.id: s.split for s in full.samples}
    assert all(full_split[s.id] == s.split for s in partial.samples)  # the same patients in val


@pytest.mark.parametrize("case", ["unknown finding", "missing csv", "split image not in csv", "image in both lists",
                                  "row in no list", "one list missing", "png without row", "duplicate png"])
def test_chestxray14_bad_inputs_name_the_file(tmp_path, case):
    root = tmp_path / "cxr"
    if case == "unknown finding":
        rows = list(ROWS)
        rows[4] = ("00000002_000.png", "Effusion|Pneumonitis", 0, 2, 81, "M", "PA")
        make_chestxray14(root, rows=rows)
        expected = ("Data_Entry_2017.csv", "00000002_000.png", "Pneumonitis")
    elif case == "missing csv":
        make_chestxray14(root)
        (root / "Data_Entry_2017.csv").unlink()
        expected = ("Data_Entry_2017.csv", "not found")
    elif case == "split image not in csv":
        make_chestxray14(root, extra_test=["00000099_000.png"])
        expected = ("test_list.txt", "00000099_000.png", "no row")
    elif case == "image in both lists":
        make_chestxray14(root, extra_test=["00000002_000.png"])
        expected = ("test_list.txt", "00000002_000.png", "train_val_list.txt")
    elif case == "row in no list":
        make_chestxray14(root)
        names = [r[0] for r in ROWS if r[0] not in TEST_IMAGES and r[0] != "00000005_000.png"]
        (root / "train_val_list.txt").write_text("\n".join(names) + "\n")
        expected = ("Data_Entry_2017.csv", "00000005_000.png", "neither")
    elif case == "one list missing":
        make_chestxray14(root)
        (root / "test_list.txt").unlink()
        expected = ("test_list.txt", "not found")
    elif case == "png without row":
        make_chestxray14(root)
        write_png(root / "images_002" / "images" / "00000042_000.png", grey_of("00000042_000.png"), "L")
        expected = ("00000042_000.png", "no row")
    else:
        make_chestxray14(root)
        write_png(root / "images_002" / "images" / "00000001_000.png", grey_of("00000001_000.png"), "L")
        expected = ("00000001_000.png", "images_001", "images_002")
    with pytest.raises(InputError) as exc:
        read_chestxray14(root)
    assert_names(exc, *expected)


def test_chestxray14_options_and_no_split_files(tmp_path):
    root = make_chestxray14(tmp_path / "cxr")
    with pytest.raises(MedsightError, match="val_fraction"):
        read_chestxray14(root, val_fraction=1.5)
    with pytest.raises(MedsightError, match="require_images"):
        read_chestxray14(root, folds=3)
    (root / "test_list.txt").unlink()
    (root / "train_val_list.txt").unlink()
    assert {s.split for s in read_chestxray14(root).samples} == {None}


# --- multi-label tasks -----------------------------------------------------------------------------

def test_multilabel_task_targets_and_checks():
    task = Task("findings", ("Effusion", "Mass", "Nodule"), {}, multilabel=True)
    assert task.targets("Mass|Effusion").tolist() == [1, 1, 0]
    assert task.targets("No Finding").tolist() == [0, 0, 0]
    assert task.targets(None).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="Hernia"):
        task.targets("Mass|Hernia")
    with pytest.raises(ValueError, match="No Finding"):
        task.targets("No Finding|Mass")
    with pytest.raises(MedsightError, match="multi-label"):
        task.label_of("Mass")
    good = Sample("a", np.zeros((1, 4, 4), np.uint8), diagnosis="Nodule|Mass")
    bad = Sample("b", np.zeros((1, 4, 4), np.uint8), diagnosis="Nodule|Hernia")
    assert check_sample(good, task) == []
    (problem,) = check_sample(bad, task)
    assert "Hernia" in str(problem) and "[b]" in str(problem)
    single = Task.multiclass("diagnosis", ("a", "b", "c"))
    assert not single.multilabel and single.targets("b").tolist() == [0, 1, 0] and single.label_of("c") == 2


# --- synthetic chest X-rays ------------------------------------------------------------------------

def test_synthetic_xray_is_reproducible_and_multilabel():
    a = make_chest_xrays(n=24, size=48, seed=3)
    b = open_dataset(None, format="synthetic-xray", n=24, size=48, seed=3)
    assert [s.id for s in a.samples] == [s.id for s in b.samples]
    assert all(x.image.tobytes() == y.image.tobytes() and x.diagnosis == y.diagnosis
               for x, y in zip(a.samples, b.samples))
    c = make_chest_xrays(n=24, size=48, seed=4)
    assert any(x.image.tobytes() != y.image.tobytes() for x, y in zip(a.samples, c.samples))
    s = a.samples[0]
    assert s.image.shape == (1, 48, 48) and s.image.dtype == np.uint8
    task = a.task()
    assert a.name == "synthetic-xray" and task.multilabel and task.classes == ("Effusion", "Mass", "Nodule",
                                                                               "Cardiomegaly")
    for s in a.samples:
        findings = s.meta["findings"]
        assert s.diagnosis == ("|".join(findings) or "No Finding")
        assert sorted(s.meta["centres"]) == sorted(findings)
        assert task.targets(s.diagnosis).tolist() == [int(c in findings) for c in task.classes]
    assert validate(a, task) == []
    # image i is the same whatever n is, and make_chest_xray regenerates it
    again, _ = make_chest_xray(image_rng(3, 5), 48, a.samples[5].meta["findings"])
    assert again.tobytes() == a.samples[5].image.tobytes()


def test_synthetic_xray_label_frequencies():
    ds = make_chest_xrays(n=120, size=32, seed=1, labels=("Mass", "Nodule", "Effusion"),
                          prevalence={"Mass": 0.5, "Nodule": 0.2})
    y = np.stack([ds.task().targets(s.diagnosis) for s in ds.samples])
    assert y.sum(axis=0).tolist() == [60, 24, 36]  # exactly round(n * p); Effusion the default 0.3
    # drawn independently: the co-occurrence of two labels is near the product of their rates
    assert abs((y[:, 0] & y[:, 1]).mean() - 0.5 * 0.2) < 0.06
    assert sum(s.diagnosis == "No Finding" for s in ds.samples) > 10
    with pytest.raises(MedsightError, match="Pneumonitis"):
        make_chest_xrays(n=4, labels=("Mass", "Pneumonitis"))
    with pytest.raises(MedsightError, match="options"):
        open_dataset(None, format="synthetic-xray", colour=True)


def _disc_union(spots, shape):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    inside = np.zeros(shape, bool)
    for y, x, r in spots:
        inside |= np.hypot(yy - y, xx - x) <= r
    return inside


def _check_shape_is_where_meta_says(label, findings, rng_of, size):
    with_it, attrs = make_chest_xray(rng_of(), size, findings)
    without, _ = make_chest_xray(rng_of(), size, [f for f in findings if f != label])
    diff = with_it[0].astype(int) - without[0].astype(int)
    spots = attrs["spots"][label]
    inside = _disc_union(spots, diff.shape)
    assert np.abs(diff[~inside]).max(initial=0) <= 4, f"{label} changes pixels outside its spots"
    y, x, r = spots[0]
    assert attrs["centres"][label] == (y, x)
    sign = -1 if label in ("Pneumothorax", "Emphysema") else 1  # air is darker
    if label == "Cardiomegaly":  # centred on the heart, which widens on both sides
        assert diff[_disc_union([(y, x, r)], diff.shape)].mean() > 5, "the heart is not bigger"
        assert abs(np.nonzero(diff > 4)[1].mean() - x) < 2  # as much wider left as right
    else:
        cy, cx = int(round(y)), int(round(x))
        assert sign * diff[cy - 1:cy + 2, cx - 1:cx + 2].mean() > 10, \
            f"{label} is not {'darker' if sign < 0 else 'brighter'} at its centre"


def test_synthetic_xray_shapes_are_where_meta_says():
    ds = make_chest_xrays(n=16, size=64, seed=7)
    checked = set()
    for i, s in enumerate(ds.samples):
        for label in s.meta["findings"]:
            _check_shape_is_where_meta_says(label, s.meta["findings"], lambda: image_rng(7, i), 64)
            checked.add(label)
    assert checked == {"Effusion", "Mass", "Nodule", "Cardiomegaly"}


def test_synthetic_xray_every_chestxray14_label_has_its_own_shape():
    for label in CLASSES:
        _check_shape_is_where_meta_says(label, ["Mass", label] if label != "Mass" else [label],
                                        lambda: image_rng(11, 0), 64)
