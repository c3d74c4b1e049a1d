"""The MB-DCNN recipe: its config, the masks it keeps, and the three stages end to end on tiny
synthetic images (train, resume within a stage, predict with maps, evaluate, the transfer setting)."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from medsight.cli import main
from medsight.errors import ConfigError
from medsight.recipes import RECIPES, load_config, parse_config
from medsight.recipes.mbdcnn_sources import kept_masks
from medsight.rundir import RunDir

from builders import CONFIGS

TINY = {
    "recipe": "mbdcnn", "seed": 0,
    "data": {"format": "folder", "image_size": [32, 32], "val_fraction": 0.3},
    "train": {"epochs": 2, "batch_size": 4, "lr": 0.002},
    "coarse": {"model": {"name": "deeplabv3plus", "options": {
        "encoder_options": {"width": 8}, "aspp_channels": 16, "decoder_channels": 16, "shortcut_channels": 8}}},
    "maskcn": {"model": {"name": "resnet18", "options": {"width": 8}}, "train": {"class_weights": "balanced"}},
    "enhanced": {"train": {"lr": 0.001}},
    "predict": {"scales": [1.0, 1.25], "crops": 1},
}


def tiny(root, **sections):
    raw = json.loads(json.dumps(TINY))
    raw["data"]["root"] = str(root)
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_config(raw)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    assert main(["data", "synth", str(root), "--n", "16", "--size", "40"]) == 0
    return root


def test_the_shipped_configs_and_the_stage_sections():
    cfg = load_config(CONFIGS / "ph2_mbdcnn.yaml", epochs=3)
    assert all(cfg.stage(s).train.epochs == 3 for s in ("coarse", "maskcn", "enhanced"))
    assert cfg.stage("maskcn").train.lr != cfg.train.lr  # a stage's own override
    assert cfg.stage("enhanced").model == cfg.coarse.model  # coarse-SN's layout
    isic = load_config(CONFIGS / "isic2017_mbdcnn.yaml")
    assert isic.enhanced.enabled is False and isic.predict.one_vs_rest == ["melanoma", "seborrheic_keratosis"]
    with pytest.raises(ConfigError, match="maskcn.train: epochs"):
        parse_config({**TINY, "maskcn": {"train": {"epochs": 5}}})
    with pytest.raises(ConfigError, match="coarse.train: unknown key 'learning_rate'"):
        parse_config({**TINY, "coarse": {"train": {"learning_rate": 5}}})
    with pytest.raises(ConfigError, match="predict.tta"):
        parse_config({**TINY, "predict": {"tta": True}})
    with pytest.raises(ConfigError, match="predict.scales: give one or more positive"):
        parse_config({**TINY, "predict": {"scales": [1.0, 0]}})
    with pytest.raises(ConfigError, match="mask_fraction"):
        parse_config({**TINY, "data": {"mask_fraction": 1.5}})


def test_the_kept_masks_are_a_fraction_chosen_by_the_seed():
    ids = [f"c{i}" for i in range(8)]
    quarter = kept_masks(ids, 0.25, seed=0)
    assert len(quarter) == 2 and set(quarter) <= set(ids)
    assert kept_masks(ids[::-1], 0.25, seed=0) == quarter  # the order the cases come in does not matter
    assert len(kept_masks(ids, 0.5, 0)) == 4 and kept_masks(ids, 1.0, 0) == ids
    assert kept_masks(ids, 0.01, 0) != [] and kept_masks(ids, 0.0, 0) == [] and kept_masks([], 0.5, 0) == []


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_mbdcnn_trains_resumes_predicts_and_evaluates(synth, tmp_path, capsys):
    cfg = tiny(synth)
    full = RECIPES["mbdcnn"](cfg).train(RunDir(tmp_path / "full"), device="cpu")
    assert full.finished and list(full.stages) == ["coarse", "maskcn", "enhanced"]
    assert full.stage("coarse").fitted["pixel_labelled"] == {"train": full.data.train, "val": full.data.val}

    calls = []

    def cut(epoch, record):  # the first epoch of the third stage
        calls.append(epoch)
        if len(calls) == 5:
            raise Interrupt

    run = RunDir(tmp_path / "cut")
    with pytest.raises(Interrupt):
        RECIPES["mbdcnn"](tiny(synth)).train(run, device="cpu", callbacks=[cut])
    stages = run.read_record().stages
    assert stages["coarse"].finished and stages["maskcn"].finished and "enhanced" not in stages
    coarse_before = (tmp_path / "cut" / "coarse" / "model.safetensors").read_bytes()
    RECIPES["mbdcnn"](tiny(synth)).train(run, device="cpu")
    assert (tmp_path / "cut" / "coarse" / "model.safetensors").read_bytes() == coarse_before  # not trained again
    for stage in ("coarse", "maskcn", "enhanced"):  # the resumed run ends where the uninterrupted one did
        a = load_file(tmp_path / "full" / stage / "model.safetensors")
        b = load_file(tmp_path / "cut" / stage / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    metrics = json.loads((tmp_path / "cut" / "metrics.json").read_text())["validation"]
    assert {"coarse JA", "enhanced JA", "AUC"} <= set(metrics) and "loss" not in metrics

    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "cut"), str(synth), "--out", str(out), "--maps", "cam", "--device",
                 "cpu"]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 16 and list(rows[0]) == ["id", "p_malignant", "pred", "mask"]
    for row in rows:
        mask = Image.open(out / row["mask"])
        assert mask.size == (40, 40) and set(np.unique(np.asarray(mask))) <= {0, 255}  # the input's size, not the network's
        assert Image.open(out / "maps" / f"{row['id']}.png").size == (40, 40)
        assert 0 <= float(row["p_malignant"]) <= 1

    report = tmp_path / "eval.json"
    assert main(["evaluate", str(tmp_path / "cut"), str(synth), "--out", str(report), "--device", "cpu"]) == 0
    result = json.loads(report.read_text())
    assert result["n"] == 16 and result["n_masks"] == 16
    assert {"JA", "DI", "AC", "SE", "SP", "coarse JA", "AUC", "ACC", "SEN", "SPE"} <= set(result["metrics"])
    assert all(0 <= result["metrics"][k] <= 1 for k in ("JA", "coarse JA", "AUC"))
    chosen = run.read_record().thresholds["malignant"]  # mask-CN's decision threshold, chosen on validation
    assert result["threshold"] == {"malignant": chosen} and "ACC" in result["fixed_threshold_metrics"]
    assert all(r["pred"] == ("malignant" if float(r["p_malignant"]) >= chosen else "benign") for r in rows)

    summary = tmp_path / "report.md"  # the stages' folders, each with its best epoch and curves
    assert main(["report", str(tmp_path / "cut"), "--out", str(summary)]) == 0
    text = summary.read_text()
    for stage in ("coarse", "maskcn", "enhanced"):
        assert f"| cut / {stage} (validation) |" in text and f"### stage {stage} (`{stage}/`)" in text
        assert str(tmp_path / "cut" / stage / "training_curves.png") in text


@pytest.mark.slow
def test_coarse_sn_transferred_to_images_without_masks(synth, tmp_path):
    """The ISIC setting: no masks, coarse-SN from another run, mask-CN trained, no enhanced-SN."""
    source = tmp_path / "source"
    made = RECIPES["mbdcnn"](tiny(synth, enhanced={"enabled": False}, data={"mask_fraction": 0.5})).train(
        RunDir(source), device="cpu")
    split = json.loads((source / "split.json").read_text())
    assert made.stage("coarse").fitted["pixel_labelled"] == {  # coarse-SN saw half the masks
        "train": round(len(split["train"]) / 2), "val": max(1, round(len(split["val"]) / 2))}
    bare = tmp_path / "bare"
    shutil.copytree(synth, bare, ignore=shutil.ignore_patterns("masks", "labels.csv"))
    with open(synth / "labels.csv") as src, open(bare / "labels.csv", "w", newline="") as dst:
        rows = list(csv.DictReader(src))
        writer = csv.DictWriter(dst, fieldnames=["id", "label", "image"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    refused = tmp_path / "refused"
    with pytest.raises(Exception, match="coarse-SN needs training and validation cases with masks"):
        RECIPES["mbdcnn"](tiny(bare)).train(RunDir(refused), device="cpu")
    assert not refused.exists()  # nothing written that would block the corrected command
    with pytest.raises(Exception, match="enhanced-SN needs"):
        RECIPES["mbdcnn"](tiny(bare, coarse={"trained": str(source)})).train(RunDir(refused), device="cpu")
    assert not refused.exists()

    run = RunDir(tmp_path / "transfer")
    cfg = tiny(bare, coarse={"trained": str(source)}, enhanced={"enabled": False})
    record = RECIPES["mbdcnn"](cfg).train(run, device="cpu")
    fitted = record.stage("coarse").fitted
    assert fitted["source"] == str(source.resolve()) and fitted["recipe"] == "mbdcnn"
    assert fitted["mean"] == list(RunDir(source).read_record().input.mean)  # the source's normalisation
    a, b = load_file(source / "coarse" / "model.safetensors"), load_file(run.path / "coarse" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "enhanced" not in record.stages and record.stage("maskcn").finished
    recipe = RECIPES["mbdcnn"](cfg).restore(run, device="cpu")
    preds = recipe.predict(recipe_dataset(bare))
    assert preds.segmentation.shape == (16, 1, 32, 32) and torch.equal(preds.segmentation, preds.coarse)


def recipe_dataset(root):
    from medsight.data import open_dataset

    return open_dataset(root, format="folder")


def test_the_paper_config_builds_xception_networks():
    from medsight.models.registry import check_model

    cfg = load_config(CONFIGS / "ph2_mbdcnn_paper.yaml")
    assert cfg.data.image_size == (224, 224) and cfg.train.batch_size == 16
    assert cfg.coarse.model.options["encoder"] == "xception" and cfg.maskcn.model.name == "xception"
    for stage in ("coarse", "maskcn", "enhanced"):
        check_model(cfg.stage(stage).model.name, cfg.stage(stage).model.options)
    with torch.device("meta"):  # the full-size networks, without memory
        maskcn = RECIPES["mbdcnn"](cfg).build("maskcn", _info(), 2)
    assert maskcn.stem[0].conv.in_channels == 4 and maskcn.blocks[-1].stack.conv1.conv_dw.dilation == (2, 2)


def _info():
    from medsight.rundir import InputInfo

    return InputInfo(3, (224, 224), (0.5,) * 3, (0.2,) * 3)


@pytest.mark.slow
def test_the_paper_config_trains_an_epoch_at_tiny_width_through_the_cli(synth, tmp_path):
    run = tmp_path / "paper"
    tiny_nets = ["data.format=folder", "data.task=null", "data.image_size=[32, 32]", "train.batch_size=4",
                 "coarse.model.options.encoder_options={width: 4, middle_blocks: 1}",
                 "coarse.model.options.aspp_channels=8", "coarse.model.options.decoder_channels=8",
                 "coarse.model.options.shortcut_channels=4", "maskcn.model.options.width=4",
                 "maskcn.model.options.middle_blocks=1", "predict.scales=[1.0]", "predict.crops=1"]
    args = ["train", str(CONFIGS / "ph2_mbdcnn_paper.yaml"), "--data", str(synth), "--out", str(run), "--epochs", "1",
            "--device", "cpu", *[a for s in tiny_nets for a in ("--set", s)]]
    assert main(args) == 0
    record = RunDir(run).read_record()
    assert record.finished and all(record.stage(s).epochs_run == 1 for s in ("coarse", "maskcn", "enhanced"))
    weights = load_file(run / "maskcn" / "model.safetensors")
    assert weights["stem.0.conv.weight"].shape[1] == 4  # RGB + coarse mask
    assert "encoder.blocks.3.stack.conv3.conv_dw.weight" in load_file(run / "enhanced" / "model.safetensors")
