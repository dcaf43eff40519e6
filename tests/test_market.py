"""MarketData, validation, gap filling, funding alignment and resampling (envs.market)."""

from __future__ import annotations

import pickle
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs.market as market_mod
from envs.market import (
    DataValidationError,
    MarketData,
    align_funding,
    load_embedded,
    load_funding_history,
    parse_interval,
    resample_market,
)


def _frame(n: int = 6, *, start: str = "2024-01-01", freq: str = "1h", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[100.0, close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.005, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.005, n))
    idx = pd.date_range(start, periods=n, freq=freq, tz="UTC", name="timestamp")
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": rng.uniform(1, 10, n)}, index=idx
    )


def _zero_funding(df: pd.DataFrame) -> pd.Series:
    """A zero rate at every bar: funding "given", so no once-per-process notice and no coverage warning."""
    return pd.Series(0.0, index=df.index)


def _market(n: int, bar_seconds: int, *, start_ns: int = 1_704_067_200 * 10**9, seed: int = 0) -> MarketData:
    df = _frame(n, seed=seed)
    ts = start_ns + np.arange(n, dtype=np.int64) * bar_seconds * 10**9
    rate = np.zeros(n)
    rate[::7] = 1e-4
    return MarketData(
        timestamps=ts,
        **{c: df[c].to_numpy() for c in ("open", "high", "low", "close", "volume")},
        funding_rate=rate,
        bar_seconds=bar_seconds,
        source="test",
    )


# ----------------------------------------------------------------------------------------------- MarketData
def test_marketdata_arrays_are_read_only_and_survive_pickle():
    m = MarketData.from_frame(
        _frame(), funding=pd.Series([1e-4], index=pd.DatetimeIndex(["2024-01-01 02:00"]))
    )
    with pytest.raises(ValueError):
        m.close[0] = 1.0
    m2 = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(m2.close, m.close)
    assert not m2.close.flags.writeable
    assert m2.bar_seconds == 3600 and m2.has_funding
    assert m.funding_rate[2] == 1e-4 and m.funding_rate.sum() == 1e-4


def test_to_frame_from_frame_round_trip():
    m = MarketData.from_frame(
        _frame(10), funding=pd.Series([2e-4], index=pd.DatetimeIndex(["2024-01-01 08:00"]))
    )
    back = MarketData.from_frame(m.to_frame())
    for k in ("timestamps", "open", "high", "low", "close", "volume", "funding_rate"):
        np.testing.assert_array_equal(getattr(back, k), getattr(m, k))


def test_slice_is_a_view_and_checks_bounds():
    df = _frame(10)
    m = MarketData.from_frame(df, funding=_zero_funding(df))
    s = m.slice(2, 5)
    assert len(s) == 3 and np.shares_memory(s.close, m.close)
    with pytest.raises(ValueError, match="out of range"):
        m.slice(5, 11)


def test_embedded_loads_fast_with_funding():
    load_embedded.cache_clear()
    t = time.perf_counter()
    m = load_embedded("btcusdt-perp-1h-2025")
    elapsed = time.perf_counter() - t
    assert len(m) == 999 and m.bar_seconds == 3600 and m.has_funding
    # 124 settlements fall inside the 999 bars (SOURCE.md), each on a bar opening at 00, 08 or 16 UTC.
    nz = np.flatnonzero(m.funding_rate)
    assert len(nz) == 124
    assert set(m.index[nz].hour) <= {0, 8, 16}
    assert elapsed < 1.0  # generous bound for a loaded CI box; typically ~15 ms
    assert load_embedded("btcusdt-perp-1h-2025") is m  # cached: many envs share one load


def test_default_market_is_spot_2022_2025_with_real_funding():
    m = load_embedded("btcusdt-1h")
    assert len(load_embedded()) == len(m)
    assert len(m) == 29_303 and m.bar_seconds == 3600 and m.has_funding
    assert m.index[0] == pd.Timestamp("2022-01-01 00:00", tz="UTC")
    assert m.index[-1] == pd.Timestamp("2025-05-05 22:00", tz="UTC")  # the forming 23:00 bar is dropped
    assert (np.diff(m.timestamps) == 3600 * 10**9).all()
    # The 2023-03-24 outage: 12:00 is a flat zero-volume bar of the file, 13:00 was missing and is filled.
    i = int(np.flatnonzero(m.index == pd.Timestamp("2023-03-24 13:00", tz="UTC"))[0])
    assert m.filled_bars == 1 and m.filled_times == (int(m.timestamps[i]),)
    assert m.volume[i] == 0 and m.open[i] == m.high[i] == m.low[i] == m.close[i] == m.close[i - 1] == 28080.0
    # Funding: one settlement every 8 h on the 00/08/16 UTC grid, non-zero, 1221 days * 3.
    nz = np.flatnonzero(m.funding_rate)
    assert len(nz) == 3663 and set(m.index[nz].hour) == {0, 8, 16}
    assert (np.diff(m.timestamps[nz]) == 8 * 3600 * 10**9).all()
    assert 0 < np.mean(m.funding_rate[nz]) < 5e-4
    assert "SPOT" in m.source and "proxy" in m.source and "perpetual" in m.source
    assert load_embedded("btcusdt-1h") is m  # cached: many envs share one load


