"""The training loop: seeding, checkpoints, early stopping, exact resumption after an interruption
(also within an epoch), several models and optimisers in one step, and two batch streams."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from medsight.engine import EMA, LossWeight, Stream, Trainer, epoch_seed, one_stream, two_streams
from medsight.engine.checkpoint import CHECKPOINT, load_state, save_state
from medsight.engine.device import to_channels_last
from medsight.errors import InputError, MedsightError


class Interrupt(Exception):
    pass


class Regression:
    """y = x @ w with dropout, so both the data order and torch's global RNG matter."""

    monitor, monitor_mode = "val_loss", "min"

    def __init__(self, model, lr=0.01, optimizer=torch.optim.Adam):
        self.models = {"model": model}
        self.lr, self.optimizer = lr, optimizer

    def optimizers(self):
        return {"model": self.optimizer(self.models["model"].parameters(), lr=self.lr)}

    def train_step(self, batch, ctx):
        x, y = batch
        loss = ((self.models["model"](x) - y) ** 2).mean()
        ctx.update(loss)
        return {"loss": loss}

    def validation_step(self, batch, device):
        x, y = batch
        return ((self.models["model"](x) - y) ** 2).sum().item(), len(x)

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


def net():
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))


def fit(run_dir, epochs=6, callbacks=(), patience=None, seed=0):
    torch.manual_seed(0)
    model = net()
    train_batches, val_batches = make_problem()
    trainer = Trainer(run_dir, epochs, "cpu", seed=seed, scheduler="cosine", patience=patience, callbacks=callbacks)
    return model, trainer.fit(Regression(model), train_batches, val_batches)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_after_interruption_gives_identical_weights(tmp_path):
    full_model, full = fit(tmp_path / "full")

    def interrupt(epoch, record):
        if epoch == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(tmp_path / "cut", callbacks=[interrupt])
    assert load_state(tmp_path / "cut" / CHECKPOINT)["loop"]["epoch"] == 3
    resumed_model, resumed = fit(tmp_path / "cut")

    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    assert same_weights(full_model, resumed_model)  # the best epoch's weights, loaded back by the loop
    best_full, best_cut = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(best_full[k], best_cut[k]) for k in best_full)
    assert not (tmp_path / "cut" / CHECKPOINT).exists()  # the loop cleans up its resume state
    assert (resumed.best_epoch, resumed.epochs_run, resumed.monitor) == (full.best_epoch, 6, "val_loss")


def test_the_trainer_seed_drives_the_randomness(tmp_path):
    """Guards the resume test against a loop that ignores randomness: another seed, other weights."""
    a, _ = fit(tmp_path / "a", epochs=2)
    b, _ = fit(tmp_path / "b", epochs=2, seed=5)  # same initial weights and data order; only dropout differs
    assert not same_weights(a, b)


def test_early_stopping_stops_and_keeps_best(tmp_path):
    records = []
    _, result = fit(tmp_path / "es", epochs=50, patience=2, callbacks=[lambda e, r: records.append(r)])
    assert len(result.history) < 50 and result.epochs_run == len(result.history) == len(records)
    best = min(result.history, key=lambda r: r["val_loss"])
    assert result.best_epoch == best["epoch"]
    assert all(r["val_loss"] >= best["val_loss"] for r in result.history[-2:])


class Evil:
    """Any class a pickle would have to import and build."""


def test_checkpoint_loading_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(InputError, match="evil.pt"):
        load_state(path)
    save_state({"x": torch.ones(2), "loop": {"epoch": 1, "history": [{"loss": 0.5}]}}, tmp_path / "ok.pt")
    assert load_state(tmp_path / "ok.pt")["loop"]["epoch"] == 1


def test_a_checkpoint_of_other_models_is_refused(tmp_path):
    def interrupt(epoch, record):
        raise Interrupt

    with pytest.raises(Interrupt):
        fit(tmp_path, epochs=3, callbacks=[interrupt])
    class Other(Regression):
        def optimizers(self):
            return {"other": torch.optim.Adam(self.models["other"].parameters())}

    step = Other(net())
    step.models = {"other": step.models["model"]}
    train_batches, val_batches = make_problem()
    with pytest.raises(MedsightError, match="other models or optimisers"):
        Trainer(tmp_path, 3, "cpu").fit(step, train_batches, val_batches)


def test_ties_on_the_monitored_metric_go_to_the_lower_validation_loss(tmp_path):
    trainer = Trainer(tmp_path, 1, "cpu", monitor="AUC", mode="max")
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
    result = Trainer(tmp_path, 2, "cpu").fit(NoAUC(model, optimizer=torch.optim.SGD), train_batches, val_batches)
    saved = load_file(tmp_path / "model.safetensors")
    assert torch.equal(saved["weight"], model.state_dict()["weight"])  # the latest epoch's weights
    assert result.best_epoch == 2


def test_a_monitor_that_validation_does_not_give_is_an_error(tmp_path):
    train_batches, val_batches = make_problem()
    with pytest.raises(MedsightError, match="'AUC' is not a validation metric; available: val_loss"):
        Trainer(tmp_path, 1, "cpu", monitor="AUC", mode="max").fit(Regression(net()), train_batches, val_batches)


