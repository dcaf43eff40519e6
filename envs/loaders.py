"""Load market data from what users actually have: exchange exports, generic OHLCV files, DataFrames.

:func:`load_market` is the one entry point ``train.py --data`` and the envs use. It accepts

* an embedded data set name (``"btcusdt-1h"``, see :data:`envs.market.EMBEDDED`);
* ``"synthetic:<kind>[:key=value,...]"`` (see :mod:`envs.synthetic`), e.g.
  ``"synthetic:jump:n_bars=20000,seed=3"``;
* a CSV (``.csv``, ``.csv.gz``, ``.zip``) or Parquet (``.parquet``, ``.pq``) path, a list of paths, or a glob
  (``"data/BTCUSDT-1m-2024-*.zip"``); several files are concatenated in time order (e.g. Binance monthly
  files):

  - Binance public-data USDⓈ-M klines (``open_time, open, high, low, close, volume, close_time, quote_volume,
    count, taker_buy_volume, taker_buy_quote_volume, ignore``), with or without the header row;
  - generic OHLCV with a time column (``timestamp``, ``open_time``, ``date``, ``datetime``, ``time``; names
    are matched ignoring case, spaces and underscores) or, for Parquet, a DatetimeIndex; an optional
    ``funding_rate`` column is taken as already aligned to bars;
* a pandas DataFrame (time column or DatetimeIndex), or a :class:`~envs.market.MarketData` (re-validated).

Timestamps: numbers are epoch times whose unit (s, ms, µs, ns) is detected from their magnitude (Binance moved
its spot files from ms to µs in 2025); strings are ISO 8601; naive times are in ``tz`` (default UTC).

Funding (``funding=``, see :func:`load_funding`) may be a path/list/glob of Binance funding files
(``calc_time, funding_interval_hours, last_funding_rate``), API dumps (``fundingTime, fundingRate``), the
exchange web page's export (BOM, quoted, newest first, percent strings, local time: pass
``funding_tz``/``tz`` or the per-file suffix ``"file.csv@UTC+8"``), or a Series. Several funding files are
merged and must agree where they overlap; settlements off the 00/08/16 UTC grid and web exports without a
time zone are refused with the zone to pass.

Errors are :class:`~envs.market.DataValidationError` naming the file, the row (0-based data row, header
excluded, and the 1-based line) and the column.
"""

from __future__ import annotations

import datetime as _dt
import glob as _glob
import os
import re
import warnings
import zoneinfo
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from envs.market import (
    _NS,
    _OHLCV,
    EMBEDDED,
    DataValidationError,
    MarketData,
    RowOrigin,
    _assemble,
    _bar_interval,
    load_embedded,
    resample_market,
    validate_bars,
)

__all__ = [
    "BINANCE_KLINE_COLUMNS",
    "FUNDING_MERGE_ATOL",
    "load_funding",
    "load_market",
    "parse_tz",
    "read_bars",
    "split_tz_suffix",
]

#: Column order of Binance public-data klines files (headerless before 2022, with this header after).
BINANCE_KLINE_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.zip", ".zip", ".gz", ".txt", ".csv.bz2", ".csv.xz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
# Normalized (lower case, letters and digits only) names, in order of preference.
_TIME_NAMES = ("opentime", "timestamp", "datetime", "date", "time", "ts", "opentimestamp", "unnamed0", "")
_BAR_NAMES = {
    "open": ("open", "o", "openprice"),
    "high": ("high", "h", "highprice"),
    "low": ("low", "l", "lowprice"),
    "close": ("close", "c", "closeprice"),
    "volume": ("volume", "v", "vol", "basevolume"),
}
_BAR_COLUMNS_USED = frozenset(
    (*_TIME_NAMES, *(a for alts in _BAR_NAMES.values() for a in alts), "fundingrate", "closetime")
)
_FUNDING_TIME_NAMES = (
    "calctime",
    "fundingtime",
    "time",
    "timestamp",
    "datetime",
    "date",
    "settlementtime",
    "ts",
)
_FUNDING_RATE_NAMES = ("lastfundingrate", "fundingrate", "fundingrates", "rate", "funding")
_FUNDING_INTERVAL_NAMES = ("fundingintervalhours", "fundinginterval", "interval")

_ACCEPTED = (
    "an embedded data set name ({emb}); 'synthetic:<kind>[:key=value,...]' with kind in {kinds}; a CSV "
    "(.csv/.csv.gz/.zip) or Parquet (.parquet/.pq) path, a list of them, or a glob pattern; "
    "a pandas DataFrame; "
    "or a MarketData"
)


def _accepted() -> str:
    from envs.synthetic import SYNTHETIC_KINDS

    return _ACCEPTED.format(emb=", ".join(repr(e) for e in EMBEDDED), kinds=", ".join(SYNTHETIC_KINDS))


