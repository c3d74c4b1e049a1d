"""Weight averaging: a stage keeps an average of its weights over training, not one step's.

``train.weight_average`` picks one; the loop (:class:`medsight.engine.loop.Trainer`) calls its hooks.

* ``ema`` (:class:`EMAWeights`): an exponential moving average of every model, updated after each
  optimisation step (:class:`~medsight.engine.ema.EMA` with ``train.ema_decay`` and Mean Teacher's
  warm-up, so the early average is not the random initial weights; BatchNorm's running statistics
  are averaged alike, as timm's model EMA does). The loop validates the average after every epoch,
  so the best epoch, early stopping and the saved weights are all the average's.
* ``swa`` (:class:`SWAWeights`, Izmailov et al. 2018): the plain mean of the weights at the end of
  each of the last ``train.swa_epochs`` epochs (torch's ``swa_utils.AveragedModel``), then
  BatchNorm's running statistics recomputed by one pass over the training cases
  (``swa_utils.update_bn``): a mean of weights has no statistics of its own. No epoch is chosen;
  the epochs are validated as trained (the history), and the average once at the end.

Each keeps its state in the loop's checkpoint (``state_dict``), so a resumed run averages the same.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from medsight.engine.ema import EMA

Weights = dict[str, dict[str, torch.Tensor]]  # a state dict per model name


class EMAWeights:
    """An EMA copy of each model, updated after every step; validated and saved in its place."""

    chooses_epoch = True  # the loop validates the average each epoch and keeps the best

    def __init__(self, decay: float):
        self.decay = decay
        self.copies: dict[str, EMA] = {}

    def start(self, models: dict[str, nn.Module]) -> None:
        self.copies = {name: EMA(model, self.decay, warmup=True) for name, model in models.items()}

    def after_step(self, models: dict[str, nn.Module]) -> None:
        for name, model in models.items():
            self.copies[name].update(model)

    def after_epoch(self, epoch: int, models: dict[str, nn.Module]) -> None:
        pass

    def weights(self) -> Weights | None:
        """What the loop validates and saves after an epoch."""
        return {name: copy.module.state_dict() for name, copy in self.copies.items()}

    def describe(self) -> str:
        return f"EMA, decay {self.decay}"

    def state_dict(self) -> dict:
        return {name: copy.state_dict() for name, copy in self.copies.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, copy in self.copies.items():
            copy.load_state_dict(state[name])


class SWAWeights:
    """The mean of each model's weights at the end of epochs ``first_epoch`` onwards; BatchNorm's
    statistics recomputed on ``bn_inputs()`` (batches of network inputs) by :meth:`finish`."""

    chooses_epoch = False  # the average of the last epochs is the model

    def __init__(self, first_epoch: int, bn_inputs: Callable[[], Iterable[torch.Tensor]]):
        self.first_epoch, self.bn_inputs = max(1, first_epoch), bn_inputs
        self.averages: dict[str, AveragedModel] = {}

    def start(self, models: dict[str, nn.Module]) -> None:
        self.averages = {name: AveragedModel(model) for name, model in models.items()}

    def after_step(self, models: dict[str, nn.Module]) -> None:
        pass

    def after_epoch(self, epoch: int, models: dict[str, nn.Module]) -> None:
        if epoch >= self.first_epoch:
            for name, model in models.items():
                self.averages[name].update_parameters(model)

    def weights(self) -> Weights | None:
        return None  # the epochs are validated as trained; the average only at the end

    def averaged_epochs(self) -> int:
        return int(next(iter(self.averages.values())).n_averaged) if self.averages else 0

    def describe(self) -> str:
        n = self.averaged_epochs()
        return f"SWA of {n} epoch{'' if n == 1 else 's'} (from epoch {self.first_epoch})"

    @torch.no_grad()
    def finish(self, models: dict[str, nn.Module], device: torch.device) -> None:
        """Put the mean weights, with BatchNorm statistics recomputed, into ``models``."""
        if self.averaged_epochs() == 0:
            raise RuntimeError("SWA averaged no epoch")  # the loop finishes only after the last epoch
        for name, model in models.items():
            average = self.averages[name].module
            update_bn(self.bn_inputs(), average, device)
            model.load_state_dict(average.state_dict())

    def state_dict(self) -> dict:
        return {name: average.state_dict() for name, average in self.averages.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, average in self.averages.items():
            average.load_state_dict(state[name])


def weight_average(kind: str, epochs: int, ema_decay: float = 0.998, swa_epochs: int = 5,
                   bn_inputs: Callable[[], Iterable[torch.Tensor]] | None = None) -> EMAWeights | SWAWeights | None:
    """The averager of ``train.weight_average`` (None for ``none``); SWA averages the last
    ``min(swa_epochs, epochs)`` epochs of ``epochs``."""
    if kind == "none":
        return None
    if kind == "ema":
        return EMAWeights(ema_decay)
    if kind == "swa":
        if bn_inputs is None:
            raise ValueError("SWA needs the training inputs to recompute BatchNorm's statistics")
        return SWAWeights(epochs - min(swa_epochs, epochs) + 1, bn_inputs)
    raise ValueError(f"unknown weight average {kind!r} (none, ema or swa)")
