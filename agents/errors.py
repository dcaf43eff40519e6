"""Errors the CLI reports as one line (``error: <message>``) without a traceback."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """A mistake in what the user asked for (bad option, missing file, incompatible run folder).

    The message names the bad value and says how to fix it. Subclasses ``ValueError`` so callers that catch
    ``ValueError`` (as for every other bad argument in perpclip) also catch it.
    """
