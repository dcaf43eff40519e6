"""Resumable experiment runner: which CLI options make ``python train.py`` learn under costs?

Each experiment is a market spec plus a list of CLI options. The runner trains with
``python train.py --data SPEC --run-dir DIR --no-progress [opts]``, evaluates with
``python train.py evaluate DIR [--model best]`` (test period) and ``--split val`` (validation period: the
only period defaults may be chosen on), reads ``eval.json`` and appends one JSON line per finished experiment
to the results file. Finished experiments (by name) are skipped on a rerun, so an interrupted sweep resumes.
At most ``--jobs`` (default 2) runs at once, each with one torch thread (``--threads 1``, OMP_NUM_THREADS=1).

    python benchmarks/learning_experiments.py --list
    python benchmarks/learning_experiments.py --only screen --jobs 2
    python benchmarks/learning_experiments.py --table            # print the results file as a table

Results file: ``benchmarks/learning_results.jsonl`` (``--results`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def planted(phi: float, seed: int = 1, n_bars: int = 30_000) -> str:
    return f"synthetic:planted:n_bars={n_bars},seed={seed},phi={phi}"


REAL = "btcusdt-1h"
P20, P05 = planted(0.2), planted(0.05)

#: name -> (group, data spec, CLI options). Groups: ``screen`` (100k-step screening on the planted markets,
#: chosen on validation), ``confirm`` (the chosen defaults at default timesteps on all targets).
EXPERIMENTS: dict[str, tuple[str, str, list[str]]] = {}


def _add(group: str, name: str, opts: list[str], markets: dict[str, str]) -> None:
    for tag, spec in markets.items():
        EXPERIMENTS[f"{name}@{tag}"] = (group, spec, opts)


_PLANTED = {"p20": P20, "p05": P05}
_ALL = {"p20": P20, "p05": P05, "real": REAL}
_S = ["--timesteps", "100000"]
_DB, _LS = "execution={deadband: 0.2}", "policy_kwargs={log_std_init: -1.5}"
_FEE2X = "execution={deadband: 0.2, taker_fee: 0.001, half_spread_bps: 1.0}"
# Screening at 100k steps on top of the fast rollout defaults (16 envs, n_steps 256, batch 1024): the
# defaults without any cost lever, then one lever at a time, then combinations.
_add("screen", "fast-base", _S, _PLANTED)
_add("screen", "db0.2", [*_S, "--env", _DB], _PLANTED)
_add("screen", "db0.2+logstd-1.5", [*_S, "--env", _DB, "--hp", _LS], _PLANTED)
_add(
    "screen",
    "db0.2+logstd-1.5+normrew",
    [*_S, "--env", _DB, "--hp", _LS, "--config", "benchmarks/_normrew.yaml"],
    _PLANTED,
)
_NR = ["--config", "benchmarks/_normrew.yaml"]
_add("screen", "db0.2+logstd-1.5+normrew+fee2x", [*_S, "--env", _FEE2X, "--hp", _LS, *_NR], _PLANTED)
_FEE3X = "execution={deadband: 0.3, taker_fee: 0.0015, half_spread_bps: 1.5}"
_add("screen", "db0.3+logstd-1.5+normrew+fee3x", [*_S, "--env", _FEE3X, "--hp", _LS, *_NR], _PLANTED)
_add("screen", "sac-base", ["--algo", "sac", "--timesteps", "50000"], _PLANTED)
_add(
    "screen",
    "sac-db0.2-ent1e-3",
    ["--algo", "sac", "--timesteps", "50000", "--env", _DB, "--hp", "ent_coef=0.001"],
    _PLANTED,
)
_add("screen", "discrete5", [*_S, "--env", "action=discrete,n_levels=5"], _PLANTED)
_add("screen", "db0.2+logstd-1.5+g0.9", [*_S, "--env", _DB, "--hp", _LS + ",gamma=0.9"], _PLANTED)
_add("screen", "logstd-1.5", [*_S, "--hp", _LS], _PLANTED)
_add("screen", "db0.2+logstd-1.5+lev1", [*_S, "--env", _DB + ",leverage=1", "--hp", _LS], _PLANTED)
_add("screen", "db0.2+logstd-1.5+fee2x", [*_S, "--env", _FEE2X, "--hp", _LS], _PLANTED)
# Confirmation: the defaults as they are now (nothing but --data), PPO and SAC, every target.
_add("confirm", "defaults", [], _ALL)
_add("confirm", "sac-defaults", ["--algo", "sac"], _PLANTED)


# Rollout shapes (issue 12: defaults chosen for throughput without losing learning), default timesteps,
# three seeds each: the current 16 envs x 256 steps, 32 x 128, 64 x 64 (same 4,096-step rollout and
# minibatches), and 64 x 64 with half the epochs.
_ROLLOUTS = {
    "r16x256": [],
    "r32x128": ["--n-envs", "32", "--hp", "n_steps=128"],
    "r64x64": ["--n-envs", "64", "--hp", "n_steps=64"],
    "r64x64-ep5": ["--n-envs", "64", "--hp", "n_steps=64,n_epochs=5"],
}
for _seed in range(5):
    for _name, _opts in _ROLLOUTS.items():
        _add("rollout", f"{_name}-s{_seed}", [*_opts, "--seed", str(_seed)], _ALL)


#: Experiments trained under other costs (the env's ``execution`` in training), evaluated under these.
EVAL_EXECUTION = {
    "db0.2+logstd-1.5+fee2x": {"deadband": 0.2},
    "db0.2+logstd-1.5+normrew+fee2x": {"deadband": 0.2},
    "db0.3+logstd-1.5+normrew+fee3x": {"deadband": 0.3},
}


def _summary(ev: dict) -> dict:
    a, b = ev["agent"], ev["baselines"]
    keys = ("total_return", "sharpe", "turnover_per_year", "liquidations", "fees")
    out = {"agent": {k: a.get(k) for k in keys}}
    for name, m in b.items():
        out[name] = {k: m.get(k) for k in keys}
    if "agent_train" in ev:
        out["agent_train"] = {k: ev["agent_train"].get(k) for k in keys}
    out["warnings"] = ev.get("warnings", [])
    return out


def run_one(
    name: str, spec: str, opts: list[str], runs: Path, model: str, splits: tuple[str, ...] = ("val", "test")
) -> dict:
    run_dir = runs / name.replace("@", "_").replace("/", "_")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    cmd = [
        sys.executable,
        "train.py",
        "train",
        "--data",
        spec,
        "--run-dir",
        str(run_dir),
        "--no-progress",
        "--threads",
        "1",
        *opts,
    ]
    if not (run_dir / "model.zip").is_file():
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            return {"name": name, "error": (r.stderr or r.stdout)[-800:], "cmd": cmd}
        if name.split("@")[0] in EVAL_EXECUTION:  # trained under other costs: evaluate under the real ones
            import yaml

            cfg_path = run_dir / "config.yaml"
            cfg = yaml.safe_load(cfg_path.read_text())
            cfg["env"]["execution"] = EVAL_EXECUTION[name.split("@")[0]]
            cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    train_s = time.perf_counter() - t0
    if train_s < 1 and (run_dir / "train_result.json").is_file():  # trained by an earlier invocation
        train_s = float(json.loads((run_dir / "train_result.json").read_text()).get("wall_time_s", 0.0))
    res: dict = {"name": name, "data": spec, "opts": opts, "train_s": round(train_s, 1)}
    for split in splits:
        ecmd = [sys.executable, "train.py", "evaluate", str(run_dir), "--split", split, "--model", model]
        r = subprocess.run(ecmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            return {"name": name, "error": (r.stderr or r.stdout)[-800:], "cmd": ecmd}
        out = "eval.json" if (split, model) == ("test", "auto") else f"eval-{split}-{model}.json"
        res[split] = _summary(json.loads((run_dir / out).read_text()))
    res["model"] = model
    return res


def fmt_row(r: dict) -> str:
    if "error" in r:
        return f"{r['name']:<38} ERROR {r['error'][-120:]!r}"
    t, v = r["test"], r.get("val", {"agent": {"sharpe": float("nan")}})
    a = t["agent"]
    o = t.get("oracle", {}).get("sharpe")
    tr = t.get("agent_train", {}).get("sharpe")
    return (
        f"{r['name']:<38} val S {v['agent']['sharpe']:6.2f} | test S {a['sharpe']:6.2f} "
        f"ret {a['total_return']:+8.2%} to/yr {a['turnover_per_year']:8.1f} liq {a['liquidations']} | "
        f"train S {tr if tr is None else round(tr, 2)} | oracle S {o if o is None else round(o, 2)} "
        f"bh S {t['buy_and_hold']['sharpe']:.2f} trend S {t['trend']['sharpe']:.2f} | {r['train_s']:.0f}s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="a group (screen, confirm) or comma-separated names")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "learning_results.jsonl"))
    p.add_argument("--runs", default=str(ROOT / "runs" / "learning"))
    p.add_argument("--model", default="auto", choices=("auto", "final", "best"))
    p.add_argument("--list", action="store_true")
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    results = Path(args.results)
    done = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["name"]] = r
    if args.table:
        for r in done.values():
            print(fmt_row(r))
        return
    names = list(EXPERIMENTS)
    if args.only:
        sel = set(args.only.split(","))
        names = [n for n in names if EXPERIMENTS[n][0] in sel or n in sel]
    if args.list:
        for n in names:
            print(n, "done" if n in done and "error" not in done[n] else "", EXPERIMENTS[n])
        return
    todo = [n for n in names if n not in done or "error" in done[n]]
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)

    def job(n: str) -> None:
        _, spec, opts = EXPERIMENTS[n]
        r = run_one(n, spec, opts, runs, args.model)
        with results.open("a") as f:
            f.write(json.dumps(r) + "\n")
        print(fmt_row(r), flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as ex:
        list(ex.map(job, todo))


if __name__ == "__main__":
    main()
