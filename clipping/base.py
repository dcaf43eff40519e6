"""Shared machinery of the clippers: :class:`ClipStats`, the :class:`Clipper` base class and fused helpers.

Every clipper follows the same contract:

* ``clip(parameters)`` scales the ``.grad`` of the given parameters in place and returns a :class:`ClipStats`
  made of python floats/bools;
* a non-finite gradient anywhere zeroes *all* given gradients, sets ``nonfinite``/``skip``, increments
  ``nonfinite_count`` and leaves every other statistic untouched; this is the ONLY case in which ``skip``
  (do not step the optimizer) is set - a clipped gradient is always meant to be applied;
* at most ONE device->host synchronisation per call: the global norm is computed with fused foreach kernels
  (as :func:`torch.nn.utils.clip_grad_norm_` does), copied to the host once, and everything else (running
  statistics, thresholds, decisions) is plain float64 python arithmetic on that single value. Only the
  final in-place scaling goes back to the device. Keeping statistics as python floats is what makes the
  state trivially checkpointable (``state_dict`` holds no tensors) and lets a resumed run clip bit-for-bit
  like the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

__all__ = ["ClipStats", "Clipper"]

#: Added to the norm in the scale ``threshold / (norm + _NORM_EPS)``, exactly as in
#: ``torch.nn.utils.clip_grad_norm_`` (and the ``zclip`` / ``autoclip`` packages, which call or copy it).
_NORM_EPS = 1e-6

#: Bumped when the layout of ``state_dict()`` changes incompatibly.
STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ClipStats:
    """What one :meth:`Clipper.clip` call measured and did (python scalars only, safe to log).

    Attributes:
        grad_norm: Global L2 norm of the given gradients *before* clipping (``nan``/``inf`` on a
            non-finite step; ``0.0`` when no parameter had a gradient).
        threshold: The threshold that was applied: a global-norm bound for the norm-based clippers, the
            element bound for ``value``, the sum-of-unit-caps bound for ``agc``; ``math.inf`` when no
            threshold was in force this step and ``0.0`` on a non-finite step (all gradients zeroed).
        bound: The global-norm level above which this clipper would clip on this step, reported whether or
            not it clipped (``threshold`` is only the value *applied*; e.g. ``zclip`` applies none on a calm
            step), so that logging it gives a continuous curve of the adaptive level. It comes from the
            statistics in force at this step (no extra device sync, nothing extra in ``state_dict``). For
            the global-norm clippers (``none``, ``norm``, ``autoclip``, ``zclip``, ``quantile``) a norm
            ``grad_norm <= bound`` is never clipped (``norm``: up to torch's 1e-6, see
            :class:`~clipping.NormClip`). ``value`` and ``agc`` clip element-/unit-wise, so no norm level
            decides for them: ``value`` reports ``math.inf``, ``agc`` its sum-of-caps bound (= ``threshold``).
            ``math.inf`` when no level is in force. On a non-finite step it is the level that was in force
            (the statistics are untouched), not ``0.0``; each clipper's docstring gives its exact value.
        clipped: Whether the gradients were changed (always ``True`` on a non-finite step).
        nonfinite: A NaN/inf was found; all given gradients were zeroed and no statistic was updated.
        spike: The clipper's outlier detector fired (``zclip`` only; ``False`` elsewhere). The gradient was
            clipped and is meant to be applied.
        skip: Skip the optimizer step: ``True`` iff ``nonfinite`` (the gradients were zeroed). Never set on a
            finite step: a spike is clipped and applied, as in the reference ``zclip`` package.
        stats_frozen: This step's norm was deliberately kept out of the clipper's running statistics
            (``zclip(skip_update_on_spike=True)`` on a spike); the clipped gradient is still applied. A
            logger should show it (e.g. a ``frozen`` tag / fraction): after a lasting level shift every
            step is a spike, the statistics stay frozen for good and the clipper acts as a fixed clip.
    """

    grad_norm: float
    threshold: float
    bound: float
    clipped: bool
    nonfinite: bool
    spike: bool = False
    skip: bool = False
    stats_frozen: bool = False

    def as_dict(self) -> dict[str, float | bool]:
        """The fields as a plain dict (e.g. to log them under ``clip/<part>/<field>``)."""
        return dataclasses.asdict(self)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest option (difflib), or ``""`` when nothing is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------------------------- helpers
def _params_with_grad(parameters: Iterable[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = (parameters,)
    return [p for p in parameters if p.grad is not None]


def stack_norms(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """``torch.stack`` of 0-dim norms, gathered onto ``device`` only if they live on several devices."""
    try:
        return torch.stack(tensors)
    except RuntimeError:  # tensors on several devices (model split across devices): gather them first
        return torch.stack([t.to(device) for t in tensors])


def per_tensor_norms(tensors: list[torch.Tensor], ord: float = 2.0) -> list[torch.Tensor]:
    """Per-tensor norms with one fused kernel where the device supports it."""
    try:
        return list(torch._foreach_norm(tensors, ord))
    except (RuntimeError, NotImplementedError):  # device/layout without foreach support
        return [torch.linalg.vector_norm(t, ord) for t in tensors]


def global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm, computed as ``torch.nn.utils.clip_grad_norm_`` does (same kernels, same order).

    For grads of one device and dtype (the normal case) the result is bit-identical to
    ``torch.nn.utils.get_total_norm``; with mixed dtypes torch groups by dtype first, so the summation
    order (and possibly the last bit) can differ. Stays on the device: no sync.
    """
    return torch.linalg.vector_norm(stack_norms(per_tensor_norms(grads), grads[0].device))


