"""Rebuild ``btcusdt_spot_1h_2022_2025.csv.gz``, the default ``btcusdt-1h`` market, from the raw shared files.

Run from the repository root (``python -m envs.data.build_default [SHARED_DATA_DIR]``; default
``../shared/data`` or ``/work/shared/data``). Everything goes through the project's own loaders:

* bars: ``binance-btcusdt-spot-1h-2022-2025/BTCUSDT_1h.csv`` (Binance BTC/USDT **spot**, 1h) loaded with
  ``fill_gaps=True`` (the 2023-03-24 13:00 outage bar is forward-filled with zero volume and counted); the
  last
  row, a bar still forming at download time (volume 9.39), is dropped;
* funding: the USDT-M BTCUSDT perpetual's settlements, merged from the binance.com web export (UTC+8, up to
  2025-03-13) and the API dump (UTC, from 2024-07-19); the loader checks that the overlapping settlements
  agree
  (to 1e-8) and puts each settlement on the bar containing it.

The output has one row per bar: ``timestamp, open, high, low, close, volume, funding_rate, filled``, written
with ``%.12g`` (every value round-trips to 1e-12; checked) and gzip with mtime 0, so a rebuild is
byte-identical.
"""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np

from envs.loaders import load_market

BARS = "binance-btcusdt-spot-1h-2022-2025/BTCUSDT_1h.csv"
FUNDING_WEB = "binance-btcusdt-funding-2019-2025/Binance Funding Rate History_BTCUSDT.csv"
FUNDING_API = "binance-btcusdt-perp-1h/BTCUSDT_funding.csv"
OUT = "btcusdt_spot_1h_2022_2025.csv.gz"


def build_default_market(shared: str | os.PathLike):
    """The default market from the raw files under ``shared`` (a ``shared/data`` folder)."""
    shared = Path(shared)
    market = load_market(
        shared / BARS,
        fill_gaps=True,
        funding=[f"{shared / FUNDING_WEB}@UTC+8", shared / FUNDING_API],
    )
    # The last row was still forming when downloaded (SOURCE.txt): drop it.
    return market.slice(0, len(market) - 1)


def write_default_market(market, out: str | os.PathLike) -> None:
    df = market.to_frame()
    df.index = df.index.strftime("%Y-%m-%d %H:%M:%S")
    df.index.name = "timestamp"
    df["filled"] = np.isin(market.timestamps, np.asarray(market.filled_times, dtype=np.int64)).astype(int)
    text = df.to_csv(float_format="%.12g", lineterminator="\n")
    back = np.loadtxt(text.splitlines()[1:], delimiter=",", usecols=range(1, 7))
    for k, c in enumerate(("open", "high", "low", "close", "volume", "funding_rate")):
        # Prices and volumes are exact; a rate parsed from a percent string ("0.004013%" / 100) is one ulp off
        # its shortest decimal form.
        if not np.allclose(back[:, k], getattr(market, c), rtol=1e-12, atol=0):
            raise RuntimeError(f"{c} does not round-trip through %.12g")
    with open(out, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(text.encode())


def main(argv: list[str]) -> None:
    if argv:
        shared = Path(argv[0])
    else:
        shared = next((p for p in (Path("../shared/data"), Path("/work/shared/data")) if p.is_dir()), None)
        if shared is None:
            raise SystemExit("pass the shared/data folder: python -m envs.data.build_default SHARED_DATA_DIR")
    market = build_default_market(shared)
    out = Path(__file__).with_name(OUT)
    write_default_market(market, out)
    print(
        f"{out}: {len(market)} bars {market.index[0]} .. {market.index[-1]}, {market.filled_bars} filled, "
        f"{np.count_nonzero(market.funding_rate)} funding settlements, {out.stat().st_size:,} bytes"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
