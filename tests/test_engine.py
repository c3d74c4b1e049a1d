"""The training loop: seeding, checkpoints, early stopping, and exact resumption after an interruption."""

import json

import pytest
import torch
from safetensors.torch import load_file

from medsight.config import parse_config
from medsight.engine import Trainer, TrainingModule, epoch_seed
from medsight.engine.checkpoint import load_state, save_state
from medsight.engine.loop import BEST_WEIGHTS, CHECKPOINT
from medsight.errors import InputError
from medsight.recipes import RECIPES


class Interrupt(Exception):
    pass


class Regression(TrainingModule):
    """y = x @ w with dropout, so both the data order and torch's global RNG matter."""

    monitor, monitor_mode = "val_loss", "min"

    def training_step(self, batch, device):
        x, y = batch
        return ((self.model(x) - y) ** 2).mean()

    def validation_step(self, batch, device):
        x, y = batch
        return ((self.model(x) - y) ** 2).sum().item(), len(x)

    def validation_metrics(self, outputs):
        return {"val_loss": sum(o[0] for o in outputs) / sum(o[1] for o in outputs)}


def make_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0], [3.0]]) + 0.1 * torch.randn(64, 1, generator=g)

    def train_batches(epoch):
        gen = torch.Generator().manual_seed(epoch_seed(0, epoch))
        for idx in torch.randperm(48, generator=gen).split(8):
            yield x[idx], y[idx]

    return train_batches, lambda: [(x[48:], y[48:])]


def fit(run_dir, epochs=6, callbacks=(), patience=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
    train_batches, val_batches = make_problem()
    trainer = Trainer(run_dir, epochs, lambda p: torch.optim.Adam(p, lr=0.01), "cosine", "cpu", seed=0,
                      patience=patience, callbacks=callbacks)
    history = trainer.fit(Regression(model), train_batches, val_batches)
    return model, history


def test_resume_after_interruption_gives_identical_weights(tmp_path):
    full_model, full_history = fit(tmp_path / "full")

    def interrupt(epoch, record):
        if epoch == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(tmp_path / "cut", callbacks=[interrupt])
    assert load_state(tmp_path / "cut" / CHECKPOINT)["loop"]["epoch"] == 3
    resumed_model, resumed_history = fit(tmp_path / "cut")

    assert [r["epoch"] for r in resumed_history] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed_history] == [r["loss"] for r in full_history]
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    best_full, best_cut = load_file(tmp_path / "full" / BEST_WEIGHTS), load_file(tmp_path / "cut" / BEST_WEIGHTS)
    assert all(torch.equal(best_full[k], best_cut[k]) for k in best_full)


def test_the_trainer_seed_drives_the_randomness(tmp_path):
    """Guards the resume test against a loop that ignores randomness: another seed, other weights."""
    a, _ = fit(tmp_path / "a", epochs=2)
    train_batches, val_batches = make_problem()
    torch.manual_seed(0)  # same initial weights and data order as fit(); only the dropout seed differs
    b = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
    Trainer(tmp_path / "b", 2, lambda p: torch.optim.Adam(p, lr=0.01), "cosine", "cpu", seed=5).fit(
        Regression(b), train_batches, val_batches)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_early_stopping_stops_and_keeps_best(tmp_path):
    records = []
    model, history = fit(tmp_path / "es", epochs=50, patience=2, callbacks=[lambda e, r: records.append(r)])
    state = load_state(tmp_path / "es" / CHECKPOINT)["loop"]
    assert state["finished"] and len(history) < 50
    assert state["bad_epochs"] == 2
    best = min(history, key=lambda r: r["val_loss"])
    assert state["best_epoch"] == best["epoch"]


class Evil:
    """Any class a pickle would have to import and build."""


def test_checkpoint_loading_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(InputError, match="evil.pt"):
        load_state(path)
    save_state({"x": torch.ones(2), "loop": {"epoch": 1, "history": [{"loss": 0.5}]}}, tmp_path / "ok.pt")
    assert load_state(tmp_path / "ok.pt")["loop"]["epoch"] == 1


