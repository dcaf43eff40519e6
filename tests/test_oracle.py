"""envs.baselines.planted_oracle: a planted market's known-optimal policy, threshold chosen on validation."""

from __future__ import annotations

from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest

from envs.baselines import (
    ORACLE_THRESHOLDS,
    PlantedOracle,
    baseline_policies,
    buy_and_hold,
    is_planted,
    planted_oracle,
    run_episode,
)
from envs.contract import ExecutionConfig
from envs.loaders import load_market
from envs.market import MarketData, load_embedded
from envs.synthetic import simulate
from envs.trading_env import CryptoFuturesEnv

SPEC = "synthetic:planted:n_bars=6000,seed=1,phi=0.2"
SIM = simulate("planted", n_bars=6000, seed=1, phi=0.2)
VAL, TEST = (3000, 4000), (4000, 6000)
NO_IMPACT = ExecutionConfig(impact_coef=0.0, max_participation=None)


def period_env(market: MarketData, period: tuple[int, int], **kw) -> tuple[CryptoFuturesEnv, int]:
    """An env over ``period`` plus the warm-up bars before it, and the local first decision bar (as
    agents.env_factory.make_period_env does)."""
    warm = CryptoFuturesEnv(market, window=4, episode_bars=None, execution=NO_IMPACT).min_start
    a, b = period
    env = CryptoFuturesEnv(market.slice(a - warm, b), window=4, episode_bars=None, execution=NO_IMPACT, **kw)
    return env, warm


class Spy(gym.Wrapper):
    """Records every bar the policy was shown."""

    def __init__(self, env):
        super().__init__(env)
        self.seen: list[int] = []

    def reset(self, **kw):
        obs, info = self.env.reset(**kw)
        self.seen.append(info["bar_index"])
        return obs, info

    def step(self, action):
        out = self.env.step(action)
        self.seen.append(out[4]["bar_index"])
        return out


def test_threshold_is_the_validation_argmax_and_the_oracle_beats_the_baselines():
    val_env, start = period_env(SIM.market, VAL)
    spy = Spy(val_env)
    oracle = planted_oracle(SIM, spy, val_start=start)
    assert set(oracle.val_scores) == set(ORACLE_THRESHOLDS)
    # Each score is that threshold's validation Sharpe; the best one is kept.
    for thr in (0.0, 0.002):
        res = run_episode(val_env, PlantedOracle(SIM, thr), start=start, short_ratios="keep")
        assert oracle.val_scores[thr] == res.metrics["sharpe"]
    assert oracle.val_scores[oracle.threshold] == max(oracle.val_scores.values())
    # The selection saw the validation bars only (local indices: warm-up + 1000 bars).
    assert min(spy.seen) == start and max(spy.seen) == start + VAL[1] - VAL[0] - 1
    # On the test period the oracle trades the planted signal profitably, and better than buy-and-hold.
    test_env, tstart = period_env(SIM.market, TEST)
    m = run_episode(test_env, oracle, start=tstart).metrics
    bh = run_episode(test_env, buy_and_hold, start=tstart).metrics
    assert m["sharpe"] > 1.0 and m["sharpe"] > bh["sharpe"]
    # Its positions are the planted sign policy's at that threshold.
    res = run_episode(test_env, oracle, start=tstart)
    pos = SIM.oracle_positions(threshold=oracle.threshold)[TEST[0] : TEST[1] - 1]
    np.testing.assert_array_equal(np.sign(res.positions), pos)


def test_test_period_data_does_not_move_the_threshold():
    # Rewrite everything after the validation period: reversed, amplified returns (a market where the
    # oracle's test result changes completely). The chosen threshold and every validation score stay.
    m = SIM.market
    k = VAL[1]
    scale = np.ones(len(m))
    scale[k:] = np.exp(np.cumsum(-3.0 * np.diff(np.log(m.close), prepend=np.log(m.close[0])))[k:])
    scale[k:] /= scale[k]
    changed = MarketData(
        timestamps=m.timestamps,
        open=m.open * scale,
        high=m.high * scale,
        low=m.low * scale,
        close=m.close * scale,
        volume=m.volume,
        funding_rate=m.funding_rate,
        bar_seconds=m.bar_seconds,
        source=m.source,
    )
    other = replace(SIM, market=changed)
    a = planted_oracle(SIM, period_env(SIM.market, VAL)[0], val_start=period_env(SIM.market, VAL)[1])
    b = planted_oracle(other, period_env(changed, VAL)[0], val_start=period_env(changed, VAL)[1])
    assert a.threshold == b.threshold and a.val_scores == b.val_scores
    # ...while the test period did change under the oracle (so this test can fail).
    ta, ia = period_env(SIM.market, TEST)
    tb, ib = period_env(changed, TEST)
    assert (
        run_episode(ta, a, start=ia).metrics["total_return"]
        != run_episode(tb, b, start=ib).metrics["total_return"]
    )


def test_oracle_from_a_spec_string_matches_the_simulation():
    market = load_market(SPEC)
    env, start = period_env(market, VAL)
    oracle = planted_oracle(SPEC, env, val_start=start, thresholds=(0.0, 0.001))
    assert oracle.threshold in (0.0, 0.001)
    np.testing.assert_array_equal(oracle.positions, SIM.oracle_positions(threshold=oracle.threshold))


def test_only_planted_markets_have_an_oracle():
    env, start = period_env(SIM.market, VAL)
    with pytest.raises(ValueError, match="only the 'planted'"):
        planted_oracle(simulate("gbm", n_bars=500, seed=0), env)
    with pytest.raises(ValueError, match="only the 'planted'"):
        planted_oracle("synthetic:garch:n_bars=500", env)
    with pytest.raises(ValueError, match="only planted synthetic markets"):
        planted_oracle("btcusdt-1h", env)
    with pytest.raises(ValueError, match="does not carry the planted signal"):
        planted_oracle(SIM.market, env)
    # A market that is not the simulation's: its signal is unknown.
    other, s = period_env(load_embedded(), (200, 400))
    with pytest.raises(ValueError, match="not the planted simulation's"):
        run_episode(other, PlantedOracle(SIM), start=s)
    with pytest.raises(ValueError, match="metric"):
        planted_oracle(SIM, env, metric="max_drawdown")
    with pytest.raises(ValueError, match="threshold"):
        PlantedOracle(SIM, -0.1)
    with pytest.raises(ValueError, match="reset"):
        PlantedOracle(SIM)(np.zeros(1), {"bar_index": 0})


def test_baseline_policies_add_the_oracle_for_planted_markets_only():
    env, start = period_env(SIM.market, VAL)
    assert is_planted(SPEC) and is_planted(SIM) and not is_planted("btcusdt-1h")
    assert not is_planted("synthetic:gbm") and not is_planted(SIM.market)
    pols = baseline_policies(SPEC, env, val_start=start)
    assert list(pols) == ["flat", "buy_and_hold", "trend", "oracle"]
    assert pols["oracle"].threshold in ORACLE_THRESHOLDS
    assert list(baseline_policies("btcusdt-1h", env)) == ["flat", "buy_and_hold", "trend"]
    assert list(baseline_policies(SPEC)) == ["flat", "buy_and_hold", "trend"]  # no validation period
    assert baseline_policies()["trend"] is not baseline_policies()["trend"]  # fresh: it keeps state
