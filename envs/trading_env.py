"""``CryptoFutures-v0``: trade one USDT-margined perpetual future, bar by bar, with realistic execution."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces

from envs.contract import (
    Account,
    ExecutionConfig,
    MarginConfig,
    flat_rate_warning,
    liquidation_price,
    maintenance_margin,
    round_to_lot,
)
from envs.features import FEATURE_NAMES, FeatureConfig, compute_features
from envs.loaders import load_market
from envs.market import MarketData
from envs.metrics import trade_metrics

__all__ = ["CryptoFuturesEnv", "REWARDS", "ACCOUNT_FEATURES", "INFO_KEYS", "resolve_market"]

#: Reward functions accepted by ``reward=``.
REWARDS = ("log_return", "differential_sharpe", "pnl")
#: Names of the account-state entries appended after the feature window, in order.
ACCOUNT_FEATURES = ("position_fraction", "unrealized_over_equity", "margin_ratio")
#: Keys present in ``info`` after every ``reset`` and ``step``.
INFO_KEYS = (
    "equity",
    "position",
    "price",
    "realized_pnl",
    "unrealized_pnl",
    "fees_paid",
    "funding_paid",
    "slippage_paid",
    "turnover",
    "liquidated",
    "bankrupt",
    "bar_index",
    "bad_debt",
    "trade_qty",
    "unfilled_qty",
)

# The log-return reward uses log(max(equity, floor)) with floor = _EQUITY_FLOOR * initial_balance, so that a
# liquidation to zero equity gives a large, finite negative reward (log(1e-6) ~ -13.8 from a full account).
_EQUITY_FLOOR = 1e-6


def resolve_market(market: MarketData | pd.DataFrame | str | os.PathLike | None) -> MarketData:
    """Turn an env's ``market`` argument into :class:`MarketData` (shared by the trading and execution envs).

    ``None`` is the embedded default ``"btcusdt-1h"``. A DataFrame (UTC DatetimeIndex of bar open times,
    OHLCV columns, optional ``funding_rate``) goes through :meth:`MarketData.from_frame`, which validates it.
    Strings and paths go through :func:`envs.loaders.load_market` (embedded names, CSV/Parquet files,
    ``synthetic:...``).
    """
    if isinstance(market, MarketData):
        return market
    if isinstance(market, pd.DataFrame):
        return MarketData.from_frame(market)
    if market is None:
        market = "btcusdt-1h"
    if isinstance(market, (str, os.PathLike)):
        return load_market(market)
    raise ValueError(
        f"market must be a MarketData, a pandas DataFrame, a data spec string or path, or None (embedded "
        f"data); got {type(market).__name__}"
    )


def _split_funding(market: MarketData) -> tuple[list[float], list[float]]:
    """Per-bar funding split into the part settled at the bar's open and the part settled later inside it.

    Settlements are on the exchange's grid: multiples of ``funding_interval_hours`` since the epoch (00, 08,
    16 UTC on Binance). On bars no longer than the interval every settlement falls on a bar open; a longer bar
    (e.g. 1d) holds several, one of them at its open when the open is on the grid. The bar's summed rate is
    shared equally among the grid instants inside it. A bar with funding but no grid instant inside (funding
    off the grid) is charged at its open.
    """
    ts = market.timestamps
    rate = market.funding_rate
    grid = int(round(market.funding_interval_hours * 3600)) * 10**9
    if grid <= 0:
        return rate.tolist(), [0.0] * len(rate)
    bar = market.bar_seconds * 10**9
    on_grid = ts % grid == 0
    # grid instants in [open, open + bar)
    count = (ts + bar - 1) // grid - (ts - 1) // grid
    frac = np.where(count > 0, on_grid / np.maximum(count, 1), 1.0)
    at_open = rate * frac
    return at_open.tolist(), (rate - at_open).tolist()


class CryptoFuturesEnv(gym.Env):
    r"""Trade a USDT-margined (linear) perpetual future on historical or synthetic bars.

    ## Description

    At each step the agent has seen bar `t`'s close and chooses a *target position*. The order that moves the
    position there is a market order that fills in the next bar (`t+1`), at its open by default; the step then
    plays bar `t+1` out — funding, liquidation, mark-to-market at its close — and the agent decides again. The
    account holds one position in base units (BTC) in a wallet of quote currency (USDT), with average entry
    price, realized and unrealized PnL, fees and funding, cross margin on the whole account (see
    `envs.contract`).

    Order of events in step `t -> t+1` (default `fill_at="next_open"`), exactly as `step` runs them:

    1. *order*: target quantity `q* = a * leverage * equity_t / close_t` (`a` the action's target fraction);
       the order `q* - position` is skipped if it moves the position by less than `deadband` of the maximum
       (a target of exactly 0, i.e. going flat, is always honored), rounded toward zero to `lot_size`, dropped
       below `min_qty`;
    2. *gap check* (before any fill): if bar `t+1` opens beyond the liquidation price of the position carried
       from `t`, it is liquidated at the open (worse than the liquidation price), the order is not sent
       (reported unfilled) and the episode ends;
    3. *funding at the open*: a settlement at bar `t+1`'s open (every settlement, on bars of up to 8 h aligned
       to the 00/08/16 UTC grid) is paid by the position held at that instant, the carried one:
       `position * open_{t+1} * rate` (longs pay when the rate is positive). An order decided at `close_t`
       fills just after it, so a position closed at that open pays and one opened there does not;
    4. *margin trim*: an order that increases the position is cut (to the lot) so that after the fill the
       initial margin `|position| * open_{t+1} / leverage` does not exceed the equity left after the fee,
       spread and impact, and the notional stays within the brackets allowed at this leverage
       (`MarginConfig.tiers` with a max-leverage column), as an exchange rejects what the margin does not
       cover; the cut part is reported in `info["unfilled_qty"]`;
    5. *fill* at `open_{t+1} * (1 ± (half_spread + impact))` (+ buys, - sells), impact
       `= impact_coef * sigma_t * sqrt(qty / volume_{t+1})` with `sigma_t` the EWMA volatility of log returns
       up to bar `t`; at most `max_participation * volume_{t+1}` fills (rounded down to the lot), the rest is
       dropped and reported in `info["unfilled_qty"]`; taker fee on the filled notional. A close that fills
       beyond the bankruptcy price (spread, impact and fee larger than the equity left) leaves the wallet
       negative: the shortfall is bad debt (`info["bad_debt"]`), the wallet 0, and the episode ends
       (`info["bankrupt"]`);
    6. *funding inside the bar* (only bars longer than the funding interval, e.g. 1d: the settlements after
       the open, their share of the bar's summed rate) on the position after the fill, at the open's price;
    7. *liquidation* if the adverse extreme of bar `t+1` (low for a long, high for a short) reaches the
       liquidation price (equity = maintenance margin; with tiers, the bracket of the notional at the
       liquidation price, Binance's rule): closed at the liquidation price (at the open if the fill left it
       beyond already), liquidation fee out of what is left, any loss beyond the equity in `info["bad_debt"]`
       (absorbed as by an insurance fund);
    8. *mark* at `close_{t+1}`.

    With `fill_at="next_close"` the carried position lives through bar `t+1` — gap check (2), all its
    funding (3, 6), liquidation on the extremes (7) — and then the order is trimmed (4) and filled (5) at
    `close_{t+1}`, followed by a margin check at that close: a flat account with a negative wallet is bankrupt
    (bad debt), a position at or beyond its liquidation price is liquidated at the close, so the loss lands in
    the step that caused it. Filling at `close_t`, the price the agent has just seen, is the look-ahead of
    many trading envs and is not offered. Liquidation uses the bar's traded high/low as a conservative
    stand-in for the mark price (wicks of the last price are larger than the mark's). With a flat maintenance
    rate (`tiers=None`) a `UserWarning` is given once per env when a position's notional passes
    `MarginConfig.flat_rate_max_notional` (Binance's first bracket, 50,000 USDT), above which the real rate
    is higher.

    ## Action Space

    `action="continuous"` (default): `Box(-1, 1, (1,), float32)`, the target position as a fraction of the
    maximum `leverage * equity` notional. Values outside `[-1, 1]` are clipped (SB3's PPO samples unclipped
    Gaussians); NaN/inf or a shape other than `(1,)` / scalar raises `ValueError`.

    | Num | Action                                     | Min  | Max |
    |-----|--------------------------------------------|------|-----|
    | 0   | target position / (leverage * equity)      | -1.0 | 1.0 |

    `action="discrete"`: `Discrete(n_levels)`, level `k` = `-1 + 2k / (n_levels - 1)`; with the default
    `n_levels=3`: `0` short, `1` flat, `2` long (full leverage).

    ## Observation Space

    `Box(-clip, clip, (window * 5 + 3,), float32)` (clip = 10 by default): the last `window` rows (oldest
    first, flattened row by row) of the causal features of `envs.features` — normalized log return, high-low
    range, relative volume, last settled funding rate (bp), time to the next funding — followed by the account
    state at bar `t`'s close: position notional / (leverage * equity), unrealized PnL / equity, margin ratio
    (maintenance margin / equity; liquidation at 1). All values are clipped to `[-clip, clip]`. Every feature
    at bar `t` uses bars `<= t` only and normalizations use past statistics only. The returned array is a
    fresh copy.

    ## Rewards

    * `"log_return"` (default): `log(max(E_{t+1}, f) / max(E_t, f))`, `E` equity after all costs (fees,
      spread, impact, funding, liquidation fee), `f = 1e-6 * initial_balance`; the sum over an episode is the
      log growth of the account. A liquidation to zero equity thus gives a finite reward of about `log(1e-6) =
      -13.8` (from a full account); it is returned in full on the terminating step.
    * `"differential_sharpe"`: the differential Sharpe ratio of Moody & Saffell (1998, 2001) on the log
      returns `R_t`: with EWMA moments `A, B` (rate `dsr_eta`), `D_t = (B_{t-1} dA - A_{t-1} dB / 2) /
      (B_{t-1} - A_{t-1}^2)^{3/2}`, `dA = R_t - A_{t-1}`, `dB = R_t^2 - B_{t-1}`; 0 while the variance
      estimate is 0.
    * `"pnl"`: `(E_{t+1} - E_t) / initial_balance`.

    ## Starting State

    Flat, `initial_balance` USDT. The first decision bar is drawn uniformly from `self.np_random` in
    `[min_start, n_bars - 1 - episode_bars]` (`min_start` = feature warm-up + `window` - 1), or pinned by
    `reset(options={"start": bar})`. With `episode_bars=None` the episode starts at `min_start` (unless
    pinned) and runs to the end of the data.

    ## Episode End

    * Termination: the account is liquidated (`terminated=True`, `info["liquidated"]=True`) or bankrupt (a
      fill beyond the bankruptcy price or nothing left: `info["bankrupt"]=True`, equity 0); the step's reward
      is the full loss.
    * Truncation: `episode_bars` steps done or the last bar of the data reached (`truncated=True`). Never
      both.

    At the end `info["episode_metrics"]` holds `envs.metrics.trade_metrics` of the equity curve (turnover as
    traded notional / initial balance, fees and funding in USDT).

    ## Info

    Every `reset`/`step`: `equity, position` (base units, signed), `price` (close of `bar_index`),
    `realized_pnl, unrealized_pnl, fees_paid, funding_paid, slippage_paid, turnover` (cumulative, USDT;
    turnover = traded notional), `liquidated, bar_index` (last bar whose close the agent has seen),
    `bankrupt`, `bad_debt`, `trade_qty` (filled this step, signed), `unfilled_qty` (not filled this step: cut
    by the margin trim or the participation cap, or not sent because of a liquidation).
    Always `equity == initial_balance + realized_pnl + unrealized_pnl - fees_paid - funding_paid`; spread and
    impact live inside the fill price (so inside the PnL) and `slippage_paid` reports them separately for
    information; bad debt is credited to `realized_pnl`.

    ## Arguments

    * `market`: `MarketData`, a DataFrame (UTC DatetimeIndex, OHLCV, optional `funding_rate`), a
      name/path/spec for `envs.loaders.load_market`, or `None`: the embedded `btcusdt-1h` market, 29,303
      Binance BTC/USDT **spot** hourly bars 2022-01-01 .. 2025-05-05 used as the perpetual's price proxy, with
      the BTCUSDT perpetual's real funding settlements (see `envs/data/SOURCE.md`).
    * `window=32`: bars of features in the observation.
    * `episode_bars=720`: steps per episode (`None`: to the end of the data).
    * `initial_balance=10_000.0`: starting wallet in USDT.
    * `leverage=None`: maximum position / equity; `None` takes `margin.leverage` (3.0 by default).
    * `action="continuous"`, `n_levels=3`: see Action Space.
    * `reward="log_return"`, `dsr_eta=0.01`: see Rewards.
    * `execution`: `envs.contract.ExecutionConfig` (fees, spread, impact, lots, dead-band, participation,
      fill_at).
    * `margin`: `envs.contract.MarginConfig` (leverage, maintenance margin / tiers, liquidation fee).
    * `features`: `envs.features.FeatureConfig`.
    * `render_mode`: `None`, `"ansi"` (one text line) or `"rgb_array"`: a `(360, 480, 3)` uint8 frame of the
      episode so far, price (top), position as a fraction of the maximum (middle, `[-1, 1]`) and equity
      (bottom); a red border marks a liquidation or bankruptcy. Drawn with numpy (no plotting library). The
      position panel shows the positions seen by `render()` calls (every step under `RecordVideo`), held
      between calls.

    ```python
    >>> import gymnasium as gym, envs
    >>> env = gym.make("CryptoFutures-v0", window=16, episode_bars=100)
    >>> obs, info = env.reset(seed=0)
    ```

    ## Version History

    * v0: Initial version.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        market: MarketData | pd.DataFrame | str | os.PathLike | None = None,
        *,
        window: int = 32,
        episode_bars: int | None = 720,
        initial_balance: float = 10_000.0,
        leverage: float | None = None,
        action: str = "continuous",
        n_levels: int = 3,
        reward: str = "log_return",
        dsr_eta: float = 0.01,
        execution: ExecutionConfig | None = None,
        margin: MarginConfig | None = None,
        features: FeatureConfig | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.market = resolve_market(market)
        self.execution = execution if execution is not None else ExecutionConfig()
        margin = margin if margin is not None else MarginConfig()
        if not isinstance(self.execution, ExecutionConfig):
            raise ValueError(f"execution must be an ExecutionConfig, got {type(self.execution).__name__}")
        if not isinstance(margin, MarginConfig):
            raise ValueError(f"margin must be a MarginConfig, got {type(margin).__name__}")
        if leverage is not None:
            margin = replace(margin, leverage=float(leverage))  # validated by MarginConfig
        self.margin = margin
        self.leverage = margin.leverage
        if features is None:
            # The impact model and the features share one volatility estimate.
            features = FeatureConfig(vol_halflife=self.execution.vol_halflife)
        self.feature_config = features

        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if episode_bars is not None and (
            isinstance(episode_bars, bool)
            or not isinstance(episode_bars, (int, np.integer))
            or episode_bars < 1
        ):
            raise ValueError(
                f"episode_bars must be an int >= 1 or None (to the end of the data), got {episode_bars!r}"
            )
        ok = isinstance(initial_balance, (int, float)) and math.isfinite(initial_balance)
        if not (ok and initial_balance > 0):
            raise ValueError(f"initial_balance must be a finite number > 0, got {initial_balance!r}")
        if action not in ("continuous", "discrete"):
            raise ValueError(f"action must be 'continuous' or 'discrete', got {action!r}")
        if isinstance(n_levels, bool) or not isinstance(n_levels, (int, np.integer)) or n_levels < 2:
            raise ValueError(f"n_levels must be an int >= 2, got {n_levels!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        if not (isinstance(dsr_eta, (int, float)) and 0 < dsr_eta < 1):
            raise ValueError(f"dsr_eta must be in (0, 1), got {dsr_eta!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}"
            )

        self.window = int(window)
        self.episode_bars = None if episode_bars is None else int(episode_bars)
        self.initial_balance = float(initial_balance)
        self.action_type = action
        self.n_levels = int(n_levels)
        self.reward_type = reward
        self.dsr_eta = float(dsr_eta)
        self.render_mode = render_mode

        self.features = compute_features(self.market, features)
        n = len(self.market)
        self.n_bars = n
        self.min_start = self.features.first_valid + self.window - 1
        steps = 1 if self.episode_bars is None else self.episode_bars
        self.max_start = n - 1 - steps
        if self.max_start < self.min_start:
            raise ValueError(
                f"market {self.market.source or self.market.symbol!r} has {n} bars, too few: the first "
                f"decision bar is {self.min_start} (feature warm-up {self.features.first_valid} + window "
                f"{self.window} - 1) and an episode of {steps} step(s) needs {steps} more bar(s) after it, "
                f"so the data needs at least {self.min_start + steps + 1} rows (bars) in total. Use a "
                "smaller window / episode_bars or more data."
            )

        n_feat = len(FEATURE_NAMES)
        self._n_feat = n_feat
        self._win_len = self.window * n_feat
        clip = float(self.features.config.clip)
        self._clip = clip
        obs_dim = self._win_len + len(ACCOUNT_FEATURES)
        self.observation_space = spaces.Box(-clip, clip, shape=(obs_dim,), dtype=np.float32)
        if action == "continuous":
            self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
            self.levels = None
        else:
            self.action_space = spaces.Discrete(self.n_levels)
            self.levels = [float(x) for x in np.linspace(-1.0, 1.0, self.n_levels)]

        # Hot-path state: Python lists of floats and flat views, so that step() does scalar float math only.
        lists = self.features.lists
        self._open, self._high, self._low = lists["open"], lists["high"], lists["low"]
        self._close, self._volume = lists["close"], lists["volume"]
        self._sigma = lists["volatility"]
        self._feat_flat = self.features.values.reshape(-1)
        self._obs_buf = np.zeros(obs_dim, dtype=np.float32)
        ex = self.execution
        self._lot = ex.lot_size
        self._min_qty = ex.min_qty
        self._deadband = ex.deadband
        self._half_spread = ex.half_spread
        self._impact_coef = ex.impact_coef
        self._taker = ex.taker_fee
        self._cap = ex.max_participation
        self._fill_open = ex.fill_at == "next_open"
        self._liq_fee = margin.liquidation_fee_rate
        self._mmr = margin.maintenance_margin_rate if margin.tiers is None else None
        self._max_notional = margin.max_notional
        self._flat_max = margin.flat_rate_max_notional if margin.tiers is None else None
        self._flat_warned = False
        self._rate_open, self._rate_in = _split_funding(self.market)
        self._floor = _EQUITY_FLOOR * self.initial_balance
        self._reward_kind = REWARDS.index(reward)

        self._acct = Account(self.initial_balance)
        self._t = -1
        self._end = -1
        self._done = True
        self._equity = self.initial_balance
        self._equity_curve: list[float] = []
        self._dsr_a = 0.0
        self._dsr_b = 0.0
        self._last_info: dict[str, Any] = {}

    # -------------------------------------------------------------------------------------------------
    # helpers

    def target_to_action(self, target: float) -> np.ndarray | int:
        """The env action closest to a target position fraction in ``[-1, 1]`` (for policies written in
        targets)."""
        target = min(max(float(target), -1.0), 1.0)
        if self.levels is None:
            return np.array([target], dtype=np.float32)
        return int(np.argmin([abs(x - target) for x in self.levels]))

    def _parse_action(self, action: Any) -> float:
        if self.levels is None:
            if type(action) is np.ndarray and action.shape == (1,):
                a = float(action[0])
            else:
                arr = np.asarray(action)
                if arr.shape not in ((), (1,)) or arr.dtype.kind not in "iuf":
                    raise ValueError(
                        "action must be a float array of shape (1,) (target position fraction in [-1, 1]), "
                        "got "
                        f"{action!r} with shape {arr.shape}"
                    )
                a = float(arr.reshape(-1)[0])
            if not math.isfinite(a):
                raise ValueError(f"action must be finite, got {action!r}")
            return -1.0 if a < -1.0 else (1.0 if a > 1.0 else a)
        arr = np.asarray(action)
        if arr.shape not in ((), (1,)) or arr.dtype.kind not in "biu":
            raise ValueError(
                f"action must be an integer in [0, {self.n_levels - 1}] (discrete levels {self.levels}), "
                f"got {action!r}"
            )
        k = int(arr.reshape(-1)[0])
        if not 0 <= k < self.n_levels:
            raise ValueError(f"action {k} is out of range: valid actions are 0 .. {self.n_levels - 1}")
        return self.levels[k]

    def _execute(self, qty: float, ref: float, volume: float, sigma: float) -> tuple[float, float]:
        """Fill a signed order at reference price ``ref``; returns ``(filled_qty, unfilled_qty)``."""
        want = abs(qty)
        if volume <= 0.0:
            return 0.0, want  # no liquidity in the bar: nothing fills
        cap = self._cap
        if cap is not None and want > cap * volume:
            qty = round_to_lot(math.copysign(cap * volume, qty), self._lot)
            if abs(qty) < self._min_qty:
                return 0.0, want
        filled = abs(qty)
        impact = self._impact_coef * sigma * math.sqrt(filled / volume)
        if qty > 0.0:
            price = ref * (1.0 + self._half_spread + impact)
        else:
            price = ref * (1.0 - self._half_spread - impact)
        acct = self._acct
        acct.fill(qty, price, ref, self._taker)
        # Positions are whole lots; snapping removes the float residue that would otherwise accumulate.
        acct.position = round(acct.position / self._lot) * self._lot
        return qty, want - filled

    def _liq_price(self) -> float:
        acct = self._acct
        mmr = self._mmr
        if mmr is None:
            return liquidation_price(acct.position, acct.entry_price, acct.balance, self.margin)
        pos = acct.position
        # Same formula as envs.contract.liquidation_price with a flat rate, inlined for speed.
        p = (acct.balance - pos * acct.entry_price) / (abs(pos) * mmr - pos)
        return p if p > 0.0 else 0.0

    def _trim(self, qty: float, ref: float, volume: float, sigma: float) -> float:
        """The part of an order the margin allows at the fill: as an exchange rejects an order whose initial
        margin exceeds the equity, the post-fill initial margin ``|position| * ref / leverage`` may not exceed
        the post-fill equity (after the fee and the spread/impact paid against ``ref``), and the notional may
        not pass the cap of the brackets allowed at this leverage. Orders that only reduce the position pass;
        a flip may always close the old position. Rounded down to the lot; below ``min_qty`` nothing is
        sent."""
        acct = self._acct
        pos = acct.position
        x = qty if qty > 0.0 else -qty
        size = pos if pos > 0.0 else -pos
        adding = pos * qty >= 0.0
        if not adding and x <= size:
            return qty  # reduce only
        xi = x
        cap = self._cap
        if cap is not None and xi > cap * volume:
            xi = cap * volume
        # Cost per unit traded: spread + impact against ref, and the fee on the fill price. The impact of the
        # largest fill the participation cap allows is an upper bound of the actual one.
        slip = self._half_spread
        if volume > 0.0:
            slip += self._impact_coef * sigma * math.sqrt(xi / volume)
        price = ref * (1.0 + slip) if qty > 0.0 else ref * (1.0 - slip)
        unit_cost = ref * slip + price * self._taker
        im = ref / self.leverage
        equity = acct.balance + pos * (ref - acct.entry_price)
        if adding:
            xmax = (equity - size * im) / (im + unit_cost)
            nmax = self._max_notional / ref - size
        else:
            xmax = (equity + size * im) / (im + unit_cost)
            nmax = self._max_notional / ref + size
        if nmax < xmax:
            xmax = nmax
        if xmax >= x:
            return qty
        if not adding and xmax < size:
            xmax = size
        lots = math.floor(xmax / self._lot + 1e-9) if xmax > 0.0 else 0
        q = lots * self._lot
        if q < self._min_qty:
            return 0.0
        return q if qty > 0.0 else -q

    def _warn_flat_rate(self, notional: float) -> None:
        self._flat_warned = True
        warnings.warn(
            flat_rate_warning("CryptoFuturesEnv", notional, self._flat_max, self._mmr),
            UserWarning,
            stacklevel=3,
        )

    def _observe(self, mark: float) -> np.ndarray:
        t1 = (self._t + 1) * self._n_feat
        buf = self._obs_buf
        wl = self._win_len
        buf[:wl] = self._feat_flat[t1 - wl : t1]
        acct = self._acct
        eq = self._equity
        pos = acct.position
        if eq > 0.0 and pos != 0.0:
            clip = self._clip
            frac = pos * mark / (self.leverage * eq)
            upnl = pos * (mark - acct.entry_price) / eq
            if self._mmr is None:
                mratio = maintenance_margin(pos, mark, self.margin) / eq
            else:
                mratio = abs(pos) * mark * self._mmr / eq
            buf[wl] = frac if -clip < frac < clip else (clip if frac > 0.0 else -clip)
            buf[wl + 1] = upnl if -clip < upnl < clip else (clip if upnl > 0.0 else -clip)
            buf[wl + 2] = mratio if mratio < clip else clip
        else:
            buf[wl] = buf[wl + 1] = buf[wl + 2] = 0.0
        return buf.copy()

    def _info(self, mark: float, liquidated: bool, trade_qty: float, unfilled: float) -> dict[str, Any]:
        acct = self._acct
        return {
            "equity": self._equity,
            "position": acct.position,
            "price": mark,
            "realized_pnl": acct.realized_pnl,
            "unrealized_pnl": acct.position * (mark - acct.entry_price),
            "fees_paid": acct.fees_paid,
            "funding_paid": acct.funding_paid,
            "slippage_paid": acct.slippage_paid,
            "turnover": acct.turnover,
            "liquidated": liquidated,
            "bankrupt": False,
            "bar_index": self._t,
            "bad_debt": acct.bad_debt,
            "trade_qty": trade_qty,
            "unfilled_qty": unfilled,
        }

    # ------------------------------------------------------------------------------------------------- gym
    # API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        start = None
        if options:
            unknown = set(options) - {"start"}
            if unknown:
                raise ValueError(f"unknown reset option(s) {sorted(unknown)}; the only option is 'start'")
            start = options.get("start")
        if start is None:
            if self.episode_bars is None:
                start = self.min_start
            else:
                start = int(self.np_random.integers(self.min_start, self.max_start + 1))
        else:
            if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
                raise ValueError(f"options['start'] must be an int bar index, got {start!r}")
            start = int(start)
            if not self.min_start <= start <= self.max_start:
                raise ValueError(
                    f"options['start']={start} is outside the valid range [{self.min_start}, "
                    f"{self.max_start}] of first decision bars (warm-up + window - 1 = {self.min_start}; "
                    f"{self.n_bars} bars, episode_bars="
                    f"{self.episode_bars})"
                )
        self._t = start
        self._end = self.n_bars - 1 if self.episode_bars is None else start + self.episode_bars
        self._acct.reset()
        self._equity = self.initial_balance
        self._equity_curve = [self.initial_balance]
        self._dsr_a = 0.0
        self._dsr_b = 0.0
        self._done = False
        mark = self._close[start]
        info = self._info(mark, False, 0.0, 0.0)
        self._last_info = info
        return self._observe(mark), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        # The hot path: Python-float arithmetic on list elements and cached attributes, no pandas, one small
        # numpy copy for the observation. The liquidation-price formula of envs.contract is inlined for the
        # flat-rate case (tiers go through the function); tests check both against the contract's functions.
        if self._done:
            raise RuntimeError(
                "the episode has ended (or reset() was never called); call reset() before step()"
            )
        if (
            self.levels is None
            and type(action) is np.ndarray
            and action.shape == (1,)
            and action.dtype.kind == "f"
        ):
            a = action.item()
            if not -1.0 <= a <= 1.0:
                if not math.isfinite(a):
                    raise ValueError(f"action must be finite, got {action!r}")
                a = -1.0 if a < -1.0 else 1.0
        else:
            a = self._parse_action(action)
        acct = self._acct
        t = self._t
        j = t + 1
        close_t = self._close[t]
        equity_t = self._equity

        # 1. order from the target (decided on bar t's close, sized with bar t's close and equity).
        qty = 0.0
        max_notional = self.leverage * equity_t
        pos = acct.position
        if max_notional > 0.0 and (a == 0.0 or abs(a - pos * close_t / max_notional) >= self._deadband):
            want = a * max_notional / close_t - pos
            lots = math.floor(abs(want) / self._lot + 1e-9)  # toward zero, as envs.contract.round_to_lot
            if lots:
                qty = lots * self._lot if want > 0.0 else -lots * self._lot
                if -self._min_qty < qty < self._min_qty:
                    qty = 0.0

        o = self._open[j]
        c = self._close[j]
        vol_j = self._volume[j]
        sigma_t = self._sigma[t]
        mmr = self._mmr
        liquidated = False
        bankrupt = False
        filled = 0.0
        unfilled = 0.0
        # 2. gap: the carried position may already be beyond its liquidation price at the open.
        if pos != 0.0:
            if mmr is not None:
                lp = (acct.balance - pos * acct.entry_price) / (abs(pos) * mmr - pos)
            else:
                lp = self._liq_price()
            if (o <= lp) if pos > 0.0 else (o >= lp):
                acct.liquidate(o, self._liq_fee)
                liquidated = True
                unfilled = abs(qty)
        if not liquidated:
            # 3. funding settled at the bar's open is paid by the position held at that instant: the carried
            # one (the order decided at bar t's close fills just after it).
            if pos != 0.0:
                rate = self._rate_open[j]
                if rate != 0.0:
                    acct.pay_funding(o, rate)
            if self._fill_open:
                # 4. trim to the margin at the fill price, fill at the open.
                if qty != 0.0:
                    want = qty
                    qty = self._trim(qty, o, vol_j, sigma_t)
                    if qty != 0.0:
                        filled, unfilled = self._execute(qty, o, vol_j, sigma_t)
                    unfilled += abs(want) - abs(qty)
                    if acct.position == 0.0 and acct.balance < 0.0:
                        # A close filled beyond the bankruptcy price: the shortfall is bad debt; the account
                        # is wiped out.
                        acct.absorb_shortfall()
                        bankrupt = True
                pos = acct.position
                # 5. settlements later inside the bar (bars longer than the funding grid) on the new position.
                if pos != 0.0:
                    rate = self._rate_in[j]
                    if rate != 0.0:
                        acct.pay_funding(o, rate)
            elif pos != 0.0:
                rate = self._rate_in[j]
                if rate != 0.0:
                    acct.pay_funding(o, rate)
            # 6. liquidation on the adverse extreme (at the open if already beyond it).
            if pos != 0.0:
                if mmr is not None:
                    lp = (acct.balance - pos * acct.entry_price) / (abs(pos) * mmr - pos)
                else:
                    lp = self._liq_price()
                if pos > 0.0:
                    if self._low[j] <= lp:
                        acct.liquidate(o if o <= lp else lp, self._liq_fee)
                        liquidated = True
                elif self._high[j] >= lp:
                    acct.liquidate(o if o >= lp else lp, self._liq_fee)
                    liquidated = True
            if qty != 0.0 and not self._fill_open:
                if liquidated:
                    unfilled = abs(qty)
                else:
                    # 4'. fill_at="next_close": trim and fill at the close, then check the margin there so
                    # that a ruinous fill is booked in this step.
                    want = qty
                    qty = self._trim(qty, c, vol_j, sigma_t)
                    if qty != 0.0:
                        filled, unfilled = self._execute(qty, c, vol_j, sigma_t)
                    unfilled += abs(want) - abs(qty)
                    pos = acct.position
                    if pos == 0.0:
                        if acct.balance < 0.0:
                            acct.absorb_shortfall()
                            bankrupt = True
                    else:
                        if mmr is not None:
                            lp = (acct.balance - pos * acct.entry_price) / (abs(pos) * mmr - pos)
                        else:
                            lp = self._liq_price()
                        if (c <= lp) if pos > 0.0 else (c >= lp):
                            acct.liquidate(c, self._liq_fee)
                            liquidated = True
            if self._flat_max is not None and not self._flat_warned and filled != 0.0:
                notional = abs(acct.position) * o
                if notional > self._flat_max:
                    self._warn_flat_rate(notional)

        # 7. mark at the close.
        self._t = j
        pos = acct.position
        upnl = pos * (c - acct.entry_price)
        equity = acct.balance + upnl
        if equity < 0.0:  # only float residue can get here (liquidation and bankruptcy floor the wallet at 0)
            equity = 0.0
        if equity <= 0.0 and not liquidated:
            bankrupt = True  # nothing left to trade with: the episode ends
        self._equity = equity
        self._equity_curve.append(equity)

        kind = self._reward_kind
        if kind == 0:
            floor = self._floor
            reward = math.log(
                (equity if equity > floor else floor) / (equity_t if equity_t > floor else floor)
            )
        elif kind == 1:  # REWARDS order: log_return, differential_sharpe, pnl
            reward = self._differential_sharpe(equity, equity_t)
        else:
            reward = (equity - equity_t) / self.initial_balance

        terminated = liquidated or bankrupt
        truncated = j >= self._end and not terminated
        info = {
            "equity": equity,
            "position": pos,
            "price": c,
            "realized_pnl": acct.realized_pnl,
            "unrealized_pnl": upnl,
            "fees_paid": acct.fees_paid,
            "funding_paid": acct.funding_paid,
            "slippage_paid": acct.slippage_paid,
            "turnover": acct.turnover,
            "liquidated": liquidated,
            "bankrupt": bankrupt,
            "bar_index": j,
            "bad_debt": acct.bad_debt,
            "trade_qty": filled,
            "unfilled_qty": unfilled,
        }
        if terminated or truncated:
            self._done = True
            info["episode_metrics"] = trade_metrics(
                np.asarray(self._equity_curve),
                bar_seconds=self.market.bar_seconds,
                turnover=acct.turnover / self.initial_balance,
                fees=acct.fees_paid,
                funding=acct.funding_paid,
                liquidations=acct.liquidations,
                # Training episodes are days long: their annualized ratios are noisy but still a trend to
                # watch in TensorBoard, so they are kept rather than blanked (evaluation blanks them).
                short_ratios="keep",
            )
        self._last_info = info
        return self._observe(c), reward, terminated, truncated, info

    def _differential_sharpe(self, equity: float, equity_prev: float) -> float:
        """Moody & Saffell's differential Sharpe ratio of the step's log return; updates the EWMA moments."""
        floor = self._floor
        r = math.log(max(equity, floor) / max(equity_prev, floor))
        a_prev, b_prev = self._dsr_a, self._dsr_b
        var = b_prev - a_prev * a_prev
        da = r - a_prev
        db = r * r - b_prev
        d = (b_prev * da - 0.5 * a_prev * db) / var**1.5 if var > 1e-12 else 0.0
        self._dsr_a = a_prev + self.dsr_eta * da
        self._dsr_b = b_prev + self.dsr_eta * db
        return d

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self._render_rgb()
        if self.render_mode != "ansi":
            return None
        i = self._last_info
        if not i:
            return "CryptoFuturesEnv (not reset)"
        return (
            f"bar {i['bar_index']}  price {i['price']:.2f}  position {i['position']:+.3f}  "
            f"equity {i['equity']:.2f}  "
            f"fees {i['fees_paid']:.2f}  funding {i['funding_paid']:.2f}"
            + ("  LIQUIDATED" if i["liquidated"] else "")
        )

    def _render_rgb(self) -> np.ndarray:
        i = self._last_info
        if not i:
            return render_frame(np.zeros(1), np.zeros(1), np.zeros(1), False)
        t = self._t
        curve = self._equity_curve
        start = t - (len(curve) - 1)
        # Positions are recorded at render calls (step() keeps no history of them); a new episode restarts
        # the trace.
        trace = getattr(self, "_render_trace", None)
        if trace is None or trace[0] != start or trace[1] > t:
            trace = [start, start, {start: 0.0}]
            self._render_trace = trace
        eq = i["equity"]
        trace[1] = t
        trace[2][t] = i["position"] * i["price"] / (self.leverage * eq) if eq > 0.0 else 0.0
        frac = np.empty(t - start + 1)
        last = 0.0
        for k in range(start, t + 1):
            last = trace[2].get(k, last)
            frac[k - start] = last
        prices = np.asarray(self._close[start : t + 1])
        ended = bool(i["liquidated"] or i.get("bankrupt", False))
        return render_frame(prices, frac, np.asarray(curve), ended)


#: Size of the ``render_mode="rgb_array"`` frames.
FRAME_HEIGHT, FRAME_WIDTH = 360, 480


def _line_mask(y: np.ndarray, height: int, width: int, lo: float, hi: float) -> np.ndarray:
    """Boolean ``(height, width)`` raster of the polyline through ``y`` (resampled to ``width`` columns),
    scaled so that ``lo`` is the bottom row and ``hi`` the top; consecutive columns are joined vertically."""
    n = y.size
    x = np.linspace(0.0, n - 1.0, width) if n > 1 else np.zeros(width)
    yc = np.interp(x, np.arange(n), y) if n > 1 else np.full(width, float(y[0]))
    span = hi - lo if hi > lo else 1.0
    r = (hi - yc) / span * (height - 1)
    r = np.clip(np.nan_to_num(r, nan=(height - 1) / 2), 0, height - 1)
    prev = np.concatenate(([r[0]], r[:-1]))
    top = np.floor(np.minimum(prev, r))
    bottom = np.ceil(np.maximum(prev, r))
    rows = np.arange(height)[:, None]
    return (rows >= top) & (rows <= bottom)


def render_frame(prices: np.ndarray, position: np.ndarray, equity: np.ndarray, ended: bool) -> np.ndarray:
    """An ``(FRAME_HEIGHT, FRAME_WIDTH, 3)`` uint8 picture of an episode: price, position fraction in
    ``[-1, 1]`` and equity, top to bottom, each auto-scaled to its range (position on a fixed scale with its
    zero line); a red border when ``ended`` (liquidation / bankruptcy)."""
    h, w = FRAME_HEIGHT, FRAME_WIDTH
    frame = np.full((h, w, 3), 18, dtype=np.uint8)
    panel = h // 3
    pad = 6
    inner = panel - 2 * pad
    series = (
        (np.asarray(prices, dtype=float), None, (90, 170, 255)),
        (np.asarray(position, dtype=float), (-1.0, 1.0), (255, 200, 60)),
        (np.asarray(equity, dtype=float), None, (80, 220, 120)),
    )
    for k, (y, scale, color) in enumerate(series):
        y0 = k * panel + pad
        view = frame[y0 : y0 + inner]
        if scale is None:
            lo, hi = float(np.min(y)), float(np.max(y))
        else:
            lo, hi = scale
            view[inner // 2] = (60, 60, 60)  # zero line
        view[_line_mask(y, inner, w, lo, hi)] = color
        if k:
            frame[k * panel] = (70, 70, 70)  # panel separator
    if ended:
        frame[:3] = frame[-3:] = (230, 40, 40)
        frame[:, :3] = frame[:, -3:] = (230, 40, 40)
    return frame
