"""Time-ordered data splits: train / validation / test and walk-forward folds.

Every range is a half-open bar index range ``(start, stop)``; ranges never overlap and a later split always
starts at or after the end of an earlier one (plus ``gap`` bars, to keep a feature window computed at the
start of a test range from reading training bars twice). Use :func:`split_market` to cut a
:class:`~envs.market.MarketData` by these ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from envs.market import MarketData

__all__ = ["Fold", "split_market", "time_split", "walk_forward"]

Range = tuple[int, int]


def _n_of(data: int | MarketData | pd.DatetimeIndex | np.ndarray) -> int:
    if isinstance(data, (int, np.integer)) and not isinstance(data, bool):
        if data < 0:
            raise ValueError(f"n_bars must be >= 0, got {data}")
        return int(data)
    if isinstance(data, (MarketData, pd.DatetimeIndex, np.ndarray)):
        return len(data)
    raise ValueError(f"expected a number of bars, a MarketData or timestamps, got {type(data).__name__}")


def _timestamps(data: int | MarketData | pd.DatetimeIndex | np.ndarray, what: str) -> np.ndarray:
    if isinstance(data, MarketData):
        return np.asarray(data.timestamps)
    if isinstance(data, pd.DatetimeIndex):
        idx = data.tz_localize("UTC") if data.tz is None else data.tz_convert("UTC")
        return idx.as_unit("ns").asi8
    if isinstance(data, np.ndarray) and data.dtype.kind in "iM":
        return (
            data.astype("datetime64[ns]").astype(np.int64)
            if data.dtype.kind == "M"
            else data.astype(np.int64)
        )
    raise ValueError(
        f"{what} given as a date needs timestamps: pass a MarketData or DatetimeIndex as the first argument, "
        f"not {type(data).__name__}"
    )


def _date_ns(value: str | pd.Timestamp, what: str) -> int:
    try:
        t = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ValueError(
            f"{what}={value!r} is not a date; use e.g. '2025-06-01' or '2025-06-01 08:00'"
        ) from None
    t = t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
    return int(t.as_unit("ns").value)


def _is_date(x: object) -> bool:
    return isinstance(x, (str, pd.Timestamp, np.datetime64)) or hasattr(x, "isoformat")


def time_split(
    data: int | MarketData | pd.DatetimeIndex | np.ndarray,
    *,
    val: float | int | str | pd.Timestamp = 0.15,
    test: float | int | str | pd.Timestamp = 0.15,
    gap: int = 0,
) -> dict[str, Range]:
    """Split bars into consecutive train / val / test ranges, in time order.

    Args:
        data: the number of bars, or a MarketData / DatetimeIndex / int64 ns timestamps (needed for dates).
        val: validation size as a fraction of the bars (float in [0, 1)), a number of bars (int), or the date
        the
            validation period starts (str / Timestamp; naive = UTC).
        test: test size, same forms; a date is where the test period starts.
        gap: bars left out before val and before test (embargo against overlapping feature windows).

    Returns:
        ``{"train": (0, a), "val": (a + gap, b), "test": (b + gap, n)}``; val may be empty (``val=0``).

    Raises:
        ValueError: sizes that leave an empty train or test split, dates out of order or outside the data.
    """
    n = _n_of(data)
    if not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"gap must be an int >= 0, got {gap!r}")
    if _is_date(val) or _is_date(test):
        if not (_is_date(val) and _is_date(test)):
            raise ValueError("give val and test both as dates or both as sizes (fractions or bar counts)")
        ts = _timestamps(data, "val/test")
        v0, t0 = _date_ns(val, "val"), _date_ns(test, "test")
        if v0 > t0:
            raise ValueError(
                f"val starts ({val}) after test starts ({test}); the validation period comes first"
            )
        val_start = int(np.searchsorted(ts, v0, side="left"))
        test_start = int(np.searchsorted(ts, t0, side="left"))
    else:
        n_val, n_test = _size(val, n, "val"), _size(test, n, "test")
        test_start = n - n_test
        val_start = test_start - gap - n_val if n_val else test_start
    train_stop = val_start - gap if val_start < test_start else test_start - gap
    out = {
        "train": (0, train_stop),
        "val": (val_start, max(val_start, test_start - gap)),
        "test": (test_start, n),
    }
    if train_stop <= 0 or test_start >= n:
        if _is_date(val):
            need = "more bars before the validation date and at least one from the test date on"
        elif isinstance(val, (int, np.integer)) and isinstance(test, (int, np.integer)):
            total = int(val) + max(int(test), 1) + (2 * gap if val else gap) + 1
            need = (
                f"the data needs at least {total} rows (bars) in total (val + test + gaps + 1 training bar)"
            )
        else:
            need = "load more bars or give smaller val/test"
        raise ValueError(
            f"time_split of {n} bars with val={val!r}, test={test!r}, gap={gap} leaves "
            f"train={out['train']} test={out['test']}: train and test need at least one bar each; {need}"
        )
    return out


def _size(x: float | int, n: int, what: str) -> int:
    if isinstance(x, bool):
        raise ValueError(f"{what} must be a fraction, a bar count or a date, got {x!r}")
    if isinstance(x, (int, np.integer)):
        if x < 0:
            raise ValueError(f"{what} must be >= 0 bars, got {x}")
        return int(x)
    if isinstance(x, (float, np.floating)):
        if not 0 <= x < 1:
            raise ValueError(
                f"{what} as a fraction must be in [0, 1), got {x}; use an int for a number of bars"
            )
        return int(round(x * n))
    raise ValueError(
        f"{what} must be a fraction (float), a number of bars (int) or a date, got {type(x).__name__}"
    )


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold: train on ``train`` bars, then test on the later ``test`` bars.

    Both are ``(start, stop)`` index ranges with ``train[1] <= test[0]``.
    """

    train: Range
    test: Range

    def __post_init__(self) -> None:
        if not (0 <= self.train[0] < self.train[1] <= self.test[0] < self.test[1]):
            raise ValueError(
                f"invalid fold: train {self.train} must be non-empty and end before test {self.test}"
            )


