"""The network stage, as functions: build a registry network, train it with the loop on augmented
batches (or read it back when an earlier attempt finished the stage), and run it over cases.

The stage's files go to its folder in the run directory: ``<model>.safetensors`` for each model
of the step (the best epoch's weights), ``history.csv`` and ``training_curves.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch
from rich.console import Console

from medsight.config import NetworkConfig, TrainConfig
from medsight.engine import Step, Stream, Trainer, one_stream, two_stream_steps, two_streams
from medsight.engine.averaging import weight_average
from medsight.engine.checkpoint import load_weights, save_weights
from medsight.engine.distributed import broadcast_state, world
from medsight.engine.streams import batch_indices
from medsight.errors import ConfigError, InputError
from medsight.io import write_csv
from medsight.models import create_model
from medsight.progress import track
from medsight.recipes.prepare import Loaded, normalise
from medsight.rundir import InputInfo, RunDir, RunRecord, StageRecord
from medsight.transforms.augment import augment_batch, grid_crops


def build_network(cfg: NetworkConfig, info: InputInfo, num_classes: int, spatial_dims: int | None = None):
    """``model.name`` with ``model.options``; ``spatial_dims`` follows the input (2 for images, 3 for
    volumes) unless the options or the caller set it."""
    options = {"spatial_dims": len(info.image_size), **cfg.model.options}
    if spatial_dims is not None:
        options["spatial_dims"] = spatial_dims
    return create_model(cfg.model.name, in_channels=info.channels, num_classes=num_classes, **options)


def make_optimizer(train: TrainConfig, params) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=train.lr, weight_decay=train.weight_decay)


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse class frequencies, scaled so that a balanced set has weight 1 everywhere."""
    counts = torch.bincount(labels, minlength=n_classes).float()
    return counts.sum() / (len(counts) * counts.clamp_min(1))


# -- batches -----------------------------------------------------------------------------------------
def training_stream(loaded: Loaded, info: InputInfo, cfg: NetworkConfig, device: torch.device) -> Stream:
    """Shuffled, augmented, normalised batches ``{"x", "mask", "y"}`` of ``loaded``.

    A batch moves to the training device before augmentation: on a GPU the resampling would
    otherwise keep the CPU busier than the network keeps the GPU. The random draws stay on the
    CPU generator, so the same epoch replays alike on either device."""
    def batch(idx: torch.Tensor, gen: torch.Generator) -> dict:
        x = normalise(loaded.images[idx].to(device), info.mean, info.std)
        m = loaded.masks[idx].to(device).unsqueeze(1).float() if loaded.masks is not None else None
        x, m = augment_batch(x, m, cfg.augment, gen)
        return {"x": x, "mask": m, "y": loaded.labels[idx]}

    return Stream(len(loaded.ids), cfg.train.batch_size, batch)


def eval_batches(loaded: Loaded, info: InputInfo, batch_size: int) -> Iterator[dict]:
    """Normalised batches ``{"x", "mask", "y"}`` of ``loaded`` in order, on the CPU."""
    for idx in batch_indices(len(loaded.ids), batch_size):
        m = loaded.masks[idx].unsqueeze(1).float() if loaded.masks is not None else None
        yield {"x": normalise(loaded.images[idx], info.mean, info.std), "mask": m, "y": loaded.labels[idx]}


