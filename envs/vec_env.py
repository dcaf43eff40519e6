"""Batched ``CryptoFutures-v0``: N copies of :class:`envs.trading_env.CryptoFuturesEnv` stepped in numpy."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import pandas as pd
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.contract import ExecutionConfig, MarginConfig, flat_rate_warning
from envs.features import FeatureConfig
from envs.market import MarketData
from envs.metrics import trade_metrics_batch
from envs.trading_env import INFO_KEYS, CryptoFuturesEnv

__all__ = ["CryptoFuturesVecEnv", "STATE_INFO_KEYS"]

# ndarray.any()/all() go through a Python-level wrapper; the bare reductions are cheaper on the hot path.
_any = np.logical_or.reduce
_all = np.logical_and.reduce

#: Info keys read straight from the account state after the autoreset (the others are per-step flows).
STATE_INFO_KEYS = (
    "equity",
    "position",
    "price",
    "realized_pnl",
    "unrealized_pnl",
    "fees_paid",
    "funding_paid",
    "slippage_paid",
    "turnover",
    "bad_debt",
    "bar_index",
)
_FLOW_INFO_KEYS = ("liquidated", "bankrupt", "trade_qty", "unfilled_qty")
if set(STATE_INFO_KEYS) | set(_FLOW_INFO_KEYS) != set(INFO_KEYS):  # the single env grew an info key
    raise ImportError(
        "envs.vec_env does not know the single env's info keys "
        f"{set(INFO_KEYS) - set(STATE_INFO_KEYS) - set(_FLOW_INFO_KEYS)}"
    )


# Rows of the account-state matrix (see CryptoFuturesVecEnv.__init__); the first _N_INFO_ROWS go into infos.
_BAL, _POS, _ENTRY, _REAL, _FEES, _FUND, _SLIP, _TURN, _BAD, _EQ, _DSR_A, _DSR_B = range(12)
_N_ROWS = 12
_N_INFO_ROWS = _EQ + 1


class CryptoFuturesVecEnv(VectorEnv):
    r"""`num_envs` independent accounts trading one market, stepped together with numpy array operations.

    ## Description

    Each sub-env is exactly a `CryptoFuturesEnv` with the same arguments (same contract, fills, costs,
    funding, margin, liquidation, observation and rewards; see its docstring for the rules), but the batch is
    advanced by whole-array numpy operations instead of a Python loop over envs, which is what makes many-seed
    training cheap on few cores. Rare events (gap and intrabar liquidations, bankruptcies, episode ends) are
    handled on index subsets; the common path (order sizing, margin trim, fills, funding, marking, rewards,
    observation) runs on whole arrays in the single env's order of floating-point operations, so results
    agree with the single env to ~1e-12 (libm's `log`/`pow` may differ in the last bit).
    `tests/test_vec_env.py` checks it step for step against N single envs through liquidations, bankruptcies
    and autoresets. `benchmarks/vec_env_throughput.py` measures env-steps/s against the single env.

    ## Spaces

    `single_observation_space` / `single_action_space` are the single env's; `observation_space` is
    `Box(-clip, clip, (num_envs, window * 5 + 3), float32)` and `action_space` is `Box(-1, 1, (num_envs, 1),
    float32)` (continuous; a `(num_envs,)` array is accepted too) or `MultiDiscrete([n_levels] * num_envs)`.
    Invalid actions raise `ValueError` naming the sub-env.

    ## Autoreset

    `AutoresetMode.SAME_STEP` (also in `metadata["autoreset_mode"]`): a sub-env that terminates
    (liquidation or bankruptcy) or truncates (episode length / end of data) is reset inside the same `step`
    call. The returned observation and info entries are the new episode's first ones; the step's `reward`,
    `terminated` and `truncated` are the finished episode's last. The finished episode's last observation and
    info are in `infos["final_obs"]` (object array, `None` for envs that did not finish) and
    `infos["final_info"]` (dict of arrays incl. `episode_metrics`), masked by `infos["_final_obs"]` /
    `infos["_final_info"]`, the layout of gymnasium's `SyncVectorEnv` in the same mode. New episode starts
    are drawn from this vec env's `np_random` (uniform over the single env's valid range).

    ## Info

    A dict of arrays of shape `(num_envs,)` with the single env's keys (`envs.trading_env.INFO_KEYS`:
    `equity`, `position`, `price`, ..., `bar_index`, `liquidated`, `bankrupt`, `trade_qty`, `unfilled_qty`),
    each with its all-True `_key` mask. The single env's flat-rate warning is given once per vector env.

    ## Starting State

    `reset(seed=..., options={"start": starts})` with `starts` an int array of `num_envs` first decision bars
    pins the episodes (later autoresets draw); without it the starts are drawn from `np_random`. Same seed,
    same actions -> same results.

    ## Arguments

    The single env's (`market`, `window`, `episode_bars`, `initial_balance`, `leverage`, `action`,
    `n_levels`, `reward`, `dsr_eta`, `execution`, `margin`, `features`, `render_mode`), plus

    * `num_envs=1`: number of sub-envs.
    * `episode_metrics=True`: compute `envs.metrics.trade_metrics` of finished episodes into
      `infos["final_info"]["episode_metrics"]`, which keeps a ring buffer of equity of `num_envs x` the
      longest episode (8 bytes each). `False` skips both.

    Memory: besides the single env's arrays, one float32 matrix of every bar's observation window,
    `n_bars x (window * 5 + 3)` (19 MB for the embedded 29,303 bars at `window=32`), gathered with one row
    take per step.

    `render_mode="ansi"` renders one summary line per sub-env; `"rgb_array"` is not offered for the batch
    (render a single env instead).

    ```python
    >>> import gymnasium as gym, envs
    >>> vec = gym.make_vec("CryptoFutures-v0", num_envs=8, vectorization_mode="vector_entry_point",
    ...                    window=16, episode_bars=100)
    >>> obs, infos = vec.reset(seed=0)
    >>> obs.shape
    (8, 83)
    ```
    """

    metadata = {"render_modes": ["ansi"], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        market: MarketData | pd.DataFrame | str | os.PathLike | None = None,
        *,
        num_envs: int = 1,
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
        episode_metrics: bool = True,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']} for the vector env, got "
                f"{render_mode!r} (use a single CryptoFuturesEnv for 'rgb_array')"
            )
        # One prototype single env validates every argument and holds the market, features and configs: the
        # vec env cannot drift from the single env's argument handling.
        proto = CryptoFuturesEnv(
            market,
            window=window,
            episode_bars=episode_bars,
            initial_balance=initial_balance,
            leverage=leverage,
            action=action,
            n_levels=n_levels,
            reward=reward,
            dsr_eta=dsr_eta,
            execution=execution,
            margin=margin,
            features=features,
        )
        self.proto = proto
        n = self.num_envs = int(num_envs)
        self.render_mode = render_mode
        self.market = proto.market
        self.execution = proto.execution
        self.margin = proto.margin
        self.leverage = proto.leverage
        self.window = proto.window
        self.episode_bars = proto.episode_bars
        self.initial_balance = proto.initial_balance
        self.action_type = proto.action_type
        self.n_levels = proto.n_levels
        self.reward_type = proto.reward_type
        self.dsr_eta = proto.dsr_eta
        self.min_start, self.max_start, self.n_bars = proto.min_start, proto.max_start, proto.n_bars
        self.single_observation_space = proto.observation_space
        self.single_action_space = proto.action_space
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        self.levels = None if proto.levels is None else np.asarray(proto.levels, dtype=np.float64)
        self.episode_metrics = bool(episode_metrics)

        m = self.market
        feats = proto.features
        self._o = np.ascontiguousarray(m.open, dtype=np.float64)
        self._h = np.ascontiguousarray(m.high, dtype=np.float64)
        self._l = np.ascontiguousarray(m.low, dtype=np.float64)
        self._c = np.ascontiguousarray(m.close, dtype=np.float64)
        self._v = np.ascontiguousarray(m.volume, dtype=np.float64)
        self._r = np.ascontiguousarray(m.funding_rate, dtype=np.float64)
        self._s = np.ascontiguousarray(feats.volatility, dtype=np.float64)
        # Volume with zeros replaced by 1: the impact of a bar without volume is computed on it and discarded
        # (nothing fills), so no division by zero on the common path.
        self._v_safe = np.where(self._v > 0.0, self._v, 1.0)
        self._dry_bars = bool((self._v <= 0.0).any())
        # Column j: what step t -> j = t + 1 reads, gathered in one take.
        prev = np.r_[0, np.arange(len(self._c) - 1)]
        rate_open = np.asarray(proto._rate_open, dtype=np.float64)
        rate_in = np.asarray(proto._rate_in, dtype=np.float64)
        self._has_rate_in = bool(rate_in.any())
        self._mkt = np.stack(
            [self._o, self._h, self._l, self._c, self._v, self._v_safe, rate_open, rate_in, self._c[prev]]
            + [self.execution.impact_coef * self._s[prev]],
            axis=1,
        )
        # Row k of the window matrix is the flattened feature rows k .. k + window - 1 (the single env's
        # observation window for decision bar k + window - 1). A strided view over the (small, cache-resident)
        # feature array: gathering rows from it is faster than from a materialized copy.
        n_feat = feats.values.shape[1]
        self._wl = proto._win_len
        self._winview = np.lib.stride_tricks.sliding_window_view(feats.values.reshape(-1), self._wl)[::n_feat]
        # Row t: decision bar t's observation with the account entries 0, so that one row gather per sub-env
        # makes the whole observation (rows before the first valid decision bar are never read).
        obsmat = np.zeros((self.n_bars, self._wl + 3), dtype=np.float32)
        obsmat[self.window - 1 :, : self._wl] = self._winview
        self._obsmat = obsmat
        self._clip = proto._clip

        ex = self.execution
        self._lot = ex.lot_size
        self._min_qty = ex.min_qty
        self._deadband = ex.deadband
        self._hs = ex.half_spread
        self._up = 1.0 + ex.half_spread
        self._dn = 1.0 - ex.half_spread
        self._impact = ex.impact_coef
        self._taker = ex.taker_fee
        self._cap = ex.max_participation
        self._fill_open = ex.fill_at == "next_open"
        mg = self.margin
        self._liq_fee = mg.liquidation_fee_rate
        if mg.tiers is None:
            self._tier_caps = None
            self._mmr = mg.maintenance_margin_rate
        else:
            self._tier_caps = np.array(
                [t[0] for t in mg.tiers], dtype=np.float64
            )  # tiers may carry a 4th entry
            self._tier_mmr = np.array([t[1] for t in mg.tiers], dtype=np.float64)
            self._tier_amt = np.array([t[2] for t in mg.tiers], dtype=np.float64)
            self._mmr = None
        self._floor = proto._floor
        self._max_notional = mg.max_notional
        self._flat_max = proto._flat_max
        self._flat_warned = False
        self._reward_kind = proto._reward_kind

        # Account state, one column per sub-env (the fields of envs.contract.Account, equity, the moments of
        # the differential Sharpe ratio), as rows of one matrix: an info snapshot is one copy, a reset one
        # column assignment. The named rows are views, updated in place.
        z = np.zeros
        self._S = z((_N_ROWS, n))
        self._S_init = z((_N_ROWS, 1))
        self._S_init[_BAL] = self._S_init[_EQ] = self.initial_balance
        self._S[:] = self._S_init
        (self._bal, self._pos, self._entry, self._real, self._fees, self._fund, self._slip, self._turn) = (
            self._S[:8]
        )
        self._bad, self._eq, self._dsr_a, self._dsr_b = self._S[8:]
        self._nliq = z(n, dtype=np.int64)
        self._t = z(n, dtype=np.intp)
        self._end = z(n, dtype=np.intp)
        self._a = z(n)  # target fractions of the current step
        self._started = False
        self._all_true = np.ones(n, dtype=bool)
        self._all_true.flags.writeable = False
        self._arange = np.arange(n)

        # Ring buffer of equity after each step, row g % R at global step g (one contiguous row write per
        # step); an episode started at global step g0 reads rows g0 + 1 .. g. R = the longest episode.
        longest = self.episode_bars if self.episode_bars is not None else self.n_bars - 1 - self.min_start
        self._ring = max(int(longest), 1)
        if self.episode_metrics and self._ring * n * 8 > 2**29:
            warnings.warn(
                f"CryptoFuturesVecEnv: episode_metrics keeps {self._ring * n * 8 / 2**20:,.0f} MiB of equity "
                f"history ({n} sub-envs x episodes of up to {self._ring} steps); pass episode_metrics=False "
                "or a shorter episode_bars to save it",
                UserWarning,
                stacklevel=2,
            )
        # np.full, not np.zeros: touch the pages now rather than page-fault on the ring's first pass.
        self._hist = np.full((self._ring, n), self.initial_balance) if self.episode_metrics else None
        self._g = 0
        self._ep_g = z(n, dtype=np.int64)

    # ------------------------------------------------------------------------------------------ helpers

    def _draw_starts(self, k: int) -> np.ndarray:
        if self.episode_bars is None:
            return np.full(k, self.min_start, dtype=np.intp)
        return self.np_random.integers(self.min_start, self.max_start + 1, size=k).astype(np.intp)

    def _reset_envs(self, idx: np.ndarray | slice, starts: np.ndarray) -> None:
        """Put the sub-envs ``idx`` at the start of an episode at decision bars ``starts``."""
        self._t[idx] = starts
        self._end[idx] = self.n_bars - 1 if self.episode_bars is None else starts + self.episode_bars
        self._S[:, idx] = self._S_init
        self._nliq[idx] = 0
        self._ep_g[idx] = self._g

    def _brackets(self, notional: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mmr, maintenance_amount)`` per entry: the first tier whose cap is >= the notional."""
        k = np.searchsorted(self._tier_caps, notional, side="left")
        np.minimum(k, len(self._tier_caps) - 1, out=k)
        return self._tier_mmr[k], self._tier_amt[k]

    def _liq_prices(self, pos: np.ndarray, entry: np.ndarray, bal: np.ndarray) -> np.ndarray:
        """The single env's liquidation price per entry (NaN for flat accounts, which compares false).

        Flat rate: the step's inlined formula. Tiers: ``envs.contract.liquidation_price``, the bracket of the
        notional at the liquidation price itself (the first bracket whose solution lies inside it).
        """
        if self._mmr is not None:
            num = bal - pos * entry
            den = np.abs(pos) * self._mmr - pos
            return num / den
        size = np.abs(pos)
        out = np.full(pos.shape, np.nan)
        todo = pos != 0.0
        lo = 0.0
        p = out
        for cap, mmr, amt in zip(self._tier_caps, self._tier_mmr, self._tier_amt, strict=True):
            p = (bal + amt - pos * entry) / (size * mmr - pos)
            p[p <= 0.0] = 0.0
            notional = size * p
            inside = todo & (lo <= notional) & (notional <= cap)
            out[inside] = p[inside]
            todo &= ~inside
            lo = cap
        out[todo] = p[todo]  # the last bracket covers every notional above its predecessors' caps
        return out

    def _absorb(self, idx: np.ndarray) -> None:
        """``Account.absorb_shortfall`` for the flat sub-envs ``idx`` whose wallet went negative."""
        bad = -self._bal[idx]
        self._real[idx] += bad
        self._bad[idx] += bad
        self._bal[idx] = 0.0

    def _trim(
        self, qty: np.ndarray, ref: np.ndarray, vol: np.ndarray, vol_safe: np.ndarray, isig: np.ndarray
    ) -> np.ndarray:
        """The single env's ``_trim`` per entry: the part of each order the margin allows at the fill.

        ``isig`` is ``impact_coef * sigma_t`` per entry.
        """
        x = np.abs(qty)
        pos = self._pos
        size = np.abs(pos)
        pq = pos * qty
        adding = pq >= 0.0
        reduce_only = ~adding & (x <= size)
        xi = x if self._cap is None else np.minimum(x, self._cap * vol)
        slip = np.sqrt(xi / vol_safe)
        slip *= isig
        if self._dry_bars:
            slip[vol <= 0.0] = 0.0
        slip += self._hs
        # ref * (1 + slip) for buys, ref * (1 - slip) for sells: 1 + (-slip) is exactly 1 - slip.
        price = np.copysign(slip, qty)
        price += 1.0
        price *= ref
        unit_cost = ref * slip
        price *= self._taker
        unit_cost += price
        im = ref / self.leverage
        equity = ref - self._entry
        equity *= pos
        equity += self._bal
        held = size * im
        np.copysign(held, pq, out=held)  # + when adding (equity - held), - when reducing (equity + held)
        xmax = equity - held
        im += unit_cost
        xmax /= im
        if math.isfinite(self._max_notional):
            room = self._max_notional / ref
            np.minimum(xmax, np.where(adding, room - size, room + size), out=xmax)
        ok = reduce_only | (xmax >= x)
        if _all(ok):
            return qty
        keep = ~adding & (xmax < size)
        xmax[keep] = size[keep]
        lots = xmax / self._lot
        lots += 1e-9
        np.floor(lots, out=lots)
        lots[~(xmax > 0.0)] = 0.0
        q = lots * self._lot
        q[q < self._min_qty] = 0.0
        np.copysign(q, qty, out=q)
        return np.where(ok, qty, q)

    def _liquidate(self, idx: np.ndarray, price: np.ndarray) -> None:
        """``Account.liquidate`` for the sub-envs ``idx`` at ``price`` (per entry)."""
        pos = self._pos[idx]
        pnl = pos * (price - self._entry[idx])
        self._real[idx] += pnl
        bal = self._bal[idx] + pnl
        notional = np.abs(pos) * price
        f = np.minimum(notional * self._liq_fee, np.maximum(bal, 0.0))
        self._fees[idx] += f
        bal -= f
        self._turn[idx] += notional
        bad = np.where(bal < 0.0, -bal, 0.0)
        self._real[idx] += bad
        self._bad[idx] += bad
        self._bal[idx] = np.maximum(bal, 0.0)
        self._pos[idx] = 0.0
        self._entry[idx] = 0.0
        self._nliq[idx] += 1

    def _execute(
        self, qty: np.ndarray, ref: np.ndarray, vol: np.ndarray, vol_safe: np.ndarray, isig: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The single env's ``_execute`` per entry of ``qty`` (0: no order); returns (filled, unfilled).

        Works on all entries at once: an entry without an order has ``q = 0``, which makes its realized PnL,
        fee, slippage and turnover exactly 0 and leaves its position unchanged (it is a whole number of lots
        already); only the entry price needs the mask.
        """
        want = np.abs(qty)
        q = qty
        partial = False
        if self._cap is not None:
            capq = self._cap * vol
            over = want > capq
            if _any(over):
                lots = np.floor(capq / self._lot + 1e-9)
                capped = np.copysign(lots * self._lot, qty)
                capped[np.abs(capped) < self._min_qty] = 0.0
                q = np.where(over, capped, qty)
                partial = True
        if self._dry_bars:
            dry = vol <= 0.0
            if _any(dry):
                q = np.where(dry, 0.0, q)
                partial = True
        if partial:
            filled = np.abs(q)
            unfilled = want - filled
        else:
            filled = want
            unfilled = np.zeros(self.num_envs)
        m = q != 0.0
        if not _any(m):
            return q, unfilled
        # Fill price: ref * (1 + half_spread + impact) for buys, ref * (1 - half_spread - impact) for sells
        # (left to right, as the single env computes it).
        impact = np.sqrt(filled / vol_safe)
        impact *= isig
        buy = q > 0.0
        mult = np.where(buy, self._up + impact, self._dn - impact)
        price = ref * mult

        # envs.contract.apply_fill (average entry price), then the snap to whole lots.
        pos = self._pos
        entry = self._entry
        apos = np.abs(pos)
        new_pos = pos + q
        adding = (pos * q) >= 0.0  # flat, or an order on the side of the position
        entry_add = apos * entry
        entry_add += filled * price
        entry_add /= apos + filled
        closed = np.minimum(filled, apos)
        closed[adding] = 0.0
        realized = price - entry
        realized *= closed
        np.negative(realized, out=realized, where=pos < 0.0)
        # Reduce: entry unchanged; flip: the remainder opens at the fill price; flat: 0.
        flip = (new_pos * pos) < 0.0
        new_entry = np.where(adding, entry_add, np.where(flip, price, entry))
        np.round(new_pos / self._lot, out=new_pos)
        new_pos *= self._lot
        new_entry[new_pos == 0.0] = 0.0
        np.copyto(entry, new_entry, where=m)
        np.copyto(pos, new_pos, where=m)
        notional = filled * price
        f = notional * self._taker
        self._real += realized
        self._fees += f
        realized -= f
        self._bal += realized
        slip = price - ref
        np.abs(slip, out=slip)
        slip *= filled
        self._slip += slip
        self._turn += notional
        return q, unfilled

    def _warn_flat_rate(self, notional: float) -> None:
        self._flat_warned = True
        warnings.warn(
            flat_rate_warning("CryptoFuturesVecEnv", notional, self._flat_max, self._mmr),
            UserWarning,
            stacklevel=4,
        )

    def _observe(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Observations of all sub-envs (or of ``idx``) from the current state; a fresh float32 array.

        Called under ``np.errstate(divide="ignore", invalid="ignore")``: accounts with equity 0 divide by 0.
        """
        if idx is None:
            t, pos, entry, eq = self._t, self._pos, self._entry, self._eq
        else:
            t, pos, entry, eq = self._t[idx], self._pos[idx], self._entry[idx], self._eq[idx]
        k = t.shape[0]
        wl = self._wl
        obs = self._obsmat.take(t, axis=0, mode="clip")
        mark = self._c[t]
        clip = self._clip
        acc = np.empty((3, k))
        frac, upnl, mratio = acc
        # Same operations, same order as the single env's _observe (so the same floats).
        np.multiply(pos, mark, out=frac)
        np.abs(frac, out=mratio)  # notional |pos| * mark
        frac /= self.leverage * eq
        np.subtract(mark, entry, out=upnl)
        upnl *= pos
        upnl /= eq
        if self._mmr is not None:
            mratio *= self._mmr
        else:
            mmr, amt = self._brackets(mratio.copy())
            mratio *= mmr
            mratio -= amt
            np.maximum(mratio, 0.0, out=mratio)
            mratio[pos == 0.0] = 0.0
        mratio /= eq
        np.maximum(acc[:2], -clip, out=acc[:2])
        np.minimum(acc, clip, out=acc)
        # A flat account reads 0 already (0 / equity); only a wiped-out account (equity 0) needs the fix.
        dead = ~(eq > 0.0)
        if _any(dead):
            acc[:, dead] = 0.0
        obs[:, wl:] = acc.T
        return obs

    def _infos(
        self, liquidated: np.ndarray, bankrupt: np.ndarray, trade: np.ndarray, unfilled: np.ndarray
    ) -> dict[str, Any]:
        t = self._t
        mark = self._c[t]
        snap = self._S[:_N_INFO_ROWS].copy()
        vals = {
            "equity": snap[_EQ],
            "position": snap[_POS],
            "price": mark,
            "realized_pnl": snap[_REAL],
            "unrealized_pnl": self._pos * (mark - self._entry),
            "fees_paid": snap[_FEES],
            "funding_paid": snap[_FUND],
            "slippage_paid": snap[_SLIP],
            "turnover": snap[_TURN],
            "liquidated": liquidated,
            "bankrupt": bankrupt,
            "bar_index": t.copy(),
            "bad_debt": snap[_BAD],
            "trade_qty": trade,
            "unfilled_qty": unfilled,
        }
        infos: dict[str, Any] = {}
        mask = self._all_true
        for key, v in vals.items():
            infos[key] = v
            infos["_" + key] = mask
        return infos

    def _parse_actions(self, actions: Any) -> np.ndarray:
        n = self.num_envs
        arr = np.asarray(actions)
        a = self._a
        if self.levels is None:
            if arr.shape not in ((n,), (n, 1)) or arr.dtype.kind not in "iuf":
                raise ValueError(
                    f"actions must be a float array of shape ({n}, 1) or ({n},) (target position fractions "
                    f"in [-1, 1], one per sub-env), got shape {arr.shape} dtype {arr.dtype}"
                )
            a[:] = arr.reshape(n)
            # One reduction instead of an isfinite pass: a NaN or inf anywhere makes the sum non-finite.
            if not np.isfinite(np.add.reduce(a)):
                bad = int(np.flatnonzero(~np.isfinite(a))[0])
                raise ValueError(f"actions must be finite, got {arr.reshape(n)[bad]!r} for sub-env {bad}")
            np.maximum(a, -1.0, out=a)
            np.minimum(a, 1.0, out=a)
            return a
        if arr.shape not in ((n,), (n, 1)) or arr.dtype.kind not in "biu":
            raise ValueError(
                f"actions must be an int array of shape ({n},) with values in [0, {self.n_levels - 1}] "
                f"(discrete levels {list(self.levels)}), got shape {arr.shape} dtype {arr.dtype}"
            )
        k = arr.reshape(n)
        out = (k < 0) | (k >= self.n_levels)
        if _any(out):
            bad = int(np.flatnonzero(out)[0])
            raise ValueError(
                f"action {int(k[bad])} of sub-env {bad} is out of range: valid actions are 0 .. "
                f"{self.n_levels - 1}"
            )
        np.take(self.levels, k, out=a)
        return a

    # ------------------------------------------------------------------------------------------- gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-env; ``options={"start": starts}`` pins the first decision bars."""
        super().reset(seed=seed)
        n = self.num_envs
        starts = None
        if options:
            unknown = set(options) - {"start"}
            if unknown:
                raise ValueError(f"unknown reset option(s) {sorted(unknown)}; the only option is 'start'")
            starts = options.get("start")
        if starts is None:
            starts = self._draw_starts(n)
        else:
            arr = np.asarray(starts)
            if arr.ndim == 0:
                arr = np.full(n, arr)
            if arr.shape != (n,) or arr.dtype.kind not in "iu":
                raise ValueError(
                    f"options['start'] must be an int array of {n} bar indices (one per sub-env), got "
                    f"{starts!r}"
                )
            bad = (arr < self.min_start) | (arr > self.max_start)
            if _any(bad):
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"options['start'][{i}]={int(arr[i])} is outside the valid range [{self.min_start}, "
                    f"{self.max_start}] of first decision bars ({self.n_bars} bars, window {self.window}, "
                    f"episode_bars={self.episode_bars})"
                )
            starts = arr.astype(np.intp)
        self._reset_envs(slice(None), starts)
        self._started = True
        zeros = np.zeros(n)
        no = np.zeros(n, dtype=bool)
        with np.errstate(invalid="ignore", divide="ignore"):
            obs = self._observe()
        return obs, self._infos(no, no.copy(), zeros, zeros.copy())

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every sub-env with its action; finished sub-envs are reset in the same call (SAME_STEP)."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        a = self._parse_actions(actions)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._step(a)

    def _step(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        # The hot path. Every quantity of the single env's step is computed for all sub-envs with whole-array
        # operations in the single env's order of floating-point operations (so results agree to the last
        # bit, up to libm differences in log/pow); liquidations and episode ends, which are rare, work on
        # index subsets. Flat accounts give NaN liquidation prices, which compare false.
        t = self._t
        j = t + 1
        pos = self._pos
        entry = self._entry
        bal = self._bal
        equity_t = self._eq.copy()
        # One gather for the bar data: rows of self._mkt are open, high, low, close, volume, volume with
        # zeros replaced, funding settled at bar j's open and later inside it, then bar t's close and
        # impact_coef * sigma_t (the impact scale; the product is the one the single env computes).
        # The transposed gather is copied to contiguous rows: every later operation on these ten columns then
        # runs on contiguous memory (on strided views the step was ~20 % slower, measured).
        bars = np.ascontiguousarray(self._mkt.take(j, axis=0, mode="clip").T)
        o, hi, lo, c, vol, vol_safe, rate, rate_in, close_t, isig = bars

        # 1. order from the target (sized with bar t's close and equity), dead-band, lots, min_qty.
        max_notional = self.leverage * equity_t
        cur = pos * close_t
        cur /= max_notional
        want = a * max_notional
        want /= close_t
        want -= pos
        cur -= a
        np.abs(cur, out=cur)
        trade = cur >= self._deadband
        trade |= a == 0.0
        trade &= max_notional > 0.0
        qty = np.abs(want)
        qty /= self._lot
        qty += 1e-9
        np.floor(qty, out=qty)
        qty *= self._lot
        np.copysign(qty, want, out=qty)
        trade &= np.abs(qty) >= self._min_qty
        qty *= trade

        n = self.num_envs
        liquidated = np.zeros(n, dtype=bool)
        bankrupt = np.zeros(n, dtype=bool)
        # 2. gap, before any fill: the carried position may open beyond its liquidation price
        # ((o - lp) * pos <= 0 is "o <= lp" for a long and "o >= lp" for a short); the order is not sent.
        lp = self._liq_prices(pos, entry, bal)
        beyond = o - lp
        beyond *= pos
        gap = beyond <= 0.0
        gap_idx = np.flatnonzero(gap) if _any(gap) else None
        if gap_idx is not None:
            self._liquidate(gap_idx, o[gap_idx])
            liquidated[gap_idx] = True
            not_sent = np.abs(qty[gap_idx])
            qty[gap_idx] = 0.0

        # 3. funding settled at the open, paid by the carried position (0 where flat or no settlement).
        pay = pos * o
        pay *= rate
        self._fund += pay
        bal -= pay
        if self._fill_open:
            # 4.-5. trim to the margin at the fill price, fill at the open; a close beyond the bankruptcy
            # price leaves a flat account with a negative wallet: bad debt, the episode ends.
            sent = qty
            qty = self._trim(sent, o, vol, vol_safe, isig)
            filled, unfilled = self._execute(qty, o, vol, vol_safe, isig)
            unfilled += np.abs(sent) - np.abs(qty)
            broke = bal < 0.0
            broke &= pos == 0.0
            broke &= sent != 0.0
            if _any(broke):
                idx = np.flatnonzero(broke)
                self._absorb(idx)
                bankrupt[idx] = True
        if self._has_rate_in:  # settlements later inside long bars, on the position held then
            pay = pos * o
            pay *= rate_in
            self._fund += pay
            bal -= pay
        # 6. liquidation on the adverse extreme of the bar (at the open if already beyond it).
        lp = self._liq_prices(pos, entry, bal)
        beyond = np.where(pos > 0.0, lo, hi)
        beyond -= lp
        beyond *= pos
        hit = beyond <= 0.0
        if _any(hit):
            idx = np.flatnonzero(hit)
            lpi = lp[idx]
            oi = o[idx]
            px = np.where(pos[idx] > 0.0, np.minimum(oi, lpi), np.maximum(oi, lpi))
            self._liquidate(idx, px)
            liquidated[idx] = True
        if not self._fill_open:
            # 4'. fill_at="next_close": orders of liquidated accounts are not sent; the others are trimmed and
            # filled at the close, then the margin is checked there.
            lost = np.abs(qty) * liquidated
            sent = qty * ~liquidated
            qty = self._trim(sent, c, vol, vol_safe, isig)
            filled, unfilled = self._execute(qty, c, vol, vol_safe, isig)
            unfilled += np.abs(sent) - np.abs(qty)
            unfilled += lost
            check = sent != 0.0
            if _any(check):
                broke = check & (pos == 0.0) & (bal < 0.0)
                if _any(broke):
                    idx = np.flatnonzero(broke)
                    self._absorb(idx)
                    bankrupt[idx] = True
                lp = self._liq_prices(pos, entry, bal)
                beyond = c - lp
                beyond *= pos
                closing = check & (beyond <= 0.0)
                if _any(closing):
                    idx = np.flatnonzero(closing)
                    self._liquidate(idx, c[idx])
                    liquidated[idx] = True
        if gap_idx is not None:
            unfilled[gap_idx] = not_sent
        if self._flat_max is not None and not self._flat_warned:
            big = np.abs(pos) * o > self._flat_max
            big &= filled != 0.0
            if _any(big):
                self._warn_flat_rate(float(np.abs(pos[big][0]) * o[big][0]))

        # 6. mark at the close.
        t += 1
        eq = self._eq
        np.subtract(c, entry, out=eq)
        eq *= pos
        eq += bal
        np.maximum(eq, 0.0, out=eq)
        bankrupt |= eq <= 0.0  # nothing left to trade with (liquidations are reported as such)
        bankrupt &= ~liquidated

        floor = self._floor
        kind = self._reward_kind
        if kind == 0:
            reward = np.maximum(eq, floor)
            reward /= np.maximum(equity_t, floor)
            np.log(reward, out=reward)
        elif kind == 1:
            reward = self._differential_sharpe(eq, equity_t)
        else:
            reward = eq - equity_t
            reward /= self.initial_balance

        terminated = liquidated | bankrupt
        truncated = t >= self._end
        truncated &= ~terminated
        g = self._g = self._g + 1
        if self._hist is not None:
            self._hist[g % self._ring] = eq
        done = terminated | truncated
        if not _any(done):
            return (
                self._observe(),
                reward,
                terminated,
                truncated,
                self._infos(liquidated, bankrupt, filled, unfilled),
            )
        return self._autoreset(done, reward, terminated, truncated, liquidated, bankrupt, filled, unfilled)

    def _autoreset(
        self,
        done: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        liquidated: np.ndarray,
        bankrupt: np.ndarray,
        filled: np.ndarray,
        unfilled: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """SAME_STEP autoreset: report the finished episodes in final_obs / final_info, then restart them."""
        idx = np.flatnonzero(done)
        final_obs_rows = self._observe(idx)
        final = self._infos(liquidated, bankrupt, filled, unfilled)
        final_info: dict[str, Any] = {}
        for key in INFO_KEYS:
            v = final[key]
            final_info[key] = np.where(done, v, np.zeros((), dtype=v.dtype))
            final_info["_" + key] = done
        if self._hist is not None:
            final_info["episode_metrics"] = self._episode_metrics(idx)
            final_info["_episode_metrics"] = done
        final_obs = np.full(self.num_envs, None, dtype=object)
        for r, i in enumerate(idx):
            final_obs[i] = final_obs_rows[r]

        self._reset_envs(idx, self._draw_starts(idx.size))
        filled = np.where(done, 0.0, filled)
        unfilled = np.where(done, 0.0, unfilled)
        keep = ~done
        infos = self._infos(liquidated & keep, bankrupt & keep, filled, unfilled)
        infos["final_obs"] = final_obs
        infos["_final_obs"] = done
        infos["final_info"] = final_info
        infos["_final_info"] = done
        return self._observe(), reward, terminated, truncated.copy(), infos

    def _episode_metrics(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """``envs.metrics.trade_metrics`` of the finished episodes ``idx``, as arrays over all sub-envs (0
        elsewhere), computed for all episodes of one length at once."""
        n = self.num_envs
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        out: dict[str, np.ndarray] = {}
        steps = self._g - self._ep_g[idx]
        for length in np.unique(steps):
            group = idx[steps == length]
            rows = (self._ep_g[group, None] + 1 + np.arange(length)) % self._ring
            curves = np.empty((group.size, length + 1))
            curves[:, 0] = self.initial_balance
            curves[:, 1:] = self._hist[rows, group[:, None]]
            # The single env's training-episode metrics: annualized ratios kept even over short episodes.
            batch = trade_metrics_batch(
                curves,
                bar_seconds=self.market.bar_seconds,
                turnover=self._turn[group] / self.initial_balance,
                fees=self._fees[group],
                funding=self._fund[group],
                liquidations=self._nliq[group],
                short_ratios="keep",
            )
            for k, v in batch.items():
                if k not in out:
                    out[k] = np.zeros(n, dtype=v.dtype)
                out[k][group] = v
        result: dict[str, np.ndarray] = {}
        for k, v in out.items():
            result[k] = v
            result["_" + k] = mask
        return result

    def _differential_sharpe(self, eq: np.ndarray, eq_prev: np.ndarray) -> np.ndarray:
        """The single env's differential Sharpe ratio per sub-env; updates the EWMA moments in place."""
        floor = self._floor
        r = np.log(np.maximum(eq, floor) / np.maximum(eq_prev, floor))
        a_prev, b_prev = self._dsr_a, self._dsr_b
        var = b_prev - a_prev * a_prev
        da = r - a_prev
        db = r * r - b_prev
        ok = var > 1e-12
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.where(ok, (b_prev * da - 0.5 * a_prev * db) / np.where(ok, var, 1.0) ** 1.5, 0.0)
        a_prev += self.dsr_eta * da
        b_prev += self.dsr_eta * db
        return d

    def render(self) -> tuple[str, ...] | None:
        """``"ansi"``: one summary line per sub-env; ``None`` otherwise."""
        if self.render_mode != "ansi":
            return None
        if not self._started:
            return tuple("CryptoFuturesEnv (not reset)" for _ in range(self.num_envs))
        c = self._c[self._t]
        return tuple(
            f"[{i}] bar {int(self._t[i])}  price {c[i]:.2f}  position {self._pos[i]:+.3f}  "
            f"equity {self._eq[i]:.2f}  fees {self._fees[i]:.2f}  funding {self._fund[i]:.2f}"
            for i in range(self.num_envs)
        )

    def __repr__(self) -> str:
        return f"CryptoFuturesVecEnv(num_envs={self.num_envs}, {self.market.symbol!r}, {self.n_bars} bars)"
