"""The training loop: one for every recipe (Lightning-style: the recipe says what a step is,
the loop owns devices, precision, seeding, checkpoints, early stopping and resuming)."""

from medsight.engine.loop import TrainingModule, Trainer, epoch_seed, select_device

__all__ = ["TrainingModule", "Trainer", "epoch_seed", "select_device"]
