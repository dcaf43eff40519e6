"""Clipping study: does gradient clipping (fixed or adaptive) help PPO and SAC on spiky perpetual markets?

Not part of CI. Runs ``agents.compare.run_compare`` (the engine of ``train.py compare``) for every
(algorithm, market): each clipper x seed x walk-forward fold is trained and evaluated on its fold's held-out
test period. Markets: two synthetic spike markets (Merton jump diffusion; GARCH(1,1) with Student-t(3)
shocks), both with funding shocks, and the embedded real BTCUSDT 1h bars. It then writes the table, the plot
and the exact command and machine into ``benchmarks/RESULTS.md`` (its own section; the rest of the file is
kept).

    python benchmarks/clipping_study.py          # the budget RESULTS.md reports (~25 min on 2 cores)
    python benchmarks/clipping_study.py --seeds 2 --ppo-timesteps 512 --sac-timesteps 256 \\
        --out /tmp/s --results /tmp/s/RESULTS.md  # smoke test

Re-running with the same ``--out`` resumes (finished runs are skipped).

Statistics: per cell (algorithm, market, clipper) the test Sharpe / return mean ± std over seeds x folds;
"Δ Sharpe vs none" is the mean of the paired differences (same seed, same fold) against the unclipped run,
with a 95% percentile bootstrap interval over those pairs (10 000 resamples, fixed seed); "wins" counts the
pairs where the clipper's Sharpe is higher.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agents.compare import run_compare
from agents.compare_report import summarize
from agents.config import AlgoConfig, DataConfig, RunConfig

REPO = Path(__file__).resolve().parents[1]

#: The spike markets: 3000 hourly bars each, funding settlements with frequent large shocks.
MARKETS = {
    "jump": "synthetic:jump:n_bars=3000,seed=11,jump_intensity=100,jump_std=0.04,"
    "funding_shock_prob=0.1,funding_shock_ratio=8",
    "garch-t3": "synthetic:garch:n_bars=3000,seed=12,df=3,funding_shock_prob=0.1,funding_shock_ratio=8",
    "btcusdt-1h": "btcusdt-1h",
}
CLIPS = "none,norm:max_norm=0.5,norm:max_norm=0.05,autoclip,zclip,agc"
BEGIN, END = "<!-- clipping_study:begin -->", "<!-- clipping_study:end -->"


def _base_config(algo: str, market: str, timesteps: int) -> dict:
    hp = {"learning_starts": 256} if algo == "sac" else {}  # SAC's default 1000 would leave few updates
    cfg = RunConfig(
        algo=AlgoConfig(algo=algo, timesteps=timesteps, n_envs=1, hyperparams=hp),
        data=DataConfig(data=MARKETS[market]),
    )
    return cfg.to_dict()


def _bootstrap_ci(x: np.ndarray, rng: np.random.Generator, n: int = 10_000) -> tuple[float, float]:
    if len(x) < 2:
        return math.nan, math.nan
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def paired_vs_none(df: pd.DataFrame) -> pd.DataFrame:
    """Per (algo, market, clip): paired Sharpe differences against ``none`` on the same seed and fold."""
    rng = np.random.default_rng(0)
    ok = df[df["status"] == "ok"]
    base = ok[ok["clip"] == "none"].set_index(["algo", "market", "seed", "fold"])["test_sharpe"]
    rows = []
    for (algo, market, clip), g in ok.groupby(["algo", "market", "clip"], sort=False):
        g = g.set_index(["algo", "market", "seed", "fold"])["test_sharpe"]
        common = g.index.intersection(base.index)
        d = (g.loc[common] - base.loc[common]).to_numpy(dtype=float)
        d = d[np.isfinite(d)]
        lo, hi = _bootstrap_ci(d, rng) if clip != "none" else (math.nan, math.nan)
        rows.append(
            {
                "algo": algo,
                "market": market,
                "clip": clip,
                "pairs": len(d),
                "delta_mean": float(d.mean()) if len(d) and clip != "none" else math.nan,
                "delta_lo": lo,
                "delta_hi": hi,
                "wins": int((d > 0).sum()) if clip != "none" else None,
            }
        )
    return pd.DataFrame(rows)


def _fmt(m: float, s: float, digits: int) -> str:
    return "n/a" if not math.isfinite(m) else f"{m:+.{digits}f} ± {s:.{digits}f}"


def build_table(df: pd.DataFrame, clips: list[str]) -> tuple[str, pd.DataFrame]:
    """The Markdown results table (one row per algorithm x market x clipper) and its data."""
    paired = paired_vs_none(df).set_index(["algo", "market", "clip"])
    lines = [
        "| algo | market | clipper | ok/runs | test return | test Sharpe | Δ Sharpe vs none [95% CI] | wins "
        "| diverged | clipped pol / val | wall s/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    recs = []
    for (algo, market), g in df.groupby(["algo", "market"], sort=False):
        summ = summarize(g, order=clips).set_index("clip")
        for clip in clips:
            if clip not in summ.index:
                continue
            r = summ.loc[clip]
            p = paired.loc[(algo, market, clip)] if (algo, market, clip) in paired.index else None
            if clip == "none" or p is None or not math.isfinite(p["delta_mean"]):
                delta, wins = "—", "—"
            else:
                delta = f"{p['delta_mean']:+.2f} [{p['delta_lo']:+.2f}, {p['delta_hi']:+.2f}]"
                wins = f"{int(p['wins'])}/{int(p['pairs'])}"
            cp = r.get("clip_frac_policy", math.nan)
            cv = r.get("clip_frac_value", math.nan)
            clipped = "—" if not math.isfinite(cp) else f"{cp:.0%} / {cv:.0%}"
            lines.append(
                f"| {algo} | {market} | `{clip}` | {int(r['ok'])}/{int(r['runs'])} | "
                f"{_fmt(r['total_return_mean'], r['total_return_std'], 3)} | "
                f"{_fmt(r['sharpe_mean'], r['sharpe_std'], 2)} | {delta} | {wins} | "
                f"{r['diverged_share']:.0%} | {clipped} | {r['wall_time_s']:.1f} |"
            )
            recs.append(
                {
                    "algo": algo,
                    "market": market,
                    "clip": clip,
                    **r.to_dict(),
                    **({} if p is None else p.to_dict()),
                }
            )
        if "(buy & hold)" in summ.index:
            b = summ.loc["(buy & hold)"]
            lines.append(
                f"| {algo} | {market} | *buy & hold* | — | "
                f"{_fmt(b['total_return_mean'], b['total_return_std'], 3)} "
                f"| {_fmt(b['sharpe_mean'], b['sharpe_std'], 2)} | | | | | |"
            )
    return "\n".join(lines), pd.DataFrame(recs)


def findings(recs: pd.DataFrame) -> str:
    """Plain statements read off the numbers (no judgement beyond what the intervals support)."""
    out = []
    for (algo, market), g in recs.groupby(["algo", "market"], sort=False):
        clipped = g[g["clip"] != "none"]
        if clipped.empty or clipped["sharpe_mean"].isna().all():
            continue
        best = g.loc[g["sharpe_mean"].idxmax()]
        sig_up = clipped[clipped["delta_lo"] > 0]["clip"].tolist()
        sig_down = clipped[clipped["delta_hi"] < 0]["clip"].tolist()
        txt = f"- **{algo} / {market}**: highest mean test Sharpe `{best['clip']}` "
        txt += f"({best['sharpe_mean']:+.2f}). "
        if sig_up:
            txt += f"Paired CI above 0 vs none: {', '.join(f'`{c}`' for c in sig_up)}. "
        if sig_down:
            txt += f"Paired CI below 0 vs none: {', '.join(f'`{c}`' for c in sig_down)}. "
        if not sig_up and not sig_down:
            txt += "No clipper's paired difference vs none has a 95% interval excluding 0. "
        div = g[g["diverged_share"] > 0]
        if len(div):
            txt += (
                "Diverged/collapsed: "
                + ", ".join(f"`{c}` {s:.0%}" for c, s in zip(div["clip"], div["diverged_share"], strict=True))
                + "."
            )
        else:
            txt += "No run diverged or collapsed."
        out.append(txt)
    return "\n".join(out)


def plot(df: pd.DataFrame, clips: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(zip(df["algo"], df["market"], strict=True)))
    algos = list(dict.fromkeys(a for a, _ in cells))
    markets = list(dict.fromkeys(m for _, m in cells))
    fig, axes = plt.subplots(
        len(algos), len(markets), figsize=(4.6 * len(markets), 3.6 * len(algos)), squeeze=False, sharex=True
    )
    rng = np.random.default_rng(0)
    for i, algo in enumerate(algos):
        for j, market in enumerate(markets):
            ax = axes[i][j]
            g = df[(df["algo"] == algo) & (df["market"] == market) & (df["status"] == "ok")]
            data = [
                pd.to_numeric(g.loc[g["clip"] == c, "test_sharpe"], errors="coerce").dropna().to_numpy()
                for c in clips
            ]
            ax.boxplot([d if len(d) else [np.nan] for d in data], showfliers=False)
            for k, d in enumerate(data, start=1):
                ax.scatter(
                    k + rng.uniform(-0.15, 0.15, len(d)), d, s=10, alpha=0.7, color="tab:blue", zorder=3
                )
            bh = g.drop_duplicates("fold").get("baseline_buy_and_hold_sharpe")
            if bh is not None and bh.notna().any():
                ax.axhline(float(bh.mean()), color="gray", ls="--", lw=1, label="buy & hold")
                ax.legend(fontsize=7, loc="best")
            ax.axhline(0, color="black", lw=0.5)
            ax.set_title(f"{algo} / {market}", fontsize=9)
            ax.set_xticks(
                range(1, len(clips) + 1),
                [c.replace("norm:max_norm=", "norm ") for c in clips],
                rotation=30,
                ha="right",
                fontsize=7,
            )
            if j == 0:
                ax.set_ylabel("test Sharpe (ann.)")
    fig.suptitle("Test Sharpe per clipper (each point: one seed x fold)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine() -> str:
    import stable_baselines3
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{platform.platform()}, {cpus} CPU(s) usable ({model}), "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"SB3 {stable_baselines3.__version__}; "
        f"load average at the end {load}"
    )


def write_results(path: Path, section: str) -> None:
    """Replace this study's section of RESULTS.md (between the markers), keeping everything else."""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}\n"
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            text = re.sub(
                re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", lambda _: block, text, flags=re.S
            )
        else:
            text = text.rstrip() + "\n\n" + block
    else:
        text = "# Benchmark results\n\n" + block
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", default="ppo,sac")
    p.add_argument("--markets", default=",".join(MARKETS), help=f"subset of {', '.join(MARKETS)}")
    p.add_argument("--clips", default=CLIPS)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--folds", type=int, default=1)
    p.add_argument("--ppo-timesteps", type=int, default=2048)
    p.add_argument("--sac-timesteps", type=int, default=1024)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", default=str(REPO / "runs" / "clipping-study"))
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = p.parse_args(argv)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    markets = [m.strip() for m in args.markets.split(",") if m.strip()]
    unknown = [m for m in markets if m not in MARKETS]
    if unknown:
        p.error(f"--markets: unknown {unknown}; choose from {', '.join(MARKETS)}")
    out = Path(args.out)
    t0 = time.perf_counter()
    frames = []
    clips: list[str] = []
    n_ran = 0
    for algo in algos:
        steps = args.sac_timesteps if algo == "sac" else args.ppo_timesteps
        for market in markets:
            print(f"\n=== {algo} on {market}: {steps} timesteps per run ===", flush=True)
            res = run_compare(
                _base_config(algo, market, steps),
                args.clips,
                args.seeds,
                folds=args.folds,
                out=out / f"{algo}-{market}",
                workers=args.workers,
                command="python benchmarks/clipping_study.py "
                + shlex.join(sys.argv[1:] if argv is None else argv),
            )
            clips = list(res.summary["clip"][~res.summary["clip"].str.startswith("(")])
            frames.append(res.results.assign(algo=algo, market=market))
            n_ran += res.n_ran
    elapsed = time.perf_counter() - t0
    df = pd.concat(frames, ignore_index=True)
    df.to_csv(out / "all_results.csv", index=False)
    table, recs = build_table(df, clips)
    results = Path(args.results)
    png = results.with_name("clipping_study.png")
    plot(df, clips, png)
    cmd = "python benchmarks/clipping_study.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    n_ok = int((df["status"] == "ok").sum())
    run_minutes = float(pd.to_numeric(df["wall_time_s"], errors="coerce").sum()) / 60
    when = f"this invocation ran {n_ran} of them in {elapsed / 60:.1f} min wall" + (
        "" if n_ran == len(df) else " (the others were finished runs it reused)"
    )
    try:
        all_rows = out.resolve().relative_to(REPO)
    except ValueError:
        all_rows = out
    comparisons = sum(1 for _ in df.groupby(["algo", "market"])) * max(len(clips) - 1, 0)
    section = f"""## Clipping study (`benchmarks/clipping_study.py`)

Command: `{cmd.strip()}` — finished {dt.datetime.now().strftime("%Y-%m-%d %H:%M")}; {len(df)} runs
({n_ok} ok), {run_minutes:.1f} min of run time summed over runs; {when}.
Machine: {machine()}.

Setup: every (algorithm, market, clipper, seed, fold) is one `train.py compare` run, trained on its fold's
training window and evaluated (final model, deterministic actions, after trading costs and funding) on the
held-out test period that follows it; {args.folds} walk-forward fold(s), seeds 0..{args.seeds - 1}. The same
clipper is used for the policy and the value update. PPO {args.ppo_timesteps} and SAC {args.sac_timesteps}
environment steps per run (SAC `learning_starts=256`), SB3 defaults otherwise (net [64, 64], 1 env), env
defaults (window 32, 256-bar training episodes, leverage 3). Markets: `jump` = `{MARKETS["jump"]}`;
`garch-t3` = `{MARKETS["garch-t3"]}`; `btcusdt-1h` = the embedded 999 real hourly bars with real funding.

**Budget caveat**: these are tiny training budgets, chosen to fit a shared 2-core machine; the agents are
far from converged (compare with buy & hold), so the table measures how clipping changes *early* training
and stability, not what a tuned agent would reach. Re-run with larger `--ppo-timesteps/--sac-timesteps`
and more `--seeds/--folds` for stronger claims.

{table}

Δ Sharpe vs none: mean paired difference (same seed and fold) with a 95% bootstrap interval; wins: pairs
where the clipper's test Sharpe beat the unclipped run's. Diverged: non-finite training, a constant test
position or a collapsed action std (see `agents/compare_report.py`). Clipped: share of updates whose norm
exceeded the threshold (policy / value). Wall s/run is train + evaluate on a machine shared with other
work (load above 2 on 2 cores at times), so it is not a clipping-overhead measurement
(`benchmarks/clip_overhead.py` measures that). With {comparisons} clipper-vs-none comparisons at 95%, about
{0.05 * comparisons:.1f} intervals are expected to exclude 0 by chance alone; each cell has only
{args.seeds} seeds x {args.folds} fold(s) on one market realization.

What the numbers say (generated from the table):

{findings(recs)}

![test Sharpe per clipper]({png.name})

Per-run rows: `{all_rows}/all_results.csv` (not committed; re-create with the command above).
"""
    write_results(results, section)
    print(f"\nwrote {results} and {png} ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
