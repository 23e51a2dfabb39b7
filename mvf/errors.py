"""The one exception type for bad user input: the CLI prints its message on one line and exits 2."""
from __future__ import annotations

from pathlib import Path


class MvfError(Exception):
    """A problem with the user's input (file, config, arguments), worded for the user.

    The message should name the offending file or key and the problem, on one line.
    """


def file_error(path: str | Path, problem: str) -> MvfError:
    """Build an `MvfError` reading ``<path>: <problem>``."""
    return MvfError(f"{path}: {problem}")
