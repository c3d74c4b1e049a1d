"""On a CUDA device medsight computes what it computes on the CPU, and a recipe trains end to end there.

Skipped where torch sees no CUDA device (as on CI); on a GPU machine: ``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from medsight.cli import main
from medsight.config import AugmentConfig
from medsight.features.glcm import glcm_features, glcm_features_batch
from medsight.models.arl import attention_map
from medsight.rundir import RunDir
from medsight.transforms.augment import augment_batch

from builders import CONFIGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")

RESNET_CONFIG = CONFIGS / "demo_resnet.yaml"


def textured_volume(seed: int, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed-noise HU-like texture under a ball mask."""
    rng = np.random.default_rng(seed)
    image = np.rint(ndimage.gaussian_filter(rng.normal(0, 300, (n, n, n)), 1.5) * 4).astype(np.int32)
    z, y, x = np.ogrid[:n, :n, :n]
    mask = ((z - n / 2) ** 2 + (y - n / 2) ** 2 + (x - n / 2) ** 2) < (n / 2.5) ** 2
    return image, mask


def test_glcm_features_on_cuda_equal_the_host_path():
    image, mask = textured_volume(0)
    want = glcm_features(image, mask, bin_width=25)
    got = glcm_features(image, mask, bin_width=25, device="cuda")
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-12), name
    volumes = [textured_volume(s) for s in range(3)]
    images, masks = [v[0] for v in volumes], [v[1] for v in volumes]
    np.testing.assert_allclose(glcm_features_batch(images, masks, bin_width=25, device="cuda"),
                               glcm_features_batch(images, masks, bin_width=25), rtol=1e-6, atol=1e-12)


def test_augmentation_on_cuda_replays_the_cpu_draws():
    cfg = AugmentConfig(hflip=True, vflip=True, rot90=True, rotate=20, scale=[1.0, 1.4], translate=0.1,
                        brightness=0.1, contrast=0.1)
    images = torch.rand(16, 3, 40, 40)
    masks = (torch.rand(16, 1, 40, 40) > 0.5).float()
    cpu_x, cpu_m = augment_batch(images, masks, cfg, torch.Generator().manual_seed(7))
    gpu_x, gpu_m = augment_batch(images.cuda(), masks.cuda(), cfg, torch.Generator().manual_seed(7))
    assert gpu_x.is_cuda and gpu_m.is_cuda
    torch.testing.assert_close(gpu_x.cpu(), cpu_x, atol=1e-4, rtol=1e-4)
    # nearest-neighbour sampling may round a pixel exactly on a boundary the other way
    assert (gpu_m.cpu() == cpu_m).float().mean() > 0.99


@pytest.mark.parametrize("mode", ["channel", "spatial"])
def test_arl_attention_map_on_cuda_keeps_layout_and_dtype(mode):
    """Under bf16 autocast on channels-last features (as in training) the mask stays bf16 and
    channels-last, and equals the float32 CPU mask to bf16 precision."""
    features = (torch.randn(4, 32, 14, 14) * 3).bfloat16().float()  # values bf16 holds exactly
    want = attention_map(features, mode)
    gpu = features.cuda().bfloat16().to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = attention_map(gpu, mode)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.float().cpu(), want, rtol=2e-2, atol=1e-3)


def read_probabilities(path: Path) -> np.ndarray:
    with open(path, newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["id"])
    columns = [c for c in rows[0] if c.startswith("p_")]
    return np.array([[float(r[c]) for c in columns] for r in rows])


@pytest.mark.parametrize("model", [[], ["--set", "model.name=arlcnn14", "--set", "model.options.alpha_init=0.5"]],
                         ids=["resnet18", "arlcnn14"])
def test_a_recipe_trains_on_cuda_and_predicts_alike_on_both_devices(tmp_path, model):
    """ARL-CNN trains through the fused attention kernel on CUDA (its default there) and predicts
    through the eager sum on the CPU: the two must agree."""
    run = tmp_path / "run"
    args = ["--epochs", "2", "--set", "data.options.n=40", "--set", "data.options.size=48",
            "--set", "data.image_size=[32,32]", "--set", "model.options.width=8", *model]
    assert main(["train", str(RESNET_CONFIG), "--out", str(run), "--device", "cuda", *args]) == 0
    assert RunDir(run).read_record().device.startswith("cuda")
    data = tmp_path / "synth"
    assert main(["data", "synth", str(data), "--n", "12", "--size", "48", "--seed", "3"]) == 0
    for device in ("cuda", "cpu"):
        assert main(["predict", str(run), str(data), "--out", str(tmp_path / device), "--device", device,
                     "--maps"]) == 0
    on_gpu, on_cpu = (read_probabilities(tmp_path / d / "predictions.csv") for d in ("cuda", "cpu"))
    assert on_gpu.shape == on_cpu.shape == (12, on_cpu.shape[1])
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-2)  # cuDNN may use TF32 for float32 convolutions
    assert len(list((tmp_path / "cuda" / "maps").glob("*.png"))) == 12
