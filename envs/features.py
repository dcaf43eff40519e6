"""Causal per-bar features, computed once per market as arrays (vectorized; pandas only here, at build time).

Every value at bar ``t`` uses bars ``<= t`` only (their closes are known when the agent decides on bar t's
close), and every normalization uses statistics of *earlier* bars: there is no full-sample mean/std anywhere.
The no-look-ahead test in ``tests/test_trading_env.py`` perturbs later bars and checks earlier values do not
move.

Features (columns of :attr:`MarketFeatures.values`, in this order, clipped to ``[-clip, clip]``):

| name           | definition at bar t                                                                       |
|----------------|-------------------------------------------------------------------------------------------|
| `log_return`   | `log(close_t / close_{t-1}) / sigma_{t-1}`: the return in units of the EWMA volatility of |
|                | the returns before it                                                                     |
| `range`        | `log(high_t / low_t) / sigma_{t-1}`: the bar's high-low range in the same units           |
| `rel_volume`   | `log(volume_t / mean(volume_{t-L..t-1}))`: volume relative to the previous `L` bars' mean |
| `funding_rate` | the last settled funding rate at or before bar t, in basis points (1e-4 -> 1.0); 0 without|
|                | funding data                                                                              |
| `time_to_fund` | time from bar t's close to the next settlement, as a fraction of the funding interval     |
|                | (settlements on the UTC grid 00:00, 08:00, 16:00 for 8 h); 0: one falls at the next open  |

``sigma_t`` is ``sqrt`` of an exponentially weighted mean (half-life ``vol_halflife`` bars, pandas
``adjust=True``, itself causal) of squared log returns up to bar t; :attr:`MarketFeatures.volatility` exposes
it for the impact model.
"""

from __future__ import annotations

import math
import weakref
from array import array
from dataclasses import dataclass

import numpy as np
import pandas as pd

from envs.market import MarketData

__all__ = ["FEATURE_NAMES", "FeatureConfig", "MarketFeatures", "compute_features"]

FEATURE_NAMES = ("log_return", "range", "rel_volume", "funding_rate", "time_to_funding")

# Floor on the volatility estimate: a market with constant prices would otherwise divide 0 by 0.
_MIN_SIGMA = 1e-8


@dataclass(frozen=True)
class FeatureConfig:
    """Feature settings.

    Attributes:
        vol_halflife: half-life in bars of the EWMA volatility used to scale returns and ranges (and for
            impact).
        volume_window: ``L``, bars in the trailing volume mean.
        warmup: bars before the first valid feature row (volatility and volume estimates need history); rows
            before it are zero and never observed. Must be >= ``volume_window`` and >= 2.
        clip: features are clipped to ``[-clip, clip]`` (a zero-volume bar gives log(0)).
    """

    vol_halflife: float = 24.0
    volume_window: int = 24
    warmup: int = 24
    clip: float = 10.0

    def __post_init__(self) -> None:
        if not (self.vol_halflife > 0 and math.isfinite(self.vol_halflife)):
            raise ValueError(f"FeatureConfig.vol_halflife must be > 0, got {self.vol_halflife!r}")
        if int(self.volume_window) != self.volume_window or self.volume_window < 1:
            raise ValueError(f"FeatureConfig.volume_window must be an int >= 1, got {self.volume_window!r}")
        if int(self.warmup) != self.warmup or self.warmup < max(2, self.volume_window):
            raise ValueError(
                f"FeatureConfig.warmup must be an int >= max(2, volume_window={self.volume_window}), "
                f"got {self.warmup!r}"
            )
        if not self.clip > 0:
            raise ValueError(f"FeatureConfig.clip must be > 0, got {self.clip!r}")


@dataclass(frozen=True, eq=False)
class MarketFeatures:
    """Precomputed arrays for one market, shared (read-only) by every env on it.

    Attributes:
        values: float32 ``(n_bars, len(FEATURE_NAMES))``, C-contiguous; rows before ``first_valid`` are zero.
        volatility: float64 ``(n_bars,)`` EWMA std of log returns per bar using bars <= t (``sigma_t``).
        first_valid: first bar whose feature row is valid (= ``config.warmup``).
        names: column names.
        config: the settings used.
        lists: the market's ``open, high, low, close, volume, funding_rate`` and ``volatility`` as
            ``array.array("d")`` copies, for the envs' scalar hot path: indexing one returns a Python float as
            fast as a list does (much cheaper than a numpy element read), at 8 bytes a value instead of a
            list's 32, and unlike a memoryview it pickles and deep-copies with the env.
    """

    values: np.ndarray
    volatility: np.ndarray
    first_valid: int
    names: tuple[str, ...]
    config: FeatureConfig
    lists: dict[str, array]