def test_a_non_finite_loss_stops_training(tmp_path):
    train_batches, val_batches = make_problem()
    with pytest.raises(FloatingPointError, match="training loss became nan at epoch 1"):
        Trainer(tmp_path, 1, "cpu").fit(Regression(net()), lambda e: [
            (torch.full((2, 5), float("nan")), torch.zeros(2, 1))], val_batches)


def test_step_scheduler_halves_the_learning_rate(tmp_path):
    torch.manual_seed(0)
    train_batches, val_batches = make_problem()
    result = Trainer(tmp_path, 5, "cpu", scheduler="step", step_lr=(2, 0.5)).fit(
        Regression(torch.nn.Linear(5, 1), lr=0.1, optimizer=torch.optim.SGD), train_batches, val_batches)
    assert [r["lr"] for r in result.history] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_channels_last_for_2d_and_3d_models():
    from medsight.models import create_model

    m2 = to_channels_last(create_model("arlcnn14", width=8))
    assert m2.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    m3 = to_channels_last(create_model("resnet18", spatial_dims=3, width=8))
    assert m3.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert m3.eval()(torch.zeros(1, 3, 8, 16, 16)).shape == (1, 2)
    assert to_channels_last(torch.nn.Linear(3, 2)).weight.shape == (2, 3)


# -- several models and optimisers in one step ---------------------------------------------------------
class TwoHeads:
    """Two models, each with its own optimiser and loss: a GAN-like step updates them in turn."""

    monitor, monitor_mode = "val_loss", "min"

    def __init__(self):
        torch.manual_seed(1)
        self.models = {"a": torch.nn.Linear(3, 1, bias=False), "b": torch.nn.Linear(3, 1, bias=False)}

    def optimizers(self):
        return {name: torch.optim.SGD(m.parameters(), lr=0.1) for name, m in self.models.items()}

    def train_step(self, batch, ctx):
        x = batch
        out_a = self.models["a"](x)
        loss_a = out_a.pow(2).mean() + (self.models["b"](x) * out_a).mean()  # reaches b too
        ctx.update(loss_a, "a")
        loss_b = (self.models["b"](x) - 1).pow(2).mean()
        ctx.update(loss_b, "b")
        return {"loss": loss_a + loss_b, "loss_b": loss_b}

    def validation_step(self, batch, device):
        return 0.0

    def validation_metrics(self, outputs):
        return {"val_loss": 0.0}


def test_two_optimisers_step_their_own_parameters(tmp_path):
    step = TwoHeads()
    wa, wb = step.models["a"].weight.detach().clone(), step.models["b"].weight.detach().clone()
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])
    result = Trainer(tmp_path, 1, "cpu", scheduler="none").fit(step, lambda e: [x], lambda: [None])

    # by hand: a moves along the gradient of loss_a alone (b's output is a constant to it) ...
    a, b = wa.clone().requires_grad_(), wb.clone()
    (((x @ a.T) ** 2).mean() + ((x @ b.T) * (x @ a.T)).mean()).backward()
    assert torch.allclose(step.models["a"].weight, wa - 0.1 * a.grad, atol=1e-7)
    # ... and b along the gradient of loss_b alone: loss_a's gradient into b was not applied
    b = wb.clone().requires_grad_()
    (((x @ b.T) - 1) ** 2).mean().backward()
    assert torch.allclose(step.models["b"].weight, wb - 0.1 * b.grad, atol=1e-7)
    assert set(result.history[0]) >= {"loss", "loss_b"}  # every logged number goes to the history
    assert (tmp_path / "a.safetensors").is_file() and (tmp_path / "b.safetensors").is_file()


# -- two streams, an EMA teacher, resuming within an epoch ---------------------------------------------
X = torch.randn(40, 5, generator=torch.Generator().manual_seed(3))
Y = (X @ torch.tensor([[1.0], [-1.0], [0.5], [2.0], [0.0]]))


def stream(indices: torch.Tensor, batch_size: int) -> Stream:
    """Cases ``indices`` of X with a noise draw from the stream's generator (like augmentation)."""
    def batch(idx, gen):
        i = indices[idx]
        return {"x": X[i] + 0.05 * torch.randn(len(i), 5, generator=gen), "y": Y[i]}

    return Stream(len(indices), batch_size, batch)


