"""The one exception type for bad user input: the CLI prints its message on one line and exits 2."""
from __future__ import annotations

from pathlib import Path

from renderer.errors import RendererError


class MvfError(Exception):
    """A problem with the user's input (file, config, arguments), worded for the user.

    The message should name the offending file or key and the problem, on one line.
    """


def file_error(path: str | Path, problem: str) -> MvfError:
    """Build an `MvfError` reading ``<path>: <problem>``."""
    return MvfError(f"{path}: {problem}")


# What the CLI reports as one line with exit status 2: mvf's own errors and the renderer's.
INPUT_ERRORS: tuple[type[Exception], ...] = (MvfError, RendererError)
