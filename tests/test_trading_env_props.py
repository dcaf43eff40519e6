"""Property tests: the money identity and the invariants of CryptoFuturesEnv under random action sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from envs.contract import ExecutionConfig, MarginConfig
from envs.market import load_embedded
from envs.trading_env import CryptoFuturesEnv

MARKET = load_embedded()  # one object: the features are computed once and shared by every env below


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
    ex = ExecutionConfig(fill_at=fill_at, max_participation=participation, deadband=deadband)
    env = CryptoFuturesEnv(
        MARKET,
        window=4,
        episode_bars=30,
        leverage=leverage,
        execution=ex,
        margin=MarginConfig(max_leverage=125),
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
        assert term == info["liquidated"]
        lots = info["position"] / 0.001
        assert abs(lots - round(lots)) < 1e-6
        if term or trunc:
            assert "episode_metrics" in info
            event("liquidated" if term else "truncated")
            break
