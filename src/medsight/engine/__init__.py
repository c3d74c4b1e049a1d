"""The training engine: one loop for every method, the batch streams it draws from, the pieces
semi-supervised methods add (EMA copies of a model, loss-weight schedules), and the processes
torchrun starts (:mod:`medsight.engine.distributed`)."""

from medsight.engine.device import autocast, select_device, to_channels_last
from medsight.engine.ema import EMA
from medsight.engine.loop import FitResult, Step, StepContext, Trainer
from medsight.engine.schedules import LossWeight, lr_scheduler
from medsight.engine.streams import Stream, batch_indices, epoch_seed, one_stream, two_stream_steps, two_streams

__all__ = ["EMA", "FitResult", "LossWeight", "Step", "StepContext", "Stream", "Trainer", "autocast",
           "batch_indices", "epoch_seed", "lr_scheduler", "one_stream", "select_device", "to_channels_last",
           "two_stream_steps", "two_streams"]