# One feature set per (market object, config): envs on one market share arrays instead of recomputing them.
_CACHE: weakref.WeakKeyDictionary[MarketData, dict[FeatureConfig, MarketFeatures]]
_CACHE = weakref.WeakKeyDictionary()


def compute_features(market: MarketData, config: FeatureConfig | None = None) -> MarketFeatures:
    """Features of ``market`` (cached per market object and config; the arrays are read-only).

    Args:
        market: validated bars.
        config: settings; default :class:`FeatureConfig`.
    """
    config = config or FeatureConfig()
    if not isinstance(market, MarketData):
        raise ValueError(f"compute_features needs a MarketData, got {type(market).__name__}")
    try:
        per_market = _CACHE.setdefault(market, {})
    except TypeError:  # a MarketData that cannot be weakly referenced: compute without caching
        return _compute(market, config)
    hit = per_market.get(config)
    if hit is not None:
        return hit
    feats = _compute(market, config)
    per_market[config] = feats
    return feats


def _compute(market: MarketData, cfg: FeatureConfig) -> MarketFeatures:
    n = len(market)
    close = np.asarray(market.close, dtype=np.float64)
    logret = np.zeros(n)
    logret[1:] = np.diff(np.log(close))
    # EWMA of squared returns from bar 1 on (bar 0 has no return); adjust=True weights are causal and need no
    # seed.
    r2 = pd.Series(logret[1:] ** 2)
    ewm = r2.ewm(halflife=cfg.vol_halflife, adjust=True).mean().to_numpy()
    sigma = np.empty(n)
    sigma[1:] = np.sqrt(ewm)
    sigma[0] = sigma[1] if n > 1 else 0.0  # bar 0 is in the warm-up, never observed; only keeps arrays finite
    sigma = np.maximum(sigma, _MIN_SIGMA)
    prev_sigma = np.empty(n)
    prev_sigma[1:] = sigma[:-1]
    prev_sigma[0] = sigma[0]

    rng = np.log(np.asarray(market.high) / np.asarray(market.low))

    vol = np.asarray(market.volume, dtype=np.float64)
    L = int(cfg.volume_window)
    csum = np.concatenate(([0.0], np.cumsum(vol)))
    past_mean = np.full(n, np.nan)
    past_mean[L:] = (csum[L:n] - csum[0 : n - L]) / L  # mean of bars t-L .. t-1
    eps = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_vol = np.log((vol + eps) / (past_mean + eps))

    rate = np.asarray(market.funding_rate, dtype=np.float64)
    settled = rate != 0.0
    last_idx = np.where(settled, np.arange(n), -1)
    np.maximum.accumulate(last_idx, out=last_idx)
    funding = np.where(last_idx >= 0, rate[np.clip(last_idx, 0, None)], 0.0) * 1e4

    interval_ns = int(round(market.funding_interval_hours * 3600)) * 10**9
    close_time = np.asarray(market.timestamps, dtype=np.int64) + int(market.bar_seconds) * 10**9
    time_to_funding = ((-close_time) % interval_ns).astype(np.float64) / interval_ns

    values = np.stack([logret / prev_sigma, rng / prev_sigma, rel_vol, funding, time_to_funding], axis=1)
    values = np.clip(np.nan_to_num(values, nan=0.0, posinf=cfg.clip, neginf=-cfg.clip), -cfg.clip, cfg.clip)
    first = int(cfg.warmup)
    values[: min(first, n)] = 0.0
    values = np.ascontiguousarray(values, dtype=np.float32)
    values.flags.writeable = False
    sigma.flags.writeable = False
    lists = {
        name: array("d", np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        for name, arr in (
            ("open", market.open),
            ("high", market.high),
            ("low", market.low),
            ("close", market.close),
            ("volume", market.volume),
            ("funding_rate", market.funding_rate),
            ("volatility", sigma),
        )
    }
    return MarketFeatures(
        values=values, volatility=sigma, first_valid=first, names=FEATURE_NAMES, config=cfg, lists=lists
    )
