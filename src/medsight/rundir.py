"""The run directory: its files, the checks before training writes into it, and the run record.

    RUN_DIR/
      config.yaml     the resolved config (the file's settings with the command line's overrides)
      run.json        the run record (:class:`RunRecord`): task, input normalisation, data, stages, timing
      split.json      the case ids of each split (train, val, heldout; withheld: the official validation
                      cases a run with data.val_source: train neither trained nor chose on)
      metrics.json    the validation metrics of the final model
      medsight.lock   while a command writes the run: its pid and host (:meth:`RunDir.locked`)
      ...             each stage's files (weights, history, heads) in ``stage_dir(folder)``

A run is trained once: a finished run, a run of another config or a folder that is not a run is
refused, never overwritten; an unfinished run of the same config resumes. The record is a frozen,
versioned dataclass read through typed fields; records written before the stages existed
(layout 1) are converted when read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

import medsight
from medsight.data.base import Task
from medsight.engine.checkpoint import CHECKPOINT
from medsight.errors import InputError, MedsightError
from medsight.io import jsonable, save_json

CONFIG_FILE, RECORD_FILE, SPLIT_FILE, METRICS_FILE = "config.yaml", "run.json", "split.json", "metrics.json"
LOCK_FILE = "medsight.lock"  # present while a process writes the run: {"pid", "host", "since"}
LAYOUT_VERSION = 2


@dataclass(frozen=True)
class InputInfo:
    """What the networks see: channels and size after preprocessing, and the training set's
    per-channel mean and std (of the images scaled to [0, 1]) that every batch is normalised by.

    And what the training images were like (:mod:`medsight.recipes.familiar`; None in runs of
    earlier releases): their file formats, their smallest and largest size and aspect ratio as
    read, and per channel the 1st and 99th percentile of the per-image mean and std of the
    network input."""

    channels: int
    image_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    formats: tuple[str, ...] | None = None
    sizes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    aspect: tuple[float, float] | None = None  # width / height, 2D images
    image_mean: tuple[tuple[float, float], ...] | None = None
    image_std: tuple[tuple[float, float], ...] | None = None

    @classmethod
    def from_json(cls, raw: dict) -> InputInfo:
        nested = lambda v: None if v is None else tuple(tuple(x) for x in v)  # noqa: E731
        return cls(int(raw["channels"]), tuple(raw["image_size"]), tuple(raw["mean"]), tuple(raw["std"]),
                   formats=None if raw.get("formats") is None else tuple(raw["formats"]),
                   sizes=nested(raw.get("sizes")),
                   aspect=None if raw.get("aspect") is None else tuple(raw["aspect"]), image_mean=nested(raw.get("image_mean")),
                   image_std=nested(raw.get("image_std")))


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
    # the decision threshold on each positive class's probability, chosen on the validation cases
    # (predict.decision); empty: predict.threshold decides (runs before thresholds were chosen)
    thresholds: Mapping[str, float] = field(default_factory=dict)
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
                input=InputInfo.from_json(raw["input"]),
                data=DataInfo(**raw["data"]),
                stages={name: StageRecord(**stage) for name, stage in raw.get("stages", {}).items()},
                thresholds={str(k): float(v) for k, v in raw.get("thresholds", {}).items()},
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
    def resumable(self, config: dict, complete: Callable[[dict], dict] | None = None) -> bool:
        """Whether this folder holds progress of an unfinished run of ``config`` to resume
        (writes nothing). A finished run, an unfinished run of another config, a run of an
        earlier layout or a folder that is not a run are refused. ``complete`` fills the saved
        config's missing keys (options added since it was written) with their defaults before
        the comparison, so an upgrade alone does not block a resume. An attempt that never finished
        an epoch or a stage (a config error found late, an interrupted data loading) holds nothing
        to keep: it is started afresh, whatever its config."""
        if not self._entries():
            return False
        saved_config = self.path / CONFIG_FILE
        if not saved_config.is_file():
            raise MedsightError(f"{self.path}: folder exists and is not a medsight run; choose another --out")
        record = self.read_record() if (self.path / RECORD_FILE).is_file() else None
        if record is not None and record.finished:
            raise MedsightError(f"{self.path}: holds a finished run; choose another --out")
        if not self._progress(record):
            return False
        saved = self.read_config()
        if complete is not None:
            saved = complete(saved)
        if saved != config:
            diff = sorted(_diff_keys(saved, config))
            raise MedsightError(f"{self.path}: holds an unfinished run with a different config "
                                f"({', '.join(diff)}); resume it with the same settings or choose another --out")
        if record.version < LAYOUT_VERSION:
            raise MedsightError(f"{self.path}: holds an unfinished run of an earlier medsight that cannot be "
                                "resumed; choose another --out")
        return True

    def _progress(self, record: RunRecord | None) -> bool:
        """Whether training got anywhere: a finished stage, or a loop checkpoint (an epoch, or
        ``checkpoint_every`` steps, was trained)."""
        return record is not None and (any(s.finished for s in record.stages.values())
                                       or any(self.path.rglob(CHECKPOINT)))

    def discard_attempt(self) -> None:
        """Remove this folder when it holds an attempt without progress, or nothing but the lock
        (after a failed first try, so that no half-made run directory is left behind)."""
        if not self.path.is_dir():
            return
        if (self.path / CONFIG_FILE).is_file():
            try:
                record = self.read_record() if (self.path / RECORD_FILE).is_file() else None
            except MedsightError:
                record = None
            if self._progress(record):
                return
        elif self._entries():
            return
        shutil.rmtree(self.path, ignore_errors=True)

    def create(self, config: dict) -> None:
        """Start afresh (an earlier attempt that never got as far as a checkpoint is cleared;
        the lock stays)."""
        for entry in self._entries():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))

    def _entries(self) -> list[Path]:
        """What the folder holds besides the lock and a lock being made ([] when it does not exist)."""
        if not self.path.is_dir():
            return []
        return [p for p in self.path.iterdir() if p.name != LOCK_FILE and not p.name.startswith(f".{LOCK_FILE}.")]

    # -- one writer at a time ---------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self):
        """Hold the run directory's lock while the block runs (it is created if need be): a lock
        file naming this process and host, made atomically (a hard link of a complete file), and
        removed when the block ends, by success or error. Another live holder is an error naming
        it; a lock left by a process that no longer runs on this host is stale and taken over."""
        if self.path.exists() and not self.path.is_dir():
            raise MedsightError(f"{self.path}: exists and is not a folder; choose another --out")
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK_FILE
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        mine = self.path / f".{LOCK_FILE}.{me['pid']}"
        try:
            mine.write_text(json.dumps(me) + "\n")
            while True:
                try:
                    os.link(mine, lock)
                    break
                except FileExistsError:
                    holder = _lock_holder(lock)
                    if holder is not None and not _stale(holder):
                        raise MedsightError(
                            f"{self.path}: another medsight process writes this run directory (pid "
                            f"{holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}); wait "
                            f"for it to end or choose another --out (if no such process runs, delete {lock})") from None
                    lock.unlink(missing_ok=True)  # stale, or gone meanwhile: try again
        except BaseException:
            mine.unlink(missing_ok=True)
            if created:  # only if still empty: another process may have made it meanwhile and hold it
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            raise
        mine.unlink(missing_ok=True)
        try:
            yield self
        finally:
            if _lock_holder(lock) == me:
                lock.unlink(missing_ok=True)

    # -- the files ------------------------------------------------------------------------------
    def read_config(self) -> dict:
        """The saved config; a file that is not YAML or not a mapping is an InputError naming it."""
        path = self.path / CONFIG_FILE
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InputError(path, f"cannot read the run's config ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        if not isinstance(raw, dict):
            raise InputError(path, "not a medsight run config: expected a mapping of keys at the top level")
        return raw

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
        """The ids of one split (train, val, heldout, withheld); empty when the run has no such split."""
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


def _lock_holder(lock: Path) -> dict | None:
    """The holder a lock file names (None when it vanished); an unreadable file names no one alive."""
    try:
        holder = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": socket.gethostname(), "since": "?"}
    return holder if isinstance(holder, dict) else {"pid": None, "host": socket.gethostname(), "since": "?"}


def _stale(holder: dict) -> bool:
    """Whether the lock's process is known to be gone: only a process on this host can be checked."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in set(a) | set(b):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [prefix.rstrip(".")] if a != b else []