# -- training ----------------------------------------------------------------------------------------
def fit_network(run: RunDir, record: RunRecord, stage: str, step: Step, train: Loaded, val: Loaded,
                cfg: NetworkConfig, device: torch.device, console: Console, callbacks=(), folder: str = "",
                unlabelled: Stream | None = None, epoch_length: str = "labelled",
                stream: Stream | None = None, validation: Callable[[], Iterator] | None = None) -> RunRecord:
    """Train ``step`` with the loop: the labelled ``train`` cases (batches ``{"x", "mask", "y"}``
    of :func:`training_stream`, or of the recipe's own ``stream``), or with ``unlabelled`` a second
    stream beside them (batches ``{"lb": ..., "ulb": ...}``); validation on the ``val`` cases'
    :func:`eval_batches`, or on the recipe's own ``validation`` batches.
    Early stopping and the best epoch follow ``train.early_stopping`` (else the step's monitor);
    ``train.weight_average`` keeps an average of the weights instead (:func:`stage_average`).
    When an earlier attempt finished this stage, its best weights are read back instead.
    Returns the record with the stage finished (also written to the run directory)."""
    stage_dir = run.stage_dir(folder)
    main = world().is_main  # among torchrun's processes, rank 0 reads and writes the run directory
    if record.stage(stage).finished:
        for name, model in step.models.items():
            if main:
                model.load_state_dict(load_weights(stage_dir / f"{name}.safetensors"))
            model.to(device)
            broadcast_state(model)
        return record
    t, es = cfg.train, cfg.train.early_stopping
    own_inputs = stream is not None or unlabelled is not None or validation is not None
    trainer = Trainer(stage_dir, t.epochs, device, cfg.seed, scheduler=t.scheduler, step_lr=(t.step_every, t.step_gamma),
                      monitor=es.metric if es else None, mode=es.mode if es else None,
                      patience=es.patience if es else None, checkpoint_every=t.checkpoint_every,
                      callbacks=callbacks, console=console,
                      average=stage_average(t, stage, step, train, record.input, own_inputs))
    labelled = stream or training_stream(train, record.input, cfg, device)
    if unlabelled is None:
        batches: Callable[[int], Iterator] = lambda epoch: one_stream(labelled, cfg.seed, epoch)  # noqa: E731
        steps = labelled.steps()
    else:
        batches = lambda epoch: two_streams(labelled, unlabelled, cfg.seed, epoch, epoch_length)  # noqa: E731
        steps = two_stream_steps(labelled, unlabelled, epoch_length)
    val_batches = validation or (lambda: eval_batches(val, record.input, t.batch_size))
    fit = trainer.fit(step, batches, val_batches, steps_per_epoch=steps)
    if fit.history and main:
        from medsight.figures import plot_history

        write_csv(stage_dir / "history.csv", fit.history)
        plot_history(fit.history, stage_dir / "training_curves.png", fit.monitor)
    record = record.with_stage(stage, StageRecord(finished=True, best_epoch=fit.best_epoch, epochs_run=fit.epochs_run,
                                                  monitor=fit.monitor, validation=fit.validation))
    run.write_record(record)
    return record


def stage_average(t: TrainConfig, stage: str, step: Step, train: Loaded, info: InputInfo, own_inputs: bool):
    """The weight average ``train.weight_average`` asks for (None for ``none``). It averages one
    network; SWA recomputes BatchNorm's statistics on the training images as validation sees
    them (normalised, not augmented), so the stage must feed its network those images."""
    if t.weight_average == "none":
        return None
    if len(step.models) != 1:
        raise ConfigError(f"train.weight_average: the {stage} stage trains {len(step.models)} networks together "
                          f"({', '.join(step.models)}); weight averaging is for stages of one network")
    if t.weight_average == "swa" and own_inputs:
        raise ConfigError(f"train.weight_average: swa recomputes BatchNorm on the training images, and the {stage} "
                          "stage feeds its network other inputs; use ema")
    return weight_average(t.weight_average, t.epochs, t.ema_decay, t.swa_epochs,
                          lambda: (b["x"] for b in eval_batches(train, info, t.batch_size)))


