"""Performance metrics of an equity curve (numpy only).

Annualization uses 365-day years: crypto perpetuals trade every day, around the clock.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["METRIC_KEYS", "trade_metrics", "periods_per_year"]

#: Keys of the dict returned by :func:`trade_metrics`, in order.
METRIC_KEYS = (
    "total_return",
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "turnover",
    "fees",
    "funding",
    "liquidations",
    "n_bars",
)

_SECONDS_PER_YEAR = 365 * 24 * 3600


def periods_per_year(bar_seconds: int) -> float:
    """Bars per 365-day year."""
    if not bar_seconds > 0:
        raise ValueError(f"bar_seconds must be > 0, got {bar_seconds!r}")
    return _SECONDS_PER_YEAR / bar_seconds


def _ratio(num: float, den: float) -> float:
    # A ratio with zero dispersion is 0 when there is nothing to divide (a flat policy) and +-inf otherwise;
    # never NaN, so that tables and TensorBoard stay readable.
    if den > 0.0:
        return num / den
    if num == 0.0:
        return 0.0
    return math.copysign(math.inf, num)


def trade_metrics(
    equity: np.ndarray,
    *,
    bar_seconds: int,
    turnover: float = 0.0,
    fees: float = 0.0,
    funding: float = 0.0,
    liquidations: int = 0,
) -> dict:
    """Summary statistics of one equity curve.

    Args:
        equity: equity at the start and after each bar, shape ``(n_bars + 1,)``, values >= 0, first > 0.
        bar_seconds: bar length, for annualization (``periods_per_year = 365 * 86400 / bar_seconds``).
        turnover: passed through (the env passes traded notional / initial balance).
        fees: passed through (total fees paid, quote currency).
        funding: passed through (total funding paid, quote currency; negative = received).
        liquidations: passed through (count).

    Returns:
        A dict with :data:`METRIC_KEYS`, Python scalars:

        * ``total_return``: ``equity[-1] / equity[0] - 1``.
        * ``sharpe``: annualized ``mean(r) / std(r)`` of simple per-bar returns ``r`` (``ddof=1``), risk-free
          0.
        * ``sortino``: annualized ``mean(r) / sqrt(mean(min(r, 0)^2))`` (target 0).
        * ``max_drawdown``: largest peak-to-trough loss as a positive fraction (0.25 = -25 %).
        * ``calmar``: annualized compound return / ``max_drawdown``.
        * ``turnover``, ``fees``, ``funding``, ``liquidations``: as given; ``n_bars``: ``len(equity) - 1``.

        A ratio whose denominator is 0 is 0 when its numerator is 0 as well, else +-inf (never NaN).

    Raises:
        ValueError: on a non-1-D, too short, non-finite or negative curve, or a first value <= 0.
    """
    eq = np.asarray(equity, dtype=np.float64)
    if eq.ndim != 1 or eq.size < 1:
        raise ValueError(f"equity must be a 1-D array with at least one value, got shape {eq.shape}")
    bad = np.flatnonzero(~np.isfinite(eq) | (eq < 0))
    if bad.size:
        raise ValueError(f"equity must be finite and >= 0; got {eq[bad[0]]!r} at index {int(bad[0])}")
    if eq[0] <= 0:
        raise ValueError(f"equity[0] must be > 0 (the starting capital), got {eq[0]!r}")
    ppy = periods_per_year(bar_seconds)
    n = eq.size - 1
    total = float(eq[-1] / eq[0] - 1.0)
    if n >= 1:
        prev = eq[:-1]
        # After a wipe-out (equity 0) later returns are undefined; count them as 0 (nothing left to gain or
        # lose).
        r = np.divide(eq[1:] - prev, prev, out=np.zeros(n), where=prev > 0)
        mean = float(r.mean())
        std = float(r.std(ddof=1)) if n > 1 else 0.0
        downside = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)))
        sharpe = _ratio(mean, std) * math.sqrt(ppy) if std > 0 else _ratio(mean, 0.0)
        sortino = _ratio(mean, downside) * math.sqrt(ppy) if downside > 0 else _ratio(mean, 0.0)
        peak = np.maximum.accumulate(eq)
        dd = np.divide(peak - eq, peak, out=np.zeros_like(eq), where=peak > 0)
        mdd = float(dd.max())
        # In logs, then capped: a short episode with a big return would overflow the power.
        cagr = -1.0 if eq[-1] <= 0 else math.expm1(min(math.log(eq[-1] / eq[0]) * ppy / n, 700.0))
        calmar = _ratio(cagr, mdd)
    else:
        sharpe = sortino = mdd = calmar = 0.0
    return {
        "total_return": total,
        "sharpe": float(sharpe),
        "sortino": float(sortino),
        "max_drawdown": mdd,
        "calmar": float(calmar),
        "turnover": float(turnover),
        "fees": float(fees),
        "funding": float(funding),
        "liquidations": int(liquidations),
        "n_bars": int(n),
    }
