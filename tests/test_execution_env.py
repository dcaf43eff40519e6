"""Tests of the optimal-execution env ``CryptoFuturesExecution-v0`` (issue 7).

Money fixtures are hand-computed on tiny markets: a constant price (no volatility), and a price that
alternates between two levels so that every squared log return is ``r^2`` and the EWMA volatility is exactly
``r``.
"""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers the ids)
from envs.contract import ExecutionConfig
from envs.execution_baselines import TWAP, VWAP, AlmgrenChriss, run_execution_episode
from envs.execution_env import OBS_NAMES, CryptoFuturesExecutionEnv
from envs.market import MarketData


def make_market(close, volume, *, open_=None, high=None, low=None, start="2024-01-01") -> MarketData:
    close = np.asarray(close, dtype=float)
    n = len(close)
    open_ = np.r_[close[0], close[:-1]] if open_ is None else np.asarray(open_, dtype=float)
    high = np.maximum(open_, close) if high is None else high
    low = np.minimum(open_, close) if low is None else low
    volume = np.broadcast_to(np.asarray(volume, dtype=float), (n,)).copy()
    idx = pd.date_range(start, periods=n, freq="1h", tz="UTC")
    df = pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume, "funding_rate": 0.0},
        index=idx,
    )
    return MarketData.from_frame(df, source="test")


