"""Gradient clippers with fixed and adaptive thresholds (pure PyTorch).

Use between ``loss.backward()`` and ``optimizer.step()``::

    from clipping import make_clipper

    clipper = make_clipper("zclip")              # or "none", "norm", "value", "autoclip", "agc", "quantile"
    loss.backward()
    stats = clipper.clip(model.parameters())     # scales the .grad in place, one device->host sync
    if not stats.skip:                           # only NaN/inf gradients (zeroed) skip the update
        optimizer.step()
    checkpoint["clipper"] = clipper.state_dict() # resume with clipper.load_state_dict(...)

Every clipper returns a :class:`ClipStats` (``grad_norm``, ``threshold``, ``bound``, ``clipped``,
``nonfinite``, ``spike``, ``skip``, ``stats_frozen``) and keeps all its statistics in ``state_dict()``.
Plugins: ``make_clipper("mypkg.mod:MyClipper")`` or an entry point in the ``perpclip.clippers`` group (see
:mod:`clipping.registry`). This package imports ``torch`` and the standard library only.
"""

from clipping.agc import AdaptiveGradientClip
from clipping.autoclip import AutoClip
from clipping.base import Clipper, ClipStats
from clipping.fixed import NoClip, NormClip, ValueClip
from clipping.quantile import QuantileTrackingClip
from clipping.registry import CLIPPERS, ENTRY_POINT_GROUP, available_clippers, make_clipper, resolve_clipper
from clipping.zclip import ZClip

__all__ = [
    "CLIPPERS",
    "ENTRY_POINT_GROUP",
    "AdaptiveGradientClip",
    "AutoClip",
    "ClipStats",
    "Clipper",
    "NoClip",
    "NormClip",
    "QuantileTrackingClip",
    "ValueClip",
    "ZClip",
    "available_clippers",
    "make_clipper",
    "resolve_clipper",
]
