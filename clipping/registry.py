"""Name -> clipper registry and :func:`make_clipper`."""

from __future__ import annotations

import inspect
from typing import Any

from clipping.agc import AdaptiveGradientClip
from clipping.autoclip import AutoClip
from clipping.base import Clipper, did_you_mean
from clipping.fixed import NoClip, NormClip, ValueClip
from clipping.quantile import QuantileTrackingClip
from clipping.zclip import ZClip

__all__ = ["CLIPPERS", "make_clipper"]

#: Clipper name -> class (the names accepted by :func:`make_clipper` and the CLI).
CLIPPERS: dict[str, type[Clipper]] = {
    cls.name: cls
    for cls in (NoClip, NormClip, ValueClip, AutoClip, ZClip, AdaptiveGradientClip, QuantileTrackingClip)
}


def make_clipper(name: str, **kwargs: Any) -> Clipper:
    """Build a clipper by name.

    Args:
        name: One of ``CLIPPERS`` (``none, norm, value, autoclip, zclip, agc, quantile``); case-insensitive.
        **kwargs: The clipper's constructor keywords (see each class; ``clipper.config`` lists them).

    Returns:
        A fresh :class:`Clipper`.

    Raises:
        ValueError: Unknown name, unknown or missing keyword, or an invalid value - the message lists
            the valid choices and the closest match.

    Example:
        >>> clipper = make_clipper("zclip", z_thresh=3.0)
        >>> stats = clipper.clip(model.parameters())  # doctest: +SKIP
    """
    if not isinstance(name, str):
        raise ValueError(f"clipper name must be a string, one of {', '.join(CLIPPERS)}; got {name!r}")
    key = name.strip().lower()
    if key not in CLIPPERS:
        raise ValueError(
            f"unknown clipper {name!r}{did_you_mean(key, CLIPPERS)}; valid names: {', '.join(CLIPPERS)}"
        )
    cls = CLIPPERS[key]
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p != "self"]
    for kw in kwargs:
        if kw not in valid:
            raise ValueError(
                f"clipper {key!r} got an unknown keyword {kw!r}{did_you_mean(kw, valid)}; "
                f"valid keywords: {', '.join(valid) if valid else '(none)'}"
            )
    missing = [p for p in valid if params[p].default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        raise ValueError(f"clipper {key!r} needs the keyword(s) {', '.join(missing)}, e.g. "
                         f"make_clipper({key!r}, {missing[0]}=1.0)")
    return cls(**kwargs)
