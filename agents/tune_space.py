"""The search space of ``train.py tune``: which clipper keywords are searched, over what ranges.

Grammar of ``--space`` (comma-separated, one entry per searched keyword of the clipper)::

    space := entry (',' entry)*
    entry := key '=' kind ':' spec
    kind  := float LO:HI        uniform on [LO, HI]
           | logfloat LO:HI     log-uniform on [LO, HI] (LO > 0; alias: log)
           | int LO:HI          an integer in [LO, HI]
           | logint LO:HI       an integer, log-uniform (LO >= 1)
           | choice A|B|...     one of the listed values (alias: cat); each read by envs.spec.parse_value

e.g. ``z_thresh=float:1.5:4,alpha=float:0.8:0.99`` or ``max_norm=logfloat:0.01:10`` or
``mode=choice:zscore|percentile``. Keys are the clipper's constructor keywords; every bound and choice is
checked by constructing the clipper (:func:`clipping.make_clipper`) before anything runs, and so is every
sampled setting. Built-in clippers have a default space (:data:`DEFAULT_SPACES`).

Pure bookkeeping: Optuna and torch are imported only when they are used.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from agents.compare_spec import ClipPart, ClipSpec

__all__ = [
    "DEFAULT_SPACES",
    "KINDS",
    "Param",
    "check_part",
    "check_space",
    "default_space",
    "parse_space",
    "tuned_spec",
]

#: The search kinds and their aliases.
KINDS = {
    "float": "float",
    "logfloat": "logfloat",
    "log": "logfloat",
    "int": "int",
    "logint": "logint",
    "choice": "choice",
    "cat": "choice",
}

#: The default search space of each built-in clipper that has a threshold to calibrate.
DEFAULT_SPACES = {
    "norm": "max_norm=logfloat:0.05:5",
    "value": "clip_value=logfloat:0.01:10",
    "zclip": "z_thresh=float:1.5:4,alpha=float:0.8:0.99",
    "autoclip": "quantile=float:0.5:0.99",
    "quantile": "target_quantile=float:0.5:0.99",
    "agc": "clip_factor=logfloat:0.001:0.1",
}

_EXAMPLE = "e.g. --space z_thresh=float:1.5:4,alpha=float:0.8:0.99"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Param:
    """One searched keyword.

    Attributes:
        name: the clipper's keyword.
        kind: ``float``, ``logfloat``, ``int``, ``logint`` or ``choice``.
        low, high: the bounds (numeric kinds; inclusive).
        choices: the values of a ``choice``.
    """

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def text(self) -> str:
        """Canonical text, e.g. ``z_thresh=float:1.5:4.0``."""
        if self.kind == "choice":
            return f"{self.name}=choice:" + "|".join(str(c) for c in self.choices)
        return f"{self.name}={self.kind}:{self.low}:{self.high}"

    def distribution(self) -> Any:
        """The Optuna distribution of this parameter."""
        import optuna.distributions as od

        if self.kind == "choice":
            return od.CategoricalDistribution(list(self.choices))
        if self.kind in ("int", "logint"):
            return od.IntDistribution(int(self.low), int(self.high), log=self.kind == "logint")
        return od.FloatDistribution(float(self.low), float(self.high), log=self.kind == "logfloat")

    def corners(self) -> list[Any]:
        """Values that must all be valid for the clipper: both bounds, or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


