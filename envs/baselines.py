"""Reference policies and the one episode runner used for baselines and trained agents alike.

A *policy* is any callable ``act(obs, info) -> action``. It may return an action of the env's own action
space, or a *target position fraction* as a Python float in ``[-1, 1]`` (mapped to the env's action space by
:meth:`envs.trading_env.CryptoFuturesEnv.target_to_action`, so one baseline works with continuous and discrete
envs). A policy object may also define ``reset(env)``, which :func:`run_episode` calls before the first step,
and ``hold_deadband`` (see below).

Holding a position. The env's action is a target *fraction* of ``leverage * equity``, so asking for the same
target every bar rebalances the quantity as the price moves (by the env's dead-band, 1 % of the maximum by
default): a full-leverage long asked for every bar of a discrete env traded 136x its equity over the last
4,395 hourly BTCUSDT bars (1,262 orders), against 3x for one entry. A discrete env cannot express "keep the
quantity" at all, and a continuous one cannot ask for more than the maximum once losses have pushed the
position's fraction above it (at 3x, a 0.5 % fall below the entry price). Policies that must hold
(:class:`BuyAndHold`, :class:`Trend`) therefore set ``hold_deadband``, and :func:`run_episode` runs them in
:func:`holding_env`: the same market, costs, margin, episode settings and period, with continuous actions and
that dead-band (just under the policy's smallest position change), so an order goes out only when the policy
changes its mind. Only the dead-band and the action encoding differ; fees, spread, impact, funding and
liquidation are the env's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import gymnasium as gym
import numpy as np

from envs.market import MarketData
from envs.metrics import trade_metrics
from envs.synthetic import Simulation, parse_synthetic_spec, planted_oracle_positions, simulate
from envs.trading_env import CryptoFuturesEnv

__all__ = [
    "ORACLE_THRESHOLDS",
    "BuyAndHold",
    "EpisodeResult",
    "PlantedOracle",
    "Trend",
    "baseline_policies",
    "buy_and_hold",
    "flat",
    "holding_env",
    "is_planted",
    "planted_oracle",
    "run_episode",
    "trend",
]

Policy = Callable[[np.ndarray, dict], Any]

# A holding policy's dead-band is this share of its smallest position change: every change it makes clears
# the band (with room for the float32 rounding of continuous actions), drift of up to ~100 % does not.
_HOLD_SHARE = 0.9999


def flat(obs: np.ndarray, info: dict) -> float:
    """Stay out of the market (target 0)."""
    return 0.0


def holding_env(env: gym.Env, deadband: float) -> CryptoFuturesEnv:
    """A copy of a trading env in which asking for an unchanged target keeps the quantity (no rebalancing).

    Same market, window, episode length, initial balance, reward, execution costs, margin (leverage included)
    and features as ``env.unwrapped``; continuous actions and ``execution.deadband = deadband``: an order is
    sent only when the target differs from the position's current fraction by at least ``deadband`` (a target
    of 0 always closes). Wrappers of ``env`` are not copied (baselines read ``info``, not observations).

    Args:
        env: a :class:`~envs.trading_env.CryptoFuturesEnv`, possibly wrapped.
        deadband: in ``(0, 1)``.

    Raises:
        ValueError: not a CryptoFuturesEnv, or a bad dead-band.
    """
    u = env.unwrapped
    if not isinstance(u, CryptoFuturesEnv):
        raise ValueError(f"holding_env needs a CryptoFuturesEnv, got {type(u).__name__}")
    if not (isinstance(deadband, (int, float)) and 0 < deadband < 1):
        raise ValueError(f"deadband must be in (0, 1), got {deadband!r}")
    return CryptoFuturesEnv(
        u.market,
        window=u.window,
        episode_bars=u.episode_bars,
        initial_balance=u.initial_balance,
        action="continuous",
        reward=u.reward_type,
        dsr_eta=u.dsr_eta,
        execution=replace(u.execution, deadband=float(deadband)),
        margin=u.margin,  # carries the leverage
        features=u.feature_config,
    )


class BuyAndHold:
    """Enter once at ``size`` of the maximum position (``leverage * equity``) and hold that quantity.

    Asks for ``size`` every bar with ``hold_deadband`` just under ``|size|``, so :func:`run_episode` runs it
    in :func:`holding_env`: one order on the first step, then none (fees paid once; turnover = the entry
    notional / initial balance, about ``|size| * leverage``), whatever the env's action type. The one
    exception: if losses push the position's fraction to twice ``size`` (a 20 % adverse move at 3x, short of
    the ~33 % that liquidates) the env cuts it back to ``size``, as it would any position beyond the
    dead-band. :class:`Trend` holds the same way.

    Stepped directly in an env with a small dead-band (not through :func:`run_episode`), it rebalances to a
    constant leverage instead.

    Args:
        size: target fraction of the one order, in ``[-1, 1]`` and not 0 (``-1``: sell and hold).
    """

    def __init__(self, size: float = 1.0) -> None:
        if isinstance(size, bool) or not (isinstance(size, (int, float)) and -1 <= size <= 1 and size != 0):
            raise ValueError(f"size must be in [-1, 1] and not 0, got {size!r}")
        self.size = float(size)
        self.hold_deadband = _HOLD_SHARE * abs(self.size)

    def __call__(self, obs: np.ndarray, info: dict) -> float:
        return self.size

    def __repr__(self) -> str:
        return f"BuyAndHold(size={self.size})"


#: Full long (``leverage`` x equity) on the first step, then held (see :class:`BuyAndHold`).
buy_and_hold = BuyAndHold(1.0)


class Trend:
    r"""Time-series trend with a no-trade band: long after a clear rise, short after a clear fall, else hold.

    Rule, at each decision bar ``t`` (closes up to ``t`` only):

    * signal ``s_t = log(close_t / close_{t - lookback})``, the trend over the last ``lookback`` bars;
    * scale ``sigma_t``: standard deviation (ddof 0) of the one-bar log returns of bars ``t - vol_bars + 1``
      .. ``t``; ``z_t = s_t / (sigma_t * sqrt(lookback))`` is the move in its own standard deviations;
    * position: becomes long (``+size``) when ``z_t > band``, short (``-size``; flat if ``long_only``) when
      ``z_t < -band``, and otherwise stays what it was. Each episode starts flat and enters at the first
      crossing; before ``max(lookback, vol_bars)`` bars of history, or with ``sigma_t = 0``, there is no
      signal.

    So the position changes only when the signal crosses to the far side of the band (hysteresis), and is
    held in between (``hold_deadband``: :func:`run_episode` runs it in :func:`holding_env`). The defaults, a
    week's trend (168 hourly bars) against a month of volatility (720 bars) with a band of 2 standard
    deviations, were set on the hourly BTCUSDT bars of 2022-02 to 2024-11 (before the last 4,395 bars, the
    usual test period) to trade about 5 times a year (a 3x flip trades 6x equity): 14 orders in 2.8 years
    there, against 755 without the band and 1,433 for the (held) sign of the day's return.

    Args:
        lookback: bars over which the trend is measured (168 = a week of hourly bars).
        band: no-trade band, in standard deviations of the ``lookback``-bar return (>= 0; 0: the sign of the
            trend, still held while it is exactly 0).
        vol_bars: bars of one-bar returns in the volatility estimate (720 = 30 days of hourly bars).
        size: target fraction when in the market, ``0 < size <= 1``.
        long_only: go flat instead of short.
    """

    def __init__(
        self,
        lookback: int = 168,
        band: float = 2.0,
        vol_bars: int = 720,
        size: float = 1.0,
        long_only: bool = False,
    ) -> None:
        # vol_bars >= 2: a standard deviation needs two returns.
        for name, v, low in (("lookback", lookback, 1), ("vol_bars", vol_bars, 2)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        ok = isinstance(band, (int, float)) and not isinstance(band, bool)
        if not (ok and math.isfinite(band) and band >= 0):
            raise ValueError(f"band must be a finite number >= 0 (standard deviations), got {band!r}")
        if isinstance(size, bool) or not (isinstance(size, (int, float)) and 0 < size <= 1):
            raise ValueError(f"size must be in (0, 1], got {size!r}")
        self.lookback = int(lookback)
        self.band = float(band)
        self.vol_bars = int(vol_bars)
        self.size = float(size)
        self.long_only = bool(long_only)
        self.hold_deadband = _HOLD_SHARE * self.size
        self._z: np.ndarray | None = None
        self._state = 0

    def signal(self, close: np.ndarray) -> np.ndarray:
        """``z_t`` for every bar of ``close`` (NaN where there is no signal yet); entry ``t`` uses
        ``close[: t + 1]`` only."""
        logc = np.log(np.asarray(close, dtype=np.float64))
        n = len(logc)
        z = np.full(n, np.nan)
        first = max(self.lookback, self.vol_bars)
        if n <= first:
            return z
        r = np.diff(logc, prepend=logc[0])  # r[i] = log(close_i / close_{i-1}), r[0] = 0 (unused)
        c1 = np.cumsum(r)
        c2 = np.cumsum(r * r)
        v = self.vol_bars
        t = np.arange(first, n)
        mean = (c1[t] - c1[t - v]) / v
        var = np.maximum((c2[t] - c2[t - v]) / v - mean * mean, 0.0)
        sigma = np.sqrt(var) * math.sqrt(self.lookback)
        s = logc[t] - logc[t - self.lookback]
        # sigma = 0 (prices frozen for vol_bars bars): no signal, so the position is held.
        z[t] = np.divide(s, sigma, out=np.zeros_like(s), where=sigma > 0)
        return z

    def reset(self, env: gym.Env) -> None:
        """Compute the signal on the env's market and start flat."""
        self._z = self.signal(env.unwrapped.market.close)
        self._state = 0

    def __call__(self, obs: np.ndarray, info: dict) -> float:
        if self._z is None:
            raise ValueError("Trend needs the market: call policy.reset(env) first (run_episode does)")
        z = self._z[int(info["bar_index"])]
        if z > self.band:
            self._state = 1
        elif z < -self.band:
            self._state = 0 if self.long_only else -1
        return self._state * self.size

    def __repr__(self) -> str:
        return (
            f"Trend(lookback={self.lookback}, band={self.band}, vol_bars={self.vol_bars}, size={self.size}, "
            f"long_only={self.long_only})"
        )


