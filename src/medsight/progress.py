"""Progress of long loops over cases, the same way everywhere: a rich progress bar on a terminal,
and otherwise (a log file, a pipe, a batch job) a plain line every ``EVERY`` items or ``SECONDS``
seconds, whichever comes first, and one at the end. A loop shorter than ``EVERY`` items that ends
within ``SECONDS`` prints nothing when not on a terminal."""

from __future__ import annotations

import time
from typing import Iterable, Iterator, TypeVar

from rich.console import Console

T = TypeVar("T")

EVERY = 100  # items between two plain lines
SECONDS = 10.0  # at most this long without a plain line

_stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def track(items: Iterable[T], description: str, console: Console | None = None,
          total: int | None = None) -> Iterator[T]:
    """Yield ``items``, showing how many of ``total`` (default ``len(items)``) are done."""
    console = console or _stderr
    if total is None:
        total = len(items) if hasattr(items, "__len__") else None
    if console.is_terminal:
        from rich.progress import Progress

        with Progress(console=console, transient=True) as progress:
            yield from progress.track(items, total=total, description=description)
        return
    yield from _plain(items, description, console, total)


def _plain(items: Iterable[T], description: str, console: Console, total: int | None) -> Iterator[T]:
    started = last = time.monotonic()
    done = 0
    of = f"/{total}" if total is not None else ""
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if done != total and (done % EVERY == 0 or now - last >= SECONDS):
            console.print(f"{description}: {done}{of} ({now - started:.0f} s)")
            last = now
    if done >= EVERY or last > started:  # a loop that showed progress says when it ended
        console.print(f"{description}: {done}{of} done ({time.monotonic() - started:.0f} s)")
