"""How the labels of a dataset being evaluated map onto a run's task classes.

A run knows its task by the labels of the data it was trained on (PH2's ``common_nevus``,
``atypical_nevus`` and ``melanoma`` onto the classes ``nevus`` / ``melanoma``). The data it is
evaluated on may spell them otherwise: with the run's own class names (a folder labelled ``nevus``
/ ``melanoma``), or as another layout of the same question (ISIC-2017's ``nevus`` / ``melanoma`` /
``seborrheic_keratosis``, whose task ``melanoma`` is melanoma against the rest). The rules, tried
in this order, the first that covers every label winning:

1. ``run``: the run's own mapping (the training data's labels);
2. ``class names``: the labels are the run's class names;
3. ``dataset task``: the dataset has a task of the run's task name whose classes correspond (the
   same names, or for a binary task the same positive class): each label goes where that task
   sends it (ISIC-2017's ``melanoma`` task for a PH2 melanoma run: ``nevus`` and
   ``seborrheic_keratosis`` onto the negative class);
4. ``one-vs-rest``: for a binary task whose positive class is one of the labels, that label is the
   positive class and every other label the negative one.

The rule used, and where each label went, is returned so that evaluate can say it.
"""

from __future__ import annotations

from dataclasses import dataclass

from medsight.data.base import Dataset, Task
from medsight.errors import InputError


@dataclass(frozen=True)
class LabelMapping:
    rule: str  # run, class names, dataset task, one-vs-rest
    mapping: dict[str, int]  # a dataset label -> the index of a task class
    classes: tuple[str, ...]  # the task's classes
    via: str = ""  # for the rule "dataset task": which (e.g. "isic2017 task 'melanoma'")

    def describe(self) -> str:
        return describe_mapping(self.to_json())

    def to_json(self) -> dict:
        return {"rule": self.rule, **({"via": self.via} if self.via else {}), "mapping": {label: self.classes[k] for label, k in sorted(self.mapping.items())}}


def describe_mapping(saved: dict) -> str:
    """A saved mapping (:meth:`LabelMapping.to_json`) in words, grouped by class: ``dataset task
    (isic2017 task 'melanoma'): nevus, seborrheic_keratosis -> nevus; melanoma -> melanoma``."""
    groups: dict[str, list[str]] = {}
    for label, cls in saved["mapping"].items():
        groups.setdefault(cls, []).append(label)
    rule = f"{saved['rule']} ({saved['via']})" if saved.get("via") else saved["rule"]
    return f"{rule}: " + "; ".join(f"{', '.join(labels)} -> {cls}" for cls, labels in groups.items())


def label_mapping(task: Task, dataset: Dataset, labels: set[str]) -> LabelMapping:
    """The first rule of the module's list that maps every one of ``labels`` (the labels of the
    cases evaluated) onto ``task``; an InputError naming the labels that fit no rule otherwise."""
    for rule, mapping in _candidates(task, dataset, labels):
        if labels <= set(mapping):
            via = f"{dataset.name} task {task.name!r}" if rule == "dataset task" else ""
            return LabelMapping(rule, {label: mapping[label] for label in sorted(labels)}, task.classes, via)
    raise InputError(dataset.root, f"labels {sorted(labels - set(task.mapping))} are not classes of task "
                                   f"{task.name!r} ({', '.join(task.classes)}), nor labels of its training data "
                                   f"({', '.join(task.mapping)}), and no documented mapping relates them")


def _candidates(task: Task, dataset: Dataset, labels: set[str]):
    yield "run", dict(task.mapping)
    yield "class names", {c: k for k, c in enumerate(task.classes)}
    theirs = dataset.tasks.get(task.name)
    if theirs is not None and not theirs.multilabel and _corresponds(theirs, task):
        index = {c: task.classes.index(c) for c in theirs.classes if c in task.classes}
        if task.is_binary:  # the same question: negative with negative, positive with positive
            index = {c: k for k, c in enumerate(theirs.classes)}
        yield "dataset task", {label: index[theirs.classes[k]] for label, k in theirs.mapping.items()}
    if task.is_binary and task.positive in labels:
        yield "one-vs-rest", {label: int(label == task.positive) for label in labels}


def _corresponds(theirs: Task, ours: Task) -> bool:
    if ours.is_binary:
        return theirs.is_binary and theirs.positive == ours.positive
    return set(theirs.classes) == set(ours.classes)
