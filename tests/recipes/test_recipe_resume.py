"""Resuming a whole recipe: data order, augmentation and dropout replayed, and a multi-stage recipe
that resumes after its finished first stage without training it again."""

import json

import pytest
import torch
from safetensors.torch import load_file

from medsight.recipes import RECIPES, parse_config
from medsight.rundir import RunDir


class Interrupt(Exception):
    pass


def tiny_seg_config():
    return parse_config({
        "recipe": "segmentation", "seed": 3,
        "data": {"format": "synthetic", "options": {"n": 24, "size": 32, "seed": 0}, "image_size": [32, 32]},
        "model": {"name": "unet", "options": {"channels": [4, 8, 16], "num_res_units": 0}},
        "train": {"epochs": 4, "batch_size": 4, "lr": 0.01},
        "augment": {"rotate": 10, "scale": [0.9, 1.1], "brightness": 0.1, "contrast": 0.1},
    })


def test_recipe_resume_matches_uninterrupted_run(tmp_path):
    RECIPES["segmentation"](tiny_seg_config()).train(RunDir(tmp_path / "full"), device="cpu")

    def interrupt(epoch, record):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        RECIPES["segmentation"](tiny_seg_config()).train(RunDir(tmp_path / "cut"), device="cpu", callbacks=[interrupt])
    assert not RunDir(tmp_path / "cut").read_record().finished
    record = RECIPES["segmentation"](tiny_seg_config()).train(RunDir(tmp_path / "cut"), device="cpu")

    full = (tmp_path / "full" / "history.csv").read_text().splitlines()
    cut = (tmp_path / "cut" / "history.csv").read_text().splitlines()
    strip = lambda lines: [",".join(line.split(",")[:-1]) for line in lines]  # noqa: E731 (drop the seconds)
    assert strip(full) == strip(cut) and len(full) == 5
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert record.finished and record.stage("network").epochs_run == 4
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["best_epoch"] == record.stage("network").best_epoch


def fuse_tsd_config(root):
    return parse_config({
        "recipe": "fuse_tsd", "seed": 0,
        "data": {"format": "lidc-voi", "root": str(root), "task": "malignancy", "preprocess": "nodule_crop",
                 "preprocess_options": {"size_mm": [16, 16, 16]}, "image_size": [16, 16, 16],
                 "val_fraction": 0.3},
        "features": {"fourier": {"n_coefficients": 4}, "cnn": {"min_pixels": 3}},
        "model": {"name": "resnet14", "options": {"stem": "small", "width": 4}},
        "train": {"epochs": 1, "batch_size": 16},
        "head": {"name": "svm"},
    })


@pytest.mark.slow
def test_a_finished_stage_is_not_trained_again(tmp_path, monkeypatch):
    """Fuse-TSD stopped in its descriptor stage resumes with the CNN it had trained."""
    from builders import write_vois

    import medsight.recipes.fuse_tsd as fuse_tsd

    vois = write_vois(tmp_path / "vois")
    run = RunDir(tmp_path / "run")

    def broken(*args, **kwargs):
        raise Interrupt

    monkeypatch.setattr(fuse_tsd, "descriptor_stage", broken)
    with pytest.raises(Interrupt):
        fuse_tsd.FuseTSD(fuse_tsd_config(vois)).train(run, device="cpu")
    record = run.read_record()
    assert record.stage("cnn").finished and not record.stage("descriptors").finished and not record.finished
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    monkeypatch.undo()

    def no_training(*args, **kwargs):
        raise AssertionError("the finished CNN stage was trained again")

    monkeypatch.setattr("medsight.engine.loop.Trainer.fit", no_training)
    record = fuse_tsd.FuseTSD(fuse_tsd_config(vois)).train(run, device="cpu")
    assert record.finished and record.stage("descriptors").finished
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights
