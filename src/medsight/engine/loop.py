"""The training loop, one for every method: the method says what a step is, the loop owns the rest.

A stage gives the loop a :class:`Step` (USB's ``train_step`` idea): its named models and
optimisers, what one training step does with a batch (it computes its losses, calls
``ctx.update(loss, *optimisers)`` as often as it needs, and returns numbers to log) and how
validation is scored. The loop owns the device and bf16 autocast, the seeding of every epoch,
progress, validation after each epoch, the best epoch's weights (``<model>.safetensors`` for every
model), early stopping, and atomic checkpoints from which an interrupted run resumes to
bit-identical weights: after every epoch, and every ``checkpoint_every`` steps within one.
With a weight average (:mod:`medsight.engine.averaging`, ``average``) the weights validated and
kept are the average's: EMA's after each epoch (the best epoch chosen on them), or SWA's mean of
the last epochs with BatchNorm's statistics recomputed, validated once after the last epoch.

Started by torchrun, each process trains on its share of every batch and the loop keeps the
processes one model (:mod:`medsight.engine.distributed`): gradients summed after each backward
pass, BatchNorm over the global batch, validation shared round-robin and gathered, every decision
(best epoch, early stop) taken alike everywhere from the same numbers; rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from medsight.engine.averaging import EMAWeights, SWAWeights
from medsight.engine.checkpoint import CHECKPOINT, load_state, load_weights, save_state, save_weights
from medsight.engine.device import autocast, select_device, to_channels_last
from medsight.engine.distributed import (World, broadcast_object, broadcast_state, gather_in_order, gather_objects,
                                         my_turns, plain_batchnorm, shard, sum_gradients, sync_batchnorm, world)
from medsight.engine.schedules import lr_scheduler
from medsight.engine.streams import LOOP, epoch_seed, skip
from medsight.errors import MedsightError

SHOWN = ("ACC", "AUC", "BMA", "JA", "DI")  # metrics printed each epoch when present (all go to history)


class Step(Protocol):
    """What a method gives the loop for one stage."""

    models: dict[str, torch.nn.Module]  # moved, checkpointed and saved by the loop
    monitor: str  # the validation metric that chooses the best epoch, unless the loop is told another
    monitor_mode: str  # "max" or "min"

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Built once the models are on their device; the first one's rate is logged as ``lr``."""

    def train_step(self, batch: Any, ctx: StepContext) -> Mapping[str, torch.Tensor | float]:
        """Losses and updates of one batch; returns numbers to log (``loss`` is shown)."""

    def validation_step(self, batch: Any, device: torch.device) -> Any:
        """Anything; collected over the validation batches for :meth:`validation_metrics`."""

    def validation_metrics(self, outputs: list) -> dict[str, float]:
        ...