def _norm(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


# ---------------------------------------------------------------------------------------------------- time
# zones
_OFFSET_RE = re.compile(r"^(?:UTC|GMT)?\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)


def parse_tz(tz: str | _dt.tzinfo | None) -> _dt.tzinfo | str:
    """A time zone from ``"UTC"``, a fixed offset (``"UTC+8"``, ``"UTC+08:00"``, ``"GMT-5"``, ``"+0530"``), an
    IANA name (``"Asia/Shanghai"``) or a tzinfo. ``None`` means UTC."""
    if tz is None:
        return "UTC"
    if isinstance(tz, _dt.tzinfo):
        return tz
    if not isinstance(tz, str):
        raise ValueError(
            f"tz must be a string such as 'UTC', 'UTC+8' or 'Asia/Shanghai', got {type(tz).__name__}"
        )
    s = tz.strip()
    if s.upper() in ("UTC", "GMT", "Z"):
        return "UTC"
    m = _OFFSET_RE.match(s)
    if m:
        hours, minutes = int(m.group(2)), int(m.group(3) or 0)
        if hours > 14 or minutes >= 60:
            raise ValueError(f"tz={tz!r}: UTC offsets run from -14:00 to +14:00")
        sign = 1 if m.group(1) == "+" else -1
        return _dt.timezone(sign * _dt.timedelta(hours=hours, minutes=minutes))
    try:
        return zoneinfo.ZoneInfo(s)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone tz={tz!r}; use 'UTC', a fixed offset like 'UTC+8' / 'UTC-05:00', "
            "or an IANA name "
            "like 'Asia/Shanghai'"
        ) from None


def _epoch_unit(x: float) -> str | None:
    ax = abs(x)
    if ax < 1e11:  # seconds until the year 5138
        return "s"
    if ax < 1e14:
        return "ms"
    if ax < 1e17:
        return "us"
    return "ns"


def _times_to_ns(values: pd.Series | pd.Index, *, tz, origin: RowOrigin, column: str) -> np.ndarray:
    """Any time column -> int64 ns UTC. Epoch numbers get their unit from their magnitude; naive strings are
    in ``tz``."""
    s = pd.Series(values) if isinstance(values, pd.Index) else values
    if pd.api.types.is_bool_dtype(s.dtype):
        raise _err(
            origin, 0, column, "is a boolean column, not times", "Point the time column at timestamps."
        )
    if pd.api.types.is_numeric_dtype(s.dtype):
        arr = s.to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise _err(origin, bad[0], column, "missing or non-finite time", "Drop or fix that row.")
        units = {_epoch_unit(arr[0]), _epoch_unit(arr.min()), _epoch_unit(arr.max())}
        if len(units) > 1:
            # Find the first row whose unit differs from row 0's: mixed ms/µs files must be split or
            # converted.
            u0 = _epoch_unit(arr[0])
            mags = np.abs(arr)
            bounds = {"s": (0, 1e11), "ms": (1e11, 1e14), "us": (1e14, 1e17), "ns": (1e17, np.inf)}[u0]
            i = int(np.flatnonzero((mags < bounds[0]) | (mags >= bounds[1]))[0])
            raise _err(
                origin,
                i,
                column,
                f"epoch time {arr[i]:.0f} has a different unit than row 0 ({u0})",
                "Convert all times to one unit (ms or µs).",
            )
        unit = units.pop()
        mult = {"s": _NS, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
        if pd.api.types.is_integer_dtype(s.dtype):
            return s.to_numpy(dtype=np.int64) * mult
        return np.round(arr * mult).astype(np.int64)
    if not len(s):
        return np.zeros(0, np.int64)
    if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(s.dtype):
        dt = s
        nat = np.flatnonzero(dt.isna().to_numpy())
        if nat.size:
            raise _err(origin, nat[0], column, "missing time", "Drop or fix that row.")
    else:
        strs = s.astype("str")
        try:
            dt = pd.to_datetime(strs, format="ISO8601")
        except (ValueError, TypeError):
            try:
                dt = pd.to_datetime(strs, format="mixed")
            except (ValueError, TypeError) as e:
                parsed = pd.to_datetime(strs, format="mixed", errors="coerce")
                bad = np.flatnonzero(parsed.isna().to_numpy())
                i = int(bad[0]) if bad.size else 0
                raise _err(
                    origin,
                    i,
                    column,
                    f"cannot read {strs.iloc[i]!r} as a time ({e})",
                    "Use ISO 8601 times such as 2024-01-31 16:00:00, or epoch ms/µs numbers.",
                ) from None
        nat = np.flatnonzero(dt.isna().to_numpy())
        if nat.size:
            raise _err(origin, nat[0], column, "missing time", "Drop or fix that row.")
    if isinstance(dt.dtype, pd.DatetimeTZDtype):
        dt = dt.dt.tz_convert("UTC")
    else:
        zone = parse_tz(tz)
        try:
            dt = dt.dt.tz_localize(zone, ambiguous="raise", nonexistent="raise").dt.tz_convert("UTC")
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{origin.files[0]}, column '{column}': naive times cannot be read in tz={tz!r} ({e}); "
                "daylight-saving changes make some local times ambiguous; export in UTC or a fixed offset "
                "like 'UTC+8'"
            ) from None
    return pd.DatetimeIndex(dt).as_unit("ns").asi8.copy()


def _err(origin: RowOrigin, i: int, column: str, problem: str, fix: str) -> DataValidationError:
    file, row, line = origin.locate(i)
    return DataValidationError(
        f"{origin.describe(i)}, column '{column}': {problem}. {fix}",
        file=file,
        row=row,
        line=line,
        column=column,
    )


# ---------------------------------------------------------------------------------------------------- file
# reading
def _is_parquet(path: str) -> bool:
    return path.lower().endswith(_PARQUET_SUFFIXES)


def _expand(spec: str | os.PathLike | Sequence[str | os.PathLike], what: str) -> list[str]:
    """A path, a glob or a list of them -> existing file paths (globs sorted by name)."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not items:
        raise ValueError(f"{what}: an empty list of files was given")
    out: list[str] = []
    for item in items:
        p = os.fspath(item)
        if any(ch in p for ch in "*?["):
            hits = sorted(_glob.glob(p))
            if not hits:
                raise ValueError(f"{what}: no file matches the pattern {p!r}")
            out.extend(hits)
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise ValueError(f"{what}: file not found: {p!r}")
    return out


def _looks_numeric(x: object) -> bool:
    try:
        float(str(x).strip().rstrip("%"))
    except ValueError:
        return False
    return True


def _peek_row(path: str) -> list[str]:
    """The first row of a CSV (compression inferred from the name), as strings, BOM stripped."""
    try:
        first = pd.read_csv(
            path, nrows=1, header=None, dtype=str, encoding="utf-8-sig", keep_default_na=False
        )
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty") from None
    except (UnicodeDecodeError, pd.errors.ParserError, OSError) as e:
        raise ValueError(f"{path}: cannot read it as CSV ({e})") from None
    return [str(v) for v in first.iloc[0].tolist()] if len(first) else []


def _read_csv(path: str, *, kind: str) -> tuple[pd.DataFrame, int]:
    """Read a bars ('bars') or funding ('funding') CSV; returns (frame, header lines)."""
    row0 = _peek_row(path)
    if kind == "bars":
        has_header = len(row0) < 5 or not all(_looks_numeric(v) for v in row0[1:5])
        names = None
        if not has_header:
            if len(row0) >= 7 and _looks_numeric(row0[6]):
                names = list(BINANCE_KLINE_COLUMNS[: len(row0)]) + [
                    f"extra_{i}" for i in range(12, len(row0))
                ]
            else:
                names = ["timestamp", *_OHLCV] + [f"extra_{i}" for i in range(6, len(row0))]
    else:
        has_header = not _looks_numeric(row0[0]) if row0 else True
        names = None
        if not has_header:
            if len(row0) == 3:
                names = ["calc_time", "funding_interval_hours", "last_funding_rate"]
            elif len(row0) == 2:
                names = ["fundingTime", "fundingRate"]
            else:
                raise ValueError(
                    f"{path}: a funding file without a header must have 2 columns (time, rate) or 3 "
                    f"(calc_time, funding_interval_hours, last_funding_rate); found {len(row0)}"
                )
    # Bars: parse only the columns used (a Binance klines file has 12; skipping 5 saves time and memory).
    usecols = (lambda c: _norm(c) in _BAR_COLUMNS_USED) if kind == "bars" else None
    try:
        df = pd.read_csv(
            path,
            header=0 if has_header else None,
            names=names,
            usecols=usecols,
            encoding="utf-8-sig",
            skipinitialspace=True,
            low_memory=False,
        )
    except (UnicodeDecodeError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: cannot parse it as CSV ({e}); check the delimiter and quoting") from None
    return df, int(has_header)


def _pick(df: pd.DataFrame, wanted: tuple[str, ...]) -> str | None:
    norm = {}
    for c in df.columns:
        norm.setdefault(_norm(c), c)
    for w in wanted:
        if w in norm:
            return norm[w]
    return None


def _numeric(df: pd.DataFrame, col: str, origin: RowOrigin) -> np.ndarray:
    s = df[col]
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(np.isnan(num) & s.notna().to_numpy())
    if bad.size:
        raise _err(origin, bad[0], str(col), f"{s.iloc[bad[0]]!r} is not a number", "Fix or drop that row.")
    return num


def _bars_from_frame(
    df: pd.DataFrame, *, name: str, header_lines: int, tz, is_index_time: bool = False
) -> tuple[
    np.ndarray, dict[str, np.ndarray], np.ndarray | None, RowOrigin, dict[str, str], np.ndarray | None
]:
    """One table -> (ts, ohlcv arrays, per-bar funding or None, origin, column names, bar lengths)."""
    origin = RowOrigin.single(name, len(df), header_lines)
    cols: dict[str, str] = {}
    for canon, alts in _BAR_NAMES.items():
        c = _pick(df, alts)
        if c is None:
            raise ValueError(
                f"{name}: no '{canon}' column; columns found: {[str(c) for c in df.columns]}. "
                "Bars need open, high, "
                "low, close, volume (any case) and a time column (timestamp, open_time, date, datetime, time)"
            )
        cols[canon] = c
    tcol = _pick(df, _TIME_NAMES)
    if tcol is not None and tcol in cols.values():
        tcol = None
    if tcol is not None:
        ts = _times_to_ns(df[tcol], tz=tz, origin=origin, column=str(tcol))
    elif isinstance(df.index, pd.DatetimeIndex) or is_index_time:
        tcol = str(df.index.name or "index")
        ts = _times_to_ns(df.index.to_series(index=range(len(df))), tz=tz, origin=origin, column=tcol)
    else:
        raise ValueError(
            f"{name}: no time column; columns found: {[str(c) for c in df.columns]}. "
            "Name it timestamp, open_time, "
            "date, datetime or time (any case), or give the DataFrame a DatetimeIndex"
        )
    arrays = {k: _numeric(df, c, origin) for k, c in cols.items()}
    names = {k: str(c) for k, c in cols.items()} | {"timestamps": str(tcol)}
    fcol = _pick(df, ("fundingrate",))
    rate = None
    if fcol is not None:
        rate = _numeric(df, fcol, origin)
        names["funding_rate"] = str(fcol)
    lengths = None
    ccol = _pick(df, ("closetime",))
    if ccol is not None and pd.api.types.is_numeric_dtype(df[ccol].dtype):
        # Binance: close_time = open_time + interval - 1 unit, so each row states its own interval.
        lengths = _times_to_ns(df[ccol], tz=tz, origin=origin, column=str(ccol)) - ts
        names["close_time"] = str(ccol)
    return ts, arrays, rate, origin, names, lengths


def read_bars(
    spec: str | os.PathLike | Sequence[str | os.PathLike] | pd.DataFrame, *, tz=None
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None, RowOrigin, dict[str, str]]:
    """Read bar files (or a DataFrame) into raw arrays, in time order, not yet validated.

    Returns ``(timestamps_ns, {"open", ..., "volume"}, funding_rate_column_or_None, origin, column_names)``.
    Several files are ordered by their first timestamp and concatenated; a file whose rows are strictly newest
    first is reversed. Row numbers in ``origin`` stay those of the files.
    """
    if isinstance(spec, pd.DataFrame):
        parts = [_bars_from_frame(spec, name="DataFrame", header_lines=-1, tz=tz)]
    else:
        parts = []
        for path in _expand(spec, "bars"):
            name = path
            if _is_parquet(path):
                df = _read_parquet_bars(path)
                parts.append(_bars_from_frame(df, name=name, header_lines=-1, tz=tz))
            elif path.lower().endswith(_CSV_SUFFIXES) or "." not in Path(path).name:
                df, header = _read_csv(path, kind="bars")
                parts.append(_bars_from_frame(df, name=name, header_lines=header, tz=tz))
            else:
                raise ValueError(
                    f"{path}: unknown file type; use .csv, .csv.gz, .zip (CSV inside) or .parquet/.pq"
                )
    fixed = []
    for ts, arrays, rate, origin, names, lengths in parts:
        if len(ts) >= 2 and np.all(np.diff(ts) < 0):  # newest first, e.g. exchange web exports
            rev = slice(None, None, -1)
            ts = ts[rev]
            arrays = {k: v[rev] for k, v in arrays.items()}
            rate = rate[rev] if rate is not None else None
            origin = origin.take(rev)
            lengths = lengths[rev] if lengths is not None else None
        if lengths is not None and len(lengths):
            _check_kline_lengths(lengths, origin, names.get("close_time", "close_time"), ts)
        fixed.append((ts, arrays, rate, origin, names))
    if len(fixed) == 1:
        return fixed[0]
    fixed.sort(key=lambda p: int(p[0][0]) if len(p[0]) else 0)
    for prev, nxt in zip(fixed, fixed[1:], strict=False):
        if len(prev[0]) and len(nxt[0]) and nxt[0][0] <= prev[0][-1]:
            j = int(np.searchsorted(prev[0], nxt[0][0]))
            same = j < len(prev[0]) and prev[0][j] == nxt[0][0]
            problem = (
                f"duplicate timestamp: the files overlap, this bar is also {prev[3].describe(j)}"
                if same
                else f"this file starts before {prev[3].files[0]} ends ({prev[3].describe(len(prev[0]) - 1)})"
            )
            raise _err(
                nxt[3],
                0,
                nxt[4].get("timestamps", "time"),
                problem,
                "Drop the overlapping rows or one of the files.",
            )
    has_rate = [p[2] is not None for p in fixed]
    if any(has_rate) and not all(has_rate):
        raise ValueError("bars: some files have a funding_rate column and others do not; give all or none")
    ts = np.concatenate([p[0] for p in fixed])
    arrays = {k: np.concatenate([p[1][k] for p in fixed]) for k in _OHLCV}
    rate = np.concatenate([p[2] for p in fixed]) if all(has_rate) else None
    origin = RowOrigin.concat([p[3] for p in fixed])
    return ts, arrays, rate, origin, fixed[0][4]


def _read_parquet_bars(path: str) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises many types; all mean "not a readable Parquet file"
        raise ValueError(f"{path}: cannot read it as Parquet ({e})") from None
    keep = [c for c in df.columns if _norm(c) in _BAR_COLUMNS_USED]
    df = df[keep].copy() if len(keep) < len(df.columns) else df
    try:
        # pandas reads Parquet through pyarrow, whose allocator pool keeps freed buffers (~5x the table)
        # mapped; hand them back so a loaded market costs about its arrays.
        import pyarrow

        pyarrow.default_memory_pool().release_unused()
    except ImportError:  # pragma: no cover - pandas could not have read Parquet without pyarrow
        pass
    return df


def _check_kline_lengths(lengths: np.ndarray, origin: RowOrigin, column: str, ts: np.ndarray) -> None:
    # Binance's close_time is the last ms (or µs) of the bar: round the span up to the next whole second.
    spans = -(-lengths // _NS)
    if np.all(spans == spans[0]):
        if spans[0] <= 0:
            raise _err(origin, 0, column, "close_time is not after open_time", "Check the column order.")
        return
    values, counts = np.unique(spans, return_counts=True)
    common = values[np.argmax(counts)]
    i = int(np.flatnonzero(spans != common)[0])
    raise _err(
        origin,
        i,
        column,
        f"mixed bar intervals: this bar spans {spans[i]}s (close_time - open_time) but most span {common}s",
        "Load files of one interval only (use resample= to coarsen).",
    )


# ---------------------------------------------------------------------------------------------------- funding
def _funding_from_frame(
    df: pd.DataFrame, *, name: str, header_lines: int, tz
) -> tuple[pd.Series, float | None]:
    origin = RowOrigin.single(name, len(df), header_lines)
    tcol = _pick(df, _FUNDING_TIME_NAMES)
    rcol = _pick(df, _FUNDING_RATE_NAMES)
    if rcol is None:
        raise ValueError(
            f"{name}: no funding rate column; columns found: {[str(c) for c in df.columns]}. Expected "
            "last_funding_rate (Binance files), fundingRate (API) or 'Funding Rate' (web export)"
        )
    if tcol is not None:
        ts = _times_to_ns(df[tcol], tz=tz, origin=origin, column=str(tcol))
    elif isinstance(df.index, pd.DatetimeIndex):
        ts = _times_to_ns(df.index.to_series(index=range(len(df))), tz=tz, origin=origin, column="index")
    else:
        raise ValueError(
            f"{name}: no settlement time column; columns found: {[str(c) for c in df.columns]}. "
            "Expected calc_time, "
            "fundingTime, Time or timestamp"
        )
    s = df[rcol]
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        rate = s.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = s.astype("str").str.strip()
        pct = text.str.endswith("%").to_numpy()
        rate = pd.to_numeric(text.str.rstrip("%").str.strip(), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        bad = np.flatnonzero(np.isnan(rate) & s.notna().to_numpy())
        if bad.size:
            raise _err(
                origin,
                bad[0],
                str(rcol),
                f"{s.iloc[bad[0]]!r} is not a rate",
                "Rates are fractions (0.0001) or percent strings ('0.01%').",
            )
        rate = np.where(pct, rate / 100.0, rate)  # the web page shows percent: "0.010000%" = 0.0001
    bad = np.flatnonzero(~np.isfinite(rate))
    if bad.size:
        raise _err(origin, bad[0], str(rcol), "missing or non-finite funding rate", "Drop or fix that row.")
    ts = ts - ts % _NS  # Binance stamps settlements with ms jitter (08:00:00.006): floor to the second
    interval = None
    icol = _pick(df, _FUNDING_INTERVAL_NAMES)
    if icol is not None:
        iv = df[icol]
        if not pd.api.types.is_numeric_dtype(iv.dtype):
            iv = pd.to_numeric(iv.astype("str").str.strip().str.rstrip("hH"), errors="coerce")
        iv = iv.dropna()
        if len(iv):
            interval = float(iv.mode().iloc[0])
    order = np.argsort(ts, kind="stable")
    sts = ts[order]
    dup = np.flatnonzero(np.diff(sts) == 0)
    if dup.size:
        a, b = order[dup[0]], order[dup[0] + 1]
        raise _err(
            origin,
            max(a, b),
            str(tcol or "index"),
            f"duplicate settlement time (same as {origin.describe(min(a, b))})",
            "Drop duplicate rows.",
        )
    series = pd.Series(
        rate[order],
        index=pd.DatetimeIndex(pd.to_datetime(sts, unit="ns", utc=True), name="timestamp"),
        name="funding_rate",
    )
    return series, interval


#: Tolerance for overlapping settlements of several funding files: the web export rounds to 1e-6 % (1e-8 as a
#: fraction) and the API gives 8 decimals, so the same settlement can differ by one unit of 1e-8.
FUNDING_MERGE_ATOL = 1e-8


def split_tz_suffix(item: str | os.PathLike) -> tuple[str, str | None]:
    """``"file.csv@UTC+8"`` -> ``("file.csv", "UTC+8")``; a path without a time-zone suffix (or an existing
    file whose name has an ``@``) is returned unchanged with ``None``."""
    p = os.fspath(item)
    if "@" not in p or os.path.exists(p):
        return p, None
    path, _, zone = p.rpartition("@")
    try:
        parse_tz(zone)
    except ValueError:
        return p, None
    return path, zone


def _check_grid(series: pd.Series, interval_h: float, name: str, tz_given: bool) -> None:
    """Settlements must sit on the exchange's grid (multiples of the interval since the epoch: 00/08/16 UTC
    for 8 h). Most of them off it by one offset means local times read as UTC: say which zone to pass."""
    if len(series) < 3:
        return
    grid = int(round(interval_h * 3600)) * _NS
    if grid <= 0:
        return
    ts = series.index.as_unit("ns").asi8
    off = ts % grid
    bad = off != 0
    if bad.mean() <= 0.5:
        return
    vals, counts = np.unique(off[bad], return_counts=True)
    shift = int(vals[np.argmax(counts)])
    hours = shift / 3600 / _NS
    # Local times are UTC + k with k = the offset (mod the grid): the zones that fit, closest to UTC first.
    cand = sorted((c for c in (hours - k * interval_h for k in range(-3, 4)) if -12 <= c <= 14), key=abs)
    z = f"UTC{cand[0]:+g}" if cand else f"UTC{hours:+g}"
    others = " or ".join(f"'UTC{c:+g}'" for c in cand[1:])
    first = series.index[int(np.flatnonzero(bad)[0])]
    raise ValueError(
        f"{name}: {int(bad.sum())} of {len(series)} funding settlements are off the exchange's "
        f"{interval_h:g} h grid (00/08/16 UTC for 8 h), e.g. {first} read as UTC, {hours:g} h past a "
        f"settlement time. The times are probably in local time"
        + (" (the time zone given does not fit)" if tz_given else "")
        + f": pass the file's zone, e.g. funding_tz='{z}' or funding=['{name}@{z}'] in envs.loaders, "
        f"--funding '{name}@{z}' on the command line"
        + (f" ({others} fit the grid as well)." if others else ".")
    )


def _merge_funding(parts: list[pd.Series], names: list[str]) -> tuple[pd.Series, int]:
    """Merge several files' settlements; where they overlap they must agree (to FUNDING_MERGE_ATOL)."""
    merged = parts[0]
    owner = pd.Series(0, index=parts[0].index)
    overlap = 0
    for k in range(1, len(parts)):
        new = parts[k]
        common = merged.index.intersection(new.index)
        overlap += len(common)
        if len(common):
            a = merged.loc[common].to_numpy()
            b = new.loc[common].to_numpy()
            diff = np.flatnonzero(np.abs(a - b) > FUNDING_MERGE_ATOL + 1e-12)
            if diff.size:
                i = int(diff[0])
                when = common[i]
                other = names[int(owner.loc[when])]
                hint = _shift_hint(merged, new, names[k])
                raise ValueError(
                    f"funding files {other} and {names[k]} disagree at settlement {when}: {a[i]:.10g} vs "
                    f"{b[i]:.10g} ({diff.size} of {len(common)} overlapping settlements differ by more than "
                    f"{FUNDING_MERGE_ATOL:g}). {hint}"
                )
        only = new.index.difference(merged.index)
        merged = pd.concat([merged, new.loc[only]]).sort_index(kind="stable")
        owner = pd.concat([owner, pd.Series(k, index=only)]).sort_index(kind="stable")
    return merged, overlap


