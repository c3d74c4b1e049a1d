"""One training loop for supervised classification and segmentation."""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from medsight.engine.checkpoint import load_state, save_state, save_weights
from medsight.errors import MedsightError

CHECKPOINT = "checkpoint.pt"  # the loop's state after the last finished epoch (for resuming)
BEST_WEIGHTS = "model.safetensors"  # the weights of the best validation epoch
SHOWN = ("ACC", "AUC", "BMA", "JA", "DI")  # metrics printed each epoch when present (all go to history)


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MedsightError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda"):
        raise MedsightError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Channels-last weights for 2D convolution nets, channels-last-3d for 3D ones."""
    ranks = {p.dim() for p in model.parameters()}
    if 5 in ranks:
        return model if 4 in ranks else model.to(memory_format=torch.channels_last_3d)
    return model.to(memory_format=torch.channels_last) if 4 in ranks else model


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A seed for one epoch's randomness, so a resumed run replays exactly what it would have done."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


class TrainingModule:
    """What a recipe gives the loop: the model and what one step is.

    ``training_step`` returns the loss of a batch; ``validation_step`` returns anything, collected
    over the validation set and handed to ``validation_metrics``, which returns named numbers.
    """

    monitor: str = "val_loss"  # the default metric that chooses the best epoch
    monitor_mode: str = "min"

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def training_step(self, batch: Any, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def validation_step(self, batch: Any, device: torch.device) -> Any:
        raise NotImplementedError

    def validation_metrics(self, outputs: list) -> dict[str, float]:
        raise NotImplementedError


class Trainer:
    """Runs epochs, validates after each, keeps the best weights, checkpoints atomically, resumes.

    ``train_batches(epoch)`` and ``val_batches()`` yield batches; the loop seeds torch before each
    epoch from ``(seed, epoch)``, and ``train_batches`` should draw its own randomness the same way
    (:func:`epoch_seed`), so an interrupted run resumed from its checkpoint ends with the same
    weights as one that never stopped.
    """

    def __init__(self, run_dir: str | Path, epochs: int, optimizer: Callable[[Iterable], torch.optim.Optimizer],
                 scheduler: str = "none", device: torch.device | str = "auto", seed: int = 0,
                 monitor: str | None = None, mode: str | None = None, patience: int | None = None,
                 callbacks: Iterable[Callable[[int, dict], None]] = (), console: Console | None = None,
                 step: tuple[int, float] = (30, 0.5)):
        self.run_dir = Path(run_dir)
        self.epochs = epochs
        self.make_optimizer = optimizer
        self.scheduler_kind, self.step = scheduler, step
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.seed = seed
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.callbacks = list(callbacks)
        self.console = console or Console(stderr=True)

    # -- set-up -------------------------------------------------------------------------------
    def _scheduler(self, optimizer):
        if self.scheduler_kind == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        if self.scheduler_kind == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.step[0], gamma=self.step[1])
        if self.scheduler_kind == "poly":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: (1 - e / self.epochs) ** 0.9)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

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
    def fit(self, module: TrainingModule, train_batches: Callable[[int], Iterable],
            val_batches: Callable[[], Iterable], steps_per_epoch: int | None = None) -> list[dict]:
        self.monitor = self.monitor or module.monitor
        self.mode = self.mode or module.monitor_mode
        model = module.model.to(self.device)
        if self.device.type == "cuda":  # tensor-core friendly layout for convolutions under bf16
            model = to_channels_last(model)
        optimizer = self.make_optimizer(model.parameters())
        scheduler = self._scheduler(optimizer)
        state = {"epoch": 0, "best_value": None, "best_epoch": 0, "bad_epochs": 0, "history": [],
                 "finished": False}
        ckpt_path = self.run_dir / CHECKPOINT
        if ckpt_path.exists():
            saved = load_state(ckpt_path)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            state = saved["loop"]
            self.console.print(f"resuming {self.run_dir} after epoch {state['epoch']}")
        self.run_dir.mkdir(parents=True, exist_ok=True)

        for epoch in range(state["epoch"] + 1, self.epochs + 1):
            if state["finished"]:
                break
            start = time.perf_counter()
            torch.manual_seed(epoch_seed(self.seed, epoch, stream=1))
            lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
            train_loss = self._train_epoch(module, optimizer, train_batches(epoch), epoch, steps_per_epoch)
            scheduler.step()
            metrics = self._validate(module, val_batches())
            record = {"epoch": epoch, "loss": train_loss, **metrics, "lr": lr,
                      "seconds": round(time.perf_counter() - start, 3)}
            state["history"].append(record)
            value = metrics.get(self.monitor)
            if value is None:
                raise MedsightError(f"early_stopping.metric: {self.monitor!r} is not a validation metric; "
                                    f"available: {', '.join(sorted(metrics))}")
            if self._better(record, state):
                state.update(best_value=value, best_loss=record.get("val_loss"), best_epoch=epoch, bad_epochs=0)
                save_weights(model.state_dict(), self.run_dir / BEST_WEIGHTS)
            elif state["best_value"] is None:  # the metric is undefined so far (e.g. one class in validation):
                state.update(best_epoch=epoch)  # keep the latest weights until it is defined
                save_weights(model.state_dict(), self.run_dir / BEST_WEIGHTS)
                self.console.print(f"[yellow]validation {self.monitor} is undefined at epoch {epoch}; "
                                   "keeping the latest weights (is the validation set too small?)[/yellow]")
            else:
                state["bad_epochs"] += 1
            stop = self.patience is not None and state["bad_epochs"] >= self.patience
            state["epoch"] = epoch
            state["finished"] = stop or epoch == self.epochs
            save_state({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "loop": state}, ckpt_path)
            self._report(record, state)
            for callback in self.callbacks:
                callback(epoch, record)
            if stop:
                self.console.print(f"early stop: no better {self.monitor} for {self.patience} epochs")
        return state["history"]

    def _train_epoch(self, module, optimizer, batches, epoch, total) -> float:
        module.model.train()
        losses = []
        with self._progress() as progress:
            task = progress.add_task(f"epoch {epoch}/{self.epochs}", total=total)
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                with self._autocast():
                    loss = module.training_step(batch, self.device)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}; "
                                             "lower train.lr or check the input data")
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                progress.update(task, advance=1, description=f"epoch {epoch}/{self.epochs} loss {losses[-1]:.4f}")
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def _validate(self, module, batches) -> dict[str, float]:
        module.model.eval()
        outputs = []
        for batch in batches:
            with self._autocast():
                outputs.append(module.validation_step(batch, self.device))
        return {k: float(v) for k, v in module.validation_metrics(outputs).items()}

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=self.console, transient=True, disable=not self.console.is_terminal)

    def _report(self, record: dict, state: dict) -> None:
        keys = dict.fromkeys(["loss", "val_loss", self.monitor, *SHOWN])
        shown = "  ".join(f"{k} {record[k]:.4f}" for k in keys if isinstance(record.get(k), float))
        best = state["best_value"]
        best_txt = "n/a" if best is None else f"{best:.4f}"
        self.console.print(f"epoch {record['epoch']:>3}/{self.epochs}  {shown}  "
                           f"(best {self.monitor} {best_txt} @ {state['best_epoch']})  {record['seconds']:.1f}s",
                           highlight=False)
        sys.stderr.flush()
