"""envs.metrics: hand-computed trade metrics, short periods, turnover per year and the memorisation check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.metrics import (
    METRIC_KEYS,
    MIN_DAYS_CALMAR,
    MIN_DAYS_SHARPE,
    fmt,
    memorisation_warning,
    sharpe_lower_bound,
    sharpe_standard_error,
    trade_metrics,
)

DAY = 86400
HOUR = 3600


def test_keys_pass_through_and_counts():
    m = trade_metrics(
        np.array([100.0, 101.0]), bar_seconds=HOUR, turnover=2.5, fees=3.0, funding=-1.0, liquidations=1
    )
    assert tuple(m) == METRIC_KEYS
    assert (m["turnover"], m["fees"], m["funding"], m["liquidations"]) == (2.5, 3.0, -1.0, 1)
    # Two marks (the decision bar's close and the next one): a period of 2 bars, 1 return, one hour.
    assert (m["n_bars"], m["n_returns"], m["years"]) == (2, 1, 1 / 8760)


def test_hand_computed_daily_curve():
    # returns +10 %, -10 %, +10 % repeated 30 times: 90 daily returns = exactly MIN_DAYS_CALMAR days.
    assert MIN_DAYS_CALMAR == 90
    eq = 100.0 * np.cumprod(np.r_[1.0, np.tile([1.1, 0.9, 1.1], 30)])
    m = trade_metrics(eq, bar_seconds=DAY)
    r = np.tile([0.1, -0.1, 0.1], 30)
    assert m["sharpe_meaningful"] and m["calmar_meaningful"]
    assert m["total_return"] == pytest.approx(1.089**30 - 1)
    # mean 1/30; sample std over 90 returns
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(365))
    # downside deviation sqrt(mean of 0.01 on a third of the bars) = sqrt(0.01 / 3)
    assert m["sortino"] == pytest.approx((1 / 30) / math.sqrt(0.01 / 3) * math.sqrt(365))
    # the first drop, 110 -> 99, is the largest: each later peak is higher by the same 8.9 %
    assert m["max_drawdown"] == pytest.approx(0.1)
    cagr = (1.089**30) ** (365 / 90) - 1
    assert m["calmar"] == pytest.approx(cagr / 0.1)
    assert m["years"] == pytest.approx(90 / 365)


def test_short_period_ratios_are_nan_and_flagged():
    # The old failure: +10 % over 6 days of hourly bars gave a Calmar in the thousands.
    eq = np.linspace(100.0, 110.0, 6 * 24 + 1) + np.tile([0.0, 0.3], 73)[:145]
    m = trade_metrics(eq, bar_seconds=HOUR)
    assert math.isnan(m["sharpe"]) and math.isnan(m["sortino"]) and math.isnan(m["calmar"])
    assert not m["sharpe_meaningful"] and not m["calmar_meaningful"]
    assert m["total_return"] == pytest.approx(0.1) and m["max_drawdown"] > 0
    kept = trade_metrics(eq, bar_seconds=HOUR, short_ratios="keep")
    assert kept["calmar"] > 1000 and math.isfinite(kept["sharpe"])  # the number the rule hides
    assert not kept["sharpe_meaningful"] and not kept["calmar_meaningful"]


@pytest.mark.parametrize(
    ("hours", "sharpe_ok", "calmar_ok"),
    [
        (int(MIN_DAYS_SHARPE * 24) - 1, False, False),
        (int(MIN_DAYS_SHARPE * 24), True, False),
        (int(MIN_DAYS_CALMAR * 24) - 1, True, False),
        (int(MIN_DAYS_CALMAR * 24), True, True),
    ],
)
def test_minimum_periods_boundaries(hours, sharpe_ok, calmar_ok):
    rng = np.random.default_rng(0)
    eq = 100.0 * np.cumprod(np.r_[1.0, 1.0 + 0.01 * rng.standard_normal(hours)])
    m = trade_metrics(eq, bar_seconds=HOUR)
    assert m["n_returns"] == hours
    assert (m["sharpe_meaningful"], m["calmar_meaningful"]) == (sharpe_ok, calmar_ok)
    assert math.isfinite(m["sharpe"]) == sharpe_ok and math.isfinite(m["sortino"]) == sharpe_ok
    assert math.isfinite(m["calmar"]) == calmar_ok


def test_turnover_per_year():
    # Half a year of hourly bars (4380 returns) with 3x equity traded: 6x a year.
    m = trade_metrics(np.full(4381, 1000.0), bar_seconds=HOUR, turnover=3.0)
    assert m["years"] == pytest.approx(0.5) and m["turnover_per_year"] == pytest.approx(6.0)
    # Daily bars: 73 days = 0.2 years.
    m = trade_metrics(np.full(74, 1000.0), bar_seconds=DAY, turnover=1.5)
    assert m["turnover_per_year"] == pytest.approx(7.5)
    # No time has passed: no rate.
    m = trade_metrics(np.array([1000.0]), bar_seconds=HOUR, turnover=0.0)
    assert m["n_bars"] == 1 and m["n_returns"] == 0 and math.isnan(m["turnover_per_year"])


def test_flat_curve_is_all_zero_not_nan():
    m = trade_metrics(np.full(24 * 91, 1000.0), bar_seconds=HOUR)
    for k in ("total_return", "sharpe", "sortino", "max_drawdown", "calmar", "turnover_per_year"):
        assert m[k] == 0.0


def test_only_gains_gives_infinite_sortino_and_calmar():
    m = trade_metrics(np.array([1.0, 1.01, 1.02, 1.05]), bar_seconds=30 * DAY)
    assert m["sortino"] == math.inf and m["calmar"] == math.inf and m["max_drawdown"] == 0.0


def test_wipe_out():
    m = trade_metrics(np.array([100.0, 50.0, 0.0]), bar_seconds=HOUR, short_ratios="keep")
    assert m["total_return"] == -1.0 and m["max_drawdown"] == 1.0 and m["calmar"] == -1.0


def test_short_big_return_does_not_overflow():
    # (2.9) ** (525600 / 2) overflows a float; the CAGR is computed in logs and capped instead of raising.
    m = trade_metrics(np.array([1.0, 3.0, 2.9]), bar_seconds=60, short_ratios="keep")
    assert math.isfinite(m["calmar"]) and m["calmar"] > 0


@pytest.mark.parametrize(
    ("eq", "match"),
    [
        (np.array([]), "at least one"),
        (np.array([1.0, np.nan]), "finite"),
        (np.array([0.0, 1.0]), "equity\\[0\\]"),
        (np.array([1.0, -1.0]), ">= 0"),
        (np.ones((2, 2)), "1-D"),
    ],
)
def test_bad_input(eq, match):
    with pytest.raises(ValueError, match=match):
        trade_metrics(eq, bar_seconds=HOUR)


def test_bad_bar_seconds_and_short_ratios():
    with pytest.raises(ValueError, match="bar_seconds"):
        trade_metrics(np.ones(3), bar_seconds=0)
    with pytest.raises(ValueError, match="short_ratios"):
        trade_metrics(np.ones(3), bar_seconds=HOUR, short_ratios="drop")


def test_fmt_has_no_negative_zero():
    assert fmt(-0.001) == "0.00" and fmt(-0.0) == "0.00" and fmt(-0.00001, ".2%") == "0.00%"
    assert fmt(-0.006) == "-0.01" and fmt(1.234, ".1f") == "1.2" and fmt(-3.0, "g") == "-3"


def test_sharpe_standard_error_hand_computed():
    # Hourly bars: (1 + SR^2 / (2 * 8760)) / years.
    assert sharpe_standard_error(0.0, 0.25, 8760) == pytest.approx(2.0)
    assert sharpe_standard_error(2.0, 1.0, 8760) == pytest.approx(math.sqrt(1 + 4 / 17520))
    # Yearly data: Lo's (1 + SR^2 / 2) / T.
    assert sharpe_standard_error(2.0, 4.0, 1) == pytest.approx(math.sqrt(3 / 4))
    with pytest.raises(ValueError, match="years"):
        sharpe_standard_error(1.0, 0.0, 8760)


def test_sharpe_lower_bound_hand_computed():
    # A quarter year of hourly bars at SR 3: se sqrt((1 + 9 / 17520) / 0.25) = 2.000514; bound 0.999486.
    m = {"sharpe": 3.0, "years": 0.25, "n_returns": 2190, "turnover": 4.0}
    assert sharpe_lower_bound(m) == pytest.approx(3.0 - 2.0 * math.sqrt(1 + 9 / 17520))
    assert sharpe_lower_bound(m, z=2.0) == pytest.approx(3.0 - 4.0 * math.sqrt(1 + 9 / 17520))
    # Trading that lost nothing and gained nothing still carries its uncertainty...
    assert sharpe_lower_bound({**m, "sharpe": 0.0}) == pytest.approx(-2.0)
    # ...never trading does not: a flat curve from trade_metrics scores exactly 0.
    flat = trade_metrics(np.full(2191, 100.0), bar_seconds=HOUR, short_ratios="keep")
    assert sharpe_lower_bound(flat) == 0.0
    # So on this quarter year a policy needs SR > se (~2) to rank above staying out.
    assert sharpe_lower_bound({**m, "sharpe": 1.9}) < 0.0 < sharpe_lower_bound({**m, "sharpe": 2.1})
    assert math.isnan(sharpe_lower_bound({**m, "sharpe": math.nan}))
    assert math.isnan(sharpe_lower_bound({**m, "n_returns": 1}))
    with pytest.raises(ValueError, match="years"):
        sharpe_lower_bound({"sharpe": 1.0})


def _m(sharpe: float, years: float) -> dict:
    return {"sharpe": sharpe, "years": years, "n_returns": round(years * 8760)}


def test_memorisation_warning_hand_computed_thresholds():
    # train SR 6 over 2.5 years: se sqrt((1 + 36/17520) / 2.5) = 0.633; test SR 0 over half a year: se 1.414;
    # the gap's se is 1.549, so a drop of 6 is 3.9 se (> 2) and the train Sharpe is 9.5 se above 0: warn.
    w = memorisation_warning(_m(6.0, 2.5), _m(0.0, 0.5))
    assert w is not None and "memorisation" in w and "3.9 standard errors" in w and "6.00" in w
    # A drop of 2 is 1.3 se: within noise.
    assert memorisation_warning(_m(2.0, 2.5), _m(0.0, 0.5)) is None
    # The same drop of 6 against a 0.05-year test (se 4.47, gap se 4.52): too short to tell.
    assert memorisation_warning(_m(6.0, 2.5), _m(0.0, 0.05)) is None
    # train SR 1.5 over 1 year is 1.5 se above 0 (not significant), even though test SR -3 over 2 years is
    # 3.7 se lower: nothing was memorised.
    assert memorisation_warning(_m(1.5, 1.0), _m(-3.0, 2.0)) is None
    # one-sided: the test doing better is not memorisation
    assert memorisation_warning(_m(0.0, 0.5), _m(6.0, 2.5)) is None
    # a stricter z turns the first case off (3.9 se < 4)
    assert memorisation_warning(_m(6.0, 2.5), _m(0.0, 0.5), z=4.0) is None


def test_memorisation_warning_on_real_curves():
    rng = np.random.default_rng(3)
    train = 1e4 * np.cumprod(1 + rng.normal(5e-4, 5e-3, 8760))  # Sharpe ~9 for a year
    same = 1e4 * np.cumprod(1 + rng.normal(5e-4, 5e-3, 4380))
    noise = 1e4 * np.cumprod(1 + rng.normal(0.0, 5e-3, 4380))
    mt, ms, mn = (trade_metrics(np.r_[1e4, x], bar_seconds=HOUR) for x in (train, same, noise))
    assert mt["sharpe"] > 6 and abs(mn["sharpe"]) < 3
    assert memorisation_warning(mt, mn) is not None
    assert memorisation_warning(mt, ms) is None


def test_memorisation_warning_nothing_to_judge_and_bad_input():
    assert memorisation_warning(_m(math.nan, 0.01), _m(0.0, 1.0)) is None  # too short: NaN Sharpe
    assert memorisation_warning(_m(6.0, 2.5), _m(math.inf, 1.0)) is None
    assert memorisation_warning(_m(6.0, 2.5), {"sharpe": 0.0, "years": 0.0, "n_returns": 0}) is None
    with pytest.raises(ValueError, match="test_metrics lacks"):
        memorisation_warning(_m(1.0, 1.0), {"sharpe": 1.0})
    with pytest.raises(ValueError, match="z must be"):
        memorisation_warning(_m(1.0, 1.0), _m(1.0, 1.0), z=0)


def test_memorisation_message_has_no_negative_zero():
    w = memorisation_warning(_m(8.0, 3.0), _m(-0.001, 1.0))
    assert w is not None and "-0.00" not in w and "test Sharpe 0.00" in w