def _shift_hint(a: pd.Series, b: pd.Series, bname: str) -> str:
    """If ``b`` agrees with ``a`` once shifted by whole hours, it is in another time zone: say which."""
    for h in (8, -8, 16, -16, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 9, -9, 10, -10, 12, -12):
        shifted = b.copy()
        shifted.index = b.index - pd.Timedelta(hours=h)
        common = a.index.intersection(shifted.index)
        if len(common) >= 3 and np.all(
            np.abs(a.loc[common].to_numpy() - shifted.loc[common].to_numpy()) <= 1e-8
        ):
            z = f"UTC{h:+d}"
            return (
                f"They agree if {bname}'s times are read in {z}: pass '{bname}@{z}' (or funding_tz='{z}'; "
                f"--funding '{bname}@{z}' on the command line)."
            )
    return (
        "Check that both files are the same contract and their time zones (suffix FILE@UTC+8 or funding_tz=)."
    )


def _looks_like_web_export(df: pd.DataFrame) -> bool:
    cols = {_norm(c) for c in df.columns}
    return "contracts" in cols or ("fundinginterval" in cols and "time" in cols)


def load_funding(
    spec: str | os.PathLike | Sequence[str | os.PathLike] | pd.Series | pd.DataFrame, *, tz=None
) -> pd.Series:
    """Read funding settlements into a Series of rates (fractions per interval), UTC index, oldest first.

    Args:
        spec: path / list / glob of funding CSV (or Parquet) files, a DataFrame, or a Series indexed by time.
            Recognized layouts: Binance public data (``calc_time, funding_interval_hours, last_funding_rate``,
            with or without header), API dumps (``fundingTime, fundingRate``), the binance.com web export
            (``"Time","Contracts","Funding Interval","Funding Rate"`` with a BOM, newest first,
            ``"0.010000%"``), or ``timestamp, funding_rate``. A path may end in ``@<zone>`` to give that
            file's time zone (``"web.csv@UTC+8"``), overriding ``tz`` for it.
        tz: time zone of naive time strings (the web export is in the downloader's local time, e.g.
            ``"UTC+8"`` or ``"Asia/Shanghai"``). Epoch numbers are always UTC.

    Several files are merged: where their settlements overlap the rates must agree to
    :data:`FUNDING_MERGE_ATOL` (else ``ValueError`` naming both files and the first disagreeing settlement,
    and the time zone that would reconcile them when a whole-hour shift does).

    Checks against silent time-zone errors: settlements mostly off the interval's grid (00/08/16 UTC) raise
    ``ValueError`` naming the zone to pass; a binance.com web export (local time) read without any time zone
    raises, asking for ``@UTC+8``/``tz=`` (``"UTC"`` if it really was exported in UTC). An 8 h offset maps
    the 8 h grid onto itself, so that case is caught by the export check and by the overlap check.

    Returns:
        Series named ``funding_rate``; ``attrs["funding_interval_hours"]`` is the interval (from the file's
        interval column, else the most common spacing), ``attrs["source"]`` the file name(s) and
        ``attrs["overlap_checked"]`` how many overlapping settlements of several files agreed.

    Raises:
        DataValidationError: unreadable time or rate (naming file, row and column), duplicate settlements.
    """
    if isinstance(spec, pd.Series):
        if not isinstance(spec.index, pd.DatetimeIndex):
            raise ValueError("funding Series must be indexed by settlement time (a DatetimeIndex)")
        frame = spec.rename("funding_rate").to_frame()
        parts = [_funding_from_frame(frame, name="funding Series", header_lines=-1, tz=tz)]
        names = ["funding Series"]
        zones = [tz]
    elif isinstance(spec, pd.DataFrame):
        parts = [_funding_from_frame(spec, name="funding DataFrame", header_lines=-1, tz=tz)]
        names = ["funding DataFrame"]
        zones = [tz]
    else:
        items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
        names, zones = [], []
        for item in items:
            path, zone = split_tz_suffix(item)
            for hit in _expand(path, "funding"):
                names.append(hit)
                zones.append(zone if zone is not None else tz)
        parts = []
        for path, zone in zip(names, zones, strict=True):
            if _is_parquet(path):
                df = pd.read_parquet(path)
                header = -1
            else:
                df, header = _read_csv(path, kind="funding")
            if zone is None and _looks_like_web_export(df):
                raise ValueError(
                    f"{path}: this is a binance.com web export, whose times are in the downloader's local "
                    "time zone; say which: e.g. funding=['" + path + "@UTC+8'] or funding_tz='UTC+8' in "
                    "envs.loaders, --funding '" + path + "@UTC+8' on the command line ('@UTC' if it was "
                    "exported in UTC)"
                )
            parts.append(_funding_from_frame(df, name=path, header_lines=header, tz=zone))
    intervals = [p[1] for p in parts if p[1] is not None]
    for (ser, iv), name, zone in zip(parts, names, zones, strict=True):
        if len(ser) >= 3:
            d = np.diff(ser.index.as_unit("ns").asi8)
            vals, counts = np.unique(d, return_counts=True)
            spacing = float(vals[np.argmax(counts)]) / 3600 / _NS
            _check_grid(ser, iv if iv is not None else spacing, name, zone is not None)
    overlap = 0
    if len(parts) > 1:
        series, overlap = _merge_funding([p[0] for p in parts], names)
    else:
        series = parts[0][0]
    if intervals:
        interval = float(pd.Series(intervals).mode().iloc[0])
    elif len(series) >= 2:
        d = np.diff(series.index.as_unit("ns").asi8)
        vals, counts = np.unique(d, return_counts=True)
        interval = float(vals[np.argmax(counts)]) / 3600 / _NS
    else:
        interval = 8.0
    if len(series) and float(np.median(np.abs(series.to_numpy()))) > 0.005:
        warnings.warn(
            f"{', '.join(names)}: the median |funding rate| is "
            f"{np.median(np.abs(series.to_numpy())):.4g} per "
            "settlement (over 0.5%): are these percent numbers without a '%' sign? Rates must be fractions "
            "(0.0001 = 0.01%).",
            UserWarning,
            stacklevel=2,
        )
    series.name = "funding_rate"
    series.attrs["funding_interval_hours"] = interval
    series.attrs["source"] = ", ".join(names)
    series.attrs["overlap_checked"] = overlap
    return series


