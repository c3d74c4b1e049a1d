"""Fixtures shared by the whole suite.

The real datasets live in ``../shared/datasets`` beside the project (one folder each: ``ph2``,
``isic2017``, ``lidc_vois``, ``dermamnist``); the environment variable ``MEDSIGHT_DATASETS`` names
another folder holding them. A test asks for a dataset by fixture (``ph2``, ``isic2017``,
``lidc_vois``, ``dermamnist``, or ``dataset("name")``) and is skipped, naming the missing folder,
when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def datasets_root() -> Path:
    """``$MEDSIGHT_DATASETS`` when set, else ``../shared/datasets`` relative to the project."""
    override = os.environ.get("MEDSIGHT_DATASETS")
    return Path(override).expanduser() if override else PROJECT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def dataset() -> Callable[[str], Path]:
    """``dataset("ph2")``: the path of a real dataset, or a skip naming the folder that is missing."""

    def find(name: str) -> Path:
        path = datasets_root() / name
        if not path.is_dir():
            pytest.skip(f"real dataset {name!r} not found: no folder {path} "
                        "(set MEDSIGHT_DATASETS to the folder that holds it)")
        return path

    return find


@pytest.fixture(scope="session")
def ph2(dataset) -> Path:
    return dataset("ph2")


@pytest.fixture(scope="session")
def isic2017(dataset) -> Path:
    return dataset("isic2017")


@pytest.fixture(scope="session")
def lidc_vois(dataset) -> Path:
    return dataset("lidc_vois")


@pytest.fixture(scope="session")
def dermamnist(dataset) -> Path:
    return dataset("dermamnist")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Tiny networks on a small machine that is also running something else: with two threads
    OpenMP's barriers make them 10-30x slower, and one thread costs little for networks this small.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
