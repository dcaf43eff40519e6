"""envs.baselines: the reference policies and run_episode."""

from __future__ import annotations

import numpy as np
import pytest

from envs.baselines import BuyAndHold, EpisodeResult, buy_and_hold, flat, momentum, run_episode
from envs.market import load_embedded
from envs.metrics import METRIC_KEYS
from envs.trading_env import CryptoFuturesEnv

MARKET = load_embedded()


def test_flat_keeps_the_money():
    env = CryptoFuturesEnv(MARKET, window=8, episode_bars=100)
    res = run_episode(env, flat, start=200)
    assert isinstance(res, EpisodeResult)
    assert res.start == 200 and res.truncated and not res.terminated
    np.testing.assert_array_equal(res.equity, np.full(101, 10_000.0))
    assert tuple(res.metrics) == METRIC_KEYS and res.metrics["total_return"] == 0.0
    assert len(res.positions) == len(res.rewards) == 100 and len(res.infos) == 101


def test_buy_and_hold_buys_once_and_holds():
    env = CryptoFuturesEnv(MARKET, window=8, episode_bars=100, leverage=1.0)
    res = run_episode(env, buy_and_hold, start=200)
    # 1x long from the open of bar 201 to the close of bar 300: one order (10000 / close_200 BTC, rounded down
    # to the lot), held: return = q * (close_300 - fill) / 10000 - entry fee - funding.
    first = res.infos[1]
    q = first["position"]
    assert q == pytest.approx(np.floor(10_000 / MARKET.close[200] / 0.001) * 0.001)
    assert np.all(res.positions == q)
    assert res.infos[-1]["fees_paid"] == first["fees_paid"] > 0
    fill = first["turnover"] / q
    expected = (q * (MARKET.close[300] - fill) - first["fees_paid"] - res.infos[-1]["funding_paid"]) / 10_000
    assert res.metrics["total_return"] == pytest.approx(expected, rel=1e-9)


def test_buy_and_hold_discrete_and_short():
    env = CryptoFuturesEnv(MARKET, window=8, episode_bars=30, action="discrete")
    res = run_episode(env, buy_and_hold, start=200)
    assert np.all(res.positions > 0)
    env = CryptoFuturesEnv(MARKET, window=8, episode_bars=30)
    res = run_episode(env, BuyAndHold(-0.5), start=200)
    assert np.all(res.positions == res.positions[0]) and res.positions[0] < 0
    with pytest.raises(ValueError, match="reset"):
        BuyAndHold()(np.zeros(3), {"position": 0.0})


def test_momentum_is_causal_and_works_with_discrete_env():
    pol = momentum(lookback=12)
    env = CryptoFuturesEnv(MARKET, window=8, episode_bars=50, action="discrete")
    res = run_episode(env, pol, start=300)
    # position sign after each step = sign of close[t] - close[t - 12] at the decision bar t (or flat if
    # equal)
    for info, pos in zip(res.infos[:-1], res.positions, strict=True):
        t = info["bar_index"]
        expected = np.sign(MARKET.close[t] - MARKET.close[t - 12])
        assert np.sign(pos) == expected


def test_momentum_without_reset_and_bad_arguments():
    with pytest.raises(ValueError, match="reset"):
        momentum()(np.zeros(3), {"bar_index": 100})
    with pytest.raises(ValueError, match="lookback"):
        momentum(lookback=0)


def test_run_episode_same_seed_same_result_and_max_steps():
    env = CryptoFuturesEnv(MARKET, window=8, episode_bars=60)
    a = run_episode(env, momentum(24), seed=5)
    b = run_episode(env, momentum(24), seed=5)
    assert a.start == b.start
    np.testing.assert_array_equal(a.equity, b.equity)
    c = run_episode(env, buy_and_hold, seed=5, max_steps=10)
    assert len(c.equity) == 11 and c.metrics["n_bars"] == 10
