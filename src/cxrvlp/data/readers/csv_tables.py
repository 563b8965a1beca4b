"""The CSV helpers every CSV-based reader shares: a label file that cannot be parsed, or lacks
a column, is an error naming the file and the fix, never a pandas traceback."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from cxrvlp.errors import DataError

PUBLISHER_FIX = "Pass the publisher's file, unmodified."


def read_csv_table(path: Path, what: str, **read_options: Any) -> pd.DataFrame:
    """A CSV (plain, .gz or .zip by its name) as strings-as-given, or a DataError naming it."""
    try:
        return pd.read_csv(path, **read_options)
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        zipfile.BadZipFile,
        EOFError,
        OSError,
    ) as error:
        raise DataError(
            f"{what} {path} cannot be read as CSV ({type(error).__name__}: {error}). "
            "Re-download the file; it must be the publisher's CSV, unmodified."
        ) from error


def require_columns(
    frame: pd.DataFrame, columns: Iterable[str], path: Path, what: str, fix: str = PUBLISHER_FIX
) -> None:
    """A DataError naming the file, the missing columns and those it has, and ``fix``."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataError(
            f"{what} {path} lacks column(s) {missing}; it has {list(frame.columns)}. {fix}"
        )


def is_blank(value: object) -> bool:
    """NaN, None or only whitespace: what a CSV gives for an empty cell."""
    return value is None or (isinstance(value, float) and pd.isna(value)) or not str(value).strip()
