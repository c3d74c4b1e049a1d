"""Training with several processes (torchrun's protocol), MONAI-style: processes spawned on CPUs
with the gloo backend on a free port. Two processes sharing each batch give the weights one process
gets from the whole batch (BatchNorm and gradients synchronised, a batch that does not split
evenly included), validation counts every case once, and a run interrupted with two processes
resumes with one to the same weights."""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medsight.engine import Stream, Trainer, one_stream
from medsight.engine.distributed import GlooSyncBatchNorm, World, plain_batchnorm, shard, sync_batchnorm, world

pytestmark = pytest.mark.usefixtures("one_thread")


# -- a small problem: BatchNorm, momentum SGD, batches of 5 cases (3 + 2 over two processes) -------------
class Stop(Exception):
    pass


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


class Classify:
    monitor, monitor_mode = "val_loss", "min"

    def __init__(self, model):
        self.models = {"model": model}

    def optimizers(self):
        return {"model": torch.optim.SGD(self.models["model"].parameters(), lr=0.1, momentum=0.9)}

    def train_step(self, batch, ctx):
        loss = F.cross_entropy(self.models["model"](batch["x"]), batch["y"])
        ctx.update(loss)
        return {"loss": loss}

    def validation_step(self, batch, device):
        loss = F.cross_entropy(self.models["model"](batch["x"]), batch["y"], reduction="sum").item()
        return batch["i"].tolist(), loss

    def validation_metrics(self, outputs):
        cases = [i for o in outputs for i in o[0]]
        return {"val_loss": sum(o[1] for o in outputs) / len(cases), "cases": len(cases),
                "distinct": len(set(cases)), "id_sum": sum(cases)}


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(29, 1, 8, 8, generator=g)
    y = (x[:, 0, 2:6, 2:6].mean((1, 2)) > 0).long()
    return x, y


def fit(folder, epochs=1, stop_at=None):
    """``stop_at`` (epoch, step): raise Stop when the epoch's batch of that step is drawn."""
    x, y = data()
    stream = Stream(22, 5, lambda idx, gen: {"x": x[idx], "y": y[idx], "i": idx})
    val = lambda: ({"x": x[22 + k:25 + k], "y": y[22 + k:25 + k], "i": torch.arange(22 + k, 25 + k)[:7 - k]}  # noqa: E731
                   for k in (0, 3, 6))  # 7 cases in batches of 3, 3, 1

    def batches(epoch):
        for step, batch in enumerate(one_stream(stream, 3, epoch)):
            if (epoch, step) == stop_at:
                raise Stop
            yield batch

    model = net()
    trainer = Trainer(folder, epochs, "cpu", seed=3, scheduler="none", checkpoint_every=2)
    result = trainer.fit(Classify(model), batches, val, steps_per_epoch=stream.steps())
    return model, result


# -- spawning processes as torchrun would --------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process(rank, size, port, job, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from medsight.engine.distributed import start, stop

    start("cpu")
    job(*args)
    stop()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as python -m medsight does after leaving the group (gloo's threads can abort the shutdown)


def spawn(job, *args, size=2) -> list[int]:
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_process, args=(rank, size, port, job, args)) for rank in range(size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    for p in procs:
        if p.is_alive():  # stuck: fail the test rather than hang the suite
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


def train_and_save(folder, epochs, stop_at):
    try:
        model, result = fit(folder, epochs, stop_at)
    except Stop:
        return
    torch.save({"state": model.state_dict(), "history": result.history, "world": world()},
               folder / f"result{world().rank}.pt")


# -- tests ----------------------------------------------------------------------------------------------
def close(a: dict, b: dict, tol=1e-5) -> bool:
    return all(torch.allclose(a[k].double(), b[k].double(), atol=tol, rtol=tol) for k in a)


def test_two_processes_train_the_weights_of_one_with_the_whole_batch(tmp_path):
    one, single = fit(tmp_path / "one", epochs=2)
    assert spawn(train_and_save, tmp_path / "two", 2, None) == [0, 0]
    saved = [torch.load(tmp_path / "two" / f"result{r}.pt", weights_only=False) for r in (0, 1)]
    assert [s["world"] for s in saved] == [World(0, 2, 0), World(1, 2, 1)]
    for s in saved:  # both processes end with one model: the single process's, BatchNorm statistics included
        assert close(s["state"], one.state_dict())
        assert s["state"].keys() == one.state_dict().keys()
    for mine, theirs in zip(saved[0]["history"], single.history):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)  # the whole batch's mean loss
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-5)
        assert (mine["cases"], mine["distinct"], mine["id_sum"]) == (7, 7, sum(range(22, 29)))  # each case once
    assert (tmp_path / "two" / "model.safetensors").is_file()
    assert isinstance(one[1], nn.BatchNorm2d)  # the loop gave back plain BatchNorm


def test_a_run_cut_with_two_processes_resumes_with_one(tmp_path):
    """Cut within epoch 2 after its second step's checkpoint: one process takes the run up there."""
    one, single = fit(tmp_path / "one", epochs=2)
    assert spawn(train_and_save, tmp_path / "cut", 2, (2, 3)) == [0, 0]
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["loop"]
    assert saved["in_epoch"]["done"] == 2 and len(saved["in_epoch"]["rng"]) == 2  # each process's generator
    assert not (tmp_path / "cut" / "result0.pt").exists()
    resumed, result = fit(tmp_path / "cut", epochs=2)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert close(resumed.state_dict(), one.state_dict())
    for mine, theirs in zip(result.history, single.history):  # the cut epoch's mean loss included
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)


def test_shard_splits_every_tensor_and_reports_the_share():
    batch = {"x": torch.arange(10).view(5, 2), "y": torch.arange(5), "mask": None, "pair": (torch.arange(5), "id")}
    first, share0 = shard(batch, World(0, 2))
    second, share1 = shard(batch, World(1, 2))
    assert first["y"].tolist() == [0, 1, 2] and second["y"].tolist() == [3, 4]
    assert second["x"].tolist() == [[6, 7], [8, 9]] and second["mask"] is None and second["pair"][1] == "id"
    assert (share0, share1) == (0.6, 0.4)
    assert shard(batch, World()) == (batch, 1.0)
    with pytest.raises(Exception, match="batch of 5 cases cannot be shared by 8 processes"):
        shard(batch, World(0, 8))


def test_sync_batchnorm_converts_back_and_forth_sharing_parameters():
    model = nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2), nn.Sequential(nn.BatchNorm1d(3)))
    weight = model[1].weight
    sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(model[1], GlooSyncBatchNorm) and isinstance(model[2][0], GlooSyncBatchNorm)
    assert model[1].weight is weight
    x = torch.randn(4, 2, 3, 3, 3)
    expected = F.batch_norm(x, None, None, weight, model[1].bias, training=True)
    assert torch.allclose(model[1](x), expected)  # alone, it is plain BatchNorm
    plain_batchnorm(model)
    assert type(model[1]) is nn.BatchNorm3d and type(model[2][0]) is nn.BatchNorm1d and model[1].weight is weight
