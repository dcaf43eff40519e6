"""envs.baselines: the reference policies and run_episode, through the real env."""

from __future__ import annotations

import math
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.baselines import (
    BuyAndHold,
    EpisodeResult,
    Trend,
    buy_and_hold,
    flat,
    holding_env,
    run_episode,
    trend,
)
from envs.contract import ExecutionConfig
from envs.market import MarketData, load_embedded
from envs.metrics import METRIC_KEYS
from envs.trading_env import CryptoFuturesEnv

MARKET = load_embedded()


def n_orders(res: EpisodeResult) -> int:
    return sum(1 for i in res.infos[1:] if i["trade_qty"] != 0.0)


def test_flat_keeps_the_money():
    env = CryptoFuturesEnv(MARKET, window=8, episode_bars=100)
    res = run_episode(env, flat, start=200)
    assert isinstance(res, EpisodeResult) and res.hold_deadband is None
    assert res.start == 200 and res.truncated and not res.terminated
    np.testing.assert_array_equal(res.equity, np.full(101, 10_000.0))
    assert tuple(res.metrics) == METRIC_KEYS and res.metrics["total_return"] == 0.0
    assert res.metrics["n_bars"] == 101 and res.metrics["n_returns"] == 100
    assert math.isnan(res.metrics["sharpe"])  # 100 hours: too short for an annualized ratio
    assert run_episode(env, flat, start=200, short_ratios="keep").metrics["sharpe"] == 0.0
    assert len(res.positions) == len(res.rewards) == 100 and len(res.infos) == 101


def test_holding_env_copies_costs_and_only_widens_the_deadband():
    env = gym.wrappers.RecordEpisodeStatistics(
        CryptoFuturesEnv(MARKET, window=8, episode_bars=40, action="discrete", leverage=2.0, n_levels=5)
    )
    twin = holding_env(env, 0.4)
    u = env.unwrapped
    assert twin.levels is None and twin.execution == replace(u.execution, deadband=0.4)
    assert (twin.leverage, twin.margin, twin.window, twin.episode_bars) == (2.0, u.margin, 8, 40)
    # Every target differs from the last by >= 0.5, clearing both dead-bands: the same orders, fills, fees,
    # funding and equity, to the last bit.
    targets = [1.0, 0.0, -1.0, -0.5, 0.5, 0.0, -0.5, 0.5] * 5
    out = []
    for e, act in ((env, u.levels.index), (twin, twin.target_to_action)):
        e.reset(options={"start": 300})
        out.append([e.step(act(x))[4] for x in targets])
    for a, b in zip(*out, strict=True):
        assert (a["equity"], a["trade_qty"], a["fees_paid"]) == (b["equity"], b["trade_qty"], b["fees_paid"])
    assert all(i["trade_qty"] != 0 for i in out[1])
    with pytest.raises(ValueError, match="CryptoFuturesEnv"):
        holding_env(gym.make("CartPole-v1"), 0.5)
    with pytest.raises(ValueError, match="deadband"):
        holding_env(env, 1.0)


@pytest.mark.parametrize("action", ["continuous", "discrete"])
def test_buy_and_hold_enters_once_and_holds_the_quantity(action):
    # Default 3x leverage: asking for a full long every bar would rebalance whenever the position's fraction
    # drifts by 1 % (a 0.5 % price move); buy-and-hold must not.
    # 350 bars: the price falls ~15 % below the entry (the fraction reaches ~1.75x the cap) but not the ~20 %
    # that doubles it, where the holding env's dead-band would cut the position back (see holding_env).
    env = CryptoFuturesEnv(MARKET, window=8, episode_bars=350, action=action)
    res = run_episode(env, buy_and_hold, start=200)
    assert res.hold_deadband == pytest.approx(0.9999)
    first = res.infos[1]
    q = first["position"]
    # One order of 3 * 10000 / close_200 BTC, rounded down to the 0.001 lot, filled at the open of bar 201 and
    # trimmed there (by a few lots at most) so that the initial margin after the fill fits the equity left.
    ordered = math.floor(3 * 10_000 / MARKET.close[200] / 0.001) * 0.001
    assert ordered - 0.005 <= q <= ordered + 1e-12
    assert n_orders(res) == 1 and np.all(res.positions == q)
    fill = first["turnover"] / q
    assert q * fill / 3 <= 10_000 - first["fees_paid"] + 1e-9
    assert MARKET.open[201] < fill < MARKET.open[201] * 1.001  # spread + impact, paid once
    last = res.infos[-1]
    assert last["fees_paid"] == first["fees_paid"] == pytest.approx(q * fill * 0.0005)
    assert res.metrics["turnover"] == pytest.approx(q * fill / 10_000)  # = the entry, ~3x
    # The held position went above the maximum fraction (price below the entry), where a target-1.0 policy
    # in the env itself would have been cut back.
    frac = q * np.array([i["price"] for i in res.infos[1:]]) / (3 * res.equity[1:])
    assert frac.max() > 1.01
    # P&L of a held quantity: q * (close_end - fill) - the entry fee - funding.
    expected = (q * (MARKET.close[550] - fill) - first["fees_paid"] - last["funding_paid"]) / 10_000
    assert res.metrics["total_return"] == pytest.approx(expected, rel=1e-9)


