"""The MV-KBC recipe: the paper's and the released penalty losses by hand, per-patch augmentation,
view pre-training, per-view Grad-CAM, and the recipe end to end on written VOIs."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from medsight.cli import main
from medsight.config import AugmentConfig
from medsight.models import create_model
from medsight.recipes import load_config
from medsight.recipes.mvkbc import (MVKBCOptions, MVKBCStep, nodule_size, patch_stream, penalty_loss,
                                    released_penalty_loss, view_grad_cams)
from medsight.recipes.prepare import Loaded
from medsight.rundir import InputInfo, RunDir

from builders import CONFIGS, write_vois


def test_the_paper_penalty_weighs_false_negatives_twice():
    z = torch.tensor([2.0, -1.0, 0.5, -3.0])  # p = 0.88, 0.27, 0.62, 0.05
    y = torch.tensor([1, 1, 0, 0])
    p = torch.sigmoid(z)
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    weights = torch.tensor([1.0, 2.0, 1.0, 1.0])  # only the second is malignant scored below 0.5
    assert penalty_loss(z, y).item() == pytest.approx((weights * bce).mean().item(), rel=1e-6)
    assert penalty_loss(z, y, fn_weight=1.0).item() == pytest.approx(bce.mean().item(), rel=1e-6)


def test_the_released_penalty_is_what_the_keras_code_computes():
    """Keras: K.mean(K.binary_crossentropy(y_pred, y_true), -1) with y_true clipped to [1e-7, 1 - 1e-7]
    as the 'output'; weights a + 2b + c of shape (B, 1) times losses (B,) -> (B, B), then the mean."""
    p = np.array([0.9, 0.3, 0.5, 0.2, 0.5], dtype=np.float32)
    y = np.array([1, 1, 0, 0, 1], dtype=np.float32)
    eps = np.float32(1e-7)
    out = np.clip(y, eps, 1 - eps)
    x = np.log(out / (1 - out))  # Keras turns the clipped "output" into logits
    cost = np.maximum(x, 0) - x * p + np.log1p(np.exp(-np.abs(x)))  # tf.nn.sigmoid_cross_entropy_with_logits
    sub = y - p
    w = (np.abs(sub) <= 0.5) * 1.0 + (sub > 0.5) * 2.0 + (sub <= -0.5) * 1.0
    want = (w[:, None] * cost[None, :]).mean()
    got = released_penalty_loss(torch.from_numpy(p), torch.from_numpy(y)).item()
    assert got == pytest.approx(want, rel=1e-6)
    # what it amounts to: |x| |y - p| per nodule, a weighted L1 (|x| = 15.94 for a malignant nodule in
    # float32, where 1 - 1e-7 rounds to 1 - 1.19e-7, and 16.12 for a benign one), times the batch
    # factor mean(w)
    assert w.tolist() == [1, 2, 2, 1, 1]  # a false negative, and a benign nodule at exactly 0.5
    assert abs(x).tolist() == pytest.approx([15.94, 15.94, 16.12, 16.12, 15.94], abs=0.01)
    assert got == pytest.approx(w.mean() * (np.abs(x) * np.abs(y - p)).mean(), rel=1e-5)


def test_the_losses_give_the_streams_a_gradient():
    torch.manual_seed(0)
    model = create_model("mvkbc", in_channels=27, backbone="resnet14", hidden=(8, 4), width=4, share_views=True)
    x, y = torch.randn(4, 27, 32, 32), torch.tensor([0, 1, 1, 0])
    for penalty in ("paper", "released", "none"):
        model.zero_grad()
        step = MVKBCStep(model, MVKBCOptions(penalty=penalty), None)
        step.loss(step.logits({"x": x}, torch.device("cpu")), y).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.streams.parameters()), penalty
        assert model.fusion.weight.grad.abs().sum() > 0
    model.zero_grad()
    pretrain = MVKBCStep(model, MVKBCOptions(), None, per_view=True)  # each view's KBC on its own
    z = pretrain.logits({"x": x}, torch.device("cpu"))
    assert z.shape == (4, 9)
    pretrain.loss(z, y).backward()
    assert model.fusion.weight.grad is None and all(k.weight.grad.abs().sum() > 0 for k in model.kbc)


def test_the_size_input_is_the_log_equivalent_diameter():
    yy, xx = np.mgrid[:40, :40]
    disc = torch.from_numpy(((yy - 19.5) ** 2 + (xx - 19.5) ** 2 <= 8 ** 2).astype(np.uint8))
    masks = torch.stack([disc.repeat(27, 1, 1), torch.zeros(27, 40, 40, dtype=torch.uint8)])
    masks[1, :9] = disc  # a third of the planes: a third of the mean area
    got = nodule_size(masks, mm_per_pixel=0.5)
    area = float(disc.sum()) * 0.25  # mm^2
    want = [np.log(2 * np.sqrt(area / np.pi) / 10), np.log(2 * np.sqrt(area / 3 / np.pi) / 10)]
    assert got.tolist() == pytest.approx(want, rel=1e-5)
    assert np.exp(want[0]) * 10 == pytest.approx(8.0, rel=0.02)  # a disc of radius 8 px at 0.5 mm: 8 mm wide
    torch.manual_seed(0)
    model = create_model("mvkbc", in_channels=27, backbone="resnet14", hidden=(8, 4), width=4, size_input=True)
    assert model.fusion.in_features == 19
    with pytest.raises(ValueError, match="pass size"):
        model(torch.randn(2, 27, 32, 32))
    assert model(torch.randn(2, 27, 32, 32), got).shape == (2, 2)


@pytest.mark.parametrize("unit,distinct", [("patch", True), ("nodule", False)])
def test_patches_are_augmented_one_by_one_or_together(unit, distinct):
    """Flips only: with per-patch augmentation the 27 patches of one nodule flip independently."""
    images = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4).repeat(8, 27, 1, 1) * 10
    loaded = Loaded([str(i) for i in range(8)], images, None, torch.zeros(8, dtype=torch.long), [(4, 4)] * 8)
    cfg = load_config(CONFIGS / "lidc_voi_mvkbc.yaml", [f"mvkbc.augment_unit={unit}", "train.batch_size=8"])
    cfg.augment = AugmentConfig(hflip=True, vflip=False, rot90=False)
    info = InputInfo(27, (4, 4), (0.0,) * 27, (1.0,) * 27)
    x = patch_stream(loaded, info, cfg, torch.device("cpu")).batch(torch.arange(8), torch.Generator().manual_seed(0))["x"]
    flipped = (x[:, :, 0, 0] != x[:, :, 0, -1].flip(0).flip(0)) & (x[:, :, 0, 0] > x[:, :, 0, -1])  # (8, 27)
    per_nodule = [set(row.tolist()) for row in flipped]
    assert any(len(s) == 2 for s in per_nodule) is distinct
    assert any(True in s for s in per_nodule)  # some patches flipped at all


def test_view_grad_cams_follow_the_view_weighting():
    """A view whose weight in the fusion is 0 has no gradient, hence an empty map; maps are in [0, 1]."""
    torch.manual_seed(0)
    model = create_model("mvkbc", in_channels=27, backbone="resnet14", hidden=(8, 4), width=4, dropout=0.0)
    with torch.no_grad():
        model.fusion.weight.zero_()
        model.fusion.weight[0, 2:4] = torch.tensor([-1.0, 1.0])  # only view 1 decides
    maps = view_grad_cams(model, torch.randn(2, 27, 32, 32))
    assert maps.shape == (2, 9, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    assert torch.all(maps[:, [0, *range(2, 9)]] == 0)


@pytest.mark.slow
def test_mvkbc_trains_with_view_pretraining_predicts_with_maps_and_evaluates(tmp_path, capsys):
    data = write_vois(tmp_path / "vois")
    run = tmp_path / "run"
    args = ["--data", str(data), "--out", str(run), "--epochs", "2", "--device", "cpu",
            "--set", "data.folds=3", "--set", "data.fold=0", "--set", "data.val_fraction=0.3",
            "--set", "data.image_size=[24,24]", "--set", "model.options.width=4",
            "--set", "model.options.hidden=[8,4]", "--set", "mvkbc.pretrain_views=true",
            "--set", "mvkbc.size_input=true"]
    assert main(["train", str(CONFIGS / "lidc_voi_mvkbc.yaml"), *args]) == 0
    record = RunDir(run).read_record()
    assert record.stage("kbc").epochs_run == 2 and record.stage("network").finished
    assert (run / "kbc" / "model.safetensors").is_file() and (run / "model.safetensors").is_file()
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "pred"), "--device", "cpu",
                 "--maps", "gradcam"]) == 0
    with open(tmp_path / "pred" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24 and set(rows[0]) == {"id", "p_malignant", "pred"}
    tile = np.asarray(Image.open(tmp_path / "pred" / "maps" / f"{rows[0]['id']}.png"))
    assert tile.shape == (24, 9 * 24)  # the 9 views side by side
    capsys.readouterr()
    assert main(["evaluate", str(run), str(data), "--split", "heldout", "--out", str(tmp_path / "m.json")]) == 0
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "p2"), "--maps", "cam"]) == 2


def test_the_recipe_takes_the_views_and_its_own_network(tmp_path):
    from medsight.errors import ConfigError

    with pytest.raises(ConfigError, match="nodule_views"):
        load_config(CONFIGS / "lidc_voi_mvkbc.yaml", ["data.preprocess=nodule_crop"])
    with pytest.raises(ConfigError, match="trains the mvkbc network"):
        load_config(CONFIGS / "lidc_voi_mvkbc.yaml", ["model.name=resnet18"])
    cfg = load_config(CONFIGS / "lidc_voi_mvkbc.yaml", ["data.preprocess_options.views=[axial, coronal, sagittal]",
                                                        "data.preprocess_options.patches=[OA]"])
    assert (cfg.views, cfg.patches) == (3, 1)
    with pytest.raises(ConfigError, match="size_mm"):
        load_config(CONFIGS / "lidc_voi_mvkbc.yaml", ["mvkbc.size_input=true",
                                                      "data.preprocess_options={patches: [OA], size_factor: 1.5}"])