class MeanTeacherToy:
    """Supervised MSE on the labelled batch plus a ramped-up consistency loss between the student
    (with dropout) and its EMA teacher on the unlabelled batch."""

    monitor, monitor_mode = "val_loss", "min"

    def __init__(self, interrupt_at: int | None = None, consistency=LossWeight(1.0, rampup=6)):
        torch.manual_seed(0)
        student = net()
        self.models = {"student": student, "teacher": EMA(student, decay=0.9, warmup=True)}
        self.interrupt_at, self.consistency = interrupt_at, consistency
        self.unsup_grad = None

    def optimizers(self):
        return {"student": torch.optim.Adam(self.models["student"].parameters(), lr=0.01)}

    def train_step(self, batch, ctx):
        if ctx.step == self.interrupt_at:
            raise Interrupt
        student, teacher = self.models["student"], self.models["teacher"]
        lb, ulb = batch["lb"], batch["ulb"]
        loss = F.mse_loss(student(lb["x"]), lb["y"])
        logs = {"loss_sup": loss.detach()}
        if ulb is not None:
            with torch.no_grad():
                target = teacher(ulb["x"])
            unsup = F.mse_loss(student(ulb["x"]), target)
            loss = loss + self.consistency(ctx.step) * unsup
            logs["loss_unsup"] = unsup.detach()
        ctx.update(loss)
        teacher.update(student)
        return {"loss": loss, **logs}

    def validation_step(self, batch, device):
        return F.mse_loss(self.models["teacher"](X[30:]), Y[30:], reduction="sum").item()

    def validation_metrics(self, outputs):
        return {"val_loss": sum(outputs) / 10}


def fit_two_streams(folder, unlabelled=True, interrupt_at=None, checkpoint_every=2, epochs=3):
    step = MeanTeacherToy(interrupt_at)
    lb = stream(torch.arange(0, 12), 4)
    ulb = stream(torch.arange(12, 30), 6) if unlabelled else stream(torch.arange(0), 6)
    trainer = Trainer(folder, epochs, "cpu", seed=0, checkpoint_every=checkpoint_every)
    result = trainer.fit(step, lambda e: two_streams(lb, ulb, 0, e), lambda: [None], steps_per_epoch=lb.steps())
    return step, result


def test_resume_within_an_epoch_with_two_streams_and_an_ema_teacher(tmp_path):
    full, full_result = fit_two_streams(tmp_path / "full")
    with pytest.raises(Interrupt):  # 3 steps an epoch, a checkpoint every 2: cut in epoch 2 after its step 2
        fit_two_streams(tmp_path / "cut", interrupt_at=5)
    saved = load_state(tmp_path / "cut" / CHECKPOINT)["loop"]
    assert saved["epoch"] == 1 and saved["in_epoch"]["done"] == 2 and saved["step"] == 5
    resumed, resumed_result = fit_two_streams(tmp_path / "cut")
    for name in ("student", "teacher"):
        assert same_weights(full.models[name], resumed.models[name]), name
    assert [r["loss"] for r in resumed_result.history] == [r["loss"] for r in full_result.history]
    assert int(resumed.models["teacher"].updates) == 9


def test_the_unsupervised_loss_trains_the_student_and_not_the_teacher():
    step = MeanTeacherToy(consistency=LossWeight(1.0))
    student, teacher = step.models["student"], step.models["teacher"]
    with torch.no_grad():  # a teacher that differs from the student, so consistency has a gradient
        for p in teacher.module.parameters():
            p.add_(0.1)
    student.eval()  # no dropout: the unsupervised term is deterministic
    ulb = stream(torch.arange(12, 30), 6).batch(torch.arange(6), torch.Generator().manual_seed(0))
    unsup = F.mse_loss(student(ulb["x"]), teacher(ulb["x"]))
    unsup.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_an_empty_unlabelled_stream_reduces_to_the_supervised_loop(tmp_path):
    semi, _ = fit_two_streams(tmp_path / "semi", unlabelled=False, checkpoint_every=0)

    class Supervised(MeanTeacherToy):
        def train_step(self, batch, ctx):
            return super().train_step({"lb": batch, "ulb": None}, ctx)

    step = Supervised()
    lb = stream(torch.arange(0, 12), 4)
    Trainer(tmp_path / "sup", 3, "cpu", seed=0).fit(step, lambda e: one_stream(lb, 0, e), lambda: [None])
    assert same_weights(semi.models["student"], step.models["student"])
    # and the unlabelled data does change the result when there is some
    with_ulb, _ = fit_two_streams(tmp_path / "with", checkpoint_every=0)
    assert not same_weights(with_ulb.models["student"], step.models["student"])


def test_progress_off_a_terminal_is_a_plain_line_every_few_steps(tmp_path):
    """A log file or a pipe gets a line every tenth of an epoch (6 steps: every step but the last,
    which the epoch's own line follows); nothing is drawn for a terminal there."""
    import io

    from rich.console import Console

    torch.manual_seed(0)
    log = io.StringIO()
    train_batches, val_batches = make_problem()
    trainer = Trainer(tmp_path, 1, "cpu", console=Console(file=log, width=200))
    trainer.fit(Regression(net()), train_batches, val_batches, steps_per_epoch=6)
    lines = log.getvalue().splitlines()
    steps = [line for line in lines if line.startswith("epoch 1/1: step")]
    assert [line.split()[3] for line in steps] == ["1/6", "2/6", "3/6", "4/6", "5/6"]
    assert all(" loss " in line for line in steps) and lines[-1].startswith("epoch   1/1")
    log = io.StringIO()
    Trainer(tmp_path / "b", 1, "cpu", console=Console(file=log), progress_every=4).fit(
        Regression(net()), train_batches, val_batches)  # unknown epoch length
    assert [line.split()[3] for line in log.getvalue().splitlines() if ": step" in line] == ["4"]
