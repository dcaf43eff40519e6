"""Market data as aligned numpy arrays: the one structure every env in perpclip reads.

Pandas is used here, at load time only; the envs' ``step`` sees plain float64/int64 arrays.

Conventions (every loader and generator in :mod:`envs` keeps them):

* ``timestamps`` are bar **open** times. Bar ``t`` covers ``[timestamps[t], timestamps[t] + bar_seconds)`` and
  its
  ``close`` is known only at the end of that span, so a decision taken "at bar t" may use bars ``0..t`` only.
* A funding settlement at time ``s`` is summed onto the bar with ``open <= s < open + bar`` (Binance's
  millisecond jitter is floored away by the loaders first).
* Validation errors are :class:`DataValidationError` (a ``ValueError``) naming the file, the row as it is in
  the file (0-based data row, header excluded, plus the 1-based line number for text files) and the column.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from dataclasses import dataclass, fields, replace
from importlib import resources

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_MARKET",
    "EMBEDDED",
    "DataValidationError",
    "MarketData",
    "RowOrigin",
    "align_funding",
    "fill_gaps",
    "load_embedded",
    "load_funding_history",
    "parse_interval",
    "resample_market",
    "validate_bars",
]

_OHLCV = ("open", "high", "low", "close", "volume")
_ARRAYS = ("timestamps", *_OHLCV, "funding_rate")
_NS = 10**9

#: Names accepted by :func:`load_embedded` (and by ``--data`` in train.py). ``btcusdt-1h`` is the default:
#: 29,303 Binance BTC/USDT spot hourly bars 2022-01-01 .. 2025-05-05 as the perpetual's price proxy, with the
#: BTCUSDT perpetual's real funding; ``btcusdt-perp-1h-2025`` is 999 bars of the perpetual itself
#: (2025-05-06 .. 2025-06-17), small and fast for tests.
EMBEDDED = ("btcusdt-1h", "btcusdt-perp-1h-2025")
DEFAULT_MARKET = "btcusdt-1h"

_DEFAULT_SOURCE = (
    "embedded:btcusdt-1h (Binance BTC/USDT SPOT 1h bars 2022-01-01..2025-05-05 used as the price proxy of "
    "the USDT-M BTCUSDT perpetual, with the perpetual's real funding settlements; 1 outage bar "
    "forward-filled)"
)

# Keys of notices already given in this process (see `_say_once`); tests may clear it.
_SAID: set[str] = set()

#: Logger of the data notices (no funding, filled gaps): one clean line each on stderr through logging's
#: last-resort handler when the application configured no logging (no source line as with warnings).
log = logging.getLogger("perpclip.data")


def notice(message: str) -> None:
    """One line for the user about their data (``perpclip: ...`` on stderr unless logging is configured)."""
    log.warning("perpclip: %s", message)


def _say_once(key: str, message: str) -> None:
    """A notice once per process: e.g. "no funding data" must not repeat on every env construction."""
    if key in _SAID:
        return
    _SAID.add(key)
    notice(message)


class DataValidationError(ValueError):
    """Bad market data, located: ``file``, ``row`` (0-based data row), ``line`` (1-based, text files) and
    ``column`` (the name as in the file) are attributes as well as part of the message."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        super().__init__(message)
        self.file = file
        self.row = row
        self.line = line
        self.column = column


