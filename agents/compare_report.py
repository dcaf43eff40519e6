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

__all__ = [
    "DEFINITIONS",
    "PAIRED_DEFINITIONS",
    "format_dispersion",
    "format_paired",
    "format_summary",
    "paired_report",
    "plot_iqm",
    "plot_metric",
    "primary_metric",
    "results_frame",
    "summarize",
]

#: Leading columns of results.csv, in order; metric columns follow as they appear.
LEAD_COLUMNS = (
    "run",
    "arm",
    "lr",
    "optimizer",
    "reward_scale",
    "market",
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
    "delta_vs_reference",
    "diverged",
    "diverged_reason",
    "collapsed",
    "flat",
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
  policy collapsed: its position was the same non-zero position at every bar of the test period (max - min
  <= 1e-9 base units: stuck on one bet, it ignores what it observes), or its Gaussian action std (SB3's
  last ``train/std``, PPO/A2C) fell below 1e-3 (it stopped exploring). Share over runs that finished
  training. A policy that never held a position (column ``flat`` in results.csv) stayed out of the market:
  not a divergence.
- **clipped**: share of gradient updates whose norm exceeded the clipper's threshold
  (``TrainResult.clip_fraction``), per part (policy / value), mean over runs.
- **wall**: seconds per run, train + evaluate, mean over runs (imports are done before the clock starts;
  clippers are interleaved so each meets the same machine load)."""

#: The trading task's columns: the defaults of the functions below (metric, label, digits).
TRADING_COLUMNS = (("total_return", "test return", 4), ("sharpe", "test Sharpe", 2))
Columns = Sequence[tuple[str, str, int]]

_REFERENCE_LABELS = {"buy_and_hold": "(buy & hold)"}
#: Baselines never shown as rows (staying flat scores 0 on every metric).
_NO_ROW = ("flat",)


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
    time; then a row for the ``reference`` baseline on the same folds, then one for every other baseline the
    runs recorded (``baseline_<name>_<metric>`` columns, e.g. ``trend`` and, on planted markets, ``oracle``),
    so an agent's walk-forward mean ± std stands next to what simple rules got on the same test periods."""
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
    # The baselines on the same test periods: what "doing nothing clever" got, for scale.
    names = [reference] if reference else []
    names += [
        c[len("baseline_") : -len(f"_{columns[0][0]}")]
        for c in df.columns
        if c.startswith("baseline_") and c.endswith(f"_{columns[0][0]}")
    ]
    for name in dict.fromkeys(n for n in names if n not in _NO_ROW):
        ref_cols = [f"baseline_{name}_{key}" for key, _, _ in columns]
        present = [c for c in ref_cols if c in df.columns]
        if not present:
            continue
        # One value per test period: the baseline does not depend on seed or clipper.
        per_fold = df.dropna(subset=present).drop_duplicates("fold")
        if len(per_fold):
            rec = {"clip": _REFERENCE_LABELS.get(name, f"({name})"), "runs": len(per_fold)}
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


def _panel_axes(n_panels: int, width: float) -> tuple[Any, list[Any]]:
    """A figure with ``n_panels`` axes side by side (up to 3 a row), each ``width`` inches wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 4.2 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def plot_metric(
    df: pd.DataFrame,
    path: str | Path,
    *,
    order: Sequence[str] | None = None,
    title: str = "",
    metric: str = "sharpe",
    label: str = "test Sharpe (annualized)",
    reference: str | None = "buy_and_hold",
    panels: Sequence[str] | None = None,
) -> Path:
    """Box plot plus jittered points of a test metric (default the Sharpe) of every finished run, one box per
    clipper, with the reference baseline's mean as a dashed line.

    ``panels``: arm labels (the ``arm`` column); one panel per arm, each with its own y scale (arms may
    differ in market). ``None``: one panel of every run.
    """
    order = list(order) if order is not None else list(dict.fromkeys(df["clip"]))
    width = max(5.0, 1.3 * len(order) + 2)
    groups = [(arm, df[df["arm"] == arm]) for arm in panels] if panels else [(None, df)]
    fig, axes = _panel_axes(len(groups), width)
    for ax, (arm, g) in zip(axes, groups, strict=True):
        _box_panel(ax, g, order, metric, reference)
        ax.set_ylabel(label)
        if arm is not None:
            ax.set_title(f"arm {arm}", fontsize=9)
    if panels:
        fig.suptitle(title or f"{label} per clipper and arm (each point: one seed x fold)", fontsize=10)
    else:
        axes[0].set_title(title or f"{label} per clipper (each point: one seed x fold)", fontsize=10)
    return _save_plot(fig, axes, path)


def _box_panel(ax: Any, df: pd.DataFrame, order: list[str], metric: str, reference: str | None) -> None:
    ok = df[df["status"] == "ok"] if "status" in df else df
    data = []
    for name in order:
        x = (
            pd.to_numeric(ok.loc[ok["clip"] == name, f"test_{metric}"], errors="coerce")
            if len(ok) and f"test_{metric}" in ok
            else pd.Series(dtype=float)
        )
        data.append(x[np.isfinite(x)].to_numpy(dtype=float))
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


# ----------------------------------------------------------------------------------------------------
# Paired statistics against a reference clipper

#: What the paired table and the dispersion table mean (a constant: ``python -OO`` strips docstrings).
PAIRED_DEFINITIONS = """\
- **IQM [95 % CI]**: interquartile mean of the clipper's test metric over its finished runs (the mean of the
  middle half: robust to one lucky or broken seed), with a stratified bootstrap percentile CI (runs are
  resampled within each walk-forward fold, and within each market when there are several; 2000
  replicates, seed 0). Agarwal et al., "Deep RL at the Edge of the Statistical Precipice" (NeurIPS 2021).
