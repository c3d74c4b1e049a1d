"""Training batches: one labelled stream, or a labelled and an unlabelled stream side by side.

A :class:`Stream` is a set of cases drawn in shuffled batches; its ``batch`` function builds one
batch from case indices and draws any randomness of its own (augmentation) from the generator it
is given. Every pass over a stream is seeded from ``(seed, epoch, stream, cycle)``, so the batches
of an epoch are a function of the seed alone: a resumed run replays them exactly, on any device.

With two streams the epoch is one pass over the stream named by ``epoch_length``; the other one
restarts (reshuffled) whenever it runs out. An empty or absent unlabelled stream gives exactly the
labelled batches of :func:`one_stream` with ``unlabelled`` None, so a semi-supervised method
without unlabelled data reduces to its supervised loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch

LABELLED, LOOP, UNLABELLED = 0, 1, 2  # seed streams: labelled data, the loop's global RNG, unlabelled data


def epoch_seed(seed: int, epoch: int, stream: int = LABELLED, cycle: int = 0, rank: int = 0) -> int:
    """A seed for one stream's randomness in one epoch (``cycle``: its restarts within the epoch;
    ``rank``: the process, where each of several draws its own, as the loop's dropout)."""
    key = [seed, epoch, stream] + ([cycle] if cycle or rank else []) + ([rank] if rank else [])
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None,
                  drop_last: bool = False) -> list[torch.Tensor]:
    """Index batches over ``n`` cases: shuffled with ``generator``, in order without; ``drop_last``
    drops a short last batch (unless it is the only one)."""
    if n == 0:
        return []
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    chunks = list(order.split(batch_size))
    if drop_last and len(chunks) > 1 and len(chunks[-1]) < batch_size:
        chunks = chunks[:-1]
    return chunks


@dataclass(frozen=True)
class Stream:
    size: int  # number of cases
    batch_size: int
    batch: Callable[[torch.Tensor, torch.Generator], Any]  # (case indices, generator) -> batch

    def steps(self) -> int:
        """Batches in one pass (a short last batch is dropped unless it is the only one)."""
        if self.size == 0:
            return 0
        return self.size // self.batch_size if self.size > self.batch_size else 1

    def one_pass(self, seed: int, epoch: int, stream: int, cycle: int = 0) -> Iterator:
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, stream, cycle))
        for idx in batch_indices(self.size, self.batch_size, gen, drop_last=True):
            yield self.batch(idx, gen)


def one_stream(stream: Stream, seed: int, epoch: int) -> Iterator:
    """The batches of one epoch of a single (labelled) stream."""
    return stream.one_pass(seed, epoch, LABELLED)


def two_streams(labelled: Stream, unlabelled: Stream | None, seed: int, epoch: int,
                epoch_length: Literal["labelled", "unlabelled"] = "labelled") -> Iterator[dict]:
    """``{"lb": batch, "ulb": batch or None}`` for each step of one epoch."""
    if unlabelled is None or unlabelled.size == 0:
        for batch in labelled.one_pass(seed, epoch, LABELLED):
            yield {"lb": batch, "ulb": None}
        return
    leader, follower = (labelled, unlabelled) if epoch_length == "labelled" else (unlabelled, labelled)
    keys = (LABELLED, UNLABELLED) if leader is labelled else (UNLABELLED, LABELLED)
    cycling = _cycle(follower, seed, epoch, keys[1])
    for batch in leader.one_pass(seed, epoch, keys[0]):
        other = next(cycling)
        yield {"lb": batch, "ulb": other} if leader is labelled else {"lb": other, "ulb": batch}


def two_stream_steps(labelled: Stream, unlabelled: Stream | None,
                     epoch_length: Literal["labelled", "unlabelled"] = "labelled") -> int:
    if unlabelled is None or unlabelled.size == 0 or epoch_length == "labelled":
        return labelled.steps()
    return unlabelled.steps()


def _cycle(stream: Stream, seed: int, epoch: int, key: int) -> Iterator:
    """Passes over ``stream`` without end, each reshuffled."""
    if stream.steps() == 0:
        raise ValueError("a stream with no batches cannot be cycled")
    cycle = 0
    while True:
        yield from stream.one_pass(seed, epoch, key, cycle)
        cycle += 1


def skip(batches: Iterator, n: int) -> Iterator:
    """``batches`` after its first ``n`` (a resumed epoch replays the draws it had made)."""
    return islice(batches, n, None)