@dataclass(frozen=True, eq=False)
class RowOrigin:
    """Where each bar came from, so errors can point into the user's file(s).

    Attributes:
        files: file names (or a description such as ``"DataFrame"``), one per input.
        file_index: int per bar, index into ``files``.
        data_row: int per bar, 0-based data row within its file (header excluded).
        header_lines: per file, the number of lines before data row 0 (1 for a header row, 0 without), or -1
        when
            the input is not a text file (DataFrame, Parquet): then no line number is given.
    """

    files: tuple[str, ...]
    file_index: np.ndarray
    data_row: np.ndarray
    header_lines: tuple[int, ...]

    @classmethod
    def single(cls, name: str, n: int, header_lines: int = -1) -> RowOrigin:
        return cls((name,), np.zeros(n, dtype=np.int32), np.arange(n, dtype=np.int64), (header_lines,))

    @classmethod
    def concat(cls, origins: list[RowOrigin]) -> RowOrigin:
        files: list[str] = []
        headers: list[int] = []
        idx = []
        for o in origins:
            idx.append(o.file_index + len(files))
            files.extend(o.files)
            headers.extend(o.header_lines)
        return cls(
            tuple(files), np.concatenate(idx), np.concatenate([o.data_row for o in origins]), tuple(headers)
        )

    def take(self, index: np.ndarray | slice) -> RowOrigin:
        return RowOrigin(self.files, self.file_index[index], self.data_row[index], self.header_lines)

    def locate(self, i: int) -> tuple[str, int, int | None]:
        """(file, 0-based data row, 1-based line or None) of bar ``i``."""
        f = int(self.file_index[i])
        row = int(self.data_row[i])
        h = self.header_lines[f]
        return self.files[f], row, (row + h + 1 if h >= 0 else None)

    def describe(self, i: int) -> str:
        file, row, line = self.locate(i)
        if line is None:
            return f"{file}, row {row} (0-based)"
        return f"{file}, data row {row} (0-based, header excluded; line {line} of the file)"


def _bad(
    origin: RowOrigin, i: int, column: str, problem: str, fix: str, ts: np.ndarray | None = None
) -> DataValidationError:
    file, row, line = origin.locate(i)
    when = f" (bar {pd.Timestamp(int(ts[i]), unit='ns', tz='UTC')})" if ts is not None else ""
    return DataValidationError(
        f"{origin.describe(i)}, column '{column}': {problem}{when}. {fix}",
        file=file,
        row=row,
        line=line,
        column=column,
    )


