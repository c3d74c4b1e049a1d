"""Where MB-DCNN's segmenters get their pixel labels and coarse-SN its weights, and its batched predictions.

- :func:`pixel_labelled`: the training and validation cases that keep their masks under
  ``data.mask_fraction``, loaded with them (the segmentation stages train on these only).
- :func:`coarse_source`: coarse-SN read from a finished run (an mbdcnn run's ``coarse/`` or a
  segmentation run's network) or a weights file instead of trained; the weights are copied into
  the run and the source, with the normalisation its network was trained with, recorded in the
  stage's ``fitted`` (``source``, ``mean``, ``std``); :func:`coarse_input` and :func:`renormalise`
  feed it images normalised as it was trained.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console

from medsight.engine.checkpoint import save_weights
from medsight.errors import InputError
from medsight.recipes.common import TrainingData, preprocessor
from medsight.recipes.network import eval_batches, read_weights
from medsight.recipes.prepare import Loaded, load_samples
from medsight.rundir import RECORD_FILE, InputInfo, RunDir, RunRecord, StageRecord

COARSE_WEIGHTS = {"mbdcnn": "coarse/model.safetensors", "segmentation": "model.safetensors"}


def kept_masks(ids: list[str], fraction: float, seed: int) -> list[str]:
    """The ids (sorted) of ``round(fraction * len(ids))`` cases, at least one when ``fraction`` > 0,
    drawn with ``seed``: the same cases whatever order ``ids`` come in."""
    ids = sorted(ids)
    n = 0 if fraction == 0 or not ids else max(1, round(fraction * len(ids)))
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[i] for i in order[:n])


def pixel_labelled(data: TrainingData, cfg, console: Console) -> tuple[Loaded, Loaded]:
    """The training and validation cases whose masks the segmenters see, loaded with their masks."""
    fraction, out = cfg.data.mask_fraction, []
    for part in ("train", "val"):
        with_masks = {s.id: s for s in data.split[part] if s.has_mask}
        keep = kept_masks(list(with_masks), fraction, cfg.data.split_seed)
        loaded, _ = load_samples([with_masks[i] for i in keep], preprocessor(cfg, channels=None), data.task,
                                 need_masks=True, console=console, description=f"loading {part} masks")
        out.append(loaded)
        if fraction < 1 and with_masks:
            console.print(f"data.mask_fraction {fraction}: {len(keep)} of {len(with_masks)} {part} masks kept")
    return out[0], out[1]


def read_coarse(model: torch.nn.Module, source: str, channels: int) -> dict:
    """Load a finished coarse-SN from ``source`` into ``model``; returns what the run records of it
    (``source``, and from a run directory its ``recipe``, ``data`` and normalisation ``mean`` / ``std``).
    Writes nothing, so that a wrong source is refused before the run directory exists."""
    path = Path(source)
    fitted: dict = {"source": str(path.resolve())}
    if not path.is_dir():
        from medsight.models.pretrained import load_pretrained

        load_pretrained(model, path, strict=True)  # an InputError naming the file when it does not fit
        return fitted
    if not (path / RECORD_FILE).is_file():
        raise InputError(path, "coarse.trained: not a medsight run directory (run.json is missing)")
    src = RunDir(path).finished_record()
    if src.recipe not in COARSE_WEIGHTS:
        raise InputError(path, f"coarse.trained: a {src.recipe} run has no segmenter; give an mbdcnn or "
                         "segmentation run")
    if src.input.channels != channels:
        raise InputError(path, f"coarse.trained: its network reads {src.input.channels} channels, "
                         f"these images have {channels}")
    weights = path / COARSE_WEIGHTS[src.recipe]
    try:
        model.load_state_dict(read_weights(weights))
    except RuntimeError as exc:
        raise InputError(weights, f"coarse.trained: does not fit coarse.model ({str(exc)[:300]})") from None
    return {**fitted, "recipe": src.recipe, "data": src.data.root, "mean": list(src.input.mean),
            "std": list(src.input.std)}


def coarse_source(run: RunDir, record: RunRecord, model: torch.nn.Module, source: str, device: torch.device,
                  console: Console) -> RunRecord:
    """coarse-SN read from ``source`` (from the run's own copy when resuming) instead of trained;
    the weights are copied into the run. Returns the record with the stage finished."""
    own = run.stage_dir("coarse") / "model.safetensors"
    if record.stage("coarse").finished:
        model.load_state_dict(read_weights(own))
        model.to(device)
        return record
    fitted = read_coarse(model, source, record.input.channels)
    console.print(f"coarse-SN read from {source} (not trained in this run)")
    model.to(device)
    own.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), own)
    record = record.with_stage("coarse", StageRecord(finished=True, fitted=fitted))
    run.write_record(record)
    return record


def coarse_input(record: RunRecord) -> InputInfo:
    """The normalisation coarse-SN was trained with (another run's, when it was read from one)."""
    fitted = record.stage("coarse").fitted
    if "mean" not in fitted:
        return record.input
    return dataclasses.replace(record.input, mean=tuple(fitted["mean"]), std=tuple(fitted["std"]))


def renormalise(x: torch.Tensor, have: InputInfo, want: InputInfo) -> torch.Tensor:
    """A batch normalised by ``have``'s mean and std, normalised by ``want``'s instead."""
    if have.mean == want.mean and have.std == want.std:
        return x
    shape = (1, -1, 1, 1)
    t = lambda v: torch.tensor(v, dtype=x.dtype, device=x.device).view(shape)  # noqa: E731
    return (x * t(have.std) + t(have.mean) - t(want.mean)) / t(want.std)


@torch.no_grad()
def predict_batches(loaded: Loaded, info: InputInfo, forward: Callable[[torch.Tensor], dict], device,
                    batch_size: int = 16) -> dict[str, torch.Tensor]:
    """``forward`` (a dict of per-case tensors) over the cases in batches, joined on the CPU."""
    parts: dict[str, list] = {}
    for batch in eval_batches(loaded, info, batch_size):
        for key, value in forward(batch["x"].to(device)).items():
            parts.setdefault(key, []).append(value.float().cpu())
    return {key: torch.cat(values) for key, values in parts.items()}