def read_network(run: RunDir, record: RunRecord, stage: str, model: torch.nn.Module, path: Path,
                 device: torch.device, console: Console, folder: str = "") -> RunRecord:
    """Take a network's weights from a local file (an earlier run's ``model.safetensors``, or
    torchvision / timm names) instead of training it. They are copied into the run (the stage's
    ``folder``), which then holds all it needs; returns the record with the stage finished."""
    from medsight.models.pretrained import load_pretrained

    report = load_pretrained(model, path)
    console.print(f"CNN weights from {path}: {report}")
    model.to(device)
    run.stage_dir(folder).mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), run.stage_dir(folder) / "model.safetensors")
    record = record.with_stage(stage, StageRecord(finished=True))
    run.write_record(record)
    return record


# -- after training ----------------------------------------------------------------------------------
def read_weights(path: Path) -> dict:
    """The tensors of a run's safetensors file; a missing or damaged file is an InputError naming it."""
    if not path.is_file():
        raise InputError(path.parent, f"not a finished medsight run directory ({path.name} is missing)")
    return load_weights(path)


def restore_network(model: torch.nn.Module, path: Path, device: torch.device) -> torch.nn.Module:
    """``model`` with the weights of ``path``, on ``device``, in eval mode."""
    try:
        model.load_state_dict(read_weights(path))
    except RuntimeError as exc:
        raise InputError(path, f"weights do not fit the configured model ({exc})") from None
    return model.to(device).eval()


@torch.no_grad()
def network_outputs(loaded: Loaded, info: InputInfo, forward: Callable[[torch.Tensor], torch.Tensor],
                    device: torch.device, batch_size: int = 32) -> torch.Tensor:
    """``forward`` over every case of ``loaded`` (normalised, in batches), on the CPU as float."""
    batches = track(eval_batches(loaded, info, batch_size), f"predicting (batches of {batch_size})",
                    total=-(-len(loaded.ids) // batch_size))
    outputs = [forward(batch["x"].to(device)).float().cpu() for batch in batches]
    shape = (0,) if not outputs else outputs[0].shape[1:]
    return torch.cat(outputs) if outputs else torch.zeros(shape)


def flip_average(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], enabled: bool) -> torch.Tensor:
    """``fn`` averaged over the image and its flips (predict.tta); ``fn`` maps images to per-pixel
    outputs (flipped back before averaging) or to per-image ones."""
    if not enabled:
        return fn(x)
    spatial = x.ndim - 2
    out = fn(x)
    flips = [(-1,), (-2,)] if spatial == 2 else [(-1,)]
    for dims in flips:
        y = fn(x.flip(dims))
        out = out + (y.flip(dims) if y.ndim == x.ndim else y)
    return out / (1 + len(flips))


def crop_average(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], crops: int,
                 fraction: float) -> torch.Tensor:
    """``fn`` of the whole image (``crops`` 1), or averaged over a 3x3 grid of crops (``crops`` 9)."""
    if crops == 1:
        return fn(x)
    return torch.stack([fn(c) for c in grid_crops(x, fraction)]).mean(0)


def write_class_maps(model: torch.nn.Module, preds_loaded: Loaded, info: InputInfo, dataset, folder: Path,
                     method: str, device: torch.device, preprocess: str) -> None:
    """The class activation map (``method``: cam, gradcam or gradcam++) of each case's top class, at
    its input image's size, in ``maps/<id>.png``, and blended over the image in ``overlays/<id>.png``."""
    from medsight.explain import MapWriter, class_maps

    if preprocess != "resize":
        raise ConfigError(f"--maps: maps are drawn back onto 2D images; the {preprocess!r} preprocessor does "
                          "not map its input back to the original")
    writer = MapWriter(folder)
    by_id = {s.id: s for s in dataset.samples}
    batches = track(eval_batches(preds_loaded, info, 32), f"{method} maps (batches of 32)",
                    total=-(-len(preds_loaded.ids) // 32))
    for batch_ids, batch in zip(batch_indices(len(preds_loaded.ids), 32), batches):
        maps = class_maps(model, batch["x"].to(device), method).cpu().numpy()
        for i, m in zip(batch_ids.tolist(), maps):
            case = preds_loaded.ids[i]
            writer.write(case, by_id[case].load_image(), m)
