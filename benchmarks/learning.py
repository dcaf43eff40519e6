"""Do the agents learn? PPO and SAC on the planted-signal market, against the oracle policy, after costs.

The market is ``envs.synthetic``'s ``planted`` kind: AR(1) log returns ``r_t = phi r_{t-1} + e_t``, so the
best prediction of the next bar's return is ``phi r_t`` and the optimal policy is known
(``envs.synthetic.planted_oracle_positions``). One long series is split in time (train / val / test); each
agent is trained with ``agents.run.train`` (zclip on both updates) on the train period, its best model is
chosen on the validation period, and ``agents.run.evaluate`` runs it deterministically over the test period,
with the env's fees, spread and funding; ``--with-impact`` adds the square-root impact and participation cap.
The oracle is optimal for proportional costs only: under square-root impact, the sign policy at full leverage
is not (as equity compounds, its orders grow against the bars' volume and a smaller position does better), so
the 70 % target is measured without impact; ``--with-impact`` shows how the agents fare when it bites.

The oracle is ``planted_oracle_positions`` with its no-trade threshold (stay flat while the expected edge is
below it, so fees do not eat the edge) chosen on the *validation* period from a grid; it is then run over the
same test period through the same env. Targets: each agent's test Sharpe >= 70 % of the oracle's, and above
flat and buy-and-hold. The script prints what comes out, met or not.

    python benchmarks/learning.py                       # PPO and SAC, ~7 min on 2 CPU cores
    python benchmarks/learning.py --algos ppo --ppo-timesteps 200000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agents.config import RunConfig
from agents.env_factory import load_data, make_period_env, split_ranges
from agents.run import evaluate, train
from envs.baselines import run_episode
from envs.synthetic import PlantedParams, default_funding_params, planted_oracle_positions

#: Execution settings of the default run: the env's fees and spread, without the square-root impact and
#: the participation cap, under which the planted oracle is no longer the optimal policy (module docstring).
NO_IMPACT = {"impact_coef": 0.0, "max_participation": None}

#: No-trade thresholds (expected next-bar log return) tried for the oracle on the train period.
THRESHOLDS = (0.0, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004)


def base_config(args: argparse.Namespace) -> RunConfig:
    spec = f"synthetic:planted:n_bars={args.n_bars},seed={args.market_seed},phi={args.phi}"
    return RunConfig().replace(
        data={"data": spec, "val": args.val, "test": args.test},
        env={
            "window": args.window,
            "episode_bars": 256,
            "execution": None if args.with_impact else NO_IMPACT,
        },
        eval={"eval_freq": 50_000, "metric": "sharpe"},
    )


def agent_config(base: RunConfig, algo: str, args: argparse.Namespace) -> RunConfig:
    # The signal is one bar long: a short discount (gamma 0.5) keeps the advantage estimates from drowning it
    # in the noise of later bars' returns; the position (hence the fee of changing it) is in the observation.
    if algo == "ppo":
        # Discrete short/flat/long: the argmax policy holds a position until the signal flips, instead of
        # re-trading a continuous target every bar.
        return base.replace(
            algo={
                "algo": "ppo",
                "timesteps": args.ppo_timesteps,
                "n_envs": 4,
                "seed": args.seed,
                "net_arch": [64, 64],
                "hyperparams": {"gamma": 0.5, "n_steps": 1024, "batch_size": 256, "n_epochs": 5},
            },
            env={"action": "discrete", "n_levels": 3},
        )
    return base.replace(
        algo={
            "algo": "sac",
            "timesteps": args.sac_timesteps,
            "n_envs": 4,
            "seed": args.seed,
            "net_arch": [64, 64],
            "hyperparams": {"gamma": 0.5, "learning_starts": 2_000},
        },
        eval={"eval_freq": 10_000},
    )


def oracle(base: RunConfig, phi: float) -> tuple[dict, float]:
    """The oracle's test metrics, with its threshold chosen on the validation period (as the agents' best
    models are)."""
    market = load_data(base.data.data)
    periods = split_ranges(len(market), base.data)
    params = PlantedParams(phi=phi)
    funding = default_funding_params()

    def run(period_name: str, threshold: float) -> dict:
        env, start, _ = make_period_env(market, base.env, periods[period_name])
        pos = planted_oracle_positions(env.unwrapped.market, params, funding=funding, threshold=threshold)
        return run_episode(env, lambda obs, info: float(pos[info["bar_index"]]), start=start).metrics

    scores = {thr: run("val", thr)["sharpe"] for thr in THRESHOLDS}
    best = max(scores, key=scores.get)
    return run("test", best), best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", default="ppo,sac")
    parser.add_argument("--phi", type=float, default=0.2, help="AR(1) coefficient of the planted market")
    parser.add_argument("--n-bars", type=int, default=500_000)
    parser.add_argument("--val", type=float, default=0.05)
    parser.add_argument("--test", type=float, default=0.15)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--market-seed", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="agent seed")
    parser.add_argument("--ppo-timesteps", type=int, default=300_000)
    parser.add_argument("--sac-timesteps", type=int, default=40_000)
    parser.add_argument("--model", choices=("best", "final"), default="best")
    parser.add_argument("--with-impact", action="store_true", help="add square-root impact and the cap")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = base_config(args)
    t0 = time.perf_counter()
    oracle_metrics, threshold = oracle(base, args.phi)
    rows: dict[str, dict] = {f"oracle (threshold {threshold:g})": oracle_metrics}
    baselines: dict = {}
    own_baselines: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algos.split(","):
            cfg = agent_config(base, algo.strip(), args)
            res = train(cfg, Path(tmp) / algo, command="benchmarks/learning.py")
            rep = evaluate(Path(tmp) / algo, model=args.model, log_tensorboard=False)
            rows[f"{algo} ({cfg.algo.timesteps} steps, {res.wall_time_s:.0f} s)"] = rep.metrics
            baselines = rep.baselines
            own_baselines[algo.strip()] = rep.baselines  # PPO's env is discrete: its own flat / buy-and-hold
    rows["flat"] = baselines.get("flat", {})
    rows["buy-and-hold"] = baselines.get("buy_and_hold", {})
    rows["momentum"] = baselines.get("momentum", {})

    o = oracle_metrics["sharpe"]
    print(
        f"\nplanted market: AR(1) phi={args.phi}, {args.n_bars} 1h bars (seed {args.market_seed}); "
        f"test = last "
        f"{args.test:.0%}, deterministic policies, after "
        + (
            "all costs (fees, spread, impact, funding)"
            if args.with_impact
            else "fees, spread and funding (no impact: see the module docstring)"
        )
    )
    print(f"{'':44}{'Sharpe':>9}{'return':>12}{'max DD':>9}{'turnover':>11}{'vs oracle':>11}")
    for name, m in rows.items():
        if not m:
            continue
        ratio = m["sharpe"] / o if o > 0 else np.nan
        # Returns compound over tens of thousands of bars: shown as growth multiples, 3 significant digits.
        print(
            f"{name:44}{m['sharpe']:9.2f}{1 + m['total_return']:11.3g}x{m['max_drawdown']:9.1%}"
            f"{m['turnover']:11.3g}{ratio:11.2f}"
        )
    print()
    for algo in args.algos.split(","):
        key = next(k for k in rows if k.startswith(algo.strip() + " "))
        s = rows[key]["sharpe"]
        b = own_baselines[algo.strip()]
        ok = (s >= 0.7 * o, s > b["flat"]["sharpe"], s > b["buy_and_hold"]["sharpe"])
        print(
            f"{algo.strip()}: {s / o:.0%} of the oracle's Sharpe "
            f"(target >= 70 %: {'met' if ok[0] else 'NOT met'}); "
            f"beats flat: {'yes' if ok[1] else 'NO'}; beats buy-and-hold: {'yes' if ok[2] else 'NO'}"
        )
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
