"""Errors that the command line turns into exit code 2 (bad input or usage)."""

from __future__ import annotations

from pathlib import Path


class MedsightError(Exception):
    """Bad input or usage: the CLI prints the message and exits with code 2."""


class InputError(MedsightError):
    """A problem with one input file: the message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.case_id: str | None = None  # the case it rejects, where it rejects one (set by the loader)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ConfigError(MedsightError):
    """A problem with a config file or an override: the message names the key."""


class FeatureError(MedsightError, ValueError):
    """A descriptor cannot be computed for this input (empty mask, NaN inside the mask, ...).

    Also a ValueError, so scikit-learn code that catches bad input keeps working; the command
    line adds the file name. ``index``, when given, is the position of the failing case in a
    batch (``medsight.features.describe.describe_cases``), so the caller can name its file."""

    def __init__(self, *args, index: int | None = None):
        super().__init__(*args)
        self.index = index