def test_funding_history_is_the_real_series():
    s = load_funding_history()
    assert len(s) == 6033
    assert s.index[0] == pd.Timestamp("2019-09-10 08:00", tz="UTC")
    assert s.index[-1] == pd.Timestamp("2025-03-13 00:00", tz="UTC")
    assert s.max() == pytest.approx(0.003) and s.min() == pytest.approx(-0.003)
    s.iloc[0] = 99.0  # a copy: the cached history stays intact
    assert load_funding_history().iloc[0] == pytest.approx(0.0001)


# ----------------------------------------------------------------------------------------------- validation
def _set(df: pd.DataFrame, row: int, col: str, value: float) -> pd.DataFrame:
    df = df.copy()
    df.iloc[row, df.columns.get_loc(col)] = value
    return df


@pytest.mark.parametrize(
    ("col", "value", "fragment"),
    [
        ("close", np.nan, "not a finite number"),
        ("volume", np.inf, "not a finite number"),
        ("open", 0.0, "non-positive price"),
        ("low", -1.0, "non-positive price"),
        ("high", 50.0, "below max(open, close)"),
        ("low", 500.0, "above min(open, close)"),
        ("volume", -3.0, "negative volume"),
    ],
)
def test_value_errors_name_row_and_column(col, value, fragment):
    df = _set(_frame(8), 4, col, value)
    with pytest.raises(DataValidationError) as e:
        MarketData.from_frame(df, source="my.csv", funding=_zero_funding(df))
    msg = str(e.value)
    assert fragment in msg
    assert "my.csv, row 4 (0-based)" in msg and f"column '{col}'" in msg
    assert (e.value.row, e.value.column, e.value.file) == (4, col, "my.csv")


@pytest.mark.parametrize(
    ("make_index", "fragment", "row"),
    [
        (lambda i: i[[0, 1, 2, 2, 4, 5, 6, 7]], "duplicate timestamp", 3),
        (lambda i: i[[0, 1, 3, 2, 4, 5, 6, 7]], "not sorted", 3),
        (
            lambda i: i[[0, 1, 2, 3, 4, 5, 6, 7]] + pd.to_timedelta([0, 0, 0, 0, 1, 1, 1, 1], unit="min"),
            "mixed bar intervals",
            4,
        ),
        # A stretch of 4h bars inside hourly ones is a second interval, not three gaps.
        (
            lambda i: pd.DatetimeIndex(list(i[:5]) + [i[4] + pd.Timedelta(hours=4 * k) for k in range(1, 4)]),
            "mixed bar intervals",
            5,
        ),
        (
            lambda i: i[[0, 1, 2, 3, 4, 5, 6, 7]] + pd.to_timedelta([0, 0, 0, 0, 0, 2, 2, 2], unit="h"),
            "gap",
            5,
        ),
    ],
)
def test_time_errors_name_row(make_index, fragment, row):
    df = _frame(8)
    df.index = make_index(df.index).rename("timestamp")
    with pytest.raises(DataValidationError) as e:
        MarketData.from_frame(df, source="f.csv", funding=_zero_funding(df))
    assert fragment in str(e.value)
    assert e.value.row == row and e.value.column == "timestamp"


def test_gap_error_counts_missing_bars_and_fill_gaps_fills_them(caplog):
    df = _frame(10)
    df = df.drop(df.index[[3, 4, 7]])  # two gaps, three missing bars
    match = r"2 gap\(s\).*3 missing bar\(s\).*fill_gaps=True \(library\) / --fill-gaps \(command line\)"
    with pytest.raises(DataValidationError, match=match):
        MarketData.from_frame(df, funding=_zero_funding(df))
    with caplog.at_level("WARNING", logger="perpclip.data"):
        m = MarketData.from_frame(df, fill_gaps=True, funding=_zero_funding(df))
    assert [r.getMessage() for r in caplog.records if "2 gap(s) totalling 3 missing bar" in r.getMessage()]
    assert len(m) == 10 and m.filled_bars == 3
    assert m.filled_times == tuple(int(x) for x in m.timestamps[[3, 4, 7]])
    assert m.slice(0, 5).filled_bars == 2 and m.slice(5, 10).filled_bars == 1
    import pickle

    assert pickle.loads(pickle.dumps(m)).filled_bars == 3
    filled = [3, 4, 7]
    for i in filled:
        prev = m.close[i - 1]
        assert m.open[i] == m.high[i] == m.low[i] == m.close[i] == prev
        assert m.volume[i] == 0
    kept = [i for i in range(10) if i not in filled]
    np.testing.assert_array_equal(m.close[kept], df["close"].to_numpy())


