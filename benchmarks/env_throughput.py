"""Random-action steps per second: CryptoFuturesEnv vs gym-trading-env's TradingEnv, same bars, same run.

    python -m benchmarks.env_throughput [--steps 20000] [--repeats 5]    # from the repository root

Both envs run on the embedded 999 BTCUSDT perpetual 1h bars (``btcusdt-perp-1h-2025``) with a 32-bar
observation window, 720-step episodes (reset when an episode ends, reset time included) and the same
pre-drawn random actions (drawing them is not timed).
Ours simulates far more per step: spread, square-root impact, fees, lot rounding, participation cap, funding,
maintenance margin and liquidation, causal features and a full info dict; gym-trading-env (0.3.5) does a fee
on a target-position portfolio. Each env is measured raw and through ``gym.make`` (ours: OrderEnforcing +
PassiveEnvChecker; gym-trading-env registers itself with both disabled). The best of ``--repeats`` runs is
reported, in steps per CPU second of the process (see ``_run``). Target: ours >= 3x gym-trading-env. Needs
``pip install gym-trading-env==0.3.5`` (extra ``bench``).
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import gymnasium as gym
import numpy as np
import pandas as pd

import envs  # noqa: F401  (registers CryptoFutures-v0)
from envs.market import load_embedded
from envs.trading_env import CryptoFuturesEnv

WINDOW = 32
EPISODE = 720


def _gte_frame(market) -> pd.DataFrame:
    """The same bars for gym-trading-env, with comparable causal features as its feature_ columns."""
    df = market.to_frame()
    df.index = df.index.tz_convert(None)  # its reset reads index.values, which warns on tz-aware indexes
    close = df["close"]
    df["feature_log_return"] = np.log(close).diff().fillna(0.0)
    df["feature_range"] = np.log(df["high"] / df["low"])
    df["feature_rel_volume"] = np.log(df["volume"] / df["volume"].rolling(24, min_periods=1).mean())
    df["feature_funding"] = df["funding_rate"].replace(0.0, np.nan).ffill().fillna(0.0) * 1e4
    hours = df.index.hour.to_numpy()
    df["feature_time_to_funding"] = ((8 - (hours + 1) % 8) % 8) / 8.0
    return df


def _import_gte():
    # gym_trading_env runs warnings.filterwarnings("error") at import; restore the process's filters.
    saved = list(warnings.filters)
    try:
        import gym_trading_env  # noqa: F401
        from gym_trading_env.environments import TradingEnv
    finally:
        warnings.filters[:] = saved
    return TradingEnv


def _run(env, actions) -> float:
    """Steps per CPU second of one pass over ``actions`` (continuing the episode, resetting at its end).

    CPU time of this process rather than wall time: on a shared machine the wall clock also counts the time
    the process waits for a core, which says nothing about either env.
    """
    step = env.step
    reset = env.reset
    t0 = time.process_time()
    for a in actions:
        _, _, terminated, truncated, _ = step(a)
        if terminated or truncated:
            reset()
    return len(actions) / (time.process_time() - t0)


def _measure(contenders: dict, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` steps/s per env, the envs interleaved round by round so that they share the
    machine's load (on a busy machine back-to-back blocks would favour whichever ran in a quiet moment)."""
    best = dict.fromkeys(contenders, 0.0)
    for env, _ in contenders.values():
        env.reset(seed=0)
    for _ in range(repeats):
        for name, (env, actions) in contenders.items():
            best[name] = max(best[name], _run(env, actions))
    return best


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000, help="steps per timed run (default 20000)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per env; the best counts (default 5)"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")

    market = load_embedded("btcusdt-perp-1h-2025")
    rng = np.random.default_rng(0)
    n = args.steps
    cont_actions = [np.array([x], dtype=np.float32) for x in rng.uniform(-1, 1, n)]
    disc_actions = [int(x) for x in rng.integers(0, 3, n)]

    TradingEnv = _import_gte()
    gte_kw = dict(
        positions=[-1, 0, 1],
        windows=WINDOW,
        trading_fees=0.0005,
        portfolio_initial_value=10_000,
        max_episode_duration=EPISODE,
        verbose=0,
    )
    np.random.seed(0)  # gym-trading-env draws its starts from numpy's global generator
    gte_df = _gte_frame(market)
    ours_kw = dict(window=WINDOW, episode_bars=EPISODE)
    contenders = {
        "gym-trading-env TradingEnv (raw)": (TradingEnv(gte_df, **gte_kw), disc_actions),
        "gym-trading-env via gym.make": (gym.make("TradingEnv", df=gte_df, **gte_kw), disc_actions),
        "CryptoFuturesEnv continuous (raw)": (CryptoFuturesEnv(market, **ours_kw), cont_actions),
        "CryptoFuturesEnv discrete (raw)": (
            CryptoFuturesEnv(market, action="discrete", **ours_kw),
            disc_actions,
        ),
        "CryptoFuturesEnv continuous via gym.make": (
            gym.make("CryptoFutures-v0", market=market, **ours_kw),
            cont_actions,
        ),
        "CryptoFuturesEnv discrete via gym.make": (
            gym.make("CryptoFutures-v0", market=market, action="discrete", **ours_kw),
            disc_actions,
        ),
    }
    results = _measure(contenders, args.repeats)

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, gymnasium {gym.__version__}; "
        f"{n} steps x "
        f"{args.repeats} runs, window {WINDOW}, {EPISODE}-step episodes, {len(market)} bars"
    )
    for name, sps in results.items():
        print(f"  {name:45s} {sps:12,.0f} steps/s")
    base_raw = results["gym-trading-env TradingEnv (raw)"]
    base_make = results["gym-trading-env via gym.make"]
    ratios = {
        "raw, continuous / gym-trading-env": results["CryptoFuturesEnv continuous (raw)"] / base_raw,
        "raw, discrete / gym-trading-env": results["CryptoFuturesEnv discrete (raw)"] / base_raw,
        "gym.make, continuous / gym-trading-env gym.make": results["CryptoFuturesEnv continuous via gym.make"]
        / base_make,
        "gym.make, discrete / gym-trading-env gym.make": results["CryptoFuturesEnv discrete via gym.make"]
        / base_make,
    }
    for name, r in ratios.items():
        print(f"  ratio {name:50s} {r:6.2f}x  (target >= 3x)")
    return {**results, **{f"ratio {k}": v for k, v in ratios.items()}}


if __name__ == "__main__":
    main()