def trend(
    lookback: int = 168, band: float = 2.0, vol_bars: int = 720, size: float = 1.0, long_only: bool = False
) -> Trend:
    """A :class:`Trend` policy (a fresh one: it keeps its position between calls)."""
    return Trend(lookback=lookback, band=band, vol_bars=vol_bars, size=size, long_only=long_only)


# ------------------------------------------------------------------------------------------------- oracle
#: No-trade thresholds (expected next-bar log return, net of expected funding) tried for the planted oracle.
ORACLE_THRESHOLDS = (0.0, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004)
_ORACLE_METRICS = ("sharpe", "sortino", "calmar", "total_return")


def _planted_simulation(sim: Simulation | str) -> Simulation:
    if isinstance(sim, str):
        if not sim.strip().lower().startswith("synthetic:"):
            raise ValueError(
                f"only planted synthetic markets have an oracle, got data {sim!r}; use a "
                "'synthetic:planted:...' spec"
            )
        kind, kwargs = parse_synthetic_spec(sim)
        if kind != "planted":
            raise ValueError(f"only the 'planted' synthetic market has an oracle, not {kind!r} ({sim!r})")
        return simulate(kind, **kwargs)
    if isinstance(sim, Simulation):
        if sim.kind != "planted":
            raise ValueError(f"only the 'planted' synthetic market has an oracle, not {sim.kind!r}")
        return sim
    if isinstance(sim, MarketData):
        raise ValueError(
            "a MarketData does not carry the planted signal: pass the envs.synthetic.Simulation "
            "(simulate('planted', ...)) or its 'synthetic:planted:...' spec"
        )
    raise ValueError(
        f"sim must be a planted Simulation or a 'synthetic:planted:...' spec, got {type(sim).__name__}"
    )


