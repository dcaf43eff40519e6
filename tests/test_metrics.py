"""envs.metrics.trade_metrics: hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.metrics import METRIC_KEYS, trade_metrics

DAY = 86400


def test_keys_and_pass_through():
    m = trade_metrics(
        np.array([100.0, 101.0]), bar_seconds=3600, turnover=2.5, fees=3.0, funding=-1.0, liquidations=1
    )
    assert tuple(m) == METRIC_KEYS
    assert (m["turnover"], m["fees"], m["funding"], m["liquidations"], m["n_bars"]) == (2.5, 3.0, -1.0, 1, 1)


def test_hand_computed_daily_curve():
    # returns +10 %, -10 %, +10 %: mean 1/30, sample std sqrt(((2/30)^2 * 2 + (4/30)^2) / 2) = sqrt(0.0133...)
    eq = np.array([100.0, 110.0, 99.0, 108.9])
    m = trade_metrics(eq, bar_seconds=DAY)
    r = np.array([0.1, -0.1, 0.1])
    assert m["total_return"] == pytest.approx(0.089)
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(365))
    # downside deviation sqrt(mean([0, 0.01, 0])) = sqrt(0.01/3)
    assert m["sortino"] == pytest.approx(r.mean() / math.sqrt(0.01 / 3) * math.sqrt(365))
    # peak 110 -> trough 99: drawdown 10 %
    assert m["max_drawdown"] == pytest.approx(0.1)
    cagr = 1.089 ** (365 / 3) - 1
    assert m["calmar"] == pytest.approx(cagr / 0.1)


def test_flat_curve_is_all_zero_not_nan():
    m = trade_metrics(np.full(10, 1000.0), bar_seconds=3600)
    for k in ("total_return", "sharpe", "sortino", "max_drawdown", "calmar"):
        assert m[k] == 0.0


def test_only_gains_gives_infinite_sortino_and_calmar():
    m = trade_metrics(np.array([1.0, 1.01, 1.02, 1.05]), bar_seconds=3600)
    assert m["sortino"] == math.inf and m["calmar"] == math.inf and m["max_drawdown"] == 0.0


def test_wipe_out():
    m = trade_metrics(np.array([100.0, 50.0, 0.0]), bar_seconds=3600)
    assert m["total_return"] == -1.0 and m["max_drawdown"] == 1.0 and m["calmar"] == -1.0


def test_short_big_return_does_not_overflow():
    # (2.9) ** (525600 / 2) overflows a float; the CAGR is computed in logs and capped instead of raising.
    m = trade_metrics(np.array([1.0, 3.0, 2.9]), bar_seconds=60)
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
        trade_metrics(eq, bar_seconds=3600)


def test_bad_bar_seconds():
    with pytest.raises(ValueError, match="bar_seconds"):
        trade_metrics(np.ones(3), bar_seconds=0)
