"""Unlabelled training data by patient: hide the labels of part of the training patients, and add
the reader's own unlabelled cases (LIDC rating-3 nodules with ``rating3: unlabelled``).

Only training patients ever become unlabelled training data: the validation and held-out cases
are split off first (from the labelled cases alone, so the folds are those of every supervised
recipe), and a reader's unlabelled case joins only when its patient is neither in validation nor
held out. The choice is deterministic given the seed.
"""

from __future__ import annotations

from typing import Sequence

from medsight.data.base import Dataset, Sample
from medsight.data.splits import hide_labels


def patient_of(sample: Sample) -> str:
    return sample.patient_id if sample.patient_id is not None else sample.id


def hide_patients(train: Sequence[Sample], labels: Sequence[int], fraction: float,
                  seed: int = 0) -> tuple[list[int], list[int]]:
    """(labelled, unlabelled) positions in ``train``: about ``fraction`` of the patients of each
    class keep their labels (at least one patient a class), whole patients at a time; a patient's
    class is the largest label among their cases (malignant over benign)."""
    hidden = hide_labels(list(labels), [patient_of(s) for s in train], fraction, seed)
    return [i for i, y in enumerate(hidden) if y != -1], [i for i, y in enumerate(hidden) if y == -1]


def reader_unlabelled(dataset: Dataset, split: dict[str, list[Sample]]) -> list[Sample]:
    """The dataset's cases without a label (outside an official test split) whose patients are in
    neither the validation nor the held-out cases."""
    barred = {patient_of(s) for name in ("val", "heldout") for s in split.get(name, [])}
    return [s for s in dataset.samples if s.diagnosis is None and s.split != "test" and patient_of(s) not in barred]
