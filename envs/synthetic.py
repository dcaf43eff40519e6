"""Synthetic perpetual-futures markets: seeded, vectorized numpy generators with known parameters.

Kinds (:data:`SYNTHETIC_KINDS`), each with a frozen parameter dataclass:

========= ==================== ===========================================================================
kind      params               model of the log return ``r_t = log(close_t / close_{t-1})``
========= ==================== ===========================================================================
gbm       :class:`GBMParams`     Brownian motion with drift: ``r_t ~ N(drift dt, vol^2 dt)``
jump      :class:`JumpParams`    Merton jump diffusion: GBM plus Poisson(``jump_intensity dt``) jumps of
                                 size ``N(jump_mean, jump_std^2)`` (price spikes)
garch     :class:`GarchParams`   GARCH(1,1) with standardized Student-t shocks (volatility clusters)
regime    :class:`RegimeParams`  Markov chain over regimes (calm / volatile), each with its own drift and vol
planted   :class:`PlantedParams` AR(1) returns ``r_t - c = phi (r_{t-1} - c) + e_t``: the optimal policy is
                                 known, see :func:`planted_oracle_positions`
========= ==================== ===========================================================================

Conventions shared by all kinds: ``dt = bar_seconds / (365 * 86400)`` (crypto trades every day); ``drift`` is
the annualized expected **log** return (``E[log(S_T / S_0)] = drift * T``) and ``vol`` the annualized standard
deviation of log returns. Bars are contiguous (``open_t = close_{t-1}``). Intrabar high/low are exact samples
of the maximum/minimum of a Brownian bridge between open and close with the bar's diffusion variance (a jump,
if any, at a uniform time inside the bar), so ``low <= open, close <= high`` always and ranges scale like real
ones. Volume is lognormal with persistent (AR(1)) log level and rises with ``|return|``
(:class:`VolumeParams`). Funding is a mean-reverting series on the settlement grid (every 8 h at 00/08/16 UTC)
with occasional shocks and an optional slow level (:class:`FundingParams`), by default calibrated on the real
BTCUSDT 2019-2025 history with :func:`calibrate_funding`.

Randomness: ``np.random.SeedSequence(seed)`` is split into independent streams for prices, volume and funding,
each a ``np.random.default_rng``: same seed -> identical market; changing funding parameters leaves prices as
they were.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from envs.market import MarketData, align_funding, load_funding_history
from envs.spec import parse_value, split_top_level

__all__ = [
    "SYNTHETIC_KINDS",
    "FundingParams",
    "GBMParams",
    "GarchParams",
    "JumpParams",
    "PlantedParams",
    "RegimeParams",
    "Simulation",
    "VolumeParams",
    "calibrate_funding",
    "default_funding_params",
    "make_market",
    "market_from_spec",
    "parse_synthetic_spec",
    "planted_oracle_positions",
    "simulate",
    "simulate_funding",
]

SYNTHETIC_KINDS = ("gbm", "jump", "garch", "regime", "planted")
_YEAR_SECONDS = 365 * 86400
_NS = 10**9


# ------------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class GBMParams:
    """Geometric Brownian motion.

    Attributes:
        drift: annualized expected log return.
        vol: annualized volatility of log returns.
    """

    drift: float = 0.0
    vol: float = 0.6

    def __post_init__(self) -> None:
        _check(self.vol > 0, f"vol must be > 0, got {self.vol}")


@dataclass(frozen=True)
class JumpParams:
    """Merton (1976) jump diffusion: diffusion plus compound-Poisson log-normal jumps.

    Attributes:
        drift: annualized expected log return, jumps included (the diffusion's drift is lowered by
            ``jump_intensity * jump_mean`` so the total is ``drift``).
        vol: annualized volatility of the diffusion part.
        jump_intensity: expected jumps per year.
        jump_mean: mean log jump size (negative: crashes outnumber squeezes).
        jump_std: standard deviation of the log jump size.

    References:
        Merton, R. C. (1976). Option pricing when underlying stock returns are discontinuous. J. Financial
        Economics.
    """

    drift: float = 0.0
    vol: float = 0.5
    jump_intensity: float = 25.0
    jump_mean: float = -0.01
    jump_std: float = 0.05

    def __post_init__(self) -> None:
        _check(self.vol > 0, f"vol must be > 0, got {self.vol}")
        _check(self.jump_intensity >= 0, f"jump_intensity must be >= 0, got {self.jump_intensity}")
        _check(self.jump_std >= 0, f"jump_std must be >= 0, got {self.jump_std}")


@dataclass(frozen=True)
class GarchParams:
    """GARCH(1,1) returns with standardized Student-t shocks.

    ``r_t = c + e_t``, ``e_t = sqrt(h_t) z_t``, ``h_t = omega + alpha e_{t-1}^2 + beta h_{t-1}``, ``z_t``
    Student-t with ``df`` degrees of freedom scaled to unit variance; ``omega = vol^2 dt (1 - alpha - beta)``
    so the long-run volatility is ``vol``. Persistence is ``alpha + beta`` (< 1).

    Attributes:
        drift: annualized expected log return.
        vol: annualized long-run volatility.
        alpha: reaction to the last squared shock.
        beta: weight of the last variance.
        df: Student-t degrees of freedom (> 2; smaller = fatter tails).

    References:
        Bollerslev, T. (1986). Generalized autoregressive conditional heteroskedasticity. J. Econometrics.
        Bollerslev, T. (1987). A conditionally heteroskedastic time series model for speculative prices and
        rates of return. Review of Economics and Statistics (the Student-t variant).
    """

    drift: float = 0.0
    vol: float = 0.6
    alpha: float = 0.08
    beta: float = 0.9
    df: float = 5.0

    def __post_init__(self) -> None:
        _check(self.vol > 0, f"vol must be > 0, got {self.vol}")
        _check(
            self.alpha >= 0 and self.beta >= 0, f"alpha and beta must be >= 0, got {self.alpha}, {self.beta}"
        )
        _check(
            self.alpha + self.beta < 1, f"alpha + beta must be < 1 (stationary), got {self.alpha + self.beta}"
        )
        _check(self.df > 2, f"df must be > 2 (finite variance), got {self.df}")


@dataclass(frozen=True)
class RegimeParams:
    """Regime-switching market: a Markov chain over regimes, each a GBM with its own drift and vol.

    A regime lasts a geometric number of bars with mean ``mean_durations_hours[k]``; when it ends the chain
    moves to one of the other regimes uniformly at random (with two regimes: it alternates).

    Attributes:
        drifts: annualized expected log return per regime.
        vols: annualized volatility per regime.
        mean_durations_hours: mean time spent in each regime per visit.
        names: regime labels, informational.

    References:
        Hamilton, J. D. (1989). A new approach to the economic analysis of nonstationary time series and the
        business cycle. Econometrica.
    """

    drifts: tuple[float, ...] = (0.3, -0.6)
    vols: tuple[float, ...] = (0.4, 1.2)
    mean_durations_hours: tuple[float, ...] = (24 * 20, 24 * 4)
    names: tuple[str, ...] = ("calm", "volatile")

    def __post_init__(self) -> None:
        k = len(self.vols)
        _check(k >= 2, "need at least 2 regimes")
        _check(
            len(self.drifts) == k and len(self.mean_durations_hours) == k and len(self.names) == k,
            f"drifts, vols, mean_durations_hours and names must all have {k} entries",
        )
        _check(all(v > 0 for v in self.vols), f"vols must be > 0, got {self.vols}")
        _check(all(d > 0 for d in self.mean_durations_hours), "mean_durations_hours must be > 0")


@dataclass(frozen=True)
class PlantedParams:
    """AR(1) log returns: a planted, exploitable signal whose optimal policy is known.

    ``r_t - c = phi (r_{t-1} - c) + e_t`` with ``c = drift dt`` and ``e_t ~ N(0, vol^2 dt (1 - phi^2))`` so
    the returns' unconditional volatility is ``vol``. The best prediction of the next return from data up to
    bar t is
    ``c + phi (r_t - c)``; see :func:`planted_oracle_positions`.

    Attributes:
        phi: lag-1 autocorrelation of bar returns (|phi| < 1); 0.1 gives a small but learnable edge.
        drift: annualized expected log return.
        vol: annualized volatility.
    """

    phi: float = 0.1
    drift: float = 0.0
    vol: float = 0.6

    def __post_init__(self) -> None:
        _check(-1 < self.phi < 1, f"phi must be in (-1, 1), got {self.phi}")
        _check(self.vol > 0, f"vol must be > 0, got {self.vol}")


@dataclass(frozen=True)
class VolumeParams:
    """Traded volume per bar: ``log V_t = log(base * bar_hours) + x_t + beta (|z_t| - E|z|) - var/2``.

    ``x_t`` is AR(1) with coefficient ``phi`` and stationary std ``sigma``; ``z_t`` is the bar's standardized
    return, so volume rises with the size of the move (the volume-volatility relation).

    Attributes:
        base: mean volume per hour in base units (BTC; Binance BTCUSDT trades about 5-10k BTC per hour) at
            the starting price ``s0``; each bar's volume is scaled by ``s0 / close`` so that the traded
            notional, not the number of coins, is stationary.
        sigma: stationary std of the persistent part of log volume.
        phi: per-bar persistence of log volume.
        beta: elasticity of log volume to ``|z_t|``.
    """

    base: float = 5000.0
    sigma: float = 0.4
    phi: float = 0.8
    beta: float = 0.4

    def __post_init__(self) -> None:
        _check(self.base > 0 and self.sigma >= 0 and -1 < self.phi < 1, f"invalid VolumeParams {self}")


@dataclass(frozen=True)
class FundingParams:
    """Funding settlements: mean-reverting with shocks and an optional slow level, clipped at ``cap``.

    ``f_k = clip(mean + L_k + y_k, -cap, cap)`` per settlement ``k`` where

    * ``L_k = level_phi L_{k-1} + N(0, .)`` is a slow level carrying ``level_share`` of the variance (funding
      regimes: weeks of high funding in a bull market);
    * ``y_k = phi_fast y_{k-1} + u_k`` is the fast part; ``u_k`` is normal, but with probability
      ``shock_prob`` its std is ``shock_ratio`` times larger (a shock);
    * ``phi_fast`` is chosen so that the series' lag-1 autocorrelation is ``phi``.

    Attributes:
        mean: long-run mean rate per settlement (fraction; 0.0001 = 0.01%).
        std: stationary standard deviation of the rate.
        phi: lag-1 autocorrelation between consecutive settlements.
        shock_prob: probability that a settlement's innovation is a shock.
        shock_ratio: std of a shock innovation / std of a normal one (>= 1).
        level_share: fraction of the variance in the slow level (0 = plain AR(1)).
        level_phi: per-settlement autocorrelation of the slow level.
        interval_hours: hours between settlements (settlements on multiples of it since 00:00 UTC).
        cap: absolute cap on the rate (Binance capped BTCUSDT at 0.3% per 8 h in 2020); None for no cap.
    """

    mean: float = 0.0001
    std: float = 0.0002
    phi: float = 0.8
    shock_prob: float = 0.05
    shock_ratio: float = 5.0
    level_share: float = 0.0
    level_phi: float = 0.99
    interval_hours: float = 8.0
    cap: float | None = 0.003

    def __post_init__(self) -> None:
        _check(self.std >= 0, f"std must be >= 0, got {self.std}")
        _check(-1 < self.phi < 1, f"phi must be in (-1, 1), got {self.phi}")
        _check(0 <= self.shock_prob <= 1, f"shock_prob must be in [0, 1], got {self.shock_prob}")
        _check(self.shock_ratio >= 1, f"shock_ratio must be >= 1, got {self.shock_ratio}")
        _check(0 <= self.level_share < 1, f"level_share must be in [0, 1), got {self.level_share}")
        _check(-1 < self.level_phi < 1, f"level_phi must be in (-1, 1), got {self.level_phi}")
        _check(self.interval_hours > 0, f"interval_hours must be > 0, got {self.interval_hours}")
        _check(self.cap is None or self.cap > 0, f"cap must be > 0 or None, got {self.cap}")
        pf = self.phi_fast
        _check(
            -1 < pf < 1,
            f"phi={self.phi} cannot be reached with level_share={self.level_share}, "
            f"level_phi={self.level_phi} "
            f"(the fast part would need phi_fast={pf:.3f}); lower level_share",
        )

    @property
    def phi_fast(self) -> float:
        """Autocorrelation of the fast part, so that the whole series has lag-1 autocorrelation ``phi``."""
        w = self.level_share
        return (self.phi - w * self.level_phi) / (1 - w)

    def acf(self, lags: np.ndarray) -> np.ndarray:
        """Autocorrelation of the (uncapped) model at the given lags."""
        w = self.level_share
        lags = np.asarray(lags)
        return (
            w * self.level_phi**lags
            + (1 - w) * np.sign(self.phi_fast) ** lags * np.abs(self.phi_fast) ** lags
        )


_MODEL_PARAMS: dict[str, type] = {
    "gbm": GBMParams,
    "jump": JumpParams,
    "garch": GarchParams,
    "regime": RegimeParams,
    "planted": PlantedParams,
}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# ------------------------------------------------------------------------------------------------- numerics
def linear_recursion(a: np.ndarray | float, b: np.ndarray, x0: float = 0.0) -> np.ndarray:
    """Solve ``x_t = a_t x_{t-1} + b_t`` (``x_{-1} = x0``) for all t, vectorized.

    An inclusive prefix scan (Hillis-Steele) over the affine maps ``x -> a_t x + b_t``: log2(n) numpy passes
    instead of a Python loop over n bars. Used for AR(1) returns, GARCH variances and log volume.
    """
    b = np.array(b, dtype=np.float64)
    a = np.broadcast_to(np.asarray(a, dtype=np.float64), b.shape).copy()
    n = len(b)
    shift = 1
    while shift < n:
        # Composition (a2, b2) after (a1, b1) = (a2 a1, a2 b1 + b2); right-hand sides read the old arrays.
        b[shift:] = a[shift:] * b[:-shift] + b[shift:]
        a[shift:] = a[shift:] * a[:-shift]
        shift *= 2
    return a * x0 + b


def _bridge_extremes(
    rng: np.random.Generator, end: np.ndarray, var: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact samples of the max and min of a Brownian bridge from 0 to ``end`` with total variance ``var``.

    P(max > m) = exp(-2 m (m - end) / var) for m >= max(0, end), inverted: m = (end + sqrt(end^2 - 2 var log
    U)) / 2.
    """
    u1 = rng.random(len(end))
    u2 = rng.random(len(end))
    # 1 - U lies in (0, 1], so the log is finite.
    hi = 0.5 * (end + np.sqrt(end * end - 2.0 * var * np.log1p(-u1)))
    lo = 0.5 * (end - np.sqrt(end * end - 2.0 * var * np.log1p(-u2)))
    return hi, lo