class PlantedOracle:
    """The known-optimal policy of a ``planted`` market: the sign of the expected next-bar return (AR(1)
    prediction net of the expected funding), flat while its magnitude is at most ``threshold``
    (:func:`envs.synthetic.planted_oracle_positions`, decided at bar t's close from bars up to t).

    Positions are computed once on the whole simulated series (the funding forecast then sees the rates
    settled before an env's slice); :meth:`reset` finds the env's market inside it.

    Attributes:
        threshold: the no-trade threshold.
        val_scores: threshold -> validation score, when made by :func:`planted_oracle`.
    """

    def __init__(self, sim: Simulation | str, threshold: float = 0.0) -> None:
        if isinstance(threshold, bool) or not (
            isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0
        ):
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
        self.sim = _planted_simulation(sim)
        self.threshold = float(threshold)
        self.positions = planted_oracle_positions(
            self.sim.market, self.sim.params, funding=self.sim.funding, threshold=self.threshold
        )
        self.val_scores: dict[float, float] = {}
        self._offset: int | None = None

    def reset(self, env: gym.Env) -> None:
        """Locate the env's market in the simulation (it must be the simulation's market or a slice of it)."""
        m = env.unwrapped.market
        full = self.sim.market
        i0 = int(np.searchsorted(full.timestamps, m.timestamps[0]))
        stop = i0 + len(m)
        if not (
            stop <= len(full)
            and np.array_equal(full.timestamps[i0:stop], m.timestamps)
            and np.array_equal(full.close[i0:stop], m.close)
        ):
            raise ValueError(
                f"the env's market ({m.source or m.symbol!r}) is not the planted simulation's "
                f"({full.source!r}) or a slice of it: the oracle knows the signal of that simulation only"
            )
        self._offset = i0

    def __call__(self, obs: np.ndarray, info: dict) -> float:
        if self._offset is None:
            raise ValueError("PlantedOracle needs the env: call policy.reset(env) first (run_episode does)")
        return float(self.positions[self._offset + int(info["bar_index"])])

    def __repr__(self) -> str:
        return f"PlantedOracle(threshold={self.threshold:g})"


