"""The run directory: its files, the checks before training writes into it, and the run record.

    RUN_DIR/
      config.yaml     the resolved config (the file's settings with the command line's overrides)
      run.json        the run record (:class:`RunRecord`): task, input normalisation, data, stages, timing
      split.json      the case ids of each split (train, val, heldout)
      metrics.json    the validation metrics of the final model
      ...             each stage's files (weights, history, heads) in ``stage_dir(folder)``

A run is trained once: a finished run, a run of another config or a folder that is not a run is
refused, never overwritten; an unfinished run of the same config resumes. The record is a frozen,
versioned dataclass read through typed fields; records written before the stages existed
(layout 1) are converted when read.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

import medsight
from medsight.data.base import Task
from medsight.engine.checkpoint import CHECKPOINT
from medsight.errors import InputError, MedsightError
from medsight.io import jsonable, save_json

CONFIG_FILE, RECORD_FILE, SPLIT_FILE, METRICS_FILE = "config.yaml", "run.json", "split.json", "metrics.json"
LAYOUT_VERSION = 2


@dataclass(frozen=True)
class InputInfo:
    """What the networks see: channels and size after preprocessing, and the training set's
    per-channel mean and std (of the images scaled to [0, 1]) that every batch is normalised by."""

    channels: int
    image_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class DataInfo:
    """Where the training cases came from, and how many went to each split."""

    format: str
    root: str
    train: int
    val: int
    heldout: int


@dataclass(frozen=True)
class StageRecord:
    """How far one stage got, and what it kept. Network stages fill in the epochs; stages that
    fit estimators describe them in ``fitted`` (their arrays are in the stage's safetensors file)."""

    finished: bool = False
    best_epoch: int | None = None  # the epoch whose weights were kept
    epochs_run: int = 0
    monitor: str | None = None  # the validation metric that chose the epoch
    validation: Mapping[str, Any] = field(default_factory=dict)  # what validation gave the kept model
    fitted: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRecord:
    recipe: str
    task: Task | None
    input: InputInfo
    data: DataInfo
    stages: Mapping[str, StageRecord] = field(default_factory=dict)
    finished: bool = False
    train_seconds: float | None = None
    device: str | None = None
    world_size: int = 1  # the processes that trained it (torchrun), each on its share of every batch
    medsight_version: str = medsight.__version__
    version: int = LAYOUT_VERSION

    def stage(self, name: str) -> StageRecord:
        return self.stages.get(name, StageRecord())

    def with_stage(self, name: str, stage: StageRecord) -> RunRecord:
        return dataclasses.replace(self, stages={**self.stages, name: stage})

    def to_json(self) -> dict:
        out = jsonable(dataclasses.asdict(self))
        if self.task is not None:
            out["task"] = {"name": self.task.name, "classes": list(self.task.classes),
                           "mapping": dict(self.task.mapping), "multilabel": self.task.multilabel}
        return out

    @classmethod
    def from_json(cls, raw: dict, source: Path) -> RunRecord:
        try:
            if "version" not in raw:
                raw = _from_layout_1(raw)
            task = raw.get("task")
            return cls(
                recipe=raw["recipe"],
                task=None if task is None else Task(task["name"], tuple(task["classes"]), dict(task["mapping"]),
                                                    bool(task.get("multilabel", False))),
                input=InputInfo(int(raw["input"]["channels"]), tuple(raw["input"]["image_size"]),
                                tuple(raw["input"]["mean"]), tuple(raw["input"]["std"])),
                data=DataInfo(**raw["data"]),
                stages={name: StageRecord(**stage) for name, stage in raw.get("stages", {}).items()},
                finished=bool(raw.get("finished")), train_seconds=raw.get("train_seconds"),
                device=raw.get("device"), world_size=int(raw.get("world_size", 1)), medsight_version=raw.get("medsight_version", "unknown"),
                version=int(raw["version"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(source, f"not a medsight run record ({type(exc).__name__}: {exc})") from None


# The stages of each recipe as layout 1 (no stages) kept them, all in the run directory itself.
_LAYOUT_1_STAGES = {"classification": ("network",), "segmentation": ("network",), "multilabel": ("network",),
                    "descriptors": ("descriptors",), "fuse_tsd": ("cnn", "descriptors"),
                    "fgfv": ("cnn", "descriptors")}


def _from_layout_1(raw: dict) -> dict:
    """A record of layout 1 (one flat dict) in layout 2's terms."""
    stages = {}
    for name in _LAYOUT_1_STAGES.get(raw["recipe"], ()):
        if name == "descriptors":
            fitted = {k: raw[k] for k in ("heads", "feature_names", "encoder") if k in raw}
            stages[name] = {"finished": bool(raw.get("finished")), "fitted": fitted}
        else:
            stages[name] = {"finished": bool(raw.get("finished")), "best_epoch": raw.get("best_epoch"),
                            "epochs_run": raw.get("epochs_run", 0), "monitor": raw.get("monitor")}
    return {**raw, "version": 1, "stages": stages,
            "input": {"channels": raw["in_channels"], "image_size": raw["image_size"], "mean": raw["mean"],
                      "std": raw["std"]}}


class RunDir:
    """A run directory on disk. Creating the object touches nothing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def stage_dir(self, folder: str = "") -> Path:
        """Where a stage writes its files: the run directory itself, or a subfolder of it."""
        return self.path / folder

    # -- before training ----------------------------------------------------------------------
    def resumable(self, config: dict) -> bool:
        """Whether this folder holds progress of an unfinished run of ``config`` to resume
        (writes nothing). A finished run, another config, a run of an earlier layout or a folder
        that is not a run are refused."""
        if not self.path.exists() or not any(self.path.iterdir()):
            return False
        saved_config = self.path / CONFIG_FILE
        if not saved_config.is_file():
            raise MedsightError(f"{self.path}: folder exists and is not a medsight run; choose another --out")
        record = self.read_record() if (self.path / RECORD_FILE).is_file() else None
        if record is not None and record.finished:
            raise MedsightError(f"{self.path}: holds a finished run; choose another --out")
        saved = yaml.safe_load(saved_config.read_text())
        if saved != config:
            diff = sorted(_diff_keys(saved, config))
            raise MedsightError(f"{self.path}: holds an unfinished run with a different config "
                                f"({', '.join(diff)}); resume it with the same settings or choose another --out")
        progress = record is not None and (any(s.finished for s in record.stages.values())
                                           or any(self.path.rglob(CHECKPOINT)))
        if progress and record.version < LAYOUT_VERSION:
            raise MedsightError(f"{self.path}: holds an unfinished run of an earlier medsight that cannot be "
                                "resumed; choose another --out")
        return progress

    def create(self, config: dict) -> None:
        """Start afresh (an earlier attempt that never got as far as a checkpoint is cleared)."""
        if self.path.exists() and (self.path / CONFIG_FILE).is_file():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))

    # -- the files ------------------------------------------------------------------------------
    def read_config(self) -> dict:
        return yaml.safe_load((self.path / CONFIG_FILE).read_text())

    def read_record(self) -> RunRecord:
        path = self.path / RECORD_FILE
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot read the run record ({exc})") from None
        return RunRecord.from_json(raw, path)

    def write_record(self, record: RunRecord) -> None:
        save_json(record.to_json(), self.path / RECORD_FILE)

    def write_split(self, split: Mapping[str, list[str]]) -> None:
        save_json({name: list(ids) for name, ids in split.items()}, self.path / SPLIT_FILE)

    def split_ids(self, name: str) -> list[str]:
        """The ids of one split (train, val, heldout); empty when the run has no such split."""
        path = self.path / SPLIT_FILE
        return list(json.loads(path.read_text()).get(name, [])) if path.is_file() else []

    def write_metrics(self, validation: Mapping[str, Any], best_epoch: int | None) -> None:
        save_json(jsonable({"validation": dict(validation), "best_epoch": best_epoch}), self.path / METRICS_FILE)

    def read_metrics(self) -> dict:
        path = self.path / METRICS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def finished_record(self) -> RunRecord:
        """The record of a finished run, or an error saying why this is not one."""
        for name in (CONFIG_FILE, RECORD_FILE):
            if not (self.path / name).is_file():
                raise InputError(self.path, f"not a finished medsight run directory ({name} is missing)")
        record = self.read_record()
        if not record.finished:
            raise InputError(self.path, "training has not finished (resume it with medsight train)")
        return record


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in set(a) | set(b):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [prefix.rstrip(".")] if a != b else []
