"""What a reader module declares about its layout, so ``medsight.data`` can list, detect and open
formats from plain objects instead of building module and function names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from medsight.data.base import Dataset


@dataclass(frozen=True)
class Format:
    """One on-disk layout (or generated data source) and how to recognise and read it."""

    name: str  # what ``format=`` / ``--format`` takes, e.g. "lidc-voi"
    read: Callable[..., Dataset]  # (root, **options) -> Dataset
    detect: Callable[[Path], bool] | None  # None: never detected from a path (generated data)
    aliases: tuple[str, ...] = ()  # other names ``format=`` accepts
    generated: bool = False  # needs no path: ``open_dataset(None, format=name)`` makes the data
    description: str = ""  # one line, for listings and messages
    # when ``detect`` refuses a path that holds part of this layout: what it lacks (None: not a near miss)
    lacks: Callable[[Path], str | None] | None = None
    masks: str = "none"  # "always": the layout gives every case a mask; "optional"; "none"


__all__ = ["Format"]