def test_no_funding_is_said_once_in_one_clean_line(monkeypatch, caplog, capsys):
    monkeypatch.setattr(market_mod, "_SAID", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a notice, not a Python warning with a source line
        with caplog.at_level("WARNING", logger="perpclip.data"):
            m1 = MarketData.from_frame(_frame())
            MarketData.from_frame(_frame(seed=1))
            MarketData.from_frame(_frame(seed=2))
    said = [r.getMessage() for r in caplog.records if "no funding data" in r.getMessage()]
    assert len(said) == 1 and "zero" in said[0] and "--funding" in said[0] and "\n" not in said[0]
    assert not m1.has_funding and not m1.funding_rate.any()


# ----------------------------------------------------------------------------------------------- funding
# alignment
def test_funding_lands_on_the_bar_containing_it_after_flooring_jitter():
    m = _frame(24)
    ts = m.index.as_unit("ns").asi8
    f = pd.Series(
        [1e-4, 2e-4, 3e-4, 5e-4],
        index=pd.DatetimeIndex(
            [
                "2024-01-01 00:00:00.006",
                "2024-01-01 08:00:00.001",
                "2024-01-01 15:59:59.999",
                "2024-01-05 00:00",
            ]
        ),
    )
    rate = align_funding(ts, 3600, f, source="t")
    assert rate[0] == 1e-4 and rate[8] == 2e-4 and rate[15] == 3e-4  # 15:59:59.999 is inside the 15:00 bar
    assert rate.sum() == pytest.approx(6e-4)  # the settlement after the last bar is ignored


def test_funding_coverage_warning():
    with pytest.warns(UserWarning, match="funding data covers"):
        MarketData.from_frame(
            _frame(48), funding=pd.Series([1e-4], index=pd.DatetimeIndex(["2024-01-02 16:00"])), source="x"
        )


# ----------------------------------------------------------------------------------------------- resampling
def test_parse_interval():
    assert parse_interval("1m") == 60 and parse_interval("15min") == 900 and parse_interval("4h") == 14400
    assert parse_interval("1d") == 86400 and parse_interval(300) == 300
    assert parse_interval(pd.Timedelta("2h")) == 7200
    for bad in ("1M", "abc", 0, "1.5h"):
        with pytest.raises(ValueError):
            parse_interval(bad)


def test_resample_aggregates_ohlcv_and_funding():
    m = _market(180, 60)  # 3 hours of 1-minute bars, starting on the hour
    h = resample_market(m, "1h")
    assert len(h) == 3 and h.bar_seconds == 3600
    for j in range(3):
        sl = slice(60 * j, 60 * (j + 1))
        assert h.timestamps[j] == m.timestamps[60 * j]  # labelled by open time
        assert h.open[j] == m.open[sl][0] and h.close[j] == m.close[sl][-1]
        assert h.high[j] == m.high[sl].max() and h.low[j] == m.low[sl].min()
        assert h.volume[j] == pytest.approx(m.volume[sl].sum())
        assert h.funding_rate[j] == pytest.approx(m.funding_rate[sl].sum())


def test_resample_drops_partial_buckets_and_says_so():
    m = _market(200, 60, start_ns=(1_704_067_200 + 30 * 60) * 10**9)  # starts at :30, ends mid-hour
    with pytest.warns(UserWarning, match="dropped 30 fine bar.* before .* and 50 after"):
        h = resample_market(m, "1h")
    assert len(h) == 2
    assert h.timestamps[0] == (1_704_067_200 + 3600) * 10**9


def test_resample_rejects_non_multiples():
    m = _market(120, 60)
    with pytest.raises(ValueError, match="whole multiple"):
        resample_market(m, "90s")


@settings(max_examples=30, deadline=None)
@given(
    k=st.sampled_from([2, 3, 5, 60]),
    n=st.integers(min_value=10, max_value=400),
    offset=st.integers(min_value=0, max_value=59),
    seed=st.integers(0, 10_000),
)
def test_resampled_bar_uses_no_data_after_its_end(k, n, offset, seed):
    """Each coarse bar equals the aggregate of the fine bars inside it only, and changing any later fine bar
    leaves it unchanged: a coarse close is observable only at the coarse bar's end."""
    base = 1_704_067_200 + offset * 60
    m = _market(n, 60, start_ns=base * 10**9, seed=seed)
    coarse = 60 * k
    if n < 2 * k:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = resample_market(m, coarse)
    for j in range(len(h)):
        end = h.timestamps[j] + coarse * 10**9
        inside = (m.timestamps >= h.timestamps[j]) & (m.timestamps < end)
        assert inside.sum() == k
        assert h.close[j] == m.close[inside][-1] and h.high[j] == m.high[inside].max()
        # Perturb everything after this bar's end: bar j must not move.
        later = m.timestamps >= end
        if later.any():
            bumped = MarketData(
                timestamps=m.timestamps,
                open=m.open,
                high=np.where(later, m.high * 2, m.high),
                low=m.low,
                close=np.where(later, m.close * 1.5, m.close),
                volume=np.where(later, 1e9, m.volume),
                funding_rate=np.where(later, 0.01, m.funding_rate),
                bar_seconds=60,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                h2 = resample_market(bumped, coarse)
            for name in ("open", "high", "low", "close", "volume", "funding_rate"):
                assert getattr(h2, name)[j] == getattr(h, name)[j]