def on_one_device(grads: list[torch.Tensor]) -> bool:
    device = grads[0].device
    return all(g.device == device for g in grads)


def scale_(grads: list[torch.Tensor], scale: float) -> None:
    """Multiply every gradient in place by the python float ``scale`` with one fused kernel."""
    device_type = grads[0].device.type
    if device_type == "cpu":
        # ~3x faster than a python scalar on CPU (measured, torch 2.x); a CPU 0-dim tensor is also a valid
        # scalar operand for tensors on any other device.
        torch._foreach_mul_(grads, torch.scalar_tensor(scale, dtype=torch.float64))
    elif device_type == "cuda":
        torch._foreach_mul_(grads, scale)  # the scalar travels as a kernel argument: no host->device copy
    else:  # no foreach guarantee on other backends; never retry after a partial in-place failure
        for g in grads:
            g.mul_(scale)


def zero_(grads: list[torch.Tensor]) -> None:
    """Zero every gradient in place (multiplying by 0 would keep NaNs: ``0 * nan = nan``)."""
    try:
        torch._foreach_zero_(grads)
    except (RuntimeError, NotImplementedError):
        for g in grads:
            g.zero_()


# ---------------------------------------------------------------------------------------- validation
#: Spellings of +infinity accepted from text (CLI ``key=value`` specs): Python's ``float()`` words and
#: YAML's ``.inf``. Any other string is rejected: numbers must arrive as numbers.
_INF_WORDS = frozenset({"inf", "+inf", "infinity", "+infinity", ".inf", "+.inf"})


