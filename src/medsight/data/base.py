"""The records every reader yields, and the dataset and task types around them.

A reader turns an on-disk layout into a :class:`Dataset`: a list of :class:`Sample` records plus
the class names and the tasks the layout supports. Images load lazily from their files (or live in
memory for array formats), so opening a dataset is cheap and validating it is a separate, explicit
step (:func:`medsight.data.validate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medsight.data import imageio

UNLABELLED = -1  # scikit-learn's convention for a sample without a label


@dataclass(frozen=True)
class Task:
    """A labelling of a dataset: which dataset classes map to which task class.

    ``classes`` are the task's class names in index order; ``mapping`` sends a dataset class
    (``Sample.diagnosis``) to a task class index. A binary task has two classes, the positive last.

    A ``multilabel`` task (ChestX-ray14's findings) has an empty ``mapping``: a diagnosis is the
    ``"|"``-joined findings (``"Atelectasis|Effusion"``, ``"No Finding"`` for none), and
    :meth:`targets` turns it into one 0/1 per class.
    """

    name: str
    classes: tuple[str, ...]
    mapping: dict[str, int]
    multilabel: bool = False

    @property
    def is_binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def positive(self) -> str:
        return self.classes[-1]

    def label_of(self, diagnosis: str | None) -> int:
        if self.multilabel:
            from medsight.errors import MedsightError

            raise MedsightError(f"task {self.name!r} is multi-label (a case may have several of "
                                f"{', '.join(self.classes)}): use Task.targets, not a single label index")
        if diagnosis is None:
            return UNLABELLED
        return self.mapping[diagnosis]

    def targets(self, diagnosis: str | None) -> np.ndarray:
        """One 0/1 (int8) per class: for a multi-label task the ``"|"``-joined findings of
        ``diagnosis`` (``"No Finding"``: all zeros), otherwise the one-hot of :meth:`label_of`.
        ``None`` (unlabelled) gives all ``UNLABELLED`` (-1). An unknown finding, or
        ``"No Finding"`` together with a finding, raises ``ValueError`` naming it."""
        n = len(self.classes)
        if diagnosis is None:
            return np.full(n, UNLABELLED, dtype=np.int8)
        out = np.zeros(n, dtype=np.int8)
        if not self.multilabel:
            if diagnosis not in self.mapping:
                raise ValueError(f"label {diagnosis!r} is not a class of task {self.name!r} "
                                 f"({', '.join(self.mapping)})")
            out[self.mapping[diagnosis]] = 1
            return out
        findings = [f.strip() for f in str(diagnosis).split("|")]
        if findings == ["No Finding"]:
            return out
        index = {c: i for i, c in enumerate(self.classes)}
        for finding in findings:
            if finding == "No Finding":
                raise ValueError(f"finding 'No Finding' cannot go with other findings (in {diagnosis!r})")
            if finding not in index:
                raise ValueError(f"finding {finding!r} (in {diagnosis!r}) is not a class of task "
                                 f"{self.name!r} ({', '.join(self.classes)})")
            out[index[finding]] = 1
        return out

    @classmethod
    def multiclass(cls, name: str, classes: tuple[str, ...]) -> "Task":
        return cls(name, tuple(classes), {c: i for i, c in enumerate(classes)})

    @classmethod
    def one_vs_rest(cls, positive: str, all_classes: tuple[str, ...], negative: str = "other") -> "Task":
        return cls(positive, (negative, positive), {c: int(c == positive) for c in all_classes})


@dataclass
class Sample:
    """One case: an image and an optional mask of 0/1.

    2D images are channel-first uint8 ``(C, H, W)`` with masks ``(H, W)``; CT volumes are
    ``(1, D, H, W)`` in Hounsfield units (int16 or float) with masks ``(D, H, W)`` and ``spacing``
    in mm per axis ``(z, y, x)``. ``image`` and ``mask`` are in-memory arrays or paths read on
    demand (by ``loader`` when the path is not a 2D image file). ``diagnosis`` is the dataset's
    own class name (``None`` when unlabelled); tasks map it to a label index.
    """

    id: str
    image: np.ndarray | Path
    mask: np.ndarray | Path | None = None
    diagnosis: str | None = None
    patient_id: str | None = None
    split: str | None = None  # "train" / "val" / "test" where the layout has an official split
    meta: dict[str, Any] = field(default_factory=dict)
    spacing: tuple[float, ...] | None = None  # mm per spatial axis, for volumes
    # reads a path into an array: (path, is_mask) -> array; None means a 2D image file
    loader: Callable[[Path, bool], np.ndarray] | None = field(default=None, repr=False)

    def load_image(self) -> np.ndarray:
        if isinstance(self.image, np.ndarray):
            return self.image
        return self.loader(self.image, False) if self.loader else imageio.read_image(self.image)

    def load_mask(self) -> np.ndarray | None:
        if self.mask is None or isinstance(self.mask, np.ndarray):
            return self.mask
        return self.loader(self.mask, True) if self.loader else imageio.read_mask(self.mask)

    @property
    def has_mask(self) -> bool:
        return self.mask is not None

    @property
    def source(self) -> str:
        """Where the case comes from, for error messages."""
        return str(self.image) if isinstance(self.image, Path) else f"{self.meta.get('source', '<memory>')}[{self.id}]"


@dataclass
class Dataset:
    """What a reader returns: samples, the dataset's classes and the tasks defined on them."""

    name: str  # the format name, e.g. "ph2"
    root: Path
    samples: list[Sample]
    classes: tuple[str, ...]  # dataset classes (values of Sample.diagnosis)
    tasks: dict[str, Task]
    default_task: str | None = None
    # cases the layout holds but the reader left out on purpose, id -> reason (a label rule that
    # excludes them, a CT series not downloaded, ...): counted and reported, never silently dropped
    excluded: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def task(self, name: str | None = None) -> Task:
        from medsight.errors import MedsightError

        name = name or self.default_task
        if name not in self.tasks:
            raise MedsightError(
                f"{self.root}: the {self.name} layout has no task {name!r}; it has {sorted(self.tasks)}"
            )
        return self.tasks[name]

    def subset(self, split: str) -> "Dataset":
        return Dataset(self.name, self.root, [s for s in self.samples if s.split == split],
                       self.classes, self.tasks, self.default_task, dict(self.excluded))
