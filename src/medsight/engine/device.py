"""Where training runs: the device, its precision and its memory layout."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from medsight.engine.distributed import world
from medsight.errors import MedsightError


def select_device(name: str = "auto") -> torch.device:
    """``cpu`` or ``cuda`` (``auto``: cuda when there is one); among torchrun's processes, the GPU
    of this process's local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MedsightError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda"):
        raise MedsightError(f"--device {name}: expected auto, cpu or cuda")
    if name == "cuda" and world().size > 1:
        return torch.device("cuda", world().local_rank)
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on a GPU; full precision on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Channels-last weights for 2D convolution nets, channels-last-3d for 3D ones."""
    ranks = {p.dim() for p in model.parameters()}
    if 5 in ranks:
        return model if 4 in ranks else model.to(memory_format=torch.channels_last_3d)
    return model.to(memory_format=torch.channels_last) if 4 in ranks else model
