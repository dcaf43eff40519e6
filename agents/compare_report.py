"""Tables and plots of a compare: ``results.csv``, ``summary.md``, the printed table and the metric plot.

The columns follow the task (``TaskSpec.summary_columns``: test return and Sharpe for trading, the mean
shortfall for execution); the reference row is the task's reference baseline (buy & hold, TWAP) on the same
test periods. :data:`DEFINITIONS` is written into every ``summary.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agents.reporting import format_cell

__all__ = ["DEFINITIONS", "format_summary", "plot_metric", "results_frame", "summarize"]

#: Leading columns of results.csv, in order; metric columns follow as they appear.
LEAD_COLUMNS = (
    "run",
    "clip",
    "policy_clip",
    "value_clip",
    "seed",
    "fold",
    "train_start",
    "train_stop",
    "val_start",
    "val_stop",
    "test_start",
    "test_stop",
    "status",
    "error",
    "test_total_return",
    "test_sharpe",
    "test_sortino",
    "test_max_drawdown",
    "test_calmar",
    "test_turnover",
    "test_fees",
    "test_funding",
    "test_liquidations",
    "test_n_bars",
)
TAIL_COLUMNS = (
    "diverged",
    "diverged_reason",
    "collapsed",
    "timesteps",
    "train_time_s",
    "wall_time_s",
    "run_dir",
)

#: What the columns of every compare table mean (a constant, not a docstring: ``python -OO`` strips those).
DEFINITIONS = """\
- **test metrics** (e.g. return / Sharpe for trading, mean shortfall in bp for execution): the agent's
  metrics on its fold's held-out test period (the ``evaluate(run_dir, split="test")`` report), mean ± sample
  std over all seeds and folds of runs whose evaluation finished (status ``ok``).
