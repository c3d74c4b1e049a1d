"""Unlabelled nodules from other CT volumes: the 3D nodule segmenter (recipe segmentation on
nodule boxes) and recipe semi's data.unlabelled / data.unlabelled_masks, on written LIDC VOIs and a
written LUNA16 layout (whole .mhd CTs with bright spheres at the annotated centres)."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsight.cli import main
from medsight.config import ConfigError
from medsight.data import open_dataset, volumeio
from medsight.metrics import segmentation_metrics
from medsight.recipes import load_config, load_recipe
from medsight.recipes.unlabelled_nodules import UnlabelledSource
from medsight.rundir import RunDir
from medsight.transforms.volume import crop_centered, crop_centered_mask, uncrop

from builders import CONFIGS, sphere, write_vois

pytestmark = pytest.mark.usefixtures("one_thread")

SPACING_XYZ = (0.75, 0.75, 1.5)  # not the VOIs' (0.7, 0.7, 2.0): the boxes are in mm
ORIGIN = (-100.0, -120.0, -300.0)
# series uid -> nodules (centre voxel (z, y, x), radius mm)
NODULES = {"1.3.6.1.4.1.9328.50.1.111": [((10.0, 20.0, 22.0), 5.0), ((14.0, 40.0, 38.0), 4.0)],
           "1.3.6.1.4.1.9328.50.1.222": [((12.0, 28.0, 27.0), 7.0)]}


def write_luna(root: Path) -> dict[str, np.ndarray]:
    """The LUNA16 layout: one .mhd CT a series (air-like lung, spheres of soft tissue), annotations.csv
    in world mm. Returns each series' sphere mask (z, y, x)."""
    rng = np.random.default_rng(1)
    spacing_zyx = SPACING_XYZ[::-1]
    rows, truth = ["seriesuid,coordX,coordY,coordZ,diameter_mm"], {}
    for k, (uid, nodules) in enumerate(NODULES.items()):
        mask = np.zeros((24, 56, 56), np.uint8)
        for centre, radius in nodules:
            mask |= sphere(mask.shape, centre, radius, spacing_zyx)
            z, y, x = centre
            world = [o + i * s for o, i, s in zip(ORIGIN, (x, y, z), SPACING_XYZ)]
            rows.append(f"{uid},{world[0]},{world[1]},{world[2]},{2 * radius}")
        ct = np.where(mask > 0, 30, -800) + rng.normal(0, 30, mask.shape)
        image = sitk.GetImageFromArray(ct.astype(np.int16))
        image.SetSpacing(SPACING_XYZ)
        image.SetOrigin(ORIGIN)
        (root / f"subset{k}").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(root / f"subset{k}" / f"{uid}.mhd"))
        truth[uid] = mask
    (root / "CSVFILES").mkdir(parents=True, exist_ok=True)
    (root / "CSVFILES" / "annotations.csv").write_text("\n".join(rows) + "\n")
    return truth


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """LIDC VOIs, a LUNA tree, and a small nodule segmenter trained on the VOIs."""
    root = tmp_path_factory.mktemp("unlabelled")
    vois = write_vois(root / "vois", n_patients=9)
    luna = root / "luna"
    truth = write_luna(luna)
    segmenter = root / "segmenter"
    assert main(["train", str(CONFIGS / "lidc_voi_nodule_unet.yaml"), "--data", str(vois), "--out", str(segmenter),
                 "--device", "cpu", "--epochs", "25", "--set", "model.options.channels=[4,8,16]",
                 "--set", "train.batch_size=2", "--set", "train.lr=0.01", "--set", "train.early_stopping=null",
                 "--set", "data.folds=3", "--set", "data.fold=0", "--set", "data.val_fraction=0.34"]) == 0
    return {"vois": vois, "luna": luna, "truth": truth, "segmenter": segmenter, "root": root}


def test_uncrop_puts_a_box_back_where_it_was_cut():
    spacing = (2.0, 0.7, 0.7)
    ball = sphere((20, 60, 60), (9.3, 31.2, 28.6), 6.0, spacing)
    centre = (9.3, 31.2, 28.6)
    box = crop_centered(ball.astype(np.float32), centre, 32.0, spacing, out_shape=(16, 32, 32), pad_value=0.0)
    back = uncrop(box, centre, 32.0, spacing, ball.shape) >= 0.5
    assert segmentation_metrics(back, ball)["DI"] > 0.93  # a 1 mm box grid and back onto 0.7 mm voxels
    ones = uncrop(np.ones((16, 32, 32), np.float32), centre, 32.0, spacing, ball.shape)
    mm_from_centre = np.abs((np.indices(ball.shape).T - np.array(centre)) * np.array(spacing)).T.max(0)
    assert ones[mm_from_centre < 15.5].min() == 1.0 and ones[mm_from_centre > 16.6].max() == 0.0  # 0 off the box


