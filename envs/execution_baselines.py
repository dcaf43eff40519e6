"""Execution baselines (TWAP, VWAP, Almgren–Chriss), the episode runner and shortfall statistics.

A *policy* for :class:`envs.execution_env.CryptoFuturesExecutionEnv` is any callable ``act(obs, info) ->
action`` that returns either an action of the env's own space or a Python float: the *fraction of the
remaining quantity* to send this bar (mapped by
:meth:`~envs.execution_env.CryptoFuturesExecutionEnv.fraction_to_action`, so one baseline runs on continuous
and discrete envs). A policy may define ``reset(env)``, which :func:`run_execution_episode` calls after
``env.reset``; the schedule baselines plan their trajectory there from data up to the arrival bar only. A
trained SB3 model runs as ``lambda obs, info: model.predict(obs, deterministic=True)[0]``.

The schedule baselines follow a target trajectory ``x_0 = 1 > x_1 >= ... >= x_T = 0`` of the remaining
quantity (fraction of ``Q`` left after each step) and send ``(remaining - x_{k+1} Q) / remaining`` at step
``k``, so that they catch up after a fill cut short by the participation cap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = [
    "ExecutionResult",
    "SchedulePolicy",
    "TWAP",
    "VWAP",
    "AlmgrenChriss",
    "almgren_chriss_trajectory",
    "run_execution_episode",
    "evaluate_execution",
    "summarize_shortfall",
    "evenly_spaced_starts",
]

Policy = Callable[[np.ndarray, dict], Any]


# ----------------------------------------------------------------------------------------------- schedules


class SchedulePolicy:
    """Follows a remaining-quantity trajectory planned at the episode start (subclasses: :meth:`plan`)."""

    name = "schedule"

    def __init__(self) -> None:
        self.trajectory: np.ndarray | None = None

    def plan(self, env: Any) -> np.ndarray:
        """Fractions of ``Q`` left after each step, ``(T + 1,)``, from 1 to 0 (``env`` is unwrapped)."""
        raise NotImplementedError

    def reset(self, env: gym.Env) -> None:
        """Plan the trajectory for the episode ``env`` has just started."""
        x = np.asarray(self.plan(env.unwrapped), dtype=np.float64)
        if x.shape != (env.unwrapped.horizon + 1,) or not np.all(np.isfinite(x)):
            raise ValueError(
                f"{type(self).__name__}.plan returned {x!r}; need T + 1 finite fractions from 1 to 0"
            )
        self.trajectory = x

    def __call__(self, obs: np.ndarray, info: dict) -> float:
        if self.trajectory is None:
            raise ValueError(
                f"{self.name} plans at the episode start: call policy.reset(env) after env.reset()"
            )
        rem = float(info["remaining"])
        if rem <= 0.0:
            return 0.0
        target = self.trajectory[int(info["step"]) + 1] * float(info["quantity"])
        return min(max((rem - target) / rem, 0.0), 1.0)


class TWAP(SchedulePolicy):
    """Time-weighted average price: the same quantity every bar, ``x_k = 1 - k / T``."""

    name = "twap"

    def plan(self, env: Any) -> np.ndarray:
        T = env.horizon
        return 1.0 - np.arange(T + 1) / T


class VWAP(SchedulePolicy):
    """Volume-weighted schedule: each bar's share of ``Q`` is its share of the horizon's expected volume.

    The expected volume of each fill bar is the env's intraday profile estimated on the arrival bar (mean
    volume at the same time of day over the previous ``profile_days`` days, data up to the arrival bar only).
    With no volume in the profile it falls back to TWAP.
    """

    name = "vwap"

    def plan(self, env: Any) -> np.ndarray:
        ev = np.asarray(env.expected_volume(env.start_bar), dtype=np.float64)
        total = float(ev.sum())
        if not (total > 0 and math.isfinite(total)):
            return TWAP.plan(self, env)
        x = 1.0 - np.concatenate(([0.0], np.cumsum(ev))) / total
        x[-1] = 0.0
        return x


def almgren_chriss_trajectory(n_steps: int, kappa_tilde_sq: float) -> np.ndarray:
    """Optimal discrete-time Almgren–Chriss holdings, as fractions of the order, ``(n_steps + 1,)``.

    ``x_j = sinh(kappa (N - j)) / sinh(kappa N)`` with ``2 (cosh(kappa) - 1) = kappa_tilde^2`` (unit time
    step), ``kappa_tilde^2 = lambda sigma^2 / eta`` (Almgren & Chriss 2000, eq. 18-20). Computed in a form
    that neither overflows for large ``kappa`` nor divides by zero at ``kappa = 0`` (the TWAP limit).
    """
    if math.isnan(kappa_tilde_sq) or kappa_tilde_sq < 0:
        raise ValueError(f"kappa_tilde_sq must be >= 0, got {kappa_tilde_sq!r}")
    N = int(n_steps)
    j = np.arange(N + 1, dtype=np.float64)
    if kappa_tilde_sq == math.inf:
        x = np.zeros(N + 1)
        x[0] = 1.0
        return x
    kappa = math.acosh(1.0 + 0.5 * kappa_tilde_sq)
    if kappa * N < 1e-8:
        return 1.0 - j / N
    # sinh(k (N - j)) / sinh(k N) = (e^{-k j} - e^{-k (2N - j)}) / (1 - e^{-2 k N})
    x = (np.exp(-kappa * j) - np.exp(-kappa * (2 * N - j))) / -math.expm1(-2.0 * kappa * N)
    x[-1] = 0.0
    return x


class AlmgrenChriss(SchedulePolicy):
    """Almgren–Chriss mean-variance optimal schedule, calibrated on past data at the arrival bar.

    Minimizes ``E[IS] + risk_aversion * Var[IS]`` with the shortfall ``IS`` in basis points of the arrival
    notional, under AC's linear temporary impact. The env's square-root law ``Y sigma sqrt(n / V)`` is
    linearized at the TWAP child size ``n = Q / T``, which gives (unit time step = one bar, sigma per bar)::

        kappa_tilde^2 = risk_aversion * sigma_bps * sqrt(V / (T Q)) / Y

    with ``sigma`` the env's EWMA volatility and ``V`` the mean bar volume of the past ``profile_days`` days,
    both estimated on the arrival bar, and ``Y`` the impact coefficient (``impact_coef``, by default the env's
    ``ExecutionConfig.impact_coef``: a desk calibrates it on its own fills). ``risk_aversion = 0`` is TWAP;
    larger values trade earlier. The transient impact (``impact_halflife``) and the spread are outside AC's
    model.

    References:
        Almgren, R. and Chriss, N. (2000). "Optimal execution of portfolio transactions". J. Risk 3(2).

    Args:
        risk_aversion: ``lambda`` in 1 / bp (>= 0). 1e-3 weighs a 100 bp standard deviation like 10 bp
            of cost.
        impact_coef: ``Y``; ``None`` uses the env's.
    """

    name = "almgren_chriss"

    def __init__(self, risk_aversion: float = 1e-3, impact_coef: float | None = None) -> None:
        super().__init__()
        if not (
            isinstance(risk_aversion, (int, float)) and math.isfinite(risk_aversion) and risk_aversion >= 0
        ):
            raise ValueError(f"risk_aversion must be a finite number >= 0 (1 / bp), got {risk_aversion!r}")
        if impact_coef is not None and not (
            isinstance(impact_coef, (int, float)) and math.isfinite(impact_coef) and impact_coef >= 0
        ):
            raise ValueError(f"impact_coef must be a finite number >= 0 or None, got {impact_coef!r}")
        self.risk_aversion = float(risk_aversion)
        self.impact_coef = impact_coef
        self.kappa_tilde_sq = math.nan

    def plan(self, env: Any) -> np.ndarray:
        t0, T = env.start_bar, env.horizon
        sigma_bps = env.volatility(t0) * 1e4
        V = env.mean_bar_volume(t0)
        Y = env.execution.impact_coef if self.impact_coef is None else self.impact_coef
        if self.risk_aversion == 0.0:
            k2 = 0.0
        elif Y == 0.0 or not V > 0:
            k2 = math.inf  # no impact (or no volume to estimate it): risk alone says trade at once
        else:
            k2 = self.risk_aversion * sigma_bps * math.sqrt(V / (T * env.quantity)) / Y
        self.kappa_tilde_sq = k2
        return almgren_chriss_trajectory(T, k2)


# ----------------------------------------------------------------------------------------------- running


@dataclass
class ExecutionResult:
    """One execution episode.

    Attributes:
        shortfall_bps: the implementation shortfall (``info["execution"]["shortfall_bps"]``).
        summary: ``info["execution"]`` of the last step (decomposition, average price, ...).
        rewards: rewards of every step, ``(n_steps,)``; they sum to ``-shortfall_bps``.
        fills: quantity filled at every step (base units), ``(n_steps,)``.
        fill_prices: fill price per step (NaN where nothing filled).
        remaining: quantity left after every step.
        infos: every step's info (the reset info first).
        start: arrival (decision) bar.
        side: +1 buy, -1 sell.
        quantity: parent size, base units.
    """

    shortfall_bps: float
    summary: dict
    rewards: np.ndarray
    fills: np.ndarray
    fill_prices: np.ndarray
    remaining: np.ndarray
    infos: list[dict] = field(repr=False)
    start: int
    side: int
    quantity: float


def _to_action(env: gym.Env, out: Any) -> Any:
    if isinstance(out, float):  # a fraction of what remains; anything else is a native action
        if not math.isfinite(out):
            raise ValueError(f"policy returned a non-finite fraction {out!r}")
        return env.unwrapped.fraction_to_action(out)
    return out


def run_execution_episode(
    env: gym.Env, policy: Policy, *, seed: int | None = None, options: Mapping[str, Any] | None = None
) -> ExecutionResult:
    """Run one episode of ``policy`` on ``env`` to completion.

    Args:
        env: a :class:`~envs.execution_env.CryptoFuturesExecutionEnv` (wrappers allowed).
        policy: ``act(obs, info) -> action | float`` (see the module docstring), optionally with
            ``reset(env)``.
        seed: passed to ``env.reset``.
        options: passed to ``env.reset`` (``start``, ``side``, ``quantity`` / ``quantity_adv``).
    """
    obs, info = env.reset(seed=seed, options=dict(options) if options else None)
    if hasattr(policy, "reset"):
        policy.reset(env)
    infos = [info]
    rewards, fills, prices, remaining = [], [], [], []
    done = False
    while not done:
        obs, r, terminated, truncated, info = env.step(_to_action(env, policy(obs, info)))
        rewards.append(r)
        fills.append(info["fill_qty"])
        prices.append(info["fill_price"] if info["fill_qty"] > 0 else math.nan)
        remaining.append(info["remaining"])
        infos.append(info)
        done = terminated or truncated
    summary = info.get("execution")
    if summary is None:
        raise RuntimeError("the episode ended without info['execution']: was the env truncated by a wrapper?")
    return ExecutionResult(
        shortfall_bps=float(summary["shortfall_bps"]),
        summary=summary,
        rewards=np.asarray(rewards),
        fills=np.asarray(fills),
        fill_prices=np.asarray(prices),
        remaining=np.asarray(remaining),
        infos=infos,
        start=int(infos[0]["bar_index"]),
        side=int(infos[0]["side"]),
        quantity=float(infos[0]["quantity"]),
    )


def summarize_shortfall(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean, std (ddof=1), standard error and quantiles of shortfalls in bp.

    Keys: ``mean, std, sem, q05, q25, median, q75, q95, n``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"need a non-empty 1-D array of finite shortfalls, got shape {v.shape}")
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "mean": float(v.mean()),
        "std": std,
        "sem": std / math.sqrt(v.size),
        "q05": float(q[0]),
        "q25": float(q[1]),
        "median": float(q[2]),
        "q75": float(q[3]),
        "q95": float(q[4]),
        "n": int(v.size),
    }


def evenly_spaced_starts(env: gym.Env, n: int) -> list[int]:
    """``n`` arrival bars spread evenly over the env's valid range ``[min_start, max_start]``."""
    e = env.unwrapped
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return sorted({int(round(x)) for x in np.linspace(e.min_start, e.max_start, n)})


