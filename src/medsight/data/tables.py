"""The one way readers load a CSV: every read problem becomes an :class:`InputError` naming the
file, and missing columns are reported with the columns that were found.

pandas is imported on first use, so importing a reader (and ``medsight.data``) stays cheap."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

from medsight.errors import InputError

if TYPE_CHECKING:
    import pandas as pd


def read_table(path: str | Path, required: Iterable[str] = (), dtype: type | Mapping[str, type] | None = str,
               hint: str = "") -> pd.DataFrame:
    """A CSV as a DataFrame with stripped column names, or an ``InputError`` naming ``path``.

    ``dtype=str`` (the default, for label tables typed by hand): every cell is a string, empty
    cells stay "" and blanks after a comma are dropped. Anything else (``None``, or a dict such
    as ``{"seriesuid": str}``) is passed to pandas, which reads numbers as numbers and empty
    cells as NaN. ``required`` columns must be present; ``hint`` is added to that error."""
    import pandas as pd

    options = dict(dtype=str, keep_default_na=False, skipinitialspace=True) if dtype is str else dict(dtype=dtype)
    try:
        df = pd.read_csv(path, **options)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read CSV ({exc.__class__.__name__}: {exc})") from None
    df.columns = [str(c).strip() for c in df.columns]
    require_columns(path, df.columns, required, hint)
    return df


def require_columns(path: str | Path, columns: Iterable[str], required: Iterable[str], hint: str = "") -> None:
    """An ``InputError`` naming ``path`` when a ``required`` column is not among ``columns``; for
    readers whose required columns depend on what the table holds."""
    columns = list(columns)
    missing = [c for c in required if c not in columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)} (found: {', '.join(columns)}){hint}")


__all__ = ["read_table", "require_columns"]
