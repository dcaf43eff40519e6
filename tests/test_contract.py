"""Pure contract mechanics (envs.contract): hand-computed values, to the cent or better."""

from __future__ import annotations

import math

import pytest

from envs.contract import (
    Account,
    ExecutionConfig,
    MarginConfig,
    apply_fill,
    fee,
    fill_price,
    funding_payment,
    liquidation_exit,
    liquidation_price,
    maintenance_margin,
    round_to_lot,
    sqrt_impact,
)


def test_round_to_lot_toward_zero():
    assert round_to_lot(0.12345, 0.001) == pytest.approx(0.123)
    assert round_to_lot(-0.12399, 0.001) == pytest.approx(-0.123)
    assert round_to_lot(0.0009, 0.001) == 0.0
    # 0.3 / 0.001 is 299.99999999999994 in floats: a whole number of lots must stay whole.
    assert round_to_lot(0.3, 0.001) == pytest.approx(0.3)


def test_fill_price_spread_and_impact_signs():
    # buy: 20000 * (1 + 0.00005 + 0.001) = 20021.0; sell: 20000 * (1 - 0.00105) = 19979.0
    assert fill_price(+1, 20000.0, 0.00005, 0.001) == pytest.approx(20021.0)
    assert fill_price(-1, 20000.0, 0.00005, 0.001) == pytest.approx(19979.0)


def test_sqrt_impact():
    # Y=0.5, sigma=0.01, qty 1 of volume 100: 0.5 * 0.01 * sqrt(0.01) = 0.0005
    assert sqrt_impact(1.0, 100.0, 0.01, 0.5) == pytest.approx(0.0005)
    assert sqrt_impact(-1.0, 100.0, 0.01, 0.5) == pytest.approx(0.0005)
    assert sqrt_impact(1.0, 0.0, 0.01, 0.5) == math.inf


def test_fee_and_funding_signs():
    assert fee(-0.5, 20000.0, 0.0005) == pytest.approx(5.0)
    # long 0.5 BTC, mark 20000, rate +0.0001: pays 1.00; a short receives 1.00; negative rate flips both.
    assert funding_payment(0.5, 20000.0, 0.0001) == pytest.approx(1.0)
    assert funding_payment(-0.5, 20000.0, 0.0001) == pytest.approx(-1.0)
    assert funding_payment(0.5, 20000.0, -0.0001) == pytest.approx(-1.0)


def test_apply_fill_average_entry_reduce_and_flip():
    pos, entry, real = apply_fill(0.0, 0.0, 1.0, 100.0)
    assert (pos, entry, real) == (1.0, 100.0, 0.0)
    pos, entry, real = apply_fill(pos, entry, 1.0, 110.0)  # add: entry (100 + 110) / 2 = 105
    assert (pos, entry, real) == (2.0, pytest.approx(105.0), 0.0)
    pos, entry, real = apply_fill(pos, entry, -0.5, 115.0)  # reduce: realize 0.5 * (115 - 105) = 5
    assert (pos, entry, real) == (1.5, pytest.approx(105.0), pytest.approx(5.0))
    pos, entry, real = apply_fill(pos, entry, -2.5, 100.0)  # flip: realize 1.5 * (100 - 105) = -7.5
    assert (pos, entry, real) == (pytest.approx(-1.0), 100.0, pytest.approx(-7.5))
    pos, entry, real = apply_fill(pos, entry, 1.0, 90.0)  # close the short: 1 * (100 - 90) = +10
    assert (pos, entry, real) == (0.0, 0.0, pytest.approx(10.0))


