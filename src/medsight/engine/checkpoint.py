"""Atomic checkpoint files: weights as safetensors, loop state through ``weights_only`` loading."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medsight.errors import InputError


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise InputError(path, f"not a readable safetensors file ({exc})") from None


def save_state(state: dict[str, Any], path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a loop checkpoint; ``weights_only=True`` refuses arbitrary pickled objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(path, f"not a readable medsight checkpoint ({exc})") from None


def save_json(obj: Any, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n"))