def check_real(
    owner: str,
    arg: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = False,
    high_inclusive: bool = True,
    allow_none: bool = False,
    allow_inf: bool = False,
    example: str,
) -> float | None:
    """Validate a real-valued constructor argument; raise a ``ValueError`` that names it and the fix.

    ``nan`` is always rejected. ``+inf`` is accepted only with ``allow_inf=True`` (arguments for which
    "no limit" is meaningful, e.g. ``norm:max_norm=inf``: a no-op clip that still measures), also when it
    arrives as a string spelling infinity (``"inf"``, ``"infinity"``, YAML's ``".inf"``), so that a spec
    typed on the command line works whichever parser read it. ``-inf`` is always rejected.
    """
    if value is None and allow_none:
        return None
    if allow_inf and isinstance(value, str) and value.strip().lower() in _INF_WORDS:
        value = math.inf
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    spelled_nan = isinstance(value, str) and value.strip().lower() in ("nan", ".nan")
    if spelled_nan or (is_real and math.isnan(value)):
        raise ValueError(
            f"{owner}: {arg} is nan (not a number). Fix: pass a real number, e.g. {arg}={example}."
        )
    ok = is_real and (allow_inf or not math.isinf(value)) and value != -math.inf
    if ok:
        value = float(value)
        if low is not None and (value < low or (value == low and not low_inclusive)):
            ok = False
        if high is not None and (value > high or (value == high and not high_inclusive)):
            ok = False
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        top = high if high is not None else math.inf
        hi = f"{top:g}"
        closed = high_inclusive if high is not None else allow_inf
        interval = f"{'[' if low_inclusive else '('}{lo}, {hi}{']' if closed else ')'}"
        none = " or None" if allow_none else ""
        kind = f" (a {type(value).__name__})" if isinstance(value, str) else ""
        no_inf = " (no limit is not meaningful here)" if value == math.inf and not allow_inf else ""
        raise ValueError(
            f"{owner}: {arg} must be a real number in {interval}{none}, got {value!r}{kind}{no_inf}. "
            f"Fix: pass e.g. {arg}={example}."
        )
    return value


def check_int(
    owner: str, arg: str, value: Any, *, low: int, allow_none: bool = False, example: str
) -> int | None:
    """Validate an integer constructor argument (>= ``low``); ``bool`` is rejected."""
    if value is None and allow_none:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low:
        return int(value)
    none = " or None" if allow_none else ""
    raise ValueError(
        f"{owner}: {arg} must be an integer >= {low}{none}, got {value!r}. Fix: pass e.g. {arg}={example}."
    )