def test_buy_and_hold_same_in_both_action_modes_unlike_a_repeated_target():
    kw = {"window": 8, "episode_bars": 600}
    cont = run_episode(CryptoFuturesEnv(MARKET, **kw), buy_and_hold, start=200)
    disc = run_episode(CryptoFuturesEnv(MARKET, action="discrete", **kw), buy_and_hold, start=200)
    np.testing.assert_array_equal(cont.equity, disc.equity)
    # The old baseline: the long level every bar, in the env itself, rebalances to constant leverage (with a
    # narrow no-trade band; the default 0.2 band hides most of those rebalances).
    env = CryptoFuturesEnv(MARKET, action="discrete", execution=ExecutionConfig(deadband=0.01), **kw)
    old = run_episode(env, lambda obs, info: 2, start=200)
    assert n_orders(old) > 100 and old.metrics["turnover"] > 2 * disc.metrics["turnover"]


def test_buy_and_hold_short_and_bad_size():
    env = CryptoFuturesEnv(MARKET, window=8, episode_bars=300, action="discrete")
    res = run_episode(env, BuyAndHold(-0.5), start=200)
    assert n_orders(res) == 1 and np.all(res.positions == res.positions[0]) and res.positions[0] < 0
    q = -res.positions[0]
    assert q == pytest.approx(math.floor(0.5 * 3 * 10_000 / MARKET.close[200] / 0.001) * 0.001)
    for bad in (0, 1.5, -2, True, "1"):
        with pytest.raises(ValueError, match="size"):
            BuyAndHold(bad)


class FixedSignal(Trend):
    """A Trend whose signal is given, to test the band decisions alone."""

    def __init__(self, z, **kw):
        super().__init__(**kw)
        self.z = np.asarray(z, dtype=float)

    def signal(self, close):
        return self.z


def _targets(pol: Trend, n: int) -> list[float]:
    pol.reset(CryptoFuturesEnv(MARKET, window=8, episode_bars=10))
    return [pol(np.zeros(1), {"bar_index": t}) for t in range(n)]


def test_trend_band_decisions():
    z = [np.nan, 0.5, 1.5, 0.9, -0.5, -1.0, -1.2, 0.3, 1.0, 1.01, -3.0]
    # Enter only beyond the band (strictly), hold inside it, flip when the far side is crossed.
    assert _targets(FixedSignal(z, band=1.0), 11) == [0, 0, 1, 1, 1, 1, -1, -1, -1, 1, -1]
    assert _targets(FixedSignal(z, band=1.0, long_only=True), 11) == [0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 0]
    assert _targets(FixedSignal(z, band=0.0, size=0.5), 11) == [
        0, 0.5, 0.5, 0.5, -0.5, -0.5, -0.5, 0.5, 0.5, 0.5, -0.5
    ]  # fmt: skip


def test_trend_signal_hand_computed():
    # lookback 1, vol_bars 2: z_t = r_t / std(r_{t-1}, r_t) = r_t / (|r_t - r_{t-1}| / 2), from bar 2 on.
    close = np.array([100.0, 110.0, 99.0, 108.9, 108.9])
    r1, r2 = math.log(1.1), math.log(0.9)
    z = Trend(lookback=1, vol_bars=2, band=1.0).signal(close)
    assert np.isnan(z[:2]).all()
    assert z[2] == pytest.approx(r2 / (abs(r2 - r1) / 2))  # -1.050: a fall beyond the band -> short
    assert z[3] == pytest.approx(r1 / (abs(r1 - r2) / 2))  # +0.950: inside the band -> hold the short
    assert z[4] == 0.0  # no move
    # lookback 2, vol_bars 3 on a steady 1 % a bar rise with one 3 % bar: std of (0.01, 0.01, 0.03) etc.
    lr = np.array([0.0, 0.01, 0.01, 0.03, 0.01, 0.01])
    close = 100 * np.exp(np.cumsum(lr))
    z = Trend(lookback=2, vol_bars=3).signal(close)
    for t in (3, 4, 5):
        sd = np.std(lr[t - 2 : t + 1])
        assert z[t] == pytest.approx((lr[t] + lr[t - 1]) / (sd * math.sqrt(2)))


