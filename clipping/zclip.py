"""ZClip: z-score based adaptive clipping with EMA statistics (Kumar et al., 2025)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from clipping.base import Clipper, check_bool, check_choice, check_int, check_real

__all__ = ["ZClip"]


class ZClip(Clipper):
    """ZClip: detect gradient-norm spikes with a z-score against EMA statistics and clip them adaptively.

    Update rule, in the order of the reference package ``zclip`` (``ZClip.step``), for the pre-clip global
    norm ``g`` of each call:

    1. Warm-up (the first ``warmup_steps`` finite norms): append ``g`` to a buffer; once it holds
       ``warmup_steps`` norms, ``mean`` and ``var`` become their population mean and variance. No adaptive
       clipping during warm-up (only the ``max_grad_norm`` cap, if any).
    2. Afterwards, with ``std = var ** 0.5``:

       * ``mode="zscore"``: ``z = (g - mean) / (std + eps)``; a *spike* is ``z > z_thresh``, clipped to
         ``clip_val = (mean + z_thresh * std / (z / z_thresh)) * clip_factor`` (``clip_option=
         "adaptive_scaling"``: the bigger the outlier, the harder it is pulled back) or to
         ``clip_val = mean`` (``clip_option="mean"``, ``clip_factor`` unused, as in the package);
       * ``mode="percentile"``: a spike is ``g > mean + z_thresh * std``, clipped to that bound
         (``clip_option`` and ``clip_factor`` unused, as in the package).

       The threshold applied is ``min(clip_val, max_grad_norm)`` on a spike and ``max_grad_norm`` (or none)
       otherwise; gradients are scaled by ``threshold / (g + 1e-6)`` iff ``g > threshold``.
    3. Unless the step was a spike and ``skip_update_on_spike`` (then only the statistics are left alone:
       the clipped gradient is still applied, ``ClipStats.stats_frozen`` is set and ``skip`` is not): EMA
       update with the *clipped* norm
       ``x = clip_val`` on a spike, ``g`` otherwise (the ``max_grad_norm`` cap is not fed back), variance
       against the *updated* mean::

           mean = alpha * mean + (1 - alpha) * x
           var  = alpha * var  + (1 - alpha) * (x - mean) ** 2

    The arithmetic is python float64, written in the package's operation order, so given the same norm
    sequence the statistics match the package bit for bit.

    ``ClipStats.bound`` (not in the package) is the norm level above which this step would clip, reported on
    every step so that it plots as a continuous curve (``threshold`` is ``inf`` on every calm step when there
    is no cap): ``min(mean + z_thresh * std, max_grad_norm)`` from the statistics *before* this step's update,
    i.e. the spike-detection level, and ``max_grad_norm`` (or ``inf``) during warm-up, including the step that
    completes it. On a spike it is still that level (``threshold`` is then the applied ``min(clip_val,
    max_grad_norm)``); on a non-finite step it is the level in force. In ``percentile`` mode this is exactly
    the spike test (``g > mean + z_thresh * std``). In ``zscore`` mode the exact crossing ``z = z_thresh``
    lies at ``mean + z_thresh * (std + eps)``, ``z_thresh * eps`` (2.5e-6 by default) higher: the reported
    level leaves that sliver out so that both modes report the same statistic and ``g <= bound`` implies "no
    spike" with a margin that float rounding cannot cross (for norms below ~1e9 with the default ``eps``).
    Either way a norm ``<= bound`` is never clipped.

    Level shifts (a property of the package's rule, reproduced here, measured with the tests'
    ``test_zclip_*level_shift*``): after an abrupt, lasting *upward* shift of the norm by many stds, the
    ``zscore`` mode never adopts the new level. With ``skip_update_on_spike=True`` the statistics simply
    stay frozen. With the default ``False`` the EMA is fed the clipped norm, which lies at most
    ``z_thresh * std`` (``adaptive_scaling``: ``z_thresh**2 * std / z``; ``mean``: 0) above the mean, so
    ``var`` decays geometrically, the mean moves by a bounded total and every later step is a spike
    clipped to ~the old mean (e.g. norms 1 -> 10: clipped to ~1.03-1.1 for thousands of steps). The
    gradient keeps being applied (clipped), but its norm is pinned at the pre-shift level - ZClip then
    acts as a fixed norm clip. ``mode="percentile"`` feeds back ``mean + z_thresh * std``, which lets the
    mean climb by ``(1 - alpha) * z_thresh * std`` per step and keeps the variance up, so it does follow
    the shift (with the defaults and 10 % noise: the first run of 20 calm steps starts ~25, ~50 and ~85
    steps after a 2x, 10x and 100x shift). Gradual drifts: norms rising 1 -> 10 linearly over 500 (2000)
    steps with 10 % noise, 20 seeds each - the default (``adaptive_scaling``, no skipping) and
    ``percentile`` followed in 20/20 (20/20); ``clip_option="mean"`` locked at the old level in 5/20 (2/20)
    and ``skip_update_on_spike=True`` in 2/20 (0/20): one run of spikes during the ramp can be enough.

    Epoch structure (PPO; measured by ``benchmarks/spike_clustering.py``, ``benchmarks/SPIKES.md``): the
    statistics see the norms of every epoch over each rollout, and a value gradient halves after the first
    epoch, so on the value part ~45 % of each rollout's first-epoch steps are flagged as spikes (~4 % on
    later epochs; half of all value spikes) and their gradient is about halved. These are the epoch
    pattern, not outliers (per-epoch statistics leave 0.1 %); the policy part shows no such clustering.

    Where this implementation deviates from the package, on purpose:

    * ``max_grad_norm`` defaults to ``None`` (package: 1.0). A fixed absolute cap of 1.0 is tuned to LLM
      pre-training norms; the norms of an RL policy or value branch depend on the reward scale and the
      network and can sit far above 1 for long stretches, where such a cap would bind on every step and
      turn ZClip into plain norm clipping at 1.0. Pass a number to get the package's cap.
    * A non-finite norm zeroes the gradients, is counted in ``nonfinite_count`` and never reaches the
      buffer, ``mean`` or ``var`` (in the package one NaN makes ``mean``/``var`` NaN, every later z-score
      comparison false, and clipping silently stops for good).
    * Every statistic is in ``state_dict()`` (the package has none).
    * ``ClipStats.spike`` reports the detection, and ``ClipStats.stats_frozen`` a spike kept out of the
      statistics (``skip_update_on_spike``); the package reports neither. As in the package, a spike's
      gradient is always clipped and applied: ``ClipStats.skip`` (do not step) is set on non-finite steps
      only. (Skipping the optimizer step on every spike would freeze the model for good after a level
      shift, see below.)
    * The warm-up cap clips iff ``g > max_grad_norm`` (the package calls ``clip_grad_norm_``, which also
      rescales by ~(1 - 1e-6 / g) when ``g`` is within 1e-6 below the cap).
    * The global norm comes from fused foreach kernels (package: per-tensor ``.norm``, then
      ``sqrt(sum(n ** 2))``): equal up to float32 rounding.

    Args:
        alpha: EMA smoothing factor in ``(0, 1)`` for mean and variance (0.97: ~33-step memory).
        z_thresh: Spike threshold on the z-score (``zscore``) or number of stds (``percentile``).
        warmup_steps: Finite norms collected before the EMA starts.
        mode: ``"zscore"`` or ``"percentile"``.
        clip_option: ``"adaptive_scaling"`` or ``"mean"`` (``zscore`` mode only).
        clip_factor: Multiplier of the adaptive-scaling threshold (0.5-0.9 clips more aggressively).
        max_grad_norm: Optional absolute cap on the global norm, applied on every step (``None`` or
            ``inf``: none).
        skip_update_on_spike: Leave mean/var untouched on spikes (the package's option of that name) and
            flag ``ClipStats.stats_frozen``; the clipped gradient is still applied. After a lasting upward
            level shift every later step is a spike and the statistics stay frozen for good (see "Level
            shifts" above); watch the fraction of ``stats_frozen`` steps.
        eps: Added to the std in the z-score denominator (keeps a zero-variance warm-up finite).

    State:
        warmup_buffer (list[float]): warm-up norms collected so far (emptied when the EMA starts).
        initialized (bool): whether the EMA has started.
        mean (float | None): EMA mean of the (clipped) norms, ``None`` during warm-up.
        var (float | None): EMA variance of the (clipped) norms, ``None`` during warm-up.
        nonfinite_count (int): calls with NaN/inf gradients (never fed into the statistics).

    References:
        Kumar, Owen, Roy Chowdhury & Güra, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training", 2025,
        https://arxiv.org/abs/2504.02507 (reference code: github.com/bluorion-com/ZClip, package ``zclip``).
    """

    name = "zclip"

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        warmup_steps: int = 25,
        mode: str = "zscore",
        clip_option: str = "adaptive_scaling",
        clip_factor: float = 1.0,
        max_grad_norm: float | None = None,
        skip_update_on_spike: bool = False,
        eps: float = 1e-6,
    ) -> None:
        owner = "zclip"
        self.alpha = check_real(owner, "alpha", alpha, low=0.0, high=1.0, high_inclusive=False,
                                example="0.97")
        self.z_thresh = check_real(owner, "z_thresh", z_thresh, low=0.0, example="2.5")
        self.warmup_steps = check_int(owner, "warmup_steps", warmup_steps, low=1, example="25")
        self.mode = check_choice(owner, "mode", mode, ("zscore", "percentile"))
        self.clip_option = check_choice(owner, "clip_option", clip_option, ("adaptive_scaling", "mean"))
        self.clip_factor = check_real(owner, "clip_factor", clip_factor, low=0.0, example="1.0")
        self.max_grad_norm = check_real(owner, "max_grad_norm", max_grad_norm, low=0.0, allow_none=True,
                                        allow_inf=True, example="1.0")
        self.skip_update_on_spike = check_bool(owner, "skip_update_on_spike", skip_update_on_spike)
        self.eps = check_real(owner, "eps", eps, low=0.0, example="1e-6")
        super().__init__({
            "alpha": self.alpha, "z_thresh": self.z_thresh, "warmup_steps": self.warmup_steps,
            "mode": self.mode, "clip_option": self.clip_option, "clip_factor": self.clip_factor,
            "max_grad_norm": self.max_grad_norm, "skip_update_on_spike": self.skip_update_on_spike,
            "eps": self.eps,
        })
        self._reset()

    # --------------------------------------------------------------------------------- statistics
    @property
    def initialized(self) -> bool:
        return self._initialized

    @property
    def mean(self) -> float | None:
        return self._mean

    @property
    def var(self) -> float | None:
        return self._var

    def _cap(self) -> float:
        return math.inf if self.max_grad_norm is None else self.max_grad_norm

    def _bound(self) -> float:
        """``ClipStats.bound`` from the statistics in force (before this step's update)."""
        if not self._initialized:
            return self._cap()
        # Same expression as the percentile-mode spike bound in _clip_value, so the two agree bit for bit.
        return min(self._mean + self.z_thresh * self._var ** 0.5, self._cap())

    def _update(self, norm: float) -> tuple[float, float, bool, bool]:
        bound = self._bound()  # before the update: the level this very step is judged against
        if not self._initialized:
            self._buffer.append(norm)
            if len(self._buffer) >= self.warmup_steps:
                # Population statistics, written as in the package (sum / len), hence bit-identical.
                self._mean = sum(self._buffer) / len(self._buffer)
                self._var = sum((x - self._mean) ** 2 for x in self._buffer) / len(self._buffer)
                self._initialized = True
                self._buffer = []
            return self._cap(), bound, False, False

        clip_val = self._clip_value(norm)
        spike = clip_val is not None
        threshold = min(clip_val, self._cap()) if spike else self._cap()
        if spike and self.skip_update_on_spike:
            # The package's option: statistics frozen, the clipped gradient is still applied.
            return threshold, bound, True, True
        x = clip_val if spike else norm  # the EMA sees the clipped norm (not the max_grad_norm cap)
        self._mean = self.alpha * self._mean + (1 - self.alpha) * x
        self._var = self.alpha * self._var + (1 - self.alpha) * (x - self._mean) ** 2
        return threshold, bound, spike, False

    def _clip_value(self, norm: float) -> float | None:
        """The package's ``_compute_clip_val``: the clip target on a spike, ``None`` otherwise."""
        std = self._var ** 0.5
        if self.mode == "percentile":
            bound = self._mean + self.z_thresh * std
            return bound if norm > bound else None
        z = (norm - self._mean) / (std + self.eps)
        if z <= self.z_thresh:
            return None
        if self.clip_option == "adaptive_scaling":
            eta = z / self.z_thresh  # a bigger outlier is pulled back harder
            return (self._mean + (self.z_thresh * std) / eta) * self.clip_factor
        return self._mean

    # ------------------------------------------------------------------------------------- state
    def _state_keys(self) -> tuple[str, ...]:
        return ("warmup_buffer", "initialized", "mean", "var")

    def _get_state(self) -> dict[str, Any]:
        return {"warmup_buffer": list(self._buffer), "initialized": self._initialized,
                "mean": self._mean, "var": self._var}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        initialized = bool(state["initialized"])
        if initialized and (state["mean"] is None or state["var"] is None):
            raise ValueError("zclip: state dict says initialized but has no mean/var")
        self._buffer = [float(x) for x in state["warmup_buffer"]]
        self._initialized = initialized
        self._mean = None if state["mean"] is None else float(state["mean"])
        self._var = None if state["var"] is None else float(state["var"])

    def _reset(self) -> None:
        self._buffer: list[float] = []
        self._initialized = False
        self._mean: float | None = None
        self._var: float | None = None
