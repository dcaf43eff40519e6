"""CryptoFuturesVecEnv: step-for-step equality with N single envs, vector-env API checks, SB3 adapter."""

from __future__ import annotations

import numpy as np
import pytest

from envs.contract import ExecutionConfig, MarginConfig
from envs.loaders import load_market
from envs.market import MarketData
from envs.trading_env import INFO_KEYS, CryptoFuturesEnv
from envs.vec_env import CryptoFuturesVecEnv

# Spiky: frequent large jumps, so that 5x positions get liquidated (also through gaps) within a few hundred
# steps.
SPIKY = "synthetic:jump:n_bars=1500,seed=7,vol=0.9,jump_intensity=600,jump_std=0.09"
N = 12
EPISODE = 60
# Brackets (cap, mmr, maintenance amount[, max leverage]); with the 4th column, 5x may only reach 40,000 USDT.
TIERS = ((2_000.0, 0.004, 0.0), (20_000.0, 0.01, 12.0), (1e12, 0.05, 792.0))
TIERS_LEV = ((20_000.0, 0.004, 0.0, 125.0), (40_000.0, 0.01, 120.0, 10.0), (1e12, 0.05, 1_720.0, 4.0))


@pytest.fixture(scope="module")
def spiky():
    """The jump market with gaps added: synthetic bars are contiguous (open = previous close), real ones are
    not, and only a gap liquidates at the open, beyond the bankruptcy price (bad debt)."""
    df = load_market(SPIKY).to_frame()
    rng = np.random.default_rng(0)
    n = len(df)
    gap = np.exp(rng.normal(0.0, 0.002, n) + (rng.random(n) < 0.03) * rng.normal(0.0, 0.15, n))
    df["open"] = df["open"] * gap
    df["high"] = np.maximum(df["high"], df["open"])
    df["low"] = np.minimum(df["low"], df["open"])
    return MarketData.from_frame(df)


def _kwargs(market, action, fill_at, reward, tiers, impact=1.5):
    return dict(
        market=market,
        window=6,
        episode_bars=EPISODE,
        leverage=5.0,
        action=action,
        n_levels=5,
        reward=reward,
        execution=ExecutionConfig(
            taker_fee=0.0006,
            half_spread_bps=2.0 if impact < 10 else 2_500.0,
            impact_coef=impact,
            deadband=0.05,
            max_participation=0.0003,
            lot_size=0.001,
            min_qty=0.002,
            fill_at=fill_at,
        ),
        margin=MarginConfig(leverage=5.0, tiers=tiers, flat_rate_max_notional=None),
    )


def _actions(rng, action, steps):
    if action == "discrete":
        # Mostly extreme levels (full 5x long/short) with some flat and partial levels.
        return rng.choice([0, 0, 1, 2, 3, 4, 4], size=(steps, N))
    a = rng.uniform(-1.3, 1.3, size=(steps, N, 1)).astype(np.float32)
    a[rng.random((steps, N)) < 0.1] = 0.0
    return a


def _assert_close(x, y, what):
    np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9, err_msg=what)


