"""Fixed-threshold clippers: ``none``, ``norm`` and ``value``."""

from __future__ import annotations

import math

import torch

from clipping.base import (
    Clipper,
    ClipStats,
    check_real,
    global_norm,
    on_one_device,
    per_tensor_norms,
    stack_norms,
)

__all__ = ["NoClip", "NormClip", "ValueClip"]


class NoClip(Clipper):
    """Measures the global gradient norm and changes nothing (a baseline and a pure monitor).

    The only exception is the package-wide safety rule: a non-finite gradient zeroes all given gradients
    and sets ``ClipStats.nonfinite`` (the optimizer step is meant to be skipped anyway).

    ``ClipStats.bound`` is always ``math.inf``: no norm is ever clipped.

    State:
        nonfinite_count (int): calls with NaN/inf gradients.

    References:
        None: this is the unclipped baseline.
    """

    name = "none"

    def __init__(self) -> None:
        super().__init__({})

    def _update(self, norm: float) -> tuple[float, float, bool, bool]:
        return math.inf, math.inf, False, False


class NormClip(Clipper):
    """Global L2-norm clipping, identical to :func:`torch.nn.utils.clip_grad_norm_`.

    The gradients are multiplied by ``min(max_norm / (norm + 1e-6), 1)``, computed on the device with the
    same kernels as torch, so the result is bit-for-bit the one of ``clip_grad_norm_(params, max_norm)`` for
    finite gradients of one device and dtype. ``clipped`` is ``True`` iff that factor is below 1. Unlike
    torch, a non-finite norm zeroes the gradients (torch would turn them all into NaN).

    ``ClipStats.bound`` is ``max_norm`` on every step (also non-finite ones), like ``threshold``. Because of
    torch's ``+ 1e-6`` a norm within 1e-6 below ``max_norm`` is still rescaled, by a factor
    ``~1 - 1e-6 / norm`` (a no-op in practice): ``grad_norm <= bound - 1e-6`` is never clipped.

    Args:
        max_norm: Threshold on the global norm; default 0.5, the default of SB3's PPO and A2C. ``inf``
            (also the string ``"inf"``) never clips: a pure monitor, like ``none``.

    State:
        nonfinite_count (int): calls with NaN/inf gradients.

    References:
        Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks", ICML 2013.
    """

    name = "norm"

    def __init__(self, max_norm: float = 0.5) -> None:
        self.max_norm = check_real("norm", "max_norm", max_norm, low=0.0, allow_inf=True, example="0.5")
        super().__init__({"max_norm": self.max_norm})

    def _clip(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> ClipStats:
        total = global_norm(grads)
        # Same expression as torch.nn.utils.clip_grads_with_norm_, so the factor matches bit for bit.
        coef = torch.clamp(self.max_norm / (total + 1e-6), max=1.0)
        norm, factor = torch.stack([total, coef]).tolist()  # the one device->host sync
        if not math.isfinite(norm):
            return self._neutralize(grads, norm)
        clipped = factor < 1.0
        if clipped:  # multiplying by exactly 1.0 (what torch does otherwise) changes nothing: skip it
            if on_one_device(grads) and grads[0].device.type in ("cpu", "cuda"):
                torch._foreach_mul_(grads, coef)
            else:  # several devices or a backend without foreach kernels
                for g in grads:
                    g.mul_(coef.to(g.device))
        return ClipStats(grad_norm=norm, threshold=self.max_norm, bound=self.max_norm, clipped=clipped,
                         nonfinite=False)

    def _bound(self) -> float:
        return self.max_norm


class ValueClip(Clipper):
    """Element-wise clipping to ``[-clip_value, clip_value]``, as :func:`torch.nn.utils.clip_grad_value_`.

    ``grad_norm`` is the global L2 norm before clipping, ``threshold`` is ``clip_value`` (an element bound,
    not a norm bound) and ``clipped`` is ``True`` iff some element's magnitude exceeded ``clip_value``.

    ``ClipStats.bound`` is always ``math.inf``: whether anything is clipped depends on the largest element,
    not on the global norm, so there is no norm level that decides it. ``clip_value * sqrt(n_elements)``
    is not one: below it a single large element is still clipped (a norm of 0.06 made of one element 0.06
    is clipped at ``clip_value=0.05``), it is only the norm above which *some* element must exceed
    ``clip_value``. ``inf`` says "no norm-level clipping"; read ``clipped`` for what happened.

    Args:
        clip_value: Bound on each gradient element's magnitude (required: there is no standard default);
            ``inf`` never clips.

    State:
        nonfinite_count (int): calls with NaN/inf gradients.

    References:
        Mikolov, "Statistical Language Models Based on Neural Networks", PhD thesis, Brno University of
        Technology, 2012 (element-wise gradient clipping).
    """

    name = "value"

    def __init__(self, clip_value: float) -> None:
        self.clip_value = check_real("value", "clip_value", clip_value, low=0.0, allow_inf=True,
                                     example="1.0")
        super().__init__({"clip_value": self.clip_value})

    def _clip(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> ClipStats:
        total = global_norm(grads)
        absmax = stack_norms(per_tensor_norms(grads, math.inf), grads[0].device).max()
        norm, largest = torch.stack([total, absmax.to(total.dtype)]).tolist()  # the one sync
        if not math.isfinite(norm):
            return self._neutralize(grads, norm)
        clipped = largest > self.clip_value
        if clipped:
            if grads[0].device.type in ("cpu", "cuda"):  # (scalar bounds: several devices are fine)
                torch._foreach_clamp_min_(grads, -self.clip_value)
                torch._foreach_clamp_max_(grads, self.clip_value)
            else:
                for g in grads:
                    g.clamp_(min=-self.clip_value, max=self.clip_value)
        return ClipStats(grad_norm=norm, threshold=self.clip_value, bound=math.inf, clipped=clipped,
                         nonfinite=False)
