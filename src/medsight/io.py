"""Writing results: CSV tables, JSON, and output folders that appear whole or not at all.

Every file is written next to its target and renamed into place, so an interrupted command never
leaves a half-written file under the name a later command reads.
"""

from __future__ import annotations

import csv
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medsight.errors import MedsightError


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The file ends with mode 0666 less the umask, as ``open`` would create ``path`` itself
    (``tempfile.mkstemp``, and writers such as safetensors, make it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = str(path.parent / f"{path.name}.{secrets.token_hex(4)}.part")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        mode = os.stat(tmp).st_mode  # what the umask made of 0666
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umasked(mode: int) -> int:
    """``mode`` less the process umask: what ``open`` or ``mkdir`` would give a new file or folder."""
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mode & ~mask


def jsonable(obj: Any) -> Any:
    """A JSON-serialisable copy: NumPy scalars and arrays (and torch tensors) become Python numbers
    and lists, tuples become lists, mapping keys strings, and nan / inf become None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor, without importing torch
        obj = obj.detach().cpu().double().numpy()
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")


def to_json(obj: Any, path: str | Path | None = None, indent: int | None = 2) -> str:
    """Strict JSON text of ``jsonable(obj)`` (nan -> null); also written to ``path`` if given."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False)
    if path is not None:
        Path(path).write_text(text + "\n", encoding="utf-8")
    return text


def save_json(obj: Any, path: str | Path) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n"))


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    """One row per dict, ``fields`` (default: the first row's keys) as the header; None is
    written as an empty cell."""
    fields = fields or (list(rows[0]) if rows else ["id"])
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def check_writable(target: Path) -> None:
    """Refuse, before any work, an output that cannot be written (a read-only folder or file
    system): the nearest existing folder of ``target`` must take a new file. A disk that fills up
    later is still caught when writing; every writer here leaves no half-written file."""
    folder = Path(target)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise MedsightError(f"{target}: {folder} is not a folder; choose another --out")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".medsight-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MedsightError(f"{target}: cannot write in {folder} ({exc.strerror}); choose another --out") from None


def refuse_existing_output(out_dir: Path) -> None:
    """Outputs go to a new or empty folder: nothing a user made is ever overwritten."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MedsightError(f"{out_dir}: exists and is not an empty folder; choose another --out")


def write_new_folder(out_dir: Path, fill: Callable[[Path], None]) -> Path:
    """Let ``fill`` write into ``<out_dir>.partial``, then rename it to ``out_dir`` (new or empty):
    the folder appears complete, or not at all when ``fill`` fails."""
    refuse_existing_output(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
