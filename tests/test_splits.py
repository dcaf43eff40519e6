"""envs.splits: time-ordered, non-overlapping train/val/test splits and walk-forward folds."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.market import load_embedded
from envs.splits import Fold, split_market, time_split, walk_forward


def test_fraction_split_example():
    assert time_split(1000) == {"train": (0, 700), "val": (700, 850), "test": (850, 1000)}
    assert time_split(1000, val=0.0, test=0.2) == {"train": (0, 800), "val": (800, 800), "test": (800, 1000)}
    assert time_split(100, val=10, test=20, gap=5) == {"train": (0, 60), "val": (65, 75), "test": (80, 100)}


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(3, 100_000),
    val=st.floats(0, 0.45),
    test=st.floats(0.01, 0.45),
    gap=st.integers(0, 50),
)
def test_time_split_is_ordered_and_disjoint(n, val, test, gap):
    try:
        s = time_split(n, val=val, test=test, gap=gap)
    except ValueError:
        return  # too small for these sizes: refused with a message, never a bad split
    (a0, a1), (b0, b1), (c0, c1) = s["train"], s["val"], s["test"]
    assert a0 == 0 and c1 == n and a1 >= 1 and c1 > c0
    assert a1 <= b0 <= b1 <= c0  # train before val before test, no overlap
    assert c0 - b1 >= gap * (b1 > b0) and (b0 - a1 >= gap if b1 > b0 else c0 - a1 >= gap)


def test_date_split_on_market():
    m = load_embedded("btcusdt-perp-1h-2025")
    s = time_split(m, val="2025-06-01", test="2025-06-10")
    assert m.index[s["val"][0]] == pd.Timestamp("2025-06-01", tz="UTC")
    assert m.index[s["test"][0]] == pd.Timestamp("2025-06-10", tz="UTC")
    assert s["train"][1] == s["val"][0] and s["val"][1] == s["test"][0] and s["test"][1] == len(m)
    parts = split_market(m, s)
    assert parts["train"].index[-1] < parts["val"].index[0] < parts["test"].index[0]
    with pytest.raises(ValueError, match="needs timestamps"):
        time_split(999, val="2025-06-01", test="2025-06-10")
    with pytest.raises(ValueError, match="validation period comes first"):
        time_split(m, val="2025-06-10", test="2025-06-01")


def test_split_errors():
    with pytest.raises(ValueError, match="train and test need at least one bar"):
        time_split(10, val=0.5, test=0.5)
    # 5 val + 5 test + 2 gaps of 2 + 1 training bar = 15 rows
    with pytest.raises(ValueError, match="needs at least 15 rows \\(bars\\) in total"):
        time_split(14, val=5, test=5, gap=2)
    assert time_split(15, val=5, test=5, gap=2)["train"] == (0, 1)

    with pytest.raises(ValueError, match="fraction must be in \\[0, 1\\)"):
        time_split(10, val=1.5)
    with pytest.raises(ValueError, match="both as dates"):
        time_split(load_embedded("btcusdt-perp-1h-2025"), val="2025-06-01", test=0.1)


def test_walk_forward_examples():
    exp = walk_forward(1000, 4)
    assert exp == [
        Fold((0, 200), (200, 400)),
        Fold((0, 400), (400, 600)),
        Fold((0, 600), (600, 800)),
        Fold((0, 800), (800, 1000)),
    ]
    roll = walk_forward(1000, 3, test_bars=100, mode="rolling", min_train_bars=300, gap=10)
    assert roll == [Fold((390, 690), (700, 800)), Fold((490, 790), (800, 900)), Fold((590, 890), (900, 1000))]
    with pytest.raises(ValueError, match="do not fit in 100 bars.*at least 151 rows \\(bars\\) in total"):
        walk_forward(100, 5, test_bars=30)
    with pytest.raises(ValueError, match="mode must be"):
        walk_forward(100, 2, mode="sliding")
    with pytest.raises(ValueError, match="must be non-empty and end before test"):
        Fold((0, 10), (5, 20))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 50_000),
    k=st.integers(1, 12),
    mode=st.sampled_from(["expanding", "rolling"]),
    gap=st.integers(0, 20),
    test_frac=st.one_of(st.none(), st.floats(0.001, 0.3)),
)
def test_walk_forward_properties(n, k, mode, gap, test_frac):
    test_bars = None if test_frac is None else max(1, int(n * test_frac))
    try:
        folds = walk_forward(n, k, test_bars=test_bars, mode=mode, gap=gap)
    except ValueError:
        return
    assert len(folds) == k and folds[-1].test[1] == n
    train_len = folds[0].train[1] - folds[0].train[0]
    for i, f in enumerate(folds):
        assert f.train[0] < f.train[1] and f.train[1] + gap <= f.test[0] < f.test[1] <= n  # test after train
        if i:
            prev = folds[i - 1]
            assert prev.test[1] <= f.test[0]  # test windows do not overlap, in time order
            assert f.train[1] > prev.train[1]  # the training window moves forward
            if mode == "expanding":
                assert f.train[0] == 0
            else:
                assert f.train[1] - f.train[0] == train_len