def planted_oracle(
    sim: Simulation | str,
    val_env: gym.Env,
    *,
    val_start: int | None = None,
    thresholds: Sequence[float] = ORACLE_THRESHOLDS,
    metric: str = "sharpe",
    seed: int | None = None,
) -> PlantedOracle:
    """The planted oracle with its no-trade threshold chosen on the validation period.

    Each threshold is run over ``val_env`` (one episode from ``val_start``) and scored by ``metric``
    (computed even over a short period: only the ranking matters); the best, the smallest on ties, is kept.
    Nothing after the validation env's last bar is read: the positions are causal and the episode ends
    there. Run the returned policy on the test period with :func:`run_episode`.

    Args:
        sim: the planted :class:`~envs.synthetic.Simulation`, or its ``"synthetic:planted:..."`` spec (the
            signal's parameters live there, not in the bars).
        val_env: a trading env over the validation period (its market a slice of ``sim.market``), e.g. from
            ``agents.env_factory.make_period_env``.
        val_start: first decision bar in ``val_env`` (None: the env's own choice).
        thresholds: candidates (expected next-bar log return).
        metric: ``sharpe`` (default), ``sortino``, ``calmar`` or ``total_return`` (higher is better).
        seed: passed to ``val_env.reset``.

    Returns:
        A :class:`PlantedOracle` with ``threshold`` and ``val_scores`` set.

    Raises:
        ValueError: not a planted market (only those have an oracle), a market that is not the simulation's,
            no thresholds, or an unknown metric.
    """
    if metric not in _ORACLE_METRICS:
        raise ValueError(f"metric must be one of {_ORACLE_METRICS}, got {metric!r}")
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("thresholds must not be empty")
    sim = _planted_simulation(sim)
    scores: dict[float, float] = {}
    for thr in thresholds:
        res = run_episode(val_env, PlantedOracle(sim, thr), start=val_start, seed=seed, short_ratios="keep")
        value = float(res.metrics[metric])
        scores[thr] = -math.inf if math.isnan(value) else value
    best = max(scores, key=lambda t: (scores[t], -t))
    oracle = PlantedOracle(sim, best)
    oracle.val_scores = scores
    return oracle


