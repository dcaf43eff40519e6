"""End-to-end PPO training speed: perpclip on CryptoFutures-v0 with zclip vs plain SB3 PPO on Pendulum-v1.

Both sides run in this process, alternately (A B A B ...), with the same PPO hyperparameters, the same hidden
layers, the same number of envs and one torch thread; the figure is frames (env steps) per second of wall time
around everything a user waits for:

* perpclip: ``agents.run.train`` — data loading, env construction, the SB3 model with both zclip hooks, the
  ``clip/`` and ``trade/`` logging callbacks, TensorBoard + CSV output, periodic validation on the val split
  and ``best_model.zip``, the final save (model + clipper state);
* SB3: ``PPO("MlpPolicy", make_vec_env("Pendulum-v1"))`` with its default gradient clipping
  (``max_grad_norm=0.5``), no logging output, ``learn``.

The target is a ratio >= 0.8: the trading env, the clippers and the logging must not be what slows training.
The best of ``--repeats`` runs per side is reported (the machine may be shared; the best run is the one least
disturbed), with every run listed.

    python benchmarks/train_throughput.py [--timesteps 30000] [--repeats 2] [--n-envs 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from agents.config import RunConfig
from agents.run import train

HYPERPARAMS = {"n_steps": 512, "batch_size": 128, "n_epochs": 10, "learning_rate": 3e-4, "gamma": 0.99}
NET_ARCH = [64, 64]


def perpclip_fps(timesteps: int, n_envs: int, seed: int, root: Path) -> float:
    cfg = RunConfig().replace(
        algo={
            "algo": "ppo",
            "timesteps": timesteps,
            "n_envs": n_envs,
            "seed": seed,
            "net_arch": NET_ARCH,
            "hyperparams": HYPERPARAMS,
        },
        clip={"policy": "zclip", "value": "zclip"},
    )
    t0 = time.perf_counter()
    res = train(cfg, root / f"perpclip-{seed}", command="benchmarks/train_throughput.py")
    return res.timesteps / (time.perf_counter() - t0)


def sb3_fps(timesteps: int, n_envs: int, seed: int) -> float:
    t0 = time.perf_counter()
    env = make_vec_env("Pendulum-v1", n_envs=n_envs, seed=seed)
    model = PPO(
        "MlpPolicy", env, policy_kwargs={"net_arch": NET_ARCH}, seed=seed, device="cpu", **HYPERPARAMS
    )
    model.learn(timesteps)
    return model.num_timesteps / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timesteps", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-envs", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # torch's first optimizer construction imports and initializes a lot (~2 s); pay it before any timing.
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            ours.append(perpclip_fps(args.timesteps, args.n_envs, rep, Path(tmp)))
            theirs.append(sb3_fps(args.timesteps, args.n_envs, rep))
            print(
                f"run {rep}: perpclip CryptoFutures-v0 + zclip {ours[-1]:7.0f} frames/s   "
                f"SB3 Pendulum-v1 {theirs[-1]:7.0f} frames/s",
                flush=True,
            )
    ratio = max(ours) / max(theirs)
    print(
        f"\nPPO, net {NET_ARCH}, {args.n_envs} envs, {args.timesteps} steps per run, 1 torch thread, "
        f"best of {args.repeats}:"
    )
    ours_label = "perpclip (CryptoFutures-v0, zclip policy+value, TB/CSV logs, validation)"
    theirs_label = "SB3 PPO (Pendulum-v1, max_grad_norm=0.5, no logging)"
    print(f"  {ours_label:76}{max(ours):7.0f} frames/s")
    print(f"  {theirs_label:76}{max(theirs):7.0f} frames/s")
    print(f"  ratio {ratio:.2f} (target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
