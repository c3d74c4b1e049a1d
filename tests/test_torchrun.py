"""The README's torchrun commands, as a user runs them: ``torchrun --nproc-per-node 2 -m medsight
train|predict|evaluate`` on the CPU (gloo, a free port) against the same commands in one process.

Momentum SGD and no class weights: the whole batch's gradient is then a mean over its cases and
the two runs agree to floating-point precision (Adam turns rounding noise in near-zero gradients
into full-size steps, so its runs differ by up to the learning rate in a few weights)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from medsight.cli import main
from medsight.data.folder import write_folder
from medsight.data.synthetic import make_dermoscopy

from builders import CONFIGS

ARGS = ["--epochs", "2", "--device", "cpu", "--set", "data.options.n=30", "--set", "data.options.size=32",
        "--set", "data.image_size=[32,32]", "--set", "model.options.width=4", "--set", "train.batch_size=7",
        "--set", "train.optimizer=sgd", "--set", "train.class_weights=none", "--set", "train.early_stopping=null"]


def cli(*args) -> int:
    return main([str(a) for a in args])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, cwd) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m medsight ARGS`` (torch's launcher module, as the script runs it)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "medsight", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run trained by one process and one by two, and a folder of images to predict."""
    root = tmp_path_factory.mktemp("torchrun")
    torch.set_num_threads(1)
    try:
        assert cli("train", CONFIGS / "demo_resnet.yaml", "--out", root / "one", *ARGS) == 0
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    two = torchrun("train", CONFIGS / "demo_resnet.yaml", "--out", root / "two", *ARGS, cwd=root)
    assert two.returncode == 0, two.stderr[-3000:]
    write_folder(make_dermoscopy(n=9, size=40, seed=7), root / "images")
    return root, two


def test_two_processes_train_the_run_of_one(runs):
    root, two = runs
    one_w, two_w = load_file(root / "one" / "model.safetensors"), load_file(root / "two" / "model.safetensors")
    assert one_w.keys() == two_w.keys()
    for key in one_w:
        assert torch.allclose(one_w[key].double(), two_w[key].double(), atol=1e-5, rtol=1e-4), key
    one_m = json.loads((root / "one" / "metrics.json").read_text())["validation"]
    two_m = json.loads((root / "two" / "metrics.json").read_text())["validation"]
    for key in ("loss", "val_loss", "AUC", "ACC"):  # the validation cases each counted once, on both
        assert two_m[key] == pytest.approx(one_m[key], rel=1e-4, abs=1e-6), key
    record = json.loads((root / "two" / "run.json").read_text())
    assert record["world_size"] == 2 and json.loads((root / "one" / "run.json").read_text())["world_size"] == 1
    assert "world_size: 2" in two.stderr
    assert cli("report", root / "two", "--out", root / "two" / "report.md") == 0
    assert " on cpu x 2 processes" in (root / "two" / "report.md").read_text()
    assert sorted(p.name for p in root.iterdir()) == ["images", "one", "two"]  # rank 1 wrote nothing here


def test_two_processes_predict_and_evaluate_every_case_once(runs, tmp_path):
    root, _ = runs
    assert cli("predict", root / "one", root / "images", "--out", tmp_path / "p1", "--device", "cpu") == 0
    two = torchrun("predict", root / "one", root / "images", "--out", tmp_path / "p2", "--device", "cpu", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    rows = [list(csv.DictReader((tmp_path / p / "predictions.csv").open())) for p in ("p1", "p2")]
    assert [r["id"] for r in rows[1]] == [r["id"] for r in rows[0]] and len(rows[0]) == 9  # the input's order
    for a, b in zip(*rows):
        assert float(a["p_malignant"]) == pytest.approx(float(b["p_malignant"]), abs=1e-5) and a["pred"] == b["pred"]

    two = torchrun("evaluate", root / "one", root / "images", "--out", tmp_path / "e2.json", "--device", "cpu",
                   cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert cli("evaluate", root / "one", root / "images", "--out", tmp_path / "e1.json", "--device", "cpu") == 0
    one_e, two_e = (json.loads((tmp_path / f"{e}.json").read_text()) for e in ("e1", "e2"))
    assert two_e["n"] == one_e["n"] == 9
    assert two_e["metrics"] == pytest.approx(one_e["metrics"], abs=1e-6)
