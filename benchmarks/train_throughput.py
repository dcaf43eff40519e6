"""Whole-process training speed: the default ``python train.py`` against stock SB3 PPO on Pendulum-v1.

Both sides run as separate processes, one after the other, timed from process start to exit (imports, data
loading, env construction, training, saving: everything a user waits for):

* perpclip: ``python train.py --run-dir TMP --no-progress`` with nothing else, i.e. the defaults (PPO,
  zclip on the policy and the value update, the batched env with ``AlgoConfig.n_envs`` envs, the rollout
  sizes of ``agents.algos.ALGOS["ppo"]``, ``clip/`` and ``trade/`` logging, TensorBoard + CSV output,
  periodic validation with ``best_model.zip``, the final save) on the embedded ``btcusdt-1h`` market, for
  the default number of timesteps;
* SB3: ``PPO("MlpPolicy", "Pendulum-v1").learn(N)``: SB3's defaults (one env, ``n_steps=2048``,
  ``batch_size=64``, ``n_epochs=10``, torch's default thread count), no logging output.

Frames per second = environment steps / wall seconds of the process. Target: perpclip / SB3 >= 5. The two
sides alternate for ``--repeats`` rounds (default 3); the best of each side is compared (a shared machine only
ever makes a process slower), and each round's own ratio is printed next to it, with their median.

    python benchmarks/train_throughput.py [--sb3-timesteps 50000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SB3_SCRIPT = """
import sys
from stable_baselines3 import PPO
PPO("MlpPolicy", "Pendulum-v1", seed=0, device="cpu").learn(int(sys.argv[1]))
"""


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return wall, r.stdout


def perpclip_fps(tmp: Path, rep: int) -> tuple[float, int, float]:
    wall, out = timed([sys.executable, "train.py", "--run-dir", str(tmp / f"run{rep}"), "--no-progress"])
    m = re.search(r"done: (\d+) steps", out)
    if m is None:
        raise SystemExit(f"cannot read the step count from train.py's output:\n{out[-2000:]}")
    steps = int(m.group(1))
    return steps / wall, steps, wall


def sb3_fps(timesteps: int) -> tuple[float, int, float]:
    wall, _ = timed([sys.executable, "-c", SB3_SCRIPT, str(timesteps)])
    steps = -(-timesteps // 2048) * 2048  # SB3 finishes the rollout it started
    return steps / wall, steps, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sb3-timesteps", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            ours.append(perpclip_fps(Path(tmp), rep))
            theirs.append(sb3_fps(args.sb3_timesteps))
            print(
                f"run {rep}: python train.py {ours[-1][1]} steps in {ours[-1][2]:.1f} s = {ours[-1][0]:7.0f} "
                f"frames/s; SB3 PPO Pendulum-v1 {theirs[-1][1]} steps in {theirs[-1][2]:.1f} s = "
                f"{theirs[-1][0]:7.0f} frames/s; ratio {ours[-1][0] / theirs[-1][0]:.2f}",
                flush=True,
            )
    a, b = max(f for f, _, _ in ours), max(f for f, _, _ in theirs)
    ratio = a / b
    print(f"\nwhole processes, best of {args.repeats}:")
    print(f"  {'python train.py (defaults: PPO + zclip, logging, validation, save)':70}{a:8.0f} frames/s")
    print(f"  {'SB3 PPO(MlpPolicy, Pendulum-v1) with SB3 defaults':70}{b:8.0f} frames/s")
    print(f"  ratio {ratio:.2f} (target >= 5: {'met' if ratio >= 5 else 'NOT met'})")
    paired = sorted(o[0] / t[0] for o, t in zip(ours, theirs, strict=True))
    rounds = ", ".join(f"{r:.2f}" for r in paired)
    print(f"  per-round ratios {rounds}; median {paired[len(paired) // 2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
