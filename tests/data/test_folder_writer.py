"""Writing a dataset in the ``folder`` layout: a round trip, and nothing overwritten or left half-written."""

import csv

import numpy as np
import pytest
from PIL import Image

from medsight.data.folder import write_folder
from medsight.data.synthetic import make_dermoscopy
from medsight.errors import MedsightError


def test_write_folder_round_trips(tmp_path):
    ds = make_dermoscopy(n=6, size=(40, 56), seed=5)
    out = write_folder(ds, tmp_path / "demo")
    assert out == tmp_path / "demo"
    assert sorted(p.name for p in out.iterdir()) == ["images", "labels.csv", "masks"]
    assert not [p for p in tmp_path.iterdir() if p.name != "demo"]  # no temporary folder left over
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "label", "image", "mask"]
    assert [r["id"] for r in rows] == [s.id for s in ds.samples]
    for row, s in zip(rows, ds.samples):
        assert row["label"] == s.diagnosis
        assert row["image"] == f"images/{s.id}.png" and row["mask"] == f"masks/{s.id}.png"
        image = np.asarray(Image.open(out / row["image"]))
        assert image.shape == (40, 56, 3) and np.array_equal(image.transpose(2, 0, 1), s.image)
        mask = np.asarray(Image.open(out / row["mask"]))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask // 255, s.mask)


def test_write_folder_into_existing_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    write_folder(make_dermoscopy(n=2, size=32, seed=0), tmp_path / "empty")
    assert (tmp_path / "empty" / "labels.csv").is_file()


def test_write_folder_refuses_a_non_empty_target(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(MedsightError, match="taken"):
        write_folder(make_dermoscopy(n=2, size=32, seed=0), target)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_write_folder_leaves_nothing_on_failure(tmp_path):
    ds = make_dermoscopy(n=3, size=32, seed=0)
    ds.samples[2].image = tmp_path / "missing.png"  # unreadable: loading it raises
    with pytest.raises(MedsightError):
        write_folder(ds, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
