"""Adaptive clipping by geometric quantile tracking (Andrew et al., 2021), without the privacy noise."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from clipping.base import Clipper, check_real

__all__ = ["QuantileTrackingClip"]


class QuantileTrackingClip(Clipper):
    """Clip the global norm to a threshold ``C`` that tracks the ``target_quantile`` of the norms online.

    Each call clips the pre-clip global norm ``g`` with the current ``C`` (scale ``C / (g + 1e-6)`` iff
    ``g > C``), then takes one geometric step of online quantile estimation::

        b = 1 if g <= C else 0                      # "fraction unclipped" of a one-norm batch
        C = C * exp(-lr * (b - target_quantile))

    ``C`` rises by ``exp(lr * target_quantile)`` after a clipped step and falls by
    ``exp(-lr * (1 - target_quantile))`` after an unclipped one, so it settles where a fraction
    ``target_quantile`` of the norms lies below it. The update is multiplicative: scale-free, able to move
    by orders of magnitude (``ln(ratio) / (lr * target)`` steps), never reaching 0.
    ``ClipStats.bound`` is the ``C`` used on the step, i.e. ``threshold`` (on a non-finite step: the current
    ``C``, which that step does not move); a norm ``<= bound`` is never clipped.
    This is the paper's Algorithm with ``b`` computed exactly (no Gaussian noise, i.e. TensorFlow
    Federated's ``PrivateQuantileEstimationProcess.no_noise(..., geometric_update=True)``) and one norm per
    step instead of one per client.

    Defaults: ``lr=0.2`` is the paper's geometric learning rate. ``target_quantile=0.9`` instead of the
    paper's median: there clipping bounds each user's privacy sensitivity and clipping half the updates is
    the point; here the goal is to clip spikes, i.e. the top decile (consistent with ``autoclip``).
    ``initial=1.0`` (paper: 0.1): a neutral scale; with the defaults C reaches 10x or 1/10x its start in
    about 13 / 115 steps (``ln 10 / (lr * q)`` and ``ln 10 / (lr * (1 - q))``), a norm scale of 200 in ~30
    steps and one of 0.3 in ~60.

    Args:
        target_quantile: Fraction in ``[0, 1]`` of norms meant to stay unclipped.
        lr: Geometric learning rate ``eta_C >= 0`` (0 freezes the threshold).
        initial: Initial threshold ``C_0 > 0``.

    State:
        threshold (float): the current ``C`` (applied on the next call).
        nonfinite_count (int): calls with NaN/inf gradients (they do not move ``C``).

    References:
        Andrew, Thakkar, McMahan & Ramaswamy, "Differentially Private Learning with Adaptive Clipping",
        NeurIPS 2021, https://arxiv.org/abs/1905.03871.
    """

    name = "quantile"

    def __init__(self, target_quantile: float = 0.9, lr: float = 0.2, initial: float = 1.0) -> None:
        self.target_quantile = check_real("quantile", "target_quantile", target_quantile, low=0.0, high=1.0,
                                          low_inclusive=True, example="0.9")
        self.lr = check_real("quantile", "lr", lr, low=0.0, low_inclusive=True, example="0.2")
        self.initial = check_real("quantile", "initial", initial, low=0.0, example="1.0")
        super().__init__({"target_quantile": self.target_quantile, "lr": self.lr, "initial": self.initial})
        self._reset()

    @property
    def threshold(self) -> float:
        """The threshold ``C`` the next call will apply."""
        return self._threshold

    def _update(self, norm: float) -> tuple[float, float, bool, bool]:
        threshold = self._threshold
        below = 1.0 if norm <= threshold else 0.0
        self._threshold = threshold * math.exp(-self.lr * (below - self.target_quantile))
        return threshold, threshold, False, False

    def _bound(self) -> float:
        return self._threshold

    def _state_keys(self) -> tuple[str, ...]:
        return ("threshold",)

    def _get_state(self) -> dict[str, Any]:
        return {"threshold": self._threshold}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self._threshold = check_real("quantile", "state['threshold']", state["threshold"], low=0.0,
                                     example="1.0")

    def _reset(self) -> None:
        self._threshold = self.initial