@dataclass
class StepContext:
    """What a training step knows besides its batch, and how it updates weights."""

    device: torch.device
    epoch: int
    step: int  # optimisation steps taken before this one in the whole run (loss-weight schedules run on it)
    optimizers: dict[str, torch.optim.Optimizer]
    share: float = 1.0  # this process's fraction of the batch's cases (1 alone)
    world: World = World()

    def update(self, loss: torch.Tensor, *names: str) -> None:
        """Back-propagate ``loss`` and step the named optimisers (all of them when none is named).
        With several processes each scales its loss (a mean over its cases) by its share and the
        gradients are summed: the gradient of the mean over the whole batch."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at epoch {self.epoch}; "
                                     "lower train.lr or check the input data")
        chosen = [self.optimizers[n] for n in names] if names else list(self.optimizers.values())
        for optimizer in chosen:
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=False):  # backward runs outside autocast
            (loss * self.share if self.world.size > 1 else loss).backward()
        if self.world.size > 1:
            sum_gradients((p for o in chosen for g in o.param_groups for p in g["params"]), self.world)
        for optimizer in chosen:
            optimizer.step()


@dataclass(frozen=True)
class FitResult:
    history: list[dict]  # one record per epoch: training logs, validation metrics, lr, seconds
    best_epoch: int  # with SWA, the last epoch averaged
    epochs_run: int
    monitor: str
    validation: dict  # the validation of the kept weights: the best epoch's record, or the SWA average's


class Trainer:
    """Runs the epochs of one stage in ``folder`` (weights and checkpoint go there).

    ``train_batches(epoch)`` yields the batches of an epoch and must draw its randomness from
    ``(seed, epoch)`` alone (:mod:`medsight.engine.streams`); the loop seeds torch's global
    generator (dropout) the same way before each epoch."""

    def __init__(self, folder: str | Path, epochs: int, device: torch.device | str = "auto", seed: int = 0,
                 scheduler: str = "cosine", step_lr: tuple[int, float] = (30, 0.5), monitor: str | None = None,
                 mode: str | None = None, patience: int | None = None, checkpoint_every: int = 0,
                 callbacks: Iterable[Callable[[int, dict], None]] = (), console: Console | None = None,
                 progress_every: int | None = None, average: EMAWeights | SWAWeights | None = None):
        self.folder = Path(folder)
        self.epochs = epochs
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.seed = seed
        self.scheduler, self.step_lr = scheduler, step_lr
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.checkpoint_every = checkpoint_every
        self.callbacks = list(callbacks)
        self.console = console or Console(stderr=True)
        self.progress_every = progress_every  # a plain progress line every N steps off a terminal (None: 10 an epoch)
        self.average = average
        if average is not None and not average.chooses_epoch and patience is not None:
            raise MedsightError("SWA averages the last epochs and chooses none: it takes no early stopping")
        self.world = world()

    def _better(self, record: dict, state: dict) -> bool:
        """Whether this epoch beats the best so far. Ties on the monitored metric (common with a
        small validation set, where AUC sits at 1.0 for many epochs) go to the lower validation loss."""
        value, best = record.get(self.monitor), state["best_value"]
        if value is None or math.isnan(value):
            return False
        if best is None or value != best:
            return best is None or (value > best if self.mode == "max" else value < best)
        loss, best_loss = record.get("val_loss"), state.get("best_loss")
        return loss is not None and best_loss is not None and loss < best_loss

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, step: Step, train_batches: Callable[[int], Iterable], val_batches: Callable[[], Iterable],
            steps_per_epoch: int | None = None) -> FitResult:
        self.monitor = self.monitor or step.monitor
        self.mode = self.mode or step.monitor_mode
        w = self.world = world()
        for model in step.models.values():
            model.to(self.device)
            if self.device.type == "cuda":  # tensor-core friendly layout for convolutions under bf16
                to_channels_last(model)
            if w.size > 1:
                sync_batchnorm(model, self.device)
                broadcast_state(model, w)  # one model, whatever each process initialised
        optimizers = step.optimizers()
        average = self.average
        if average is not None:
            average.start(step.models)
        schedulers = {name: lr_scheduler(opt, self.scheduler, self.epochs, *self.step_lr)
                      for name, opt in optimizers.items()}
        state = {"epoch": 0, "step": 0, "best_value": None, "best_epoch": 0, "bad_epochs": 0, "history": [],
                 "finished": False, "in_epoch": None}
        checkpoint = self.folder / CHECKPOINT
        saved = broadcast_object(load_state(checkpoint) if w.is_main and checkpoint.exists() else None, w)
        if saved is not None:
            state = self._resume(saved, checkpoint, step, optimizers, schedulers)
        if w.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
        save = lambda: self._save(checkpoint, step, optimizers, schedulers, state)  # noqa: E731

        for epoch in range(state["epoch"] + 1, self.epochs + 1):
            if state["finished"]:
                break
            start = time.perf_counter()
            lr = next(iter(optimizers.values())).param_groups[0]["lr"]  # the rate this epoch trains with
            if state["in_epoch"] is None:  # each process its own dropout draws
                torch.manual_seed(epoch_seed(self.seed, epoch, LOOP, rank=w.rank))
            logs = self._train_epoch(step, optimizers, train_batches(epoch), epoch, steps_per_epoch, state, save)
            for scheduler in schedulers.values():
                scheduler.step()
            if average is not None:
                average.after_epoch(epoch, step.models)
            with self._averaged(step):  # EMA: the average is validated and kept in the model's place
                metrics = self._validate(step, val_batches())
                record = {"epoch": epoch, **logs, **metrics, "lr": lr,
                          "seconds": round(time.perf_counter() - start, 3)}
                state["history"].append(record)
                if average is None or average.chooses_epoch:
                    self._keep_best(step, record, metrics, state)
                else:
                    state["best_epoch"] = epoch
            stop = self.patience is not None and state["bad_epochs"] >= self.patience
            state.update(epoch=epoch, finished=stop or epoch == self.epochs, in_epoch=None)
            save()
            self._report(record, state)
            for callback in self.callbacks:
                callback(epoch, record)
            if stop and w.is_main:
                self.console.print(f"early stop: no better {self.monitor} for {self.patience} epochs")
        validation = next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), {})
        if average is not None and not average.chooses_epoch:
            validation = self._finish_average(step, average, val_batches, state)
        for name, model in step.models.items():
            if w.is_main:
                model.load_state_dict(load_weights(self.folder / f"{name}.safetensors"))
            if w.size > 1:
                broadcast_state(model, w)
                plain_batchnorm(model)
        if w.is_main:
            checkpoint.unlink(missing_ok=True)  # the best weights are kept; the resume state is not needed
        return FitResult(state["history"], state["best_epoch"], state["epoch"], self.monitor, validation)

    @contextlib.contextmanager
    def _averaged(self, step):
        """The averaged weights in the models while the block runs (none to swap: the models as
        they are); the trained weights back afterwards, to train on."""
        weights = self.average.weights() if self.average is not None else None
        if weights is None:
            yield
            return
        trained = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in step.models.items()}
        for name, model in step.models.items():
            model.load_state_dict(weights[name])
        try:
            yield
        finally:
            for name, model in step.models.items():
                model.load_state_dict(trained[name])

    def _finish_average(self, step, average: SWAWeights, val_batches, state: dict) -> dict:
        """SWA's mean into the models, BatchNorm's statistics recomputed; saved and validated."""
        average.finish(step.models, self.device)
        self._save_weights(step)
        metrics = self._validate(step, val_batches())
        if self.world.is_main:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in (self.monitor, "val_loss", *SHOWN))
            self.console.print(f"{average.describe()}, BatchNorm recomputed on the training cases: {shown}",
                               highlight=False)
        return {"epoch": state["best_epoch"], "averaged_epochs": average.averaged_epochs(), **metrics}

    def _train_epoch(self, step, optimizers, batches, epoch, total, state, save) -> dict[str, float]:
        """Mean of each logged number over the epoch's steps (with several processes, of the whole
        batches: each process adds its numbers weighted by its share). A checkpoint taken within
        the epoch holds how many steps were done, the sums of their logs and every process's torch
        generator; resuming skips the batches already drawn and restores the generator, so the
        epoch ends as if never cut."""
        w = self.world
        for model in step.models.values():
            model.train()
        done, sums = 0, {}
        if state["in_epoch"] is not None:  # resuming within this epoch
            done, sums = state["in_epoch"]["done"], _sums(state["in_epoch"]["logs"]) if w.is_main else {}
            batches = skip(iter(batches), done)
            _restore_rng(state["in_epoch"], self.device, w, epoch_seed(self.seed, epoch, LOOP, done, w.rank))
        started, every = time.perf_counter(), self.progress_every or max(1, math.ceil((total or 100) / 10))
        with self._progress() as progress:
            task = progress.add_task(f"epoch {epoch}/{self.epochs}", total=total, completed=done)
            for batch in batches:
                part, share = shard(batch, w)
                ctx = StepContext(self.device, epoch, state["step"], optimizers, share, w)
                with autocast(self.device):
                    out = step.train_step(part, ctx)
                if self.average is not None:
                    self.average.after_step(step.models)
                values = {k: float(v.item() if torch.is_tensor(v) else v) for k, v in out.items()}
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + share * value
                state["step"] += 1
                done += 1
                shown = f" loss {values['loss']:.4f}" if "loss" in values else ""
                progress.update(task, advance=1, description=f"epoch {epoch}/{self.epochs}{shown}")
                if not self.console.is_terminal and w.is_main and done % every == 0 and done != total:
                    of = f"/{total}" if total else ""
                    self.console.print(f"epoch {epoch}/{self.epochs}: step {done}{of}{shown}  "
                                       f"{time.perf_counter() - started:.1f}s", highlight=False)
                if self.checkpoint_every and done % self.checkpoint_every == 0 and done != total:
                    rng = gather_objects(torch.get_rng_state(), w)
                    state["in_epoch"] = {"done": done, "logs": _total(sums, w), "rng": rng}
                    if self.device.type == "cuda":
                        state["in_epoch"]["cuda_rng"] = gather_objects(torch.cuda.get_rng_state(self.device), w)
                    save()
        totals = _total(sums, w)
        return {key: value / done for key, value in totals.items()} if done else {"loss": float("nan")}

    @torch.no_grad()
    def _validate(self, step, batches) -> dict[str, float]:
        """The step's metrics over every validation batch; with several processes each scores
        every n-th batch and the outputs are gathered back in order, so each case counts once."""
        for model in step.models.values():
            model.eval()
        outputs = []
        for batch in my_turns(batches, self.world):
            with autocast(self.device):
                outputs.append(step.validation_step(batch, self.device))
        outputs = gather_in_order(outputs, self.world)
        return {k: float(v) for k, v in step.validation_metrics(outputs).items()}

    def _keep_best(self, step, record: dict, metrics: dict, state: dict) -> None:
        epoch = record["epoch"]
        value = metrics.get(self.monitor)
        if value is None:
            raise MedsightError(f"early_stopping.metric: {self.monitor!r} is not a validation metric; "
                                f"available: {', '.join(sorted(metrics))}")
        if self._better(record, state):
            state.update(best_value=value, best_loss=record.get("val_loss"), best_epoch=epoch, bad_epochs=0)
            self._save_weights(step)
        elif state["best_value"] is None:  # the metric is undefined so far (e.g. one class in validation):
            state.update(best_epoch=epoch)  # keep the latest weights until it is defined
            self._save_weights(step)
            if self.world.is_main:
                self.console.print(f"[yellow]validation {self.monitor} is undefined at epoch {epoch}; "
                                   "keeping the latest weights (is the validation set too small?)[/yellow]")
        else:
            state["bad_epochs"] += 1

    def _save_weights(self, step) -> None:
        if not self.world.is_main:
            return
        for name, model in step.models.items():
            save_weights(model.state_dict(), self.folder / f"{name}.safetensors")

    def _save(self, path, step, optimizers, schedulers, state) -> None:
        if not self.world.is_main:
            return
        save_state({"models": {n: m.state_dict() for n, m in step.models.items()},
                    "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                    "schedulers": {n: s.state_dict() for n, s in schedulers.items()},
                    "loop": state, **({"average": self.average.state_dict()} if self.average else {})}, path)

    def _resume(self, saved, path, step, optimizers, schedulers) -> dict:
        """Every process takes up rank 0's checkpoint, whatever the number of processes that wrote it."""
        if set(saved.get("models", {})) != set(step.models) or set(saved.get("optimizers", {})) != set(optimizers):
            raise MedsightError(f"{path}: the checkpoint holds other models or optimisers than this stage "
                                "trains; delete it to start the stage again")
        for name, model in step.models.items():
            model.load_state_dict(saved["models"][name])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(saved["optimizers"][name])
            schedulers[name].load_state_dict(saved["schedulers"][name])
        if self.average is not None:
            if "average" not in saved:
                raise MedsightError(f"{path}: the checkpoint was trained without the weight average this stage "
                                    "keeps; delete it to start the stage again")
            self.average.load_state_dict(saved["average"])
        state = saved["loop"]
        where = f"after epoch {state['epoch']}" if state["in_epoch"] is None else \
            f"in epoch {state['epoch'] + 1} after step {state['in_epoch']['done']}"
        if self.world.is_main:
            self.console.print(f"resuming {self.folder} {where}")
        return state

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=self.console, transient=True,
                        disable=not (self.console.is_terminal and self.world.is_main))

    def _report(self, record: dict, state: dict) -> None:
        if not self.world.is_main:
            return
        keys = dict.fromkeys(["loss", "val_loss", self.monitor, *SHOWN])
        shown = "  ".join(f"{k} {record[k]:.4f}" for k in keys if isinstance(record.get(k), float))
        best = state["best_value"]
        best_txt = "n/a" if best is None else f"{best:.4f}"
        kept = f"best {self.monitor} {best_txt} @ {state['best_epoch']}" if self.average is None \
            else f"{self.average.describe()}" + (f", best {best_txt} @ {state['best_epoch']}"
                                                 if self.average.chooses_epoch else "")
        self.console.print(f"epoch {record['epoch']:>3}/{self.epochs}  {shown}  ({kept})  {record['seconds']:.1f}s",
                           highlight=False)
        sys.stderr.flush()


