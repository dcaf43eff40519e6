"""Overhead of one ``clip()`` of each clipper relative to ``torch.nn.utils.clip_grad_norm_``.

Network: the SB3 ``MlpPolicy`` of PPO/A2C on a Box observation (no feature extractor), rebuilt with plain
torch - policy head ``pi`` and value head ``vf`` each ``Linear(obs, 64) - Tanh - Linear(64, 64) - Tanh``,
plus ``action_net = Linear(64, act)``, ``value_net = Linear(64, 1)`` and ``log_std`` (13 tensors, 13.7k
parameters at obs dim 40). Gradients are random, from a pool of 64 seeded gradient sets with log-normal
scales and occasional 20x spikes, so the adaptive clippers see calm steps and clipped steps.

Every timed call first restores the gradients from the pool (one fused copy) and then clips; the time of
the restore alone is measured the same way and subtracted. All candidates are timed round-robin in the
same run (min and median over rounds). Adaptive clippers are run 1100 steps before timing, so AutoClip's
1000-norm window is full and ZClip's warm-up is over.

Usage::

    python benchmarks/clip_overhead.py               # CPU, 1 thread
    python benchmarks/clip_overhead.py --device cuda # also counts real device syncs per call

Target: ratio <= 1.5 for zclip and autoclip (printed; ``--strict`` turns a miss into exit code 1).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import timeit
import warnings

import torch
from torch import nn

from clipping import make_clipper

CANDIDATES: list[tuple[str, str, dict]] = [
    ("none", "none", {}),
    ("norm(0.5)", "norm", {"max_norm": 0.5}),
    ("value(0.1)", "value", {"clip_value": 0.1}),
    ("autoclip", "autoclip", {}),
    ("autoclip paper (q=.1, all, incl.)", "autoclip",
     {"quantile": 0.1, "window": None, "include_current": True}),
    ("zclip", "zclip", {}),
    ("zclip(mean, cap 1.0)", "zclip", {"clip_option": "mean", "max_grad_norm": 1.0}),
    ("agc", "agc", {}),
    ("quantile", "quantile", {}),
]
TARGETS = {"autoclip", "zclip"}


def sb3_like_policy(obs_dim: int, act_dim: int) -> nn.Module:
    def head() -> nn.Sequential:
        return nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())

    policy = nn.Module()
    policy.pi, policy.vf = head(), head()
    policy.action_net, policy.value_net = nn.Linear(64, act_dim), nn.Linear(64, 1)
    policy.log_std = nn.Parameter(torch.zeros(act_dim))
    return policy


def gradient_pool(params: list[torch.Tensor], size: int, seed: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    pool = []
    for _ in range(size):
        scale = float(torch.empty(()).log_normal_(0.0, 1.0, generator=gen))
        if float(torch.rand((), generator=gen)) < 0.05:
            scale *= 20.0  # a spike
        pool.append([torch.randn(p.shape, generator=gen).mul_(scale).to(p.device) for p in params])
    return pool


def count_cuda_syncs(fn, calls: int) -> float:
    """Device syncs per call, counted by CUDA's sync debug mode (warns on every synchronising op)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(calls):
                fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / calls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--obs-dim", type=int, default=40)
    ap.add_argument("--act-dim", type=int, default=1)
    ap.add_argument("--number", type=int, default=500, help="calls per timing")
    ap.add_argument("--rounds", type=int, default=9, help="round-robin timing rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target ratio is missed")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = list(sb3_like_policy(args.obs_dim, args.act_dim).to(device).parameters())
    for p in params:
        p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    pool = gradient_pool(params, 64, args.seed)
    order = itertools.cycle(range(len(pool)))

    def restore() -> None:
        torch._foreach_copy_(grads, pool[next(order)])

    calls = {"restore only": restore}

    def baseline() -> None:
        restore()
        torch.nn.utils.clip_grad_norm_(params, 0.5)

    calls["torch clip_grad_norm_(0.5)"] = baseline
    clippers, clip_counts = {}, {}
    for label, name, kwargs in CANDIDATES:
        clipper = make_clipper(name, **kwargs)
        for _ in range(1100):  # steady state: full AutoClip window, ZClip warm-up done
            restore()
            clipper.clip(params)
        clippers[label] = clipper
        clip_counts[label] = [0, 0]

        def call(clipper=clipper, counts=clip_counts[label]) -> None:
            restore()
            stats = clipper.clip(params)
            counts[0] += stats.clipped
            counts[1] += 1

        calls[label] = call

    sync = lambda: torch.cuda.synchronize() if device.type == "cuda" else None  # noqa: E731
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.rounds):
        for label, fn in calls.items():
            sync()
            t = timeit.timeit(lambda fn=fn: (fn(), sync()), number=args.number) if device.type == "cuda" \
                else timeit.timeit(fn, number=args.number)
            times[label].append(t / args.number * 1e6)

    restore_min, restore_med = min(times["restore only"]), statistics.median(times["restore only"])
    base = "torch clip_grad_norm_(0.5)"
    base_min, base_med = min(times[base]) - restore_min, statistics.median(times[base]) - restore_med
    n_params = sum(p.numel() for p in params)
    print(f"device={device} threads={args.threads} tensors={len(params)} parameters={n_params} "
          f"calls/round={args.number} rounds={args.rounds} torch={torch.__version__}")
    print(f"restore-only time subtracted: min {restore_min:.1f} us, median {restore_med:.1f} us\n")
    header = (f"{'clipper':36s} {'median us':>9s} {'min us':>8s} {'ratio med':>9s} {'ratio min':>9s} "
              f"{'clip %':>7s}")
    if device.type == "cuda":
        header += f" {'syncs/call':>10s}"
    print(header)
    print("-" * len(header))
    missed = []
    for label in [base] + [c[0] for c in CANDIDATES]:
        t_min = min(times[label]) - restore_min
        t_med = statistics.median(times[label]) - restore_med
        ratio_med, ratio_min = t_med / base_med, t_min / base_min
        counts = clip_counts.get(label, [1, 1])  # clip_grad_norm_ always multiplies
        clip_pct = f"{100 * counts[0] / counts[1]:.0f}"
        row = f"{label:36s} {t_med:9.1f} {t_min:8.1f} {ratio_med:9.2f} {ratio_min:9.2f} {clip_pct:>7s}"
        if device.type == "cuda":
            row += f" {count_cuda_syncs(calls[label], 20):10.1f}"
        print(row)
        if label in TARGETS and ratio_med > 1.5:
            missed.append(label)
    verdict = f"MISSED {missed}" if missed else "met"
    print(f"\ntarget: median ratio <= 1.5 for {', '.join(sorted(TARGETS))}: {verdict}")
    paper = clippers["autoclip paper (q=.1, all, incl.)"]
    print(f"(autoclip paper mode grew its unbounded history to {len(paper.history)} norms during the run)")
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
