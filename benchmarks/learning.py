"""Do the defaults learn under costs? ``train.py`` with nothing but ``--data`` (and ``--algo``) changed.

Four targets, each trained with the CLI defaults (default timesteps, seed 0) and evaluated with
``python train.py evaluate RUN_DIR`` on the held-out test period (the last 15 % of the bars), deterministic
policy, after all costs (fees, spread, impact, funding):

* ``planted phi=0.2`` (``synthetic:planted:n_bars=30000,seed=1,phi=0.2``, AR(1) returns with a real edge):
  agent test Sharpe >= 0.5x the oracle's, and above buy-and-hold.
* ``planted phi=0.05`` (an edge that does not survive the costs): test return >= -5 %, turnover <= 50x equity
  per year.
* ``btcusdt-1h`` (the real default market, PPO only): test return >= -5 %, turnover <= 50x equity per year,
  no liquidation; its Sharpe is shown next to buy-and-hold's and the trend baseline's.

Each run goes through :mod:`benchmarks.learning_experiments` (its results file doubles as a cache: a target
already run with the same defaults is not trained again unless ``--fresh``). The table shows the agent, the
oracle (planted markets), buy-and-hold, trend and flat: test Sharpe, return and turnover per year, and
whether each target is met. No hyperparameter of its own: what it measures is the defaults.

    python benchmarks/learning.py                  # PPO and SAC, all targets (~10 min on 2 cores)
    python benchmarks/learning.py --algos ppo --targets p20,p05
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning_experiments import P05, P20, REAL, ROOT, run_one  # noqa: E402

TARGETS = {"p20": ("planted phi=0.2", P20), "p05": ("planted phi=0.05", P05), "real": ("btcusdt-1h", REAL)}
#: Which targets each algorithm is held to (the issue: SAC on the planted targets).
ALGO_TARGETS = {"ppo": ("p20", "p05", "real"), "sac": ("p20", "p05")}
COLS = ("agent", "oracle", "buy_and_hold", "trend", "flat")


def verdict(target: str, t: dict) -> list[tuple[str, bool]]:
    a = t["agent"]
    if target == "p20":
        o = t["oracle"]["sharpe"]
        return [
            (f"Sharpe >= 0.5x oracle ({a['sharpe']:.2f} vs {0.5 * o:.2f})", a["sharpe"] >= 0.5 * o),
            (
                f"Sharpe > buy-and-hold ({t['buy_and_hold']['sharpe']:.2f})",
                a["sharpe"] > t["buy_and_hold"]["sharpe"],
            ),
        ]
    out = [
        (f"return >= -5% ({a['total_return']:+.1%})", a["total_return"] >= -0.05),
        (f"turnover/yr <= 50 ({a['turnover_per_year']:.1f})", a["turnover_per_year"] <= 50),
    ]
    if target == "real":
        out.append((f"no liquidation ({a['liquidations']})", a["liquidations"] == 0))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", default="ppo,sac")
    p.add_argument("--targets", default="p20,p05,real")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one torch thread each)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "learning-defaults"))
    p.add_argument("--fresh", action="store_true", help="retrain even where a run folder exists")
    args = p.parse_args()
    runs = Path(args.runs)
    wanted = [t.strip() for t in args.targets.split(",")]
    jobs = [
        (algo, tgt)
        for algo in (a.strip() for a in args.algos.split(","))
        for tgt in ALGO_TARGETS[algo]
        if tgt in wanted
    ]
    if args.fresh and runs.exists():
        shutil.rmtree(runs)
    runs.mkdir(parents=True, exist_ok=True)

    def job(j: tuple[str, str]) -> dict:
        algo, tgt = j
        opts = [] if algo == "ppo" else ["--algo", algo]
        return run_one(f"{algo}@{tgt}", TARGETS[tgt][1], opts, runs, "auto", splits=("test",))

    with ThreadPoolExecutor(max_workers=args.jobs) as ex:
        results = list(ex.map(job, jobs))
    (runs / "results.json").write_text(json.dumps(results, indent=1))
    hdr = f"{'':24}" + "".join(f"{c.replace('_', '-'):>26}" for c in COLS)
    print("\ntest period, deterministic policy, after all costs: Sharpe / return / turnover per year")
    print(hdr)
    all_met = True
    for (algo, tgt), r in zip(jobs, results, strict=True):
        if "error" in r:
            print(f"{algo} {TARGETS[tgt][0]}: ERROR {r['error'][-300:]}")
            all_met = False
            continue
        t = r["test"]
        cells = []
        for c in COLS:
            m = t.get(c)
            cells.append(
                f"{m['sharpe']:6.2f} {m['total_return']:+8.1%} {m['turnover_per_year']:7.1f}" if m else "-"
            )
        print(
            f"{algo + ' ' + TARGETS[tgt][0]:24}"
            + "".join(f"{c:>26}" for c in cells)
            + f"  ({r['train_s']:.0f} s)"
        )
        for what, ok in verdict(tgt, t):
            all_met &= ok
            print(f"{'':26}{'met    ' if ok else 'NOT met'} {what}")
    print(f"\nall targets met: {'yes' if all_met else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
