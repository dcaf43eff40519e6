"""Performance metrics of an equity curve (numpy only), and a check for a memorised training period.

Annualization uses 365-day years: crypto perpetuals trade every day, around the clock.

Counting: an equity curve of ``N`` points is one mark per bar close, from the first decision bar to the last
bar, so it covers ``n_bars = N`` bars of a period (what an evaluation header counts: ``bars [a, b)`` is
``b - a`` bars) and ``n_returns = N - 1`` bar-to-bar returns, which the ratios and the length of the period in
``years`` are computed from.

Short periods: the annualized ratios are reported as NaN (with ``sharpe_meaningful`` / ``calmar_meaningful``
False) when the period is shorter than :data:`MIN_DAYS_SHARPE` (Sharpe, Sortino) or :data:`MIN_DAYS_CALMAR`
(Calmar):

* Sharpe and Sortino: the standard error of an annualized Sharpe ratio estimated from ``T`` years of returns
  is about ``sqrt((1 + SR^2 / (2 q)) / T)`` with ``q`` bars a year (Lo 2002, i.i.d. returns), so about
  ``1 / sqrt(T)`` for hourly bars: +-7.6 over 150 hourly bars, +-3.5 over 30 days, +-1.4 over half a year.
  Below 30 days the error bar is wider than any Sharpe ratio a real strategy sustains (3 is exceptional), so
  the number says nothing about the policy.
* Calmar: the compound annual return raises the period's growth to the power ``1 / T``: a +10 % week becomes
  +14,300 % a year (the "Calmar of 6,478 on a 6-day period"), and a drawdown measured over a few days says
  little of a year's. 90 days keeps the power at most ~4 (+10 % in a quarter -> +47 % a year) while the
  half-year test periods of this project still report it; the conventional 3 years would blank every one.

``short_ratios="keep"`` computes them anyway (the flags stay False): ranking policies by Sharpe on one fixed
short validation period is still sound even though the level is not, and training logs want a number per
episode.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "MEMORISATION_Z",
    "METRIC_KEYS",
    "MIN_DAYS_CALMAR",
    "MIN_DAYS_SHARPE",
    "fmt",
    "memorisation_warning",
    "periods_per_year",
    "sharpe_lower_bound",
    "sharpe_standard_error",
    "trade_metrics",
    "trade_metrics_batch",
]

#: Keys of the dict returned by :func:`trade_metrics`, in order.
METRIC_KEYS = (
    "total_return",
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "turnover",
    "turnover_per_year",
    "fees",
    "funding",
    "liquidations",
    "n_bars",
    "n_returns",
    "years",
    "sharpe_meaningful",
    "calmar_meaningful",
)

#: Shortest period (days of returns) over which Sharpe and Sortino are reported (module docstring).
MIN_DAYS_SHARPE = 30.0
#: Shortest period (days of returns) over which Calmar is reported (module docstring).
MIN_DAYS_CALMAR = 90.0

_SECONDS_PER_DAY = 24 * 3600
_SECONDS_PER_YEAR = 365 * _SECONDS_PER_DAY
_SHORT_RATIOS = ("nan", "keep")


def periods_per_year(bar_seconds: int) -> float:
    """Bars per 365-day year."""
    if not bar_seconds > 0:
        raise ValueError(f"bar_seconds must be > 0, got {bar_seconds!r}")
    return _SECONDS_PER_YEAR / bar_seconds


def fmt(x: float, spec: str = ".2f") -> str:
    """``format(x, spec)``, but never a negative zero such as ``-0.00`` (a tiny loss that rounds to nothing
    prints ``0.00``)."""
    s = format(x, spec)
    if s.startswith("-") and not any(c in "123456789" for c in s):
        return s[1:]
    return s


def _ratios(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # A ratio with zero dispersion is 0 when there is nothing to divide (a flat policy) and +-inf otherwise;
    # never NaN, so that tables and TensorBoard stay readable.
    with np.errstate(divide="ignore", invalid="ignore"):
        q = num / den
    return np.where(den > 0.0, q, np.where(num == 0.0, 0.0, np.copysign(np.inf, num)))


def trade_metrics(
    equity: np.ndarray,
    *,
    bar_seconds: int,
    turnover: float = 0.0,
    fees: float = 0.0,
    funding: float = 0.0,
    liquidations: int = 0,
    short_ratios: str = "nan",
) -> dict:
    """Summary statistics of one equity curve.

    Args:
        equity: equity at the first decision bar's close and after each later bar, shape ``(n_returns + 1,)``,
            values >= 0, first > 0.
        bar_seconds: bar length, for annualization (``periods_per_year = 365 * 86400 / bar_seconds``).
        turnover: traded notional / initial balance (the env's convention), passed through and annualized.
        fees: passed through (total fees paid, quote currency).
        funding: passed through (total funding paid, quote currency; negative = received).
        liquidations: passed through (count).
        short_ratios: ``"nan"`` (default): Sharpe/Sortino over fewer than :data:`MIN_DAYS_SHARPE` days and
            Calmar over fewer than :data:`MIN_DAYS_CALMAR` days are NaN; ``"keep"``: computed anyway (to rank
            policies on one fixed period, or log a training episode); the ``*_meaningful`` flags are the same.

    Returns:
        A dict with :data:`METRIC_KEYS`, Python scalars:

        * ``total_return``: ``equity[-1] / equity[0] - 1``.
        * ``sharpe``: annualized ``mean(r) / std(r)`` of simple per-bar returns ``r`` (``ddof=1``), risk-free
          0.
        * ``sortino``: annualized ``mean(r) / sqrt(mean(min(r, 0)^2))`` (target 0).
        * ``max_drawdown``: largest peak-to-trough loss as a positive fraction (0.25 = -25 %).
        * ``calmar``: annualized compound return / ``max_drawdown``.
        * ``turnover``: as given (x initial balance); ``turnover_per_year``: ``turnover / years`` (NaN when
          ``years`` is 0).
        * ``fees``, ``funding``, ``liquidations``: as given.
        * ``n_bars``: ``len(equity)``, the bars of the period the curve covers; ``n_returns``:
          ``len(equity) - 1``; ``years``: ``n_returns * bar_seconds / (365 days)``.
        * ``sharpe_meaningful``: the period has at least :data:`MIN_DAYS_SHARPE` days (Sharpe, Sortino);
          ``calmar_meaningful``: at least :data:`MIN_DAYS_CALMAR` days. When False (and ``short_ratios`` is
          ``"nan"``) the ratio is NaN.

        A ratio whose denominator is 0 is 0 when its numerator is 0 as well, else +-inf.

    Raises:
        ValueError: on a non-1-D, empty, non-finite or negative curve, a first value <= 0, or a bad
            ``short_ratios``.
    """
    eq = np.asarray(equity, dtype=np.float64)
    if eq.ndim != 1 or eq.size < 1:
        raise ValueError(f"equity must be a 1-D array with at least one value, got shape {eq.shape}")
    batch = trade_metrics_batch(
        eq[None, :],
        bar_seconds=bar_seconds,
        turnover=np.array([turnover], dtype=np.float64),
        fees=np.array([fees], dtype=np.float64),
        funding=np.array([funding], dtype=np.float64),
        liquidations=np.array([liquidations], dtype=np.int64),
        short_ratios=short_ratios,
    )
    # Python scalars of the same types as the keys' meaning (JSON- and logger-friendly).
    return {k: _SCALAR_TYPES.get(k, float)(v[0]) for k, v in batch.items()}


_SCALAR_TYPES = {"liquidations": int, "n_bars": int, "n_returns": int, "sharpe_meaningful": bool,
                 "calmar_meaningful": bool}


def trade_metrics_batch(
    equity: np.ndarray,
    *,
    bar_seconds: int,
    turnover: np.ndarray,
    fees: np.ndarray,
    funding: np.ndarray,
    liquidations: np.ndarray,
    short_ratios: str = "nan",
) -> dict[str, np.ndarray]:
    """:func:`trade_metrics` of several equity curves of one length at once (rows of ``equity``).

    The one implementation of the formulas: :func:`trade_metrics` is this function on one row, and the
    batched env (``envs.vec_env``) calls it on its finished episodes. Reductions run along the contiguous last
    axis, so a row gives the same floating-point result as a 1-D curve.

    Args:
        equity: ``(n_curves, n_returns + 1)`` equity curves (see :func:`trade_metrics`).
        bar_seconds: bar length, for annualization.
        turnover, fees, funding, liquidations: ``(n_curves,)`` values passed through (turnover annualized).
        short_ratios: as in :func:`trade_metrics`.

    Returns:
        :data:`METRIC_KEYS` -> arrays of shape ``(n_curves,)``.

    Raises:
        ValueError: a non-2-D, empty, non-finite or negative array, a first value <= 0, or a bad
            ``short_ratios``.
    """
    if short_ratios not in _SHORT_RATIOS:
        raise ValueError(f"short_ratios must be one of {_SHORT_RATIOS}, got {short_ratios!r}")
    eq = np.asarray(equity, dtype=np.float64)
    if eq.ndim != 2 or eq.shape[1] < 1:
        raise ValueError(
            f"equity must be a 2-D array of curves with at least one value, got shape {eq.shape}"
        )
    bad = ~np.isfinite(eq) | (eq < 0)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        where = f"index {int(j)}" if eq.shape[0] == 1 else f"curve {int(i)}, index {int(j)}"
        raise ValueError(f"equity must be finite and >= 0; got {eq[i, j]!r} at {where}")
    if (eq[:, 0] <= 0).any():
        raise ValueError(f"equity[0] must be > 0 (the starting capital), got {eq[eq[:, 0] <= 0, 0][0]!r}")
    ppy = periods_per_year(bar_seconds)
    n_curves, n = eq.shape[0], eq.shape[1] - 1
    seconds = n * float(bar_seconds)
    years = seconds / _SECONDS_PER_YEAR
    first, last = eq[:, 0], eq[:, -1]
    total = last / first - 1.0
    zeros = np.zeros(n_curves)
    if n >= 1:
        prev = eq[:, :-1]
        # After a wipe-out (equity 0) later returns are undefined; count them as 0 (nothing left to gain or
        # lose).
        r = np.divide(eq[:, 1:] - prev, prev, out=np.zeros((n_curves, n)), where=prev > 0)
        mean = r.mean(axis=1)
        std = r.std(axis=1, ddof=1) if n > 1 else zeros
        downside = np.sqrt(np.mean(np.minimum(r, 0.0) ** 2, axis=1))
        root = math.sqrt(ppy)
        sharpe = np.where(std > 0, _ratios(mean, std) * root, _ratios(mean, zeros))
        sortino = np.where(downside > 0, _ratios(mean, downside) * root, _ratios(mean, zeros))
        peak = np.maximum.accumulate(eq, axis=1)
        dd = np.divide(peak - eq, peak, out=np.zeros_like(eq), where=peak > 0)
        mdd = dd.max(axis=1)
        # In logs, then capped: a short episode with a big return would overflow the power.
        with np.errstate(divide="ignore"):
            growth = np.minimum(np.log(last / first) * ppy / n, 700.0)
        cagr = np.where(last <= 0, -1.0, np.expm1(growth))
        calmar = _ratios(cagr, mdd)
    else:
        sharpe = sortino = mdd = calmar = zeros
    sharpe_ok = seconds >= MIN_DAYS_SHARPE * _SECONDS_PER_DAY
    calmar_ok = seconds >= MIN_DAYS_CALMAR * _SECONDS_PER_DAY
    if short_ratios == "nan":
        if not sharpe_ok:
            sharpe = sortino = np.full(n_curves, math.nan)
        if not calmar_ok:
            calmar = np.full(n_curves, math.nan)
    turnover = np.asarray(turnover, dtype=np.float64)
    return {
        "total_return": total,
        "sharpe": sharpe,
        "sortino": sortino,
        "max_drawdown": mdd,
        "calmar": calmar,
        "turnover": turnover,
        "turnover_per_year": turnover / years if years > 0 else np.full(n_curves, math.nan),
        "fees": np.asarray(fees, dtype=np.float64),
        "funding": np.asarray(funding, dtype=np.float64),
        "liquidations": np.asarray(liquidations, dtype=np.int64),
        "n_bars": np.full(n_curves, eq.shape[1], dtype=np.int64),
        "n_returns": np.full(n_curves, n, dtype=np.int64),
        "years": np.full(n_curves, years),
        "sharpe_meaningful": np.full(n_curves, sharpe_ok),
        "calmar_meaningful": np.full(n_curves, calmar_ok),
    }


def sharpe_standard_error(sharpe: float, years: float, periods_per_year: float) -> float:
    """Standard error of an annualized Sharpe ratio estimated from ``years`` of i.i.d. returns (Lo 2002).

    Per bar, ``Var(SR_hat) = (1 + SR^2 / 2) / T`` for ``T`` returns; annualized (``SR = sqrt(q) SR_bar``,
    ``T = q years``) this is ``(1 + SR^2 / (2 q)) / years``. For hourly bars the second term is negligible:
    about ``1 / sqrt(years)``.

    Raises:
        ValueError: ``years`` or ``periods_per_year`` not > 0.
    """
    if not (years > 0 and periods_per_year > 0):
        raise ValueError(f"years and periods_per_year must be > 0, got {years!r} and {periods_per_year!r}")
    return math.sqrt((1.0 + sharpe * sharpe / (2.0 * periods_per_year)) / years)


def sharpe_lower_bound(metrics: dict, *, z: float = 1.0) -> float:
    """The Sharpe ratio minus ``z`` standard errors: what a period's result says the policy earns at least.

    Ranking checkpoints on one validation period by their raw Sharpe picks whichever was luckiest there; a
    checkpoint that trades a little and happened to gain (a Sharpe of 1 over half a year is ~0.7 standard
    errors) would beat staying out. Penalising by the standard error of :func:`sharpe_standard_error` makes a
    policy that never takes a position (all returns exactly 0: a known result with no estimation error)
    score 0, and a trading policy beat it only with evidence of an edge (``SR > z * se``).

    Args:
        metrics: :func:`trade_metrics` of one policy (``sharpe``, ``years``, ``n_returns`` are used; compute
            them with ``short_ratios="keep"`` on short periods).
        z: standard errors subtracted (1: the one-sided 84 % bound).

    Returns:
        ``sharpe - z * se``; 0 for a policy whose returns are all 0 (never exposed); NaN where the Sharpe is
        NaN or there are fewer than 2 returns (nothing to judge).
    """
    missing = {"sharpe", "years", "n_returns"} - set(metrics)
    if missing:
        raise ValueError(f"metrics lack {sorted(missing)}: pass envs.metrics.trade_metrics output")
    s, years, n = float(metrics["sharpe"]), float(metrics["years"]), int(metrics["n_returns"])
    if math.isnan(s) or n < 2 or years <= 0:
        return math.nan
    if s == 0.0 and float(metrics.get("turnover", 0.0)) == 0.0:
        return 0.0  # never traded: zero return for certain
    return s - z * sharpe_standard_error(s, years, n / years) if math.isfinite(s) else s


#: Standard errors by which a result must clear the bar in :func:`memorisation_warning` (~2.3 % one-sided
#: false-alarm rate each, for normal errors).
MEMORISATION_Z = 2.0


def memorisation_warning(train_metrics: dict, test_metrics: dict, *, z: float = MEMORISATION_Z) -> str | None:
    """A warning when the training-period result is too good to be the same policy's test result.

    Both dicts are :func:`trade_metrics` of one policy (``sharpe``, ``years``, ``n_returns`` are used). The
    warning is returned when both hold:

    * the training Sharpe is significantly positive: ``SR_train > z * se_train`` (it found something there);
    * it is significantly above the test Sharpe: ``SR_train - SR_test > z * sqrt(se_train^2 + se_test^2)``,

    with the standard errors of :func:`sharpe_standard_error`, so a short test period (wide error bar) needs a
    bigger gap. With ``z = 2`` a policy whose true Sharpe is the same on both periods triggers it about 2 %
    of the time. The Sharpe gap is the gap in mean return per unit of risk, so a separate test on returns
    would say the same. A drop can also come from a change of market regime; the message says both.

    Args:
        train_metrics: metrics on the training period.
        test_metrics: metrics on the test period.
        z: standard errors required for each condition.

    Returns:
        The warning text, or None: no significant gap, or a Sharpe ratio that is NaN (a period too short, see
        ``short_ratios``) or infinite (no variance), or a period without returns: nothing to judge.
    """
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z!r}")
    sr, se = [], []
    for name, m in (("train_metrics", train_metrics), ("test_metrics", test_metrics)):
        missing = {"sharpe", "years", "n_returns"} - set(m)
        if missing:
            raise ValueError(f"{name} lacks {sorted(missing)}: pass envs.metrics.trade_metrics output")
        s, years, n = float(m["sharpe"]), float(m["years"]), int(m["n_returns"])
        if not math.isfinite(s) or years <= 0 or n < 2:
            return None
        sr.append(s)
        se.append(sharpe_standard_error(s, years, n / years))
    (s_tr, s_te), (e_tr, e_te) = sr, se
    gap_se = math.sqrt(e_tr**2 + e_te**2)
    gap = s_tr - s_te
    if s_tr > z * e_tr and gap > z * gap_se:
        return (
            f"possible memorisation: train Sharpe {fmt(s_tr)} (+-{fmt(e_tr)}, "
            f"{fmt(float(train_metrics['years']))} years) vs test Sharpe {fmt(s_te)} (+-{fmt(e_te)}, "
            f"{fmt(float(test_metrics['years']))} years): the drop of {fmt(gap)} is "
            f"{fmt(gap / gap_se, '.1f')} standard errors (threshold {fmt(z, 'g')}). The policy fit its "
            "training period rather than "
            "something that carries over (or the market changed between the periods); judge it on test and "
            "validation results only."
        )
    return None
