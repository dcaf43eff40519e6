"""Where in PPO's update do zclip's spikes fall? (issue #14)

The claim: PPO runs ``n_epochs`` passes of ``n_minibatches`` optimizer steps over each rollout (defaults: 10
x 4 = 40 steps on 4,096 frames). Over those passes the value loss on the batch falls, and with it the value
gradient norm, so zclip's EMA statistics are dominated by the small late-epoch norms and the *first*
minibatch of the next rollout (fresh data, fresh value targets) looks like an outlier: spikes cluster on
each rollout's first steps.

What this script does: trains the default PPO + zclip (both parts, ``agents.algos.build_model`` on the
default training env of ``agents.env_factory.make_train_env``: reward normalization, 2x training costs,
16 envs, no validation) on each market, and records, for every optimizer step, its position in the
rollout's update (step 0..39 = epoch * n_minibatches + minibatch) and, per part (policy, value), the
pre-clip global grad norm, zclip's ``ClipStats.spike`` and ``clipped`` flags, and whether zclip was still
in warm-up. Recording is from the outside: ``optimizer.step`` (perpclip's ``ClippedStep``) is wrapped by a
function that calls it and then reads each part's ``ClippedPart.last``; a callback's ``_on_rollout_end``
(called right before ``train()``) resets the position counter. Library behaviour is unchanged.

Then the recorded pre-clip norm sequences are *replayed* through zclip variants (``ZClip.clip`` on a
one-element tensor whose gradient has the recorded norm) to count the spikes each would flag. The replay of
the default configuration reproduces the recorded spikes exactly (the statistics depend on the norm
sequence only); the variants are counterfactual in one respect: their clipping would have changed the
later norms a little, which a replay cannot show. Variants:

* ``default``: zclip as trained;
* ``epoch0-stats``: statistics updated on epoch-0 steps only (detection on every step);
* ``per-epoch``: one zclip per epoch index (10 statistics, each sees only its epoch's steps);
* ``z=3.5``: one statistic, a higher threshold.

Output: Markdown tables (spike rate by position group and by step, median grad norm by epoch, replay
variants) on stdout, the aggregates as JSON (``--out``) and optionally every step's norm and flag
(``--raw``).

    PYTHONPATH=. python benchmarks/spike_clustering.py --seeds 0,1,2   # ~1.5 min on one busy core
    PYTHONPATH=. python benchmarks/spike_clustering.py --timesteps 20000 --markets btcusdt-1h  # smoke run

Result (``--seeds 0,1,2``, 100k steps; full tables, machine and reading in ``benchmarks/SPIKES.md``): the
clustering is real for the **value** part and spans the whole first epoch, not only its first minibatch:
value spike rate 7.0 % overall (btcusdt-1h; planted: 8.3 %) but 44 % (46 %) on a rollout's first step and
32 % (42 %) on the rest of epoch 0, against ~4 % on later epochs; half of the value spikes fall in epoch 0
(10 % of the steps). The median value norm halves after epoch 0 (0.25 -> 0.13; 0.31 -> 0.17) and is 3x
lower by epoch 9. The **policy** part does not cluster (first-step rate 0.66-0.84x its overall 6.3-6.6 %).
Replayed with per-epoch (or epoch-0-only) statistics the value part has 0-0.1 % spikes left and the
policy part 17-50 % more; no library option was added (why: SPIKES.md).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without the editable install
    sys.path.insert(0, str(REPO))

from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402

from agents import env_factory  # noqa: E402
from agents.algos import build_model  # noqa: E402
from agents.config import RunConfig  # noqa: E402
from agents.training import resolve_config  # noqa: E402
from clipping import ZClip  # noqa: E402

PARTS = ("policy", "value")
PLANTED = "synthetic:planted:n_bars=30000,seed=1,phi=0.2"
DEFAULT_MARKETS = ("btcusdt-1h", PLANTED)


# ------------------------------------------------------------------------------------------- recording
class StepRecorder:
    """Wraps a hooked optimizer's ``step`` and records each part's ``ClipStats`` with the step's position.

    Args:
        hooks: the model's ``ClipHooks`` (one ``ClippedStep`` on PPO's single optimizer).
    """

    def __init__(self, hooks: Any) -> None:
        if len(hooks.steps) != 1:
            raise SystemExit("expected one clipped optimizer (PPO)")
        self.hooks = hooks
        self.rollout = -1  # set to 0 by the first on_rollout_end
        self.position = 0
        self.rows: list[dict[str, Any]] = []
        clipped_step = hooks.steps[0]
        optimizer = clipped_step.optimizer

        def step(closure: Any = None) -> Any:
            # Warm-up state *before* the call: a warm-up step cannot be a spike, so it is left out of rates.
            warm = {p: not hooks.parts[p].clipper.initialized for p in PARTS}
            out = clipped_step(closure)
            row: dict[str, Any] = {"rollout": self.rollout, "pos": self.position}
            for p in PARTS:
                s = hooks.parts[p].last
                row[p] = {"norm": s.grad_norm, "spike": s.spike, "clipped": s.clipped, "warmup": warm[p],
                          "nonfinite": s.nonfinite}
            self.rows.append(row)
            self.position += 1
            return out

        # Instance attribute over perpclip's own instance attribute: SB3 calls this, this calls ClippedStep.
        optimizer.step = step  # type: ignore[method-assign]


class RolloutMarker(BaseCallback):
    """Resets the recorder's position counter right before each ``train()`` (SB3 calls
    ``on_rollout_end`` at the end of ``collect_rollouts``)."""

    def __init__(self, recorder: StepRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def _on_rollout_end(self) -> None:
        self.recorder.rollout += 1
        self.recorder.position = 0

    def _on_step(self) -> bool:
        return True


def train_and_record(market: str, timesteps: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train default PPO + zclip on ``market`` and return the per-step rows and the update layout."""
    cfg = resolve_config(RunConfig(algo={"timesteps": timesteps, "seed": seed}, data={"data": market}))
    data = env_factory.RunData(cfg)
    env = env_factory.make_train_env(cfg, data.train_market())
    cm = build_model(cfg.algo, cfg.clip, env)
    model = cm.model
    rec = StepRecorder(cm.hooks)
    model.learn(total_timesteps=timesteps, callback=[RolloutMarker(rec)])
    env.close()
    n_mb = math.ceil(model.n_steps * model.n_envs / model.batch_size)
    layout = {"n_steps": model.n_steps, "n_envs": model.n_envs, "batch_size": model.batch_size,
              "n_epochs": model.n_epochs, "n_minibatches": n_mb, "steps_per_rollout": n_mb * model.n_epochs,
              "clip": [cfg.clip.policy, cfg.clip.policy_kwargs, cfg.clip.value, cfg.clip.value_kwargs]}
    return rec.rows, layout


