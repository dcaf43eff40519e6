"""Batched ``CryptoFuturesExecution-v0``: N copies of :class:`envs.execution_env.CryptoFuturesExecutionEnv`
stepped in numpy."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pandas as pd
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.contract import ExecutionConfig
from envs.execution_env import (
    _EPS,
    INFO_KEYS,
    OBS_NAMES,
    SUMMARY_KEYS,
    CryptoFuturesExecutionEnv,
    parent_lots,
)
from envs.market import MarketData

__all__ = ["CryptoFuturesExecutionVecEnv"]

# ndarray.any() goes through a Python-level wrapper; the bare reduction is cheaper on the hot path.
_any = np.logical_or.reduce

# Rows of the float state matrix (one column per sub-env): arrival price, arrival notional, transient
# displacement, mark-to-market shortfall S_k, sum q_i p_i, fees, the shortfall's timing / spread / impact
# parts, the last step's forced quantity, funding paid.
_P0, _NOTIONAL, _DISP, _MTM, _CASH, _FEES, _TIMING, _SPREAD, _IMPACT, _FORCED, _FUND = range(11)
_N_FLOAT = 11
# Rows of the int state matrix: first decision bar, decision bar, steps taken, side, parent lots, lots left,
# fills.
_T0, _T, _K, _SIDE, _QLOTS, _REM, _NFILLS = range(7)
_N_INT = 7
_RESET_OPTIONS = ("start", "side", "quantity", "quantity_adv")


class CryptoFuturesExecutionVecEnv(VectorEnv):
    r"""`num_envs` independent parent orders executed on one market, stepped together with numpy operations.

    ## Description

    Each sub-env is exactly a `CryptoFuturesExecutionEnv` with the same arguments (same child-order sizing,
    participation cap, forced completion at the deadline, fill model, transient impact, funding, observation
    and implementation-shortfall rewards; see its docstring for the rules), but the batch is advanced by
    whole-array numpy operations instead of a Python loop over envs. Episode ends and empty-bar fills (rare)
    work on index subsets; the rest runs on whole arrays in the single env's order of floating-point
    operations. The per-bar parts of the observation (volume profile share of every remaining horizon,
    relative volume, volatility, spread, funding, time of day, the return window) are precomputed once per
    bar with the single env's own arithmetic, so a step gathers one row per sub-env; only the arrival move
    ``s * log(close_t / P0) / sigma_t`` uses numpy's ``log``, which may differ from libm's in the last bit
    (~1e-16 relative, invisible after the float32 cast in practice). `tests/test_execution_vec_env.py`
    checks the batch against N single envs step for step (observations, rewards, infos to 1e-9, equal
    terminations) through many autoresets. `python -m benchmarks.vec_env_throughput --task execution`
    measures env-steps/s.

    ## Spaces

    `single_observation_space` / `single_action_space` are the single env's; `observation_space` is
    `Box(..., (num_envs, 13 + window), float32)` and `action_space` is `Box(-1, 1, (num_envs, 1), float32)`
    (continuous; a `(num_envs,)` array is accepted too) or `MultiDiscrete([n_levels] * num_envs)`. Invalid
    actions raise `ValueError` naming the sub-env.

    ## Autoreset

    `AutoresetMode.SAME_STEP` (also in `metadata["autoreset_mode"]`): a sub-env whose order is fully
    executed (`terminated`; at the deadline at the latest; `truncated` is always False, as in the single env)
    is reset inside the same `step` call. The returned observation and info entries are the new episode's
    first ones; the step's `reward` and `terminated` are the finished episode's last. The finished episode's
    last observation and info are in `infos["final_obs"]` (object array, `None` for envs that did not finish)
    and `infos["final_info"]` (dict of arrays with the single env's last-step keys and `execution`, the
    episode summary as a dict of arrays), masked by `infos["_final_obs"]` / `infos["_final_info"]`, the
    layout of gymnasium's `SyncVectorEnv` in the same mode.

    ## Info

    A dict of arrays of shape `(num_envs,)` with the single env's step keys
    (`envs.execution_env.INFO_KEYS`: `bar_index`, `step`, `side`, `quantity`, `remaining`, `executed`,
    `fill_qty`, `fill_price`, `fee`, `forced`, `forced_qty`, `arrival_price`, `shortfall_bps`, `fees_paid`,
    `funding_paid`), each with its all-True `_key` mask. Right after a reset (and for autoreset sub-envs)
    they hold the new episode's values: the single env's reset info (`bar_index`, `step` 0, `side`,
    `quantity`, `remaining`, `arrival_price`; its constant `horizon` is the attribute `horizon`) and zeros
    for the flows (`fill_qty`, `fill_price`, `fee`, `forced`, ...).

    ## Starting State

    Each episode's arrival bar, side and size are drawn as in the single env (arrival bar uniform over
    `[min_start, max_start]`, side from `side`, size uniform over `quantity` or `quantity_adv` times the ADV
    up to the arrival bar, rounded down to the lot, at least `min_qty`), but from **this vector env's**
    `np_random` (seeded by `reset(seed=...)`), one array draw per quantity for all the sub-envs that start:
    first the arrival bars, then the sides (`side="random"`), then the sizes. Same seed, same actions ->
    same results; the single envs' own generators are not used.

    `reset(options=...)` pins the first episodes, each entry one value for all sub-envs or an array of
    `num_envs`: `{"start": bars, "side": sides ("buy"/"sell" or +1/-1), "quantity": base_units}` or
    `{"quantity_adv": fractions}` (what the single env's `reset` accepts, per sub-env). Later autoresets
    draw.

    ## Arguments

    The single env's (`market`, `horizon_bars`, `quantity`, `quantity_adv`, `side`, `action`, `n_levels`,
    `execution`, `impact_halflife`, `window`, `profile_days`, `render_mode`: None only), plus

    * `num_envs=1`: number of sub-envs.

    Memory: besides the single env's arrays, two float64 tables per bar: the observation's per-bar entries,
    `n_bars x (13 + window)`, and the volume-profile share of the next bar for every remaining horizon,
    `n_bars x horizon_bars` (2.8 MB for the embedded 29,303 bars at `horizon_bars=12`).

    ```python
    >>> import gymnasium as gym, envs
    >>> vec = gym.make_vec("CryptoFuturesExecution-v0", num_envs=8, vectorization_mode="vector_entry_point",
    ...                    horizon_bars=8)
    >>> obs, infos = vec.reset(seed=0, options={"side": "buy"})
    >>> obs.shape
    (8, 21)
    ```
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        market: MarketData | pd.DataFrame | str | os.PathLike | None = None,
        *,
        num_envs: int = 1,
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
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        # One prototype single env validates every argument and computes the market's per-bar arrays
        # (features, volume profile, ADV, spread estimate, funding split): the vec env cannot drift from it.
        proto = CryptoFuturesExecutionEnv(
            market,
            horizon_bars=horizon_bars,
            quantity=quantity,
            quantity_adv=quantity_adv,
            side=side,
            action=action,
            n_levels=n_levels,
            execution=execution,
            impact_halflife=impact_halflife,
            window=window,
            profile_days=profile_days,
            render_mode=render_mode,
        )
        self.proto = proto
        n = self.num_envs = int(num_envs)
        self.render_mode = None
        self.market = proto.market
        self.execution = proto.execution
        self.horizon = proto.horizon
        self.window = proto.window
        self.profile_days = proto.profile_days
        self.side_mode = proto.side_mode
        self.action_mode = proto.action_mode
        self.n_levels = proto.n_levels
        self.impact_halflife = proto.impact_halflife
        self.bars_per_day = proto.bars_per_day
        self.min_start, self.max_start = proto.min_start, proto.max_start
        self.n_bars = len(self.market)
        self.single_observation_space = proto.observation_space
        self.single_action_space = proto.action_space
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)

        self._rho = proto._rho
        self._lot = proto._lot
        self._min_lots = proto._min_lots
        self._size_kind, self._size_range = proto._size_kind, proto._size_range
        ex = self.execution
        self._hs = ex.half_spread
        self._up = 1.0 + ex.half_spread
        self._dn = 1.0 - ex.half_spread
        self._taker = ex.taker_fee
        self._cap = ex.max_participation

        m = self.market
        nb = self.n_bars
        self._c = np.ascontiguousarray(m.close, dtype=np.float64)
        self._sigma = np.asarray(proto._sigma, dtype=np.float64)
        self._prof = proto._prof
        self._adv = proto._adv
        vol = np.asarray(proto._volume, dtype=np.float64)
        self._dry_bars = bool((vol <= 0.0).any())
        rate_in = np.asarray(proto._rate_in, dtype=np.float64)
        self._has_rate_in = bool(rate_in.any())
        # Column j: what step t -> j = t + 1 reads, gathered in one take into contiguous rows: open, close,
        # volume, volume with zeros replaced by 1 (a bar without volume fills nothing unless forced, and the
        # impact of an empty order is then 0, not 0 / 0), funding settled at the open and later inside the
        # bar, and the impact scale coef * sigma_t (the single env's product).
        prev = np.r_[0, np.arange(nb - 1)]
        self._mkt = np.stack(
            [
                np.asarray(m.open, dtype=np.float64),
                self._c,
                vol,
                np.where(vol > 0.0, vol, 1.0),
                np.asarray(proto._rate_open, dtype=np.float64),
                rate_in,
                ex.impact_coef * self._sigma[prev],
            ]
        )
        self._static, self._vshare = self._tables()
        self._obs_low = proto._obs_low
        self._obs_high = proto._obs_high

        self._F = np.zeros((_N_FLOAT, n))
        self._I = np.zeros((_N_INT, n), dtype=np.int64)
        self._a = np.zeros(n)
        self._started = False
        self._all_true = np.ones(n, dtype=bool)
        self._all_true.flags.writeable = False

    # ------------------------------------------------------------------------------------------ tables

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        """The observation's per-bar entries (row t: decision bar t), and the volume share of the next bar.

        ``static[t]`` holds the single env's entries that depend on the decision bar only (``next_volume``,
        ``rel_volume``, ``volatility``, ``spread``, ``funding_rate``, ``time_to_funding``, the next bar's time
        of day, the unsigned return window), computed with the single env's arithmetic (``math.log``, not
        numpy's, whose last bit may differ). ``vshare[t, L - 1]`` is ``vwap_share`` on decision bar ``t``
        with ``L`` fill bars left: the expected volume of the next bar over that of the ``L`` remaining ones,
        summed row by row as ``numpy.sum`` sums the single env's 1-D array (same pairwise order, same float).
        Rows before ``min_start`` are never read and stay 0.
        """
        p = self.proto
        nb, P, T, w = self.n_bars, self.bars_per_day, self.horizon, self.window
        first = self.min_start
        t = np.arange(first, nb)
        static = np.zeros((nb, len(OBS_NAMES) + w))
        ev0 = self._prof[t + 1 - P]
        mean_bar = self._adv[t] / P
        arg = (ev0 + _EPS) / (mean_bar + _EPS)
        static[first:, 4] = [math.log(x) if x > 0.0 else math.nan for x in arg.tolist()]
        static[first:, 5] = p._rel_volume[t]
        static[first:, 7] = self._sigma[t] * 100.0
        static[first:, 8] = p._spread[t]
        static[first:, 9] = p._funding[t]
        static[first:, 10] = p._ttf[t]
        nxt = np.minimum(t + 1, nb - 1)  # the last bar is only a terminal decision bar (overridden there)
        static[first:, 11] = p._tod_sin[nxt]
        static[first:, 12] = p._tod_cos[nxt]
        static[first:, 13:] = p._ret[t[:, None] - np.arange(w)]

        vshare = np.zeros((nb, T))
        d = np.arange(1, T + 1)
        src = t[:, None] + d - P * ((d + P - 1) // P)
        ev = self._prof[src]
        with np.errstate(invalid="ignore", divide="ignore"):
            for L in range(1, T + 1):
                tot = ev[:, :L].copy().sum(axis=1)  # contiguous rows: numpy's 1-D summation order per row
                vshare[first:, L - 1] = np.where(tot > 0, ev[:, 0] / tot, 1.0 / L)
        return static, vshare

    # ------------------------------------------------------------------------------------------ helpers

    def _options(self, options: dict[str, Any] | None) -> dict[str, np.ndarray | None]:
        """The reset options as arrays of ``num_envs`` (None: drawn); ValueError names the bad entry."""
        n = self.num_envs
        out: dict[str, np.ndarray | None] = dict.fromkeys(_RESET_OPTIONS)
        if not options:
            return out
        unknown = set(options) - set(_RESET_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown reset option(s) {sorted(unknown)}; accepted: {', '.join(_RESET_OPTIONS)} (each one "
                f"value or an array of num_envs={n})"
            )
        for name in _RESET_OPTIONS:
            value = options.get(name)
            if value is None:
                continue
            arr = np.asarray(value)
            if arr.ndim == 0:
                arr = np.full(n, arr)
            if arr.shape != (n,):
                raise ValueError(
                    f"options[{name!r}] must be one value or an array of {n} (one per sub-env), got shape "
                    f"{arr.shape}"
                )
            out[name] = arr
        start = out["start"]
        if start is not None:
            if start.dtype.kind not in "iu":
                raise ValueError(f"options['start'] must be int bar indices, got dtype {start.dtype}")
            bad = (start < self.min_start) | (start > self.max_start)
            if _any(bad):
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"options['start'][{i}]={int(start[i])} is outside the valid range [{self.min_start}, "
                    f"{self.max_start}] of arrival bars (warm-up before, horizon_bars={self.horizon} after)"
                )
            out["start"] = start.astype(np.int64)
        side = out["side"]
        if side is not None:
            if side.dtype.kind in "US":
                sign = np.where(side == "buy", 1, np.where(side == "sell", -1, 0))
            elif side.dtype.kind in "iuf":
                sign = np.where(side == 1, 1, np.where(side == -1, -1, 0))
            else:
                sign = np.zeros(n, dtype=np.int64)
            if not sign.all():
                i = int(np.flatnonzero(sign == 0)[0])
                raise ValueError(
                    f"options['side'][{i}] must be 'buy' or 'sell' (or +1 / -1), got {side[i]!r}"
                )
            out["side"] = sign.astype(np.int64)
        if out["quantity"] is not None and out["quantity_adv"] is not None:
            raise ValueError("give options['quantity'] or options['quantity_adv'], not both")
        for name in ("quantity", "quantity_adv"):
            arr = out[name]
            if arr is None:
                continue
            if arr.dtype.kind not in "iuf":
                raise ValueError(f"options[{name!r}] must be numbers > 0, got dtype {arr.dtype}")
            arr = arr.astype(np.float64)
            bad = ~(np.isfinite(arr) & (arr > 0))
            if _any(bad):
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"options[{name!r}][{i}] must be a number > 0, got {arr[i]!r}")
            out[name] = arr
        return out

    def _draw(self, k: int, pinned: dict[str, np.ndarray | None] | None = None) -> tuple[np.ndarray, ...]:
        """Arrival bars, sides and parent lots of ``k`` new episodes: pinned ones, the rest from np_random."""
        pinned = pinned or {}
        rng = self.np_random
        t0 = pinned.get("start")
        if t0 is None:
            t0 = rng.integers(self.min_start, self.max_start + 1, size=k, dtype=np.int64)
        s = pinned.get("side")
        if s is None:
            if self.side_mode == "random":
                s = np.where(rng.random(k) < 0.5, 1, -1).astype(np.int64)
            else:
                s = np.full(k, 1 if self.side_mode == "buy" else -1, dtype=np.int64)
        qty = pinned.get("quantity")
        if qty is None:
            adv = pinned.get("quantity_adv")
            if adv is not None:
                qty = adv * self._adv[t0]
            else:
                lo, hi = self._size_range
                draw = np.full(k, lo) if lo == hi else rng.uniform(lo, hi, size=k)
                qty = draw if self._size_kind == "base" else draw * self._adv[t0]
        lots = parent_lots(qty, self._lot).astype(np.int64)
        small = lots < self._min_lots
        if _any(small):
            if pinned.get("quantity") is not None:
                i = int(np.flatnonzero(small)[0])
                raise ValueError(
                    f"options['quantity'][{i}]={float(qty[i])!r} is below the minimum order "
                    f"{self.execution.min_qty} (lot {self._lot}); ask for more"
                )
            np.maximum(lots, self._min_lots, out=lots)
        return t0, s, lots

    def _reset_envs(self, idx: np.ndarray | slice, t0: np.ndarray, s: np.ndarray, lots: np.ndarray) -> None:
        """Put the sub-envs ``idx`` at the start of an episode (the single env's ``reset`` state)."""
        fs, ix = self._F, self._I
        fs[:, idx] = 0.0
        p0 = self._c[t0]
        fs[_P0, idx] = p0
        fs[_NOTIONAL, idx] = lots * self._lot * p0
        ix[_T0, idx] = t0
        ix[_T, idx] = t0
        ix[_K, idx] = 0
        ix[_SIDE, idx] = s
        ix[_QLOTS, idx] = lots
        ix[_REM, idx] = lots
        ix[_NFILLS, idx] = 0

    def _parse_actions(self, actions: Any) -> np.ndarray:
        """Fractions of the remainder to send, per sub-env (the single env's ``_fraction``)."""
        n = self.num_envs
        arr = np.asarray(actions)
        a = self._a
        if self.action_mode == "continuous":
            if arr.shape not in ((n,), (n, 1)) or arr.dtype.kind not in "iuf":
                raise ValueError(
                    f"actions must be a float array of shape ({n}, 1) or ({n},) (a = 2 f - 1, f the share of "
                    f"the remainder, one per sub-env), got shape {arr.shape} dtype {arr.dtype}"
                )
            a[:] = arr.reshape(n)
            # One reduction instead of an isfinite pass: a NaN or inf anywhere makes the sum non-finite.
            if not np.isfinite(np.add.reduce(a)):
                bad = int(np.flatnonzero(~np.isfinite(a))[0])
                raise ValueError(f"actions must be finite, got {arr.reshape(n)[bad]!r} for sub-env {bad}")
            a += 1.0
            a *= 0.5
            np.maximum(a, 0.0, out=a)
            np.minimum(a, 1.0, out=a)
            return a
        if arr.shape not in ((n,), (n, 1)) or arr.dtype.kind not in "iu":
            raise ValueError(
                f"actions must be an int array of shape ({n},) with levels in [0, {self.n_levels - 1}], got "
                f"shape {arr.shape} dtype {arr.dtype}"
            )
        k = arr.reshape(n)
        out = (k < 0) | (k >= self.n_levels)
        if _any(out):
            bad = int(np.flatnonzero(out)[0])
            raise ValueError(
                f"action {int(k[bad])} of sub-env {bad} is out of range: valid levels are 0 .. "
                f"{self.n_levels - 1}"
            )
        np.divide(k, self.n_levels - 1, out=a)
        return a

    # ------------------------------------------------------------------------------------------- gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-env; ``options`` (start, side, quantity or quantity_adv) pin the first episodes."""
        super().reset(seed=seed)
        pinned = self._options(options)
        n = self.num_envs
        self._reset_envs(slice(None), *self._draw(n, pinned))
        self._started = True
        zeros = np.zeros(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            obs = self._observe()
        return obs, self._infos(zeros, zeros.copy(), zeros.copy(), np.zeros(n, dtype=bool))

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every sub-env with its action; finished sub-envs are reset in the same call (SAME_STEP)."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        frac = self._parse_actions(actions)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._step(frac)

    def _step(
        self, frac: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        # The hot path: the single env's step for all sub-envs with whole-array operations, in its order of
        # floating-point operations (so the same floats). A sub-env without a fill computes its impact and
        # costs on q = 0, which adds exactly 0 to every accumulator; only the reported price needs the mask.
        fs, ix = self._F, self._I
        t = ix[_T]
        s = ix[_SIDE]
        ql = ix[_QLOTS]
        rem = ix[_REM]
        j = t + 1
        o, c, vol, vol_safe, rate, rate_in, isig = self._mkt.take(j, axis=1)
        last = ix[_K] == self.horizon - 1
        min_lots = self._min_lots

        # Child order in lots: the tolerance absorbs the float32 action's rounding (see the single env).
        remf = rem.astype(np.float64)
        want = frac * remf
        want += 1e-7 * remf
        want += 1e-9
        lots = np.floor(want).astype(np.int64)
        left = rem - lots
        lots = np.where(left < min_lots, rem, lots)  # never leave a sliver that could not be sent
        if self._cap is not None:
            cap = self._cap * vol
            cap /= self._lot
            cap += 1e-9
            capped = np.minimum(lots, np.floor(cap).astype(np.int64))
            sliver = (capped < lots) & (rem - capped < min_lots)
            capped = np.where(sliver, rem - min_lots, capped)
        else:
            capped = lots
        capped = np.where(capped < min_lots, 0, capped)
        forced_lots = np.where(last, rem - capped, 0)
        capped = np.where(last, rem, capped)

        # Funding settled at bar j's open is paid by the position executed so far (0 where none or no rate).
        held = s * (ql - rem) * self._lot
        pay = held * o
        pay *= rate
        fs[_FUND] += pay
        q = capped * self._lot
        filled = capped > 0
        if self._dry_bars and _any(filled & (vol <= 0.0)):
            impact = self._dry_impact(q, vol, isig, filled, j, t)
        else:
            impact = q / vol_safe
            np.sqrt(impact, out=impact)
            impact *= isig
        ref = s * fs[_DISP]
        ref += 1.0
        ref *= o
        buy = s > 0
        price = ref * np.where(buy, self._up + impact, self._dn - impact)
        notional = q * price
        f = notional * self._taker
        fs[_CASH] += notional
        fs[_FEES] += f
        sq = s * q
        fs[_TIMING] += sq * (o - fs[_P0])
        spread = q * ref
        spread *= self._hs
        fs[_SPREAD] += spread
        fs[_IMPACT] += sq * (price - o) - spread
        ix[_NFILLS] += filled
        rem -= capped
        fs[_FORCED] = forced_lots * self._lot
        disp = fs[_DISP]
        disp += impact
        disp *= self._rho
        if self._has_rate_in:  # settlements later inside a long bar: the position after the fill
            pay = s * (ql - rem) * self._lot
            pay *= o
            pay *= rate_in
            fs[_FUND] += pay

        ix[_K] += 1
        t += 1
        remq = rem * self._lot
        p0 = fs[_P0]
        qq = ql * self._lot
        mtm = qq - remq
        mtm *= p0
        np.subtract(fs[_CASH], mtm, out=mtm)
        mtm *= s
        mtm += fs[_FEES]
        mtm += s * remq * (c - p0)
        reward = mtm - fs[_MTM]
        np.negative(reward, out=reward)
        reward /= fs[_NOTIONAL]
        reward *= 1e4
        fs[_MTM] = mtm
        terminated = rem == 0
        price = np.where(filled, price, 0.0)  # the single env reports 0 when nothing filled
        if not _any(terminated):
            return (
                self._observe(),
                reward,
                terminated,
                np.zeros(self.num_envs, dtype=bool),
                self._infos(q, price, f, last),
            )
        return self._autoreset(terminated, reward, q, price, f, last)

    def _dry_impact(
        self,
        q: np.ndarray,
        vol: np.ndarray,
        isig: np.ndarray,
        filled: np.ndarray,
        j: np.ndarray,
        t: np.ndarray,
    ) -> np.ndarray:
        """Impact where some fill meets a bar without volume (a forced order, or no participation cap): the
        single env's stand-in liquidity, the intraday profile's expectation, else the mean bar volume."""
        P = self.bars_per_day
        liq = vol.copy()
        dry = np.flatnonzero(filled & (vol <= 0.0))
        jd = j[dry]
        alt = np.where(jd >= P, self._prof[np.maximum(jd - P, 0)], 0.0)
        alt = np.where(alt > 0, alt, self._adv[t[dry]] / P)
        liq[dry] = alt
        ok = liq > 0.0
        impact = q / np.where(ok, liq, 1.0)
        np.sqrt(impact, out=impact)
        impact *= isig
        impact[~ok] = math.inf  # envs.contract.sqrt_impact: no liquidity at all
        impact[~filled] = 0.0
        return impact

    def _autoreset(
        self,
        done: np.ndarray,
        reward: np.ndarray,
        q: np.ndarray,
        price: np.ndarray,
        f: np.ndarray,
        last: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """SAME_STEP autoreset: report the finished episodes in final_obs / final_info, then restart them."""
        idx = np.flatnonzero(done)
        final_obs_rows = self._observe(idx)
        final = self._infos(q, price, f, last)
        final_info: dict[str, Any] = {}
        for key in INFO_KEYS:
            v = final[key]
            final_info[key] = np.where(done, v, np.zeros((), dtype=v.dtype))
            final_info["_" + key] = done
        final_info["execution"] = self._summary(idx, done)
        final_info["_execution"] = done
        final_obs = np.full(self.num_envs, None, dtype=object)
        for r, i in enumerate(idx):
            final_obs[i] = final_obs_rows[r]

        self._reset_envs(idx, *self._draw(idx.size))
        infos = self._infos(
            np.where(done, 0.0, q), np.where(done, 0.0, price), np.where(done, 0.0, f), last & ~done
        )
        infos["final_obs"] = final_obs
        infos["_final_obs"] = done
        infos["final_info"] = final_info
        infos["_final_info"] = done
        return self._observe(), reward, done, np.zeros(self.num_envs, dtype=bool), infos

    def _summary(self, idx: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """The single env's ``info["execution"]`` of the finished sub-envs ``idx``, as arrays over all
        sub-envs (0 elsewhere), with ``_key`` masks."""
        fs, ix = self._F[:, idx], self._I[:, idx]
        Q = ix[_QLOTS] * self._lot
        p0 = fs[_P0]
        scale = 1e4 / fs[_NOTIONAL]
        s = ix[_SIDE]
        cash, fees, funding = fs[_CASH], fs[_FEES], fs[_FUND]
        shortfall = s * (cash - Q * p0) + fees
        vals = {
            "shortfall_bps": shortfall * scale,
            "shortfall_quote": shortfall,
            "timing_bps": fs[_TIMING] * scale,
            "spread_bps": fs[_SPREAD] * scale,
            "impact_bps": fs[_IMPACT] * scale,
            "fees_bps": fees * scale,
            "funding_bps": funding * scale,
            "funding_quote": funding,
            "avg_price": cash / Q,
            "arrival_price": p0,
            "quantity": Q,
            "side": s,
            "n_fills": ix[_NFILLS],
            "forced_qty": fs[_FORCED],
            "steps": ix[_K],
            "start_bar": ix[_T0],
        }
        out: dict[str, np.ndarray] = {}
        for key in SUMMARY_KEYS:
            v = vals[key]
            full = np.zeros(self.num_envs, dtype=v.dtype)
            full[idx] = v
            out[key] = full
            out["_" + key] = mask
        return out

    def _observe(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Observations of all sub-envs (or of ``idx``) from the current state; a fresh float32 array."""
        ix = self._I if idx is None else self._I[:, idx]
        p0 = self._F[_P0] if idx is None else self._F[_P0, idx]
        t, k, s = ix[_T], ix[_K], ix[_SIDE]
        T = self.horizon
        o = self._static.take(t, axis=0)
        o[:, 0] = ix[_REM] / ix[_QLOTS]
        o[:, 1] = (T - k) / T
        o[:, 2] = s
        live = k < T
        # Terminal rows (k = T, only in final_obs) read column 0 here and are overwritten below.
        o[:, 3] = self._vshare[t, np.where(live, T - k - 1, 0)]
        am = self._c[t] / p0
        np.log(am, out=am)
        am *= s
        am /= self._sigma[t]
        o[:, 6] = am
        o[:, 13:] *= s[:, None]
        if not live.all():  # terminal observation: nothing left to schedule; time of day of bar t itself
            end = np.flatnonzero(~live)
            te = t[end]
            o[end, 3] = 0.0
            o[end, 4] = 0.0
            o[end, 11] = self.proto._tod_sin[te]
            o[end, 12] = self.proto._tod_cos[te]
        np.clip(o, self._obs_low, self._obs_high, out=o)
        return o.astype(np.float32)

    def _infos(self, q: np.ndarray, price: np.ndarray, f: np.ndarray, forced: np.ndarray) -> dict[str, Any]:
        fs, ix = self._F, self._I
        lot = self._lot
        quantity = ix[_QLOTS] * lot
        remaining = ix[_REM] * lot
        shortfall = fs[_MTM] / fs[_NOTIONAL]
        shortfall *= 1e4
        vals = {
            "bar_index": ix[_T].copy(),
            "step": ix[_K].copy(),
            "side": ix[_SIDE].copy(),
            "quantity": quantity,
            "remaining": remaining,
            "executed": quantity - remaining,
            "fill_qty": q,
            "fill_price": price,
            "fee": f,
            "forced": forced,
            "forced_qty": fs[_FORCED].copy(),
            "arrival_price": fs[_P0].copy(),
            "shortfall_bps": shortfall,
            "fees_paid": fs[_FEES].copy(),
            "funding_paid": fs[_FUND].copy(),
        }
        infos: dict[str, Any] = {}
        mask = self._all_true
        for key in INFO_KEYS:
            infos[key] = vals[key]
            infos["_" + key] = mask
        return infos

    def render(self) -> None:
        """No rendering (as the single env)."""
        return None

    def __repr__(self) -> str:
        return (
            f"CryptoFuturesExecutionVecEnv(num_envs={self.num_envs}, {self.market.symbol!r}, "
            f"{self.n_bars} bars, horizon_bars={self.horizon})"
        )
