"""Unlabelled training data by patient: the labelled fraction per class, whole patients, a fixed
seed, and never a validation or held-out patient; LIDC rating-3 nodules kept without a label."""

import csv
from collections import Counter

import numpy as np
import pytest

from medsight.data import open_dataset
from medsight.data.base import Sample
from medsight.data.label_fraction import hide_patients, reader_unlabelled

from builders import write_vois


def cases(n_patients=40):
    """Patients with 1-3 nodules; a quarter of them malignant (all their nodules)."""
    rng = np.random.default_rng(1)
    samples, labels = [], []
    for p in range(n_patients):
        for k in range(int(rng.integers(1, 4))):
            samples.append(Sample(id=f"P{p}_{k}", image=np.zeros((1, 4, 4), np.uint8), patient_id=f"P{p}"))
            labels.append(int(p % 4 == 0))
    return samples, labels


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 1.0])
def test_the_fraction_of_patients_of_each_class_keeps_its_labels(fraction):
    samples, labels = cases()
    keep, hide = hide_patients(samples, labels, fraction, seed=3)
    assert sorted(keep + hide) == list(range(len(samples)))
    kept = {samples[i].patient_id for i in keep}
    hidden = {samples[i].patient_id for i in hide}
    assert not kept & hidden  # whole patients on one side
    patients = {s.patient_id: y for s, y in zip(samples, labels)}
    per_class = Counter(patients.values())  # 30 benign, 10 malignant patients
    kept_per_class = Counter(patients[p] for p in kept)
    for cls, n in per_class.items():
        assert kept_per_class[cls] == max(1, round(fraction * n)), (cls, fraction)
    if fraction == 1.0:
        assert hide == []


def test_the_choice_follows_the_seed():
    samples, labels = cases()
    assert hide_patients(samples, labels, 0.25, seed=0) == hide_patients(samples, labels, 0.25, seed=0)
    assert hide_patients(samples, labels, 0.25, seed=0) != hide_patients(samples, labels, 0.25, seed=1)


def test_reader_unlabelled_cases_of_validation_or_heldout_patients_are_left_out():
    samples = [Sample(id=f"P{p}_{k}", image=np.zeros((1, 4, 4), np.uint8), patient_id=f"P{p}",
                      diagnosis=None if k == 1 else "benign") for p in range(5) for k in range(2)]
    samples.append(Sample(id="T_1", image=np.zeros((1, 4, 4), np.uint8), patient_id="T", split="test"))

    class Data:
        pass

    data = Data()
    data.samples = samples
    split = {"train": [samples[0], samples[2]], "val": [samples[4]], "heldout": [samples[6]]}
    got = [s.id for s in reader_unlabelled(data, split)]
    assert got == ["P0_1", "P1_1", "P4_1"]  # P2 is in validation, P3 held out, T an official test case


def test_lidc_rating3_nodules_can_be_kept_unlabelled(tmp_path):
    root = write_vois(tmp_path / "vois", n_patients=4)
    table = root / "MetadatabyNoduleMaxVoting.csv"
    rows = list(csv.DictReader(table.open()))
    rows[1]["Malignancy_value"] = 3
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    excluded = open_dataset(root, label_rule="malignancy")
    assert len(excluded.samples) == 7 and list(excluded.excluded) == ["LIDC-IDRI-0000_R_2"]
    kept = open_dataset(root, label_rule="malignancy", rating3="unlabelled")
    assert len(kept.samples) == 8 and kept.excluded == {}
    assert [s.id for s in kept.samples if s.diagnosis is None] == ["LIDC-IDRI-0000_R_2"]
    with pytest.raises(Exception, match="rating3"):
        open_dataset(root, label_rule="malignancy", rating3="maybe")
