"""Checkpoint files: weights as safetensors, the loop's resume state through ``weights_only`` loading."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medsight.errors import InputError
from medsight.io import atomic_write

CHECKPOINT = "checkpoint.pt"  # a training loop's resume state, in the folder of the stage it trains


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise InputError(path, f"not a readable safetensors file ({exc})") from None


def save_state(state: dict[str, Any], path: str | Path) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a loop checkpoint; ``weights_only=True`` refuses arbitrary pickled objects.

    A file that is not one (damaged, truncated, or a pickle of other objects) is an InputError
    that says so and how to start over; torch's own message would advise loading with
    ``weights_only=False``, which is what must never be done with a file of unknown origin."""
    path = Path(path)
    try:
        with warnings.catch_warnings(record=True) as caught:  # torch's remarks on a file it then refuses
            warnings.simplefilter("always")
            state = torch.load(path, map_location="cpu", weights_only=True)
        for warning in caught:  # a file that loads keeps them
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return state
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        what = "holds objects other than tensors" if isinstance(exc, pickle.UnpicklingError) else "cannot be read"
        raise InputError(path, f"not a medsight checkpoint (it {what}); to train this stage again from its "
                               f"first epoch delete {path.name}, or start over with another --out") from None
