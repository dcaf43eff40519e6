"""The one reader of ``key=value`` text: every spec a user types goes through :func:`parse_value`.

Used by ``synthetic:<kind>:key=value,...`` market specs (:mod:`envs.synthetic`), by the ``--hp``, ``--env``,
``--clip`` and ``--clips`` options and by config files (:mod:`agents.config` reads YAML scalars with it), so
the same text means the same value everywhere:

- ``none``, ``null``, ``~`` or nothing: ``None``;
- ``true``/``yes`` and ``false``/``no`` (any case): booleans;
- ``3``, ``-2``, ``1_000``: int; ``0.5``, ``1e-3``, ``inf``, ``-inf``, ``nan`` and YAML's ``.inf``,
  ``-.inf``, ``.nan``: float;
- ``[1, 2]``: a list (items parsed the same way, nesting allowed); ``{a: 1, b=2}``: a dict;
- ``0.4/1.2``: a tuple, when every ``/``-separated part is a number;
- ``'x'``, ``"1"``: the string inside the quotes; anything else: the text itself, stripped (nothing is
  ever evaluated).

Why here: ``envs`` imports the standard library, numpy and pandas only, so this module is importable by every
layer (``agents`` uses it; ``clipping``, which may not import ``envs``, takes it as an argument of its spec
grammar, :mod:`clipping.spec`). Standard library only.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["parse_kwargs", "parse_value", "split_top_level"]

_INT = re.compile(r"^[-+]?\d[\d_]*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRUE = ("true", "yes")
_FALSE = ("false", "no")
_NONE = ("none", "null", "~", "")
_YAML_FLOATS = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes: ``a=[1,2],b=3`` gives two items (stripped)."""
    parts: list[str] = []
    depth, quote, cur = 0, "", []
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _number(t: str) -> int | float | None:
    if _INT.match(t):
        return int(t)
    low = t.lower()
    if low in _YAML_FLOATS:
        return _YAML_FLOATS[low]
    try:
        return float(t)
    except ValueError:
        return None


def parse_value(text: str) -> Any:
    """One value of a ``key=value`` spec (see the module docstring for the table). Never evaluates code."""
    t = str(text).strip()
    low = t.lower()
    if low in _NONE:
        return None
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    if t.startswith("[") and t.endswith("]"):
        inner = t[1:-1].strip()
        return [parse_value(x) for x in split_top_level(inner)] if inner else []
    if t.startswith("{") and t.endswith("}"):
        out: dict[str, Any] = {}
        inner = t[1:-1].strip()
        for item in split_top_level(inner) if inner else []:
            m = re.match(r"^\s*([^:=\s]+)\s*[:=]\s*(.*)$", item, re.S)
            if m is None:
                return t  # not a mapping after all: keep the text
            out[m.group(1).strip("'\"")] = parse_value(m.group(2))
        return out
    number = _number(t)
    if number is not None:
        return number
    if "/" in t:
        parts = [_number(x.strip()) for x in t.split("/")]
        if all(p is not None for p in parts):
            return tuple(parts)
    return t


def parse_kwargs(text: str, *, where: str = "keyword arguments") -> dict[str, Any]:
    """``key=value,key=value`` -> dict, values by :func:`parse_value`; brackets may hold commas.

    ``z_thresh=2.5,mode=[1,2],v=none`` -> ``{"z_thresh": 2.5, "mode": [1, 2], "v": None}``.

    Raises:
        ValueError: an item that is not ``key=value`` with a Python identifier as key, naming ``where``.
    """
    out: dict[str, Any] = {}
    for item in split_top_level(str(text)):
        if not item:
            continue
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not _KEY.match(key):
            raise ValueError(
                f"bad {where} {item!r}: expected key=value pairs separated by commas, e.g. alpha=0.9"
            )
        out[key] = parse_value(raw)
    return out