- **diverged**: training hit non-finite losses, gradients or parameters (``TrainResult.diverged``), or the
  policy collapsed: its position was the same at every bar of the test period (max - min <= 1e-9 base
  units: it ignores what it observes), or its Gaussian action std (SB3's last ``train/std``, PPO/A2C)
  fell below 1e-3 (it stopped exploring). Share over runs that finished training.
- **clipped**: share of gradient updates whose norm exceeded the clipper's threshold
  (``TrainResult.clip_fraction``), per part (policy / value), mean over runs.
- **wall**: seconds per run, train + evaluate, mean over runs (imports are done before the clock starts;
  clippers are interleaved so each meets the same machine load)."""

#: The trading task's columns: the defaults of the functions below (metric, label, digits).
TRADING_COLUMNS = (("total_return", "test return", 4), ("sharpe", "test Sharpe", 2))
Columns = Sequence[tuple[str, str, int]]

_REFERENCE_LABELS = {"buy_and_hold": "(buy & hold)"}


def results_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per run, columns in a stable order (results.csv)."""
    df = pd.DataFrame(list(rows))
    lead = [c for c in LEAD_COLUMNS if c in df.columns]
    tail = [c for c in TAIL_COLUMNS if c in df.columns]
    middle = [c for c in df.columns if c not in lead and c not in tail and c != "config"]
    return df[lead + sorted(middle, key=lambda c: (not c.startswith("test_"), c)) + tail]


def _mean_std(x: pd.Series) -> tuple[float, float]:
    x = pd.to_numeric(x, errors="coerce").dropna()
    x = x[np.isfinite(x)]
    if x.empty:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def summarize(
    df: pd.DataFrame,
    order: Sequence[str] | None = None,
    *,
    columns: Columns = TRADING_COLUMNS,
    reference: str | None = "buy_and_hold",
) -> pd.DataFrame:
    """Per clipper: counts, mean/std of each test metric of ``columns``, diverged share, clip shares, wall
    time; then a reference row for the ``reference`` baseline on the same folds."""
    order = list(order) if order is not None else list(dict.fromkeys(df["clip"]))
    clip_cols = sorted(c for c in df.columns if c.startswith("clip_frac_"))
    out = []
    for label in order:
        g = df[df["clip"] == label]
        ok = g[g["status"] == "ok"]
        trained = g[g["diverged"].notna()] if "diverged" in g else g.iloc[:0]
        rec: dict[str, Any] = {
            "clip": label,
            "runs": len(g),
            "ok": len(ok),
            "failed": int((g["status"] != "ok").sum()),
        }
        for key, _, _ in columns:
            col = f"test_{key}"
            rec[f"{key}_mean"], rec[f"{key}_std"] = _mean_std(ok[col]) if col in ok else (math.nan, math.nan)
        rec["diverged_share"] = float(trained["diverged"].astype(bool).mean()) if len(trained) else math.nan
        for c in clip_cols:
            rec[c] = _mean_std(g[c])[0]
        rec["wall_time_s"] = _mean_std(g["wall_time_s"])[0] if "wall_time_s" in g else math.nan
        out.append(rec)
    # The reference baseline on the same test periods: what "doing nothing clever" got, for scale.
    ref_cols = [f"baseline_{reference}_{key}" for key, _, _ in columns] if reference else []
    present = [c for c in ref_cols if c in df.columns]
    if present:
        per_fold = df.dropna(subset=present).drop_duplicates("fold")
        if len(per_fold):
            rec = {"clip": _REFERENCE_LABELS.get(reference, f"({reference})"), "runs": len(per_fold)}
            rec.update(ok=len(per_fold), failed=0)
            for (key, _, _), col in zip(columns, ref_cols, strict=True):
                series = per_fold[col] if col in per_fold else pd.Series(dtype=float)
                rec[f"{key}_mean"], rec[f"{key}_std"] = _mean_std(series)
            out.append(rec)
    return pd.DataFrame(out)


def _pm(m: float, s: float, digits: int) -> str:
    if not math.isfinite(m):
        return "n/a"
    mean = format_cell(m, f"{{:+.{digits}f}}")
    return f"{mean} ± {format_cell(s, f'{{:.{digits}f}}')}" if math.isfinite(s) else mean


def _num(x: Any, fmt: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format_cell(x, f"{{:{fmt}}}")


def format_summary(summary: pd.DataFrame, columns: Columns = TRADING_COLUMNS) -> str:
    """The per-clipper summary as a Markdown table (also what the CLI prints)."""
    parts = sorted(c[len("clip_frac_") :] for c in summary.columns if c.startswith("clip_frac_"))
    head = ["clipper", "ok/runs", *(f"{label} (mean ± std)" for _, label, _ in columns), "diverged"]
    head += [f"clipped ({p})" for p in parts] + ["wall s/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in summary.to_dict("records"):
        cells = [f"`{r['clip']}`" if not r["clip"].startswith("(") else r["clip"], f"{r['ok']}/{r['runs']}"]
        cells += [_pm(r.get(f"{k}_mean", math.nan), r.get(f"{k}_std", math.nan), d) for k, _, d in columns]
        cells.append(_num(r.get("diverged_share"), ".0%"))
        cells += [_num(r.get(f"clip_frac_{p}"), ".1%") for p in parts]
        cells.append(_num(r.get("wall_time_s"), ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_metric(
    df: pd.DataFrame,
    path: str | Path,
    *,
    order: Sequence[str] | None = None,
    title: str = "",
    metric: str = "sharpe",
    label: str = "test Sharpe (annualized)",
    reference: str | None = "buy_and_hold",
) -> Path:
    """Box plot plus jittered points of a test metric (default the Sharpe) of every finished run, one box per
    clipper, with the reference baseline's mean as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(order) if order is not None else list(dict.fromkeys(df["clip"]))
    ok = df[df["status"] == "ok"] if "status" in df else df
    data = []
    for name in order:
        x = (
            pd.to_numeric(ok.loc[ok["clip"] == name, f"test_{metric}"], errors="coerce")
            if len(ok) and f"test_{metric}" in ok
            else pd.Series()
        )
        data.append(x[np.isfinite(x)].to_numpy(dtype=float))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(order) + 2), 4.2))
    ax.boxplot([d if len(d) else [np.nan] for d in data], showfliers=False)
    ax.set_xticks(range(1, len(order) + 1), order)
    rng = np.random.default_rng(0)  # fixed jitter: the same results give the same picture
    for i, d in enumerate(data, start=1):
        if len(d):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=14, alpha=0.7, color="tab:blue", zorder=3)
    ref = f"baseline_{reference}_{metric}"
    if reference and ref in df.columns and df[ref].notna().any():
        ax.axhline(
            float(df.drop_duplicates("fold")[ref].mean()),
            color="gray",
            ls="--",
            lw=1,
            label=f"{reference.replace('_', ' ')} (mean over folds)",
        )
        ax.legend(loc="best", fontsize=8)
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_ylabel(label)
    ax.set_title(title or f"{label} per clipper (each point: one seed x fold)", fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