- **paired cells**: runs of this clipper and of the reference with the same seed on the same fold (and
  market): they saw the same data and the same initial randomness, so their difference removes the luck
  they share. Only cells where both runs finished with a finite metric count.
- **Δ vs ref [95 % CI]**: mean of the per-cell differences (clipper - reference) in the metric's units, with
  a stratified bootstrap CI over cells. `delta_vs_reference` in results.csv is that per-run difference.
- **P(improve) [95 % CI]**: share of cells where the clipper did better than the reference (ties count one
  half; "better" is lower for lower-is-better metrics such as a shortfall), averaged over strata.
- **W/L/T**: cells won / lost / tied.
- **p (Holm)**: two-sided Wilcoxon signed-rank p-value of the per-cell differences, Holm-corrected across
  the clippers compared with the reference (family-wise error control); the raw p-value is in brackets.
  With few cells no p-value can be small (5 cells: the smallest two-sided Wilcoxon p is 0.0625).
- **dispersion**: across-seed spread of the final metric per clipper: median, interquartile range (IQR)
  and min-max of the finished runs.
- **stability columns** (results.csv, from each run's progress.csv): `grad_spikes_<part>` counts the logged
  `clip/<part>/grad_norm` values above median + 5 MAD (raw median absolute deviation; each logged value
  is a mean over one logging interval, not one update), `grad_kurtosis_<part>` is their excess kurtosis
  (0 for a normal distribution, larger for heavier tails)."""

#: Bootstrap replicates and seed of every CI in the paired table.
PAIRED_N_BOOT = 2000
PAIRED_SEED = 0


def primary_metric(df: pd.DataFrame, preferred: str, columns: Columns) -> tuple[str, str]:
    """The metric the paired statistics use: ``preferred`` (the task's default metric) if any finished run
    has a finite value of it, else the first of ``columns`` that has; ``(metric, why)`` (``why`` is empty
    unless it fell back)."""
    ok = df[df["status"] == "ok"] if "status" in df else df

    def has(metric: str) -> bool:
        col = f"test_{metric}"
        return col in ok and bool(np.isfinite(pd.to_numeric(ok[col], errors="coerce")).any())

    if has(preferred):
        return preferred, ""
    for key, _, _ in columns:
        if has(key):
            return key, f"test {preferred} has no finite value in any run (e.g. periods too short for it)"
    return preferred, ""


def _strata_keys(df: pd.DataFrame) -> list[str]:
    keys = ["fold"]
    if "market" in df and df["market"].nunique(dropna=True) > 1:
        keys.insert(0, "market")
    return keys


def _finite_runs(df: pd.DataFrame, clip: str, metric: str) -> pd.DataFrame:
    col = f"test_{metric}"
    g = df[(df["clip"] == clip) & (df["status"] == "ok")] if col in df else df.iloc[:0]
    values = pd.to_numeric(g[col], errors="coerce") if len(g) else pd.Series(dtype=float)
    return g.assign(_value=values)[np.isfinite(values)] if len(g) else g.assign(_value=values)


def paired_report(
    df: pd.DataFrame,
    order: Sequence[str],
    *,
    metric: str,
    reference: str,
    lower_is_better: bool = False,
    n_boot: int = PAIRED_N_BOOT,
    seed: int = PAIRED_SEED,
) -> tuple[pd.DataFrame, pd.Series]:
    """Per clipper: IQM with CI, dispersion and (but for the reference) the paired comparison with the
    reference on ``test_<metric>``; and the per-run differences to the reference.

    Cells are (seed, fold) (plus market when the results have several): see :data:`PAIRED_DEFINITIONS`.
    The numbers come from :mod:`agents.stats` (``iqm_ci``, ``paired_comparison``,
    ``paired_probability_of_improvement_ci``, ``holm``, ``dispersion``).

    Returns:
        ``(table, deltas)``: one row per clipper of ``order`` (columns ``clip, n, iqm, iqm_low, iqm_high,
        median, iqr, min, max, cells, delta, delta_low, delta_high, poi, poi_low, poi_high, wins, losses,
        ties, p_value, p_holm``; NaN where not defined), and ``delta_vs_reference`` per row index of ``df``
        (NaN for the reference's own runs and unpaired runs).
    """
    from agents import stats

    strata_keys = _strata_keys(df)
    cell_keys = [*strata_keys, "seed"]
    sign = -1.0 if lower_is_better else 1.0
    deltas = pd.Series(np.nan, index=df.index, name="delta_vs_reference")
    ref = _finite_runs(df, reference, metric)
    ref_by_cell = {tuple(r[k] for k in cell_keys): r["_value"] for _, r in ref.iterrows()}
    rows: list[dict[str, Any]] = []
    for clip in order:
        g = _finite_runs(df, clip, metric)
        rec: dict[str, Any] = {"clip": clip, "reference": clip == reference, "n": len(g)}
        if len(g):
            strata = [tuple(r[k] for k in strata_keys) for _, r in g.iterrows()]
            ci = stats.iqm_ci(g["_value"].to_numpy(float), strata, n_boot=n_boot, seed=seed)
            disp = stats.dispersion(g["_value"].to_numpy(float))
            rec.update(iqm=ci.estimate, iqm_low=ci.low, iqm_high=ci.high, median=disp.median, iqr=disp.iqr,
                       min=disp.min, max=disp.max)
        if clip != reference:
            cells, a, b, idx = [], [], [], []
            for i, r in g.iterrows():
                key = tuple(r[k] for k in cell_keys)
                if key in ref_by_cell:
                    cells.append(key[: len(strata_keys)])
                    a.append(r["_value"])
                    b.append(ref_by_cell[key])
                    idx.append(i)
            rec["cells"] = len(a)
            if a:
                a_arr, b_arr = np.asarray(a), np.asarray(b)
                deltas.loc[idx] = a_arr - b_arr
                # Oriented so that "higher is better": wins, P(improve) and the test read the same way for
                # every metric; the difference is reported back in the metric's own units.
                (cmp,) = stats.paired_comparison({clip: sign * a_arr}, sign * b_arr, cells, n_boot=n_boot,
                                                 seed=seed)
                poi = stats.paired_probability_of_improvement_ci(sign * a_arr, sign * b_arr, cells,
                                                                 n_boot=n_boot, seed=seed)
                lo, hi = sorted((sign * cmp.diff_ci.low, sign * cmp.diff_ci.high))
                rec.update(delta=sign * cmp.mean_diff, delta_low=lo, delta_high=hi, poi=poi.estimate,
                           poi_low=poi.low, poi_high=poi.high, wins=cmp.wins, losses=cmp.losses,
                           ties=cmp.ties, p_value=cmp.p_value)
        rows.append(rec)
    table = pd.DataFrame(rows)
    for col in ("iqm", "iqm_low", "iqm_high", "median", "iqr", "min", "max", "cells", "delta", "delta_low",
                "delta_high", "poi", "poi_low", "poi_high", "wins", "losses", "ties", "p_value"):
        if col not in table:
            table[col] = np.nan
    tested = table["p_value"].notna() & ~table["reference"]
    table["p_holm"] = np.nan
    if tested.any():
        table.loc[tested, "p_holm"] = stats.holm(table.loc[tested, "p_value"].to_numpy(float))
    return table, deltas


def _ci(est: Any, low: Any, high: Any, fmt: str) -> str:
    if not (isinstance(est, (int, float)) and math.isfinite(est)):
        return "—"
    return f"{format_cell(est, f'{{:{fmt}}}')} [{format_cell(low, f'{{:{fmt}}}')}, " \
           f"{format_cell(high, f'{{:{fmt}}}')}]"


def format_paired(table: pd.DataFrame, *, label: str, digits: int = 4) -> str:
    """The paired table as Markdown (also what the CLI prints)."""
    head = ["clipper", "runs", f"{label} IQM [95% CI]", "paired cells", "Δ vs ref [95% CI]",
            "P(improve) [95% CI]", "W/L/T", "p (Holm) [raw]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    num = f"+.{digits}f"
    for r in table.to_dict("records"):
        name = f"`{r['clip']}`" + (" (reference)" if r["reference"] else "")
        if r["reference"]:
            cells = ["—"] * 5
        else:
            n_cells = r.get("cells")
            has = isinstance(n_cells, (int, float)) and math.isfinite(n_cells) and n_cells > 0
            wlt = f"{int(r['wins'])}/{int(r['losses'])}/{int(r['ties'])}" if has else "—"
            p = (f"{format_cell(r['p_holm'], '{:.3g}')} [{format_cell(r['p_value'], '{:.3g}')}]"
                 if has and math.isfinite(r["p_value"]) else "—")
            cells = [str(int(n_cells)) if has else "0", _ci(r["delta"], r["delta_low"], r["delta_high"], num),
                     _ci(r["poi"], r["poi_low"], r["poi_high"], ".2f"), wlt, p]
        iqm = _ci(r["iqm"], r["iqm_low"], r["iqm_high"], num)
        lines.append("| " + " | ".join([name, str(int(r["n"])), iqm, *cells]) + " |")
    return "\n".join(lines)


def format_dispersion(table: pd.DataFrame, *, digits: int = 4) -> str:
    """Across-seed dispersion of the final metric per clipper (median, IQR, min-max) as Markdown."""
    lines = ["| clipper | runs | median | IQR | min | max |", "|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        keys = ("median", "iqr", "min", "max")
        vals = [_num(r.get(k), f"{'' if k == 'iqr' else '+'}.{digits}f") for k in keys]
        lines.append(f"| `{r['clip']}` | {int(r['n'])} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot_iqm(
    table: pd.DataFrame, path: str | Path, *, label: str, panels: Sequence[str] | None = None
) -> Path:
    """Per-clipper IQM of the test metric with its 95 % bootstrap CI as error bars (reference in gray);
    ``panels``: arm labels (the table's ``arm`` column), one panel per arm."""
    groups = [(arm, table[table["arm"] == arm]) for arm in panels] if panels else [(None, table)]
    n_clips = max(len(g) for _, g in groups)
    fig, axes = _panel_axes(len(groups), max(5.0, 1.3 * n_clips + 2))
    for ax, (arm, g) in zip(axes, groups, strict=True):
        _iqm_panel(ax, g)
        ax.set_ylabel(f"{label} (IQM)")
        if arm is not None:
            ax.set_title(f"arm {arm}", fontsize=9)
    what = f"{label}: IQM per clipper with 95% stratified bootstrap CI"
    if panels:
        fig.suptitle(what, fontsize=10)
    else:
        axes[0].set_title(what, fontsize=10)
    return _save_plot(fig, axes, path)


def _iqm_panel(ax: Any, table: pd.DataFrame) -> None:
    for i, r in enumerate(table.to_dict("records")):
        est = r.get("iqm", math.nan)
        if not (isinstance(est, (int, float)) and math.isfinite(est)):
            continue
        err = [[est - r["iqm_low"]], [r["iqm_high"] - est]]
        ax.errorbar([i], [est], yerr=err, fmt="o", capsize=4, color="gray" if r["reference"] else "tab:blue")
    ref = table[table["reference"]]
    if len(ref) and math.isfinite(float(ref["iqm"].iloc[0])):
        ax.axhline(float(ref["iqm"].iloc[0]), color="gray", ls="--", lw=1, label="reference IQM")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(table)), list(table["clip"]))
    ax.set_xlim(-0.5, len(table) - 0.5)


def _save_plot(fig: Any, axes: list[Any], path: str | Path) -> Path:
    """The compare plots' common ending: slanted clipper labels, tight layout, PNG at 110 dpi, closed."""
    import matplotlib.pyplot as plt

    for ax in axes:
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
