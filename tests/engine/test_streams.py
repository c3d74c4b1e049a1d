"""Batch streams: seeded passes, the labelled and unlabelled streams side by side."""

import math

import pytest
import torch

from medsight.engine import Stream, epoch_seed, one_stream, two_stream_steps, two_streams
from medsight.engine.streams import LABELLED, UNLABELLED, batch_indices


def indices(size: int, batch_size: int) -> Stream:
    """A stream whose batches are its case indices, plus one draw from the stream's generator."""
    return Stream(size, batch_size, lambda idx, gen: (idx.tolist(), torch.rand(1, generator=gen).item()))


def test_one_pass_is_a_seeded_permutation_with_the_short_batch_dropped():
    batches = list(one_stream(indices(10, 4), seed=3, epoch=2))
    gen = torch.Generator().manual_seed(epoch_seed(3, 2, LABELLED))
    order = torch.randperm(10, generator=gen)
    assert [b[0] for b in batches] == [order[:4].tolist(), order[4:8].tolist()]  # 2 left over: dropped
    assert batches[0][1] == torch.rand(1, generator=gen).item()  # augmentation draws follow the shuffle
    assert list(one_stream(indices(10, 4), 3, 2)) == batches  # a pass is a function of (seed, epoch)
    assert [b[0] for b in one_stream(indices(10, 4), 3, 3)] != [b[0] for b in batches]
    assert [b[0] for b in one_stream(indices(3, 4), 0, 1)][0] != []  # fewer cases than a batch: one batch
    assert indices(10, 4).steps() == 2 and indices(3, 4).steps() == 1 and indices(0, 4).steps() == 0


def test_epoch_seeds_keep_streams_and_cycles_apart():
    seeds = {epoch_seed(0, 1, s, c) for s in (0, 1, 2) for c in (0, 1, 2)}
    assert len(seeds) == 9
    assert epoch_seed(0, 1, 0, 0) == epoch_seed(0, 1)  # the first cycle is the stream's epoch seed


def test_the_unlabelled_stream_cycles_reshuffled_beside_the_labelled_epoch():
    lb, ulb = indices(12, 4), indices(5, 2)
    steps = list(two_streams(lb, ulb, seed=0, epoch=1))
    assert len(steps) == lb.steps() == two_stream_steps(lb, ulb) == 3
    assert [s["lb"] for s in steps] == list(one_stream(lb, 0, 1))  # the labelled stream is unchanged
    drawn = [i for s in steps for i in s["ulb"][0]]
    first_pass = [b[0] for b in ulb.one_pass(0, 1, UNLABELLED)]
    assert drawn[:4] == [i for b in first_pass for i in b]  # 2 batches of 2 (the 5th case is dropped) ...
    second = [b[0] for b in ulb.one_pass(0, 1, UNLABELLED, cycle=1)]
    assert drawn[4:] == second[0]  # ... then a reshuffled second pass


def test_an_epoch_can_be_one_pass_over_the_unlabelled_stream():
    lb, ulb = indices(4, 2), indices(12, 2)
    steps = list(two_streams(lb, ulb, seed=0, epoch=1, epoch_length="unlabelled"))
    assert len(steps) == ulb.steps() == two_stream_steps(lb, ulb, "unlabelled") == 6
    assert sorted(i for s in steps for i in s["ulb"][0]) == list(range(12))
    assert all(len(s["lb"][0]) == 2 for s in steps)  # the labelled stream restarts as often as needed


def test_no_unlabelled_cases_give_the_labelled_batches_alone():
    lb = indices(9, 3)
    for ulb in (None, indices(0, 3)):
        steps = list(two_streams(lb, ulb, seed=4, epoch=2))
        assert [s["lb"] for s in steps] == list(one_stream(lb, 4, 2))
        assert all(s["ulb"] is None for s in steps)


def test_batch_indices_in_order_without_a_generator():
    assert [b.tolist() for b in batch_indices(5, 2)] == [[0, 1], [2, 3], [4]]
    assert batch_indices(0, 2) == []
    assert len(batch_indices(5, 2, torch.Generator().manual_seed(0), drop_last=True)) == math.floor(5 / 2)
    with pytest.raises(ValueError, match="no batches"):
        next(two_streams(indices(0, 2), indices(4, 2), 0, 1, epoch_length="unlabelled"))  # no labelled cases
