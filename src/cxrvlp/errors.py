"""Errors and problem records that name the file and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DataError(Exception):
    """A data set root or file that cannot be used; the message says what to do."""


class MissingFileError(DataError, FileNotFoundError):
    def __init__(self, path: Path, what: str, fix: str):
        self.path = Path(path)
        super().__init__(f"{what} not found: {path}. {fix}")


class ImageReadError(DataError):
    """An image that exists but cannot be decoded (corrupt, truncated, unsupported)."""

    def __init__(self, path: Path | str, reason: str, fix: str = ""):
        self.path = Path(path)
        self.reason = reason
        message = f"cannot read image {path}: {reason}"
        super().__init__(f"{message}. {fix}" if fix else message)


@dataclass(frozen=True)
class Problem:
    """One row or file a reader skipped, with the reason: counted and logged, never silent."""

    source: str  # file (and row) the problem is in
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"
