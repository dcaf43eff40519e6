"""Env-steps per second: a batched env at N = 64, 256, 1024 vs its single env, one run.

    python -m benchmarks.vec_env_throughput [--task trading|execution] [--market SPEC ...]
                                            [--env-steps 400000] [--repeats 3]

Every contender does the same random-action workload on the same bars: the single env stepped in a Python
loop (reset at episode end, as a vector env would) and the batched env with ``num_envs`` N (autoreset inside
``step``, ``final_obs`` / ``final_info`` and the episode summaries included). Actions are drawn before timing.
Throughput is env-steps (sub-env transitions) per CPU second of this process, best of ``--repeats`` rounds,
the contenders interleaved in each round so they share the machine's load.

* ``--task trading`` (default): ``CryptoFuturesEnv`` vs ``CryptoFuturesVecEnv`` (32-bar window, 720-step
  episodes, default execution and margin: spread, square-root impact, fees, lots, dead-band, participation
  cap, funding, margin trim, maintenance margin, liquidation, bankruptcy). Targets: >= 2M env-steps/s at
  N = 1024 and >= 10x the single env.
* ``--task execution``: ``CryptoFuturesExecutionEnv`` vs ``CryptoFuturesExecutionVecEnv`` (the execution
  task's default env: 12-bar horizon, sizes of 1 % to 5 % of ADV, the participation cap, transient impact
  with a 2-bar half-life; actions are fractions of the remainder). No target of its own.

By default on two markets: the 999-bar perpetual set (the one ``benchmarks.env_throughput`` uses) and the
29,303-bar default market, on which the batched envs are slower: their per-step row gathers (observation
windows, bars) come from main memory instead of cache.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import gymnasium as gym
import numpy as np

from envs.execution_env import CryptoFuturesExecutionEnv
from envs.execution_vec_env import CryptoFuturesExecutionVecEnv
from envs.trading_env import CryptoFuturesEnv, resolve_market
from envs.vec_env import CryptoFuturesVecEnv

SIZES = (64, 256, 1024)
#: task -> (single env class, batched env class, constructor arguments, target line or None)
TASKS = {
    "trading": (CryptoFuturesEnv, CryptoFuturesVecEnv, {"window": 32, "episode_bars": 720}, True),
    "execution": (CryptoFuturesExecutionEnv, CryptoFuturesExecutionVecEnv, {"impact_halflife": 2.0}, False),
}


def _run_single(env: gym.Env, actions: list) -> float:
    step, reset = env.step, env.reset
    t0 = time.process_time()
    for a in actions:
        _, _, terminated, truncated, _ = step(a)
        if terminated or truncated:
            reset()
    return len(actions) / (time.process_time() - t0)


def _run_vec(env: gym.vector.VectorEnv, actions: np.ndarray) -> float:
    step = env.step
    t0 = time.process_time()
    for a in actions:
        step(a)
    return actions.shape[0] * env.num_envs / (time.process_time() - t0)


def _measure(task: str, market, env_steps: int, repeats: int) -> dict[str, float]:
    single_cls, vec_cls, kw, _ = TASKS[task]
    kw = dict(market=market, **kw)
    rng = np.random.default_rng(0)
    single_steps = max(env_steps // 10, 1)  # the single env is slow; 1/10 of the work is plenty to time
    contenders: dict[str, tuple] = {
        "single": (
            _run_single,
            single_cls(**kw),
            [np.array([x], dtype=np.float32) for x in rng.uniform(-1, 1, single_steps)],
        )
    }
    for n in SIZES:
        steps = max(env_steps // n, 1)
        contenders[f"N={n}"] = (
            _run_vec,
            vec_cls(num_envs=n, **kw),
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
    parser.add_argument("--task", choices=tuple(TASKS), default="trading", help="env pair (default trading)")
    parser.add_argument(
        "--market",
        action="append",
        help="market spec, repeatable (default: the 999-bar btcusdt-perp-1h-2025 set and the 29,303-bar "
        "default btcusdt-1h)",
    )
    parser.add_argument(
        "--env-steps",
        type=int,
        default=400_000,
        help="env-steps per timed run and contender (default 400000)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best counts (default 3)")
    args = parser.parse_args(argv)
    if args.env_steps < 1 or args.repeats < 1:
        parser.error("--env-steps and --repeats must be >= 1")
    markets = args.market or ["btcusdt-perp-1h-2025", "btcusdt-1h"]
    single_cls, vec_cls, kw, targets = TASKS[args.task]

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, gymnasium {gym.__version__}; "
        f"{vec_cls.__name__} vs {single_cls.__name__} ({kw}), ~{args.env_steps} env-steps x {args.repeats} "
        "rounds, CPU time of this process"
    )
    results = {}
    for spec in markets:
        market = resolve_market(spec)
        with warnings.catch_warnings():
            # Random full-leverage targets pass the flat maintenance rate's range: said once, not timed.
            warnings.simplefilter("ignore", UserWarning)
            best = _measure(args.task, market, args.env_steps, args.repeats)
        print(f"market {spec} ({len(market)} bars)")
        base = best["single"]
        for name, sps in best.items():
            label = single_cls.__name__ if name == "single" else f"{vec_cls.__name__} {name}"
            print(f"  {label:36s} {sps:14,.0f} env-steps/s  {sps / base:7.1f}x single")
        top = best[f"N={SIZES[-1]}"]
        line = f"  N={SIZES[-1]}: {top / 1e6:.2f}M env-steps/s"
        if targets:
            line += f" (target >= 2M), {top / base:.1f}x single (target >= 10x)"
        else:
            line += f", {top / base:.1f}x single"
        print(line)
        results[spec] = {**best, f"ratio N={SIZES[-1]} / single": top / base}
    return results


if __name__ == "__main__":
    main()
