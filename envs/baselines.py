"""Reference policies and the one episode runner used for baselines and trained agents alike.

A *policy* is any callable ``act(obs, info) -> action``. It may return an action of the env's own action
space, or a *target position fraction* as a Python float in ``[-1, 1]`` (mapped to the env's action space by
:meth:`envs.trading_env.CryptoFuturesEnv.target_to_action`, so one baseline works with continuous and discrete
envs). A policy object may also define ``reset(env)``, which :func:`run_episode` calls before the first step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from envs.metrics import trade_metrics

__all__ = ["EpisodeResult", "run_episode", "flat", "buy_and_hold", "BuyAndHold", "momentum", "Momentum"]

Policy = Callable[[np.ndarray, dict], Any]


def flat(obs: np.ndarray, info: dict) -> float:
    """Stay out of the market (target 0)."""
    return 0.0


class BuyAndHold:
    """Buy ``size`` of the maximum position on the first step, then hold that quantity (no rebalancing).

    After the first fill it asks for exactly the current position fraction, so no order is sent: fees are
    paid once, not on every drift of the leverage. The one exception is the env's cap: a continuous action is
    clipped to ``[-1, 1]``, so if losses push the position beyond the maximum fraction (by more than the
    dead-band) it is cut back to it. In a discrete env a policy cannot express "hold", so it asks for the
    ``size`` level every bar.

    Needs ``reset(env)`` (called by :func:`run_episode`) to learn the env's leverage and action type.

    Args:
        size: target fraction of the first order, in ``[-1, 1]`` (``-1``: sell and hold).
    """

    def __init__(self, size: float = 1.0) -> None:
        if not (isinstance(size, (int, float)) and -1 <= size <= 1 and size != 0):
            raise ValueError(f"size must be in [-1, 1] and not 0, got {size!r}")
        self.size = float(size)
        self._leverage: float | None = None
        self._discrete = False

    def reset(self, env: gym.Env) -> None:
        """Bind to the env's leverage and action type."""
        self._leverage = float(env.unwrapped.leverage)
        self._discrete = env.unwrapped.levels is not None

    def __call__(self, obs: np.ndarray, info: dict) -> float:
        if self._leverage is None:
            raise ValueError("BuyAndHold needs the env: call policy.reset(env) first (run_episode does)")
        pos = info["position"]
        if self._discrete or pos == 0.0:
            return self.size
        equity = info["equity"]
        if equity <= 0.0:
            return 0.0
        # The env computes the current fraction from the same numbers, so this target moves nothing.
        return pos * info["price"] / (self._leverage * equity)


#: Full long on the first step, then held (see :class:`BuyAndHold`).
buy_and_hold = BuyAndHold(1.0)


class Momentum:
    """Time-series momentum: long when the close has risen over the last ``lookback`` bars, short when it
    fell.

    Uses the closes of the env's market up to ``info["bar_index"]`` (the last bar the agent has seen), so it
    has no look-ahead. Before ``lookback`` bars of history exist it stays flat.

    Args:
        lookback: bars over which the return is measured.
        size: target fraction when in the market (``0 < size <= 1``).
        long_only: never short.
    """

    def __init__(self, lookback: int = 24, size: float = 1.0, long_only: bool = False) -> None:
        if isinstance(lookback, bool) or not isinstance(lookback, int) or lookback < 1:
            raise ValueError(f"lookback must be an int >= 1, got {lookback!r}")
        if not (isinstance(size, (int, float)) and 0 < size <= 1):
            raise ValueError(f"size must be in (0, 1], got {size!r}")
        self.lookback = lookback
        self.size = float(size)
        self.long_only = long_only
        self._close: np.ndarray | None = None

    def reset(self, env: gym.Env) -> None:
        """Bind to the env's market closes."""
        self._close = env.unwrapped.market.close

    def __call__(self, obs: np.ndarray, info: dict) -> float:
        if self._close is None:
            raise ValueError("Momentum needs the market: call policy.reset(env) first (run_episode does)")
        t = int(info["bar_index"])
        if t < self.lookback:
            return 0.0
        change = self._close[t] - self._close[t - self.lookback]
        if change > 0:
            return self.size
        if change < 0 and not self.long_only:
            return -self.size
        return 0.0


def momentum(lookback: int = 24, size: float = 1.0, long_only: bool = False) -> Momentum:
    """A :class:`Momentum` policy."""
    return Momentum(lookback=lookback, size=size, long_only=long_only)


@dataclass
class EpisodeResult:
    """One episode of a policy.

    Attributes:
        equity: equity at the start and after every step, ``(n_steps + 1,)``.
        positions: position (base units) after every step, ``(n_steps,)``.
        rewards: rewards, ``(n_steps,)``.
        metrics: ``info["episode_metrics"]`` of the last step (:func:`envs.metrics.trade_metrics`).
        infos: every step's info dict (the reset info first).
        terminated: ended by liquidation.
        truncated: ended by the episode length / end of data.
        start: first decision bar.
    """

    equity: np.ndarray
    positions: np.ndarray
    rewards: np.ndarray
    metrics: dict
    infos: list[dict] = field(repr=False)
    terminated: bool
    truncated: bool
    start: int


def _to_action(env: gym.Env, out: Any) -> Any:
    # Python floats are target fractions; anything else is taken as a native action.
    if isinstance(out, float):
        if not math.isfinite(out):
            raise ValueError(f"policy returned a non-finite target {out!r}")
        return env.unwrapped.target_to_action(out)
    return out


def run_episode(
    env: gym.Env,
    act: Policy,
    *,
    start: int | None = None,
    seed: int | None = None,
    max_steps: int | None = None,
) -> EpisodeResult:
    """Run ``act`` for one episode of ``env`` (a CryptoFuturesEnv, possibly wrapped).

    Args:
        env: the environment.
        act: ``act(obs, info) -> action`` (see the module docstring); ``act.reset(env)`` is called if it
            exists.
        start: first decision bar (``reset(options={"start": start})``); ``None`` lets the env choose.
        seed: passed to ``env.reset``.
        max_steps: optional safety cap on steps (``None``: until terminated or truncated).

    Returns:
        The :class:`EpisodeResult`.
    """
    options = None if start is None else {"start": start}
    obs, info = env.reset(seed=seed, options=options)
    if hasattr(act, "reset"):
        act.reset(env)
    equity = [float(info["equity"])]
    positions: list[float] = []
    rewards: list[float] = []
    infos = [info]
    terminated = truncated = False
    steps = 0
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(_to_action(env, act(obs, info)))
        equity.append(float(info["equity"]))
        positions.append(float(info["position"]))
        rewards.append(float(reward))
        infos.append(info)
        steps += 1
        if max_steps is not None and steps >= max_steps:
            break
    metrics = info.get("episode_metrics")
    if metrics is None:  # stopped by max_steps: compute from what ran
        u = env.unwrapped
        metrics = trade_metrics(
            np.asarray(equity),
            bar_seconds=u.market.bar_seconds,
            turnover=info["turnover"] / u.initial_balance,
            fees=info["fees_paid"],
            funding=info["funding_paid"],
            liquidations=int(info["liquidated"]),
        )
    return EpisodeResult(
        equity=np.asarray(equity),
        positions=np.asarray(positions),
        rewards=np.asarray(rewards),
        metrics=metrics,
        infos=infos,
        terminated=bool(terminated),
        truncated=bool(truncated),
        start=int(infos[0]["bar_index"]),
    )