def _number(text: str, *, integer: bool, where: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number; {_EXAMPLE}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: bound {text!r} must be finite")
    if integer:
        if value != int(value):
            raise ValueError(f"{where}: {text!r} is not an integer (an int range needs integer bounds)")
        return int(value)
    return value


def _parse_entry(entry: str) -> Param:
    where = f"--space entry {entry!r}"
    key, eq, rest = entry.partition("=")
    key = key.strip()
    if not eq or not _KEY.match(key):
        raise ValueError(f"{where}: expected key=kind:..., {_EXAMPLE}")
    kind_text, colon, spec = rest.strip().partition(":")
    kind = KINDS.get(kind_text.strip().lower())
    if kind is None or not colon:
        raise ValueError(
            f"{where}: unknown kind {kind_text.strip()!r}; use one of float:LO:HI, logfloat:LO:HI, "
            f"int:LO:HI, logint:LO:HI, choice:A|B ({_EXAMPLE})"
        )
    if kind == "choice":
        from envs.spec import parse_value

        texts = [t.strip() for t in spec.split("|")]
        if not spec.strip() or any(not t for t in texts):
            raise ValueError(
                f"{where}: choice needs values separated by '|', e.g. mode=choice:zscore|percentile"
            )
        values = tuple(parse_value(t) for t in texts)
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"{where}: a choice is listed twice")
        return Param(key, kind, choices=values)
    bounds = spec.split(":")
    if len(bounds) != 2:
        raise ValueError(f"{where}: expected {kind}:LO:HI (two bounds), got {spec!r}")
    integer = kind in ("int", "logint")
    low, high = (_number(b.strip(), integer=integer, where=where) for b in bounds)
    if not low < high:
        raise ValueError(f"{where}: the low bound {low} must be below the high bound {high}")
    if kind == "logfloat" and low <= 0:
        raise ValueError(f"{where}: a log-uniform range needs a low bound > 0, got {low}")
    if kind == "logint" and low < 1:
        raise ValueError(f"{where}: a log-uniform int range needs a low bound >= 1, got {low}")
    return Param(key, kind, low, high)


def parse_space(text: str) -> tuple[Param, ...]:
    """Parse ``--space`` (see the module docstring). Does not check the keywords against a clipper
    (:func:`check_part` does).

    Raises:
        ValueError: naming the bad entry: syntax, unknown kind, bad bounds, a key given twice.
    """
    if not text or not text.strip():
        raise ValueError(f"--space is empty; {_EXAMPLE}")
    from envs.spec import split_top_level  # not clipping's splitter: a typo should not wait for torch

    params = [_parse_entry(e.strip()) for e in split_top_level(text) if e.strip()]
    names = [p.name for p in params]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--space: keyword(s) {dup} given more than once")
    return tuple(params)


def default_space(name: str) -> tuple[Param, ...]:
    """The default space of a built-in clipper.

    Raises:
        ValueError: the clipper has none (``none``, ``sb3``, a plugin): the message asks for ``--space``.
    """
    if name not in DEFAULT_SPACES:
        known = ", ".join(f"{k} ({v})" for k, v in DEFAULT_SPACES.items())
        raise ValueError(
            f"--clip {name!r} has no default search space; give one with --space, {_EXAMPLE} "
            f"(defaults: {known})"
        )
    return parse_space(DEFAULT_SPACES[name])


def tuned_spec(base: ClipPart, params: dict[str, Any]) -> ClipSpec:
    """The clipper spec of one setting: ``base``'s fixed keywords, then the searched ones (both parts)."""
    kwargs = dict(base.kwargs)
    kwargs.update(params)
    part = ClipPart(base.name, tuple(kwargs.items()))
    return ClipSpec(part, part)


def check_part(part: ClipPart, *, what: str) -> None:
    """Construct the clipper of ``part``; a ValueError naming ``what`` (the setting) if it is rejected."""
    from clipping import make_clipper

    try:
        make_clipper(part.name, **dict(part.kwargs))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{what}: the clipper rejects {part.text!r}: {' '.join(str(err).split())}") from err


def check_space(base: ClipPart, space: tuple[Param, ...]) -> None:
    """Check a space against its clipper before anything runs: no keyword both fixed in ``--clip`` and
    searched, and every bound / choice accepted by the clipper (each at the others' low bounds).

    Raises:
        ValueError: naming the keyword and the fix.
    """
    fixed = {k for k, _ in base.kwargs}
    both = sorted(fixed & {p.name for p in space})
    if both:
        raise ValueError(
            f"--space searches {both}, which --clip {base.text!r} also fixes; drop it from one of them"
        )
    if not space:
        raise ValueError(f"--space has no entries; {_EXAMPLE}")
    low = {p.name: p.corners()[0] for p in space}
    for p in space:
        for value in p.corners():
            check_part(tuned_spec(base, {**low, p.name: value}).policy, what=f"--space {p.text!r}")
