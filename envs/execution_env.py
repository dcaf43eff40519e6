"""Optimal execution of a parent order on a perpetual future: the Gymnasium env ``CryptoFuturesExecution-v0``.

The fill model is the trading env's (:mod:`envs.contract`: half-spread, taker fee, square-root impact with the
same EWMA volatility, lot size, minimum order, participation cap); this module adds the parent order, the
deadline, an optional transient (decaying) impact and the implementation-shortfall accounting.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces

from envs.contract import ExecutionConfig, fee, fill_price, sqrt_impact
from envs.features import FeatureConfig, compute_features
from envs.market import MarketData
from envs.trading_env import _split_funding, resolve_market

__all__ = [
    "CryptoFuturesExecutionEnv",
    "OBS_NAMES",
    "SIDES",
    "DEFAULT_QUANTITY_ADV",
    "INFO_KEYS",
    "SUMMARY_KEYS",
    "capped_quantity",
    "parent_lots",
]

#: Accepted values of ``side``.
SIDES = ("buy", "sell", "random")
_ACTIONS = ("continuous", "discrete")
#: Parent size drawn per episode when neither ``quantity`` nor ``quantity_adv`` is given: 1 % to 5 % of the
#: average daily volume (ADV), the range where the square-root law is measured and a desk splits the order.
DEFAULT_QUANTITY_ADV = (0.01, 0.05)

#: Names of the observation's fixed entries; ``ret_0 .. ret_{window-1}`` follow (see the class docstring).
OBS_NAMES = (
    "remaining",
    "time_left",
    "side",
    "vwap_share",
    "next_volume",
    "rel_volume",
    "arrival_move",
    "volatility",
    "spread",
    "funding_rate",
    "time_to_funding",
    "tod_sin",
    "tod_cos",
)
#: Keys of ``step``'s info (``"execution"``, the episode summary with :data:`SUMMARY_KEYS`, is added on the
#: last step); the batched env (``envs.execution_vec_env``) reports the same keys as arrays.
INFO_KEYS = (
    "bar_index",
    "step",
    "side",
    "quantity",
    "remaining",
    "executed",
    "fill_qty",
    "fill_price",
    "fee",
    "forced",
    "forced_qty",
    "arrival_price",
    "shortfall_bps",
    "fees_paid",
    "funding_paid",
)
#: Keys of ``info["execution"]``, the summary of a finished episode.
SUMMARY_KEYS = (
    "shortfall_bps",
    "shortfall_quote",
    "timing_bps",
    "spread_bps",
    "impact_bps",
    "fees_bps",
    "funding_bps",
    "funding_quote",
    "avg_price",
    "arrival_price",
    "quantity",
    "side",
    "n_fills",
    "forced_qty",
    "steps",
    "start_bar",
)
_CLIP = 10.0
_EPS = 1e-12
_DAY = 86_400


def capped_quantity(lots: int, volume: float, max_participation: float | None, lot_size: float) -> int:
    """Lots an order of ``lots`` may fill in a bar of ``volume`` under the participation cap (rounded down).

    Same rule as the trading env: at most ``max_participation * volume`` base units, rounded down to the lot;
    a bar with zero volume fills nothing; ``None`` disables the cap.
    """
    if max_participation is None:
        return lots
    return min(lots, int(math.floor(max_participation * volume / lot_size + 1e-9)))


def parent_lots(qty: float | np.ndarray, lot_size: float) -> np.ndarray:
    """Whole lots in a parent size (one or an array), rounded down: the single and the batched env's rule.

    The tolerance is relative so that a size read back from ``info["quantity"]`` (lots x lot) gives the same
    lots at any size: ``lots * lot / lot`` can fall a few ulp short of ``lots``, which an absolute ``1e-9``
    turned into one lot less above ~3e7 lots.
    """
    x = np.divide(qty, lot_size)
    return np.floor(x + 1e-9 * np.maximum(1.0, x))


def _size_range(name: str, value: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        lo = hi = float(value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        lo, hi = (float(v) for v in value)
    else:
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}")
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"{name} must be > 0 with low <= high, got {value!r}")
    return lo, hi


def _size(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name} must be one number > 0, got {value!r}")
    return float(value)


def _side_sign(value: Any, where: str) -> int:
    if value in ("buy", 1, 1.0):
        return 1
    if value in ("sell", -1, -1.0):
        return -1
    raise ValueError(f"{where} must be 'buy' or 'sell' (or +1 / -1), got {value!r}")


class CryptoFuturesExecutionEnv(gym.Env):
    """
    ## Description

    Optimal execution of a parent order on a USDT-margined perpetual future. Each episode the agent must buy
    (or sell) ``Q`` base units within ``horizon_bars`` bars, splitting it into child market orders, and is
    judged by its *implementation shortfall*: what it paid beyond ``Q`` times the arrival price, fees included
    (Perold 1988, "The implementation shortfall: paper versus reality", J. Portfolio Management 14(3)).
    Trading fast pays impact; trading slowly bears the price risk of the unexecuted rest. TWAP, VWAP and
    Almgren–Chriss schedules are in :mod:`envs.execution_baselines`.

    Timeline. The episode starts at a *decision bar* ``t0``: the agent has seen bar ``t0``'s close. The
    **arrival price** ``P0`` is that close (the last price known when the parent order arrives). Step
    ``k = 0 .. T-1`` is decided on the close of bar ``t0 + k``; its child order fills at the **open of bar**
    ``t0 + k + 1`` (the trading env's fill model with ``fill_at="next_open"``). Prices are historical: the
    market reacts to the agent only through the agent's own fill prices (impact and transient impact).

    Fill of a child order of ``q`` base units at bar ``j`` (side ``s = +1`` buy, ``-1`` sell), with the
    functions of :mod:`envs.contract` and ``execution``'s settings:

    - ``q`` is rounded down to the lot (with a tolerance of 1e-7 of the remainder, the float32 action's
      precision); an order that would leave less than ``min_qty`` behind takes the whole remainder; the
      participation cap limits it to ``max_participation * volume_j`` (rounded down to the lot, never leaving
      a remainder below ``min_qty``); an order below ``min_qty`` is not sent.
    - reference ``ref = open_j * (1 + s * D_j)``, ``D_j`` being the transient displacement left by the
      agent's earlier fills (0 unless ``impact_halflife`` is set);
    - impact ``I = impact_coef * sigma_t * sqrt(q / volume_j)``, ``sigma_t`` the EWMA volatility of log
      returns up to the decision bar ``t = j - 1`` (the trading env's estimate);
    - price ``p = ref * (1 + s * (half_spread + I))``; fee ``taker_fee * q * p``;
    - transient impact: ``D_{j+1} = rho * (D_j + I)``, ``rho = 2 ** (-1 / impact_halflife)``: part of a
      fill's impact is still in the price later fills see, decaying with that half-life in bars (an
      exponential-kernel propagator, Obizhaeva & Wang 2013, J. Financial Markets 16(1)). ``None`` (default):
      no carry-over, the purely temporary impact of Almgren & Chriss.

    **Forced completion.** The child order of the *last* step (``k = T-1``, decided on bar ``t0 + T - 1``'s
    close) is replaced by one market order for everything that remains, whatever the action. It fills at bar
    ``t0 + T``'s open, is *not* limited by the participation cap (it sweeps the book) and pays the
    square-root impact of its whole size (if that bar traded nothing, its expected volume from the intraday
    profile stands in). ``info["forced"]`` is True on that step and ``info["forced_qty"]`` is the part of the
    order beyond what the agent's own last order would have filled.

    ## Action Space

    ``action="continuous"``: an ``ndarray`` of shape ``(1,)``; the fraction of the *remaining* quantity sent
    as this bar's child order is ``f = (a + 1) / 2`` (``-1``: wait, ``1``: everything now).

    | Num | Action                           | Min  | Max |
    |-----|----------------------------------|------|-----|
    | 0   | ``2 f - 1``, f = share of rest   | -1.0 | 1.0 |

    ``action="discrete"``: ``Discrete(n_levels)``; level ``i`` sends ``i / (n_levels - 1)`` of the rest.

    ## Observation Space

    A float32 ``ndarray`` of shape ``(13 + window,)``. Every entry uses bars up to the decision bar ``t``'s
    close only and every normalization uses earlier bars (``D = profile_days``, ``s`` the side):

    | Num  | Observation     | Definition                                                        | Min | Max |
    |------|-----------------|-------------------------------------------------------------------|-----|-----|
    | 0    | remaining       | unexecuted quantity / Q                                           | 0   | 1   |
    | 1    | time_left       | steps left (this one included) / T                                | 0   | 1   |
    | 2    | side            | +1 buy, -1 sell                                                   | -1  | 1   |
    | 3    | vwap_share      | next bar's expected volume / that of all remaining fill bars      | 0   | 1   |
    | 4    | next_volume     | log(next bar's expected volume / mean bar volume of past D days)  | -10 | 10  |
    | 5    | rel_volume      | log(volume_t / intraday profile of bar t over the D prior days)   | -10 | 10  |
    | 6    | arrival_move    | s * log(close_t / P0) / sigma_t: adverse move since arrival       | -10 | 10  |
    | 7    | volatility      | sigma_t, percent                                                  | -10 | 10  |
    | 8    | spread          | Abdi–Ranaldo spread estimate over the last 24 bars, bp / 10       | 0   | 10  |
    | 9    | funding_rate    | last settled funding rate, bp                                     | -10 | 10  |
    | 10   | time_to_funding | time to the next settlement / funding interval                    | 0   | 1   |
    | 11   | tod_sin         | sin(2 pi h / 24), h = UTC hour of the next (fill) bar's open      | -1  | 1   |
    | 12   | tod_cos         | cos(2 pi h / 24)                                                  | -1  | 1   |
    | 13+i | ret_i           | s * log return of bar t - i, in sigmas (the trading env's)        | -10 | 10  |

    The *intraday profile* of a bar is the mean volume of the bars at the same time of day on the previous
    ``D`` days; the *expected volume* of a future bar seen from bar ``t`` is the mean over the last ``D``
    same-time bars at or before ``t``. Returns and the arrival move are signed by the side: positive always
    means "the price moved against the order". Entries are clipped to the bounds.

    ## Rewards

    In basis points of the arrival notional ``Q * P0``. With ``M_k`` the close of the decision bar after
    ``k`` steps (``M_0 = P0``) and ``R_k`` the quantity still to trade, the mark-to-market shortfall is
    ``S_k = s * sum_i q_i * (p_i - P0) + fees + s * R_k * (M_k - P0)`` and the reward of step ``k`` is
    ``-(S_{k+1} - S_k) / (Q * P0) * 1e4``: this fill's cost against the last close plus the price move on
    what is left. As ``S_0 = 0`` and ``R = 0`` at the end, the rewards sum to minus the episode's
    implementation shortfall ``IS = s * (sum_i q_i * p_i - Q * P0) + fees``, in bp, which the last step's
    ``info["execution"]["shortfall_bps"]`` reports with its decomposition
    ``timing_bps + spread_bps + impact_bps + fees_bps``. Funding on the position being built is not in it:
    it is reported beside it, ``info["funding_paid"]`` (USDT, cumulative, positive = paid) and the summary's
    ``funding_bps``, with the trading env's timing: a settlement at a fill bar's open is paid by the position
    held at that instant, i.e. executed *before* that bar's child order (which fills just after it); a child
    filled at the settlement's open does not pay it. Marked at that open: ``position * open_j * rate``.

    ## Starting State

    The decision bar ``t0`` is drawn uniformly from ``[min_start, n_bars - 1 - T]`` (``min_start``: warm-up
    of the volume profile and of the volatility), the side from ``side`` ("random": buy or sell with equal
    odds) and the size uniformly from ``quantity`` (base units) or ``quantity_adv`` (fraction of the mean
    daily volume of the ``D`` days up to ``t0``), rounded down to the lot (at least ``min_qty``), all from
    ``self.np_random``. ``reset(options=...)`` may fix any of them: ``{"start": t0, "side": "buy",
    "quantity": base_units}`` or ``{"quantity_adv": fraction}``.

    ## Episode End

    ``terminated=True`` once the whole quantity is executed, at step ``T`` at the latest (forced
    completion). ``truncated`` is always False: the deadline is part of the task and the time left is
    observed.

    ## Arguments

    - ``market``: ``None`` (embedded ``btcusdt-1h``), a ``MarketData``, a DataFrame or a spec string for
      ``envs.loaders.load_market``.
    - ``horizon_bars``: ``T``, bars to complete the order (default 12).
    - ``quantity`` / ``quantity_adv``: parent size in base units, or as a fraction of the average daily
      volume; a number or a ``(low, high)`` range drawn per episode. At most one of the two; default
      ``quantity_adv=(0.01, 0.05)``.
    - ``side``: ``"buy"``, ``"sell"`` or ``"random"``.
    - ``action``, ``n_levels``: action space (above; continuous by default, 11 levels when discrete).
    - ``execution``: :class:`envs.contract.ExecutionConfig` (fees, spread, impact, lot, participation cap).
      Market orders pay ``taker_fee``; ``deadband`` does not apply (there is no target position).
    - ``impact_halflife``: half-life in bars of the transient impact; ``None`` (default) for none.
    - ``window``: number of past returns observed (default 8).
    - ``profile_days``: ``D``, days in the intraday volume profile and the average daily volume (default 7).

    ```python
    >>> import gymnasium as gym, envs
    >>> env = gym.make("CryptoFuturesExecution-v0", horizon_bars=8, side="buy")
    >>> obs, info = env.reset(seed=0, options={"quantity_adv": 0.02})
    ```

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        market: MarketData | pd.DataFrame | str | None = None,
        *,
        horizon_bars: int = 12,
        quantity: float | tuple[float, float] | None = None,
        quantity_adv: float | tuple[float, float] | None = None,
        side: str = "random",
        action: str = "continuous",
        n_levels: int = 11,
        execution: ExecutionConfig | None = None,
        impact_halflife: float | None = None,
        window: int = 8,
        profile_days: int = 7,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r}: this env has no rendering; pass None")
        if (
            isinstance(horizon_bars, bool)
            or not isinstance(horizon_bars, (int, np.integer))
            or horizon_bars < 1
        ):
            raise ValueError(f"horizon_bars must be an int >= 1, got {horizon_bars!r}")
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if (
            isinstance(profile_days, bool)
            or not isinstance(profile_days, (int, np.integer))
            or profile_days < 1
        ):
            raise ValueError(f"profile_days must be an int >= 1, got {profile_days!r}")
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        if action not in _ACTIONS:
            raise ValueError(f"action must be one of {_ACTIONS}, got {action!r}")
        if action == "discrete" and (
            isinstance(n_levels, bool) or not isinstance(n_levels, (int, np.integer)) or n_levels < 2
        ):
            raise ValueError(f"n_levels must be an int >= 2 (0 and 'everything' at least), got {n_levels!r}")
        if quantity is not None and quantity_adv is not None:
            raise ValueError(
                "give the parent size either as quantity (base units) or as quantity_adv, not both"
            )
        if execution is None:
            execution = ExecutionConfig()
        elif not isinstance(execution, ExecutionConfig):
            raise ValueError(
                f"execution must be an envs.contract.ExecutionConfig, got {type(execution).__name__}"
            )
        if impact_halflife is not None and not (
            isinstance(impact_halflife, (int, float))
            and math.isfinite(impact_halflife)
            and impact_halflife > 0
        ):
            raise ValueError(f"impact_halflife must be a number of bars > 0 or None, got {impact_halflife!r}")

        self.market = resolve_market(market)
        self.horizon = int(horizon_bars)
        self.window = int(window)
        self.profile_days = int(profile_days)
        self.side_mode = side
        self.action_mode = action
        self.n_levels = int(n_levels)
        self.execution = execution
        self.impact_halflife = impact_halflife
        self._rho = 0.0 if impact_halflife is None else 2.0 ** (-1.0 / float(impact_halflife))
        if quantity is not None:
            self._size_kind, self._size_range = "base", _size_range("quantity", quantity)
        else:
            self._size_kind = "adv"
            self._size_range = _size_range(
                "quantity_adv", DEFAULT_QUANTITY_ADV if quantity_adv is None else quantity_adv
            )
        self._lot = float(execution.lot_size)
        self._min_lots = max(1, math.ceil(execution.min_qty / self._lot - 1e-9))

        self._precompute()
        n = len(self.market)
        self.max_start = n - 1 - self.horizon
        if self.max_start < self.min_start:
            raise ValueError(
                f"market {self.market.source or self.market.symbol!r} has {n} bars; this env needs at least "
                f"{self.min_start + self.horizon + 1} rows (bars) in total (warm-up of {self.min_start} "
                f"bars: {self.profile_days} "
                f"day(s) of volume profile and the volatility estimate, plus horizon_bars={self.horizon} and "
                "one bar to fill). "
                "Load more bars, or lower profile_days / horizon_bars."
            )

        n_obs = len(OBS_NAMES) + self.window
        low = np.full(n_obs, -_CLIP, dtype=np.float32)
        high = np.full(n_obs, _CLIP, dtype=np.float32)
        for i, name in enumerate(OBS_NAMES):
            if name in ("remaining", "time_left", "vwap_share", "time_to_funding"):
                low[i], high[i] = 0.0, 1.0
            elif name in ("side", "tod_sin", "tod_cos"):
                low[i], high[i] = -1.0, 1.0
            elif name == "spread":
                low[i] = 0.0
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)
        if action == "continuous":
            self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32)
        else:
            self.action_space = spaces.Discrete(self.n_levels)
        self._obs_low, self._obs_high = low, high
        self._t0 = -1  # no episode yet

    # ----------------------------------------------------------------------------------- precomputation

    def _precompute(self) -> None:
        """Causal per-bar arrays (vectorized, once per env)."""
        m = self.market
        n = len(m)
        bar = int(m.bar_seconds)
        if bar > _DAY or _DAY % bar:
            raise ValueError(
                f"market bar interval is {bar}s; the intraday volume profile needs bars that divide a day "
                "(e.g. 60, 300, 900, 3600, 14400 s). Resample the data "
                "(envs.loaders.load_market(..., resample=...))."
            )
        P = _DAY // bar
        D = self.profile_days
        self.bars_per_day = P
        feats = compute_features(m, FeatureConfig(vol_halflife=self.execution.vol_halflife))
        self._feats = feats
        names = feats.names
        self._ret = np.asarray(feats.values[:, names.index("log_return")], dtype=np.float64)
        self._funding = np.asarray(feats.values[:, names.index("funding_rate")], dtype=np.float64)
        self._ttf = np.asarray(feats.values[:, names.index("time_to_funding")], dtype=np.float64)
        self._sigma = np.asarray(feats.volatility, dtype=np.float64)

        vol = np.asarray(m.volume, dtype=np.float64)
        # prof[i] = mean volume of bars i, i-P, ..., i-(D-1)P: same time of day over the D days ending at i.
        prof = np.full(n, np.nan)
        for b in range(min(P, n)):
            v = vol[b::P]
            cs = np.concatenate(([0.0], np.cumsum(v)))
            k = np.arange(len(v))
            ok = k >= D - 1
            out = np.full(len(v), np.nan)
            out[ok] = (cs[k[ok] + 1] - cs[k[ok] + 1 - D]) / D
            prof[b::P] = out
        self._prof = prof
        csum = np.concatenate(([0.0], np.cumsum(vol)))
        adv = np.full(n, np.nan)
        # adv[t] = volume of the D days ending at bar t, per day.
        adv[D * P - 1 :] = (csum[D * P :] - csum[: n - D * P + 1]) / D
        self._adv = adv
        rel = np.zeros(n)
        if n > D * P:
            with np.errstate(divide="ignore", invalid="ignore"):
                # profile of bar t from the D previous days = prof[t - P] (bars t-P, ..., t-DP)
                rel[D * P :] = np.log((vol[D * P :] + _EPS) / (prof[(D - 1) * P : n - P] + _EPS))
        self._rel_volume = rel

        # Abdi & Ranaldo (2017, "A simple estimation of bid-ask spreads from daily close, high, and low
        # prices", RFS 30(12)): s^2 = 4 (c_{t-1} - eta_{t-1}) (c_{t-1} - eta_t), eta = log mid-range; averaged
        # over the 24 bars ending at t (both terms are known at t's close), floored at 0 as the paper does.
        c = np.log(np.asarray(m.close))
        eta = np.log((np.asarray(m.high) + np.asarray(m.low)) / 2.0)
        s2 = np.zeros(n)
        s2[1:] = 4.0 * (c[:-1] - eta[:-1]) * (c[:-1] - eta[1:])
        L = 24
        cs2 = np.concatenate(([0.0], np.cumsum(s2)))
        mean_s2 = np.zeros(n)
        idx = np.arange(n)
        lo = np.maximum(idx + 1 - L, 1)
        mean_s2[1:] = (cs2[idx[1:] + 1] - cs2[lo[1:]]) / (idx[1:] + 1 - lo[1:])
        self._spread = np.sqrt(np.maximum(mean_s2, 0.0)) * 1e4 / 10.0

        secs = (np.asarray(m.timestamps, dtype=np.int64) // 10**9) % _DAY
        phase = 2.0 * np.pi * secs / _DAY
        self._tod_sin, self._tod_cos = np.sin(phase), np.cos(phase)

        self.min_start = int(max(D * P, feats.first_valid, self.window + 1))
        # Scalar hot path: Python lists are much cheaper to index than numpy arrays.
        self._open = m.open.tolist()
        self._close = m.close.tolist()
        self._volume = vol.tolist()
        self._sigma_l = self._sigma.tolist()
        self._rate_open, self._rate_in = _split_funding(m)

    # ----------------------------------------------------------------------------------- public helpers

    def expected_volume(self, at_bar: int | None = None) -> np.ndarray:
        """Expected volume of each remaining fill bar of the episode, as estimated on decision bar ``at_bar``.

        For a fill bar ``j > at_bar`` it is the mean volume of the last ``profile_days`` bars at the same time
        of day at or before ``at_bar`` (data up to ``at_bar`` only). Default ``at_bar``: the decision bar.

        Returns:
            float64 array for bars ``at_bar + 1 .. t0 + T``.
        """
        self._require_episode()
        t = self._t if at_bar is None else int(at_bar)
        last = self._t0 + self.horizon
        if not self._t0 <= t < last:
            raise ValueError(
                f"at_bar must be a decision bar of this episode in [{self._t0}, {last - 1}], got {t}"
            )
        j = np.arange(t + 1, last + 1)
        P = self.bars_per_day
        src = j - P * ((j - t + P - 1) // P)
        return self._prof[src]

    def volatility(self, at_bar: int | None = None) -> float:
        """EWMA volatility of log returns per bar up to ``at_bar`` (default: current decision bar)."""
        self._require_episode()
        return float(self._sigma[self._t if at_bar is None else int(at_bar)])

    def mean_bar_volume(self, at_bar: int | None = None) -> float:
        """Mean bar volume over the ``profile_days`` days ending at ``at_bar`` (default: the decision bar)."""
        self._require_episode()
        return float(self._adv[self._t if at_bar is None else int(at_bar)] / self.bars_per_day)

    def fraction_to_action(self, fraction: float) -> np.ndarray | int:
        """The action sending ``fraction`` (in [0, 1]) of what remains (nearest level if discrete)."""
        f = min(max(float(fraction), 0.0), 1.0)
        if self.action_mode == "continuous":
            return np.array([2.0 * f - 1.0], dtype=np.float32)
        return int(round(f * (self.n_levels - 1)))

    @property
    def arrival_price(self) -> float:
        self._require_episode()
        return self._p0

    @property
    def quantity(self) -> float:
        """Parent size of the current episode, base units."""
        self._require_episode()
        return self._q_lots * self._lot

    @property
    def remaining(self) -> float:
        self._require_episode()
        return self._rem_lots * self._lot

    @property
    def side(self) -> int:
        """+1 buy, -1 sell (current episode)."""
        self._require_episode()
        return self._s

    @property
    def step_index(self) -> int:
        """Steps taken in the current episode (0 right after reset)."""
        self._require_episode()
        return self._k

    @property
    def start_bar(self) -> int:
        self._require_episode()
        return self._t0

    @property
    def decision_bar(self) -> int:
        """The bar whose close the agent has just seen."""
        self._require_episode()
        return self._t

    def _require_episode(self) -> None:
        if self._t0 < 0:
            raise RuntimeError("call reset() before using the episode's state")

    # ----------------------------------------------------------------------------------- gym API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"start", "side", "quantity", "quantity_adv"}
        if unknown:
            raise ValueError(
                f"unknown reset option(s) {sorted(unknown)}; accepted: start, side, quantity, quantity_adv"
            )
        rng = self.np_random
        if "start" in options and options["start"] is not None:
            t0 = options["start"]
            if (
                isinstance(t0, bool)
                or not isinstance(t0, (int, np.integer))
                or not (self.min_start <= t0 <= self.max_start)
            ):
                raise ValueError(
                    f"options['start'] must be an int decision bar in [{self.min_start}, {self.max_start}] "
                    f"(warm-up before, horizon after), got {t0!r}"
                )
            t0 = int(t0)
        else:
            t0 = int(rng.integers(self.min_start, self.max_start + 1))
        if options.get("side") is not None:
            s = _side_sign(options["side"], "options['side']")
        elif self.side_mode == "random":
            s = 1 if rng.random() < 0.5 else -1
        else:
            s = 1 if self.side_mode == "buy" else -1
        if options.get("quantity") is not None and options.get("quantity_adv") is not None:
            raise ValueError("give options['quantity'] or options['quantity_adv'], not both")
        if options.get("quantity") is not None:
            qty = _size("options['quantity']", options["quantity"])
        elif options.get("quantity_adv") is not None:
            qty = _size("options['quantity_adv']", options["quantity_adv"]) * float(self._adv[t0])
        else:
            lo, hi = self._size_range
            draw = lo if lo == hi else float(rng.uniform(lo, hi))
            qty = draw if self._size_kind == "base" else draw * float(self._adv[t0])
        lots = int(parent_lots(qty, self._lot))
        if lots < self._min_lots:
            if "quantity" in options:
                raise ValueError(
                    f"options['quantity']={options['quantity']!r} is below the minimum order "
                    f"{self.execution.min_qty} (lot {self._lot}); ask for more"
                )
            lots = self._min_lots

        self._t0 = self._t = t0
        self._k = 0
        self._s = s
        self._q_lots = self._rem_lots = lots
        self._p0 = self._close[t0]
        self._notional0 = lots * self._lot * self._p0
        self._disp = 0.0
        self._mtm = 0.0  # S_k in quote currency
        self._cash = 0.0  # sum(q_i * p_i)
        self._fees = 0.0
        self._timing = self._spread_cost = self._impact = 0.0
        self._n_fills = 0
        self._forced_qty = 0.0
        self._funding_paid = 0.0
        info = {
            "bar_index": t0,
            "step": 0,
            "side": s,
            "quantity": self.quantity,
            "remaining": self.remaining,
            "arrival_price": self._p0,
            "horizon": self.horizon,
        }
        return self._obs(), info

    def _fraction(self, action: Any) -> float:
        if self.action_mode == "continuous":
            a = np.asarray(action, dtype=np.float64)
            if a.size != 1:
                raise ValueError(f"continuous action must have shape (1,), got shape {a.shape}")
            v = float(a.reshape(-1)[0])
            if not math.isfinite(v):
                raise ValueError(f"action must be finite, got {v}")
            return min(max((v + 1.0) * 0.5, 0.0), 1.0)
        a = np.asarray(action)
        if a.size != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"discrete action must be one int in [0, {self.n_levels - 1}], got {action!r}")
        i = int(a.reshape(-1)[0])
        if not 0 <= i < self.n_levels:
            raise ValueError(f"discrete action must be in [0, {self.n_levels - 1}], got {i}")
        return i / (self.n_levels - 1)

    def step(self, action: Any):
        if self._t0 < 0:
            raise RuntimeError("call reset() before step()")
        if self._rem_lots == 0:
            raise RuntimeError("the episode is over (all executed); call reset()")
        frac = self._fraction(action)
        ex = self.execution
        t, j, s = self._t, self._t + 1, self._s
        rem = self._rem_lots
        vol_j = self._volume[j]
        last = self._k == self.horizon - 1

        # The tolerance absorbs the float32 action's rounding (~1e-7 of the remainder) so that a policy asking
        # for a whole number of lots gets it.
        lots = int(math.floor(frac * rem + 1e-7 * rem + 1e-9))
        if rem - lots < self._min_lots:
            lots = rem  # never leave a sliver that could not be sent
        capped = capped_quantity(lots, vol_j, ex.max_participation, self._lot)
        if capped < lots and rem - capped < self._min_lots:
            capped = rem - self._min_lots
        if capped < self._min_lots:
            capped = 0
        forced_lots = 0
        if last:
            forced_lots = rem - capped
            capped = rem

        # Funding settled at bar j's open is paid by the position executed so far (held at that instant).
        held = s * (self._q_lots - rem) * self._lot
        open_j = self._open[j]
        rate = self._rate_open[j]
        if rate != 0.0 and held != 0.0:
            self._funding_paid += held * open_j * rate
        q = capped * self._lot
        price = 0.0  # reported in info; 0 when nothing filled (NaN would break equality checks on infos)
        f = 0.0
        impact = 0.0
        if capped:
            liquidity = vol_j
            if liquidity <= 0.0:  # only a forced order can meet an empty bar: use the profile's expectation
                liquidity = float(self._prof[j - self.bars_per_day]) if j >= self.bars_per_day else 0.0
                liquidity = liquidity if liquidity > 0 else float(self._adv[t] / self.bars_per_day)
            impact = sqrt_impact(q, liquidity, self._sigma_l[t], ex.impact_coef)
            ref = open_j * (1.0 + s * self._disp)
            price = fill_price(s, ref, ex.half_spread, impact)
            f = fee(q, price, ex.taker_fee)
            self._cash += q * price
            self._fees += f
            self._timing += s * q * (open_j - self._p0)
            self._spread_cost += q * ref * ex.half_spread
            self._impact += s * q * (price - open_j) - q * ref * ex.half_spread
            self._n_fills += 1
            self._rem_lots = rem - capped
        self._forced_qty = forced_lots * self._lot
        self._disp = self._rho * (self._disp + impact)
        rate = self._rate_in[j]  # settlements later inside a long bar: the position after the fill
        if rate != 0.0:
            self._funding_paid += s * (self._q_lots - self._rem_lots) * self._lot * open_j * rate

        self._k += 1
        self._t = j
        mark = self._close[j]
        remq = self._rem_lots * self._lot
        mtm = (
            s * (self._cash - (self._q_lots * self._lot - remq) * self._p0)
            + self._fees
            + s * remq * (mark - self._p0)
        )
        reward = -(mtm - self._mtm) / self._notional0 * 1e4
        self._mtm = mtm
        terminated = self._rem_lots == 0

        info: dict[str, Any] = {
            "bar_index": j,
            "step": self._k,
            "side": s,
            "quantity": self._q_lots * self._lot,
            "remaining": remq,
            "executed": self._q_lots * self._lot - remq,
            "fill_qty": q,
            "fill_price": price,
            "fee": f,
            "forced": last,
            "forced_qty": self._forced_qty,
            "arrival_price": self._p0,
            "shortfall_bps": mtm / self._notional0 * 1e4,
            "fees_paid": self._fees,
            "funding_paid": self._funding_paid,
        }
        if terminated:
            info["execution"] = self._summary()
        return self._obs(), float(reward), terminated, False, info

    def _summary(self) -> dict[str, float]:
        Q = self._q_lots * self._lot
        scale = 1e4 / self._notional0
        s = self._s
        shortfall = s * (self._cash - Q * self._p0) + self._fees
        return {
            "shortfall_bps": shortfall * scale,
            "shortfall_quote": shortfall,
            "timing_bps": self._timing * scale,
            "spread_bps": self._spread_cost * scale,
            "impact_bps": self._impact * scale,
            "fees_bps": self._fees * scale,
            "funding_bps": self._funding_paid * scale,
            "funding_quote": self._funding_paid,
            "avg_price": self._cash / Q,
            "arrival_price": self._p0,
            "quantity": Q,
            "side": s,
            "n_fills": self._n_fills,
            "forced_qty": self._forced_qty,
            "steps": self._k,
            "start_bar": self._t0,
        }

    def _obs(self) -> np.ndarray:
        t, s = self._t, self._s
        k, T = self._k, self.horizon
        o = np.empty(len(OBS_NAMES) + self.window, dtype=np.float64)
        o[0] = self._rem_lots / self._q_lots
        o[1] = (T - k) / T
        o[2] = s
        mean_bar = self._adv[t] / self.bars_per_day
        if k < T:
            ev = self.expected_volume(t)
            tot = float(ev.sum())
            o[3] = ev[0] / tot if tot > 0 else 1.0 / (T - k)
            o[4] = math.log((ev[0] + _EPS) / (mean_bar + _EPS))
            nxt = t + 1
        else:  # terminal observation: nothing left to schedule
            o[3] = 0.0
            o[4] = 0.0
            nxt = t
        o[5] = self._rel_volume[t]
        o[6] = s * math.log(self._close[t] / self._p0) / self._sigma_l[t]
        o[7] = self._sigma_l[t] * 100.0
        o[8] = self._spread[t]
        o[9] = self._funding[t]
        o[10] = self._ttf[t]
        # Time of day of the next bar's open = this bar's open + one bar.
        if nxt < len(self._open):
            o[11], o[12] = self._tod_sin[nxt], self._tod_cos[nxt]
        else:
            o[11], o[12] = self._tod_sin[t], self._tod_cos[t]
        w = self.window
        o[13:] = s * self._ret[t - w + 1 : t + 1][::-1]
        np.clip(o, self._obs_low, self._obs_high, out=o)
        return o.astype(np.float32)