def _bars_from_log_returns(
    rng: np.random.Generator, s0: float, r: np.ndarray, var: np.ndarray, jump: np.ndarray | None
) -> dict[str, np.ndarray]:
    """OHLC from per-bar log returns ``r`` (``jump`` of it a jump) and intrabar diffusion variance ``var``.

    The diffusion path is a bridge from the open to ``close - jump``; it is split at a uniform time ``u``
    where the jump (if any) happens. Each piece's extremes are exact bridge samples given the split point.
    """
    n = len(r)
    logc = math.log(s0) + np.cumsum(r)
    logo = np.empty(n)
    logo[0] = math.log(s0)
    logo[1:] = logc[:-1]
    j = np.zeros(n) if jump is None else jump
    c = r - j  # the continuous part
    u = rng.random(n)
    mid = u * c + np.sqrt(u * (1 - u) * var) * rng.standard_normal(n)  # bridge value at time u
    hi1, lo1 = _bridge_extremes(rng, mid, u * var)
    hi2, lo2 = _bridge_extremes(rng, c - mid, (1 - u) * var)
    hi = np.maximum(hi1, mid + j + hi2)
    lo = np.minimum(lo1, mid + j + lo2)
    return {
        "open": np.exp(logo),
        "close": np.exp(logc),
        # max/min against open and close guard the last ulp of exp() rounding.
        "high": np.maximum(np.exp(logo + hi), np.maximum(np.exp(logo), np.exp(logc))),
        "low": np.minimum(np.exp(logo + lo), np.minimum(np.exp(logo), np.exp(logc))),
    }


