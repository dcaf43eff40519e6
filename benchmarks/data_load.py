"""Load a year of 1-minute bars (525,600 rows) and build the env on it: time and memory.

Writes a synthetic year of BTCUSDT-like 1m bars as a Binance USDⓈ-M klines CSV (12 columns, ms times, header)
and as Parquet into a temporary folder, then, in a fresh child process per file (so the memory figures are
that load's own): times ``envs.loaders.load_market`` and reports the process's resident memory (``VmRSS`` /
peak
``VmHWM`` from /proc/self/status) against the MarketData arrays' bytes; then builds ``CryptoFuturesEnv`` on
the loaded market (when ``envs.trading_env`` exists) and reports its build time and the memory it added. Also
times the embedded default data set's load (the ``gym.make("CryptoFutures-v0")`` data path).

Targets (issue 3): CSV load < 2 s; the env's memory within a few times the arrays' size.

Usage::

    python benchmarks/data_load.py            # 525,600 rows
    python benchmarks/data_load.py --rows 100000 --keep /tmp/bars   # smaller, keep the files
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _status_kib(field: str) -> int:
    """A VmRSS/VmHWM-style field of /proc/self/status, in KiB (0 where /proc is not available)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def write_files(rows: int, folder: Path) -> dict[str, Path]:
    import numpy as np
    import pandas as pd

    from envs.synthetic import make_market

    m = make_market("garch", n_bars=rows, seed=0, bar_seconds=60, start="2024-01-01", s0=42_000.0)
    ms = m.timestamps // 10**6
    vol = np.round(m.volume, 3)
    close = np.round(m.close, 1)
    # Round prices to the 0.1 tick like the exchange, keeping high/low outside open/close after rounding.
    open_ = np.round(m.open, 1)
    high = np.maximum(np.round(m.high, 1), np.maximum(open_, close))
    low = np.minimum(np.round(m.low, 1), np.minimum(open_, close))
    df = pd.DataFrame(
        {
            "open_time": ms,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": vol,
            "close_time": ms + 59_999,
            "quote_volume": np.round(vol * close, 4),
            "count": (vol * 7).astype(np.int64) + 1,
            "taker_buy_volume": np.round(vol * 0.5, 3),
            "taker_buy_quote_volume": np.round(vol * close * 0.5, 4),
            "ignore": 0,
        }
    )
    csv = folder / "BTCUSDT-1m-2024.csv"
    df.to_csv(csv, index=False)
    pq = folder / "BTCUSDT-1m-2024.parquet"
    df.to_parquet(pq, index=False)
    settle = np.flatnonzero(m.funding_rate)
    funding = folder / "BTCUSDT-fundingRate-2024.csv"
    pd.DataFrame(
        {
            "calc_time": ms[settle] + 3,
            "funding_interval_hours": 8,
            "last_funding_rate": m.funding_rate[settle],
        }
    ).to_csv(funding, index=False)
    return {"csv": csv, "parquet": pq, "funding": funding}


def measure(path: str, funding: str) -> dict:
    """Run in a fresh process: load, then build the env; memory figures relative to the start."""
    import gc

    import numpy  # noqa: F401  (imports are not part of the load)
    import pandas  # noqa: F401

    from envs.loaders import load_market

    out: dict = {"file": path, "size_mb": os.path.getsize(path) / 2**20}
    gc.collect()
    rss0 = _status_kib("VmRSS")
    t = time.perf_counter()
    market = load_market(path, funding=funding)
    out["load_s"] = time.perf_counter() - t
    gc.collect()
    out["rows"] = len(market)
    out["arrays_mb"] = market.nbytes / 2**20
    out["rss_after_load_mb"] = (_status_kib("VmRSS") - rss0) / 1024
    out["peak_during_load_mb"] = (_status_kib("VmHWM") - rss0) / 1024
    from envs.trading_env import CryptoFuturesEnv

    rss1 = _status_kib("VmRSS")
    t = time.perf_counter()
    env = CryptoFuturesEnv(market)
    env.reset(seed=0)
    out["env_build_s"] = time.perf_counter() - t
    gc.collect()
    out["env_rss_added_mb"] = (_status_kib("VmRSS") - rss1) / 1024
    out["rss_total_mb"] = (_status_kib("VmRSS") - rss0) / 1024
    del env
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=525_600, help="1-minute bars to generate (default: one year)")
    ap.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    ap.add_argument("--measure", nargs=2, metavar=("FILE", "FUNDING"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return

    from envs.market import load_embedded

    t = time.perf_counter()
    load_embedded.__wrapped__("btcusdt-1h")  # uncached: the cost of the first gym.make
    emb_ms = (time.perf_counter() - t) * 1e3

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        files = write_files(args.rows, folder)
        print(
            f"wrote {args.rows:,} 1m bars as Binance CSV + Parquet in {time.perf_counter() - t:.1f} s "
            f"({folder})"
        )
        print(f"embedded btcusdt-1h load (gym.make default data): {emb_ms:.1f} ms (target < 100 ms)")
        for kind in ("csv", "parquet"):
            res = subprocess.run(
                [sys.executable, __file__, "--measure", str(files[kind]), str(files["funding"])],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(
                f"\n[{kind}] {r['rows']:,} rows, {r['size_mb']:.1f} MB file: load_market {r['load_s']:.2f} s"
                + (" (target < 2 s for CSV)" if kind == "csv" else "")
            )
            print(
                f"  MarketData arrays {r['arrays_mb']:.1f} MB; RSS retained after load "
                f"{r['rss_after_load_mb']:.1f} MB "
                f"({r['rss_after_load_mb'] / r['arrays_mb']:.2f}x arrays); transient peak "
                f"{r['peak_during_load_mb']:.1f} MB ({r['peak_during_load_mb'] / r['arrays_mb']:.2f}x)"
            )
            if "env" in r:
                print(f"  env: {r['env']}")
            else:
                print(
                    f"  CryptoFuturesEnv build + reset {r['env_build_s']:.2f} s, RSS added "
                    f"{r['env_rss_added_mb']:.1f} MB; total RSS growth {r['rss_total_mb']:.1f} MB = "
                    f"{r['rss_total_mb'] / r['arrays_mb']:.2f}x the arrays' {r['arrays_mb']:.1f} MB"
                )


if __name__ == "__main__":
    main()