def is_planted(data: Any) -> bool:
    """Whether ``data`` (a data spec string or a Simulation) is a planted synthetic market (which has an
    oracle)."""
    if isinstance(data, Simulation):
        return data.kind == "planted"
    if isinstance(data, str) and data.strip().lower().startswith("synthetic:"):
        return parse_synthetic_spec(data)[0] == "planted"
    return False


def baseline_policies(
    data: str | Simulation | None = None,
    val_env: gym.Env | None = None,
    *,
    val_start: int | None = None,
    seed: int | None = None,
) -> dict[str, Policy]:
    """The reference policies to run next to an agent, fresh, by name: ``flat``, ``buy_and_hold``, ``trend``
    (defaults), and ``oracle`` when ``data`` is a planted market and a validation env is given (its threshold
    chosen there by :func:`planted_oracle`).

    Args:
        data: the run's data spec (or the planted Simulation); anything else gives no oracle.
        val_env: a trading env over the validation period (None: no oracle, nothing to choose it on).
        val_start: first decision bar in ``val_env``.
        seed: passed to ``val_env.reset``.
    """
    policies: dict[str, Policy] = {"flat": flat, "buy_and_hold": BuyAndHold(1.0), "trend": trend()}
    if val_env is not None and is_planted(data):
        policies["oracle"] = planted_oracle(data, val_env, val_start=val_start, seed=seed)
    return policies


# ------------------------------------------------------------------------------------------------- runner
@dataclass
class EpisodeResult:
    """One episode of a policy.

    Attributes:
        equity: equity at the start and after every step, ``(n_steps + 1,)``.
        positions: position (base units) after every step, ``(n_steps,)``.
        rewards: rewards, ``(n_steps,)``.
        metrics: :func:`envs.metrics.trade_metrics` of ``equity`` (turnover, fees, funding, liquidations from
            the env).
        infos: every step's info dict (the reset info first).
        terminated: ended by liquidation.
        truncated: ended by the episode length / end of data.
        start: first decision bar.
        hold_deadband: the dead-band of the :func:`holding_env` the policy ran in, None if it ran in ``env``
            itself.
    """

    equity: np.ndarray
    positions: np.ndarray
    rewards: np.ndarray
    metrics: dict
    infos: list[dict] = field(repr=False)
    terminated: bool
    truncated: bool
    start: int
    hold_deadband: float | None = None


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
    short_ratios: str = "nan",
) -> EpisodeResult:
    """Run ``act`` for one episode of ``env`` (a CryptoFuturesEnv, possibly wrapped).

    A policy with a ``hold_deadband`` attribute runs in ``holding_env(env, act.hold_deadband)`` instead (see
    the module docstring): same market, costs and period, but it keeps its quantity between decisions.

    Args:
        env: the environment.
        act: ``act(obs, info) -> action`` (see the module docstring); ``act.reset(env)`` is called if it
            exists (with the env the episode runs in).
        start: first decision bar (``reset(options={"start": start})``); ``None`` lets the env choose.
        seed: passed to ``env.reset``.
        max_steps: optional safety cap on steps (``None``: until terminated or truncated).
        short_ratios: passed to :func:`envs.metrics.trade_metrics` (``"nan"``: no annualized ratio over too
            short a period; ``"keep"``: compute them, e.g. to rank policies on one short validation period).

    Returns:
        The :class:`EpisodeResult`.
    """
    band = getattr(act, "hold_deadband", None)
    if band is not None:
        env = holding_env(env, band)
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
    u = env.unwrapped
    metrics = trade_metrics(
        np.asarray(equity),
        bar_seconds=u.market.bar_seconds,
        turnover=info["turnover"] / u.initial_balance,
        fees=info["fees_paid"],
        funding=info["funding_paid"],
        liquidations=sum(bool(i["liquidated"]) for i in infos[1:]),
        short_ratios=short_ratios,
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
        hold_deadband=band,
    )