# ----------------------------------------------------------------------------------------------------
# load_market
def load_market(
    spec: str | os.PathLike | Sequence[str | os.PathLike] | pd.DataFrame | MarketData,
    *,
    funding: str | os.PathLike | Sequence[str | os.PathLike] | pd.Series | pd.DataFrame | None = None,
    tz: str | _dt.tzinfo | None = None,
    fill_gaps: bool = False,
    resample: str | int | pd.Timedelta | None = None,
    funding_tz: str | _dt.tzinfo | None = None,
    symbol: str | None = None,
) -> MarketData:
    """Load, validate, align and optionally resample market data. See the module docstring for ``spec``.

    Args:
        spec: embedded name, ``"synthetic:<kind>[:key=value,...]"``, path / list of paths / glob of bar files,
            DataFrame, or MarketData.
        funding: funding settlements for file/DataFrame bars (see :func:`load_funding`); each settlement is
            summed onto the bar containing it. Several files are merged (their overlap must agree); a path may
            carry its own time zone as a suffix, ``["web_export.csv@UTC+8", "api.csv"]``. Without funding the
            rate is zero (a one-line notice naming ``--funding``, once per process).
        tz: time zone of naive timestamps in ``spec`` (and in ``funding`` unless ``funding_tz`` is given);
            default UTC. E.g. ``"UTC+8"`` or ``"Asia/Shanghai"``.
        fill_gaps: forward-fill missing bars (OHLC = previous close, volume 0) instead of raising (CLI:
            ``--fill-gaps``); the result's ``filled_bars`` / ``filled_times`` count and date them, and a
            one-line notice says how many.
        resample: coarser bar interval (``"1h"``, ``"4h"``, ``"1d"``, seconds); see
            :func:`envs.market.resample_market` (bars labelled by open time, only complete bars kept).
        funding_tz: time zone of naive funding timestamps when it differs from ``tz`` (a file's ``@zone``
            suffix wins over it).
        symbol: contract name to record (default: ``BTCUSDT`` for files, the generator's for synthetic data).

    Raises:
        ValueError: unknown spec (listing what is accepted), unreadable files; DataValidationError for bad
        rows.
    """
    if isinstance(spec, MarketData):
        market = _revalidate(spec, fill_gaps=fill_gaps)
        if funding is not None:
            fser = load_funding(funding, tz=funding_tz if funding_tz is not None else tz)
            market = _with_funding(market, fser)
    elif isinstance(spec, str) and spec.strip().lower().startswith("synthetic:"):
        if funding is not None:
            raise ValueError(
                "funding= cannot be combined with a synthetic market; use its funding_* keys instead"
            )
        from envs.synthetic import market_from_spec

        market = market_from_spec(spec)
    elif isinstance(spec, str) and spec.strip() in EMBEDDED:
        if funding is not None or fill_gaps or tz is not None:
            raise ValueError(
                f"{spec!r} is an embedded data set with its own funding; funding=/tz=/fill_gaps= "
                "apply to files and DataFrames only"
            )
        market = load_embedded(spec.strip())
    elif isinstance(spec, (str, os.PathLike, pd.DataFrame)) or (
        isinstance(spec, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in spec)
    ):
        if isinstance(spec, (str, os.PathLike)):
            p = os.fspath(spec)
            looks_like_file = (
                any(ch in p for ch in "*?[")
                or os.path.exists(p)
                or p.lower().endswith(_CSV_SUFFIXES + _PARQUET_SUFFIXES)
            )
            if not looks_like_file:
                raise ValueError(f"unknown market data {p!r}; accepted: {_accepted()}")
        market = _load_bars(
            spec,
            funding=funding,
            tz=tz,
            funding_tz=funding_tz,
            fill_gaps=fill_gaps,
            symbol=symbol or "BTCUSDT",
        )
    else:
        raise ValueError(f"cannot load market data from a {type(spec).__name__}; accepted: {_accepted()}")
    if resample is not None:
        market = resample_market(market, resample)
    return market