def evaluate_execution(
    env: gym.Env,
    policies: Mapping[str, Policy],
    *,
    n_episodes: int | None = None,
    starts: Sequence[int] | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every policy on the same episodes and summarize their shortfalls.

    Episode ``i`` is reset with ``seed + i`` (and ``start=starts[i]`` when ``starts`` is given), so every
    policy meets the same arrival bar, side and size: differences between policies are paired.

    Args:
        env: the execution env.
        policies: name -> policy.
        n_episodes: number of episodes (default ``len(starts)``).
        starts: arrival bars, e.g. :func:`evenly_spaced_starts` over a held-out period.
        seed: seed of episode 0.
        options: extra reset options for every episode (e.g. ``{"side": "buy"}``).

    Returns:
        name -> ``{"summary": summarize_shortfall(...), "shortfall_bps": np.ndarray, "results": [...]}``.
    """
    if n_episodes is None:
        if starts is None:
            raise ValueError("give n_episodes, starts, or both")
        n_episodes = len(starts)
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
        raise ValueError(f"n_episodes must be an int >= 1, got {n_episodes!r}")
    if starts is not None and len(starts) < n_episodes:
        raise ValueError(f"starts has {len(starts)} bars for n_episodes={n_episodes}; give one per episode")
    if not policies:
        raise ValueError("policies is empty; give at least one name -> policy")
    out: dict[str, dict[str, Any]] = {}
    for name, policy in policies.items():
        results = []
        for i in range(n_episodes):
            opts = dict(options or {})
            if starts is not None:
                opts["start"] = int(starts[i])
            results.append(run_execution_episode(env, policy, seed=seed + i, options=opts))
        values = np.array([r.shortfall_bps for r in results])
        out[name] = {"summary": summarize_shortfall(values), "shortfall_bps": values, "results": results}
    return out