@dataclass(frozen=True, eq=False)
class MarketData:
    """Bars of one perpetual contract, aligned, validated and read-only.

    Attributes:
        timestamps: int64 nanoseconds since the epoch (UTC) of each bar's *open* time, strictly increasing.
        open, high, low, close: float64 prices in quote currency (USDT), all > 0, ``low <= open, close <=
        high``. volume: float64 traded volume in base units (BTC) per bar, >= 0.
        funding_rate: float64 funding rate (fraction) settled *inside* each bar, 0 where no settlement falls
        in
            the bar. A settlement at time ``s`` belongs to the bar with ``open <= s < open + bar``.
        bar_seconds: the bar interval in seconds.
        funding_interval_hours: hours between funding settlements (8 on Binance BTCUSDT).
        symbol: contract name, informational.
        source: where the data came from (file path, generator and seed, ...), informational.
        has_funding: False when no funding data was given (the rate is then zero everywhere).
        filled_times: int64 ns open times of the bars forward-filled by ``fill_gaps=True`` (OHLC = previous
            close, volume 0); :attr:`filled_bars` is their number.
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
    filled_times: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "filled_times", tuple(int(x) for x in self.filled_times))
        n = len(self.timestamps)
        for name in _ARRAYS:
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.ndim != 1 or len(arr) != n:
                raise ValueError(
                    f"MarketData.{name} must be a 1-D numpy array of length {n} (as timestamps); "
                    f"got {type(arr).__name__} with shape {getattr(arr, 'shape', None)}"
                )
            want = np.int64 if name == "timestamps" else np.float64
            if name == "timestamps" and arr.dtype.kind == "M":
                # datetime64 of any unit -> int64 ns (a bare astype would keep e.g. microseconds).
                object.__setattr__(self, name, arr.astype("datetime64[ns]").view(np.int64))
            elif arr.dtype != want:
                # Coerce once here so the envs' hot loops never meet float32 or object arrays.
                object.__setattr__(self, name, arr.astype(want))
        if int(self.bar_seconds) != self.bar_seconds or self.bar_seconds <= 0:
            raise ValueError(
                f"MarketData.bar_seconds must be a positive whole number, got {self.bar_seconds}"
            )
        object.__setattr__(self, "bar_seconds", int(self.bar_seconds))
        # Read-only arrays: envs share one MarketData between many copies (vectorized envs, folds).
        for name in _ARRAYS:
            getattr(self, name).flags.writeable = False

    def __reduce__(self):
        # Rebuild through __init__ so unpickled arrays are read-only again.
        return (_rebuild_market, ({f.name: getattr(self, f.name) for f in fields(self)},))

    def __len__(self) -> int:
        return len(self.timestamps)

    def __repr__(self) -> str:
        if len(self) == 0:
            return f"MarketData({self.symbol}, 0 bars, source={self.source!r})"
        first, last = self.index[0], self.index[-1]
        return (
            f"MarketData({self.symbol}, {len(self)} x {self.bar_seconds}s bars, {first} .. {last}, "
            f"funding={'yes' if self.has_funding else 'none'}, source={self.source!r})"
        )

    @property
    def filled_bars(self) -> int:
        """Number of bars forward-filled at load (``fill_gaps=True``); 0 for gap-free data."""
        return len(self.filled_times)

    def _filled_between(self, t0: int, t1: int) -> tuple[int, ...]:
        return tuple(x for x in self.filled_times if t0 <= x <= t1)

    @property
    def nbytes(self) -> int:
        """Total bytes of the arrays."""
        return sum(getattr(self, k).nbytes for k in _ARRAYS)

    @property
    def index(self) -> pd.DatetimeIndex:
        """Bar open times as a UTC DatetimeIndex."""
        return pd.DatetimeIndex(pd.to_datetime(self.timestamps, unit="ns", utc=True), name="timestamp")

    def slice(self, start: int, stop: int) -> MarketData:
        """Bars ``[start, stop)`` as a new MarketData (views, no copy)."""
        if not 0 <= start < stop <= len(self):
            raise ValueError(f"slice [{start}, {stop}) is out of range for {len(self)} bars")
        arrays = {k: getattr(self, k)[start:stop] for k in _ARRAYS}
        return MarketData(
            **arrays,
            bar_seconds=self.bar_seconds,
            funding_interval_hours=self.funding_interval_hours,
            symbol=self.symbol,
            source=f"{self.source}[{start}:{stop}]",
            has_funding=self.has_funding,
            filled_times=self._filled_between(int(self.timestamps[start]), int(self.timestamps[stop - 1])),
        )

    def resample(self, interval: str | int | pd.Timedelta) -> MarketData:
        """Coarser bars, see :func:`resample_market`."""
        return resample_market(self, interval)

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
        fill_gaps: bool = False,
        origin: RowOrigin | None = None,
        columns: dict[str, str] | None = None,
    ) -> MarketData:
        """Build from a DataFrame with a DatetimeIndex (bar open times) and OHLCV columns.

        Args:
            df: columns ``open, high, low, close, volume`` (case-insensitive) and optionally ``funding_rate``
                (already aligned to bars). A naive index is taken as UTC.
            funding: settlements as a Series of rates indexed by settlement time; aligned so that each
            settlement
                falls on the bar containing it. Mutually exclusive with a ``funding_rate`` column.
            symbol: contract name.
            source: description for error messages and run records.
            funding_interval_hours: hours between settlements.
            fill_gaps: forward-fill missing bars (OHLC = previous close, volume 0) instead of rejecting them.
            origin: where each row came from (file and row), for error messages; default: row positions in
            ``df``. columns: canonical name -> name in the user's file, for error messages.

        Raises:
            DataValidationError: on missing columns, NaN/inf, non-positive prices, inconsistent high/low,
            negative
                volume, unsorted/duplicate timestamps, mixed bar intervals or gaps, naming the row and column.
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
                f"{source}: the index must be a DatetimeIndex of bar open times, "
                f"got {type(df.index).__name__}; "
                "use df.set_index(pd.to_datetime(df['timestamp'], utc=True)) or envs.loaders.load_market(df)"
            )
        idx = df.index.tz_localize("UTC") if df.index.tz is None else df.index.tz_convert("UTC")
        ts = idx.as_unit("ns").asi8.astype(np.int64)
        arrays = {c: df[cols[c]].to_numpy(dtype=np.float64, copy=True) for c in _OHLCV}
        names = {c: str(cols[c]) for c in _OHLCV}
        names["timestamps"] = str(df.index.name or "index")
        if columns:
            names.update(columns)
        has_funding = True
        if "funding_rate" in cols:
            if funding is not None:
                raise ValueError(
                    f"{source}: give funding either as a funding_rate column or as `funding`, not both"
                )
            rate = df[cols["funding_rate"]].to_numpy(dtype=np.float64, copy=True)
            names["funding_rate"] = str(cols["funding_rate"])
        else:
            rate = np.zeros(len(df))
            has_funding = funding is not None
        origin = origin if origin is not None else RowOrigin.single(source, len(df))
        bar_seconds = validate_bars(
            ts, arrays, rate, source=source, origin=origin, columns=names, allow_gaps=fill_gaps
        )
        return _assemble(
            ts,
            arrays,
            rate,
            bar_seconds,
            funding=funding,
            has_funding=has_funding,
            fill_gaps=fill_gaps,
            symbol=symbol,
            source=source,
            funding_interval_hours=funding_interval_hours,
        )