def _load_bars(spec, *, funding, tz, funding_tz, fill_gaps: bool, symbol: str) -> MarketData:
    ts, arrays, rate, origin, names = read_bars(spec, tz=tz)
    source = "DataFrame" if isinstance(spec, pd.DataFrame) else ", ".join(origin.files)
    has_rate_col = rate is not None
    if has_rate_col and funding is not None:
        raise ValueError(f"{source}: the bars already have a funding_rate column; do not also pass funding=")
    per_bar = rate if has_rate_col else np.zeros(len(ts))
    bar_seconds = validate_bars(
        ts, arrays, per_bar, source=source, origin=origin, columns=names, allow_gaps=fill_gaps
    )
    interval = 8.0
    fser = None
    if funding is not None:
        fser = load_funding(funding, tz=funding_tz if funding_tz is not None else tz)
        interval = float(fser.attrs.get("funding_interval_hours", 8.0))
    return _assemble(
        ts,
        arrays,
        per_bar,
        bar_seconds,
        funding=fser,
        has_funding=has_rate_col or fser is not None,
        fill_gaps=fill_gaps,
        symbol=symbol,
        source=source,
        funding_interval_hours=interval,
    )


def _revalidate(market: MarketData, *, fill_gaps: bool) -> MarketData:
    arrays = {k: np.asarray(getattr(market, k)) for k in _OHLCV}
    origin = RowOrigin.single(market.source or "MarketData", len(market))
    bar_seconds = validate_bars(
        market.timestamps,
        arrays,
        market.funding_rate,
        source=market.source or "MarketData",
        origin=origin,
        allow_gaps=fill_gaps,
    )
    if bar_seconds != market.bar_seconds:
        raise ValueError(
            f"{market.source}: bar_seconds={market.bar_seconds} but the timestamps are {bar_seconds}s apart"
        )
    if fill_gaps:
        step, gaps = _bar_interval(market.timestamps, origin, "timestamp")
        if gaps.size:
            from envs.market import fill_gaps as _fill_market

            return _fill_market(market)
    return market


def _with_funding(market: MarketData, fser: pd.Series) -> MarketData:
    frame = market.to_frame().drop(columns="funding_rate")
    return MarketData.from_frame(
        frame,
        funding=fser,
        symbol=market.symbol,
        source=market.source,
        funding_interval_hours=float(fser.attrs.get("funding_interval_hours", 8.0)),
    )