@pytest.mark.slow
def test_the_segmenter_segments_the_vois_and_the_luna_spheres(data, tmp_path):
    run = data["segmenter"]
    assert main(["evaluate", str(run), str(data["vois"]), "--split", "heldout", "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["DI"] > 0.8  # on the CT's voxels
    assert main(["predict", str(run), str(data["vois"]), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "pred" / "masks").glob("*.nii.gz"))) == 18
    for voi in open_dataset(data["vois"]).samples[:4]:  # on the VOI's own voxels, read back as any volume
        written = volumeio.load(tmp_path / "pred" / "masks" / f"{voi.id}.nii.gz", is_mask=True)
        assert written.shape == voi.load_mask().shape
        assert segmentation_metrics(written, voi.load_mask())["DI"] > 0.75, voi.id
    source = UnlabelledSource(data["luna"], "luna", {}, run)
    nodules = source.nodules()
    ids = [s.id for s in nodules]
    assert ids == [f"{uid}_{k}" for uid, found in NODULES.items() for k in range(len(found))]
    by_id = {s.id: s for s in open_dataset(data["luna"]).samples}
    for voi in nodules:  # each mask where that sphere is, on the CT's own voxels around the centre
        uid, k = voi.id.rsplit("_", 1)
        centre = by_id[voi.id].meta["center_zyx"]
        np.testing.assert_allclose(centre, NODULES[uid][int(k)][0], atol=1e-6)
        want = crop_centered_mask(data["truth"][uid], centre, 32.0, SPACING_XYZ[::-1])
        assert voi.mask.shape == want.shape == voi.image.shape[1:]
        assert voi.spacing == pytest.approx(SPACING_XYZ[::-1]) and voi.diagnosis is None
        assert segmentation_metrics(voi.mask, want)["DI"] > 0.75, voi.id  # 0.84-0.94 here; an empty or full box < 0.2
        assert voi.image[0][want > 0].mean() > -100 and voi.image[0][want == 0].mean() < -600  # the CT's HU


def tiny_semi(data, run, *sets):
    return ["train", str(CONFIGS / "lidc_voi_semi_fixmatch.yaml"), "--data", str(data["vois"]), "--out", str(run),
            "--epochs", "1", "--device", "cpu", "--set", "data.folds=3", "--set", "data.fold=0",
            "--set", "data.val_fraction=0.3", "--set", "data.image_size=[24,24]", "--set", "model.options.width=4",
            "--set", "model.options.hidden=[8,4]", "--set", "train.batch_size=4", "--set", "semi.uratio=2",
            "--set", "data.labelled_fraction=0.5", *[a for s in sets for a in ("--set", s)]]


@pytest.mark.slow
def test_semi_learns_from_the_luna_nodules_as_unlabelled_only(data, tmp_path):
    plain, extra = tmp_path / "plain", tmp_path / "extra"
    assert main(tiny_semi(data, plain)) == 0
    assert main(tiny_semi(data, extra, f"data.unlabelled={data['luna']}", "data.unlabelled_format=luna",
                          f"data.unlabelled_masks={data['segmenter']}")) == 0
    before, after = (json.loads((run / "split.json").read_text()) for run in (plain, extra))
    luna = [f"{uid}_{k}" for uid, found in NODULES.items() for k in range(len(found))]
    assert after["unlabelled"] == before["unlabelled"] + luna  # exactly those nodules, after LIDC's own
    assert all(after[name] == before[name] for name in ("train", "val", "heldout"))
    assert load_config(extra / "config.yaml").data.unlabelled_masks == str(data["segmenter"])


@pytest.mark.slow
def test_bad_unlabelled_sources_exit_2_and_leave_nothing(data, tmp_path, capsys):
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    (not_a_run / "notes.txt").write_text("hello\n")
    flat = tmp_path / "flat_segmenter"  # a finished 2D segmenter: the wrong input
    run = RunDir(flat)
    raw = json.loads(json.dumps(RunDir(data["segmenter"]).read_config()))
    raw["data"]["image_size"] = [32, 32]
    run.create(raw)
    record = RunDir(data["segmenter"]).read_record()
    run.write_record(record)
    classifier = tmp_path / "classifier"
    RunDir(classifier).create({"recipe": "mvkbc", "data": {"preprocess": "nodule_views"}})
    RunDir(classifier).write_record(record)
    cases = {
        "missing folder": ([f"data.unlabelled={tmp_path / 'nowhere'}"], "nowhere"),
        "no masks named": ([f"data.unlabelled={data['luna']}"], "unlabelled_masks"),
        "segmenter missing": ([f"data.unlabelled={data['luna']}", f"data.unlabelled_masks={tmp_path / 'gone'}"],
                              "gone"),
        "not a run": ([f"data.unlabelled={data['luna']}", f"data.unlabelled_masks={not_a_run}"], "not_a_run"),
        "not a segmenter": ([f"data.unlabelled={data['luna']}", f"data.unlabelled_masks={classifier}"],
                            "config.yaml"),
        "2D segmenter": ([f"data.unlabelled={data['luna']}", f"data.unlabelled_masks={flat}"], "config.yaml"),
        "same patients": ([f"data.unlabelled={data['vois']}"], "also in"),
    }
    for name, (sets, named) in cases.items():
        out = tmp_path / "runs" / name.replace(" ", "_")
        capsys.readouterr()
        assert main(tiny_semi(data, out, *sets)) == 2, name
        assert named in capsys.readouterr().err, name
        assert not out.exists(), name
    with pytest.raises(ConfigError, match="data.unlabelled"):
        load_config(CONFIGS / "lidc_voi_semi_fixmatch.yaml", [f"data.unlabelled_masks={data['segmenter']}"])
    assert load_recipe(data["segmenter"]).volumetric  # the good run is still there, still a segmenter
