"""Several processes, one per device, started by torchrun: who this process is, and how the
processes keep one model.

``torchrun --nproc-per-node N -m medsight train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set (on several machines
through its rendezvous); :func:`start` joins them into one process group, NCCL on GPUs and gloo
on CPUs, and gives each process the GPU of its local rank. Then:

- every process draws the same global batch (``train.batch_size`` cases: the same shuffle and the
  same augmentation draws) and keeps its contiguous share of the cases (:func:`shard`), so a run
  takes the same steps at any number of processes and resumes at any other number;
- after each backward pass the gradients are summed over the processes (:func:`sum_gradients`), each
  process having scaled its loss by its share of the batch: the mean gradient of the global batch,
  as DistributedDataParallel computes it. It is done after the backward pass rather than by
  DDP's hooks, so that a step may call any method of its models, call a model more than once, or
  update several optimisers in turn, none of which DDP's forward-bound hooks allow;
- BatchNorm layers normalise with the statistics of the global batch: torch's SyncBatchNorm on
  GPUs, :class:`GlooSyncBatchNorm` on CPUs (torch's is GPU-only); the running statistics are
  therefore the same in every process;
- validation and prediction batches go round-robin to the processes and the outputs are gathered
  in their original order (:func:`gather_in_order`): every case is counted once, none padded;
- rank 0 alone writes the run directory; it reads checkpoints and weights and
  :func:`broadcast_object` / :func:`broadcast_state` hand them to the others.

Objects are exchanged with torch's pickling collectives between the processes of one job, never
read from files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import nn

from medsight.errors import MedsightError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_world = World()


def world() -> World:
    """This process's place among the processes of the run (rank 0 of 1 without torchrun)."""
    return _world


def launched() -> bool:
    """Whether torchrun (or anything speaking its environment protocol) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str = "auto") -> World:
    """Join the process group torchrun's environment describes (once); a single process stays alone."""
    global _world
    if not launched() or dist.is_initialized():
        return _world
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise MedsightError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        if local_rank >= torch.cuda.device_count():
            raise MedsightError(f"local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} "
                                "visible); start at most one process per GPU")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    _world = World(dist.get_rank(), dist.get_world_size(), local_rank)
    return _world


def stop(success: bool = True) -> None:
    """Leave the process group. After success every process waits for the others first: with
    gloo, a process that tears its group down while another still talks to it can abort at exit
    ("terminate called without an active exception", half the 2-process runs measured)."""
    global _world
    if not dist.is_initialized():
        return
    if success:
        dist.barrier()
    dist.destroy_process_group()
    _world = World()
    global left_group
    left_group = True


left_group = False  # whether this process was one of several (see medsight.__main__)


# -- batches ------------------------------------------------------------------------------------
def shard(batch: Any, w: World) -> tuple[Any, float]:
    """This process's contiguous share of ``batch``, and its fraction of the batch's cases.

    Every tensor in the batch (nested in dicts, lists or tuples) holds the cases along its first
    axis and is split with ``tensor_split``; anything else is kept whole. The fraction is measured
    on the first tensor found."""
    if w.size == 1:
        return batch, 1.0
    sizes: list[int] = []

    def split(x):
        if torch.is_tensor(x) and x.ndim > 0:
            sizes.append(len(x))
            return x.tensor_split(w.size)[w.rank]
        if isinstance(x, dict):
            return {k: split(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(split(v) for v in x)
        return x

    part = split(batch)
    if not sizes:
        raise MedsightError("a training batch holds no tensor to share among the processes")
    if sizes[0] < w.size:
        raise MedsightError(f"a batch of {sizes[0]} cases cannot be shared by {w.size} processes: use "
                            f"train.batch_size >= {w.size} and at least {w.size} training cases")
    n = sizes[0]
    return part, (n // w.size + (w.rank < n % w.size)) / n  # tensor_split's share of this rank


def my_turns(items: Iterable, w: World):
    """Every ``w.size``-th item, starting at this process's rank (round-robin work sharing)."""
    for i, item in enumerate(items):
        if i % w.size == w.rank:
            yield item


def gather_in_order(mine: list, w: World) -> list:
    """Every process's :func:`my_turns` results, back in the order of the items they came from."""
    if w.size == 1:
        return mine
    parts: list = [None] * w.size
    dist.all_gather_object(parts, mine)
    total = sum(len(p) for p in parts)
    return [parts[i % w.size][i // w.size] for i in range(total)]


def gather_objects(obj: Any, w: World) -> list:
    """``obj`` of every process, by rank."""
    if w.size == 1:
        return [obj]
    parts: list = [None] * w.size
    dist.all_gather_object(parts, obj)
    return parts


def broadcast_object(obj: Any, w: World | None = None) -> Any:
    """Rank 0's ``obj`` in every process."""
    w = w or world()
    if w.size == 1:
        return obj
    box = [obj if w.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_state(module: nn.Module, w: World | None = None) -> None:
    """Rank 0's parameters and buffers in every process's ``module``."""
    w = w or world()
    if w.size == 1:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_contiguous():
                dist.broadcast(tensor, src=0)
            else:  # channels-last weights on a GPU
                dense = tensor.contiguous()
                dist.broadcast(dense, src=0)
                tensor.copy_(dense)


# -- gradients ----------------------------------------------------------------------------------
def sum_gradients(params: Iterable[torch.Tensor], w: World) -> None:
    """Sum each gradient over the processes, in one collective per dtype and device (every
    process's step must give gradients to the same parameters, as with DDP)."""
    if w.size == 1:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    seen = set()
    for p in params:
        if p.grad is not None and id(p) not in seen:
            seen.add(id(p))
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for key in sorted(groups, key=str):
        grads = groups[key]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))


# -- BatchNorm ----------------------------------------------------------------------------------
class _SumOverProcesses(torch.autograd.Function):
    """The sum of a tensor over the processes; its gradient is the sum of theirs (every process's
    loss depends on every process's part)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch on CPUs: the per-channel count, sum and squared deviations
    of every process's share are summed with differentiable all-reduces (two passes, as exact as
    one process's BatchNorm), so forward, backward and running statistics are those of one
    process holding the whole batch. Outside training, or alone, it is plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.ndim)]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        xf = x.float()
        count = torch.full((1,), xf.numel() / xf.shape[1], dtype=xf.dtype, device=x.device)
        totals = _SumOverProcesses.apply(torch.cat([xf.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = xf - mean.view(shape)
        var = _SumOverProcesses.apply((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def _replace_batchnorm(module: nn.Module, make) -> nn.Module:
    """``module`` with each BatchNorm child rebuilt by ``make(bn)``, sharing its parameters and buffers."""
    for name, child in module.named_children():
        new = make(child)
        if new is not child:
            setattr(module, name, new)
        else:
            _replace_batchnorm(child, make)
    return module


def _rebuilt(cls, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


_PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` (changed in place) with every BatchNorm layer normalising over the global batch."""
    synced = nn.SyncBatchNorm if device.type == "cuda" else GlooSyncBatchNorm

    def make(bn):
        if type(bn) not in _PLAIN:
            return bn
        new = _rebuilt(synced, bn)
        new.plain_type = type(bn)  # what plain_batchnorm turns it back into
        return new

    return _replace_batchnorm(model, make)


def plain_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` (changed in place) with the layers :func:`sync_batchnorm` made plain BatchNorm again."""
    return _replace_batchnorm(model, lambda m: _rebuilt(m.plain_type, m) if hasattr(m, "plain_type") else m)
