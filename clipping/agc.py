"""Adaptive Gradient Clipping, unit-wise (Brock et al., 2021, NFNets)."""

from __future__ import annotations

import math

import torch

from clipping.base import Clipper, ClipStats, check_real, on_one_device, per_tensor_norms

__all__ = ["AdaptiveGradientClip"]


class AdaptiveGradientClip(Clipper):
    """AGC: cap each unit's gradient norm relative to that unit's parameter norm.

    A *unit* is one output row (dim 0) of a tensor with ``ndim >= 2`` (the norm runs over all other dims,
    as for ``nn.Linear``/``nn.ConvNd`` weights); a tensor with ``ndim <= 1`` is a single unit, as in timm's
    ``adaptive_clip_grad``. For each unit with gradient norm ``|G_i|`` and parameter norm ``|W_i|``::

        cap_i = clip_factor * max(|W_i|, eps)
        G_i  <- G_i                               if |G_i| < cap_i
                G_i * cap_i / max(|G_i|, 1e-6)    otherwise

    which is timm's formula (the result is bit-identical). It clips what it is given: the paper leaves the
    final classifier layer out, and with SB3's zero-initialised biases and ``log_std`` the cap of those
    tensors starts at ``clip_factor * eps = 1e-5`` - which tensors to pass is the caller's choice.

    Reported statistics: ``grad_norm`` is the pre-clip global L2 norm (from the unit norms, equal to
    ``clip_grad_norm_``'s up to float rounding); ``threshold`` is the sum-of-caps bound
    ``sqrt(sum_i cap_i ** 2)``, a global-norm bound that the clipped gradient never exceeds (it moves with
    the weights); ``clipped`` is ``True`` iff at least one unit was scaled down. Per-unit norms need
    per-tensor reductions, so AGC costs a few kernels per tensor (still a single device->host sync).

    ``ClipStats.bound`` is that same sum-of-caps bound (``= threshold``), also on a non-finite step (the caps
    come from the parameters, not from the gradients; non-finite if a parameter is). It is not a
    trigger: AGC clips unit by unit, so a gradient whose global norm is below it can still have a unit
    above its cap (and is then clipped); ``inf`` on a call without gradients.

    Args:
        clip_factor: Ratio ``lambda`` of gradient norm to parameter norm allowed per unit (paper: 0.01 for
            large batches; larger values for small batches); ``inf`` never clips.
        eps: Floor on the parameter norm, so zero-initialised units can still move.

    State:
        nonfinite_count (int): calls with NaN/inf gradients (or parameters). No other state: the caps
        come from the current parameters.

    References:
        Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without
        Normalization", ICML 2021, https://arxiv.org/abs/2102.06171.
    """

    name = "agc"

    def __init__(self, clip_factor: float = 0.01, eps: float = 1e-3) -> None:
        self.clip_factor = check_real("agc", "clip_factor", clip_factor, low=0.0, allow_inf=True,
                                      example="0.01")
        self.eps = check_real("agc", "eps", eps, low=0.0, example="1e-3")
        super().__init__({"clip_factor": self.clip_factor, "eps": self.eps})

    def _clip(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> ClipStats:
        device = grads[0].device
        # Unit norms: one fused call for all tensors with ndim <= 1, a dim-reduction per matrix.
        flat = [i for i, g in enumerate(grads) if g.ndim <= 1]
        g_unit: list[torch.Tensor | None] = [None] * len(grads)
        p_unit: list[torch.Tensor | None] = [None] * len(grads)
        if flat:
            for i, gn, pn in zip(flat, per_tensor_norms([grads[i] for i in flat]),
                                 per_tensor_norms([params[i].detach() for i in flat]), strict=True):
                g_unit[i], p_unit[i] = gn.reshape(1), pn.reshape(1)
        for i, g in enumerate(grads):
            if g.ndim > 1:
                dims = tuple(range(1, g.ndim))
                g_unit[i] = torch.linalg.vector_norm(g, dim=dims)
                p_unit[i] = torch.linalg.vector_norm(params[i].detach(), dim=dims)
        gn_all = torch.cat([n.to(device) for n in g_unit])
        pn_all = torch.cat([n.to(device) for n in p_unit])

        caps = pn_all.clamp(min=self.eps).mul_(self.clip_factor)
        ratio = caps / gn_all.clamp(min=1e-6)
        scale = torch.where(gn_all < caps, torch.ones_like(ratio), ratio)
        total = torch.linalg.vector_norm(gn_all)
        # float64: with a huge clip_factor the caps' sum of squares would overflow float32.
        bound = torch.linalg.vector_norm(caps, dtype=torch.float64)
        n_clipped = (scale < 1.0).sum()
        params_finite = torch.isfinite(pn_all).all()
        norm, threshold, n, ok = torch.stack(
            [total.double(), bound, n_clipped.double(), params_finite.double()]
        ).tolist()  # the one device->host sync
        if not (math.isfinite(norm) and ok):  # NaN/inf gradient (or parameter: its caps would be NaN)
            return self._neutralize(grads, norm, threshold)
        clipped = n > 0
        if clipped:
            factors = [s.reshape((-1,) + (1,) * (g.ndim - 1)) if g.ndim > 1 else s.reshape(())
                       for s, g in zip(torch.split(scale, [u.numel() for u in g_unit]), grads, strict=True)]
            if on_one_device(grads) and device.type in ("cpu", "cuda"):
                torch._foreach_mul_(grads, factors)
            else:  # several devices or a backend without foreach kernels
                for g, f in zip(grads, factors, strict=True):
                    g.mul_(f.to(g.device))
        return ClipStats(grad_norm=norm, threshold=threshold, bound=threshold, clipped=clipped,
                         nonfinite=False)
