"""Property tests: the money identity and the invariants of CryptoFuturesEnv under random action sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from envs.contract import ExecutionConfig, MarginConfig
from envs.market import load_embedded
from envs.synthetic import make_market
from envs.trading_env import CryptoFuturesEnv

MARKET = load_embedded(
    "btcusdt-perp-1h-2025"
)  # one object: the features are computed once and shared by every env below


@settings(max_examples=60, deadline=None)
@given(
    actions=st.lists(st.floats(-1.5, 1.5, allow_nan=False, width=32), min_size=1, max_size=40),
    leverage=st.sampled_from([1.0, 3.0, 20.0, 100.0]),
    start=st.integers(55, 900),
    fill_at=st.sampled_from(["next_open", "next_close"]),
    participation=st.sampled_from([None, 1e-5]),
    deadband=st.sampled_from([0.0, 0.05]),
)
def test_money_is_conserved_and_invariants_hold(actions, leverage, start, fill_at, participation, deadband):
    _run(MARKET, actions, leverage, start, fill_at, participation, deadband, ExecutionConfig())


def _hostile_market(seed: int):
    """Thin, gappy, crashing synthetic bars: jumps and regime switches with tiny volume, and a flat gap."""
    m = make_market("jump", n_bars=400, seed=seed)
    df = m.to_frame()
    rng = np.random.default_rng(seed)
    df["volume"] = df["volume"] * 1e-3 * rng.uniform(0.0, 2.0, len(df))  # thin: big impact, partial fills
    for k in rng.integers(60, 380, 4):  # crashes and spikes: the next bars gap 15-40 %
        f = rng.choice([0.6, 0.75, 0.85, 1.2, 1.4])
        for c in ("open", "high", "low", "close"):
            df.iloc[k:, df.columns.get_loc(c)] = df.iloc[k:, df.columns.get_loc(c)] * f
    z = rng.integers(60, 380, 10)  # outage-like flat zero-volume bars
    prev = df["close"].to_numpy()[z - 1]
    for c in ("open", "high", "low", "close"):
        df.iloc[z, df.columns.get_loc(c)] = prev
    df.iloc[z, df.columns.get_loc("volume")] = 0.0
    from envs.market import MarketData

    return MarketData.from_frame(df, source=f"hostile:{seed}")


HOSTILE = [_hostile_market(s) for s in (0, 1)]


@settings(max_examples=40, deadline=None)
@given(
    actions=st.lists(st.floats(-1.0, 1.0, allow_nan=False, width=32), min_size=1, max_size=40),
    leverage=st.sampled_from([5.0, 20.0, 50.0]),
    start=st.integers(55, 360),
    fill_at=st.sampled_from(["next_open", "next_close"]),
    market=st.sampled_from([0, 1]),
    spread=st.sampled_from([0.5, 50.0]),
)
def test_money_is_conserved_on_thin_gappy_crashing_markets(actions, leverage, start, fill_at, market, spread):
    # Wide spreads and square-root impact on thin bars make closes fill beyond the bankruptcy price.
    ex = ExecutionConfig(half_spread_bps=spread, impact_coef=3.0)
    _run(HOSTILE[market], actions, leverage, start, fill_at, 0.5, 0.0, ex)


def _run(market, actions, leverage, start, fill_at, participation, deadband, base):
    from dataclasses import replace

    ex = replace(base, fill_at=fill_at, max_participation=participation, deadband=deadband)
    env = CryptoFuturesEnv(
        market,
        window=4,
        episode_bars=30,
        leverage=leverage,
        execution=ex,
        margin=MarginConfig(max_leverage=125, flat_rate_max_notional=None),
    )
    start = min(start, env.max_start)
    obs, info = env.reset(options={"start": start})
    initial = env.initial_balance
    prev_fees = prev_slip = prev_turnover = prev_bad = 0.0
    for a in actions:
        obs, r, term, trunc, info = env.step(np.array([a], dtype=np.float32))
        eq = info["equity"]
        rhs = (
            initial + info["realized_pnl"] + info["unrealized_pnl"] - info["fees_paid"] - info["funding_paid"]
        )
        # the identity, to a micro-cent relative to the money that went through the account
        assert eq == pytest.approx(rhs, abs=1e-9 * max(initial, info["turnover"]))
        assert eq >= 0.0
        assert info["fees_paid"] >= prev_fees >= 0.0
        assert info["slippage_paid"] >= prev_slip and info["turnover"] >= prev_turnover
        assert info["bad_debt"] >= prev_bad >= 0.0
        prev_fees, prev_slip, prev_turnover, prev_bad = (
            info["fees_paid"],
            info["slippage_paid"],
            info["turnover"],
            info["bad_debt"],
        )
        assert math.isfinite(r)
        assert env.observation_space.contains(obs)
        assert not (term and trunc)
        assert term == (info["liquidated"] or info["bankrupt"])
        if term:
            assert eq == 0.0 or info["liquidated"]
        lots = info["position"] / 0.001
        assert abs(lots - round(lots)) < 1e-6
        if term or trunc:
            assert "episode_metrics" in info
            event("bankrupt" if info["bankrupt"] else ("liquidated" if term else "truncated"))
            break
