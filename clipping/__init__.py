"""Gradient clippers with fixed and adaptive thresholds (pure PyTorch).

Use between ``loss.backward()`` and ``optimizer.step()``::

    from clipping import make_clipper

    clipper = make_clipper("zclip")              # or "none", "norm", "value", "autoclip", "agc", "quantile"
    loss.backward()
    stats = clipper.clip(model.parameters())     # scales the .grad in place, one device->host sync
    if not stats.skip:                           # NaN/inf gradients were zeroed: skip this update
        optimizer.step()
    checkpoint["clipper"] = clipper.state_dict() # resume with clipper.load_state_dict(...)

Every clipper returns a :class:`ClipStats` (``grad_norm``, ``threshold``, ``bound``, ``clipped``,
``nonfinite``, ``spike``, ``skip``) and keeps all its statistics in ``state_dict()``. This package imports
``torch`` and the standard library only.
"""

from clipping.agc import AdaptiveGradientClip
from clipping.autoclip import AutoClip
from clipping.base import Clipper, ClipStats
from clipping.fixed import NoClip, NormClip, ValueClip
from clipping.quantile import QuantileTrackingClip
from clipping.registry import CLIPPERS, make_clipper
from clipping.zclip import ZClip

__all__ = [
    "CLIPPERS",
    "AdaptiveGradientClip",
    "AutoClip",
    "ClipStats",
    "Clipper",
    "NoClip",
    "NormClip",
    "QuantileTrackingClip",
    "ValueClip",
    "ZClip",
    "make_clipper",
]
