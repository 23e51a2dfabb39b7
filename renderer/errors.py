"""The renderer's exception for bad arguments (shapes, sizes, settings): one line, no traceback
at the command line (`mvf.cli` reports it like `mvf.errors.RendererError`)."""
from __future__ import annotations


class RendererError(ValueError):
    """A bad argument to a renderer function; the message is one line."""
