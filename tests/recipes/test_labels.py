"""How the labels of evaluated data map onto a run's task (issue 17, item 1): the run's own labels,
its class names, the dataset's task of the same name (ISIC-2017's melanoma-vs-rest for a PH2
melanoma run), the positive class against the rest; and an error naming labels that fit none."""

from pathlib import Path

import pytest

from medsight.data import open_dataset
from medsight.data.base import Dataset, Sample, Task
from medsight.data.isic import CLASSES_2017, TASKS_2017
from medsight.data.ph2 import TASKS as PH2_TASKS
from medsight.errors import InputError
from medsight.recipes.labels import describe_mapping, label_mapping

PH2_MELANOMA = PH2_TASKS["melanoma"]  # classes nevus, melanoma; from common_nevus, atypical_nevus, melanoma


def dataset(labels, tasks=None, name="folder") -> Dataset:
    samples = [Sample(f"c{i}", Path(f"c{i}.png"), diagnosis=d) for i, d in enumerate(labels)]
    return Dataset(name, Path("/data") / name, samples, tuple(sorted(set(labels))), tasks or {})


def test_the_runs_own_labels_come_first():
    m = label_mapping(PH2_MELANOMA, dataset(["common_nevus", "melanoma"]), {"common_nevus", "melanoma"})
    assert m.rule == "run" and m.mapping == {"common_nevus": 0, "melanoma": 1}


def test_labels_spelled_as_the_runs_class_names():
    labels = {"nevus", "melanoma"}
    m = label_mapping(PH2_MELANOMA, dataset(sorted(labels)), labels)
    assert m.rule == "class names" and m.mapping == {"nevus": 0, "melanoma": 1}
    assert m.to_json() == {"rule": "class names", "mapping": {"melanoma": "melanoma", "nevus": "nevus"}}


def test_isic2017_onto_a_ph2_melanoma_run_through_its_melanoma_task():
    data = dataset(list(CLASSES_2017), TASKS_2017, name="isic2017")
    m = label_mapping(PH2_MELANOMA, data, set(CLASSES_2017))
    assert m.rule == "dataset task" and m.via == "isic2017 task 'melanoma'"
    assert m.mapping == {"melanoma": 1, "nevus": 0, "seborrheic_keratosis": 0}
    assert describe_mapping(m.to_json()) == ("dataset task (isic2017 task 'melanoma'): melanoma -> melanoma; "
                                             "nevus, seborrheic_keratosis -> nevus")


def test_the_positive_class_against_the_rest():
    labels = {"melanoma", "bcc", "nevus"}
    m = label_mapping(PH2_MELANOMA, dataset(sorted(labels)), labels)
    assert m.rule == "one-vs-rest" and m.mapping == {"bcc": 0, "melanoma": 1, "nevus": 0}


def test_a_multiclass_run_needs_its_classes_by_name():
    isic_diagnosis = TASKS_2017["diagnosis"]
    labels = {"melanoma", "bcc"}
    with pytest.raises(InputError, match=r"labels \['bcc'\] are not classes of task 'diagnosis'") as info:
        label_mapping(isic_diagnosis, dataset(sorted(labels)), labels)
    assert str(info.value).startswith("/data/folder")
    # a dataset task of the same name with the same classes under other labels
    other = Task("diagnosis", ("melanoma", "nevus", "seborrheic_keratosis"), {"MEL": 0, "NV": 1, "SK": 2})
    m = label_mapping(isic_diagnosis, dataset(["MEL", "NV", "SK"], {"diagnosis": other}), {"MEL", "NV", "SK"})
    assert m.rule == "dataset task" and m.mapping == {"MEL": 1, "NV": 0, "SK": 2}


def test_labels_that_fit_no_rule():
    with pytest.raises(InputError, match=r"labels \['bcc', 'df'\] are not classes of task 'melanoma'"):
        label_mapping(PH2_MELANOMA, dataset(["bcc", "df"]), {"bcc", "df"})


def test_real_isic2017_and_ph2_map_onto_each_others_melanoma_task(isic2017, ph2):
    isic, ph2_data = open_dataset(isic2017), open_dataset(ph2)
    isic_labels = {s.diagnosis for s in isic.samples if s.diagnosis}
    m = label_mapping(PH2_MELANOMA, isic, isic_labels)
    assert m.rule == "dataset task" and m.to_json()["mapping"] == {
        "melanoma": "melanoma", "nevus": "nevus", "seborrheic_keratosis": "nevus"}
    melanoma = sum(m.mapping[s.diagnosis] for s in isic.samples if s.diagnosis)
    assert melanoma == 374 + 30  # ISIC-2017 training and validation melanomas (datasets/README.md)
    m = label_mapping(isic.tasks["melanoma"], ph2_data, {s.diagnosis for s in ph2_data.samples})
    assert m.rule == "dataset task" and m.via == "ph2 task 'melanoma'" and m.to_json()["mapping"] == {
        "atypical_nevus": "other", "common_nevus": "other", "melanoma": "melanoma"}
