"""Errors the CLI reports as one line (``error: <message>``) without a traceback, and their helpers."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["UserError", "did_you_mean"]


class UserError(ValueError):
    """A mistake in what the user asked for (bad option, missing file, incompatible run folder).

    The message names the bad value and says how to fix it. Subclasses ``ValueError`` so callers that catch
    ``ValueError`` (as for every other bad argument in perpclip) also catch it. The CLI catches this type
    only: a plain ``ValueError`` from deeper down is a bug and keeps its traceback. Code that takes user
    input (loading data, building configs and envs) converts the envs' ``ValueError`` into a ``UserError``
    where the input enters.
    """


def did_you_mean(value: object, valid: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest valid name, or an empty string."""
    close = difflib.get_close_matches(str(value), list(valid), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