# ------------------------------------------------------------------------------------------- analysis
def group_of(pos: int, n_mb: int) -> str:
    """Position group of step ``pos``: the first minibatch of epoch 0, the rest of epoch 0, the first
    minibatch of a later epoch, or any other step."""
    epoch, mb = divmod(pos, n_mb)
    if epoch == 0:
        return "e0 mb0" if mb == 0 else "e0 mb1+"
    return "e1+ mb0" if mb == 0 else "e1+ mb1+"


GROUPS = ("e0 mb0", "e0 mb1+", "e1+ mb0", "e1+ mb1+")


def rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def analyse(rows: list[dict[str, Any]], layout: dict[str, Any]) -> dict[str, Any]:
    """Spike and clip rates by position (post-warm-up, finite steps) and median norms by step and epoch."""
    n_mb, n_pos = layout["n_minibatches"], layout["steps_per_rollout"]
    out: dict[str, Any] = {}
    for p in PARTS:
        live = [r for r in rows if not r[p]["warmup"] and not r[p]["nonfinite"] and r["rollout"] >= 0]
        by_pos = {k: [r for r in live if r["pos"] == k] for k in range(n_pos)}
        by_group = {g: [r for r in live if group_of(r["pos"], n_mb) == g] for g in GROUPS}
        every = [r for r in rows if not r[p]["nonfinite"] and r["rollout"] >= 0]
        overall = rate([r[p]["spike"] for r in live])
        out[p] = {
            "n_live": len(live),
            "spikes": sum(r[p]["spike"] for r in live),
            "spike_rate": overall,
            "clip_rate": rate([r[p]["clipped"] for r in live]),
            "spike_rate_by_group": {g: rate([r[p]["spike"] for r in v]) for g, v in by_group.items()},
            "n_by_group": {g: len(v) for g, v in by_group.items()},
            "spike_rate_by_pos": [rate([r[p]["spike"] for r in by_pos[k]]) for k in range(n_pos)],
            # Epoch 0 (1 and 2) hold 10 % (20 %) of the positions: shares above that are clustering.
            "share_of_spikes_in_epoch0": _share(live, p, lambda pos: pos < n_mb),
            "share_of_spikes_in_epochs01": _share(live, p, lambda pos: pos < 2 * n_mb),
            "ratio_pos0_to_overall": (rate([r[p]["spike"] for r in by_pos[0]]) / overall
                                      if overall > 0 else float("nan")),
            "median_norm_by_pos": [statistics.median(r[p]["norm"] for r in every if r["pos"] == k)
                                   for k in range(n_pos)],
            "median_norm_by_epoch": [statistics.median(r[p]["norm"] for r in every if r["pos"] // n_mb == e)
                                     for e in range(layout["n_epochs"])],
        }
    return out


# --------------------------------------------------------------------------------------------- replay
def _feed(clipper: ZClip, norm: float, *, update: bool = True) -> float | None:
    """One ``clip`` call on a one-element gradient of norm ``norm``; ``update=False`` restores the
    statistics afterwards (detection only). Returns the factor the gradient was scaled by on a spike
    (``threshold / norm``), ``None`` on a calm step."""
    saved = clipper.state_dict() if not update else None
    param = torch.zeros(1)
    param.grad = torch.tensor([norm])
    stats = clipper.clip(param)
    if saved is not None:
        clipper.load_state_dict(saved)
    return min(1.0, stats.threshold / norm) if stats.spike else None


def _share(live: list[dict[str, Any]], part: str, where: Any) -> float:
    spikes = [r["pos"] for r in live if r[part]["spike"]]
    return sum(map(where, spikes)) / len(spikes) if spikes else float("nan")


def replay(rows: list[dict[str, Any]], layout: dict[str, Any], part: str) -> dict[str, dict[str, float]]:
    """Spike rates of zclip variants on the recorded pre-clip norm sequence of ``part``.

    Rates count the finite steps after the default warm-up (the first ``warmup_steps`` = 25 norms), as the
    recorded rates do, so that every variant is judged on the same steps; a variant still in its own
    warm-up then (``epoch0-stats`` and ``per-epoch`` see ~4 norms per rollout, i.e. ~7 rollouts) counts
    those steps as calm.
    """
    n_mb, n_ep = layout["n_minibatches"], layout["n_epochs"]
    seq = [(r["pos"], r[part]["norm"]) for r in rows if not r[part]["nonfinite"] and r["rollout"] >= 0]
    variants: dict[str, Any] = {
        "default": lambda: (lambda c: (lambda pos, g: _feed(c, g)))(ZClip()),
        "epoch0-stats": lambda: (lambda c: (lambda pos, g: _feed(c, g, update=pos < n_mb)))(ZClip()),
        "per-epoch": lambda: (lambda cs: (lambda pos, g: _feed(cs[pos // n_mb], g)))(
            [ZClip() for _ in range(n_ep)]),
        "z=3.5": lambda: (lambda c: (lambda pos, g: _feed(c, g)))(ZClip(z_thresh=3.5)),
    }
    out = {}
    for name, make in variants.items():
        detect = make()
        scales = [(pos, detect(pos, g)) for pos, g in seq][ZClip().warmup_steps:]
        flags = [(pos, f is not None) for pos, f in scales]
        spiked = [f for _, f in scales if f is not None]
        by_group = {g: rate([f for pos, f in flags if group_of(pos, n_mb) == g]) for g in GROUPS}
        overall = rate([f for _, f in flags])
        pos0 = rate([f for pos, f in flags if pos == 0])
        out[name] = {"spike_rate": overall, **{f"rate {g}": v for g, v in by_group.items()},
                     "ratio_pos0_to_overall": pos0 / overall if overall > 0 else float("nan"),
                     # How hard a spike is pulled back: the gradient is multiplied by this (median).
                     "median_scale_on_spikes": statistics.median(spiked) if spiked else float("nan")}
    return out


# ---------------------------------------------------------------------------------------------- report
def fmt(x: float, pct: bool = True) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "-"
    return f"{100 * x:.1f} %" if pct else f"{x:.3g}"


def report(market: str, res: dict[str, Any], layout: dict[str, Any], variants: dict[str, Any]) -> str:
    lines = [f"### {market}", ""]
    lines += ["| part | live steps | spikes | spike rate | " + " | ".join(GROUPS) + " | pos0 / overall "
              "| spikes in e0 | in e0-1 |", "|---" * (7 + len(GROUPS)) + "|"]
    for p in PARTS:
        r = res[p]
        lines.append(f"| {p} | {r['n_live']} | {r['spikes']} | {fmt(r['spike_rate'])} | "
                     + " | ".join(fmt(r["spike_rate_by_group"][g]) for g in GROUPS)
                     + f" | {fmt(r['ratio_pos0_to_overall'], False)} | {fmt(r['share_of_spikes_in_epoch0'])} "
                     f"| {fmt(r['share_of_spikes_in_epochs01'])} |")
    lines += ["", "Median pre-clip grad norm by epoch (all finite steps):", "",
              "| part | " + " | ".join(f"e{e}" for e in range(layout["n_epochs"])) + " |",
              "|---" * (1 + layout["n_epochs"]) + "|"]
    for p in PARTS:
        lines.append(f"| {p} | " + " | ".join(fmt(v, False) for v in res[p]["median_norm_by_epoch"]) + " |")
    n_mb = layout["n_minibatches"]
    lines += ["", "Spike rate and median norm by step of the update (first two epochs, then every epoch's "
              "first step):", "",
              "| step (epoch.mb) | policy spikes | value spikes | policy norm | value norm |",
              "|---|---|---|---|---|"]
    shown = [k for k in range(layout["steps_per_rollout"]) if k < 2 * n_mb or k % n_mb == 0]
    for k in shown:
        e, m = divmod(k, n_mb)
        lines.append(f"| {k} ({e}.{m}) | {fmt(res['policy']['spike_rate_by_pos'][k])} | "
                     f"{fmt(res['value']['spike_rate_by_pos'][k])} | "
                     f"{fmt(res['policy']['median_norm_by_pos'][k], False)} | "
                     f"{fmt(res['value']['median_norm_by_pos'][k], False)} |")
    lines += ["", "Replay of the recorded norms through zclip variants (spike rate by group; pos0/overall; "
              "median factor a spike's gradient is scaled by):", "",
              "| part | variant | spike rate | " + " | ".join(GROUPS) + " | pos0 / overall | scale |",
              "|---" * (5 + len(GROUPS)) + "|"]
    for p in PARTS:
        for name, v in variants[p].items():
            lines.append(f"| {p} | {name} | {fmt(v['spike_rate'])} | "
                         + " | ".join(fmt(v[f"rate {g}"]) for g in GROUPS)
                         + f" | {fmt(v['ratio_pos0_to_overall'], False)} "
                           f"| {fmt(v['median_scale_on_spikes'], False)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markets", default=",".join(DEFAULT_MARKETS), help="comma-separated market specs "
                    "(';' also separates, for specs that contain commas)")
    ap.add_argument("--timesteps", type=int, default=100_000)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--out", default=str(Path(__file__).with_name("spike_clustering_results.json")),
                    help="aggregates (JSON)")
    ap.add_argument("--raw", default=None, help="also write every step's norms and spike flags here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    # Specs contain commas: split on ';' when given, else on the known defaults' boundaries.
    markets = args.markets.split(";") if ";" in args.markets else _split_specs(args.markets)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, Any] = {"command": " ".join(sys.argv), "timesteps": args.timesteps, "seeds": seeds,
                               "machine": f"{platform.processor() or platform.machine()}, torch "
                                          f"{torch.__version__}, 1 thread", "markets": {}}
    raw: dict[str, Any] = {}
    t0 = time.perf_counter()
    for market in markets:
        rows: list[dict[str, Any]] = []
        layout: dict[str, Any] = {}
        for seed in seeds:
            t = time.perf_counter()
            seed_rows, layout = train_and_record(market, args.timesteps, seed)
            # Rollout indices stay per seed; replays run on each seed's own sequence, then pool.
            rows += [{**r, "seed": seed} for r in seed_rows]
            wall = time.perf_counter() - t
            print(f"{market} seed {seed}: {len(seed_rows)} optimizer steps in {wall:.0f} s",
                  file=sys.stderr, flush=True)
        res = analyse(rows, layout)
        variants = {p: _pooled_replay([[r for r in rows if r["seed"] == s] for s in seeds], layout, p)
                    for p in PARTS}
        print(report(market, res, layout, variants) + "\n", flush=True)
        results["markets"][market] = {"layout": layout, "analysis": res, "replay": variants}
        raw[market] = {p: [[r["seed"], r["rollout"], r["pos"], r[p]["norm"], r[p]["spike"]] for r in rows]
                       for p in PARTS}
    results["wall_s"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    if args.raw:  # [seed, rollout, position, pre-clip norm, spike] per optimizer step and part
        Path(args.raw).write_text(json.dumps(raw) + "\n")
    print(f"wrote {args.out} ({results['wall_s']:.0f} s)", file=sys.stderr)
    return 0


def _pooled_replay(per_seed: list[list[dict[str, Any]]], layout: dict[str, Any], part: str) -> dict[str, Any]:
    """Replay each seed's sequence separately (fresh clippers) and pool: rates weighted by steps (every seed
    has the same layout, so this is the pooled rate), the pos0/overall ratio from the pooled rates, and the
    median scale as the mean of the seeds' medians (seeds without spikes left out)."""
    if len(per_seed) == 1:
        return replay(per_seed[0], layout, part)
    reps = [(len(rows), replay(rows, layout, part)) for rows in per_seed]
    total = sum(n for n, _ in reps)
    out = {}
    for name in reps[0][1]:
        v = {k: sum(n * r[name][k] for n, r in reps) / total for k in reps[0][1][name]
             if k not in ("ratio_pos0_to_overall", "median_scale_on_spikes")}
        overall = v["spike_rate"]
        v["ratio_pos0_to_overall"] = v["rate e0 mb0"] / overall if overall > 0 else float("nan")
        medians = [r[name]["median_scale_on_spikes"] for _, r in reps]
        medians = [m for m in medians if not math.isnan(m)]
        v["median_scale_on_spikes"] = sum(medians) / len(medians) if medians else float("nan")
        out[name] = v
    return out


def _split_specs(text: str) -> list[str]:
    """Split ``a,synthetic:kind:k=v,k=v`` into specs: a piece with ``=`` and no ``:`` continues the spec
    before it."""
    out: list[str] = []
    for piece in text.split(","):
        if out and "=" in piece and ":" not in piece:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