@pytest.mark.parametrize(
    ("action", "fill_at", "reward", "tiers", "impact"),
    [
        ("continuous", "next_open", "log_return", None, 1.5),
        ("discrete", "next_open", "differential_sharpe", TIERS, 1.5),
        ("continuous", "next_close", "pnl", TIERS, 1.5),
        ("discrete", "next_close", "log_return", TIERS_LEV, 1.5),
        ("continuous", "next_open", "pnl", TIERS_LEV, 1.5),
        # Ruinous costs (25 % half-spread, huge impact): the margin trim still lets an order open, and closing it
        # costs more than the equity left, the bankruptcy path.
        ("continuous", "next_open", "log_return", None, 40.0),
        ("discrete", "next_close", "log_return", None, 40.0),
    ],
)
def test_vec_env_equals_single_envs_step_for_step(spiky, action, fill_at, reward, tiers, impact):
    kw = _kwargs(spiky, action, fill_at, reward, tiers, impact)
    vec = CryptoFuturesVecEnv(num_envs=N, **kw)
    singles = [CryptoFuturesEnv(**kw) for _ in range(N)]
    rng = np.random.default_rng(1)
    starts = rng.integers(vec.min_start, vec.max_start + 1, size=N)
    obs, infos = vec.reset(seed=3, options={"start": starts})
    for i, env in enumerate(singles):
        o, info = env.reset(options={"start": int(starts[i])})
        _assert_close(obs[i], o, f"reset obs env {i}")
        for k in INFO_KEYS:
            _assert_close(infos[k][i], info[k], f"reset info {k} env {i}")
    steps = 300
    acts = _actions(rng, action, steps)
    n_liq = n_trunc = n_bad_debt = n_partial = n_bankrupt = 0
    for s in range(steps):
        # Close accounts near their liquidation price (margin ratio, the last observation entry, above 0.4): with
        # ruinous costs the close lands beyond the bankruptcy price.
        step_acts = acts[s].copy()
        step_acts[obs[:, -1] > 0.4] = 0.0 if action == "continuous" else 2
        obs, rew, term, trunc, infos = vec.step(step_acts)
        assert obs.dtype == np.float32 and rew.dtype == np.float64
        assert term.dtype == bool and trunc.dtype == bool
        want_obs, want_rew, want_term, want_trunc = [], [], [], []
        want_info = {k: [] for k in INFO_KEYS}
        for i, env in enumerate(singles):
            a = step_acts[i] if action == "continuous" else int(step_acts[i])
            o, r, te, tr, info = env.step(a)
            want_rew.append(r)
            want_term.append(te)
            want_trunc.append(tr)
            if te or tr:
                where = f"step {s} env {i}"
                assert infos["_final_obs"][i] and infos["_final_info"][i], where
                _assert_close(infos["final_obs"][i], o, f"final obs {where}")
                fi = infos["final_info"]
                for k in INFO_KEYS:
                    _assert_close(fi[k][i], info[k], f"final info {k} {where}")
                for k, v in info["episode_metrics"].items():
                    _assert_close(fi["episode_metrics"][k][i], v, f"episode metric {k} {where}")
                n_liq += info["liquidated"]
                n_bankrupt += info["bankrupt"]
                n_trunc += tr
                n_bad_debt += info["bad_debt"] > 0
                # The vec env drew the next episode's start from its np_random; pin the single env to it.
                o, info = env.reset(options={"start": int(infos["bar_index"][i])})
            else:
                n_partial += info["unfilled_qty"] > 0
            want_obs.append(o)
            for k in INFO_KEYS:
                want_info[k].append(info[k])
        np.testing.assert_array_equal(term, want_term, err_msg=f"terminated, step {s}")
        np.testing.assert_array_equal(trunc, want_trunc, err_msg=f"truncated, step {s}")
        assert not np.any(term & trunc)
        np.testing.assert_array_equal(infos.get("_final_obs", False), term | trunc)
        _assert_close(rew, want_rew, f"reward, step {s}")
        _assert_close(obs, np.stack(want_obs), f"obs, step {s}")
        for k in INFO_KEYS:
            _assert_close(infos[k], np.asarray(want_info[k], dtype=float), f"info {k}, step {s}")
    # The comparison only means something if the rare paths ran: liquidations (some beyond the bankruptcy
    # price, on a gap: bad debt), truncations (so autoresets), partial fills (participation cap, margin trim),
    # and with ruinous costs bankruptcies on a close.
    if impact >= 10:
        assert n_bankrupt >= 3, n_bankrupt
    else:
        assert n_liq >= 3, n_liq
        assert n_bad_debt >= 1, n_bad_debt
        assert n_trunc >= N, n_trunc
    assert n_partial >= 50, n_partial