def test_liquidation_price_long_and_short():
    m = MarginConfig(leverage=10.0)
    # long 5 BTC at 20000, balance 9950: P = (9950 - 100000) / (5 * 0.004 - 5) = 90050 / 4.98 = 18082.3293...
    p_long = liquidation_price(5.0, 20000.0, 9950.0, m, 20000.0)
    assert p_long == pytest.approx(90050 / 4.98)
    # at that price equity == maintenance margin: 9950 + 5 * (P - 20000) == 5 * P * 0.004
    assert 9950 + 5 * (p_long - 20000) == pytest.approx(maintenance_margin(5.0, p_long, m))
    # short 5 BTC at 20000: P = (9950 + 100000) / (5 * 1.004) = 21902.390...
    p_short = liquidation_price(-5.0, 20000.0, 9950.0, m, 20000.0)
    assert p_short == pytest.approx(109950 / 5.02)
    assert liquidation_price(0.0, 0.0, 9950.0, m, 20000.0) == 0.0
    # a 1x long cannot be liquidated above 0: (10000 - 0.5 * 20000) / (...) = 0
    assert liquidation_price(0.5, 20000.0, 10000.0, MarginConfig(leverage=1.0), 20000.0) == 0.0


def test_liquidation_price_with_tiers():
    m = MarginConfig(leverage=10.0, tiers=((50_000.0, 0.004, 0.0), (600_000.0, 0.005, 50.0)))
    # notional 100000 is in the second bracket: P = (9950 + 50 - 100000) / (5 * 0.005 - 5) = 90000 / 4.975
    assert liquidation_price(5.0, 20000.0, 9950.0, m, 20000.0) == pytest.approx(90000 / 4.975)
    assert maintenance_margin(5.0, 20000.0, m) == pytest.approx(100000 * 0.005 - 50)


def test_liquidation_exit_gap_and_touch():
    # long, liquidation at 18000: low touches -> at 18000; open below -> at the (worse) open; untouched ->
    # None.
    assert liquidation_exit(1.0, 18000.0, 19000.0, 17900.0, 19100.0) == 18000.0
    assert liquidation_exit(1.0, 18000.0, 17500.0, 17000.0, 17600.0) == 17500.0
    assert liquidation_exit(1.0, 18000.0, 19000.0, 18100.0, 19100.0) is None
    # short, liquidation at 22000: high touches -> 22000; gap up -> the open
    assert liquidation_exit(-1.0, 22000.0, 21000.0, 20900.0, 22100.0) == 22000.0
    assert liquidation_exit(-1.0, 22000.0, 22500.0, 22400.0, 23000.0) == 22500.0
    assert liquidation_exit(0.0, 0.0, 1.0, 1.0, 1.0) is None


def test_account_identity_and_bad_debt():
    acct = Account(10_000.0)
    acct.fill(5.0, 20000.0, 20000.0, 0.0005)  # fee 50
    assert acct.balance == pytest.approx(9950.0)
    bad = acct.liquidate(
        17000.0, 0.0125
    )  # gap: loss 15000 > equity 9950 -> bad debt 5050, no fee left to pay
    assert bad == pytest.approx(5050.0)
    assert acct.balance == 0.0 and acct.position == 0.0
    assert acct.fees_paid == pytest.approx(50.0)
    assert acct.realized_pnl == pytest.approx(-15000.0 + 5050.0)
    eq = acct.equity(17000.0)
    assert eq == pytest.approx(
        acct.initial_balance
        + acct.realized_pnl
        + acct.unrealized(17000.0)
        - acct.fees_paid
        - acct.funding_paid
    )


def test_execution_config_rejects_close_fill_and_bad_values():
    with pytest.raises(ValueError, match="look-ahead"):
        ExecutionConfig(fill_at="close")
    with pytest.raises(ValueError, match="fill_at"):
        ExecutionConfig(fill_at="whenever")
    with pytest.raises(ValueError, match="taker_fee"):
        ExecutionConfig(taker_fee=-0.1)
    with pytest.raises(ValueError, match="max_participation"):
        ExecutionConfig(max_participation=0.0)
    with pytest.raises(ValueError, match="lot_size"):
        ExecutionConfig(lot_size=0.0)


def test_margin_config_validation():
    with pytest.raises(ValueError, match="max_leverage"):
        MarginConfig(leverage=200.0)
    with pytest.raises(ValueError, match="liquidated on opening"):
        MarginConfig(leverage=300.0, max_leverage=500.0)
    with pytest.raises(ValueError, match="tiers"):
        MarginConfig(tiers=((100.0, 0.01, 0.0), (50.0, 0.02, 1.0)))
