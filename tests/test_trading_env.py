"""CryptoFuturesEnv: hand-computed money fixtures (a few bars each), API checks, determinism, no
look-ahead."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

import envs  # noqa: F401  (registers CryptoFutures-v0)
from envs.contract import ExecutionConfig, MarginConfig
from envs.features import FeatureConfig, compute_features
from envs.market import MarketData, load_embedded
from envs.trading_env import INFO_KEYS, CryptoFuturesEnv

FLAT = 20000.0
# Fixtures use window=1 and a 2-bar warm-up, so the first decision is on bar 2 and its order fills in bar 3.
SMALL_FEATURES = FeatureConfig(warmup=2, volume_window=1)
# No spread, impact, dead-band or participation cap unless a test turns one on.
BARE = ExecutionConfig(half_spread_bps=0.0, impact_coef=0.0, deadband=0.0, max_participation=None)


def make_market(rows, funding=None, start="2025-01-01 00:00") -> MarketData:
    """rows: (open, high, low, close, volume); funding: {bar: rate}."""
    idx = pd.date_range(start, periods=len(rows), freq="1h", tz="UTC")
    df = pd.DataFrame(rows, columns=["open", "high", "low", "close", "volume"], index=idx)
    df["funding_rate"] = 0.0
    for bar, rate in (funding or {}).items():
        df.iloc[bar, df.columns.get_loc("funding_rate")] = rate
    return MarketData.from_frame(df, source="fixture")


def flat_rows(n, price=FLAT, volume=1000.0):
    return [(price, price, price, price, volume)] * n


def make_env(market, **kw) -> CryptoFuturesEnv:
    kw.setdefault("window", 1)
    kw.setdefault("features", SMALL_FEATURES)
    kw.setdefault("execution", BARE)
    kw.setdefault("episode_bars", 2)
    # 2x cap with half targets (act(0.5)): the orders stay inside the margin at the fill price (a full target
    # is trimmed by the fee, see test_order_trimmed_to_the_margin_at_the_fill_price).
    kw.setdefault("leverage", 2.0)
    return CryptoFuturesEnv(market, **kw)


def act(x: float) -> np.ndarray:
    return np.array([x], dtype=np.float32)


def assert_identity(info, initial=10_000.0):
    rhs = initial + info["realized_pnl"] + info["unrealized_pnl"] - info["fees_paid"] - info["funding_paid"]
    assert info["equity"] == pytest.approx(rhs, abs=1e-6)


# --------------------------------------------------------------------------------------------- money fixtures


def test_round_trip_with_fees_and_spread():
    rows = flat_rows(3) + [
        (20100.0, 20250.0, 20050.0, 20200.0, 1000.0),
        (20300.0, 20350.0, 20250.0, 20300.0, 1000.0),
    ]
    rows += flat_rows(1, 20300.0)
    ex = ExecutionConfig(half_spread_bps=0.5, impact_coef=0.0, deadband=0.0, max_participation=None)
    env = make_env(make_market(rows), execution=ex)
    obs, info = env.reset(options={"start": 2})
    assert info["bar_index"] == 2 and info["equity"] == 10_000.0

    # Decide on bar 2 (close 20000): target 1x10000 = 10000 USDT -> 0.5 BTC. Buy at open_3 20100 * 1.00005 =
    # 20101.005; fee 0.5 * 20101.005 * 0.0005 = 5.02525125; slippage 0.5 * 1.005 = 0.5025.
    # Mark at close_3 20200: unrealized 0.5 * (20200 - 20101.005) = 49.4975; equity 10000 - 5.02525125 +
    # 49.4975.
    obs, r, term, trunc, info = env.step(act(0.5))
    assert info["position"] == pytest.approx(0.5)
    assert info["trade_qty"] == pytest.approx(0.5)
    assert info["fees_paid"] == pytest.approx(5.02525125)
    assert info["slippage_paid"] == pytest.approx(0.5025)
    assert info["unrealized_pnl"] == pytest.approx(49.4975)
    assert info["equity"] == pytest.approx(10044.47224875)
    assert r == pytest.approx(math.log(10044.47224875 / 10000))
    assert (term, trunc) == (False, False)
    assert_identity(info)

    # Go flat: sell at open_4 20300 * 0.99995 = 20298.985; realized 0.5 * (20298.985 - 20101.005) = 98.99;
    # fee 0.5 * 20298.985 * 0.0005 = 5.07474625; equity 10000 + 98.99 - 5.02525125 - 5.07474625 =
    # 10088.8900025.
    obs, r, term, trunc, info = env.step(act(0.0))
    assert info["position"] == 0.0
    assert info["realized_pnl"] == pytest.approx(98.99)
    assert info["fees_paid"] == pytest.approx(10.1)
    assert info["slippage_paid"] == pytest.approx(1.01)
    assert info["equity"] == pytest.approx(10088.8900025)
    assert info["turnover"] == pytest.approx(0.5 * 20101.005 + 0.5 * 20298.985)
    assert (term, trunc) == (False, True)  # episode_bars=2 reached
    assert_identity(info)
    m = info["episode_metrics"]
    assert m["total_return"] == pytest.approx(0.00888900025)
    assert m["fees"] == pytest.approx(10.1) and m["n_bars"] == 2 and m["liquidations"] == 0


def test_impact_square_root_law():
    # Closes alternate 20000 / 20200, so every |log return| is log(1.01) and the EWMA volatility is exactly
    # sigma = log(1.01) = 0.00995033085 whatever its weights. Volume of the fill bar: 50 BTC.
    rows = [(20000.0, 20200.0, 20000.0, c, 1000.0) for c in (20000.0, 20200.0, 20000.0)]
    rows += [(20000.0, 20200.0, 20000.0, 20200.0, 50.0)] + flat_rows(2, 20200.0)
    ex = ExecutionConfig(half_spread_bps=0.0, impact_coef=1.0, deadband=0.0, max_participation=None)
    env = make_env(make_market(rows), execution=ex)
    env.reset(options={"start": 2})
    # Order 0.5 BTC: impact = 1 * 0.00995033085 * sqrt(0.5 / 50) = 0.000995033085 -> fill 20000 *
    # 1.000995033085
    # = 20019.9006617; fee 0.5 * 20019.9006617 * 0.0005 = 5.00497516543; slippage 0.5 * 19.9006617 =
    # 9.95033085.
    _, _, _, _, info = env.step(act(0.5))
    sigma = math.log(1.01)
    price = 20000.0 * (1 + sigma * math.sqrt(0.5 / 50))
    assert price == pytest.approx(20019.9006617)
    assert info["slippage_paid"] == pytest.approx(9.95033085)
    assert info["fees_paid"] == pytest.approx(5.00497516543)
    assert info["unrealized_pnl"] == pytest.approx(0.5 * (20200.0 - price))
    assert_identity(info)


@pytest.mark.parametrize(
    ("side", "rate", "paid"), [(1.0, 1e-4, 1.005), (-1.0, 1e-4, -1.005), (1.0, -2e-4, -2.01)]
)
def test_funding_payment_sign(side, rate, paid):
    # 0.5 BTC (long or short) opened at open_3 = 20100 and held through bar 4, whose open (a settlement) is
    # 20100: payment = position * 20100 * rate: long +0.5 * 20100 * 1e-4 = 1.005 paid; short receives 1.005;
    # negative rate: a long receives 0.5 * 20100 * 2e-4 = 2.01.
    rows = flat_rows(3) + [(20100.0, 20100.0, 20100.0, 20100.0, 1000.0)] * 2 + flat_rows(2, 20100.0)
    ex = ExecutionConfig(half_spread_bps=0.0, impact_coef=0.0, deadband=0.01, max_participation=None)
    env = make_env(make_market(rows, funding={4: rate}), execution=ex)
    env.reset(options={"start": 2})
    _, _, _, _, info = env.step(act(side / 2))
    assert info["funding_paid"] == 0.0
    _, r, _, _, info = env.step(act(side / 2))  # inside the dead-band: held
    assert info["trade_qty"] == 0.0
    assert info["funding_paid"] == pytest.approx(paid)
    # Equity: 10000 - fee (0.5 * 20100 * 0.0005 = 5.025) - funding; no price change from the fill to the
    # close.
    assert info["equity"] == pytest.approx(10000 - 5.025 - paid)
    assert_identity(info)


def test_liquidation_at_the_liquidation_price_terminates():
    # 10x long: target 10 * 10000 / 20000 = 5 BTC, filled at open_3 = 20000 (no spread), fee 50 -> balance
    # 9950. Liquidation price (9950 - 5 * 20000) / (5 * 0.004 - 5) = 90050 / 4.98 = 18082.3293173. Bar 3's low
    #       18000
    # reaches it: closed there, loss 5 * (20000 - 18082.3293173) = 9588.35341365, equity left 361.646586345 =
    # maintenance margin; the 1.25 % liquidation fee (1130.15) takes all of it -> equity 0, no bad debt.
    rows = flat_rows(3) + [(20000.0, 20100.0, 18000.0, 18500.0, 1000.0)] + flat_rows(2, 18500.0)
    env = make_env(make_market(rows), leverage=20.0)
    env.reset(options={"start": 2})
    _, r, term, trunc, info = env.step(act(0.5))
    liq = 90050 / 4.98
    assert liq == pytest.approx(18082.3293173)
    assert term is True and trunc is False and info["liquidated"] is True
    assert info["equity"] == pytest.approx(0.0, abs=1e-9)
    assert info["position"] == 0.0
    assert info["realized_pnl"] == pytest.approx(5 * (liq - 20000.0))
    assert info["fees_paid"] == pytest.approx(50.0 + 361.646586345)
    assert info["bad_debt"] == 0.0
    assert r == pytest.approx(math.log(1e-6))  # floor of the log reward: large, finite, negative
    assert info["episode_metrics"]["liquidations"] == 1
    assert_identity(info)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(act(0.0))


def test_liquidation_on_a_gap_closes_at_the_open_with_bad_debt():
    # Same 5 BTC long (liquidation price 18082.33); bar 3 stays above it, bar 4 opens at 17000 (a gap):
    # closed at 17000, loss 5 * 3000 = 15000 > equity 9950 + 5 * (19000 - 20000) ... -> bad debt
    # 15000 - 9950 = 5050 absorbed, no liquidation fee left to take, equity 0.
    rows = flat_rows(3) + [
        (20000.0, 20100.0, 19000.0, 19000.0, 1000.0),
        (17000.0, 17500.0, 16500.0, 17200.0, 1000.0),
    ]
    rows += flat_rows(2, 17200.0)
    env = make_env(make_market(rows), leverage=20.0, episode_bars=3)
    env.reset(options={"start": 2})
    _, _, term, _, info = env.step(act(0.5))
    assert not term and info["equity"] == pytest.approx(9950 - 5000)
    _, r, term, trunc, info = env.step(act(0.5))
    assert term is True and trunc is False
    assert info["bad_debt"] == pytest.approx(5050.0)
    assert info["equity"] == 0.0
    assert info["realized_pnl"] == pytest.approx(-15000.0 + 5050.0)
    assert info["fees_paid"] == pytest.approx(50.0)
    assert_identity(info)


def test_short_liquidation_on_the_high():
    # 10x short 5 BTC at 20000, balance 9950: liquidation price (9950 + 100000) / 5.02 = 21902.3904; high
    # 22000.
    rows = flat_rows(3) + [(20000.0, 22000.0, 19900.0, 21000.0, 1000.0)] + flat_rows(2, 21000.0)
    env = make_env(make_market(rows), leverage=20.0)
    env.reset(options={"start": 2})
    _, _, term, _, info = env.step(act(-0.5))
    assert term and info["liquidated"]
    assert info["realized_pnl"] == pytest.approx(-5 * (109950 / 5.02 - 20000.0))
    assert info["equity"] == pytest.approx(0.0, abs=1e-9)
    assert_identity(info)


def test_liquidation_with_margin_tiers():
    # Tiers (cap, mmr, amount): notional 5 * 20000 = 100000 is in the second bracket (mmr 0.5 %, amount 50).
    # Liquidation price (9950 + 50 - 100000) / (5 * 0.005 - 5) = 90000 / 4.975 = 18090.4522613, hit by the
    # low 18000.
    # Equity left = maintenance margin 5 * 18090.4522613 * 0.005 - 50 = 402.261306533, all taken by the fee.
    rows = flat_rows(3) + [(20000.0, 20100.0, 18000.0, 18500.0, 1000.0)] + flat_rows(2, 18500.0)
    margin = MarginConfig(tiers=((50_000.0, 0.004, 0.0), (600_000.0, 0.005, 50.0)))
    env = make_env(make_market(rows), leverage=20.0, margin=margin)
    obs, _ = env.reset(options={"start": 2})
    _, _, term, _, info = env.step(act(0.5))
    liq = 90000 / 4.975
    assert term and info["realized_pnl"] == pytest.approx(5 * (liq - 20000.0))
    assert info["fees_paid"] == pytest.approx(50.0 + 402.261306533)
    assert info["equity"] == pytest.approx(0.0, abs=1e-9)
    assert_identity(info)


def test_margin_ratio_observation_with_tiers():
    # 1x long 0.5 BTC held at 20000 (notional 10000, first bracket 0.4 %): margin ratio = 40 / equity.
    margin = MarginConfig(tiers=((50_000.0, 0.004, 0.0), (600_000.0, 0.005, 50.0)))
    env = make_env(make_market(flat_rows(6)), margin=margin)
    env.reset(options={"start": 2})
    obs, _, _, _, info = env.step(act(0.5))
    assert obs[-3] == pytest.approx(10000 / (2 * info["equity"]), rel=1e-6)  # position / (leverage * equity)
    assert obs[-1] == pytest.approx(40.0 / info["equity"], rel=1e-6)


def test_pnl_reward():
    rows = flat_rows(3) + [(20000.0, 20200.0, 20000.0, 20200.0, 1000.0)] + flat_rows(2, 20200.0)
    env = make_env(make_market(rows), reward="pnl")
    env.reset(options={"start": 2})
    # 0.5 BTC at 20000, fee 5, marked at 20200: +100 - 5 = 95 over an initial 10000
    _, r, _, _, _ = env.step(act(0.5))
    assert r == pytest.approx(0.0095)


def test_partial_fill_on_participation_cap():
    # Fill bar volume 2 BTC, cap 10 % -> at most 0.2 BTC of the 0.5 wanted; 0.3 dropped.
    # Fee 0.2 * 20000 * 0.0005 = 2.0.
    rows = flat_rows(3) + [(FLAT, FLAT, FLAT, FLAT, 2.0)] + flat_rows(2)
    ex = ExecutionConfig(half_spread_bps=0.0, impact_coef=0.0, deadband=0.0, max_participation=0.1)
    env = make_env(make_market(rows), execution=ex)
    env.reset(options={"start": 2})
    _, _, _, _, info = env.step(act(0.5))
    assert info["position"] == pytest.approx(0.2)
    assert info["trade_qty"] == pytest.approx(0.2)
    assert info["unfilled_qty"] == pytest.approx(0.3)
    assert info["fees_paid"] == pytest.approx(2.0)
    # Next bar has volume 1000: the agent re-decides; equity is now 9998, so the target is 0.4999 BTC and the
    # order 0.2999 rounds down to 0.299 -> position 0.499.
    _, _, _, _, info = env.step(act(0.5))
    assert info["position"] == pytest.approx(0.499)


def test_zero_volume_bar_fills_nothing():
    rows = flat_rows(3) + [(FLAT, FLAT, FLAT, FLAT, 0.0)] + flat_rows(2)
    env = make_env(make_market(rows))
    env.reset(options={"start": 2})
    _, _, _, _, info = env.step(act(0.5))
    assert info["position"] == 0.0 and info["unfilled_qty"] == pytest.approx(0.5) and info["fees_paid"] == 0.0


def test_deadband_and_lot_rounding():
    rows = flat_rows(8)
    ex = ExecutionConfig(half_spread_bps=0.0, impact_coef=0.0, deadband=0.05, max_participation=None)
    env = make_env(make_market(rows), execution=ex, episode_bars=4, leverage=1.0)
    env.reset(options={"start": 2})
    # target 0.2469 * 10000 / 20000 = 0.12345 BTC -> rounded toward zero to 0.123 (lot 0.001)
    _, _, _, _, info = env.step(act(0.2469))
    assert info["position"] == pytest.approx(0.123)
    fees = info["fees_paid"]
    assert fees == pytest.approx(0.123 * 20000 * 0.0005)
    # current fraction 0.123 * 20000 / equity(9998.77) = 0.24603; target 0.28 moves it by 0.034 < 0.05: no
    # trade
    _, _, _, _, info = env.step(act(0.28))
    assert info["trade_qty"] == 0.0 and info["fees_paid"] == fees
    # target 0.35 moves it by 0.104 >= 0.05: trades
    _, _, _, _, info = env.step(act(0.35))
    assert info["trade_qty"] > 0
    # going flat (target exactly 0) is always honored, however small the position
    _, _, _, _, info = env.step(act(0.0))
    assert info["position"] == 0.0


def test_min_qty_not_sent():
    env = make_env(make_market(flat_rows(6)), leverage=1.0)
    env.reset(options={"start": 2})
    # 0.0015 * 10000 / 20000 = 0.00075 BTC < min_qty 0.001
    _, _, _, _, info = env.step(act(0.0015))
    assert info["position"] == 0.0 and info["fees_paid"] == 0.0


def test_fill_at_next_close():
    rows = flat_rows(3) + [(20100.0, 20250.0, 20050.0, 20200.0, 1000.0)] + flat_rows(2, 20200.0)
    ex = ExecutionConfig(
        half_spread_bps=0.0, impact_coef=0.0, deadband=0.0, max_participation=None, fill_at="next_close"
    )
    env = make_env(make_market(rows), execution=ex)
    env.reset(options={"start": 2})
    _, _, _, _, info = env.step(act(0.5))
    # 0.5 BTC bought at close_3 = 20200: no unrealized PnL yet, fee 0.5 * 20200 * 0.0005 = 5.05
    assert info["position"] == pytest.approx(0.5)
    assert info["unrealized_pnl"] == pytest.approx(0.0)
    assert info["fees_paid"] == pytest.approx(5.05)


# --------------------------------------------------------------------------------------------- gym API


def test_gymnasium_and_sb3_check_env_pass_with_warnings_as_errors():
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    for kw in (
        {},
        {"action": "discrete"},
        {"action": "discrete", "n_levels": 5, "reward": "differential_sharpe"},
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # Through gym.make so that the env has a spec (check_env then also tries the render modes).
            env = gym.make("CryptoFutures-v0", window=8, episode_bars=50, **kw).unwrapped
            gym_check(env, skip_render_check=False)
            sb3_check(CryptoFuturesEnv(window=8, episode_bars=50, **kw), warn=True)


def test_gym_make_default_works_on_embedded_data():
    env = gym.make("CryptoFutures-v0")
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert set(INFO_KEYS) <= set(info)
    obs, r, term, trunc, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and isinstance(r, float)
    assert set(INFO_KEYS) <= set(info)
    env.close()


def _trajectory(env, seed, actions):
    obs, info = env.reset(seed=seed)
    out = [(obs.copy(), 0.0, info["bar_index"], info["equity"])]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs.copy(), r, info["bar_index"], info["equity"]))
        if term or trunc:
            break
    return out


def test_same_seed_same_trajectory_different_seed_different_start():
    actions = [act(x) for x in np.random.default_rng(1).uniform(-1, 1, 100)]
    a = _trajectory(CryptoFuturesEnv(window=8, episode_bars=200), 7, actions)
    b = _trajectory(CryptoFuturesEnv(window=8, episode_bars=200), 7, actions)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]
    starts = {CryptoFuturesEnv(window=8, episode_bars=200).reset(seed=s)[1]["bar_index"] for s in range(10)}
    assert len(starts) > 1


def test_no_look_ahead_observations_and_rewards_unchanged_by_later_bars():
    base = load_embedded("btcusdt-perp-1h-2025").slice(0, 400)
    df = base.to_frame()
    k = 250
    rng = np.random.default_rng(0)
    later = df.index[k + 1 :]
    scale = np.exp(np.cumsum(rng.normal(0, 0.02, len(later))))
    for col in ("open", "high", "low", "close"):
        df.loc[later, col] = df.loc[later, col].to_numpy() * scale
    df.loc[later, "volume"] = df.loc[later, "volume"].to_numpy() * rng.uniform(0.1, 10, len(later))
    df.loc[later, "funding_rate"] = rng.normal(0, 1e-4, len(later))
    perturbed = MarketData.from_frame(df, source="perturbed")

    actions = [act(x) for x in np.random.default_rng(2).uniform(-1, 1, 150)]
    runs = []
    for market in (base, perturbed):
        env = CryptoFuturesEnv(market, window=16, episode_bars=140)
        obs, info = env.reset(options={"start": 150})
        steps = [(obs, 0.0, info)]
        for a in actions:
            obs, r, term, trunc, info = env.step(a)
            steps.append((obs, r, info))
            if term or trunc:
                break
        runs.append(steps)
    compared = 0
    for (o1, r1, i1), (o2, r2, i2) in zip(*runs, strict=True):
        if i1["bar_index"] > k:
            # the runs must differ after k, or the perturbation tested nothing
            assert not np.array_equal(o1, o2)
            break
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2 and i1["equity"] == i2["equity"]
        compared += 1
    assert compared == k - 150 + 1


def test_features_are_causal_prefix_of_the_full_market():
    full = load_embedded("btcusdt-perp-1h-2025")
    feats = compute_features(full)
    for k in (60, 300, 777):
        part = compute_features(full.slice(0, k + 1))
        np.testing.assert_allclose(part.values, feats.values[: k + 1], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(part.volatility, feats.volatility[: k + 1], rtol=1e-12)


def test_terminated_and_truncated_never_both_and_end_of_data():
    env = CryptoFuturesEnv("btcusdt-perp-1h-2025", window=8, episode_bars=None)
    obs, info = env.reset()
    assert info["bar_index"] == env.min_start
    n = 0
    while True:
        obs, r, term, trunc, info = env.step(act(0.3))
        n += 1
        assert not (term and trunc)
        if term or trunc:
            break
    assert trunc and info["bar_index"] == len(env.market) - 1
    assert n == len(env.market) - 1 - env.min_start


def test_discrete_levels_and_target_to_action():
    env = make_env(make_market(flat_rows(6)), action="discrete", n_levels=5)
    assert env.levels == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert env.target_to_action(0.9) == 4 and env.target_to_action(-0.2) == 2
    env.reset(options={"start": 2})
    _, _, _, _, info = env.step(1)  # half short at 2x: 0.5 BTC
    assert info["position"] == pytest.approx(-0.5)
    _, _, _, _, info = env.step(np.int64(2))  # flat
    assert info["position"] == 0.0


def test_continuous_action_clipped():
    env = make_env(make_market(flat_rows(6)), leverage=1.0)
    env.reset(options={"start": 2})
    _, _, _, _, info = env.step(act(3.0))
    # clipped to 1.0: 0.5 BTC, trimmed to the margin after the fee: 10000 / (20000 + 10) = 0.49975 -> 0.499
    assert info["position"] == pytest.approx(0.499)


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (act(float("nan")), "finite"),
        (np.array([0.1, 0.2]), "shape"),
        (np.zeros((1, 1)), "shape"),
        ("a", "shape"),
    ],
)
def test_bad_continuous_actions(action, match):
    env = make_env(make_market(flat_rows(6)))
    env.reset(options={"start": 2})
    with pytest.raises(ValueError, match=match):
        env.step(action)


@pytest.mark.parametrize("action", [3, -1, 1.5, np.array([0, 1])])
def test_bad_discrete_actions(action):
    env = make_env(make_market(flat_rows(6)), action="discrete")
    env.reset(options={"start": 2})
    with pytest.raises(ValueError, match="action"):
        env.step(action)


def test_bad_start_and_options():
    env = make_env(make_market(flat_rows(6)))
    with pytest.raises(ValueError, match=r"valid range \[2, 3\]"):
        env.reset(options={"start": 4})
    with pytest.raises(ValueError, match="only option"):
        env.reset(options={"begin": 2})


def test_too_few_bars_named():
    with pytest.raises(ValueError, match="too few.*needs at least 6 rows \\(bars\\) in total"):
        make_env(make_market(flat_rows(5)), episode_bars=3)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"reward": "sharpe"}, "reward"),
        ({"action": "box"}, "action"),
        ({"window": 0}, "window"),
        ({"episode_bars": 0}, "episode_bars"),
        ({"initial_balance": -1.0}, "initial_balance"),
        ({"leverage": 500.0}, "leverage"),
        ({"n_levels": 1, "action": "discrete"}, "n_levels"),
    ],
)
def test_bad_constructor_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        make_env(make_market(flat_rows(6)), **kw)


def test_bad_data_is_rejected_with_location():
    idx = pd.date_range("2025-01-01", periods=6, freq="1h", tz="UTC")
    good = pd.DataFrame(flat_rows(6), columns=["open", "high", "low", "close", "volume"], index=idx)
    bad = good.copy()
    bad.iloc[3, 3] = np.nan
    with pytest.raises(ValueError, match="close"):
        CryptoFuturesEnv(bad, window=1, episode_bars=1, features=SMALL_FEATURES)
    bad = good.copy()
    bad.iloc[2, 2] = 30000.0  # low above high
    with pytest.raises(ValueError, match="low|high"):
        CryptoFuturesEnv(bad, window=1, episode_bars=1, features=SMALL_FEATURES)
    bad = good.copy()
    bad.iloc[4, 0] = -1.0
    with pytest.raises(ValueError, match="open"):
        CryptoFuturesEnv(bad, window=1, episode_bars=1, features=SMALL_FEATURES)
    bad = good.iloc[[0, 1, 3, 2, 4, 5]]
    with pytest.raises(ValueError, match="timestamp|sorted|order"):
        CryptoFuturesEnv(bad, window=1, episode_bars=1, features=SMALL_FEATURES)


def test_differential_sharpe_matches_moody_saffell_recursion():
    env = CryptoFuturesEnv(window=8, episode_bars=30, reward="differential_sharpe", dsr_eta=0.1)
    env_log = CryptoFuturesEnv(window=8, episode_bars=30)
    env.reset(options={"start": 100})
    env_log.reset(options={"start": 100})
    a_, b_ = 0.0, 0.0
    for x in np.random.default_rng(3).uniform(-1, 1, 30):
        _, d, *_ = env.step(act(x))
        _, r, *_ = env_log.step(act(x))
        var = b_ - a_ * a_
        expected = (b_ * (r - a_) - 0.5 * a_ * (r * r - b_)) / var**1.5 if var > 1e-12 else 0.0
        assert d == pytest.approx(expected, rel=1e-9, abs=1e-12)
        a_, b_ = a_ + 0.1 * (r - a_), b_ + 0.1 * (r * r - b_)


def test_render_ansi():
    env = CryptoFuturesEnv(window=8, episode_bars=10, render_mode="ansi")
    env.reset(seed=0)
    env.step(act(0.5))
    assert "equity" in env.render()


# ------------------------------------------------------------------------------- simulator fidelity (issue)


def _crash_rows(crash_close: float, next_open: float) -> list:
    # Bars 0-3 at 100; bar 4 falls to crash_close (its low); bar 5 opens at next_open.
    rows = [(100.0, 100.0, 100.0, 100.0, 3000.0)] * 4
    rows.append((100.0, 100.0, crash_close, crash_close, 3000.0))
    rows += [(next_open, next_open, next_open, next_open, 3000.0)] * 3
    return rows


# 2.5 % half-spread: the closing sell fills 2.5 % under the open (beyond the bankruptcy price).
WIDE = ExecutionConfig(half_spread_bps=250.0, impact_coef=0.0, deadband=0.0, max_participation=None)


def test_close_beyond_the_bankruptcy_price_is_bad_debt_and_terminates():
    # 3x long (6x cap, half target) decided on bar 3's close 100: 300 BTC bought at open_4 100 * 1.025 =
    # 102.5, fee 300 * 102.5 * 0.0005 = 15.375 -> wallet 9984.625. Liquidation price
    # (9984.625 - 300 * 102.5) / (300 * 0.004 - 300) = 20765.375 / 298.8 = 69.4959 < low_4 69.6: not hit.
    # Close decided on close_4 69.6, sold at open_5 69.55 * 0.975 = 67.81125: realized
    # 300 * (67.81125 - 102.5) = -10406.625, fee 300 * 67.81125 * 0.0005 = 10.1716875 -> wallet
    # 9984.625 - 10406.625 - 10.1716875 = -432.1716875: that is bad debt, the wallet is 0, the episode ends.
    env = make_env(make_market(_crash_rows(69.6, 69.55)), execution=WIDE, leverage=6.0, episode_bars=4)
    env.reset(options={"start": 3})
    _, _, term, _, info = env.step(act(0.5))
    assert info["position"] == pytest.approx(300.0) and not term
    assert env._liq_price() == pytest.approx(20765.375 / 298.8)
    _, r, term, trunc, info = env.step(act(0.0))
    assert info["position"] == 0.0
    assert info["bad_debt"] == pytest.approx(432.17, abs=0.005)
    assert info["bad_debt"] == pytest.approx(432.1716875)
    assert info["realized_pnl"] == pytest.approx(-10406.625 + 432.1716875)
    assert info["fees_paid"] == pytest.approx(15.375 + 10.1716875)
    assert info["equity"] == 0.0
    assert (term, trunc, info["bankrupt"], info["liquidated"]) == (True, False, True, False)
    assert r == pytest.approx(math.log(1e-6 * 10_000 / (9984.625 + 300 * (69.6 - 102.5))))
    assert_identity(info)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(act(0.0))


def test_next_close_ruinous_fill_is_booked_in_its_own_step():
    # fill_at="next_close": 300 BTC bought at close_4... decided on bar 3 (close 100), filled at close_4 = 100
    # * 1.025 = 102.5 (fee 15.375, wallet 9984.625; bar 4 is flat at 100). The close decided on close_4 fills
    # at close_5 = 69.55 * 0.975 = 67.81125 after bar 5 (low 69.55 > liquidation price 69.4959) is lived with
    # the old position: wallet -432.1716875 -> bad debt, terminated in this step, reward the whole loss.
    rows = [(100.0, 100.0, 100.0, 100.0, 3000.0)] * 5 + [(100.0, 100.0, 69.55, 69.55, 3000.0)] * 3
    ex = replace(WIDE, fill_at="next_close")
    env = make_env(make_market(rows), execution=ex, leverage=6.0, episode_bars=4)
    env.reset(options={"start": 3})
    _, _, term, _, info = env.step(act(0.5))
    assert info["position"] == pytest.approx(300.0) and not term
    equity_4 = info["equity"]
    assert equity_4 == pytest.approx(9984.625 + 300 * (100 - 102.5))
    _, r, term, _, info = env.step(act(0.0))
    assert info["bad_debt"] == pytest.approx(432.1716875)
    assert info["equity"] == 0.0 and term and info["bankrupt"]
    assert r == pytest.approx(math.log(1e-6 * 10_000 / equity_4))
    assert_identity(info)


def test_next_close_reduce_leaving_equity_below_maintenance_liquidates_at_the_close():
    # Same long; instead of closing, the target is 0.25 of 6 * equity_4 (9234.625): 138.519375 BTC, so
    # 161.480 BTC are sold at close_5 69.55 * 0.975 = 67.81125: realized 161.48 * (67.81125 - 102.5)
    # = -5601.53935, fee 161.48 * 67.81125 * 0.0005 = 5.475080325 -> wallet 4377.610569675 with 138.52 BTC
    # left from 102.5; equity at the close 69.55: 4377.610569675 + 138.52 * (69.55 - 102.5) = -186.623430325
    # < 0 (liquidation price 71.182). Liquidated at the close in this step: bad debt 186.623430325.
    rows = [(100.0, 100.0, 100.0, 100.0, 3000.0)] * 5 + [(100.0, 100.0, 69.55, 69.55, 3000.0)] * 3
    env = make_env(make_market(rows), execution=replace(WIDE, fill_at="next_close"), leverage=6.0)
    env.reset(options={"start": 3})
    env.step(act(0.5))
    _, r, term, _, info = env.step(act(0.25))
    assert info["trade_qty"] == pytest.approx(-161.48)
    assert term and info["liquidated"] and info["position"] == 0.0
    assert info["bad_debt"] == pytest.approx(186.623430325, abs=1e-6)
    assert info["equity"] == 0.0
    assert_identity(info)


def _funding_env(fill_at: str, start: int, rate: float = 1e-4):
    # Hourly bars from 00:00: bar 8 opens at 08:00, a settlement (rate 1e-4), all prices 20000.
    ex = replace(BARE, fill_at=fill_at)
    env = make_env(make_market(flat_rows(12), funding={8: rate}), execution=ex, episode_bars=3)
    env.reset(options={"start": start})
    return env


def test_funding_is_paid_by_the_position_held_at_the_settlement_instant():
    # Long 0.5 BTC opened at open_7 (decided on bar 6); closed by an order decided on bar 7's close, which
    # fills at the 08:00 open just after the settlement: the long still pays 0.5 * 20000 * 1e-4 = 1.00.
    env = _funding_env("next_open", start=6)
    env.step(act(0.5))
    _, _, _, _, info = env.step(act(0.0))
    assert info["position"] == 0.0 and info["funding_paid"] == pytest.approx(1.0)
    assert info["equity"] == pytest.approx(10_000 - 2 * 5.0 - 1.0)
    assert_identity(info)
    # A long opened at the 08:00 open (decided on bar 7's close) did not hold it at the settlement: pays 0.
    env = _funding_env("next_open", start=7)
    _, _, _, _, info = env.step(act(0.5))
    assert info["position"] == pytest.approx(0.5) and info["funding_paid"] == 0.0
    # fill_at="next_close": the carried position lives through bar 8, so a long opened at close_7 pays, and
    # one opened at close_8 does not.
    env = _funding_env("next_close", start=6)
    env.step(act(0.5))
    _, _, _, _, info = env.step(act(0.0))
    assert info["funding_paid"] == pytest.approx(1.0)
    env = _funding_env("next_close", start=7)
    _, _, _, _, info = env.step(act(0.5))
    assert info["funding_paid"] == 0.0


def test_funding_inside_long_bars_is_split_between_old_and_new_position():
    # Daily bars opening at 00:00 hold three settlements (00, 08, 16 UTC): a third at the open (old
    # position), two thirds later in the bar (position after the fill).
    from envs.trading_env import _split_funding

    idx = pd.date_range("2025-01-01", periods=3, freq="1D", tz="UTC")
    df = pd.DataFrame({c: 100.0 for c in ("open", "high", "low", "close")}, index=idx)
    df["volume"] = 1.0
    df["funding_rate"] = 3e-4
    at_open, inside = _split_funding(MarketData.from_frame(df))
    assert at_open == pytest.approx([1e-4] * 3) and inside == pytest.approx([2e-4] * 3)
    # Hourly bars: everything at the open.
    at_open, inside = _split_funding(make_market(flat_rows(10), funding={8: 1e-4}))
    assert at_open[8] == 1e-4 and sum(inside) == 0.0


def test_order_trimmed_to_the_margin_at_the_fill_price():
    # 3x cap, full long decided on close 100: 300 BTC wanted; bar 3 gaps +30 % to 130, where 300 BTC would be
    # 3.9x. Post-fill initial margin x * 130 / 3 <= equity 10000 - fee x * 130 * 0.0005:
    # x <= 10000 / (43.3333... + 0.065) = 230.42366 -> 230.423 BTC; 69.577 unfilled, fee 14.977495.
    rows = [(100.0, 100.0, 100.0, 100.0, 1000.0)] * 3 + [(130.0, 130.0, 130.0, 130.0, 1000.0)] * 3
    env = make_env(make_market(rows), leverage=3.0)
    env.reset(options={"start": 2})
    _, _, _, _, info = env.step(act(1.0))
    assert info["position"] == pytest.approx(230.423)
    assert info["unfilled_qty"] == pytest.approx(69.577)
    assert info["fees_paid"] == pytest.approx(14.977495)
    im = 230.423 * 130 / 3
    assert im == pytest.approx(9984.99667, abs=1e-5) and im <= info["equity"] == pytest.approx(9985.022505)
    # Reducing orders are never trimmed.
    _, _, _, _, info = env.step(act(0.1))
    assert info["unfilled_qty"] == 0.0 and info["position"] < 230.423


def test_tiered_liquidation_price_uses_the_bracket_at_the_liquidation_price():
    from envs.contract import liquidation_price

    # Long 2.6 BTC from 20000 (notional 52000: second bracket at the mark), wallet 9974. With the second
    # bracket: (9974 + 50 - 52000) / (2.6 * 0.005 - 2.6) = 16225.75, where the notional 42187 is in the first
    # bracket; with the first: (9974 - 52000) / (2.6 * 0.004 - 2.6) = 16228.7612 (notional 42194.8 <= 50000).
    tiers = ((50_000.0, 0.004, 0.0), (600_000.0, 0.005, 50.0))
    margin = MarginConfig(leverage=10.0, tiers=tiers)
    lp = liquidation_price(2.6, 20000.0, 9974.0, margin)
    assert lp == pytest.approx(42026 / 2.5896) and lp == pytest.approx(16228.7612, abs=1e-4)
    # The env liquidates on a low of 16227 (between the two answers).
    rows = flat_rows(3) + [(20000.0, 20000.0, 16227.0, 16500.0, 1000.0)] + flat_rows(2, 16500.0)
    env = make_env(make_market(rows), leverage=10.0, margin=margin)
    env.reset(options={"start": 2})
    _, _, term, _, info = env.step(act(0.5201))  # 2.6005 -> 2.6 BTC (0.52 in float32 is 2.599...)
    assert term and info["liquidated"]
    assert info["realized_pnl"] == pytest.approx(2.6 * (lp - 20000.0))
    assert_identity(info)


def test_flat_rate_above_the_first_bracket_warns_once():
    env = make_env(make_market(flat_rows(8)), leverage=20.0, episode_bars=4)
    env.reset(options={"start": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.step(act(0.2))  # 2 BTC = 40000 USDT: inside the first bracket, no warning
    with pytest.warns(UserWarning, match="flat_rate_max_notional"):
        env.step(act(0.5))  # 5 BTC = 100000 USDT
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.step(act(0.6))  # said once per env
    quiet_margin = MarginConfig(flat_rate_max_notional=None)
    quiet = make_env(make_market(flat_rows(8)), leverage=20.0, margin=quiet_margin)
    quiet.reset(options={"start": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.step(act(0.5))


def test_bracket_max_leverage_is_enforced():
    # At 20x only the first bracket (max 125x) allows the leverage; the second allows 10x: notional <= 50000.
    tiers = ((50_000.0, 0.004, 0.0, 125.0), (600_000.0, 0.005, 50.0, 10.0))
    margin = MarginConfig(leverage=20.0, tiers=tiers)
    assert margin.max_notional == 50_000.0
    env = make_env(make_market(flat_rows(6)), margin=margin, leverage=None)
    env.reset(options={"start": 2})
    _, _, _, _, info = env.step(act(0.5))  # 5 BTC = 100000 USDT wanted: 2.5 BTC allowed
    assert info["position"] == pytest.approx(2.5) and info["unfilled_qty"] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="maximum leverage of every bracket"):
        MarginConfig(leverage=130.0, max_leverage=200.0, tiers=tiers)
    from envs.contract import BINANCE_BTCUSDT_TIERS

    assert MarginConfig(leverage=20.0, tiers=BINANCE_BTCUSDT_TIERS).max_notional == 100_000_000.0
