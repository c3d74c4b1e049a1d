"""A toy semi-supervised recipe on the engine's two streams, end to end through the command line:
train with half of the training labels hidden, interrupt within an epoch, resume to the same
weights, predict and evaluate with the EMA teacher. New methods (Mean Teacher, FixMatch, MK-SSAC)
arrive the same way: one recipe file and a config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
import yaml
from rich.console import Console
from safetensors.torch import load_file

from medsight.cli import main
from medsight.recipes import RECIPES
from medsight.config import NetworkConfig
from medsight.engine import EMA, LossWeight, select_device
from medsight.engine.checkpoint import load_state
from medsight.recipes.classification import class_rows, evaluate_classes, task_metrics
from medsight.recipes.common import finish_run, label_stratum, labelled_cases, load_cases, start_training
from medsight.recipes.interface import Predictions
from medsight.recipes.network import (build_network, fit_network, make_optimizer, network_outputs, restore_network,
                                      training_stream)
from medsight.recipes.prepare import subset
from medsight.rundir import RunDir

INTERRUPT_AT: list[int] = []  # the global step at which the next training run stops (empty: never)


def cli(*args) -> int:
    return main([str(a) for a in args])


class Stop(Exception):
    pass


class ToyConfig(NetworkConfig):
    recipe: Literal["toy_mean_teacher"]
    consistency: float = 1.0


class MeanTeacherStep:
    monitor, monitor_mode = "AUC", "max"

    def __init__(self, model, task, optimizer, consistency: LossWeight):
        self.models = {"student": model, "teacher": EMA(model, decay=0.9, warmup=True)}
        self.task, self.make_optimizer, self.consistency = task, optimizer, consistency

    def optimizers(self):
        return {"student": self.make_optimizer(self.models["student"].parameters())}

    def train_step(self, batch, ctx):
        if INTERRUPT_AT and ctx.step == INTERRUPT_AT[0]:
            raise Stop
        student, teacher = self.models["student"], self.models["teacher"]
        lb, ulb = batch["lb"], batch["ulb"]
        loss = F.cross_entropy(student(lb["x"]), lb["y"])
        with torch.no_grad():
            target = teacher(ulb["x"]).softmax(1)
        unsup = F.mse_loss(student(ulb["x"]).softmax(1), target)
        loss = loss + self.consistency(ctx.step) * unsup
        ctx.update(loss)
        teacher.update(student)
        return {"loss": loss, "unsup": unsup}

    def validation_step(self, batch, device):
        return self.models["teacher"](batch["x"]).softmax(1), batch["y"]

    def validation_metrics(self, outputs):
        proba = torch.cat([o[0] for o in outputs]).numpy()
        y = torch.cat([o[1] for o in outputs]).numpy()
        return task_metrics(self.task, y, proba, 0.5)


class ToyMeanTeacher:
    name = "toy_mean_teacher"
    Config = ToyConfig
    needs_masks = False
    map_methods = ()

    def __init__(self, cfg: ToyConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)

    def train(self, run: RunDir, device: str = "auto", callbacks=()):
        cfg = self.cfg
        self.device_ = select_device(device)
        data, record = start_training(run, cfg, self.name, labelled_cases, label_stratum, False, self.console)
        started = time.perf_counter()
        torch.manual_seed(cfg.seed)
        model = build_network(cfg, record.input, 2)
        labelled = subset(data.train, range(0, len(data.train.ids), 2))  # half the labels are hidden
        hidden = subset(data.train, range(1, len(data.train.ids), 2))
        unlabelled = training_stream(hidden, record.input, cfg, self.device_)
        step = MeanTeacherStep(model, data.task, lambda p: make_optimizer(cfg.train, p),
                               LossWeight(cfg.consistency, rampup=4))
        record = fit_network(run, record, "network", step, labelled, data.val, cfg, self.device_, self.console,
                             callbacks, unlabelled=unlabelled)
        stage = record.stage("network")
        self.record_ = finish_run(run, record, stage.validation, stage.best_epoch, time.perf_counter() - started,
                                  self.device_, self.console)
        return self.record_

    def restore(self, run: RunDir, device: str = "auto"):
        self.device_ = select_device(device)
        self.record_ = run.finished_record()
        teacher = EMA(build_network(self.cfg, self.record_.input, 2))
        self.teacher_ = restore_network(teacher, run.stage_dir() / "teacher.safetensors", self.device_)
        return self

    def predict(self, dataset, need_masks: bool = False) -> Predictions:
        loaded, rejected = load_cases(dataset, self.cfg, self.record_.input, need_masks, self.console)
        outputs = network_outputs(loaded, self.record_.input, lambda x: self.teacher_(x).softmax(1), self.device_)
        return Predictions(loaded, outputs, rejected, dataset)

    def rows(self, preds):
        return class_rows(self.record_.task, preds, self.cfg.predict)

    def write_files(self, preds, folder: Path, maps=None):
        pass

    def evaluate(self, dataset, preds):
        return evaluate_classes(self.record_.task, dataset, preds, self.cfg.predict)


@pytest.fixture
def toy_config(tmp_path, monkeypatch) -> Path:
    monkeypatch.setitem(RECIPES, "toy_mean_teacher", ToyMeanTeacher)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({
        "recipe": "toy_mean_teacher", "seed": 1,
        "data": {"format": "synthetic", "options": {"n": 48, "size": 32, "seed": 2}, "image_size": [32, 32]},
        "model": {"name": "resnet14", "options": {"width": 4, "dropout": 0.2}},
        "train": {"epochs": 3, "batch_size": 4, "lr": 0.003, "checkpoint_every": 2},
    }))
    return path


@pytest.mark.slow
def test_a_two_stream_recipe_trains_resumes_within_an_epoch_and_predicts(toy_config, tmp_path):
    assert cli("train", toy_config, "--out", tmp_path / "full", "--device", "cpu") == 0
    INTERRUPT_AT[:] = [7]  # 4 steps an epoch (19 labelled cases, batches of 4): the 4th step of epoch 2
    try:
        assert cli("train", toy_config, "--out", tmp_path / "cut", "--device", "cpu") == 1
    finally:
        INTERRUPT_AT.clear()
    cut = load_state(tmp_path / "cut" / "checkpoint.pt")["loop"]
    assert cut["epoch"] == 1 and cut["in_epoch"]["done"] == 2  # saved within epoch 2, after its second step
    assert cli("train", toy_config, "--out", tmp_path / "cut", "--device", "cpu") == 0
    for name in ("student", "teacher"):
        a, b = load_file(tmp_path / "full" / f"{name}.safetensors"), load_file(tmp_path / "cut" / f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (tmp_path / "full" / "history.csv").read_text().splitlines()[0].startswith("epoch,loss,unsup,")

    data = tmp_path / "heldout"
    assert cli("data", "synth", data, "--n", "10", "--size", "32", "--seed", "9") == 0
    for run in ("full", "cut"):
        assert cli("predict", tmp_path / run, data, "--out", tmp_path / f"pred_{run}", "--device", "cpu") == 0
    rows = (tmp_path / "pred_full" / "predictions.csv").read_text()
    assert rows == (tmp_path / "pred_cut" / "predictions.csv").read_text()
    assert rows.splitlines()[0] == "id,p_malignant,pred" and len(rows.splitlines()) == 11
    assert cli("evaluate", tmp_path / "full", data, "--out", tmp_path / "m.json", "--device", "cpu") == 0