def _assemble(
    ts: np.ndarray,
    arrays: dict[str, np.ndarray],
    rate: np.ndarray,
    bar_seconds: int,
    *,
    funding: pd.Series | None,
    has_funding: bool,
    fill_gaps: bool,
    symbol: str,
    source: str,
    funding_interval_hours: float,
    quiet: bool = False,
) -> MarketData:
    """Validated arrays -> MarketData: fill gaps, align funding, say once when there is none."""
    filled: tuple[int, ...] = ()
    if fill_gaps:
        ts0 = ts
        ts, arrays, rate, n_missing, n_gaps = _fill(ts, arrays, rate, bar_seconds)
        if n_missing:
            filled = tuple(np.setdiff1d(ts, ts0, assume_unique=True).tolist())
            if not quiet:
                notice(
                    f"{source}: forward-filled {n_gaps} gap(s) totalling {n_missing} missing bar(s) "
                    f"(OHLC = previous close, volume 0; first at "
                    f"{pd.Timestamp(filled[0], unit='ns', tz='UTC')}); MarketData.filled_bars = {n_missing}"
                )
            source = f"{source} (+{n_missing} filled bars)"
    if funding is not None:
        rate = align_funding(ts, bar_seconds, funding, source=source)
        _check_funding_coverage(ts, bar_seconds, funding, funding_interval_hours, source)
    elif not has_funding:
        _say_once(
            "no-funding",
            f"{source}: no funding data, so funding is zero on every bar (said once). Give the funding "
            "history: --funding FILE[@TZ] on the command line, funding= in envs.loaders.load_market.",
        )
    return MarketData(
        timestamps=ts,
        **arrays,
        funding_rate=rate,
        bar_seconds=bar_seconds,
        funding_interval_hours=funding_interval_hours,
        symbol=symbol,
        source=source,
        has_funding=has_funding,
        filled_times=filled,
    )


def _rebuild_market(kwargs: dict) -> MarketData:
    return MarketData(**{k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()})


