"""Tests of the execution baselines (TWAP, VWAP, Almgren–Chriss) and the episode runner (issue 7)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from envs.contract import ExecutionConfig
from envs.execution_baselines import (
    TWAP,
    VWAP,
    AlmgrenChriss,
    almgren_chriss_trajectory,
    evaluate_execution,
    evenly_spaced_starts,
    run_execution_episode,
    summarize_shortfall,
)
from envs.execution_env import CryptoFuturesExecutionEnv
from envs.market import MarketData

NO_CAP = ExecutionConfig(taker_fee=0.0004, half_spread_bps=1.0, impact_coef=0.5, max_participation=None)


def make_market(close, volume) -> MarketData:
    close = np.asarray(close, dtype=float)
    n = len(close)
    open_ = np.r_[close[0], close[:-1]]
    idx = pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC")
    df = pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close),
            "low": np.minimum(open_, close),
            "close": close,
            "volume": np.broadcast_to(np.asarray(volume, dtype=float), (n,)),
            "funding_rate": 0.0,
        },
        index=idx,
    )
    return MarketData.from_frame(df, source="test")


def alternating(n=24 * 3, r=0.01, volume=1000.0):
    return make_market(100.0 * np.exp(r * (np.arange(n) % 2)), volume)


def periodic_volume(n=24 * 4):
    return 400.0 + 200.0 * np.sin(2 * np.pi * np.arange(n) / 24) ** 2


# ------------------------------------------------------------------------------------------- Almgren–Chriss


def test_ac_trajectory_is_the_sinh_formula():
    N, kt2 = 10, 0.3
    kappa = math.acosh(1 + kt2 / 2)
    direct = np.sinh(kappa * (N - np.arange(N + 1))) / np.sinh(kappa * N)
    np.testing.assert_allclose(almgren_chriss_trajectory(N, kt2), direct, rtol=1e-12, atol=1e-15)
    # kappa -> 0 is TWAP; a huge kappa sells at once without overflowing.
    np.testing.assert_allclose(almgren_chriss_trajectory(N, 0.0), 1 - np.arange(N + 1) / N)
    x = almgren_chriss_trajectory(N, 1e12)
    assert np.all(np.isfinite(x)) and x[0] == 1.0 and x[1] < 1e-5
    np.testing.assert_array_equal(almgren_chriss_trajectory(N, math.inf), np.r_[1.0, np.zeros(N)])
    with pytest.raises(ValueError, match="kappa_tilde_sq"):
        almgren_chriss_trajectory(N, -1.0)


def test_ac_calibrates_on_past_volatility_and_volume():
    # Alternating closes: the EWMA volatility is exactly r = 1 % = 100 bp; volume 1000 a bar; Q = 300; T = 6.
    env = CryptoFuturesExecutionEnv(
        alternating(), horizon_bars=6, quantity=300.0, side="sell", execution=NO_CAP, profile_days=1
    )
    ac = AlmgrenChriss(risk_aversion=2e-3)
    res = run_execution_episode(env, ac, options={"start": 30})
    expected = 2e-3 * 100.0 * math.sqrt(1000.0 / (6 * 300.0)) / 0.5
    assert ac.kappa_tilde_sq == pytest.approx(expected, rel=1e-9)
    planned = 300.0 * -np.diff(almgren_chriss_trajectory(6, expected))
    np.testing.assert_allclose(res.fills, planned, atol=0.0011)  # lot rounding, caught up next step
    assert np.all(np.diff(res.fills) < 0)  # front-loaded
    assert res.fills.sum() == pytest.approx(300.0)


def test_ac_without_risk_aversion_is_twap_and_more_aversion_trades_earlier():
    def fills(policy):
        env = CryptoFuturesExecutionEnv(
            alternating(), horizon_bars=6, quantity=300.0, side="buy", execution=NO_CAP, profile_days=1
        )
        return run_execution_episode(env, policy, options={"start": 30}).fills

    np.testing.assert_array_equal(fills(AlmgrenChriss(0.0)), fills(TWAP()))
    np.testing.assert_allclose(fills(TWAP()), [50.0] * 6, atol=1e-9)
    first = [fills(AlmgrenChriss(lam))[0] for lam in (1e-4, 1e-3, 1e-2)]
    assert first[0] < first[1] < first[2]


def test_ac_bad_arguments():
    with pytest.raises(ValueError, match="risk_aversion"):
        AlmgrenChriss(-1.0)
    with pytest.raises(ValueError, match="impact_coef"):
        AlmgrenChriss(1e-3, impact_coef=float("nan"))


# ------------------------------------------------------------------------------------------- VWAP


def test_vwap_follows_the_past_intraday_profile():
    vol = periodic_volume()
    env = CryptoFuturesExecutionEnv(
        make_market(np.full(len(vol), 100.0), vol),
        horizon_bars=8,
        quantity=100.0,
        execution=NO_CAP,
        profile_days=2,
    )
    res = run_execution_episode(env, VWAP(), options={"start": 50})
    # The volume repeats daily, so the profile of the two previous days is the fill bars' actual volume.
    expected = 100.0 * vol[51:59] / vol[51:59].sum()
    np.testing.assert_allclose(res.fills, expected, atol=0.0011)


def test_vwap_plan_ignores_the_future():
    vol = periodic_volume()
    changed = vol.copy()
    changed[51:] *= np.linspace(0.1, 10.0, len(vol) - 51)  # the future is different
    plans = []
    for v in (vol, changed):
        env = CryptoFuturesExecutionEnv(
            make_market(np.full(len(v), 100.0), v), horizon_bars=8, quantity=100.0, profile_days=2
        )
        env.reset(options={"start": 50})
        pol = VWAP()
        pol.reset(env)
        plans.append(pol.trajectory)
    np.testing.assert_array_equal(plans[0], plans[1])


# ------------------------------------------------------------------------------------------- runner, summary


def test_summarize_shortfall():
    s = summarize_shortfall([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["mean"] == 3.0 and s["median"] == 3.0 and s["q25"] == 2.0 and s["q75"] == 4.0 and s["n"] == 5
    assert s["std"] == pytest.approx(math.sqrt(2.5)) and s["sem"] == pytest.approx(math.sqrt(2.5 / 5))
    assert s["q05"] == pytest.approx(1.2) and s["q95"] == pytest.approx(4.8)
    for bad in ([], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="finite shortfalls"):
            summarize_shortfall(bad)


def _random_env(**kw):
    rng = np.random.default_rng(0)
    n = 24 * 3 + 40
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.005, n)))
    vol = periodic_volume(n) * np.exp(rng.normal(0, 0.3, n))
    return CryptoFuturesExecutionEnv(make_market(close, vol), horizon_bars=6, profile_days=2, **kw)


def test_evaluate_execution_pairs_episodes_across_policies():
    env = _random_env()
    starts = evenly_spaced_starts(env, 5)
    assert starts[0] == env.min_start and starts[-1] == env.max_start and len(starts) == 5
    out = evaluate_execution(
        env, {"twap": TWAP(), "vwap": VWAP(), "now": lambda obs, info: 1.0}, starts=starts, seed=3
    )
    keys = [[(r.start, r.side, r.quantity) for r in out[name]["results"]] for name in out]
    assert keys[0] == keys[1] == keys[2]
    assert [k[0] for k in keys[0]] == starts
    for name in out:
        assert out[name]["summary"]["n"] == 5
        np.testing.assert_allclose(out[name]["summary"]["mean"], out[name]["shortfall_bps"].mean())
    assert not np.array_equal(out["twap"]["shortfall_bps"], out["now"]["shortfall_bps"])
    with pytest.raises(ValueError, match="n_episodes"):
        evaluate_execution(env, {"twap": TWAP()})
    with pytest.raises(ValueError, match="policies"):
        evaluate_execution(env, {}, n_episodes=2)


def test_runner_accepts_native_actions_and_discrete_envs():
    env = _random_env(action="discrete", n_levels=3, execution=NO_CAP)
    res = run_execution_episode(env, TWAP(), seed=1)  # fractions map to the nearest level
    assert res.remaining[-1] == 0.0 and res.rewards.sum() == pytest.approx(-res.shortfall_bps)
    res = run_execution_episode(env, lambda obs, info: 2, seed=1)  # native action: everything now
    assert len(res.rewards) == 1 and res.fills[0] == pytest.approx(res.quantity)


def test_schedule_policy_needs_reset():
    with pytest.raises(ValueError, match="reset"):
        TWAP()(np.zeros(3), {"remaining": 1.0, "step": 0, "quantity": 1.0})
