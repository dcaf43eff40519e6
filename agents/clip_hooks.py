"""Clip the policy update and the value update of an SB3 model, each with its own clipper.

Mechanism (no copy of SB3's ``train()``): the optimizer's ``step`` is replaced *on the instance* by a
:class:`ClippedStep`, so when SB3 calls ``optimizer.step()`` after ``loss.backward()``:

1. every part (``policy``, ``value``) clips the gradients of its own parameters with its own clipper
   (``Clipper.clip`` scales ``.grad`` in place and returns python-float ``ClipStats``);
2. a part whose gradients are non-finite (the clipper zeroed them) gets ``p.grad = None`` for its parameters,
   so Adam/RMSprop skip them entirely: no parameter change and no optimizer-state advance (Adam's
   per-parameter ``step`` count and moments stay as they were). If every part is non-finite, the wrapped
   ``step`` is not called;
3. the original ``step`` (with torch's own pre/post hooks) runs for the rest.

A step *pre-hook* (``Optimizer.register_step_pre_hook``) cannot cancel a step, which is why the instance
attribute is used: it shadows the class method only for this optimizer, is never pickled (SB3 saves
``optimizer.state_dict()``, not the object) and has to be re-attached after ``load`` (:func:`attach_clippers`
does it; ``agents.algos.load_model`` calls it).

Partition of a shared optimizer (PPO, A2C, RecurrentPPO): the value part is ``value_net``,
``mlp_extractor.value_net``, the critic LSTM (``lstm_critic``) or its linear stand-in (``critic``), and
``vf_features_extractor`` when features are not shared; *everything else* (``action_net``,
``mlp_extractor.policy_net``, ``log_std``, the shared features extractor, a shared LSTM) is the policy part.
Shared layers go to the policy part because the policy gradient is the one whose spikes move behaviour; they
receive both losses' gradients. SAC/TD3 have an actor and a critic optimizer: each is one part.
SAC's entropy-coefficient optimizer (one scalar, ``log_ent_coef``) is not clipped but guarded the same way
(:class:`NonFiniteGuard`): a non-finite gradient skips its step and is counted (``clip/ent_coef/nonfinite``),
because one NaN there would make ``log_ent_coef`` NaN and with it every later loss.

Consequence on one-optimizer algorithms (PPO, A2C, RecurrentPPO): SB3 still calls
``clip_grad_norm_(parameters, inf)``, which multiplies every gradient by
``min(inf / (norm + 1e-6), 1)`` — NaN as soon as any gradient is NaN/inf. A non-finite gradient in one part
thus reaches both, and the whole step is skipped (both parts count it). The per-part skip matters for SAC/TD3
(one optimizer per part) and for callers that step the optimizer themselves.

SB3's own ``max_grad_norm`` must be ``inf`` on a hooked model, otherwise PPO/A2C would clip the joint
gradient *before* the hook (``clip_grad_norm_`` runs ahead of ``optimizer.step``) and everything would be
clipped twice. Why per-part clipping at all: the two parts' gradient norms differ by a factor that varies
(an audit measured a value/policy median of 0.11 on the trading task early in training), so one global clip
lets the larger part set how far both move.

zclip with ``skip_update_on_spike=True`` does not skip anything here: on a spike it only keeps the norm out of
its statistics (``ClipStats.stats_frozen``) and the clipped gradient is applied; ``ClipStats.skip`` means
non-finite gradients only. The share of such updates is logged as ``clip/<part>/frozen_fraction``.

Clipper state is stored inside ``model.zip`` as an extra archive member ``perpclip_clippers.pt`` (not
``.pth``: SB3's loader treats every ``.pth`` member as a state dict to load into the model), so a model file
is always paired with the clipper statistics of the same moment, and copies of it (``best_model.zip``) carry
theirs.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipping import make_clipper

__all__ = [
    "CLIPPER_ARCHIVE_NAME",
    "ClipHooks",
    "ClippedPart",
    "ClippedStep",
    "NonFiniteGuard",
    "PartStats",
    "attach_clippers",
    "read_clipper_state",
    "split_actor_critic",
    "write_clipper_state",
]

CLIPPER_ARCHIVE_NAME = "perpclip_clippers.pt"
PARTS = ("policy", "value")


@dataclass
class PartStats:
    """Counters of one part, python numbers only (the hot path never touches a tensor here).

    ``steps/clipped/nonfinite`` are totals since the model was created (saved with the model);
    the ``window_*`` fields aggregate since the last :meth:`flush` (one logging interval).
    """

    steps: int = 0
    clipped: int = 0
    nonfinite: int = 0
    skipped: int = 0
    frozen: int = 0
    consecutive_nonfinite: int = 0
    window_n: int = 0
    window_frozen: int = 0
    window_norm: float = 0.0
    window_clipped: int = 0
    window_threshold: float = 0.0
    window_threshold_n: int = 0
    window_bound: float = 0.0
    window_bound_n: int = 0

    def update(self, stats: Any) -> None:
        self.steps += 1
        if stats.nonfinite:
            self.nonfinite += 1
            self.consecutive_nonfinite += 1
            return
        self.consecutive_nonfinite = 0
        self.window_n += 1
        self.window_norm += stats.grad_norm
        if stats.clipped:
            self.clipped += 1
            self.window_clipped += 1
        if getattr(stats, "stats_frozen", False):  # plugins built on an older ClipStats lack the field
            self.frozen += 1
            self.window_frozen += 1
        if math.isfinite(stats.threshold):
            self.window_threshold += stats.threshold
            self.window_threshold_n += 1
        # `bound` is the clip level in force even on steps that clip nothing (zclip's threshold is inf then),
        # so it is the continuous adaptive-threshold curve users want to watch.
        if math.isfinite(stats.bound):
            self.window_bound += stats.bound
            self.window_bound_n += 1

    def flush(self) -> dict[str, float]:
        """Means over the window (finite steps only), then reset the window. Empty dict if no step."""
        out: dict[str, float] = {}
        if self.window_n:
            out["grad_norm"] = self.window_norm / self.window_n
            out["clip_fraction"] = self.window_clipped / self.window_n
            out["frozen_fraction"] = self.window_frozen / self.window_n
        if self.window_threshold_n:
            out["threshold"] = self.window_threshold / self.window_threshold_n
        if self.window_bound_n:
            out["bound"] = self.window_bound / self.window_bound_n
        self.window_n = self.window_clipped = self.window_threshold_n = self.window_bound_n = 0
        self.window_frozen = 0
        self.window_norm = self.window_threshold = self.window_bound = 0.0
        return out

    def totals(self) -> dict[str, int]:
        return {
            "steps": self.steps,
            "clipped": self.clipped,
            "nonfinite": self.nonfinite,
            "skipped": self.skipped,
            "frozen": self.frozen,
        }


@dataclass
class ClippedPart:
    """One clipped parameter group: its name, its clipper, its parameters and its counters."""

    name: str
    clipper: Any
    params: list[torch.Tensor]
    stats: PartStats = field(default_factory=PartStats)
    last: Any = None  # the latest ClipStats, for tests and debugging


class ClippedStep:
    """Replacement for ``optimizer.step`` that clips each part first and skips non-finite parts.

    Args:
        optimizer: the torch optimizer SB3 steps.
        parts: the parts whose parameters, together, are exactly the optimizer's parameters.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, parts: list[ClippedPart]) -> None:
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        in_parts = [id(p) for part in parts for p in part.params]
        if len(set(in_parts)) != len(in_parts) or set(in_parts) != in_optimizer:
            # A programming error in the partition, not a user error: some parameter would go unclipped.
            raise RuntimeError(
                f"clip parts {[p.name for p in parts]} do not partition the optimizer's parameters "
                f"({len(in_parts)} in parts, {len(in_optimizer)} in optimizer)"
            )
        if "step" in vars(optimizer):
            raise RuntimeError("optimizer.step is already wrapped; detach the old clip hooks first")
        self.optimizer = optimizer
        self.parts = parts
        self._step: Callable[..., Any] = optimizer.step  # bound class method (with torch's hook machinery)
        optimizer.step = self  # type: ignore[method-assign]

    def __call__(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:  # SB3 never passes one; support it like torch optimizers do
            with torch.enable_grad():
                loss = closure()
        stepped = False
        for part in self.parts:
            stats = part.clipper.clip(part.params)
            part.last = stats
            part.stats.update(stats)
            # ``skip`` is set on non-finite steps only (zclip's ``skip_update_on_spike`` freezes its
            # statistics, ``stats_frozen``, and the clipped gradient is still applied); both are read for
            # plugin clippers.
            if stats.nonfinite or getattr(stats, "skip", False):
                # grad=None, not zero: a zero gradient would still move Adam (momentum) and advance its state.
                part.stats.skipped += 1
                for p in part.params:
                    p.grad = None
            else:
                stepped = True
        if stepped:
            self._step()
        return loss

    def detach(self) -> None:
        """Restore the optimizer's own ``step``."""
        if vars(self.optimizer).get("step") is self:
            del self.optimizer.step


class NonFiniteGuard:
    """Replacement for the ``step`` of an optimizer that is not clipped (SAC's entropy coefficient): a step
    whose gradients are not all finite is skipped (``p.grad = None``: no parameter change, no Adam state
    advance) and counted.

    The counters live only as long as the model object (they are not saved with ``model.zip``).

    Args:
        optimizer: the torch optimizer to guard.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        if "step" in vars(optimizer):
            raise RuntimeError("optimizer.step is already wrapped; detach the old clip hooks first")
        self.optimizer = optimizer
        self.params = _optimizer_params(optimizer)
        self.steps = 0
        self.nonfinite = 0
        self.consecutive_nonfinite = 0
        self._step: Callable[..., Any] = optimizer.step
        optimizer.step = self  # type: ignore[method-assign]

    def __call__(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for p in self.params if p.grad is not None]
        self.steps += 1
        # One host sync for all gradients (here: one scalar).
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            self.nonfinite += 1
            self.consecutive_nonfinite += 1
            for p in self.params:
                p.grad = None
            return loss
        self.consecutive_nonfinite = 0
        self._step()
        return loss

    def detach(self) -> None:
        """Restore the optimizer's own ``step``."""
        if vars(self.optimizer).get("step") is self:
            del self.optimizer.step


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _module_params(module: torch.nn.Module | None) -> list[torch.Tensor]:
    return [] if module is None else list(module.parameters())


def split_actor_critic(policy: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Split an SB3 ``ActorCriticPolicy`` (incl. the recurrent one) into (policy params, value params).

    See the module docstring for which layer goes where.
    """
    value_modules: list[torch.nn.Module | None] = [
        getattr(policy, "value_net", None),
        getattr(getattr(policy, "mlp_extractor", None), "value_net", None),
        getattr(policy, "lstm_critic", None),
        getattr(policy, "critic", None),
    ]
    if not getattr(policy, "share_features_extractor", True):
        value_modules.append(getattr(policy, "vf_features_extractor", None))
    value_ids: set[int] = set()
    value: list[torch.Tensor] = []
    for m in value_modules:
        for p in _module_params(m):
            if id(p) not in value_ids:
                value_ids.add(id(p))
                value.append(p)
    actor = [p for p in policy.parameters() if id(p) not in value_ids]
    return actor, value


class ClipHooks:
    """The clippers attached to one model: parts by name, the wrapped optimizers, and the guarded unclipped
    optimizers (``guards``: ``{"ent_coef": ...}`` for SAC with a learned entropy coefficient)."""

    def __init__(
        self,
        parts: dict[str, ClippedPart],
        steps: list[ClippedStep],
        guards: dict[str, NonFiniteGuard] | None = None,
    ) -> None:
        self.parts = parts
        self.steps = steps
        self.guards = dict(guards or {})

    def detach(self) -> None:
        for s in self.steps:
            s.detach()
        for g in self.guards.values():
            g.detach()

    def flush(self) -> dict[str, dict[str, float]]:
        """Per part: window means (grad_norm, threshold, clip_fraction) and the running non-finite total."""
        out = {}
        for name, part in self.parts.items():
            d = part.stats.flush()
            d["nonfinite"] = float(part.stats.nonfinite)
            out[name] = d
        for name, guard in self.guards.items():
            out[name] = {"nonfinite": float(guard.nonfinite)}
        return out

    def clip_fraction(self) -> dict[str, float]:
        """Share of (finite) updates that were clipped, per part, over the model's whole life."""
        out = {}
        for name, part in self.parts.items():
            finite = part.stats.steps - part.stats.nonfinite
            out[name] = part.stats.clipped / finite if finite else 0.0
        return out

    def nonfinite(self) -> dict[str, int]:
        """Steps skipped for non-finite gradients, per clipped part."""
        return {name: part.stats.nonfinite for name, part in self.parts.items()}

    def guarded_nonfinite(self) -> dict[str, int]:
        """Steps skipped for non-finite gradients by each guarded, unclipped optimizer (``ent_coef``)."""
        return {name: guard.nonfinite for name, guard in self.guards.items()}

    def max_consecutive_nonfinite(self) -> int:
        counts = [p.stats.consecutive_nonfinite for p in self.parts.values()]
        counts += [g.consecutive_nonfinite for g in self.guards.values()]
        return max(counts, default=0)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: each clipper's name, config, statistics, and the part counters."""
        return {
            name: {
                "name": part.clipper.name,
                "config": dict(part.clipper.config),
                "state": part.clipper.state_dict(),
                "totals": part.stats.totals(),
            }
            for name, part in self.parts.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.parts) - set(state)
        if missing:
            raise ValueError(f"saved clipper state lacks part(s) {sorted(missing)}")
        for name, part in self.parts.items():
            saved = state[name]
            if saved["name"] != part.clipper.name:
                raise ValueError(
                    f"saved {name} clipper is {saved['name']!r} but the model is being hooked with "
                    f"{part.clipper.name!r}"
                )
            part.clipper.load_state_dict(saved["state"])
            totals = saved.get("totals", {})
            part.stats.steps = int(totals.get("steps", 0))
            part.stats.clipped = int(totals.get("clipped", 0))
            part.stats.nonfinite = int(totals.get("nonfinite", 0))
            part.stats.skipped = int(totals.get("skipped", 0))
            part.stats.frozen = int(totals.get("frozen", 0))


def _make(name: str, kwargs: dict[str, Any]) -> Any:
    return make_clipper(name, **kwargs)


def attach_clippers(
    model: Any,
    policy: tuple[str, dict[str, Any]] | Any,
    value: tuple[str, dict[str, Any]] | Any,
) -> ClipHooks:
    """Hook a policy clipper and a value clipper into an SB3 model's optimizer(s).

    Args:
        model: PPO, A2C, RecurrentPPO (one optimizer, split by :func:`split_actor_critic`) or SAC, TD3
            (actor and critic optimizers).
        policy, value: a ``(name, kwargs)`` pair for ``clipping.make_clipper`` or a ready ``Clipper``.

    Raises:
        ValueError: unknown clipper name/keyword (from ``clipping``), or SB3's ``max_grad_norm`` still finite.
    """
    clippers = {}
    for part, spec in (("policy", policy), ("value", value)):
        clippers[part] = _make(*spec) if isinstance(spec, tuple) else spec
    max_grad_norm = getattr(model, "max_grad_norm", math.inf)
    if max_grad_norm is not None and math.isfinite(max_grad_norm):
        raise ValueError(
            f"model.max_grad_norm={max_grad_norm}: SB3 would clip the joint gradient before the perpclip "
            "hook; "
            "build the model with max_grad_norm=float('inf')"
        )
    if hasattr(model, "actor") and hasattr(model, "critic") and hasattr(model.critic, "optimizer"):
        # The optimizers' own parameter lists: with a shared features extractor SB3 leaves it out of the
        # critic optimizer, so module.parameters() would not match.
        parts = {
            "policy": ClippedPart("policy", clippers["policy"], _optimizer_params(model.actor.optimizer)),
            "value": ClippedPart("value", clippers["value"], _optimizer_params(model.critic.optimizer)),
        }
        steps = [
            ClippedStep(model.actor.optimizer, [parts["policy"]]),
            ClippedStep(model.critic.optimizer, [parts["value"]]),
        ]
    else:
        actor, critic = split_actor_critic(model.policy)
        parts = {
            "policy": ClippedPart("policy", clippers["policy"], actor),
            "value": ClippedPart("value", clippers["value"], critic),
        }
        steps = [ClippedStep(model.policy.optimizer, [parts["policy"], parts["value"]])]
    guards = {}
    ent_opt = getattr(model, "ent_coef_optimizer", None)  # SAC with ent_coef="auto" (None when fixed)
    if ent_opt is not None:
        guards["ent_coef"] = NonFiniteGuard(ent_opt)
    return ClipHooks(parts, steps, guards)


def write_clipper_state(zip_path: str | Path, hooks: ClipHooks) -> None:
    """Add (or replace) the clipper state member of an SB3 model archive."""
    buf = io.BytesIO()
    torch.save(hooks.state_dict(), buf)
    zip_path = Path(zip_path)
    with zipfile.ZipFile(zip_path, "r") as zf:
        present = CLIPPER_ARCHIVE_NAME in zf.namelist()
    if present:  # rewrite without the old member (zipfile cannot delete in place)
        tmp = zip_path.with_suffix(".tmp.zip")
        with zipfile.ZipFile(zip_path, "r") as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                if item.filename != CLIPPER_ARCHIVE_NAME:
                    dst.writestr(item, src.read(item.filename))
        tmp.replace(zip_path)
    with zipfile.ZipFile(zip_path, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(CLIPPER_ARCHIVE_NAME, buf.getvalue())


def read_clipper_state(zip_path: str | Path) -> dict[str, Any] | None:
    """The clipper state stored in a model archive, or None if it has none (a model trained with ``sb3``)."""
    with zipfile.ZipFile(zip_path, "r") as zf:
        if CLIPPER_ARCHIVE_NAME not in zf.namelist():
            return None
        data = zf.read(CLIPPER_ARCHIVE_NAME)
    # weights_only=False: a clipper's documented state may hold plain python containers beyond tensors; the
    # archive is the user's own run output (SB3 itself unpickles the rest of it).
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def iter_parts(hooks: ClipHooks | None) -> Iterable[ClippedPart]:
    return () if hooks is None else hooks.parts.values()
