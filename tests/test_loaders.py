"""envs.loaders: every supported file format round-trips, every validation error names file/row/column."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs.market as market_mod
from envs.loaders import BINANCE_KLINE_COLUMNS, load_funding, load_market, parse_tz
from envs.market import DataValidationError, MarketData, load_funding_history

H_MS = 3_600_000
T0_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC


@pytest.fixture(autouse=True)
def _fresh_notices(monkeypatch):
    # The "no funding" notice is once per process; give each test a fresh process-like state.
    monkeypatch.setattr(market_mod, "_SAID", set())


def _klines(
    n: int, *, start_ms: int = T0_MS, step_ms: int = H_MS, unit: str = "ms", seed: int = 0
) -> pd.DataFrame:
    """Binance USDⓈ-M klines as in data.binance.vision files (times in ms, or µs with unit='us')."""
    rng = np.random.default_rng(seed)
    close = np.round(40_000 * np.exp(np.cumsum(rng.normal(0, 0.004, n))), 1)
    open_ = np.r_[40_000.0, close[:-1]]
    high = np.round(np.maximum(open_, close) + rng.uniform(0, 50, n), 1)
    low = np.round(np.minimum(open_, close) - rng.uniform(0, 50, n), 1)
    mult = 1000 if unit == "us" else 1
    t = (start_ms + np.arange(n, dtype=np.int64) * step_ms) * mult
    vol = np.round(rng.uniform(100, 900, n), 3)
    return pd.DataFrame(
        {
            "open_time": t,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": vol,
            "close_time": t + step_ms * mult - 1,
            "quote_volume": np.round(vol * close, 4),
            "count": rng.integers(1000, 9000, n),
            "taker_buy_volume": np.round(vol / 2, 3),
            "taker_buy_quote_volume": np.round(vol * close / 2, 4),
            "ignore": 0,
        }
    )


def _write(df: pd.DataFrame, path: Path, *, header: bool = True) -> Path:
    df.to_csv(path, index=False, header=header)
    return path


def _assert_same_bars(m: MarketData, k: pd.DataFrame, *, unit: str = "ms") -> None:
    div = 1000 if unit == "us" else 1
    np.testing.assert_array_equal(m.timestamps, (k["open_time"].to_numpy() // div) * 10**6)
    for c in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(m, c), k[c].to_numpy(dtype=float))


# ----------------------------------------------------------------------------------------------- Binance
# klines
@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("unit", ["ms", "us"])
def test_binance_klines_round_trip(tmp_path, header, unit, caplog):
    k = _klines(50, unit=unit)
    p = _write(k, tmp_path / "BTCUSDT-1h-2024-01.csv", header=header)
    with caplog.at_level("WARNING", logger="perpclip.data"):
        m = load_market(p)
    assert any("no funding data" in r.getMessage() for r in caplog.records)
    _assert_same_bars(m, k, unit=unit)
    assert m.bar_seconds == 3600 and not m.has_funding and not m.funding_rate.any()


def test_binance_zip_and_monthly_files_by_list_and_glob(tmp_path):
    full = _klines(24 * 90, seed=3)  # Jan..Mar 2024, hourly
    months = pd.to_datetime(full["open_time"], unit="ms").dt.month
    paths = []
    for mth, header in ((1, False), (2, True), (3, True)):  # Binance switched to headers mid-history
        part = full[months == mth]
        p = tmp_path / f"BTCUSDT-1h-2024-{mth:02d}.zip"
        part.to_csv(
            p, index=False, header=header, compression={"method": "zip", "archive_name": p.stem + ".csv"}
        )
        paths.append(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_list = load_market([paths[2], paths[0], paths[1]])  # any order: files are sorted by first time
        by_glob = load_market(str(tmp_path / "BTCUSDT-1h-2024-*.zip"))
    _assert_same_bars(by_list, full[months <= 3])
    np.testing.assert_array_equal(by_glob.close, by_list.close)


def test_overlapping_monthly_files_are_rejected_with_file_and_row(tmp_path):
    k = _klines(60)
    a = _write(k.iloc[:40], tmp_path / "a.csv")
    b = _write(k.iloc[30:], tmp_path / "b.csv")
    with pytest.raises(DataValidationError) as e:
        load_market([a, b])
    msg = str(e.value)
    assert "duplicate timestamp" in msg and str(b) in msg and "data row 0" in msg and "line 2" in msg
    assert str(a) in msg and "data row 30" in msg  # where the first copy is
    assert e.value.column == "open_time"


def test_close_time_reveals_mixed_intervals(tmp_path):
    k = _klines(30)
    k.loc[12, "close_time"] = k.loc[12, "open_time"] + 4 * H_MS - 1  # a 4h bar inside hourly bars
    p = _write(k, tmp_path / "mixed.csv")
    with pytest.raises(DataValidationError) as e:
        load_market(p)
    assert "mixed bar intervals" in str(e.value) and "14400s" in str(e.value)
    assert (e.value.row, e.value.line, e.value.column) == (12, 14, "close_time")


# ----------------------------------------------------------------------------------------------- generic
# OHLCV
def test_generic_csv_case_insensitive_iso_times_newest_first_and_tz(tmp_path):
    k = _klines(20)
    df = pd.DataFrame(
        {
            "Date": pd.to_datetime(k["open_time"], unit="ms")
            .dt.tz_localize("UTC")
            .dt.tz_convert("Asia/Shanghai")
            .dt.strftime("%Y-%m-%d %H:%M:%S"),
            "Open": k["open"],
            "HIGH": k["high"],
            "low": k["low"],
            "Close": k["close"],
            "Volume": k["volume"],
        }
    ).iloc[::-1]  # newest first, as some exchange exports are
    p = _write(df, tmp_path / "export.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m8 = load_market(p, tz="UTC+8")
        m_sh = load_market(p, tz="Asia/Shanghai")
        m_utc = load_market(p)
    _assert_same_bars(m8, k)
    np.testing.assert_array_equal(m_sh.timestamps, m8.timestamps)
    assert m_utc.timestamps[0] - m8.timestamps[0] == 8 * 3600 * 10**9


def test_headerless_generic_six_columns(tmp_path):
    k = _klines(10)
    df = k[["open_time", "open", "high", "low", "close", "volume"]].copy()
    df["open_time"] = pd.to_datetime(df["open_time"], unit="ms").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    p = _write(df, tmp_path / "plain.csv", header=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = load_market(p)
    _assert_same_bars(m, k)


@pytest.mark.parametrize("layout", ["index", "column_ms", "column_datetime"])
def test_parquet_round_trip(tmp_path, layout):
    k = _klines(30)
    idx = pd.to_datetime(k["open_time"], unit="ms", utc=True)
    cols = {c.capitalize(): k[c].to_numpy() for c in ("open", "high", "low", "close", "volume")}
    if layout == "index":
        df = pd.DataFrame(cols, index=pd.DatetimeIndex(idx, name="timestamp"))
    elif layout == "column_ms":
        df = pd.DataFrame({"open_time": k["open_time"], **cols})
    else:
        df = pd.DataFrame({"Datetime": idx, **cols})
    p = tmp_path / "bars.parquet"
    df.to_parquet(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = load_market(p)
    _assert_same_bars(m, k)


def test_marketdata_to_frame_parquet_round_trip_keeps_funding(tmp_path):
    m = load_market("synthetic:gbm:n_bars=300,seed=1")
    p = tmp_path / "m.parquet"
    m.to_frame().to_parquet(p)
    back = load_market(p)
    assert back.has_funding
    for c in ("timestamps", "open", "high", "low", "close", "volume", "funding_rate"):
        np.testing.assert_array_equal(getattr(back, c), getattr(m, c))


def test_dataframe_with_time_column_and_marketdata_pass_through():
    k = _klines(12)
    df = k[["open_time", "open", "high", "low", "close", "volume"]].rename(columns={"open_time": "Timestamp"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = load_market(df)
    _assert_same_bars(m, k)
    assert load_market(m) is m


# ----------------------------------------------------------------------------------------------- funding
# files
def test_binance_public_funding_file_aligned_with_jitter(tmp_path):
    k = _klines(48)
    calc = T0_MS + np.arange(6) * 8 * H_MS + np.array([0, 1, 6, 2, 0, 3])  # Binance's ms jitter
    f = pd.DataFrame(
        {"calc_time": calc, "funding_interval_hours": 8, "last_funding_rate": [1, 2, 3, 4, 5, 6]}
    )
    f["last_funding_rate"] *= 1e-5
    pk = _write(k, tmp_path / "k.csv")
    pf = _write(f, tmp_path / "BTCUSDT-fundingRate-2024-01.csv")
    m = load_market(pk, funding=pf)
    assert m.has_funding and m.funding_interval_hours == 8
    np.testing.assert_allclose(m.funding_rate[::8], np.arange(1, 7) * 1e-5)
    assert np.count_nonzero(m.funding_rate) == 6
    # Headerless variant of the same file.
    pf2 = _write(f, tmp_path / "nohdr.csv", header=False)
    np.testing.assert_array_equal(load_market(pk, funding=pf2).funding_rate, m.funding_rate)


def test_api_funding_dump_ms_and_strings(tmp_path):
    k = _klines(24)
    api = pd.DataFrame(
        {
            "symbol": "BTCUSDT",
            "fundingTime": T0_MS + np.arange(3) * 8 * H_MS + 4,
            "fundingRate": [1e-4, -2e-5, 3e-5],
            "markPrice": 42000.0,
        }
    )
    s = load_funding(_write(api, tmp_path / "api.csv"))
    assert list(s.index) == list(pd.date_range("2024-01-01", periods=3, freq="8h", tz="UTC"))
    np.testing.assert_allclose(s.to_numpy(), [1e-4, -2e-5, 3e-5])
    m = load_market(_write(k, tmp_path / "k.csv"), funding=s)
    np.testing.assert_allclose(m.funding_rate[[0, 8, 16]], [1e-4, -2e-5, 3e-5])


# The first lines of the real files in shared/data (copied verbatim, CRLF and jitter included).
REAL_KLINES = (
    "open_time,open,high,low,close,volume\r\n"
    "2025-05-06 17:00:00,94186.30,94800.00,94175.90,94470.80,6489.468\r\n"
    "2025-05-06 18:00:00,94470.90,95050.00,94449.70,95027.60,5723.990\r\n"
    "2025-05-06 19:00:00,95027.70,95119.90,94864.40,94910.80,5795.895\r\n"
    "2025-05-06 20:00:00,94910.80,94979.60,94568.70,94625.30,4389.095\r\n"
    "2025-05-06 21:00:00,94625.30,94750.10,94400.00,94637.90,2879.971\r\n"
    "2025-05-06 22:00:00,94637.90,96248.90,94623.70,96206.20,25713.772\r\n"
    "2025-05-06 23:00:00,96206.20,96550.00,96000.00,96300.00,15000.000\r\n"
    "2025-05-07 00:00:00,96300.00,96400.00,96100.00,96200.00,9000.000\r\n"
)
REAL_API_FUNDING = (
    "fundingTime,fundingRate\r\n"
    "2025-05-06 08:00:00.005000,0.00004440\r\n"
    "2025-05-06 16:00:00,0.00000757\r\n"
    "2025-05-07 00:00:00.002000,0.00001218\r\n"
    "2025-05-07 08:00:00,-0.00000025\r\n"
)
REAL_WEB_EXPORT = (
    '\ufeff"Time","Contracts","Funding Interval","Funding Rate"\n'
    '"2025-03-13 08:00:00","BTCUSDT Perpetual","8h","0.000430%"\n'
    '"2025-03-13 00:00:00","BTCUSDT Perpetual","8h","0.004013%"\n'
    '"2025-03-12 16:00:00","BTCUSDT Perpetual","8h","0.005815%"\n'
    '"2025-03-12 08:00:00","BTCUSDT Perpetual","8h","0.000576%"\n'
    '"2025-03-12 00:00:00","BTCUSDT Perpetual","8h","0.008746%"\n'
    '"2020-03-13 16:00:00","BTCUSDT Perpetual","8h","-0.300000%"'
)


def test_real_klines_and_api_funding_lines(tmp_path):
    pk = tmp_path / "BTCUSDT_klines.csv"
    pf = tmp_path / "BTCUSDT_funding.csv"
    pk.write_bytes(REAL_KLINES.encode())
    pf.write_bytes(REAL_API_FUNDING.encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # funding spans the bars: no coverage warning, no "no funding" notice
        m = load_market(pk, funding=pf)
    assert len(m) == 8 and m.close[0] == 94470.80 and m.volume[5] == 25713.772
    assert m.index[0] == pd.Timestamp("2025-05-06 17:00", tz="UTC")
    # 2025-05-07 00:00:00.002 floors to 00:00 and lands on the last bar (the 16:00 settlement precedes the
    # bars).
    assert m.funding_rate[-1] == pytest.approx(0.00001218) and np.count_nonzero(m.funding_rate) == 1


@pytest.mark.parametrize("tz", ["UTC+8", "UTC+08:00", "Asia/Shanghai"])
def test_web_export_funding_lines(tmp_path, tz):
    p = tmp_path / "Binance Funding Rate History_BTCUSDT.csv"
    p.write_bytes(REAL_WEB_EXPORT.encode("utf-8"))
    s = load_funding(p, tz=tz)
    assert s.index.is_monotonic_increasing and len(s) == 6
    assert s.index[0] == pd.Timestamp("2020-03-13 08:00", tz="UTC") and s.iloc[0] == pytest.approx(-0.003)
    assert s.index[-1] == pd.Timestamp("2025-03-13 00:00", tz="UTC") and s.iloc[-1] == pytest.approx(4.30e-6)
    assert s.attrs["funding_interval_hours"] == 8.0


def test_real_history_written_as_a_web_export_round_trips(tmp_path):
    """The whole embedded 2019-2025 history, rewritten in the web page's format (BOM, quotes, newest first,
    percent strings, UTC+8), loads back to the same series."""
    hist = load_funding_history()
    local = (hist.index.tz_convert("UTC") + pd.Timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S")
    lines = ['"Time","Contracts","Funding Interval","Funding Rate"']
    lines += [
        f'"{t}","BTCUSDT Perpetual","8h","{r * 100:.6f}%"'
        for t, r in zip(local[::-1], hist.to_numpy()[::-1], strict=True)
    ]
    p = tmp_path / "export.csv"
    p.write_bytes(("\ufeff" + "\n".join(lines)).encode())
    back = load_funding(p, tz="UTC+8")
    assert len(back) == 6033
    assert (back.index == hist.index).all()
    np.testing.assert_allclose(back.to_numpy(), hist.to_numpy(), rtol=0, atol=5e-11)


def test_funding_tz_separate_from_bar_tz(tmp_path):
    pk = tmp_path / "k.csv"
    pk.write_bytes(REAL_KLINES.encode())
    export = (
        '\ufeff"Time","Contracts","Funding Interval","Funding Rate"\n'
        '"2025-05-07 08:00:00","BTCUSDT Perpetual","8h","0.001218%"\n'
    )
    pf = tmp_path / "web.csv"
    pf.write_bytes(export.encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = load_market(pk, funding=pf, funding_tz="UTC+8")  # bars naive UTC, funding in UTC+8
    assert m.funding_rate[-1] == pytest.approx(1.218e-5)


def test_parse_tz_errors():
    assert parse_tz(None) == "UTC"
    with pytest.raises(ValueError, match="unknown time zone.*UTC\\+8"):
        parse_tz("Mars/Olympus")
    with pytest.raises(ValueError, match="-14:00 to \\+14:00"):
        parse_tz("UTC+15")


def test_duplicate_funding_and_bad_rate_name_row(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("fundingTime,fundingRate\n2024-01-01 00:00:00,0.0001\n2024-01-01 08:00:00,abc\n")
    with pytest.raises(DataValidationError) as e:
        load_funding(p)
    assert "'abc' is not a rate" in str(e.value) and (e.value.row, e.value.line) == (1, 3)
    p.write_text("fundingTime,fundingRate\n2024-01-01 00:00:00.003,0.0001\n2024-01-01 00:00:00,0.0002\n")
    with pytest.raises(DataValidationError, match="duplicate settlement"):
        load_funding(p)


# ----------------------------------------------------------------------------------------------- validation
# via files
def _generic(n: int = 10) -> pd.DataFrame:
    k = _klines(n)
    return pd.DataFrame(
        {
            "Timestamp": pd.to_datetime(k["open_time"], unit="ms").dt.strftime("%Y-%m-%d %H:%M:%S"),
            "Open": k["open"],
            "High": k["high"],
            "Low": k["low"],
            "Close": k["close"],
            "Volume": k["volume"],
        }
    )


@pytest.mark.parametrize(
    ("col", "value", "fragment"),
    [
        ("Close", np.nan, "not a finite number"),
        ("Open", "12x", "'12x' is not a number"),
        ("Low", 0.0, "non-positive price"),
        ("High", 1.0, "below max(open, close)"),
        ("Low", 1e9, "above min(open, close)"),
        ("Volume", -1.0, "negative volume"),
        ("Timestamp", "not-a-date", "cannot read 'not-a-date' as a time"),
    ],
)
def test_file_value_errors_name_file_row_line_column(tmp_path, col, value, fragment):
    df = _generic().astype({col: object})
    df.loc[6, col] = value
    p = _write(df, tmp_path / "bars.csv")
    with pytest.raises(DataValidationError) as e:
        load_market(p)
    msg = str(e.value)
    assert fragment in msg
    assert f"{p}, data row 6 (0-based, header excluded; line 8 of the file), column '{col}'" in msg
    assert (e.value.file, e.value.row, e.value.line, e.value.column) == (str(p), 6, 8, col)


@pytest.mark.parametrize(
    ("rows", "fragment", "bad_row"),
    [
        ([0, 1, 2, 3, 3, 4, 5, 6], "duplicate timestamp", 4),
        ([0, 1, 2, 4, 3, 5, 6, 7], "not sorted", 4),
        ([0, 1, 2, 3, 5, 6, 7, 8], "gap", 4),
    ],
)
def test_file_time_errors_name_row(tmp_path, rows, fragment, bad_row):
    df = _generic(10).iloc[rows].reset_index(drop=True)
    p = _write(df, tmp_path / "t.csv")
    with pytest.raises(DataValidationError) as e:
        load_market(p)
    assert fragment in str(e.value) and e.value.row == bad_row and e.value.line == bad_row + 2
    assert e.value.column == "Timestamp"


def test_file_mixed_interval_and_mixed_units(tmp_path):
    df = _generic(10)
    df.loc[7:, "Timestamp"] = (
        pd.to_datetime(df.loc[7:, "Timestamp"]) + pd.Timedelta(minutes=30)
    ).dt.strftime("%Y-%m-%d %H:%M:%S")
    with pytest.raises(DataValidationError, match="mixed bar intervals") as e:
        load_market(_write(df, tmp_path / "m.csv"))
    assert e.value.row == 7
    k = _klines(10)
    k.loc[5:, "open_time"] *= 1000  # µs from row 5 on
    with pytest.raises(DataValidationError, match="different unit than row 0") as e:
        load_market(_write(k, tmp_path / "u.csv"))
    assert (e.value.row, e.value.column) == (5, "open_time")


def test_fill_gaps_option_through_load_market(tmp_path, caplog):
    df = _generic(12).drop(index=[4, 5, 9]).reset_index(drop=True)
    p = _write(df, tmp_path / "g.csv")
    with pytest.raises(DataValidationError, match=r"2 gap\(s\).*3 missing"):
        load_market(p)
    with pytest.raises(DataValidationError, match="--fill-gaps"):
        load_market(p)
    with caplog.at_level("WARNING", logger="perpclip.data"):
        m = load_market(p, fill_gaps=True)
    assert any("3 missing bar" in r.getMessage() for r in caplog.records)
    assert m.filled_bars == 3 and m.filled_times == tuple(int(x) for x in m.timestamps[[4, 5, 9]])
    assert len(m) == 12 and m.volume[4] == m.volume[5] == 0 and m.close[4] == m.close[3]


# ----------------------------------------------------------------------------------------------- specs
def test_spec_dispatch_and_errors(tmp_path):
    assert len(load_market("btcusdt-perp-1h-2025")) == 999
    with pytest.raises(ValueError, match="accepted: an embedded data set name \\('btcusdt-1h'.*synthetic"):
        load_market("btcusdt-4h")
    with pytest.raises(ValueError, match="file not found"):
        load_market(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="no file matches"):
        load_market(str(tmp_path / "*.csv"))
    with pytest.raises(ValueError, match="valid kinds: gbm, jump, garch, regime, planted"):
        load_market("synthetic:brownian")
    with pytest.raises(ValueError, match="unknown parameter 'jump_rate'.*valid: .*jump_intensity"):
        load_market("synthetic:jump:jump_rate=3")
    with pytest.raises(ValueError, match="key=value"):
        load_market("synthetic:gbm:n_bars")
    with pytest.raises(ValueError, match="cannot load market data from a int"):
        load_market(3)


def test_synthetic_spec_is_seeded_and_resamplable():
    a = load_market("synthetic:jump:n_bars=480,seed=3,bar_seconds=900")
    b = load_market("synthetic:jump:n_bars=480,seed=3,bar_seconds=900")
    c = load_market("synthetic:jump:n_bars=480,seed=4,bar_seconds=900")
    np.testing.assert_array_equal(a.close, b.close)
    assert not np.array_equal(a.close, c.close)
    h = load_market("synthetic:jump:n_bars=480,seed=3,bar_seconds=900", resample="1h")
    assert len(h) == 120 and h.close[0] == a.close[3] and h.high[0] == a.high[:4].max()


def test_resample_via_load_market_file(tmp_path):
    k = _klines(24 * 60 + 17, step_ms=60_000)  # 1m bars, a partial last hour
    p = _write(k, tmp_path / "BTCUSDT-1m.csv")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        h = load_market(p, resample="1h")
    assert any("dropped 0 fine bar(s) before the first and 17 after" in str(w.message) for w in rec)
    assert len(h) == 24 and h.bar_seconds == 3600
    assert h.volume[0] == pytest.approx(k["volume"][:60].sum())


def test_errors_in_a_newest_first_file_name_the_files_own_row(tmp_path):
    df = _generic(10).iloc[::-1].reset_index(drop=True)  # newest first: reversed on load
    df.loc[2, "Volume"] = -5.0
    with pytest.raises(DataValidationError) as e:
        load_market(_write(df, tmp_path / "desc.csv"))
    assert (e.value.row, e.value.line, e.value.column) == (2, 4, "Volume")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["gbm", "jump", "garch", "regime", "planted"]),
    seed=st.integers(0, 10_000),
    n=st.integers(2, 200),
    bar=st.sampled_from([60, 900, 3600, 86400]),
)
def test_any_market_round_trips_through_csv(tmp_path, kind, seed, n, bar):
    from envs.synthetic import make_market

    m = make_market(kind, n_bars=n, seed=seed, bar_seconds=bar)
    p = tmp_path / f"rt-{kind}-{seed}-{n}-{bar}.csv"
    m.to_frame().to_csv(p)  # index "timestamp" as ISO strings with +00:00, floats as shortest repr
    back = load_market(p)
    assert back.bar_seconds == bar and back.has_funding
    for c in ("timestamps", "open", "high", "low", "close", "volume", "funding_rate"):
        np.testing.assert_array_equal(getattr(back, c), getattr(m, c))


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance-btcusdt-perp-1h"


@pytest.mark.skipif(not SHARED.is_dir(), reason="the team's raw data folder (../shared/data) is not here")
def test_raw_shared_files_load_to_the_embedded_market():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = load_market(SHARED / "BTCUSDT_klines.csv", funding=SHARED / "BTCUSDT_funding.csv")
    from envs.market import load_embedded

    emb = load_embedded("btcusdt-perp-1h-2025")
    assert len(raw) == 1000  # the raw file still has the forming last bar that the embedded set drops
    for c in ("timestamps", "open", "high", "low", "close", "volume", "funding_rate"):
        np.testing.assert_array_equal(getattr(raw, c)[:999], getattr(emb, c))
    export = SHARED.parent / "binance-btcusdt-funding-2019-2025" / "Binance Funding Rate History_BTCUSDT.csv"
    hist = load_funding(export, tz="UTC+8")
    ref = load_funding_history()
    assert (hist.index == ref.index).all() and len(hist) == 6033
    np.testing.assert_allclose(hist.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-12)


def test_binance_columns_constant():
    assert BINANCE_KLINE_COLUMNS[:6] == ("open_time", "open", "high", "low", "close", "volume")
    assert len(BINANCE_KLINE_COLUMNS) == 12


SPOT = SHARED.parent / "binance-btcusdt-spot-1h-2022-2025"


@pytest.mark.skipif(not SPOT.is_dir(), reason="the team's raw data folder (../shared/data) is not here")
def test_raw_spot_file_loads_with_fill_gaps_and_rebuilds_the_default_market(caplog):
    with pytest.raises(DataValidationError, match="--fill-gaps"):
        load_market(SPOT / "BTCUSDT_1h.csv")
    with caplog.at_level("WARNING", logger="perpclip.data"):
        raw = load_market(str(SPOT / "BTCUSDT_1h.csv"), fill_gaps=True)
    assert len(raw) == 29_304 and raw.filled_bars == 1 and not raw.has_funding
    from envs.data.build_default import build_default_market
    from envs.market import load_embedded

    built = build_default_market(SHARED.parent)
    emb = load_embedded("btcusdt-1h")
    assert built.filled_times == emb.filled_times
    for c in ("timestamps", "open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(built, c), getattr(emb, c))
    np.testing.assert_allclose(built.funding_rate, emb.funding_rate, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------ funding time zones


def _api_funding(path, start="2024-01-01 00:00", n=9, tz_hours=0, rate0=1e-4):
    times = pd.date_range(start, periods=n, freq="8h") + pd.Timedelta(hours=tz_hours)
    rates = rate0 + 1e-6 * np.arange(n)
    pd.DataFrame({"fundingTime": times.strftime("%Y-%m-%d %H:%M:%S"), "fundingRate": rates}).to_csv(
        path, index=False
    )
    return path


def test_funding_files_merge_when_their_overlap_agrees(tmp_path):
    a = _api_funding(tmp_path / "a.csv", n=9)
    b = _api_funding(tmp_path / "b.csv", start="2024-01-02 00:00", n=9, rate0=1e-4 + 3e-6)  # overlaps 6
    s = load_funding([a, b])
    assert len(s) == 12 and s.attrs["overlap_checked"] == 6 and s.index.is_monotonic_increasing
    assert s.iloc[-1] == pytest.approx(1e-4 + 3e-6 + 8e-6)


def test_funding_files_that_disagree_name_both_files_and_the_settlement(tmp_path):
    a = _api_funding(tmp_path / "a.csv", n=9)
    b = _api_funding(tmp_path / "b.csv", start="2024-01-02 00:00", n=6, rate0=2e-4)
    with pytest.raises(ValueError, match=r"a\.csv and .*b\.csv disagree at settlement 2024-01-02 00:00:00"):
        load_funding([a, b])


def test_funding_file_in_local_time_is_named_by_the_merge_and_fixed_by_the_suffix(tmp_path):
    utc = _api_funding(tmp_path / "utc.csv", n=12)
    local = _api_funding(tmp_path / "local.csv", n=12, tz_hours=8)  # same settlements written in UTC+8
    with pytest.raises(ValueError, match=r"read in UTC\+8: pass '.*local\.csv@UTC\+8'"):
        load_funding([utc, local])
    s = load_funding([utc, f"{local}@UTC+8"])
    assert len(s) == 12 and s.attrs["overlap_checked"] == 12
    # funding_tz= applies to every file without a suffix; the suffix wins.
    s2 = load_funding([f"{utc}@UTC", local], tz="UTC+8")
    pd.testing.assert_series_equal(s, s2, check_exact=False)


def test_funding_off_the_8h_grid_raises_with_the_zone_to_pass(tmp_path):
    p = _api_funding(tmp_path / "ny.csv", n=9, tz_hours=-5)  # UTC-5 local times read as UTC
    with pytest.raises(
        ValueError, match=r"off the exchange's 8 h grid.*funding_tz='UTC\+3'.*--funding.*'UTC-5'"
    ):
        load_funding(p)
    assert len(load_funding(p, tz="UTC-5")) == 9
    assert load_funding(f"{p}@UTC-5").index[0] == pd.Timestamp("2024-01-01 00:00", tz="UTC")


def test_web_export_without_a_time_zone_is_refused(tmp_path):
    p = tmp_path / "Binance Funding Rate History_BTCUSDT.csv"
    p.write_bytes(REAL_WEB_EXPORT.encode("utf-8"))
    with pytest.raises(ValueError, match=r"web export.*local time.*@UTC\+8"):
        load_funding(p)
    assert len(load_funding(f"{p}@UTC+8")) == 6


def test_load_market_takes_per_file_funding_zones(tmp_path):
    idx = pd.date_range("2024-01-01", periods=72, freq="1h")
    bars = pd.DataFrame(
        {
            "timestamp": idx.strftime("%Y-%m-%d %H:%M:%S"),
            "open": 100.0,
            "high": 101.0,
            "low": 99.0,
            "close": 100.0,
            "volume": 5.0,
        }
    )
    pb = tmp_path / "bars.csv"
    bars.to_csv(pb, index=False)
    utc = _api_funding(tmp_path / "utc.csv", n=6)
    local = _api_funding(tmp_path / "local.csv", start="2024-01-02 00:00", n=6, tz_hours=8, rate0=1e-4 + 3e-6)
    m = load_market(pb, funding=[utc, f"{local}@UTC+8"])
    nz = np.flatnonzero(m.funding_rate)
    assert len(nz) == 9 and set(m.index[nz].hour) == {0, 8, 16}