def _volume(rng: np.random.Generator, z: np.ndarray, p: VolumeParams, bar_seconds: int) -> np.ndarray:
    n = len(z)
    innov = rng.standard_normal(n) * p.sigma * math.sqrt(1 - p.phi**2)
    x = linear_recursion(p.phi, innov, rng.standard_normal() * p.sigma)
    absz = np.abs(z) - math.sqrt(2 / math.pi)  # centre |z| (E|N(0,1)| = sqrt(2/pi))
    # Subtract half the variance so the mean volume is about `base` per hour.
    logv = (
        math.log(p.base * bar_seconds / 3600)
        + x
        + p.beta * absz
        - 0.5 * (p.sigma**2 + p.beta**2 * (1 - 2 / math.pi))
    )
    return np.exp(logv)


# ------------------------------------------------------------------------------------------------- funding
def simulate_funding(params: FundingParams, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` consecutive settlements of the funding model (stationary from the first)."""
    p = params
    w = p.level_share
    var_total = p.std**2
    # Slow level.
    if w > 0:
        sl = math.sqrt(w * var_total)
        level = linear_recursion(
            p.level_phi,
            rng.standard_normal(n) * sl * math.sqrt(1 - p.level_phi**2),
            rng.standard_normal() * sl,
        )
    else:
        level = np.zeros(n)
        rng.standard_normal(n + 1)  # keep the stream aligned whatever level_share is
    # Fast part: innovations with a shock mixture, scaled so Var(fast) = (1 - w) std^2.
    pf = p.phi_fast
    mix = 1 - p.shock_prob + p.shock_prob * p.shock_ratio**2
    s_innov = math.sqrt((1 - w) * var_total * (1 - pf**2) / mix)
    shock = rng.random(n) < p.shock_prob
    innov = rng.standard_normal(n) * s_innov * np.where(shock, p.shock_ratio, 1.0)
    fast = linear_recursion(pf, innov, rng.standard_normal() * math.sqrt((1 - w) * var_total))
    f = p.mean + level + fast
    if p.cap is not None:
        f = np.clip(f, -p.cap, p.cap)
    return f


def _acf(x: np.ndarray, max_lag: int) -> np.ndarray:
    y = x - x.mean()
    n = len(y)
    m = 1 << int(math.ceil(math.log2(2 * n)))
    spec = np.fft.rfft(y, m)
    ac = np.fft.irfft(spec * np.conj(spec), m)[: max_lag + 1]
    return ac[1:] / ac[0]


def _shock_mixture(u: np.ndarray, iters: int = 200) -> tuple[float, float]:
    """EM fit of a zero-mean two-scale normal mixture: (probability of the wide part, ratio of the stds)."""
    u = u[np.isfinite(u)]
    u2 = u * u
    s1 = max(float(np.median(np.abs(u))) * 1.4826, 1e-12)
    s2 = max(float(np.sqrt(u2.mean())) * 2, s1 * 2)
    p = 0.05
    for _ in range(iters):
        l1 = (1 - p) / s1 * np.exp(-0.5 * u2 / s1**2)
        l2 = p / s2 * np.exp(-0.5 * u2 / s2**2)
        resp = l2 / np.maximum(l1 + l2, 1e-300)
        p_new = float(resp.mean())
        if p_new <= 1e-6 or p_new >= 1 - 1e-6:
            return 0.0, 1.0
        s1 = math.sqrt(max(float(((1 - resp) * u2).sum() / (1 - resp).sum()), 1e-300))
        s2 = math.sqrt(max(float((resp * u2).sum() / resp.sum()), 1e-300))
        if abs(p_new - p) < 1e-9:
            p = p_new
            break
        p = p_new
    if s2 < s1:  # label switch: keep "shock" = the wide component
        s1, s2, p = s2, s1, 1 - p
    return p, s2 / s1


def _residual_shocks(x: np.ndarray, phi: float) -> tuple[float, float]:
    """Shock share and std ratio of the one-step residuals ``(f_k - mean) - phi (f_{k-1} - mean)``."""
    y = x - x.mean()
    return _shock_mixture(y[1:] - phi * y[:-1])


def calibrate_funding(
    series: pd.Series | np.ndarray,
    *,
    interval_hours: float | None = None,
    long_memory: bool = True,
    max_lag: int = 90,
) -> FundingParams:
    """Fit :class:`FundingParams` to observed settlements (oldest first).

    * ``mean``, ``std``, ``phi`` (lag-1 autocorrelation): sample moments, reproduced exactly by the model
      (up to the cap);
    * ``level_share``, ``level_phi`` (only with ``long_memory``): least-squares fit of the model's
      autocorrelation to the sample's over lags 1..``max_lag`` with lag 1 held at ``phi`` (real funding stays
      high or low for weeks; a plain AR(1) with phi = 0.79 forgets within days);
    * ``shock_prob``, ``shock_ratio``: EM fit of a two-scale normal mixture to the one-step residuals
      ``(f_k - mean) - phi (f_{k-1} - mean)``: the share of "shock" settlements and how much wider they are.
      With
      ``long_memory`` the slow level blurs those residuals, so ``shock_prob`` is then set by simulation
      (common random numbers, a few fixed-point steps) such that the model's residuals show the observed shock
      share.
    * ``cap``: the largest ``|rate|`` observed; ``interval_hours``: from the index spacing unless given.

    Limits: Binance's formula pins the rate at exactly 0.01% whenever the premium is small (42% of the
    2019-2025 settlements); the model has no such point mass, so its residuals' tails are lighter than the
    real ones when ``long_memory`` is on (the shock *share* is matched, not the shock/normal width ratio).
    """
    if isinstance(series, pd.Series):
        if interval_hours is None and isinstance(series.index, pd.DatetimeIndex) and len(series) > 1:
            d = np.diff(series.index.as_unit("ns").asi8)
            vals, counts = np.unique(d, return_counts=True)
            interval_hours = float(vals[np.argmax(counts)]) / 3600 / _NS
        x = series.to_numpy(dtype=np.float64)
    else:
        x = np.asarray(series, dtype=np.float64)
    if len(x) < 30 or not np.all(np.isfinite(x)):
        raise ValueError(f"calibrate_funding needs at least 30 finite settlements, got {len(x)}")
    mean = float(x.mean())
    std = float(x.std())
    max_lag = max(2, min(max_lag, len(x) // 4))
    acf = _acf(x, max_lag)
    phi = float(np.clip(acf[0], -0.98, 0.98))
    lags = np.arange(1, max_lag + 1)
    level_share, level_phi = 0.0, 0.99
    if long_memory:
        best = float(np.sum((np.sign(phi) ** lags * abs(phi) ** lags - acf) ** 2))
        for lp in 1 - np.geomspace(5e-4, 0.2, 60):
            for w in np.linspace(0.02, 0.9, 45):
                pf = (phi - w * lp) / (1 - w)
                if not -0.98 < pf < 0.98:
                    continue
                err = float(
                    np.sum((w * lp**lags + (1 - w) * np.sign(pf) ** lags * abs(pf) ** lags - acf) ** 2)
                )
                if err < best:
                    best, level_share, level_phi = err, float(w), float(lp)
    shock_prob, shock_ratio = _residual_shocks(x, phi)
    cap = float(np.abs(x).max()) if np.abs(x).max() > 0 else None
    params = FundingParams(
        mean=mean,
        std=std,
        phi=phi,
        shock_prob=shock_prob,
        shock_ratio=max(shock_ratio, 1.0),
        level_share=level_share,
        level_phi=level_phi,
        interval_hours=interval_hours if interval_hours is not None else 8.0,
        cap=cap,
    )
    if level_share > 0 and 0 < shock_prob < 1:
        target = shock_prob
        for _ in range(8):
            # The same random numbers every step, so the map from shock_prob to the simulated share is smooth.
            sim = simulate_funding(replace(params, cap=None), 20_000, np.random.default_rng(20_250_101))
            got, _ = _residual_shocks(sim, phi)
            new = float(np.clip(params.shock_prob + (target - got), 1e-3, 0.99))
            if abs(new - params.shock_prob) < 1e-4:
                break
            params = replace(params, shock_prob=new)
    return params


@functools.lru_cache(maxsize=1)
def default_funding_params() -> FundingParams:
    """:func:`calibrate_funding` on the real BTCUSDT funding history 2019-2025
    (:func:`envs.market.load_funding_history`), computed once per process."""
    return calibrate_funding(load_funding_history())


# ------------------------------------------------------------------------------------------------- simulation
@dataclass(frozen=True, eq=False)
class Simulation:
    """A synthetic market with what generated it.

    Attributes:
        market: the bars.
        kind: generator name.
        params: the model's parameter dataclass.
        funding: funding parameters (None when funding is off).
        volume: volume parameters.
        seed: the seed.
        log_returns: ``log(close_t / close_{t-1})`` per bar (``close_{-1}`` = the start price).
        latent: hidden state by name: ``"variance"`` (per-bar diffusion variance, all kinds), ``"jumps"``
        (jump
            count, jump), ``"jump_size"`` (jump), ``"regime"`` (regime), ``"expected_return"`` (planted: the
            best prediction of ``log_returns[t]`` made at bar ``t-1``), ``"funding_settlements"`` (the
            simulated rates).
    """

    market: MarketData
    kind: str
    params: Any
    funding: FundingParams | None
    volume: VolumeParams
    seed: int
    log_returns: np.ndarray
    latent: dict[str, np.ndarray] = field(default_factory=dict)

    def oracle_positions(self, **kwargs: Any) -> np.ndarray:
        """:func:`planted_oracle_positions` with this simulation's parameters (planted kind only)."""
        if self.kind != "planted":
            raise ValueError(f"only the 'planted' market has a known optimal policy, not {self.kind!r}")
        return planted_oracle_positions(self.market, self.params, funding=self.funding, **kwargs)


def _split_kwargs(kind: str, kwargs: dict[str, Any]) -> tuple[dict, dict, dict]:
    model_keys = {f.name for f in fields(_MODEL_PARAMS[kind])}
    funding_keys = {f.name for f in fields(FundingParams)}
    volume_keys = {f.name for f in fields(VolumeParams)}
    model, fund, vol = {}, {}, {}
    for k, v in kwargs.items():
        if k in model_keys:
            model[k] = v
        elif k.startswith("funding_") and k[8:] in funding_keys:
            fund[k[8:]] = v
        elif k.startswith("volume_") and k[7:] in volume_keys:
            vol[k[7:]] = v
        else:
            valid = (
                sorted(model_keys)
                + sorted(f"funding_{f}" for f in funding_keys)
                + sorted(f"volume_{f}" for f in volume_keys)
            )
            raise ValueError(
                f"unknown parameter {k!r} for synthetic kind {kind!r}; valid: n_bars, seed, bar_seconds, "
                "start, s0, "
                f"symbol, funding, {', '.join(valid)}"
            )
    return model, fund, vol


def simulate(
    kind: str,
    *,
    n_bars: int,
    seed: int,
    bar_seconds: int = 3600,
    start: str | pd.Timestamp = "2021-01-01",
    s0: float = 30_000.0,
    model: Any = None,
    funding: FundingParams | str | None = None,
    volume: VolumeParams | None = None,
    symbol: str = "SYNTH-PERP",
    **params: Any,
) -> Simulation:
    """Generate a synthetic market and keep its parameters and hidden state; see :func:`make_market`."""
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; valid: {', '.join(SYNTHETIC_KINDS)}")
    if not isinstance(n_bars, (int, np.integer)) or n_bars < 2:
        raise ValueError(f"n_bars must be an int >= 2, got {n_bars!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not isinstance(bar_seconds, (int, np.integer)) or bar_seconds <= 0:
        raise ValueError(f"bar_seconds must be a positive int, got {bar_seconds!r}")
    if not s0 > 0:
        raise ValueError(f"s0 (start price) must be > 0, got {s0}")
    model_kw, fund_kw, vol_kw = _split_kwargs(kind, params)
    cls = _MODEL_PARAMS[kind]
    if model is None:
        model = cls(**model_kw)
    elif not isinstance(model, cls):
        raise ValueError(f"model for kind {kind!r} must be a {cls.__name__}, got {type(model).__name__}")
    elif model_kw:
        model = replace(model, **model_kw)
    if isinstance(funding, str):
        if funding.lower() in ("off", "none", "zero"):
            if fund_kw:
                raise ValueError(f"funding='off' cannot take funding_* parameters ({', '.join(fund_kw)})")
            funding, funding_off = None, True
        elif funding.lower() in ("calibrated", "default", "real"):
            funding, funding_off = default_funding_params(), False
        else:
            raise ValueError(f"funding={funding!r}: use a FundingParams, 'calibrated' (default) or 'off'")
    else:
        funding_off = False
        if funding is None:
            funding = default_funding_params()
        elif not isinstance(funding, FundingParams):
            raise ValueError(
                f"funding must be a FundingParams, 'calibrated' or 'off', got {type(funding).__name__}"
            )
    if fund_kw and funding is not None:
        funding = replace(funding, **fund_kw)
    volume = volume if volume is not None else VolumeParams()
    if vol_kw:
        volume = replace(volume, **vol_kw)

    n = int(n_bars)
    dt = bar_seconds / _YEAR_SECONDS
    rng_price, rng_volume, rng_funding = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    r, var, jump, latent = _GENERATORS[kind](model, n, dt, bar_seconds, rng_price)
    bars = _bars_from_log_returns(rng_price, s0, r, var, jump)
    z = (r - r.mean()) / np.sqrt(np.maximum(var, 1e-300) + (0 if jump is None else jump**2))
    # Volume is drawn around a stationary *notional* (quote units) and converted at each bar's close: a fixed
    # level in base units would, on a long random walk down, make every order a huge share of the bar's
    # volume (impact and the participation cap blow up) -- real traded notional does not shrink that way.
    bars["volume"] = _volume(rng_volume, z, volume, bar_seconds) * (s0 / bars["close"])

    bar_ns = bar_seconds * _NS
    t0 = pd.Timestamp(start)
    t0 = (t0.tz_localize("UTC") if t0.tz is None else t0.tz_convert("UTC")).as_unit("ns").value
    t0 -= t0 % bar_ns
    ts = t0 + np.arange(n, dtype=np.int64) * bar_ns
    rate = np.zeros(n)
    if funding is not None and not funding_off:
        step = int(round(funding.interval_hours * 3600)) * _NS
        first = -(-t0 // step) * step
        settle = np.arange(first, ts[-1] + bar_ns, step, dtype=np.int64)
        values = simulate_funding(funding, len(settle), rng_funding)
        latent["funding_settlements"] = values
        fser = pd.Series(values, index=pd.DatetimeIndex(pd.to_datetime(settle, unit="ns", utc=True)))
        rate = align_funding(ts, bar_seconds, fser, source=f"synthetic:{kind}")
    market = MarketData(
        timestamps=ts,
        **bars,
        funding_rate=rate,
        bar_seconds=int(bar_seconds),
        funding_interval_hours=funding.interval_hours if funding is not None else 8.0,
        symbol=symbol,
        source=f"synthetic:{kind}:n_bars={n},seed={seed},bar_seconds={bar_seconds}",
        has_funding=not funding_off,
    )
    latent["variance"] = var
    return Simulation(
        market=market,
        kind=kind,
        params=model,
        funding=None if funding_off else funding,
        volume=volume,
        seed=int(seed),
        log_returns=r,
        latent=latent,
    )


def make_market(
    kind: str,
    *,
    n_bars: int,
    seed: int,
    bar_seconds: int = 3600,
    **params: Any,
) -> MarketData:
    """A synthetic market as :class:`~envs.market.MarketData`.

    Args:
        kind: one of :data:`SYNTHETIC_KINDS`.
        n_bars: number of bars.
        seed: seed of every random draw (same seed -> identical market).
        bar_seconds: bar interval (3600 = hourly).
        **params: ``start`` (first bar open time, default 2021-01-01 UTC), ``s0`` (start price, 30000),
            ``model`` (a params dataclass for ``kind``), ``funding`` (:class:`FundingParams`, ``"calibrated"``
            = default: fitted on the real 2019-2025 BTCUSDT history, or ``"off"``), ``volume``
            (:class:`VolumeParams`), ``symbol``; and flat overrides: any field of the kind's params dataclass
            (e.g. ``vol=0.8``, ``phi=0.2``), ``funding_<field>`` and ``volume_<field>``.

    Raises:
        ValueError: unknown kind or parameter (listing the valid ones), or invalid values.
    """
    return simulate(kind, n_bars=n_bars, seed=seed, bar_seconds=bar_seconds, **params).market


# Each generator returns (log returns, intrabar diffusion variance, jump part or None, latent dict).
def _gen_gbm(p: GBMParams, n: int, dt: float, bar_seconds: int, rng: np.random.Generator):
    var = np.full(n, p.vol**2 * dt)
    r = p.drift * dt + np.sqrt(var) * rng.standard_normal(n)
    return r, var, None, {}


def _gen_jump(p: JumpParams, n: int, dt: float, bar_seconds: int, rng: np.random.Generator):
    var = np.full(n, p.vol**2 * dt)
    counts = rng.poisson(p.jump_intensity * dt, n)
    jump = counts * p.jump_mean + np.sqrt(counts) * p.jump_std * rng.standard_normal(n)
    mu = (p.drift - p.jump_intensity * p.jump_mean) * dt  # so that E[r] = drift dt with the jumps
    r = mu + np.sqrt(var) * rng.standard_normal(n) + jump
    return r, var, jump, {"jumps": counts, "jump_size": jump}


def _gen_garch(p: GarchParams, n: int, dt: float, bar_seconds: int, rng: np.random.Generator):
    h_bar = p.vol**2 * dt
    omega = h_bar * (1 - p.alpha - p.beta)
    z = rng.standard_t(p.df, n) * math.sqrt((p.df - 2) / p.df)
    # h_t = omega + (alpha z_{t-1}^2 + beta) h_{t-1}, a linear recursion in h; h_0 = the long-run variance.
    a = np.empty(n)
    a[0] = 0.0
    a[1:] = p.alpha * z[:-1] ** 2 + p.beta
    b = np.full(n, omega)
    b[0] = h_bar
    h = linear_recursion(a, b)
    r = p.drift * dt + np.sqrt(h) * z
    return r, h, None, {"shocks": z}


def _gen_regime(p: RegimeParams, n: int, dt: float, bar_seconds: int, rng: np.random.Generator):
    k = len(p.vols)
    hours = bar_seconds / 3600
    leave = np.minimum(1.0, hours / np.asarray(p.mean_durations_hours, dtype=np.float64))
    dur = np.asarray(p.mean_durations_hours, dtype=np.float64)
    state0 = int(rng.choice(k, p=dur / dur.sum()))  # stationary share of time in each regime
    regime = np.empty(0, dtype=np.int64)
    state = state0
    while len(regime) < n:
        m = int(n * leave.max()) + 16
        states = (state + np.concatenate([[0], np.cumsum(rng.integers(1, k, m - 1))])) % k
        lengths = rng.geometric(leave[states])
        regime = np.concatenate([regime, np.repeat(states, lengths)])
        state = int((states[-1] + rng.integers(1, k)) % k)
    regime = regime[:n]
    vols = np.asarray(p.vols)[regime]
    drifts = np.asarray(p.drifts)[regime]
    var = vols**2 * dt
    r = drifts * dt + np.sqrt(var) * rng.standard_normal(n)
    return r, var, None, {"regime": regime}


def _gen_planted(p: PlantedParams, n: int, dt: float, bar_seconds: int, rng: np.random.Generator):
    c = p.drift * dt
    s_r = p.vol * math.sqrt(dt)
    s_e = s_r * math.sqrt(1 - p.phi**2)
    e = rng.standard_normal(n) * s_e
    y = linear_recursion(p.phi, e, rng.standard_normal() * s_r)  # stationary start
    r = c + y
    expected = np.empty(n)
    expected[0] = c
    expected[1:] = c + p.phi * (r[:-1] - c)
    return r, np.full(n, s_e**2), None, {"expected_return": expected}


_GENERATORS = {
    "gbm": _gen_gbm,
    "jump": _gen_jump,
    "garch": _gen_garch,
    "regime": _gen_regime,
    "planted": _gen_planted,
}


# ------------------------------------------------------------------------------------------------- oracle
def planted_oracle_positions(
    market: MarketData,
    params: PlantedParams | None = None,
    *,
    funding: FundingParams | None = None,
    mode: str = "sign",
    threshold: float = 0.0,
) -> np.ndarray:
    """The optimal target position per bar for a ``planted`` market, decided at bar t's close from bars 0..t.

    ``positions[t]`` is the position to hold over bar ``t+1`` (from ``close_t`` to ``close_{t+1}``). The
    expected next log return is ``c + phi (r_t - c)`` (``r_t`` = bar t's close-to-close log return, the first
    bar uses its open); holding it long also pays the funding settled in bar t+1 (positive rate: longs pay),
    predicted from the last settled rate as ``mean + phi_f (last - mean)`` when ``funding`` is given (else
    ignored).

    Args:
        market: the market made by ``make_market("planted", ...)``.
        params: the :class:`PlantedParams` it was made with (default: ``PlantedParams()``, make_market's
        default). funding: its :class:`FundingParams` to include the expected funding payment; None to ignore
        funding. mode: ``"sign"``: +-1 by the sign of the expected edge (maximizes the expected next-bar
        return of a
            position in [-1, 1] without costs); ``"kelly"``: edge / conditional variance, clipped to [-1, 1].
        threshold: stay flat (0) when ``|edge|`` is at most this (e.g. the round-trip cost per bar in return
            units) so fees do not eat the edge.

    Returns:
        float64 array in [-1, 1], one per bar (the last one is for a bar that does not exist yet).
    """
    p = params if params is not None else PlantedParams()
    if not isinstance(p, PlantedParams):
        raise ValueError(f"params must be PlantedParams, got {type(p).__name__}")
    if mode not in ("sign", "kelly"):
        raise ValueError(f"mode must be 'sign' or 'kelly', got {mode!r}")
    dt = market.bar_seconds / _YEAR_SECONDS
    c = p.drift * dt
    close = np.asarray(market.close)
    r = np.empty(len(close))
    r[0] = math.log(close[0] / market.open[0])
    r[1:] = np.diff(np.log(close))
    edge = c + p.phi * (r - c)
    if funding is not None:
        step = int(round(funding.interval_hours * 3600)) * _NS
        ts = np.asarray(market.timestamps)
        bar_ns = market.bar_seconds * _NS
        # A bar holds a settlement when a multiple of the interval falls in [open, open + bar).
        settles = (-(-ts // step) * step) < ts + bar_ns
        idx = np.where(settles, np.arange(len(ts)), -1)
        last_idx = np.maximum.accumulate(idx)
        last_rate = np.where(
            last_idx >= 0, np.asarray(market.funding_rate)[np.maximum(last_idx, 0)], funding.mean
        )
        predicted = funding.mean + funding.phi * (last_rate - funding.mean)
        next_settles = np.zeros(len(ts), dtype=bool)
        next_settles[:-1] = settles[1:]
        next_settles[-1] = (-(-(ts[-1] + bar_ns) // step) * step) < ts[-1] + 2 * bar_ns
        edge = edge - np.where(next_settles, predicted, 0.0)
    if mode == "sign":
        pos = np.sign(edge)
    else:
        s_e2 = (p.vol**2) * dt * (1 - p.phi**2)
        pos = np.clip(edge / s_e2, -1.0, 1.0)
    pos = np.where(np.abs(edge) <= threshold, 0.0, pos)
    return pos.astype(np.float64)


# ------------------------------------------------------------------------------------------------- specs
def _parse_value(text: str) -> Any:
    # The one value parser of every key=value spec (envs.spec): ``--hp``/``--env``/clipper specs read the
    # same text the same way. Tuples of regime parameters: ``vols=0.4/1.2`` or ``vols=[0.4,1.2]``.
    return parse_value(text)


def parse_synthetic_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"synthetic:<kind>[:key=value,...]"`` -> ``(kind, kwargs)``.

    Values are ints, floats, booleans, strings, or ``/``-separated tuples (``vols=0.4/1.2``). Defaults when
    not given: ``n_bars=8760`` (a year of hourly bars), ``seed=0``.
    """
    if not isinstance(spec, str) or not spec.strip().lower().startswith("synthetic:"):
        raise ValueError(f"a synthetic spec looks like 'synthetic:<kind>[:key=value,...]', got {spec!r}")
    rest = spec.strip()[len("synthetic:") :]
    kind, _, args = rest.partition(":")
    kind = kind.strip().lower()
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(
            f"unknown synthetic kind {kind!r} in {spec!r}; valid kinds: {', '.join(SYNTHETIC_KINDS)} "
            "(e.g. 'synthetic:jump:n_bars=20000,seed=3')"
        )
    kwargs: dict[str, Any] = {"n_bars": 8760, "seed": 0}
    if args.strip():
        for item in split_top_level(args):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"bad item {item!r} in {spec!r}: write key=value pairs separated by commas")
            kwargs[key.strip()] = _parse_value(value)
    return kind, kwargs


def market_from_spec(spec: str) -> MarketData:
    """:func:`make_market` from a ``"synthetic:<kind>[:key=value,...]"`` string (used by ``load_market``)."""
    kind, kwargs = parse_synthetic_spec(spec)
    if "model" in kwargs or "volume" in kwargs:
        raise ValueError(
            f"{spec!r}: give model/volume parameters as flat keys (e.g. vol=0.8, volume_base=100)"
        )
    return make_market(kind, **kwargs)
