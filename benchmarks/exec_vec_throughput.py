"""Env-steps per second: the batched CryptoFuturesExecutionVecEnv at N = 64, 256, 1024 vs the single env.

    python -m benchmarks.exec_vec_throughput [--market SPEC ...] [--env-steps 200000] [--repeats 3]

The execution twin of ``benchmarks.vec_env_throughput`` (same timing helpers, same rules): every contender
does the same random-action workload (continuous fractions of the remainder, uniform in [-1, 1]) with the
execution task's default env (12-bar horizon, 8 returns, 7-day volume profile, sizes of 1 % to 5 % of ADV,
default fill model with its participation cap, transient impact with a 2-bar half-life): the single
``CryptoFuturesExecutionEnv`` stepped in a Python loop (reset at episode end) and
``CryptoFuturesExecutionVecEnv`` with ``num_envs`` N (autoreset inside ``step``, ``final_obs`` /
``final_info`` with the episode summary included). Throughput is env-steps per CPU second of this process,
best of ``--repeats`` rounds, the contenders interleaved in each round.
"""

from __future__ import annotations

import argparse
import platform

import gymnasium as gym
import numpy as np

from benchmarks.vec_env_throughput import _run_single, _run_vec
from envs.execution_env import CryptoFuturesExecutionEnv
from envs.execution_vec_env import CryptoFuturesExecutionVecEnv
from envs.trading_env import resolve_market

SIZES = (64, 256, 1024)
ENV_KWARGS = {"impact_halflife": 2.0}


def _measure(market, env_steps: int, repeats: int) -> dict[str, float]:
    kw = dict(market=market, **ENV_KWARGS)
    rng = np.random.default_rng(0)
    single_steps = max(env_steps // 10, 1)  # the single env is slow; 1/10 of the work is plenty to time
    contenders: dict[str, tuple] = {
        "single ExecutionEnv": (
            _run_single,
            CryptoFuturesExecutionEnv(**kw),
            [np.array([x], dtype=np.float32) for x in rng.uniform(-1, 1, single_steps)],
        )
    }
    for n in SIZES:
        steps = max(env_steps // n, 1)
        contenders[f"ExecutionVecEnv N={n}"] = (
            _run_vec,
            CryptoFuturesExecutionVecEnv(num_envs=n, **kw),
            rng.uniform(-1, 1, (steps, n, 1)).astype(np.float32),
        )
    for _, env, _ in contenders.values():
        env.reset(seed=0)
    best = dict.fromkeys(contenders, 0.0)
    for _ in range(repeats):
        for name, (run, env, actions) in contenders.items():
            best[name] = max(best[name], run(env, actions))
    return best


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--market",
        action="append",
        help="market spec, repeatable (default: the 999-bar btcusdt-perp-1h-2025 set and the 29,303-bar "
        "default btcusdt-1h)",
    )
    parser.add_argument(
        "--env-steps",
        type=int,
        default=200_000,
        help="env-steps per timed run and contender (default 200000)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best counts (default 3)")
    args = parser.parse_args(argv)
    if args.env_steps < 1 or args.repeats < 1:
        parser.error("--env-steps and --repeats must be >= 1")
    markets = args.market or ["btcusdt-perp-1h-2025", "btcusdt-1h"]

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, gymnasium {gym.__version__}; "
        f"execution env defaults + {ENV_KWARGS}, ~{args.env_steps} env-steps x {args.repeats} rounds, "
        "CPU time of this process"
    )
    results = {}
    for spec in markets:
        market = resolve_market(spec)
        best = _measure(market, args.env_steps, args.repeats)
        print(f"market {spec} ({len(market)} bars)")
        base = best["single ExecutionEnv"]
        for name, sps in best.items():
            print(f"  {name:24s} {sps:14,.0f} env-steps/s  {sps / base:7.1f}x single")
        top = best[f"ExecutionVecEnv N={SIZES[-1]}"]
        print(f"  N={SIZES[-1]}: {top / 1e6:.2f}M env-steps/s, {top / base:.1f}x single")
        results[spec] = {**best, f"ratio N={SIZES[-1]} / single": top / base}
    return results


if __name__ == "__main__":
    main()
