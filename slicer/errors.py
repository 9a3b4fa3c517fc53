"""The slicer's exception tree. User mistakes say what was wrong and what would be accepted."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class MLFSError(Exception):
    """Base of every error the slicer raises on purpose."""


class ConfigError(MLFSError, ValueError):
    """A subnet config, search space or setting is invalid. The message names the field and the allowed values."""


class TeacherError(MLFSError):
    """A teacher is unknown, not prepared, or could not be prepared."""


class CheckpointError(MLFSError):
    """A checkpoint folder or weight file is missing, corrupt, or does not match the model it is loaded into."""


class AdapterMismatchError(CheckpointError):
    """An adapter stack was made for another base model, rank, target list or shape."""


class MergeError(MLFSError):
    """Merging adapters into base weights produced non-finite values."""


class ExportError(MLFSError):
    """An export failed, or its validation against PyTorch or its quantisation quality gate did not pass.
    ``details`` holds the figures behind it (``kind``: ``parity`` or ``int8_gate``), for whoever records it."""

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


@dataclass(frozen=True)
class BadRow:
    """One rejected data row: where it is and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def describe_bad_rows(path: object, problems: list[BadRow], total_rows: int, shown: int = 5) -> str:
    """``N bad row(s) of M in PATH:`` and the first ``shown`` of them, one per line."""
    lines = "\n".join(f"  {p}" for p in problems[:shown])
    more = f"\n  ... and {len(problems) - shown} more" if len(problems) > shown else ""
    return f"{len(problems)} bad row(s) of {total_rows} in {path}:\n{lines}{more}"


class DataError(MLFSError):
    """A data file is malformed (the message names ``file:line`` and the reason), or a dataset could not be
    prepared from its source. ``problems`` holds every bad row found, not only those in the message."""

    def __init__(self, message: str, problems: Iterable[BadRow] = ()) -> None:
        super().__init__(message)
        self.problems: list[BadRow] = list(problems)
