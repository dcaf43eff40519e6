"""USDT-margined (linear) perpetual-futures contract mechanics: fills, fees, impact, funding, margin,
liquidation.

Everything here is plain Python-float arithmetic (no numpy on the hot path: scalar math on Python floats is
several times faster than numpy on 0-d arrays), so that :class:`envs.trading_env.CryptoFuturesEnv` and the
execution env of issue 7 share one definition of the money. The functions are pure; :class:`Account` is the
one mutable piece, a ledger that keeps the identity::

    equity == initial_balance + realized_pnl + unrealized_pnl - fees_paid - funding_paid

exact (up to float rounding) after every operation.

Conventions (USDT-margined linear contract, one position per account, cross margin on the whole account):

* ``position`` is signed, in base units (BTC); ``notional = |position| * price`` in quote currency (USDT).
* Wallet ``balance = initial + realized_pnl - fees_paid - funding_paid``; ``equity = balance +
  unrealized_pnl`` with ``unrealized_pnl = position * (mark - entry_price)``.
* Spread and impact are inside the fill price, hence inside realized/unrealized PnL; ``slippage_paid`` reports
  their cost (``|qty| * |fill - reference price|``) for information only, it is *not* subtracted a second
  time.
* Liquidation when ``equity <= maintenance margin``; the position is closed at the liquidation price (or at
  the bar's open when the bar gaps through it), a liquidation fee is charged out of what is left, and any loss
  beyond the account's equity is absorbed (as an exchange's insurance fund does): it is credited back to
  ``realized_pnl`` and reported as ``bad_debt`` so that equity is floored at 0 and the identity above still
  holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = [
    "ExecutionConfig",
    "MarginConfig",
    "Account",
    "round_to_lot",
    "sqrt_impact",
    "fill_price",
    "fee",
    "funding_payment",
    "maintenance_params",
    "maintenance_margin",
    "liquidation_price",
    "liquidation_exit",
    "apply_fill",
    "BINANCE_BTCUSDT_TIERS",
    "FILL_AT",
]

#: Accepted values of :attr:`ExecutionConfig.fill_at`.
FILL_AT = ("next_open", "next_close")

# Relative tolerance used to snap a position that should be exactly flat (float residue of lot arithmetic) to
# 0.
_FLAT_EPS = 1e-9


@dataclass(frozen=True)
class ExecutionConfig:
    """How orders become fills. Defaults model a VIP0 taker on Binance USDⓈ-M BTCUSDT.

    Attributes:
        taker_fee: fee rate on traded notional for market orders (Binance USDⓈ-M VIP0: 0.05 %). The envs send
            market orders, so this is the rate charged.
        maker_fee: maker rate (VIP0: 0.02 %), kept for limit-order execution (issue 7); unused by market
            orders.
        half_spread_bps: half the effective bid-ask spread, in basis points of the reference price. BTCUSDT's
            quoted spread is one tick (0.1 USDT, ~0.01 bp at 100k), but a market order of tens of thousands of
            USDT also walks the first levels and pays for latency between decision and fill; 0.5 bp per side
            is a conservative effective figure that keeps a policy from living off free round trips.
        impact_coef: ``Y`` of the square-root law: impact (fraction of price) ``= Y * sigma * sqrt(qty /
            volume)`` with ``sigma`` the bar volatility (std of log returns per bar, estimated from past bars
            only) and ``volume`` the fill bar's volume. Empirical studies (Toth et al. 2011, "Anomalous price
            impact and the critical nature of liquidity", Phys. Rev. X 1) find ``Y`` of order 1. The per-bar
            form equals the daily form ``Y * sigma_d * sqrt(Q / V_d)`` since both sigma^2 and volume scale
            with time.
        vol_halflife: half-life in bars of the EWMA volatility estimate used for impact (and feature scaling).
        lot_size: quantity step in base units (BTCUSDT: 0.001). Orders are rounded toward zero to a multiple.
        min_qty: smallest order in base units (BTCUSDT: 0.001); smaller orders are not sent.
        deadband: rebalances smaller than this fraction of the maximum position (``leverage * equity``
            notional) are not traded, so that a policy's jitter does not churn fees (a no-trade band around
            the current position, Garleanu & Pedersen 2013). 0 disables it. Default 0.2 (was 0.01): a policy's
            target drifts a little every bar and 0.01 traded each drift; 0.2 still lets a policy go flat ->
            long in one step. Alone it changed little for PPO (whose early targets swing by more than 0.2);
            with the narrower default PPO policy it is part of the set that learned (benchmarks/LEARNING.md).
        max_participation: largest share of the fill bar's volume one order may take. A bigger order fills
            partially (rounded down to the lot) and the rest is dropped, not carried to the next bar (the
            agent re-decides every bar). ``None`` disables the cap. A bar with zero volume fills nothing.
        fill_at: ``"next_open"`` (default): the order decided on bar t's close fills at bar t+1's open.
            ``"next_close"``: at bar t+1's close (the position held during bar t+1 is the old one). Filling at
            the close the agent has just observed is the classic look-ahead of trading envs and is not
            offered.
    """

    taker_fee: float = 0.0005
    maker_fee: float = 0.0002
    half_spread_bps: float = 0.5
    impact_coef: float = 1.0
    vol_halflife: float = 24.0
    lot_size: float = 0.001
    min_qty: float = 0.001
    deadband: float = 0.2
    max_participation: float | None = 0.1
    fill_at: str = "next_open"

    def __post_init__(self) -> None:
        if self.fill_at not in FILL_AT:
            extra = (
                " Filling at the close the agent has just observed uses a price it could not have traded at "
                "(look-ahead), so it is not offered."
                if self.fill_at in ("close", "current_close", "this_close")
                else ""
            )
            raise ValueError(f"ExecutionConfig.fill_at={self.fill_at!r} is not one of {FILL_AT}.{extra}")
        for name in ("taker_fee", "maker_fee", "half_spread_bps", "impact_coef", "deadband"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"ExecutionConfig.{name} must be a finite number >= 0, got {v!r}")
        for name in ("lot_size", "min_qty", "vol_halflife"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"ExecutionConfig.{name} must be a finite number > 0, got {v!r}")
        if self.deadband >= 1:
            raise ValueError(
                f"ExecutionConfig.deadband is a fraction of the maximum position, < 1; got {self.deadband}"
            )
        mp = self.max_participation
        if mp is not None and not (isinstance(mp, (int, float)) and 0 < mp <= 1):
            raise ValueError(f"ExecutionConfig.max_participation must be in (0, 1] or None, got {mp!r}")

    @property
    def half_spread(self) -> float:
        """Half-spread as a fraction of price."""
        return self.half_spread_bps * 1e-4


@dataclass(frozen=True)
class MarginConfig:
    """Leverage, maintenance margin and liquidation fee.

    Attributes:
        leverage: the env's maximum position is ``leverage * equity`` notional (initial margin = notional /
            leverage). Default 3x.
        max_leverage: the largest leverage the contract allows (Binance BTCUSDT: 125x at the first tier).
        maintenance_margin_rate: maintenance margin as a fraction of notional when ``tiers`` is None (0.4 %:
            Binance's first BTCUSDT tier).
        tiers: optional brackets by position notional, ``((notional_cap, mmr, maintenance_amount[,
            max_leverage]), ...)`` with increasing caps; maintenance margin ``= notional * mmr -
            maintenance_amount`` for the first bracket whose cap is >= the notional (the last bracket covers
            everything above). Copy them from the exchange's leverage brackets (Binance ``GET
            /fapi/v1/leverageBracket``: notionalCap, maintMarginRatio, cum, initialLeverage);
            :data:`BINANCE_BTCUSDT_TIERS` is a snapshot. The liquidation price uses the bracket of the
            notional *at the liquidation price* (Binance's rule). With a 4th entry, a position may only reach
            the cap of the last bracket whose maximum leverage is >= ``leverage``: orders are trimmed to it.
        flat_rate_max_notional: with ``tiers=None``, the notional up to which the flat rate is realistic
            (Binance BTCUSDT's first bracket: 50,000 USDT); the envs warn once when a position goes above it.
            ``None`` silences the warning.
        liquidation_fee_rate: fee on the liquidated notional, charged out of the remaining margin (never more
            than what is left). 1.25 %: the ``liquidationFee`` Binance's ``/fapi/v1/exchangeInfo`` has
            reported for BTCUSDT. Being above the 0.4 % maintenance rate, it takes all that remains: a
            liquidation costs the whole equity, as it does in practice.
    """

    leverage: float = 3.0
    max_leverage: float = 125.0
    maintenance_margin_rate: float = 0.004
    tiers: tuple[tuple[float, float, float], ...] | None = None
    liquidation_fee_rate: float = 0.0125
    flat_rate_max_notional: float | None = 50_000.0
    _caps: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("leverage", "max_leverage"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"MarginConfig.{name} must be a finite number > 0, got {v!r}")
        if self.leverage > self.max_leverage:
            raise ValueError(
                f"MarginConfig.leverage={self.leverage} exceeds max_leverage={self.max_leverage}; lower the "
                "leverage or raise max_leverage"
            )
        for name in ("maintenance_margin_rate", "liquidation_fee_rate"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise ValueError(f"MarginConfig.{name} must be in [0, 1), got {v!r}")
        if self.tiers is not None:
            tiers = tuple(tuple(float(x) for x in t) for t in self.tiers)
            if not tiers or any(len(t) not in (3, 4) for t in tiers) or len({len(t) for t in tiers}) > 1:
                raise ValueError(
                    "MarginConfig.tiers must be a non-empty sequence of (notional_cap, mmr, "
                    "maintenance_amount) or (notional_cap, mmr, maintenance_amount, max_leverage), all of "
                    f"one length; got {self.tiers!r}"
                )
            if len(tiers[0]) == 4:
                lev_ok = [t[3] for t in tiers if t[3] >= self.leverage]
                if not lev_ok:
                    raise ValueError(
                        f"MarginConfig.leverage={self.leverage} exceeds the maximum leverage of every "
                        f"bracket (first bracket: {tiers[0][3]:g}x); lower the leverage"
                    )
            caps = [t[0] for t in tiers]
            increasing = all(b > a for a, b in zip(caps, caps[1:], strict=False))
            if not increasing or any(not 0 <= t[1] < 1 for t in tiers):
                raise ValueError(
                    f"MarginConfig.tiers need increasing caps and mmr in [0, 1), got {self.tiers!r}"
                )
            object.__setattr__(self, "tiers", tiers)
            object.__setattr__(self, "_caps", tuple(caps))
            first_mmr = tiers[0][1]
        else:
            first_mmr = self.maintenance_margin_rate
        fm = self.flat_rate_max_notional
        if fm is not None and not (isinstance(fm, (int, float)) and fm > 0):
            raise ValueError(f"MarginConfig.flat_rate_max_notional must be > 0 or None, got {fm!r}")
        if self.leverage * first_mmr >= 1:
            raise ValueError(
                f"MarginConfig.leverage={self.leverage} with maintenance margin rate {first_mmr} would be "
                "liquidated on opening (initial margin 1/leverage <= maintenance rate); use leverage < "
                f"{1 / first_mmr:g}"
            )


    @property
    def max_notional(self) -> float:
        """Largest position notional the brackets allow at ``leverage`` (``inf`` without a leverage column).

        Binance lets a position grow only within brackets whose maximum leverage is at least the position's
        leverage setting: the cap of the last such bracket.
        """
        if self.tiers is None or len(self.tiers[0]) < 4:
            return math.inf
        caps = [t[0] for t in self.tiers if t[3] >= self.leverage]
        return max(caps)


#: Binance USDⓈ-M BTCUSDT leverage brackets ``(notional_cap, mmr, cum, max_leverage)`` as published by ``GET
#: /fapi/v1/leverageBracket`` (snapshot of 2023-2024; they change: copy the current ones for live numbers).
BINANCE_BTCUSDT_TIERS: tuple[tuple[float, float, float, float], ...] = (
    (50_000.0, 0.004, 0.0, 125.0),
    (600_000.0, 0.005, 50.0, 100.0),
    (3_000_000.0, 0.0065, 950.0, 75.0),
    (12_000_000.0, 0.01, 11_450.0, 50.0),
    (70_000_000.0, 0.02, 131_450.0, 25.0),
    (100_000_000.0, 0.025, 481_450.0, 20.0),
    (230_000_000.0, 0.05, 2_981_450.0, 10.0),
    (480_000_000.0, 0.1, 14_481_450.0, 5.0),
    (600_000_000.0, 0.125, 26_481_450.0, 4.0),
    (800_000_000.0, 0.15, 41_481_450.0, 3.0),
    (1_200_000_000.0, 0.25, 121_481_450.0, 2.0),
    (1_800_000_000.0, 0.5, 421_481_450.0, 1.0),
)


# ----------------------------------------------------------------------------------------------- pure
# functions


def flat_rate_warning(owner: str, notional: float, flat_max: float, mmr: float) -> str:
    """The message both trading envs give (once each) when a position outgrows the flat maintenance rate's
    range: above Binance's first bracket the real rate is higher, so liquidations would come too late."""
    return (
        f"{owner}: a position notional of {notional:,.0f} USDT is above "
        f"MarginConfig.flat_rate_max_notional={flat_max:,.0f} (Binance BTCUSDT's first bracket) "
        f"while a flat maintenance rate of {mmr:g} is used: the real rate is higher there. Pass "
        "MarginConfig(tiers=envs.contract.BINANCE_BTCUSDT_TIERS) for tiered maintenance margin, or "
        "flat_rate_max_notional=None to silence this (said once per env)."
    )


def round_to_lot(qty: float, lot_size: float) -> float:
    """Round a signed quantity toward zero to a multiple of ``lot_size`` (never trades more than asked).

    The ``1e-9`` guard keeps quantities that are a whole number of lots up to float error (``0.3 / 0.001``)
    whole.
    """
    n = math.floor(abs(qty) / lot_size + 1e-9)
    return math.copysign(n * lot_size, qty) if n else 0.0


def sqrt_impact(qty: float, volume: float, volatility: float, coef: float) -> float:
    """Square-root-law price impact as a fraction of price: ``coef * volatility * sqrt(|qty| / volume)``.

    Args:
        qty: order size in base units (sign ignored).
        volume: traded volume of the bar the order fills in (base units); ``<= 0`` gives ``inf`` (no
            liquidity).
        volatility: std of log returns per bar, estimated from past bars only.
        coef: the law's ``Y`` (order 1).
    """
    if volume <= 0.0:
        return math.inf
    return coef * volatility * math.sqrt(abs(qty) / volume)


def fill_price(side: float, reference: float, half_spread: float, impact: float) -> float:
    """Price paid by a market order: buys (``side > 0``) pay above the reference, sells receive below it.

    ``reference * (1 + sign(side) * (half_spread + impact))``.
    """
    if side > 0:
        return reference * (1.0 + half_spread + impact)
    return reference * (1.0 - half_spread - impact)


def fee(qty: float, price: float, rate: float) -> float:
    """Fee on the traded notional ``|qty| * price * rate`` (never negative for rate >= 0)."""
    return abs(qty) * price * rate


def funding_payment(position: float, mark_price: float, rate: float) -> float:
    """Funding paid by the account at one settlement: ``position * mark_price * rate``.

    Positive means the account pays: longs pay shorts when the rate is positive, shorts pay longs when it is
        negative.
    """
    return position * mark_price * rate


def maintenance_params(notional: float, margin: MarginConfig) -> tuple[float, float]:
    """``(mmr, maintenance_amount)`` of the bracket that holds ``notional``."""
    tiers = margin.tiers
    if tiers is None:
        return margin.maintenance_margin_rate, 0.0
    for t in tiers:
        if notional <= t[0]:
            return t[1], t[2]
    return tiers[-1][1], tiers[-1][2]


def maintenance_margin(position: float, price: float, margin: MarginConfig) -> float:
    """Maintenance margin of a position at ``price``: ``notional * mmr - maintenance_amount`` (>= 0)."""
    notional = abs(position) * price
    mmr, amount = maintenance_params(notional, margin)
    return max(notional * mmr - amount, 0.0)


def liquidation_price(
    position: float,
    entry_price: float,
    balance: float,
    margin: MarginConfig,
    mark_price: float | None = None,
) -> float:
    """Price at which ``equity == maintenance margin`` for a single position on the account.

    Solves ``balance + position * (P - entry) = |position| * P * mmr - amount`` for ``P``::

        P = (balance + amount - position * entry) / (|position| * mmr - position)

    With tiers, ``(mmr, amount)`` is the bracket of the notional ``|position| * P`` *at the liquidation price
    itself* (Binance's rule): each bracket's solution is tried and the one whose notional falls inside that
    bracket is returned. ``mark_price`` is not needed and kept for backward compatibility.

    Returns:
        The liquidation price; ``0.0`` for a flat account or a long that cannot be liquidated (its liquidation
        price would be <= 0, e.g. fully collateralized).
    """
    if position == 0.0:
        return 0.0
    size = abs(position)
    tiers = margin.tiers
    if tiers is None:
        p = (balance - position * entry_price) / (size * margin.maintenance_margin_rate - position)
        return p if p > 0.0 else 0.0
    lo = 0.0
    p = 0.0
    for t in tiers:
        cap, mmr, amount = t[0], t[1], t[2]
        p = (balance + amount - position * entry_price) / (size * mmr - position)
        if p <= 0.0:
            p = 0.0
        if lo <= size * p <= cap:
            return p
        lo = cap
    # The last bracket covers every notional above its predecessors' caps.
    return p


def liquidation_exit(
    position: float, liq_price: float, open_: float, low: float, high: float
) -> float | None:
    """Where a position is liquidated during a bar, or ``None`` if it is not.

    The adverse extreme (``low`` for a long, ``high`` for a short) is compared with the liquidation price. If
    the bar already opens beyond it (a gap), the position is closed at the open, which is worse than the
    liquidation price; otherwise at the liquidation price itself.
    """
    if position > 0.0:
        if liq_price <= 0.0:
            return None
        if open_ <= liq_price:
            return open_
        return liq_price if low <= liq_price else None
    if position < 0.0:
        if open_ >= liq_price:
            return open_
        return liq_price if high >= liq_price else None
    return None


def apply_fill(position: float, entry_price: float, qty: float, price: float) -> tuple[float, float, float]:
    """Position bookkeeping for a fill of signed ``qty`` at ``price`` (average-entry-price method).

    Returns:
        ``(new_position, new_entry_price, realized_pnl)``; the realized PnL is on the part that reduced the
        position, ``closed * (price - entry) * sign(position)``. A flip opens the remainder at ``price``; a
        flat result has entry price 0.
    """
    new_pos = position + qty
    if abs(new_pos) <= _FLAT_EPS * max(abs(position), abs(qty)):
        new_pos = 0.0
    if position == 0.0 or (position > 0.0) == (qty > 0.0):
        # Opening or adding: weighted average entry.
        if new_pos == 0.0:
            return 0.0, 0.0, 0.0
        entry = (abs(position) * entry_price + abs(qty) * price) / (abs(position) + abs(qty))
        return new_pos, entry, 0.0
    closed = min(abs(qty), abs(position))
    realized = closed * (price - entry_price) if position > 0.0 else closed * (entry_price - price)
    if new_pos == 0.0:
        return 0.0, 0.0, realized
    if (new_pos > 0.0) == (position > 0.0):
        return new_pos, entry_price, realized  # partial reduce: entry unchanged
    return new_pos, price, realized  # flip: the remainder opens at the fill price


# ----------------------------------------------------------------------------------------------- the ledger


class Account:
    """Mutable ledger of one USDT-margined account holding one perpetual position.

    All amounts are Python floats in quote currency, cumulative since :meth:`reset`. See the module docstring
    for the identity it keeps and the conventions.
    """

    __slots__ = (
        "initial_balance",
        "balance",
        "position",
        "entry_price",
        "realized_pnl",
        "fees_paid",
        "funding_paid",
        "slippage_paid",
        "turnover",
        "bad_debt",
        "liquidations",
    )

    def __init__(self, initial_balance: float) -> None:
        if not (math.isfinite(initial_balance) and initial_balance > 0):
            raise ValueError(f"initial_balance must be a finite number > 0, got {initial_balance!r}")
        self.initial_balance = float(initial_balance)
        self.reset()

    def reset(self) -> None:
        """Back to the initial balance, flat, all totals zero."""
        self.balance = self.initial_balance
        self.position = 0.0
        self.entry_price = 0.0
        self.realized_pnl = 0.0
        self.fees_paid = 0.0
        self.funding_paid = 0.0
        self.slippage_paid = 0.0
        self.turnover = 0.0
        self.bad_debt = 0.0
        self.liquidations = 0

    def unrealized(self, mark: float) -> float:
        """Unrealized PnL at ``mark``."""
        return self.position * (mark - self.entry_price)

    def equity(self, mark: float) -> float:
        """``balance + unrealized`` at ``mark``."""
        return self.balance + self.position * (mark - self.entry_price)

    def fill(self, qty: float, price: float, reference: float, fee_rate: float) -> float:
        """Book a fill of signed ``qty`` at ``price`` (spread/impact included) against ``reference``.

        Returns:
            The fee charged.
        """
        pos, entry, realized = apply_fill(self.position, self.entry_price, qty, price)
        f = abs(qty) * price * fee_rate
        self.position = pos
        self.entry_price = entry
        self.realized_pnl += realized
        self.fees_paid += f
        self.balance += realized - f
        self.slippage_paid += abs(qty) * abs(price - reference)
        self.turnover += abs(qty) * price
        return f

    def pay_funding(self, mark: float, rate: float) -> float:
        """Settle funding on the current position; returns the amount paid (negative = received)."""
        pay = self.position * mark * rate
        self.funding_paid += pay
        self.balance -= pay
        return pay

    def liquidation_price(self, margin: MarginConfig, mark: float | None = None) -> float:
        """:func:`liquidation_price` of the current position and balance."""
        return liquidation_price(self.position, self.entry_price, self.balance, margin, mark)

    def absorb_shortfall(self) -> float:
        """A flat account whose wallet went negative (a fill beyond the bankruptcy price: impact and fee
        larger than the equity left) is bankrupt: the shortfall is absorbed like a liquidation's, credited to
        ``realized_pnl`` and reported as ``bad_debt``, so the wallet is 0 and the identity holds.

        Returns:
            The bad debt absorbed (0 when the wallet is not negative or a position is still open).
        """
        if self.position != 0.0 or self.balance >= 0.0:
            return 0.0
        bad = -self.balance
        self.realized_pnl += bad
        self.bad_debt += bad
        self.balance = 0.0
        return bad

    def liquidate(self, price: float, fee_rate: float) -> float:
        """Close the whole position at ``price`` as a forced liquidation.

        The liquidation fee ``fee_rate * notional`` is taken out of the equity that is left (never more); a
        loss beyond the equity is absorbed: credited back to ``realized_pnl``, added to ``bad_debt``, balance
            set to 0.

        Returns:
            The bad debt absorbed by this liquidation (0 when the equity covered the loss).
        """
        pos = self.position
        pnl = pos * (price - self.entry_price)
        self.realized_pnl += pnl
        self.balance += pnl
        f = min(abs(pos) * price * fee_rate, max(self.balance, 0.0))
        self.fees_paid += f
        self.balance -= f
        self.turnover += abs(pos) * price
        bad = 0.0
        if self.balance < 0.0:
            bad = -self.balance
            self.realized_pnl += bad
            self.bad_debt += bad
            self.balance = 0.0
        self.position = 0.0
        self.entry_price = 0.0
        self.liquidations += 1
        return bad
