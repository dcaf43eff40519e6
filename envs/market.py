"""Market data as aligned numpy arrays: the one structure every env in perpclip reads.

Pandas is used here, at load time only; the envs' ``step`` sees plain float64/int64 arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

__all__ = ["MarketData", "load_embedded", "EMBEDDED"]

_OHLCV = ("open", "high", "low", "close", "volume")

#: Names accepted by :func:`load_embedded` (and by ``--data`` in train.py).
EMBEDDED = ("btcusdt-1h",)


@dataclass(frozen=True, eq=False)
class MarketData:
    """Bars of one perpetual contract, aligned, validated and read-only.

    Attributes:
        timestamps: int64 nanoseconds since the epoch (UTC) of each bar's *open* time, strictly increasing.
        open, high, low, close: float64 prices in quote currency (USDT), all > 0, ``low <= open, close <= high``.
        volume: float64 traded volume in base units (BTC) per bar, >= 0.
        funding_rate: float64 funding rate (fraction) settled *inside* each bar, 0 where no settlement falls in
            the bar. A settlement at time ``s`` belongs to the bar with ``open <= s < open + bar``.
        bar_seconds: the bar interval in seconds.
        funding_interval_hours: hours between funding settlements (8 on Binance BTCUSDT).
        symbol: contract name, informational.
        source: where the data came from (file path, generator and seed, ...), informational.
        has_funding: False when no funding data was given (the rate is then zero everywhere).
    """

    timestamps: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    funding_rate: np.ndarray
    bar_seconds: int
    funding_interval_hours: float = 8.0
    symbol: str = "BTCUSDT"
    source: str = ""
    has_funding: bool = True

    def __post_init__(self) -> None:
        n = len(self.timestamps)
        for name in ("timestamps", *_OHLCV, "funding_rate"):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.ndim != 1 or len(arr) != n:
                raise ValueError(
                    f"MarketData.{name} must be a 1-D numpy array of length {n} (as timestamps); "
                    f"got {type(arr).__name__} with shape {getattr(arr, 'shape', None)}"
                )
        if self.bar_seconds <= 0:
            raise ValueError(f"MarketData.bar_seconds must be > 0, got {self.bar_seconds}")
        # Read-only arrays: envs share one MarketData between many copies (vectorized envs, folds).
        for name in ("timestamps", *_OHLCV, "funding_rate"):
            getattr(self, name).flags.writeable = False

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def index(self) -> pd.DatetimeIndex:
        """Bar open times as a UTC DatetimeIndex."""
        return pd.DatetimeIndex(pd.to_datetime(self.timestamps, unit="ns", utc=True), name="timestamp")

    def slice(self, start: int, stop: int) -> MarketData:
        """Bars ``[start, stop)`` as a new MarketData (views, no copy)."""
        if not 0 <= start < stop <= len(self):
            raise ValueError(f"slice [{start}, {stop}) is out of range for {len(self)} bars")
        arrays = {k: getattr(self, k)[start:stop] for k in ("timestamps", *_OHLCV, "funding_rate")}
        return MarketData(
            **arrays,
            bar_seconds=self.bar_seconds,
            funding_interval_hours=self.funding_interval_hours,
            symbol=self.symbol,
            source=f"{self.source}[{start}:{stop}]",
            has_funding=self.has_funding,
        )

    def to_frame(self) -> pd.DataFrame:
        """The bars as a DataFrame with a UTC DatetimeIndex and columns open..volume, funding_rate."""
        return pd.DataFrame({k: getattr(self, k) for k in (*_OHLCV, "funding_rate")}, index=self.index)

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        *,
        funding: pd.Series | None = None,
        symbol: str = "BTCUSDT",
        source: str = "DataFrame",
        funding_interval_hours: float = 8.0,
    ) -> MarketData:
        """Build from a DataFrame with a DatetimeIndex (bar open times) and OHLCV columns.

        Args:
            df: columns ``open, high, low, close, volume`` (case-insensitive) and optionally ``funding_rate``
                (already aligned to bars). A naive index is taken as UTC.
            funding: settlements as a Series of rates indexed by settlement time; aligned so that each settlement
                falls on the bar containing it. Mutually exclusive with a ``funding_rate`` column.
            symbol: contract name.
            source: description for error messages and run records.
            funding_interval_hours: hours between settlements.

        Raises:
            ValueError: on missing columns, NaN/inf, non-positive prices, inconsistent high/low, negative volume,
                unsorted/duplicate timestamps or mixed bar intervals, naming the row and column.
        """
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
        cols = {str(c).lower(): c for c in df.columns}
        missing = [c for c in _OHLCV if c not in cols]
        if missing:
            raise ValueError(
                f"{source}: missing column(s) {missing}; columns found: {list(df.columns)}. "
                "Rename them to open, high, low, close, volume (case does not matter)."
            )
        if not isinstance(df.index, pd.DatetimeIndex):
            raise ValueError(
                f"{source}: the index must be a DatetimeIndex of bar open times, got {type(df.index).__name__}; "
                "use df.set_index(pd.to_datetime(df['timestamp'], utc=True))"
            )
        idx = df.index.tz_localize("UTC") if df.index.tz is None else df.index.tz_convert("UTC")
        ts = idx.as_unit("ns").asi8.astype(np.int64)
        arrays = {c: df[cols[c]].to_numpy(dtype=np.float64, copy=True) for c in _OHLCV}
        has_funding = True
        if "funding_rate" in cols:
            if funding is not None:
                raise ValueError(f"{source}: give funding either as a funding_rate column or as `funding`, not both")
            rate = df[cols["funding_rate"]].to_numpy(dtype=np.float64, copy=True)
        else:
            rate = np.zeros(len(df))
            has_funding = funding is not None
        bar_seconds = validate_bars(ts, arrays, rate, source=source)
        if funding is not None:
            rate = align_funding(ts, bar_seconds, funding, source=source)
        return cls(
            timestamps=ts,
            **arrays,
            funding_rate=rate,
            bar_seconds=bar_seconds,
            funding_interval_hours=funding_interval_hours,
            symbol=symbol,
            source=source,
            has_funding=has_funding,
        )


def _row_label(ts: np.ndarray, i: int) -> str:
    return f"row {i} ({pd.Timestamp(int(ts[i]), unit='ns', tz='UTC')})"


def validate_bars(ts: np.ndarray, arrays: dict[str, np.ndarray], rate: np.ndarray, *, source: str) -> int:
    """Check bars for the errors real exports contain; returns the bar interval in seconds.

    Rows are numbered from 0 in time order as given.
    """
    n = len(ts)
    if n < 2:
        raise ValueError(f"{source}: need at least 2 bars, got {n}")
    for name, arr in (*arrays.items(), ("funding_rate", rate)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(
                f"{source}: column '{name}' has {bad.size} NaN/inf value(s), first at {_row_label(ts, bad[0])}; "
                "drop or fill those rows before loading"
            )
    for name in ("open", "high", "low", "close"):
        bad = np.flatnonzero(arrays[name] <= 0)
        if bad.size:
            raise ValueError(
                f"{source}: column '{name}' has non-positive price {arrays[name][bad[0]]} at {_row_label(ts, bad[0])}"
            )
    o, h, low, c = arrays["open"], arrays["high"], arrays["low"], arrays["close"]
    bad = np.flatnonzero(h < np.maximum(o, c))
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"{source}: column 'high' ({h[i]}) is below max(open, close) ({max(o[i], c[i])}) at {_row_label(ts, i)}"
        )
    bad = np.flatnonzero(low > np.minimum(o, c))
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"{source}: column 'low' ({low[i]}) is above min(open, close) ({min(o[i], c[i])}) at {_row_label(ts, i)}"
        )
    bad = np.flatnonzero(arrays["volume"] < 0)
    if bad.size:
        raise ValueError(f"{source}: column 'volume' is negative at {_row_label(ts, bad[0])}")
    d = np.diff(ts)
    bad = np.flatnonzero(d <= 0)
    if bad.size:
        i = bad[0] + 1
        kind = "duplicate" if d[bad[0]] == 0 else "unsorted"
        raise ValueError(
            f"{source}: {kind} timestamp at {_row_label(ts, i)} (previous row {i - 1}); "
            "sort by time and drop duplicates first"
        )
    step = int(np.median(d))
    off = np.flatnonzero(d != step)
    if off.size:
        i = off[0] + 1
        if np.all(d[off] % step == 0):
            raise ValueError(
                f"{source}: {off.size} gap(s) in the {step // 10**9}s bars, first before {_row_label(ts, i)}; "
                "fill them (e.g. forward-fill with zero volume) or load a gap-free period"
            )
        raise ValueError(
            f"{source}: mixed bar intervals: {d[off[0]] // 10**9}s before {_row_label(ts, i)} but "
            f"{step // 10**9}s elsewhere; resample to one interval first"
        )
    if step % 10**9:
        raise ValueError(f"{source}: bar interval {step} ns is not a whole number of seconds")
    return step // 10**9


def align_funding(ts: np.ndarray, bar_seconds: int, funding: pd.Series, *, source: str) -> np.ndarray:
    """Sum funding settlements onto the bars that contain them (``open <= t < open + bar``).

    Settlements outside the bars' span are ignored.
    """
    if not isinstance(funding, pd.Series) or not isinstance(funding.index, pd.DatetimeIndex):
        raise ValueError(f"{source}: funding must be a pandas Series indexed by settlement time")
    fidx = funding.index.tz_localize("UTC") if funding.index.tz is None else funding.index.tz_convert("UTC")
    fts = fidx.as_unit("ns").asi8
    vals = funding.to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        raise ValueError(f"{source}: funding rate is NaN/inf at settlement {fidx[bad[0]]}")
    pos = np.searchsorted(ts, fts, side="right") - 1
    inside = (pos >= 0) & (fts < ts[np.clip(pos, 0, None)] + bar_seconds * 10**9)
    rate = np.zeros(len(ts))
    np.add.at(rate, pos[inside], vals[inside])
    return rate


def _read_embedded_csv(name: str) -> pd.DataFrame:
    with resources.files("envs.data").joinpath(name).open("rb") as fh:
        df = pd.read_csv(fh, compression="gzip")
    df.index = pd.DatetimeIndex(pd.to_datetime(df.pop("timestamp"), utc=True), name="timestamp")
    return df


def load_embedded(name: str = "btcusdt-1h") -> MarketData:
    """Load a data set shipped with perpclip (see ``envs/data/SOURCE.md``).

    Args:
        name: one of :data:`EMBEDDED`.
    """
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded data set {name!r}; available: {', '.join(EMBEDDED)}")
    bars = _read_embedded_csv("btcusdt_perp_1h.csv.gz")
    funding = _read_embedded_csv("btcusdt_funding_8h.csv.gz")["funding_rate"]
    return MarketData.from_frame(
        bars, funding=funding, symbol="BTCUSDT", source=f"embedded:{name} (Binance USDT-M BTCUSDT perpetual, 1h)"
    )


def load_funding_history() -> pd.Series:
    """The BTCUSDT perpetual's funding settlements 2019-09-10 .. 2025-03-13 (UTC), for calibration."""
    return _read_embedded_csv("btcusdt_funding_2019_2025.csv.gz")["funding_rate"]