def random_market(n: int, seed: int, *, vol: float = 0.004) -> MarketData:
    """Random walk with an intraday volume profile and lognormal volume noise."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, vol, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, vol / 10, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, vol / 2, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, vol / 2, n)))
    hours = np.arange(n) % 24
    volume = 1000.0 * (1.0 + 0.8 * np.cos(2 * np.pi * (hours - 14) / 24)) * np.exp(rng.normal(0, 0.3, n))
    return make_market(close, volume, open_=open_, high=high, low=low)


def alternating_market(n: int, r: float, volume: float = 1000.0) -> MarketData:
    close = 100.0 * np.exp(r * (np.arange(n) % 2))
    return make_market(close, volume)


NO_IMPACT = ExecutionConfig(taker_fee=0.0004, half_spread_bps=2.0, impact_coef=0.0, max_participation=None)


def run(env, fractions, *, seed=None, options=None):
    """Step through an episode sending the given fractions; returns obs list, rewards, infos (reset first)."""
    obs, info = env.reset(seed=seed, options=options)
    observations, rewards, infos = [obs], [], [info]
    for k in range(env.horizon):
        obs, r, term, trunc, info = env.step(env.fraction_to_action(fractions[k]))
        assert not trunc
        observations.append(obs)
        rewards.append(r)
        infos.append(info)
        if term:
            break
    return observations, np.array(rewards), infos


# ------------------------------------------------------------------------------------------- money fixtures


@pytest.mark.parametrize("side, expected_bps", [("buy", 6.0008), ("sell", 5.9992)])
def test_twap_on_constant_price_costs_fees_plus_half_spread(side, expected_bps):
    # Price 100 everywhere, no impact, half-spread 2 bp, taker fee 4 bp, Q = 8 over T = 4 bars.
    # Buy: each child of 2 fills at 100.02; shortfall = 8 * 0.02 + 8 * 100.02 * 0.0004 = 0.480064 USDT
    # = 0.480064 / 800 * 1e4 = 6.0008 bp = half-spread (2) + fee on the spread-inclusive price (4 * 1.0002).
    # Sell: fills at 99.98: 8 * 0.02 + 8 * 99.98 * 0.0004 = 0.479936 -> 5.9992 bp.
    env = CryptoFuturesExecutionEnv(
        make_market(np.full(60, 100.0), 1e6),
        horizon_bars=4,
        quantity=8.0,
        side=side,
        execution=NO_IMPACT,
        profile_days=1,
    )
    res = run_execution_episode(env, TWAP(), options={"start": 30})
    price = 100.02 if side == "buy" else 99.98
    np.testing.assert_allclose(res.fills, [2.0, 2.0, 2.0, 2.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.fill_prices, [price] * 4, rtol=1e-15)
    assert res.summary["shortfall_quote"] == pytest.approx(8 * 0.02 + 8 * price * 0.0004, rel=1e-12)
    assert res.shortfall_bps == pytest.approx(expected_bps, rel=1e-12)
    assert res.summary["spread_bps"] == pytest.approx(2.0, rel=1e-12)
    assert res.summary["fees_bps"] == pytest.approx(expected_bps - 2.0, rel=1e-12)
    assert res.summary["impact_bps"] == pytest.approx(0.0, abs=1e-12)
    assert res.summary["timing_bps"] == pytest.approx(0.0, abs=1e-12)
    # Each step costs the same quarter: -(2 * 0.02 + 2 * price * 0.0004) / 800 * 1e4.
    np.testing.assert_allclose(res.rewards, [-expected_bps / 4] * 4, rtol=1e-12)
    assert res.rewards.sum() == pytest.approx(-res.shortfall_bps, rel=1e-12)
    assert res.summary["forced_qty"] == 0.0


def _alt_env(**kw):
    ex = ExecutionConfig(taker_fee=0.0004, half_spread_bps=1.0, impact_coef=0.5, max_participation=0.1)
    kw = {"horizon_bars": 4, "execution": ex, "profile_days": 1, "side": "buy", **kw}
    return CryptoFuturesExecutionEnv(alternating_market(60, 0.01), **kw)


def test_forced_completion_fires_at_the_deadline_and_ignores_the_participation_cap():
    # Q = 500, bar volume 1000, cap 10 % -> at most 100 per bar. TWAP asks 125, 150, 175 then the rest: the
    # cap fills 100, 100, 100; the deadline order takes the remaining 200 at once (100 beyond the agent's
    # capped order).
    env = _alt_env(quantity=500.0)
    t0 = 30  # close[30] = 100 (even bar), opens alternate: open[31] = 100, open[32] = 100 e^0.01, ...
    res = run_execution_episode(env, TWAP(), options={"start": t0})
    np.testing.assert_allclose(res.fills, [100.0, 100.0, 100.0, 200.0], atol=1e-9)
    assert [i["forced"] for i in res.infos[1:]] == [False, False, False, True]
    assert res.infos[-1]["forced_qty"] == pytest.approx(100.0)
    assert len(res.rewards) == 4 and res.remaining[-1] == 0.0
    # Hand computation: sigma = r = 0.01 exactly, impact = 0.5 * 0.01 * sqrt(q / 1000), half-spread 1 bp.
    opens = [100.0, 100.0 * math.exp(0.01), 100.0, 100.0 * math.exp(0.01)]
    qs = [100.0, 100.0, 100.0, 200.0]
    prices = [o * (1 + 1e-4 + 0.5 * 0.01 * math.sqrt(q / 1000)) for o, q in zip(opens, qs, strict=True)]
    np.testing.assert_allclose(res.fill_prices, prices, rtol=1e-12)
    shortfall = sum(q * (p - 100.0) for q, p in zip(qs, prices, strict=True)) + sum(
        q * p * 0.0004 for q, p in zip(qs, prices, strict=True)
    )
    assert res.summary["shortfall_quote"] == pytest.approx(shortfall, rel=1e-12)
    assert res.shortfall_bps == pytest.approx(shortfall / (500 * 100.0) * 1e4, rel=1e-12)
    assert res.rewards.sum() == pytest.approx(-res.shortfall_bps, rel=1e-12)


def test_waiting_to_the_deadline_forces_one_market_order_with_its_impact():
    env = _alt_env(quantity=500.0, side="sell")
    obs, rewards, infos = run(env, [0.0, 0.0, 0.0, 0.0], options={"start": 30})
    assert [i["fill_qty"] for i in infos[1:4]] == [0.0, 0.0, 0.0]
    assert [i["remaining"] for i in infos[1:4]] == [500.0, 500.0, 500.0]
    last = infos[-1]
    assert len(rewards) == 4 and last["forced"] and last["forced_qty"] == pytest.approx(500.0)
    assert last["fill_qty"] == pytest.approx(500.0)  # 5x the cap: a forced order sweeps the book
    open_t = 100.0 * math.exp(0.01)  # open of bar 34
    assert last["fill_price"] == pytest.approx(open_t * (1 - 1e-4 - 0.5 * 0.01 * math.sqrt(0.5)), rel=1e-12)
    assert sum(rewards) == pytest.approx(-last["execution"]["shortfall_bps"], rel=1e-12)
    # Marked to market: the held quantity's price moves are charged when they happen (sell: a rise hurts).
    move = 500.0 * (100.0 * math.exp(0.01) - 100.0) / (500.0 * 100.0) * 1e4
    # close[31] = 100 e^0.01 (a rise: good for a seller), close[32] = 100 again.
    assert rewards[0] == pytest.approx(move, rel=1e-12)
    assert rewards[1] == pytest.approx(-move, rel=1e-12)


def test_transient_impact_carries_into_the_next_fill():
    # Two equal children one bar apart with impact_halflife = 1 (rho = 0.5): the second fill's reference is
    # displaced by rho * I_1 in the trade's direction.
    env = _alt_env(quantity=100.0, horizon_bars=2, impact_halflife=1.0)
    res = run_execution_episode(env, TWAP(), options={"start": 30})
    i1 = 0.5 * 0.01 * math.sqrt(50 / 1000)
    p1 = 100.0 * (1 + 1e-4 + i1)
    ref2 = 100.0 * math.exp(0.01) * (1 + 0.5 * i1)
    p2 = ref2 * (1 + 1e-4 + i1)
    np.testing.assert_allclose(res.fill_prices, [p1, p2], rtol=1e-12)
    no_decay = run_execution_episode(_alt_env(quantity=100.0, horizon_bars=2), TWAP(), options={"start": 30})
    assert res.shortfall_bps > no_decay.shortfall_bps


# ------------------------------------------------------------------------------------------------ properties

_RANDOM = random_market(24 * 3 + 60, seed=11)
_ENVS = {
    (mode, hl): CryptoFuturesExecutionEnv(
        _RANDOM,
        horizon_bars=8,
        profile_days=2,
        action=mode,
        n_levels=5,
        impact_halflife=hl,
        quantity_adv=(0.005, 0.2),
    )
    for mode in ("continuous", "discrete")
    for hl in (None, 2.0)
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(["continuous", "discrete"]),
    hl=st.sampled_from([None, 2.0]),
    seed=st.integers(0, 2**31 - 1),
    actions=st.lists(st.floats(-1.0, 1.0), min_size=8, max_size=8),
)
def test_rewards_sum_to_the_reported_shortfall(mode, hl, seed, actions):
    env = _ENVS[(mode, hl)]
    obs, info = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    rewards, fills, cost = [], [], 0.0
    s, q0, p0 = info["side"], info["quantity"], info["arrival_price"]
    done = False
    k = 0
    while not done:
        a = (
            np.array([actions[k]], dtype=np.float32)
            if mode == "continuous"
            else int(round((actions[k] + 1) * 2))
        )
        obs, r, done, trunc, info = env.step(a)
        assert not trunc and env.observation_space.contains(obs)
        assert info["fee"] >= 0 and info["fill_qty"] >= 0
        if info["fill_qty"]:
            cost += s * info["fill_qty"] * (info["fill_price"] - p0) + info["fee"]
        rewards.append(r)
        fills.append(info["fill_qty"])
        k += 1
    ex = info["execution"]
    assert k <= 8 and info["remaining"] == 0.0
    assert sum(fills) == pytest.approx(q0, rel=1e-9)
    scale = 1e4 / (q0 * p0)
    assert ex["shortfall_quote"] == pytest.approx(cost, rel=1e-9, abs=1e-9 * q0 * p0)
    assert sum(rewards) == pytest.approx(-ex["shortfall_bps"], rel=1e-9, abs=1e-9)
    parts = ex["timing_bps"] + ex["spread_bps"] + ex["impact_bps"] + ex["fees_bps"]
    assert parts == pytest.approx(ex["shortfall_bps"], rel=1e-9, abs=1e-9)
    assert ex["impact_bps"] >= 0 and ex["spread_bps"] >= 0 and ex["fees_bps"] >= 0
    assert ex["shortfall_bps"] == pytest.approx(cost * scale, rel=1e-9, abs=1e-9)


def test_same_seed_same_episode():
    def trajectory(seed):
        env = CryptoFuturesExecutionEnv(_RANDOM, horizon_bars=8, profile_days=2)
        env.action_space.seed(5)
        obs, info = env.reset(seed=seed)
        out = [obs.tobytes(), info["bar_index"], info["side"], info["quantity"]]
        done = False
        while not done:
            obs, r, done, _, info = env.step(env.action_space.sample())
            out += [obs.tobytes(), r, info["fill_price"]]
        return out

    assert trajectory(3) == trajectory(3)
    starts = {tuple(trajectory(s)[1:4]) for s in range(6)}
    assert len(starts) > 1  # the seed does move the start / side / size


def test_reset_options_pin_start_side_and_size():
    env = CryptoFuturesExecutionEnv(_RANDOM, horizon_bars=8, profile_days=2)
    _, info = env.reset(seed=0, options={"start": 60, "side": "sell", "quantity": 12.3456})
    assert (info["bar_index"], info["side"], info["quantity"]) == (60, -1, pytest.approx(12.345))
    _, info = env.reset(seed=0, options={"start": 61, "quantity_adv": 0.1})
    adv = _RANDOM.volume[61 - 47 : 62].sum() / 2  # the 2 days (48 bars) ending at bar 61
    assert info["quantity"] == pytest.approx(math.floor(0.1 * adv / 0.001) * 0.001)


# ------------------------------------------------------------------------------------------------ observation


def test_observation_reads_a_periodic_volume_profile_exactly():
    # Volume repeats every day: the profile from past days predicts each future bar exactly.
    n = 24 * 3 + 30
    volume = 500.0 + 100.0 * (np.arange(n) % 24)
    env = CryptoFuturesExecutionEnv(
        make_market(np.full(n, 100.0), volume),
        horizon_bars=6,
        profile_days=2,
        quantity=1.0,
        side="buy",
        execution=NO_IMPACT,
    )
    obs, _ = env.reset(options={"start": 60})
    np.testing.assert_allclose(env.expected_volume(), volume[61:67])
    o = dict(zip(OBS_NAMES, obs, strict=False))
    assert o["remaining"] == 1.0 and o["time_left"] == 1.0 and o["side"] == 1.0
    assert o["vwap_share"] == pytest.approx(volume[61] / volume[61:67].sum(), rel=1e-6)
    assert o["rel_volume"] == pytest.approx(0.0, abs=1e-6)
    assert o["next_volume"] == pytest.approx(math.log(volume[61] / volume[:24].mean()), rel=1e-5)
    hour = 61 % 24
    assert o["tod_sin"] == pytest.approx(math.sin(2 * math.pi * hour / 24), abs=1e-6)
    obs, *_ = env.step(env.fraction_to_action(0.5))
    o = dict(zip(OBS_NAMES, obs, strict=False))
    assert o["remaining"] == pytest.approx(0.5) and o["time_left"] == pytest.approx(5 / 6)


def test_no_look_ahead():
    # Market B equals A up to bar k and differs afterwards (prices, gaps at the open, volumes). Observations
    # on decision bars <= k, rewards of steps whose fill bar is <= k, and the baselines' decisions on bars <=
    # k must not change.
    a = random_market(24 * 2 + 60, seed=1)
    k = 70
    rng = np.random.default_rng(2)
    fa = a.to_frame()
    fb = fa.copy()
    n_after = len(fa) - k - 1
    close_b = fa["close"].to_numpy().copy()
    close_b[k + 1 :] = close_b[k] * np.exp(np.cumsum(rng.normal(0.002, 0.01, n_after)))
    open_b = np.r_[close_b[0], close_b[:-1]] * np.exp(rng.normal(0, 0.003, len(fa)))
    open_b[: k + 1] = fa["open"].to_numpy()[: k + 1]
    fb["close"], fb["open"] = close_b, open_b
    fb["high"] = np.where(np.arange(len(fa)) > k, np.maximum(open_b, close_b) * 1.001, fa["high"])
    fb["low"] = np.where(np.arange(len(fa)) > k, np.minimum(open_b, close_b) * 0.999, fa["low"])
    fb.loc[fb.index[k + 1 :], "volume"] *= rng.uniform(0.2, 5.0, n_after)
    b = MarketData.from_frame(fb, source="B")
    t0, T = k - 2, 6
    for policy_cls in (TWAP, VWAP, lambda: AlmgrenChriss(5e-3)):
        outs = []
        for m in (a, b):
            env = CryptoFuturesExecutionEnv(m, horizon_bars=T, profile_days=2, impact_halflife=3.0)
            pol = policy_cls()
            obs, info = env.reset(options={"start": t0, "side": "buy", "quantity_adv": 0.05})
            pol.reset(env)
            rec = {"obs": [obs], "act": [], "rew": []}
            done = False
            while not done:
                frac = pol(obs, info)
                rec["act"].append(frac)
                obs, r, done, _, info = env.step(env.fraction_to_action(frac))
                rec["obs"].append(obs)
                rec["rew"].append(r)
            outs.append(rec)
        ra, rb = outs
        n_obs = k - t0 + 1  # decision bars t0 .. k
        np.testing.assert_array_equal(np.array(ra["obs"][:n_obs]), np.array(rb["obs"][:n_obs]))
        assert ra["act"][:n_obs] == rb["act"][:n_obs]
        assert ra["rew"][: k - t0] == rb["rew"][: k - t0]  # fills at bars t0+1 .. k
        # The perturbation does matter afterwards (otherwise this test could not fail).
        assert not np.array_equal(ra["obs"][n_obs], rb["obs"][n_obs])
        assert ra["rew"][k - t0] != rb["rew"][k - t0]


# ------------------------------------------------------------------------------------------------ API checks


@pytest.mark.parametrize("action", ["continuous", "discrete"])
def test_check_env_gymnasium_and_sb3_without_warnings(action):
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = CryptoFuturesExecutionEnv(_RANDOM, horizon_bars=8, profile_days=2, action=action)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)


def test_gym_make_default_runs_on_the_embedded_data():
    env = gym.make("CryptoFuturesExecution-v0")
    res = run_execution_episode(env, TWAP(), seed=0)
    assert len(res.rewards) == 12 and res.remaining[-1] == 0.0
    assert math.isfinite(res.shortfall_bps)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"horizon_bars": 0}, "horizon_bars"),
        ({"horizon_bars": 2.5}, "horizon_bars"),
        ({"window": 0}, "window"),
        ({"profile_days": 0}, "profile_days"),
        ({"side": "long"}, "side"),
        ({"action": "box"}, "action"),
        ({"action": "discrete", "n_levels": 1}, "n_levels"),
        ({"quantity": 1.0, "quantity_adv": 0.01}, "not both"),
        ({"quantity": -1.0}, "quantity"),
        ({"quantity_adv": (0.2, 0.1)}, "quantity_adv"),
        ({"quantity_adv": float("nan")}, "quantity_adv"),
        ({"execution": {"taker_fee": 0.1}}, "ExecutionConfig"),
        ({"impact_halflife": 0.0}, "impact_halflife"),
        ({"horizon_bars": 500}, "needs at least"),
        ({"render_mode": "human"}, "render_mode"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CryptoFuturesExecutionEnv(_RANDOM, **{"profile_days": 2, **kwargs})


def test_bar_interval_must_divide_a_day():
    idx = pd.date_range("2024-01-01", periods=400, freq="7min", tz="UTC")
    df = pd.DataFrame(
        {c: 100.0 for c in ("open", "high", "low", "close")} | {"volume": 1.0, "funding_rate": 0.0}, index=idx
    )
    with pytest.raises(ValueError, match="divide a day"):
        CryptoFuturesExecutionEnv(MarketData.from_frame(df))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"start": 5}, "start"),
        ({"start": 10_000}, "start"),
        ({"side": "long"}, "side"),
        ({"quantity": 0.0}, "quantity"),
        ({"quantity": 0.0001}, "minimum order"),
        ({"quantity": 1.0, "quantity_adv": 0.1}, "not both"),
        ({"size": 1.0}, "unknown reset option"),
    ],
)
def test_bad_reset_options_raise_value_error(options, match):
    env = CryptoFuturesExecutionEnv(_RANDOM, horizon_bars=8, profile_days=2)
    with pytest.raises(ValueError, match=match):
        env.reset(options=options)


@pytest.mark.parametrize(
    "action_mode, action",
    [
        ("continuous", np.array([np.nan], dtype=np.float32)),
        ("continuous", np.array([0.1, 0.2], dtype=np.float32)),
        ("discrete", 5),
        ("discrete", -1),
        ("discrete", 0.5),
    ],
)
def test_bad_actions_raise_value_error(action_mode, action):
    env = CryptoFuturesExecutionEnv(_RANDOM, horizon_bars=8, profile_days=2, action=action_mode, n_levels=5)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)


def test_funding_is_paid_by_the_executed_position_held_at_the_settlement():
    # Price 100, hourly bars from 2024-01-01 00:00, settlement rate 1e-3 at 2024-01-02 08:00 (bar 32). Buy
    # Q = 8 over T = 4 from decision bar 29 (TWAP: 2 per bar, fills at the opens of bars 30, 31, 32, 33). At
    # the 08:00 open 4 are held (bars 30 and 31); the child filled at that open comes just after the
    # settlement: funding 4 * 100 * 1e-3 = 0.4 USDT = 0.4 / 800 * 1e4 = 5 bp, reported beside the shortfall,
    # not in it.
    close = np.full(60, 100.0)
    idx = pd.date_range("2024-01-01", periods=60, freq="1h", tz="UTC")
    df = pd.DataFrame({"open": close, "high": close, "low": close, "close": close, "volume": 1e6}, index=idx)
    df["funding_rate"] = 0.0
    df.iloc[32, df.columns.get_loc("funding_rate")] = 1e-3
    env = CryptoFuturesExecutionEnv(
        MarketData.from_frame(df),
        horizon_bars=4,
        quantity=8.0,
        side="buy",
        execution=NO_IMPACT,
        profile_days=1,
        window=2,
    )
    _, _, infos = run(env, [0.25, 1 / 3, 0.5, 1.0], options={"start": 29})
    assert [i["funding_paid"] for i in infos[1:]] == pytest.approx([0.0, 0.0, 0.4, 0.4])
    summary = infos[-1]["execution"]
    assert summary["funding_quote"] == pytest.approx(0.4) and summary["funding_bps"] == pytest.approx(5.0)
    assert summary["shortfall_bps"] == pytest.approx(6.0008, rel=1e-12)  # unchanged: funding is beside it
    # A sell pays the negative of that (a short receives positive funding).
    _, _, infos = run(env, [0.25, 1 / 3, 0.5, 1.0], options={"start": 29, "side": "sell"})
    assert infos[-1]["execution"]["funding_quote"] == pytest.approx(-0.4)


@pytest.mark.parametrize("lots", [3, 12_345_679, 32_768_132, 32_774_971])
def test_a_size_read_back_from_info_gives_the_same_lots(lots):
    """``reset(options={"quantity": info["quantity"]})`` repeats the order at any size: ``lots * lot / lot``
    falls a few ulp short of ``lots`` for large orders (32,768,132 lots of 0.001 did), which an absolute
    rounding tolerance turned into one lot less."""
    from envs import CryptoFuturesExecutionVecEnv

    env = CryptoFuturesExecutionEnv("btcusdt-perp-1h-2025")
    lot = env.execution.lot_size
    _, info = env.reset(seed=0, options={"quantity": lots * lot})
    assert round(info["quantity"] / lot) == lots
    _, again = env.reset(seed=0, options={"quantity": info["quantity"]})
    assert again["quantity"] == info["quantity"]
    vec = CryptoFuturesExecutionVecEnv("btcusdt-perp-1h-2025", num_envs=2)
    _, vinfo = vec.reset(seed=0, options={"quantity": lots * lot})
    assert np.all(vinfo["quantity"] == info["quantity"])
