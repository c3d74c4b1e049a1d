"""What every recipe shares: run directories, data preparation, training and inference.

A recipe subclass says which task it solves, how to build its model and training step, how to
turn network outputs into prediction rows, and which metrics judge them. Everything else (splits,
loading, the loop, checkpoints, writing outputs) lives here once.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console

import medsight
from medsight.config import Config, parse_config
from medsight.data import GENERATED, open_dataset
from medsight.data.base import Dataset, Task
from medsight.data.splits import split_samples
from medsight.engine import Trainer, TrainingModule, epoch_seed, select_device
from medsight.engine.checkpoint import load_weights, save_json
from medsight.engine.loop import BEST_WEIGHTS, CHECKPOINT
from medsight.errors import ConfigError, InputError, MedsightError
from medsight.metrics import jsonable
from medsight.models import create_model
from medsight.recipes.prepare import Loaded, batch_indices, channel_stats, load_samples, normalise
from medsight.transforms.augment import augment_batch
from medsight.transforms.preprocess import make_preprocess

CONFIG_FILE, RUN_FILE, SPLIT_FILE = "config.yaml", "run.json", "split.json"


@dataclass
class Predictions:
    loaded: Loaded  # the cases that were predicted
    outputs: torch.Tensor  # recipe-specific: class probabilities, or foreground probability maps
    rejected: list[InputError]
    dataset: Dataset | None = None  # where the cases came from (for maps drawn on the originals)


class Recipe:
    kind: str = ""
    need_masks: bool = False

    def __init__(self, cfg: Config, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.run_info: dict[str, Any] = {}
        self.model: torch.nn.Module | None = None
        self.device = torch.device("cpu")

    # -- hooks for subclasses ----------------------------------------------------------------
    def labelled(self, dataset: Dataset, task: Task | None) -> list:
        """The samples this recipe can learn from."""
        raise NotImplementedError

    def build_model(self, in_channels: int) -> torch.nn.Module:
        raise NotImplementedError

    def training_module(self, model: torch.nn.Module, train: Loaded) -> TrainingModule:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Network outputs for a normalised batch, as probabilities."""
        raise NotImplementedError

    def rows(self, preds: Predictions) -> list[dict]:
        """predictions.csv rows (``id`` first), one per predicted case."""
        raise NotImplementedError

    def write_extra(self, preds: Predictions, out_dir: Path) -> None:
        """Files beside predictions.csv (masks, maps)."""

    def evaluate(self, dataset: Dataset, preds: Predictions) -> dict:
        raise NotImplementedError

    def val_figures(self, val: Loaded, run_dir: Path) -> None:
        """Figures written into the run directory after training."""

    def validate(self) -> None:
        """Check the config's recipe-specific settings before anything is read or written."""

    def split_label(self, task: Task | None, sample) -> int:
        """The class a sample is stratified by when validation (or a fold) is split off."""
        return task.label_of(sample.diagnosis) if task and sample.diagnosis is not None else 0

    # -- the task ------------------------------------------------------------------------------
    @property
    def task(self) -> Task | None:
        t = self.run_info.get("task")
        return None if t is None else Task(t["name"], tuple(t["classes"]), dict(t["mapping"]),
                                           bool(t.get("multilabel", False)))

    def open_data(self, path=None, format: str | None = None) -> Dataset:
        data = self.cfg.data
        if path is None and data.root is None and data.format not in GENERATED:
            raise MedsightError("no data: pass --data PATH or set data.root in the config")
        return open_dataset(path if path is not None else data.root, format=format or data.format, **data.options)

    # -- training --------------------------------------------------------------------------------
    def train(self, run_dir: str | Path, device: str = "auto", callbacks=()) -> dict:
        cfg = self.cfg
        run_dir = Path(run_dir)
        self.device = select_device(device)
        self.validate()
        resuming = check_run_dir(run_dir, cfg)
        dataset = self.open_data()
        task = dataset.task(cfg.data.task) if dataset.tasks else None
        samples = self.labelled(dataset, task)
        if len(samples) < 4:
            raise InputError(dataset.root, f"only {len(samples)} usable cases for the {self.kind} recipe")
        labels = [self.split_label(task, s) for s in samples]
        split = split_samples(samples, labels, cfg.data.val_fraction, cfg.data.split_seed, cfg.data.folds,
                              cfg.data.fold)
        preprocess = self.preprocess(channels=None)  # the input's own channels
        train, _ = load_samples(split["train"], preprocess, task, self.need_masks, console=self.console,
                                description="loading training cases")
        val, _ = load_samples(split["val"], preprocess, task, self.need_masks, console=self.console,
                              description="loading validation cases")
        channels, size = train.images.shape[1], tuple(train.images.shape[2:])
        mean, std = channel_stats(train.images)
        self.run_info = {
            "medsight_version": medsight.__version__, "recipe": self.kind, "finished": False,
            "task": None if task is None else {"name": task.name, "classes": list(task.classes),
                                               "mapping": task.mapping,
                                               "multilabel": task.multilabel},
            "in_channels": channels, "image_size": list(size), "mean": mean, "std": std,
            "data": {"format": dataset.name, "root": str(dataset.root), "train": len(train.ids),
                     "val": len(val.ids), "heldout": len(split["heldout"])},
        }
        if resuming:  # the normalisation of the first attempt must survive a resume
            saved = json.loads((run_dir / RUN_FILE).read_text())
            self.run_info.update(mean=saved["mean"], std=saved["std"])
        else:  # only now, with the data read and checked, is anything written
            create_run_dir(run_dir, cfg)
        self.console.print(f"{self.kind} recipe: {len(train.ids)} training, {len(val.ids)} validation cases"
                           + (f", {len(split['heldout'])} held out" if split["heldout"] else ""))
        save_json(self.run_info, run_dir / RUN_FILE)
        save_json({k: [s.id for s in v] for k, v in split.items()}, run_dir / SPLIT_FILE)

        started = time.perf_counter()
        history = self.fit(run_dir, train, val, callbacks)
        self.finish(run_dir, history, val, time.perf_counter() - started)
        return self.run_info

    def fit(self, run_dir: Path, train: Loaded, val: Loaded, callbacks=()) -> list[dict]:
        """Train the network with the loop and load its best weights; returns the history (one row per epoch)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.model = self.build_model(train.images.shape[1])
        module = self.training_module(self.model, train)
        es = cfg.train.early_stopping
        self.run_info["monitor"] = es.metric if es else module.monitor
        trainer = Trainer(run_dir, cfg.train.epochs, self.optimizer, cfg.train.scheduler, self.device, cfg.seed,
                          monitor=es.metric if es else None, mode=es.mode if es else None,
                          patience=es.patience if es else None, callbacks=callbacks, console=self.console,
                          step=(cfg.train.step_every, cfg.train.step_gamma))
        history = trainer.fit(module, lambda epoch: self.train_batches(train, epoch),
                              lambda: self.eval_batches(val), steps_per_epoch=self.steps(train))
        self.model.load_state_dict(load_weights(run_dir / BEST_WEIGHTS))
        self.model.to(self.device)
        state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)["loop"]
        self.run_info.update(best_epoch=state["best_epoch"], epochs_run=state["epoch"])
        (run_dir / CHECKPOINT).unlink()  # the best weights are kept; the resume state is not needed
        return history

    @property
    def network(self):
        """The config's model section; an error naming the key when the recipe needs one and it is absent."""
        if self.cfg.model is None:
            raise ConfigError(f"model: the {self.kind} recipe trains a network; give model.name")
        return self.cfg.model

    def model_options(self) -> dict:
        """model.options, with spatial_dims following the data (2 for images, 3 for volumes) unless set."""
        return {"spatial_dims": len(self.run_info["image_size"]), **self.network.options}

    def preprocess(self, channels: int | None):
        data = self.cfg.data
        return make_preprocess(data.preprocess, data.image_size, channels, **data.preprocess_options)

    def optimizer(self, params):
        t = self.cfg.train
        if t.optimizer == "sgd":
            return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=t.lr, weight_decay=t.weight_decay)

    def steps(self, data: Loaded) -> int:
        n, b = len(data.ids), self.cfg.train.batch_size
        return n // b if n > b else 1

    def train_batches(self, data: Loaded, epoch: int):
        """Shuffled, augmented, normalised batches; all randomness from (seed, epoch).

        The batch moves to the training device before augmentation: on a GPU the resampling would
        otherwise keep the CPU busier than the network keeps the GPU. The random draws stay on the
        CPU generator, so the same epoch replays alike on either device."""
        gen = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, epoch))
        mean, std = self.run_info["mean"], self.run_info["std"]
        for idx in batch_indices(len(data.ids), self.cfg.train.batch_size, gen, drop_last=True):
            x = normalise(data.images[idx].to(self.device), mean, std)
            m = data.masks[idx].to(self.device).unsqueeze(1).float() if data.masks is not None else None
            x, m = augment_batch(x, m, self.cfg.augment, gen)
            yield {"x": x, "mask": m, "y": data.labels[idx]}

    def eval_batches(self, data: Loaded, batch_size: int | None = None):
        mean, std = self.run_info["mean"], self.run_info["std"]
        for idx in batch_indices(len(data.ids), batch_size or self.cfg.train.batch_size):
            m = data.masks[idx].unsqueeze(1).float() if data.masks is not None else None
            yield {"x": normalise(data.images[idx], mean, std), "mask": m, "y": data.labels[idx]}

    def finish(self, run_dir: Path, history: list[dict], val: Loaded, seconds: float) -> None:
        from medsight.report import plot_history

        if history:
            write_csv(run_dir / "history.csv", history)
            plot_history(history, run_dir / "training_curves.png", self.run_info.get("monitor"))
        best_epoch = self.run_info.get("best_epoch")
        # recipes whose final model is not the network of one epoch say what validation gave
        best = self.run_info.pop("validation", None) or next(r for r in history if r["epoch"] == best_epoch)
        self.run_info.update(finished=True, train_seconds=round(seconds, 1), device=str(self.device))
        save_json(jsonable({"validation": best, "best_epoch": best_epoch}), run_dir / "metrics.json")
        self.val_figures(val, run_dir)
        save_json(jsonable(self.run_info), run_dir / RUN_FILE)
        self.console.print(f"done: run in {run_dir}" if best_epoch is None else
                           f"done: best epoch {best_epoch}, run in {run_dir}")

    # -- inference -------------------------------------------------------------------------------
    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", console: Console | None = None) -> "Recipe":
        run_dir = Path(run_dir)
        from medsight.recipes import RECIPES

        for name in (CONFIG_FILE, RUN_FILE):
            if not (run_dir / name).is_file():
                raise InputError(run_dir, f"not a finished medsight run directory ({name} is missing)")
        cfg = parse_config(yaml.safe_load((run_dir / CONFIG_FILE).read_text()), str(run_dir / CONFIG_FILE))
        recipe = RECIPES[cfg.recipe](cfg, console)
        recipe.run_info = json.loads((run_dir / RUN_FILE).read_text())
        if not recipe.run_info.get("finished"):
            raise InputError(run_dir, "training has not finished (resume it with medsight train)")
        recipe.device = select_device(device)
        recipe.restore(run_dir)
        return recipe

    def restore(self, run_dir: Path) -> None:
        """Rebuild the trained model of a finished run from its files."""
        self.model = self.build_model(self.run_info["in_channels"])
        try:
            self.model.load_state_dict(read_weights(run_dir / BEST_WEIGHTS))
        except RuntimeError as exc:
            raise InputError(run_dir / BEST_WEIGHTS, f"weights do not fit the configured model ({exc})") from None
        self.model.to(self.device).eval()

    @torch.no_grad()
    def predict(self, dataset: Dataset, need_masks: bool = False) -> Predictions:
        loaded, rejected = load_samples(dataset.samples, self.preprocess(self.run_info["in_channels"]),
                                        None, need_masks, skip_bad=True,
                                        console=self.console, description="loading cases")
        self.model.eval()
        outputs = [self.forward(batch["x"].to(self.device)).float().cpu()
                   for batch in self.eval_batches(loaded, batch_size=32)]
        shape = (0,) if not outputs else outputs[0].shape[1:]
        return Predictions(loaded, torch.cat(outputs) if outputs else torch.zeros(shape), rejected, dataset)

    def tta(self, x: torch.Tensor, fn) -> torch.Tensor:
        """Average ``fn`` over flips when predict.tta is on (fn maps images to per-pixel or per-image outputs)."""
        if not self.cfg.predict.tta:
            return fn(x)
        spatial = x.ndim - 2
        out = fn(x)
        flips = [(-1,), (-2,)] if spatial == 2 else [(-1,)]
        for dims in flips:
            y = fn(x.flip(dims))
            out = out + (y.flip(dims) if y.ndim == x.ndim else y)
        return out / (1 + len(flips))

    def write_predictions(self, preds: Predictions, out_dir: str | Path) -> Path:
        """Write predictions.csv (and the recipe's extra files) into a fresh ``out_dir``, atomically."""
        out_dir = Path(out_dir)
        refuse_existing_output(out_dir)
        tmp = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            write_csv(tmp / "predictions.csv", self.rows(preds))
            self.write_extra(preds, tmp)
            if out_dir.exists():
                out_dir.rmdir()
            tmp.rename(out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out_dir


def read_weights(path: Path) -> dict:
    """The tensors of a run's safetensors file; a missing or damaged file is an InputError naming it."""
    if not path.is_file():
        raise InputError(path.parent, f"not a finished medsight run directory ({path.name} is missing)")
    try:
        return load_weights(path)
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(path, f"cannot read the weights ({exc})") from None


def refuse_existing_output(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MedsightError(f"{out_dir}: exists and is not an empty folder; choose another --out")


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(rows[0]) if rows else ["id"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def check_run_dir(run_dir: Path, cfg: Config) -> bool:
    """Whether ``run_dir`` holds an unfinished run of this config to resume (writes nothing).

    A finished run, a different config or a folder that is not a run are refused: nothing is
    ever overwritten."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return False
    saved_cfg = run_dir / CONFIG_FILE
    if not saved_cfg.is_file():
        raise MedsightError(f"{run_dir}: folder exists and is not a medsight run; choose another --out")
    info = run_dir / RUN_FILE
    if info.is_file() and json.loads(info.read_text()).get("finished"):
        raise MedsightError(f"{run_dir}: holds a finished run; choose another --out")
    saved = yaml.safe_load(saved_cfg.read_text())
    if saved != cfg.to_dict():
        diff = sorted(_diff_keys(saved, cfg.to_dict()))
        raise MedsightError(f"{run_dir}: holds an unfinished run with a different config "
                            f"({', '.join(diff)}); resume it with the same settings or choose another --out")
    return (run_dir / CHECKPOINT).is_file() and info.is_file()


def create_run_dir(run_dir: Path, cfg: Config) -> None:
    """Start a run directory afresh (an earlier attempt that never finished an epoch is cleared)."""
    if run_dir.exists() and (run_dir / CONFIG_FILE).is_file():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in set(a) | set(b):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [prefix.rstrip(".")] if a != b else []
