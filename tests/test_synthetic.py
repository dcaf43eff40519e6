"""envs.synthetic: statistics match the parameters; seeding, valid bars, the oracle, calibrated funding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.market import load_funding_history, validate_bars
from envs.synthetic import (
    SYNTHETIC_KINDS,
    FundingParams,
    GarchParams,
    PlantedParams,
    _acf,
    _residual_shocks,
    calibrate_funding,
    default_funding_params,
    linear_recursion,
    make_market,
    parse_synthetic_spec,
    planted_oracle_positions,
    simulate,
    simulate_funding,
)

HOUR_DT = 3600 / (365 * 86400)


def _arrays(m):
    return {k: np.asarray(getattr(m, k)) for k in ("open", "high", "low", "close", "volume")}


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_bars_are_valid_seeded_and_have_funding(kind):
    a = make_market(kind, n_bars=3000, seed=7)
    b = make_market(kind, n_bars=3000, seed=7)
    c = make_market(kind, n_bars=3000, seed=8)
    for k in ("timestamps", "open", "high", "low", "close", "volume", "funding_rate"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.close, c.close) and not np.array_equal(a.funding_rate, c.funding_rate)
    # Real-data validation passes: finite, positive, low <= open/close <= high, volume >= 0, regular hourly
    # bars.
    assert validate_bars(a.timestamps, _arrays(a), a.funding_rate, source=kind) == 3600
    np.testing.assert_array_equal(a.open[1:], a.close[:-1])
    assert (a.high > np.maximum(a.open, a.close)).mean() > 0.9  # real ranges, not high == close
    assert a.has_funding
    # Settlements on the 8h grid (00/08/16 UTC) only.
    nz = np.flatnonzero(a.funding_rate)
    assert set(a.index[nz].hour) <= {0, 8, 16} and len(nz) >= 3000 // 8 - 5


def test_funding_params_do_not_move_prices():
    a = make_market("gbm", n_bars=500, seed=1)
    b = make_market("gbm", n_bars=500, seed=1, funding_mean=0.001)
    np.testing.assert_array_equal(a.close, b.close)
    assert b.funding_rate.sum() > a.funding_rate.sum()
    off = make_market("gbm", n_bars=500, seed=1, funding="off")
    assert not off.has_funding and not off.funding_rate.any()


def test_gbm_drift_and_vol():
    # Drift precision depends on the years simulated: 100k daily bars = 274 years, std of the estimate ~0.03.
    sim = simulate("gbm", n_bars=100_000, seed=11, bar_seconds=86400, drift=0.3, vol=0.5, funding="off")
    r, dt = sim.log_returns, 1 / 365
    assert r.mean() / dt == pytest.approx(0.3, abs=0.15)
    assert r.std() / math.sqrt(dt) == pytest.approx(0.5, rel=0.01)


def test_jump_intensity_and_variance():
    sim = simulate("jump", n_bars=200_000, seed=5, funding="off")
    p, r = sim.params, sim.log_returns
    years = len(r) * HOUR_DT
    assert sim.latent["jumps"].sum() / years == pytest.approx(p.jump_intensity, rel=0.1)
    # Intensity recovered from returns alone: the excess variance over the diffusion's is lambda E[J^2].
    lam = (r.var() - p.vol**2 * HOUR_DT) / (HOUR_DT * (p.jump_mean**2 + p.jump_std**2))
    assert lam == pytest.approx(p.jump_intensity, rel=0.2)
    kurt = ((r - r.mean()) ** 4).mean() / r.var() ** 2
    assert kurt > 6  # spikes: far fatter tails than a normal's 3
    gbm = simulate("gbm", n_bars=200_000, seed=5, vol=0.5, funding="off").log_returns
    assert np.abs(r).max() > 3 * np.abs(gbm).max()


def test_garch_recursion_persistence_and_vol():
    p = GarchParams(alpha=0.05, beta=0.9, df=8.0, vol=0.6)
    sim = simulate("garch", n_bars=200_000, seed=2, model=p, funding="off")
    h, r = sim.latent["variance"], sim.log_returns
    e = r - p.drift * HOUR_DT
    omega = p.vol**2 * HOUR_DT * (1 - p.alpha - p.beta)
    np.testing.assert_allclose(h[1:], omega + p.alpha * e[:-1] ** 2 + p.beta * h[:-1], rtol=1e-10)
    assert r.std() / math.sqrt(HOUR_DT) == pytest.approx(0.6, rel=0.05)
    # Squared returns' autocorrelation decays by (alpha + beta) per lag.
    a = _acf(e * e, 40)
    persistence = a[1:].sum() / a[:-1].sum()
    assert persistence == pytest.approx(p.alpha + p.beta, abs=0.02)
    z = sim.latent["shocks"]
    assert z.std() == pytest.approx(1.0, abs=0.02)


def test_regime_vols_and_durations():
    sim = simulate("regime", n_bars=200_000, seed=4, funding="off")
    p, reg, r = sim.params, sim.latent["regime"], sim.log_returns
    starts = np.r_[0, np.flatnonzero(np.diff(reg)) + 1]
    lengths = np.diff(np.r_[starts, len(reg)])
    for k in range(2):
        assert r[reg == k].std() / math.sqrt(HOUR_DT) == pytest.approx(p.vols[k], rel=0.03)
        # Complete visits only (the last one is cut by the end of the data). ~350 volatile visits: the mean's
        # standard error is ~6%, so 25% is over 4 standard errors.
        assert lengths[:-1][reg[starts[:-1]] == k].mean() == pytest.approx(
            p.mean_durations_hours[k], rel=0.25
        )
    vol_of_vol = np.array([r[i : i + 500].std() for i in range(0, len(r), 500)])
    assert vol_of_vol.max() / vol_of_vol.min() > 2  # visibly distinct regimes


def test_planted_ar_coefficient_and_vol():
    sim = simulate("planted", n_bars=100_000, seed=9, phi=0.15, vol=0.6, funding="off")
    r = sim.log_returns
    assert np.corrcoef(r[1:], r[:-1])[0, 1] == pytest.approx(0.15, abs=0.015)
    assert r.std() / math.sqrt(HOUR_DT) == pytest.approx(0.6, rel=0.02)


def test_planted_oracle_earns_the_planted_edge_and_has_no_lookahead():
    p = PlantedParams(phi=0.1, vol=0.6)
    sim = simulate("planted", n_bars=50_000, seed=3, model=p, funding="off")
    m, r = sim.market, sim.log_returns
    pos = planted_oracle_positions(m, p)
    assert set(np.unique(pos)) <= {-1.0, 0.0, 1.0}
    pnl = pos[:-1] * r[1:]  # position decided at bar t's close, held over bar t+1
    # Expected edge of sign(phi r_t) on r_{t+1}: phi E|r| = phi sigma sqrt(2/pi).
    expected = p.phi * p.vol * math.sqrt(HOUR_DT) * math.sqrt(2 / math.pi)
    assert pnl.mean() == pytest.approx(expected, rel=0.25)
    assert pnl.mean() / (pnl.std() / math.sqrt(len(pnl))) > 10  # clearly beats zero
    assert (-pos[:-1] * r[1:]).mean() < 0  # and the opposite policy loses
    # No look-ahead: changing the future leaves earlier decisions unchanged.
    cut = 30_000
    other = simulate("planted", n_bars=50_000, seed=4, model=p, funding="off").market
    joined = type(m)(
        timestamps=m.timestamps,
        open=np.r_[m.open[:cut], other.open[cut:] * m.close[cut - 1] / other.open[cut]],
        high=np.r_[m.high[:cut], other.high[cut:] * m.close[cut - 1] / other.open[cut]],
        low=np.r_[m.low[:cut], other.low[cut:] * m.close[cut - 1] / other.open[cut]],
        close=np.r_[m.close[:cut], other.close[cut:] * m.close[cut - 1] / other.open[cut]],
        volume=m.volume,
        funding_rate=m.funding_rate,
        bar_seconds=3600,
    )
    np.testing.assert_array_equal(planted_oracle_positions(joined, p)[:cut], pos[:cut])
    kelly = planted_oracle_positions(m, p, mode="kelly")
    assert np.all(np.abs(kelly) <= 1) and np.array_equal(np.sign(kelly), np.sign(pos))
    assert np.all(planted_oracle_positions(m, p, threshold=1.0) == 0)


def test_oracle_accounts_for_predictable_funding():
    # Huge, persistent funding: longs pay so much at settlements that the oracle goes short into them.
    f = FundingParams(mean=0.01, std=1e-4, phi=0.9, shock_prob=0.0, cap=None)
    sim = simulate("planted", n_bars=2000, seed=1, funding=f, phi=0.05)
    pos = sim.oracle_positions()
    settle_next = np.r_[sim.market.funding_rate[1:] != 0, False]
    assert np.all(pos[settle_next] == -1)
    with pytest.raises(ValueError, match="only the 'planted'"):
        simulate("gbm", n_bars=10, seed=0).oracle_positions()


def test_volume_rises_with_absolute_return():
    sim = simulate("garch", n_bars=50_000, seed=6, funding="off")
    v, r = sim.market.volume, np.abs(sim.log_returns)
    assert np.all(v > 0)
    assert np.corrcoef(np.log(v), r)[0, 1] > 0.2
    assert np.mean(v) == pytest.approx(5000, rel=0.3)  # about base per hour


def test_traded_notional_is_stationary_when_the_price_trends():
    # A strong drift takes the price far from s0; volume in coins must then move inversely, so that the
    # notional per bar (what impact and the participation cap really depend on) keeps its level.
    m = make_market("gbm", n_bars=20_000, seed=2, funding="off", drift=-1.5, vol=0.5)
    assert m.close[-1000:].mean() < 0.5 * m.close[:1000].mean()  # the price did trend
    notional = m.volume * m.close
    early, late = notional[:2000].mean(), notional[-2000:].mean()
    assert late == pytest.approx(early, rel=0.25)
    assert early == pytest.approx(5000 * 30_000, rel=0.3)  # base BTC/hour at s0


# ----------------------------------------------------------------------------------------------- funding
def test_funding_calibration_round_trip_plain_ar1():
    true = FundingParams(mean=1.2e-4, std=2.2e-4, phi=0.8, shock_prob=0.1, shock_ratio=6.0, cap=None)
    x = simulate_funding(true, 60_000, np.random.default_rng(0))
    fit = calibrate_funding(x, long_memory=False)
    assert fit.mean == pytest.approx(true.mean, abs=2e-5)
    assert fit.std == pytest.approx(true.std, rel=0.05)
    assert fit.phi == pytest.approx(true.phi, abs=0.015)
    assert fit.shock_prob == pytest.approx(true.shock_prob, rel=0.15)
    assert fit.shock_ratio == pytest.approx(true.shock_ratio, rel=0.1)


def test_default_funding_is_calibrated_on_the_real_history():
    real = load_funding_history().to_numpy()
    p = default_funding_params()
    assert p.mean == pytest.approx(real.mean()) and p.std == pytest.approx(real.std())
    assert p.phi == pytest.approx(np.corrcoef(real[1:], real[:-1])[0, 1], abs=1e-3)
    assert p.cap == pytest.approx(0.003)
    # A long simulation reproduces the real series' statistics: level, spread, persistence at 1 and 30
    # settlements (10 days: funding regimes), and the share of shock settlements.
    sim = simulate_funding(p, 40_000, np.random.default_rng(1))
    ra, sa = _acf(real, 30), _acf(sim, 30)
    assert sim.mean() == pytest.approx(real.mean(), rel=0.3)
    assert sim.std() == pytest.approx(real.std(), rel=0.1)
    assert sa[0] == pytest.approx(ra[0], abs=0.03) and sa[29] == pytest.approx(ra[29], abs=0.1)
    assert _residual_shocks(sim, p.phi)[0] == pytest.approx(_residual_shocks(real, p.phi)[0], abs=0.04)
    assert np.abs(sim).max() <= 0.003


def test_linear_recursion_matches_a_loop():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1.1, 1.1, 777)
    a[100] = 0.0
    b = rng.normal(size=777)
    x, ref = linear_recursion(a, b, 0.3), []
    v = 0.3
    for ai, bi in zip(a, b, strict=True):
        v = ai * v + bi
        ref.append(v)
    np.testing.assert_allclose(x, ref, rtol=1e-9, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(SYNTHETIC_KINDS),
    seed=st.integers(0, 2**31),
    n=st.integers(2, 300),
    bar=st.sampled_from([60, 300, 3600, 86400]),
)
def test_any_seed_and_size_give_valid_bars(kind, seed, n, bar):
    m = make_market(kind, n_bars=n, seed=seed, bar_seconds=bar)
    assert len(m) == n
    assert np.all(np.isfinite(m.close)) and np.all(m.low <= np.minimum(m.open, m.close))
    assert np.all(m.high >= np.maximum(m.open, m.close)) and np.all(m.low > 0) and np.all(m.volume >= 0)
    assert np.all(np.diff(m.timestamps) == bar * 10**9)


def test_parameter_errors_list_valid_names():
    with pytest.raises(ValueError, match="unknown synthetic kind 'levy'; valid: gbm"):
        make_market("levy", n_bars=10, seed=0)
    with pytest.raises(
        ValueError, match="unknown parameter 'sigma'.*valid: .*vol.*funding_mean.*volume_base"
    ):
        make_market("gbm", n_bars=10, seed=0, sigma=0.5)
    with pytest.raises(ValueError, match="alpha \\+ beta must be < 1"):
        make_market("garch", n_bars=10, seed=0, alpha=0.2, beta=0.85)
    with pytest.raises(ValueError, match="n_bars must be an int >= 2"):
        make_market("gbm", n_bars=1, seed=0)


def test_spec_parsing():
    assert parse_synthetic_spec("synthetic:jump:n_bars=20000,seed=3") == (
        "jump",
        {"n_bars": 20000, "seed": 3},
    )
    kind, kw = parse_synthetic_spec("synthetic:regime:vols=0.3/0.9,funding=off")
    assert kind == "regime" and kw["vols"] == (0.3, 0.9) and kw["funding"] == "off"
    assert parse_synthetic_spec("synthetic:gbm") == ("gbm", {"n_bars": 8760, "seed": 0})