def tiny_seg_config():
    return parse_config({
        "recipe": "segmentation", "seed": 3,
        "data": {"format": "synthetic", "options": {"n": 24, "size": 32, "seed": 0}, "image_size": [32, 32]},
        "model": {"name": "unet", "options": {"channels": [4, 8, 16], "num_res_units": 0}},
        "train": {"epochs": 4, "batch_size": 4, "lr": 0.01},
        "augment": {"rotate": 10, "scale": [0.9, 1.1], "brightness": 0.1, "contrast": 0.1},
    })


def test_recipe_resume_matches_uninterrupted_run(tmp_path):
    """The same property through a whole recipe: data order, augmentation and dropout all replayed."""
    RECIPES["segmentation"](tiny_seg_config()).train(tmp_path / "full", device="cpu")

    def interrupt(epoch, record):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        RECIPES["segmentation"](tiny_seg_config()).train(tmp_path / "cut", device="cpu", callbacks=[interrupt])
    assert not json.loads((tmp_path / "cut" / "run.json").read_text())["finished"]
    RECIPES["segmentation"](tiny_seg_config()).train(tmp_path / "cut", device="cpu")

    full = (tmp_path / "full" / "history.csv").read_text().splitlines()
    cut = (tmp_path / "cut" / "history.csv").read_text().splitlines()
    strip = lambda lines: [",".join(line.split(",")[:-1]) for line in lines]  # drop the seconds column
    assert strip(full) == strip(cut) and len(full) == 5
    a, b = load_file(tmp_path / "full" / BEST_WEIGHTS), load_file(tmp_path / "cut" / BEST_WEIGHTS)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ties_on_the_monitored_metric_go_to_the_lower_validation_loss(tmp_path):
    trainer = Trainer(tmp_path, 1, lambda p: torch.optim.SGD(p, lr=0.1), monitor="AUC", mode="max")
    state = {"best_value": 1.0, "best_loss": 0.5}
    assert trainer._better({"AUC": 1.0, "val_loss": 0.3}, state)
    assert not trainer._better({"AUC": 1.0, "val_loss": 0.6}, state)
    assert not trainer._better({"AUC": 0.99, "val_loss": 0.1}, state)
    assert trainer._better({"AUC": 0.5, "val_loss": 9.0}, {"best_value": None})
    assert not trainer._better({"AUC": float("nan"), "val_loss": 0.1}, state)


def test_an_undefined_metric_still_leaves_weights(tmp_path):
    class NoAUC(Regression):
        monitor, monitor_mode = "AUC", "max"

        def validation_metrics(self, outputs):
            return {**super().validation_metrics(outputs), "AUC": float("nan")}

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    train_batches, val_batches = make_problem()
    Trainer(tmp_path, 2, lambda p: torch.optim.SGD(p, lr=0.01), seed=0, device="cpu").fit(
        NoAUC(model), train_batches, val_batches)
    saved = load_file(tmp_path / BEST_WEIGHTS)
    assert torch.equal(saved["weight"], model.state_dict()["weight"])  # the latest epoch's weights
    assert load_state(tmp_path / CHECKPOINT)["loop"]["best_epoch"] == 2


def test_step_scheduler_halves_the_learning_rate(tmp_path):
    torch.manual_seed(0)
    train_batches, val_batches = make_problem()
    history = Trainer(tmp_path, 5, lambda p: torch.optim.SGD(p, lr=0.1), "step", "cpu", step=(2, 0.5)).fit(
        Regression(torch.nn.Linear(5, 1)), train_batches, val_batches)
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_channels_last_for_2d_and_3d_models():
    from medsight.engine.loop import to_channels_last
    from medsight.models import create_model

    m2 = to_channels_last(create_model("arlcnn14", width=8))
    assert m2.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    m3 = to_channels_last(create_model("resnet18", spatial_dims=3, width=8))
    assert m3.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert m3.eval()(torch.zeros(1, 3, 8, 16, 16)).shape == (1, 2)
    assert to_channels_last(torch.nn.Linear(3, 2)).weight.shape == (2, 3)