def validate_bars(
    ts: np.ndarray,
    arrays: dict[str, np.ndarray],
    rate: np.ndarray,
    *,
    source: str,
    origin: RowOrigin | None = None,
    columns: dict[str, str] | None = None,
    allow_gaps: bool = False,
) -> int:
    """Check bars for the errors real exports contain; returns the bar interval in seconds.

    Args:
        ts: int64 ns bar open times, in the order of the rows.
        arrays: ``open, high, low, close, volume`` float arrays.
        rate: per-bar funding rate.
        source: description used when ``origin`` is not given.
        origin: file and row of each bar (default: 0-based positions in ``source``).
        columns: canonical name (``timestamps``, ``open``, ..., ``funding_rate``) -> the user's column name.
        allow_gaps: return normally when whole bars are missing (the caller fills them), instead of raising.

    Raises:
        DataValidationError: naming the file, row and column of the first offending row.
    """
    n = len(ts)
    origin = origin if origin is not None else RowOrigin.single(source, n)
    col = {k: k for k in (*_OHLCV, "funding_rate")} | {"timestamps": "timestamp"} | (columns or {})
    if n < 2:
        raise DataValidationError(f"{source}: need at least 2 bars, got {n}", file=origin.files[0])
    for name, arr in (*arrays.items(), ("funding_rate", rate)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise _bad(
                origin,
                bad[0],
                col[name],
                f"{arr[bad[0]]} is not a finite number ({bad.size} such row(s))",
                "Drop or fill those rows before loading.",
                ts,
            )
    for name in ("open", "high", "low", "close"):
        bad = np.flatnonzero(arrays[name] <= 0)
        if bad.size:
            raise _bad(
                origin,
                bad[0],
                col[name],
                f"non-positive price {arrays[name][bad[0]]} ({bad.size} such row(s))",
                "Prices must be > 0; drop those rows.",
                ts,
            )
    o, h, low, c = arrays["open"], arrays["high"], arrays["low"], arrays["close"]
    bad = np.flatnonzero(h < np.maximum(o, c))
    if bad.size:
        i = bad[0]
        raise _bad(
            origin,
            i,
            col["high"],
            f"high {h[i]} is below max(open, close) = {max(o[i], c[i])} ({bad.size} such row(s))",
            "Check the column order (open, high, low, close) or fix that row.",
            ts,
        )
    bad = np.flatnonzero(low > np.minimum(o, c))
    if bad.size:
        i = bad[0]
        raise _bad(
            origin,
            i,
            col["low"],
            f"low {low[i]} is above min(open, close) = {min(o[i], c[i])} ({bad.size} such row(s))",
            "Check the column order (open, high, low, close) or fix that row.",
            ts,
        )
    bad = np.flatnonzero(arrays["volume"] < 0)
    if bad.size:
        raise _bad(
            origin,
            bad[0],
            col["volume"],
            f"negative volume {arrays['volume'][bad[0]]} ({bad.size} such row(s))",
            "Volume must be >= 0.",
            ts,
        )
    step, gaps = _bar_interval(ts, origin, col["timestamps"])
    if gaps.size and not allow_gaps:
        missing = int(((np.diff(ts)[gaps] // step) - 1).sum())
        i = gaps[0] + 1
        raise _bad(
            origin,
            i,
            col["timestamps"],
            f"{gaps.size} gap(s) in the {step // _NS}s bars ({missing} missing bar(s) in all), "
            "the first just before "
            f"this row (previous bar {pd.Timestamp(int(ts[i - 1]), unit='ns', tz='UTC')})",
            "Pass fill_gaps=True (library) / --fill-gaps (command line) to forward-fill them with zero "
            "volume, or load a gap-free period.",
            ts,
        )
    return step // _NS


def _bar_interval(ts: np.ndarray, origin: RowOrigin, tcol: str) -> tuple[int, np.ndarray]:
    """(bar interval in ns, indices i where ts[i+1] - ts[i] is a whole multiple > 1 of it)."""
    d = np.diff(ts)
    bad = np.flatnonzero(d <= 0)
    if bad.size:
        i = bad[0] + 1
        prev = origin.describe(i - 1)
        if d[bad[0]] == 0:
            raise _bad(
                origin,
                i,
                tcol,
                f"duplicate timestamp (same as {prev})",
                "Drop duplicate rows (overlapping files?).",
                ts,
            )
        raise _bad(
            origin,
            i,
            tcol,
            f"timestamp is earlier than the previous row's ({prev}): rows are not sorted",
            "Sort the bars oldest first.",
            ts,
        )
    if np.all(d == d[0]):  # the common case, without the cost of a mode
        step = int(d[0])
    else:
        values, counts = np.unique(d, return_counts=True)
        step = int(values[np.argmax(counts)])
    off = np.flatnonzero(d != step)
    if off.size:
        not_multiple = off[d[off] % step != 0]
        if not_multiple.size:
            i = not_multiple[0] + 1
            raise _bad(
                origin,
                i,
                tcol,
                f"mixed bar intervals: {d[i - 1] / _NS:g}s since the previous row, "
                f"but {step / _NS:g}s for most bars",
                "Load one interval (use resample= to coarsen) or fix the timestamps.",
                ts,
            )
        # Three or more equal over-long steps in a row are a coarser interval, not a gap (an outage is one
        # step).
        run = (np.diff(off) == 1) & (d[off[1:]] == d[off[:-1]])
        run2 = np.flatnonzero(run[1:] & run[:-1])
        if run2.size:
            i = off[run2[0]] + 1
            raise _bad(
                origin,
                i,
                tcol,
                f"mixed bar intervals: from this row on the bars are {d[i - 1] / _NS:g}s apart, but "
                f"{step / _NS:g}s for most bars",
                "Load one interval (use resample= to coarsen) or fix the timestamps.",
                ts,
            )
    if step % _NS:
        raise _bad(
            origin,
            1,
            tcol,
            f"bar interval {step} ns is not a whole number of seconds",
            "Round the timestamps to whole seconds.",
            ts,
        )
    return step, off


def _fill(
    ts: np.ndarray, arrays: dict[str, np.ndarray], rate: np.ndarray, bar_seconds: int
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, int, int]:
    step = bar_seconds * _NS
    pos = (ts - ts[0]) // step
    total = int(pos[-1]) + 1
    if total == len(ts):
        return ts, arrays, rate, 0, 0
    n_gaps = int(np.count_nonzero(np.diff(pos) > 1))
    src = np.full(total, -1, dtype=np.int64)
    src[pos] = np.arange(len(ts))
    present = src >= 0
    last = np.maximum.accumulate(src)  # the last real bar at or before each slot
    prev_close = arrays["close"][last]
    out = {}
    for k in ("open", "high", "low", "close"):
        out[k] = np.where(present, arrays[k][np.maximum(src, 0)], prev_close)
    out["volume"] = np.where(present, arrays["volume"][np.maximum(src, 0)], 0.0)
    new_rate = np.where(present, rate[np.maximum(src, 0)], 0.0)
    new_ts = ts[0] + np.arange(total, dtype=np.int64) * step
    return new_ts, out, new_rate, total - len(ts), n_gaps


def fill_gaps(market: MarketData) -> MarketData:
    """Forward-fill missing bars of a gappy series: OHLC = previous close, volume 0, no funding.

    MarketData built by the loaders is already gap-free; this is for bars assembled by hand.
    """
    arrays = {k: np.asarray(getattr(market, k)) for k in _OHLCV}
    d = np.diff(market.timestamps)
    step = int(d.min()) if len(d) else market.bar_seconds * _NS
    if step != market.bar_seconds * _NS:
        raise ValueError(f"{market.source}: bars closer than bar_seconds={market.bar_seconds}; cannot fill")
    ts, arrays, rate, n_missing, _ = _fill(market.timestamps, arrays, market.funding_rate, market.bar_seconds)
    if not n_missing:
        return market
    return MarketData(
        timestamps=ts,
        **arrays,
        funding_rate=rate,
        bar_seconds=market.bar_seconds,
        funding_interval_hours=market.funding_interval_hours,
        symbol=market.symbol,
        source=f"{market.source} (+{n_missing} filled bars)",
        has_funding=market.has_funding,
        filled_times=market.filled_times + tuple(np.setdiff1d(ts, market.timestamps).tolist()),
    )


def align_funding(ts: np.ndarray, bar_seconds: int, funding: pd.Series, *, source: str) -> np.ndarray:
    """Sum funding settlements onto the bars that contain them (``open <= t < open + bar``).

    Settlement times are floored to the second first (Binance stamps them with millisecond jitter,
    ``08:00:00.006``). Settlements outside the bars' span are ignored.
    """
    if not isinstance(funding, pd.Series) or not isinstance(funding.index, pd.DatetimeIndex):
        raise ValueError(
            f"{source}: funding must be a pandas Series of rates indexed by settlement time (DatetimeIndex), "
            f"got {type(funding).__name__}; envs.loaders.load_funding(path) reads funding files"
        )
    fidx = funding.index.tz_localize("UTC") if funding.index.tz is None else funding.index.tz_convert("UTC")
    fts = fidx.as_unit("ns").asi8
    fts = fts - fts % _NS
    vals = funding.to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        raise ValueError(f"{source}: funding rate is NaN/inf at settlement {fidx[bad[0]]}; drop or fix it")
    pos = np.searchsorted(ts, fts, side="right") - 1
    inside = (pos >= 0) & (fts < ts[np.clip(pos, 0, None)] + bar_seconds * _NS)
    rate = np.zeros(len(ts))
    np.add.at(rate, pos[inside], vals[inside])
    return rate


def _check_funding_coverage(
    ts: np.ndarray, bar_seconds: int, funding: pd.Series, interval_hours: float, source: str
) -> None:
    """Warn when the funding data does not span the bars (those bars silently get zero funding otherwise)."""
    if len(funding) == 0:
        warnings.warn(
            f"{source}: the funding data is empty; funding is zero on every bar", UserWarning, stacklevel=3
        )
        return
    idx = funding.index.tz_localize("UTC") if funding.index.tz is None else funding.index.tz_convert("UTC")
    f0, f1 = idx.min().as_unit("ns").value, idx.max().as_unit("ns").value
    slack = int(interval_hours * 3600 * _NS)
    b0, b1 = int(ts[0]), int(ts[-1]) + bar_seconds * _NS
    if f0 > b0 + slack or f1 < b1 - slack:

        def show(x: int) -> str:
            return str(pd.Timestamp(x, unit="ns", tz="UTC"))

        warnings.warn(
            f"{source}: funding data covers {show(f0)} .. {show(f1)} "
            f"but the bars span {show(b0)} .. {show(b1)}; "
            "bars outside the funding data get a zero rate",
            UserWarning,
            stacklevel=3,
        )


_INTERVAL_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]+)\s*$")
_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "t": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}


def parse_interval(interval: str | int | pd.Timedelta) -> int:
    """An interval as whole seconds: ``"1m"``/``"15min"``/``"4h"``/``"1d"``/``"1w"``, an int of seconds, or a
    Timedelta. ``m`` means minutes (as in Binance's interval names); months are not a fixed interval."""
    if isinstance(interval, pd.Timedelta):
        sec = interval.total_seconds()
    elif isinstance(interval, (int, np.integer)) and not isinstance(interval, bool):
        sec = int(interval)
    elif isinstance(interval, str) and (m := _INTERVAL_RE.match(interval)) and m.group(2).lower() in _UNITS:
        if m.group(2) == "M":
            raise ValueError(f"interval {interval!r}: months have no fixed length; use days, e.g. '30d'")
        sec = int(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise ValueError(
            f"cannot read the interval {interval!r}; use e.g. '1m', '15min', '1h', '4h', '1d' "
            "or whole seconds (int)"
        )
    if sec <= 0 or sec != int(sec):
        raise ValueError(f"interval {interval!r} must be a positive whole number of seconds")
    return int(sec)


def resample_market(market: MarketData, interval: str | int | pd.Timedelta) -> MarketData:
    """Aggregate bars to a coarser interval without look-ahead.

    Coarse bars are aligned to multiples of ``interval`` since the Unix epoch (so 1h bars start on the hour
    and 1d bars at 00:00 UTC) and labelled by their **open** time. Open = first open, high = max, low = min,
    close = last close, volume and funding summed. A coarse bar's close is the last fine close inside it, i.e.
    it is known only at the coarse bar's end, as for any bar. Only complete coarse bars are kept: partial
    buckets at the start or end are dropped (with a warning saying how many fine bars were dropped).

    Raises:
        ValueError: if ``interval`` is not a whole multiple of ``market.bar_seconds``, or a coarse bucket
        inside
            the data is incomplete (fill gaps first).
    """
    coarse = parse_interval(interval)
    fine = market.bar_seconds
    if coarse == fine:
        return market
    if coarse < fine or coarse % fine:
        raise ValueError(
            f"cannot resample {fine}s bars to {coarse}s: the new interval must be a whole multiple of {fine}s"
        )
    k = coarse // fine
    ts = market.timestamps
    bucket = ts // (coarse * _NS)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    counts = np.diff(np.r_[starts, len(ts)])
    complete = counts == k
    keep_first = 0
    while keep_first < len(starts) and not complete[keep_first]:
        keep_first += 1
    keep_last = len(starts)
    while keep_last > keep_first and not complete[keep_last - 1]:
        keep_last -= 1
    if keep_first >= keep_last:
        raise ValueError(
            f"{market.source}: not one complete {coarse}s bar in {len(ts)} bars of {fine}s; need at least {k}"
        )
    if not complete[keep_first:keep_last].all():
        bad = keep_first + int(np.flatnonzero(~complete[keep_first:keep_last])[0])
        raise ValueError(
            f"{market.source}: the {coarse}s bar opening "
            f"{pd.Timestamp(int(bucket[starts[bad]]) * coarse * _NS, tz='UTC')}"
            f" has {counts[bad]} of {k} fine bars; fill the gaps (fill_gaps=True) before resampling"
        )
    lo = int(starts[keep_first])
    hi = int(starts[keep_last]) if keep_last < len(starts) else len(ts)
    dropped = len(ts) - (hi - lo)
    if dropped:
        warnings.warn(
            f"{market.source}: resampling to {coarse}s kept complete bars only: "
            f"dropped {lo} fine bar(s) before the "
            f"first and {len(ts) - hi} after the last complete {coarse}s bar",
            UserWarning,
            stacklevel=2,
        )
    m = (hi - lo) // k

    def blocks(name: str) -> np.ndarray:
        return getattr(market, name)[lo:hi].reshape(m, k)

    return MarketData(
        timestamps=market.timestamps[lo:hi:k].copy(),
        open=blocks("open")[:, 0].copy(),
        high=blocks("high").max(axis=1),
        low=blocks("low").min(axis=1),
        close=blocks("close")[:, -1].copy(),
        volume=blocks("volume").sum(axis=1),
        funding_rate=blocks("funding_rate").sum(axis=1),
        bar_seconds=coarse,
        funding_interval_hours=market.funding_interval_hours,
        symbol=market.symbol,
        source=f"{market.source} resampled to {coarse}s",
        has_funding=market.has_funding,
        filled_times=market._filled_between(int(market.timestamps[lo]), int(market.timestamps[hi - 1])),
    )


def _read_embedded_csv(name: str) -> pd.DataFrame:
    with resources.files("envs.data").joinpath(name).open("rb") as fh:
        df = pd.read_csv(fh, compression="gzip")
    # The embedded files all write "YYYY-MM-DD HH:MM:SS" (UTC): an explicit format parses 29k rows ~3x faster.
    stamps = pd.to_datetime(df.pop("timestamp"), format="%Y-%m-%d %H:%M:%S", utc=True)
    df.index = pd.DatetimeIndex(stamps, name="timestamp")
    return df


@functools.cache
def load_embedded(name: str = DEFAULT_MARKET) -> MarketData:
    """Load a data set shipped with perpclip (see ``envs/data/SOURCE.md``).

    The result is cached (MarketData is immutable), so building many envs on it costs one load.

    Args:
        name: one of :data:`EMBEDDED`: ``"btcusdt-1h"`` (default; spot prices as the perpetual's proxy, real
            funding, 29,303 bars) or ``"btcusdt-perp-1h-2025"`` (999 bars of the perpetual).
    """
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded data set {name!r}; available: {', '.join(EMBEDDED)}")
    if name == "btcusdt-perp-1h-2025":
        bars = _read_embedded_csv("btcusdt_perp_1h.csv.gz")
        funding = _read_embedded_csv("btcusdt_funding_8h.csv.gz")["funding_rate"]
        return MarketData.from_frame(
            bars,
            funding=funding,
            symbol="BTCUSDT",
            source=f"embedded:{name} (Binance USDT-M BTCUSDT perpetual, 1h, 2025-05-06..2025-06-17)",
        )
    bars = _read_embedded_csv("btcusdt_spot_1h_2022_2025.csv.gz")
    filled = bars.pop("filled").to_numpy(dtype=bool)
    market = MarketData.from_frame(bars, symbol="BTCUSDT", source=_DEFAULT_SOURCE)
    return replace(market, filled_times=tuple(market.timestamps[filled].tolist()))


@functools.lru_cache(maxsize=1)
def _funding_history() -> pd.Series:
    return _read_embedded_csv("btcusdt_funding_2019_2025.csv.gz")["funding_rate"]


def load_funding_history() -> pd.Series:
    """The BTCUSDT perpetual's funding settlements 2019-09-10 .. 2025-03-13 (UTC), for calibration."""
    return _funding_history().copy()