def test_trend_through_the_env_holds_between_decisions():
    pol = trend(lookback=24, band=0.5, vol_bars=48)
    for action in ("continuous", "discrete"):
        env = CryptoFuturesEnv(MARKET, window=8, episode_bars=700, leverage=1.0, action=action)
        res = run_episode(env, pol, start=100)
        z = pol.signal(MARKET.close)
        state, changes, expect = 0, 0, []
        for info in res.infos[:-1]:
            zt = z[info["bar_index"]]
            new = 1 if zt > 0.5 else (-1 if zt < -0.5 else state)
            changes += new != state
            state = new
            expect.append(state)
        assert np.array_equal(np.sign(res.positions), expect)
        # An order exactly when the state changes (at 1x the fraction does not drift, so nothing else).
        assert n_orders(res) == changes and 3 <= changes < 60


def _market(close: np.ndarray) -> MarketData:
    n = len(close)
    return MarketData(
        timestamps=np.arange(n, dtype=np.int64) * 3600 * 10**9,
        open=close,
        high=close * 1.001,
        low=close * 0.999,
        close=close,
        volume=np.full(n, 1000.0),
        funding_rate=np.zeros(n),
        bar_seconds=3600,
    )


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(60, 198),
    seed=st.integers(0, 10_000),
    scale=st.floats(0.2, 5.0),
)
def test_trend_has_no_look_ahead(k, seed, scale):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(0.01 * rng.standard_normal(200)))
    later = close.copy()
    later[k + 1 :] = later[k + 1 :] * scale * np.exp(0.05 * rng.standard_normal(199 - k))
    pols = [Trend(lookback=12, vol_bars=24, band=0.3) for _ in range(2)]
    acts = []
    for pol, c in zip(pols, (close, later), strict=True):
        pol.reset(CryptoFuturesEnv(_market(c), window=4, episode_bars=10, features=None))
        acts.append([pol(np.zeros(1), {"bar_index": t}) for t in range(k + 1)])
    assert acts[0] == acts[1]
    np.testing.assert_array_equal(pols[0].signal(close)[: k + 1], pols[1].signal(later)[: k + 1])


def test_trend_errors_and_alias():
    with pytest.raises(ValueError, match="reset"):
        trend()(np.zeros(3), {"bar_index": 100})
    for kw, match in (
        ({"lookback": 0}, "lookback"),
        ({"vol_bars": 1}, "vol_bars"),
        ({"band": -1.0}, "band"),
        ({"band": math.inf}, "band"),
        ({"size": 0.0}, "size"),
    ):
        with pytest.raises(ValueError, match=match):
            trend(**kw)
    assert trend().hold_deadband == pytest.approx(0.9999)


def test_run_episode_same_seed_same_result_and_max_steps():
    env = CryptoFuturesEnv(MARKET, window=8, episode_bars=60)
    a = run_episode(env, trend(lookback=12, vol_bars=24), seed=5)
    b = run_episode(env, trend(lookback=12, vol_bars=24), seed=5)
    assert a.start == b.start
    np.testing.assert_array_equal(a.equity, b.equity)
    c = run_episode(env, buy_and_hold, seed=5, max_steps=10)
    assert len(c.equity) == 11 and c.metrics["n_bars"] == 11 and c.metrics["n_returns"] == 10
    assert c.metrics["turnover"] > 0 and not c.truncated


def test_run_episode_counts_a_liquidation():
    # 10x long into a 30 % crash: liquidated on the crash bar; the episode stops there.
    close = np.r_[np.full(80, 100.0), np.full(40, 70.0)]
    env = CryptoFuturesEnv(_market(close), window=4, episode_bars=None, leverage=10.0,
                           execution=ExecutionConfig(impact_coef=0.0, max_participation=None))  # fmt: skip
    res = run_episode(env, buy_and_hold, start=70)
    assert res.terminated and res.metrics["liquidations"] == 1 and res.metrics["total_return"] < -0.9


def test_buy_and_hold_is_cut_back_only_at_twice_its_size():
    # 3x long, then a steady slide of 25 %: the position's fraction (1 + x) / (1 + 3x) passes 2 at x = -20 %,
    # where the holding env's dead-band (0.9999) is finally exceeded and the env sells back to 1.0.
    close = np.r_[np.full(60, 100.0), np.linspace(100.0, 75.0, 51)[1:]]
    env = CryptoFuturesEnv(_market(close), window=4, episode_bars=None,
                           execution=ExecutionConfig(impact_coef=0.0, max_participation=None))  # fmt: skip
    res = run_episode(env, buy_and_hold, start=55)
    orders = [(i["bar_index"], i["trade_qty"]) for i in res.infos[1:] if i["trade_qty"] != 0.0]
    assert len(orders) == 2 and orders[0][1] > 0 and orders[1][1] < 0
    bar = orders[1][0]  # filled at this bar's open, decided at the previous close
    entry = res.infos[1]["turnover"] / orders[0][1]
    x = close[bar - 1] / entry - 1
    assert -0.21 < x <= -0.19 and not res.terminated
