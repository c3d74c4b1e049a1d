"""What a run was trained on, recorded in the run, and the warning when the input clearly differs
(issue 17, item 2): analytic profiles of constant images, each kind of difference alone, and the
real case that prompted it (a PH2 model on ISIC-2017) against ISIC-2017's own validation images."""

from pathlib import Path

import numpy as np
import pytest
import torch

from medsight.data import open_dataset
from medsight.data.base import Sample
from medsight.recipes.familiar import differences, file_format, profile
from medsight.recipes.prepare import load_samples
from medsight.rundir import InputInfo, RunRecord
from medsight.transforms.preprocess import make_preprocess


def constant_images(values, channels=3, size=8) -> torch.Tensor:
    return torch.stack([torch.full((channels, size, size), v, dtype=torch.uint8) for v in values])


def info_of(samples, images, sizes) -> InputInfo:
    return InputInfo(images.shape[1], tuple(images.shape[2:]), (0.5,) * 3, (0.2,) * 3,
                     **profile(samples, images, sizes))


def samples(names) -> list[Sample]:
    return [Sample(Path(n).stem, Path("/data") / n) for n in names]


def test_file_formats_by_name():
    assert [file_format(s) for s in samples(["a.BMP", "b.jpeg", "c.nii.gz", "d.png"])] == ["bmp", "jpg", "nii.gz", "png"]
    assert file_format(Sample("x", np.zeros((3, 4, 4), np.uint8))) is None  # arrays have no format


def test_the_profile_of_constant_images():
    values = list(range(100, 200))  # per-image means 100/255 ... 199/255, std 0
    info = info_of(samples([f"{v}.png" for v in values]), constant_images(values), [(300, 400)] * 50 + [(200, 500)] * 50)
    assert info.formats == ("png",)
    assert info.sizes == ((200, 400), (300, 500)) and info.aspect == (1.3333, 2.5)
    low, high = np.quantile(np.array(values) / 255, (0.01, 0.99))
    assert info.image_mean == ((round(low, 4), round(high, 4)),) * 3
    assert info.image_std == ((0.0, 0.0),) * 3


def test_each_clear_difference_and_none_for_alike_data():
    values = list(range(100, 200))
    train_samples, train_images, train_sizes = samples([f"{v}.png" for v in values]), constant_images(values), [(300, 400)] * 100
    info = info_of(train_samples, train_images, train_sizes)
    alike = list(range(105, 195, 3))
    assert differences(info, samples([f"{v}.png" for v in alike]), constant_images(alike), [(320, 380)] * 30) == []
    found = differences(info, samples([f"{v}.jpg" for v in alike]), constant_images(alike), [(320, 380)] * 30)
    assert found == ["jpg images, where the run was trained on png"]
    found = differences(info, samples([f"{v}.png" for v in alike]), constant_images(alike), [(100, 150)] * 30)
    assert len(found) == 1 and "30 of 30 images more than 2x smaller or larger" in found[0] and "300x400" in found[0]
    found = differences(info, samples([f"{v}.png" for v in alike]), constant_images(alike), [(380, 380)] * 30)
    assert found == ["30 of 30 images of another aspect ratio (width / height 1.00, the training images' 1.33 to 1.33)"]
    bright = [235 + k % 20 for k in range(30)]  # every one above the range widened by a quarter
    found = differences(info, samples([f"{v}.png" for v in bright]), constant_images(bright), [(300, 400)] * 30)
    assert found == ["30 of 30 images with colour or intensity statistics outside the training images' range"]
    # a few outliers are not a difference: 7 of 30 (23 %) is less than a quarter
    mixed = alike[:23] + bright[:7]
    assert differences(info, samples([f"{v}.png" for v in mixed]), constant_images(mixed), [(300, 400)] * 30) == []
    # a run of an earlier release has no profile: nothing is compared
    assert differences(InputInfo(3, (8, 8), (0.5,) * 3, (0.2,) * 3), samples(["a.jpg"]), constant_images([250]),
                       [(10, 10)]) == []


def test_the_profile_is_kept_in_the_run_record(tmp_path):
    info = info_of(samples(["a.png", "b.png"]), constant_images([10, 20]), [(30, 40), (50, 60)])
    from medsight.data.base import Task
    from medsight.rundir import DataInfo

    record = RunRecord("classification", Task.multiclass("t", ("a", "b")), info, DataInfo("folder", "/d", 2, 0, 0))
    assert RunRecord.from_json(record.to_json(), tmp_path / "run.json").input == info
    old = record.to_json()
    for key in ("formats", "sizes", "aspect", "image_mean", "image_std"):  # as runs of earlier releases wrote it
        del old["input"][key]
    assert RunRecord.from_json(old, tmp_path / "run.json").input == InputInfo(3, (8, 8), (0.5,) * 3, (0.2,) * 3)


def load(root, split=None, n=None):
    ds = open_dataset(root)
    chosen = [s for s in ds.samples if split is None or s.split == split][:n]
    loaded, _ = load_samples(chosen, make_preprocess("resize", (64, 64), 3))
    by_id = {s.id: s for s in chosen}
    return [by_id[i] for i in loaded.ids], loaded.images, loaded.original_sizes


@pytest.mark.slow
def test_a_ph2_model_on_isic2017_is_warned_isic2017_on_its_own_validation_is_not(ph2, isic2017):
    val = load(isic2017, "val")
    ph2_info = info_of(*load(ph2))
    found = differences(ph2_info, *val)
    assert found == ["jpg images, where the run was trained on bmp", "150 of 150 images of another aspect ratio "
                     f"(width / height 1.00, the training images' {ph2_info.aspect[0]:.2f} to {ph2_info.aspect[1]:.2f})"]
    assert 1.3 < ph2_info.aspect[0] < ph2_info.aspect[1] < 1.4
    isic_info = info_of(*load(isic2017, "train", 400))
    assert differences(isic_info, *val) == []