def check_bool(owner: str, arg: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{owner}: {arg} must be True or False, got {value!r}.")


def check_choice(owner: str, arg: str, value: Any, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value in choices:
        return value
    hint = did_you_mean(value, choices) if isinstance(value, str) else ""
    raise ValueError(f"{owner}: {arg} must be one of {', '.join(map(repr, choices))}, got {value!r}{hint}")


# ---------------------------------------------------------------------------------------------- base
class Clipper:
    """Base class of all clippers.

    Subclasses set ``name``, call ``super().__init__(config)`` with their resolved keyword arguments and
    implement either :meth:`_update` (global-norm clippers: python arithmetic on the synced norm) or
    :meth:`_clip` (clippers that need other device-side reductions).

    State common to every clipper:
        nonfinite_count (int): number of calls whose gradients contained NaN/inf (and were zeroed).
    """

    name: ClassVar[str] = ""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = dict(config)
        self.nonfinite_count = 0

    # ----------------------------------------------------------------------------------- public API
    @property
    def config(self) -> dict[str, Any]:
        """The resolved constructor keyword arguments (YAML-safe scalars); ``make_clipper(name, **config)``
        rebuilds an identically configured clipper."""
        return dict(self._config)

    @torch.no_grad()
    def clip(self, parameters: Iterable[torch.Tensor] | torch.Tensor) -> ClipStats:
        """Clip the ``.grad`` of ``parameters`` in place and return what was measured and done.

        Args:
            parameters: A tensor or an iterable of tensors (a generator is fine). Tensors whose ``.grad``
                is ``None`` are skipped; if none has a gradient nothing happens and no statistic changes
                (``grad_norm=0.0``, ``threshold=inf``, ``bound`` = the level in force).

        Returns:
            A :class:`ClipStats` of python scalars (obtained with a single device->host sync).
        """
        params = _params_with_grad(parameters)
        if not params:
            return ClipStats(grad_norm=0.0, threshold=math.inf, bound=self._bound(), clipped=False,
                             nonfinite=False)
        return self._clip(params, [p.grad for p in params])

    def state_dict(self) -> dict[str, Any]:
        """Every statistic, as python scalars/lists (``torch.save``/pickle/``weights_only`` safe)."""
        return {
            "name": self.name,
            "version": STATE_VERSION,
            "config": self.config,
            "nonfinite_count": self.nonfinite_count,
            **self._get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the clipper must have the same name and configuration."""
        if not isinstance(state, Mapping):
            raise ValueError(
                f"{self.name}: load_state_dict expects the dict from state_dict(), got {type(state)}"
            )
        if "name" in state and state["name"] != self.name:
            raise ValueError(
                f"state dict belongs to clipper {state['name']!r}, not {self.name!r}. "
                "Fix: build the matching clipper with make_clipper(state['name'], **state['config'])."
            )
        required = ("name", "version", "config", "nonfinite_count", *self._state_keys())
        missing = [k for k in required if k not in state]
        if missing:
            raise ValueError(
                f"{self.name}: state dict is missing {missing}; pass the dict returned by state_dict()."
            )
        if state["version"] != STATE_VERSION:
            raise ValueError(f"{self.name}: state dict version {state['version']!r} is not {STATE_VERSION}.")
        if dict(state["config"]) != self._config:
            diff = sorted(k for k in set(state["config"]) | set(self._config)
                          if state["config"].get(k) != self._config.get(k))
            raise ValueError(
                f"{self.name}: state dict was saved with a different configuration (differs in {diff}: "
                f"saved {({k: state['config'].get(k) for k in diff})}, "
                f"this clipper {({k: self._config.get(k) for k in diff})}); resuming would not clip like "
                "the saved run. Fix: make_clipper(state['name'], **state['config'])."
            )
        self.nonfinite_count = int(state["nonfinite_count"])
        self._set_state(state)

    def reset(self) -> None:
        """Forget every statistic (back to the freshly constructed state)."""
        self.nonfinite_count = 0
        self._reset()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------------------- for subclasses
    def _clip(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> ClipStats:
        """Default: global-norm clipping driven by :meth:`_update` on the single synced norm."""
        norm = global_norm(grads).item()  # the one device->host sync of this call
        if not math.isfinite(norm):
            return self._neutralize(grads, norm)
        threshold, bound, spike, stats_frozen = self._update(norm)
        # Clip iff the norm exceeds the threshold; the scale is clip_grad_norm_'s formula. (clip_grad_norm_
        # itself also rescales by ~(1 - 1e-6/norm) when norm <= threshold < norm + 1e-6; we do not, so a
        # clipper whose threshold equals the current norm - e.g. AutoClip with quantile=1 - is a no-op.)
        clipped = norm > threshold
        if clipped:
            scale_(grads, threshold / (norm + _NORM_EPS))
        return ClipStats(grad_norm=norm, threshold=threshold, bound=bound, clipped=clipped, nonfinite=False,
                         spike=spike, stats_frozen=stats_frozen)

    def _update(self, norm: float) -> tuple[float, float, bool, bool]:
        """Consume a finite pre-clip global norm: return ``(threshold, bound, spike, stats_frozen)`` (see
        :class:`ClipStats`), update statistics."""
        raise NotImplementedError

    def _bound(self) -> float:
        """``ClipStats.bound`` from the current state, without consuming a norm (used on non-finite and
        empty calls, which leave the statistics untouched)."""
        return math.inf

    def _neutralize(self, grads: list[torch.Tensor], norm: float, bound: float | None = None) -> ClipStats:
        zero_(grads)
        self.nonfinite_count += 1
        return ClipStats(grad_norm=norm, threshold=0.0, bound=self._bound() if bound is None else bound,
                         clipped=True, nonfinite=True, skip=True)

    def _state_keys(self) -> tuple[str, ...]:
        return ()

    def _get_state(self) -> dict[str, Any]:
        return {}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        pass

    def _reset(self) -> None:
        pass