def _sums(logs: dict) -> dict[str, float]:
    """A checkpoint's logs as sums (checkpoints of medsight before torchrun held each step's values)."""
    return {k: float(sum(v)) if isinstance(v, list) else float(v) for k, v in logs.items()}


def _total(sums: dict[str, float], w: World) -> dict[str, float]:
    """The sums of every process added up (each process's numbers already weighted by its share)."""
    totals: dict[str, float] = {}
    for part in gather_objects(sums, w):
        for key, value in part.items():
            totals[key] = totals.get(key, 0.0) + value
    return totals


def _restore_rng(in_epoch: dict, device: torch.device, w: World, fresh_seed: int) -> None:
    """Each process's torch generator as the checkpoint saved it; a process the checkpoint did not
    have (the run resumed with more processes) starts a generator of its own."""
    rng = in_epoch["rng"] if isinstance(in_epoch["rng"], list) else [in_epoch["rng"]]
    if w.rank < len(rng):
        torch.set_rng_state(rng[w.rank])
    else:
        torch.manual_seed(fresh_seed)
    if "cuda_rng" in in_epoch:
        cuda = in_epoch["cuda_rng"] if isinstance(in_epoch["cuda_rng"], list) else [in_epoch["cuda_rng"]]
        if w.rank < len(cuda):
            torch.cuda.set_rng_state(cuda[w.rank], device)