def walk_forward(
    data: int | MarketData | pd.DatetimeIndex | np.ndarray,
    n_folds: int,
    *,
    test_bars: int | None = None,
    mode: str = "expanding",
    min_train_bars: int | None = None,
    gap: int = 0,
) -> list[Fold]:
    """Walk-forward folds: consecutive test windows ending at the last bar, each trained on what precedes it.

    Args:
        data: number of bars (or a MarketData / timestamps).
        n_folds: number of folds (>= 1).
        test_bars: bars per test window; default ``(n - min_train_bars) // n_folds`` (with the default
            ``min_train_bars`` this is ``n // (n_folds + 1)``, as scikit-learn's TimeSeriesSplit).
        mode: ``"expanding"``: train on every bar before the test window (minus ``gap``); ``"rolling"``: train
        on
            the ``min_train_bars`` bars just before it (a fixed-length window that moves forward).
        min_train_bars: bars in the first fold's training set (and in every rolling one); default
            ``n - n_folds * test_bars`` or ``n // (n_folds + 1)`` when ``test_bars`` is not given either.
        gap: bars left out between each training set and its test window.

    Returns:
        ``n_folds`` :class:`Fold` in time order; the test windows do not overlap and the last ends at ``n``.

    Raises:
        ValueError: bad mode or sizes that do not fit in ``n`` bars (the message gives the arithmetic).
    """
    n = _n_of(data)
    if mode not in ("expanding", "rolling"):
        raise ValueError(f"mode must be 'expanding' or 'rolling', got {mode!r}")
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 1:
        raise ValueError(f"n_folds must be an int >= 1, got {n_folds!r}")
    if not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"gap must be an int >= 0, got {gap!r}")
    if test_bars is None and min_train_bars is None:
        test_bars = n // (n_folds + 1)
    elif test_bars is None:
        test_bars = (n - min_train_bars - gap) // n_folds
    if min_train_bars is None:
        min_train_bars = n - n_folds * test_bars - gap
    if test_bars < 1 or min_train_bars < 1 or min_train_bars + gap + n_folds * test_bars > n:
        total = max(min_train_bars, 1) + gap + n_folds * max(test_bars, 1)
        raise ValueError(
            f"walk_forward: {n_folds} folds x {test_bars} test bars + {gap} gap + {min_train_bars} "
            "training bars "
            f"do not fit in {n} bars (need test_bars >= 1, min_train_bars >= 1): the data needs at least "
            f"{total} rows (bars) in total"
        )
    folds = []
    first_test = n - n_folds * test_bars
    for k in range(n_folds):
        c = first_test + k * test_bars
        b = c - gap
        a = 0 if mode == "expanding" else b - min_train_bars
        folds.append(Fold(train=(a, b), test=(c, c + test_bars)))
    return folds


def split_market(market: MarketData, ranges: dict[str, Range] | Fold) -> dict[str, MarketData]:
    """Cut a MarketData by :func:`time_split` ranges or a :class:`Fold` (views, no copies); empty ranges are
    left out."""
    items = {"train": ranges.train, "test": ranges.test} if isinstance(ranges, Fold) else ranges
    return {k: market.slice(a, b) for k, (a, b) in items.items() if b > a}
