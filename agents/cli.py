"""Command line of ``train.py``: train (default), ``evaluate``, ``compare``.

    python train.py                                   # PPO + zclip on the embedded BTCUSDT 1h bars
    python train.py --algo sac --clip autoclip --timesteps 50000
    python train.py --policy-clip zclip:z_thresh=2.0,alpha=0.9 --value-clip norm:max_norm=1.0
    python train.py --data prices.parquet --funding funding.csv
    python train.py --resume runs/ppo-zclip-20250101-120000 --timesteps 20000
    python train.py evaluate runs/ppo-zclip-20250101-120000 [--split test] [--data ...]
    python train.py compare --clips none,norm,zclip --seeds 3
    python train.py --task execution --env horizon_bars=8,quantity_adv=0.02 --timesteps 100000

User mistakes print ``error: <message>`` on one line and exit with status 2 (no traceback; set
``PERPCLIP_DEBUG=1`` to see one). Ctrl-C saves the model and exits with status 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from agents.compare import register_cli
from agents.config import (
    ALGO_NAMES,
    SB3_CLIP,
    TASKS,
    RunConfig,
    load_config,
    parse_clip_spec,
    parse_kwargs,
)
from agents.errors import UserError

__all__ = ["build_parser", "config_from_args", "main"]

SUBCOMMANDS = ("train", "evaluate", "compare")


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        metavar="|".join(TASKS),
        help="trading (take positions, CryptoFutures-v0; default) or execution (execute a parent order "
        "within horizon_bars, CryptoFuturesExecution-v0, judged by implementation shortfall); --env then "
        "sets that task's env arguments",
    )
    p.add_argument("--algo", help=f"algorithm: {', '.join(ALGO_NAMES)} (default ppo)")
    p.add_argument(
        "--clip",
        metavar="NAME[:K=V,...]",
        help=f"clipper for both the policy and the value update, e.g. zclip or autoclip:quantile=0.1 "
        f"(names: none, norm, value, autoclip, zclip, agc, quantile; '{SB3_CLIP}': SB3's own max_grad_norm)",
    )
    p.add_argument("--policy-clip", metavar="NAME[:K=V,...]", help="clipper of the policy (actor) update")
    p.add_argument("--value-clip", metavar="NAME[:K=V,...]", help="clipper of the value (critic) update")
    p.add_argument(
        "--data", help="embedded name (btcusdt-1h), CSV/Parquet path, or synthetic:<kind>[:k=v,...]"
    )
    p.add_argument("--funding", metavar="PATH", help="funding-rate file (CSV/Parquet) for --data")
    p.add_argument(
        "--train-data",
        metavar="SPEC",
        help="train on this market instead (e.g. synthetic:garch:n_bars=50000,seed=1); "
        "validation/test stay on --data",
    )
    p.add_argument("--timesteps", type=int, help="environment steps to train (more steps when resuming)")
    p.add_argument("--seed", type=int, help="random seed (same seed -> same run)")
    p.add_argument("--n-envs", type=int, help="parallel training envs")
    p.add_argument("--net-arch", metavar="N,N", help="hidden layer sizes, e.g. 64,64")
    p.add_argument(
        "--hp",
        action="append",
        metavar="K=V,...",
        help="SB3 hyperparameters, e.g. --hp learning_rate=1e-4,n_steps=256 (repeatable)",
    )
    p.add_argument(
        "--env",
        action="append",
        metavar="K=V,...",
        help="env arguments, e.g. --env window=16,episode_bars=512,reward=differential_sharpe; with --task "
        "execution e.g. --env horizon_bars=8,quantity_adv=[0.01,0.03],side=buy,reward_scale=0.1",
    )
    p.add_argument("--eval-freq", type=int, help="validate every N steps (0: never)")
    p.add_argument(
        "--config", metavar="YAML", help="config file (e.g. a run's config.yaml); options override it"
    )
    p.add_argument("--run-dir", metavar="DIR", help="run folder (default runs/<algo>-<clip>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue training the run in RUN_DIR")
    p.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show a progress bar (default: when stdout is a terminal)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1: fastest for small networks)")
    p.add_argument("--verbose", action="store_true", help="print SB3's training tables")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train RL trading agents on crypto perpetual futures with clipped policy and value "
        "updates. "
        "Without a subcommand, trains (see 'train.py train --help').",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,compare}")
    t = sub.add_parser("train", help="train an agent (the default)")
    _add_train_arguments(t)
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("evaluate", help="evaluate a saved run on its held-out test period next to baselines")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by train.py")
    e.add_argument("--data", help="evaluate on this data instead of the run's (same split fractions)")
    e.add_argument("--funding", metavar="PATH", help="funding-rate file for --data")
    e.add_argument("--split", default="test", help="test (default), val, train or all")
    e.add_argument(
        "--model",
        default="final",
        choices=("final", "best"),
        help="model.zip (final, default) or best_model.zip (best on validation)",
    )
    e.set_defaults(func=_cmd_evaluate)
    register_cli(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of a train command: ``--config`` (or defaults), then every given option over it."""
    cfg = load_config(args.config) if args.config else RunConfig()
    task = getattr(args, "task", None)  # the compare subcommand has no --task
    if task is not None:
        cfg = cfg.with_task(task)
    algo: dict[str, Any] = {}
    if args.algo is not None:
        algo["algo"] = args.algo
    if args.timesteps is not None:
        algo["timesteps"] = args.timesteps
    if args.seed is not None:
        algo["seed"] = args.seed
    if args.n_envs is not None:
        algo["n_envs"] = args.n_envs
    if args.net_arch is not None:
        try:
            algo["net_arch"] = [int(x) for x in args.net_arch.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--net-arch: expected layer sizes like 64,64, got {args.net_arch!r}") from None
    if args.hp:
        hp = dict(cfg.algo.hyperparams)
        for item in args.hp:
            hp.update(parse_kwargs(item, where="--hp"))
        algo["hyperparams"] = hp
    clip: dict[str, Any] = {}
    if args.clip is not None:
        name, kwargs = parse_clip_spec(args.clip)
        clip.update(policy=name, policy_kwargs=kwargs, value=name, value_kwargs=dict(kwargs))
    for part in ("policy", "value"):
        spec = getattr(args, f"{part}_clip")
        if spec is not None:
            name, kwargs = parse_clip_spec(spec)
            clip.update({part: name, f"{part}_kwargs": kwargs})
    data: dict[str, Any] = {}
    for key in ("data", "funding", "train_data"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    env: dict[str, Any] = {}
    env_section = "exec_env" if cfg.task == "execution" else "env"
    for item in args.env or ():
        kw = parse_kwargs(item, where="--env")
        if env_section == "exec_env":  # every argument of the execution env is a field: unknown ones fail
            env.update(kw)
            continue
        known = {f for f in RunConfig().env.__dataclass_fields__}
        env.update({k: v for k, v in kw.items() if k in known})
        extra = {k: v for k, v in kw.items() if k not in known}
        if extra:
            env["kwargs"] = {**cfg.env.kwargs, **env.get("kwargs", {}), **extra}
    evl: dict[str, Any] = {}
    if args.eval_freq is not None:
        evl["eval_freq"] = args.eval_freq
    sections = (("algo", algo), ("clip", clip), ("data", data), (env_section, env), ("eval", evl))
    changes = {k: v for k, v in sections if v}
    return cfg.replace(**changes) if changes else cfg


def _new_run_dir(cfg: RunConfig, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    task = "exec-" if cfg.task == "execution" else ""
    base = root / f"{task}{cfg.algo.algo}-{cfg.clip.label}-{stamp}"
    path, n = base, 1
    while path.exists():  # never reuse a folder (two runs started in the same second)
        path = base.with_name(f"{base.name}-{n}")
        n += 1
    return path


def _cmd_train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        given = [
            opt
            for opt, v in (
                ("--task", args.task),
                ("--algo", args.algo),
                ("--clip", args.clip),
                ("--policy-clip", args.policy_clip),
                ("--value-clip", args.value_clip),
                ("--data", args.data),
                ("--funding", args.funding),
                ("--train-data", args.train_data),
                ("--seed", args.seed),
                ("--n-envs", args.n_envs),
                ("--net-arch", args.net_arch),
                ("--hp", args.hp),
                ("--env", args.env),
                ("--eval-freq", args.eval_freq),
                ("--config", args.config),
                ("--run-dir", args.run_dir),
            )
            if v is not None
        ]
        if given:
            raise UserError(
                f"--resume continues a run with its own config.yaml; {', '.join(given)} cannot be changed "
                "(only --timesteps)"
            )
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"cannot resume {str(run_dir)!r}: it is not a run folder (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml")
        if args.timesteps is not None:
            cfg = cfg.replace(algo={"timesteps": args.timesteps})
    else:
        cfg = config_from_args(args)
        run_dir = Path(args.run_dir) if args.run_dir else _new_run_dir(cfg)
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):  # fail before loading torch
            raise UserError(
                f"run folder {str(run_dir)!r} already exists and is not empty; choose another --run-dir "
                f"(or --resume {run_dir} to continue it)"
            )
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    from agents.algos import validate_clip

    validate_clip(cfg.clip)  # a bad clipper name fails here, before the data is loaded
    import torch

    from agents.run import train

    # Small MLPs train fastest on one thread; several threads spin-wait on each other on a busy machine.
    torch.set_num_threads(args.threads or 1)
    progress = sys.stdout.isatty() if args.progress is None else args.progress
    verb = "resuming" if args.resume else "training"
    what = ""
    if cfg.task == "execution":
        what = f"for the execution task (horizon {cfg.exec_env.horizon_bars} bars) "
    print(
        f"{verb} {cfg.algo.algo} {what}(policy clip {cfg.clip.policy}, value clip {cfg.clip.value}) on "
        f"{cfg.data.data}{' (trained on ' + cfg.data.train_data + ')' if cfg.data.train_data else ''} "
        f"for {cfg.algo.timesteps} steps, seed {cfg.algo.seed}",
        flush=True,
    )

    def started(path: Path) -> None:
        print(f"run folder: {path}")
        print(f"watch it:   tensorboard --logdir {path.parent}", flush=True)

    result = train(
        cfg,
        run_dir,
        progress_bar=progress,
        resume=args.resume is not None,
        verbose=int(args.verbose),
        on_start=started,
    )
    status = "interrupted (Ctrl-C), model saved" if result.interrupted else "done"
    if result.diverged:
        status = f"diverged: {result.diverged_reason}"
    print(f"{status}: {result.timesteps} steps in {result.wall_time_s:.0f} s -> {run_dir / 'model.zip'}")
    if result.clip_fraction:
        fr = ", ".join(f"{k} {v:.1%}" for k, v in result.clip_fraction.items())
        nf = ", ".join(f"{k} {v}" for k, v in result.nonfinite.items())
        print(f"updates clipped: {fr}; skipped (non-finite): {nf}")
    if result.best_eval is not None:
        m = result.best_eval
        if cfg.task == "execution":
            best = (
                f"mean shortfall {m['shortfall_bps']:.2f} bp (TWAP {m['twap_shortfall_bps']:.2f} bp, "
                f"{m['episodes']} episodes)"
            )
        else:
            best = f"Sharpe {m['sharpe']:.2f}, return {m['total_return']:+.2%}"
        print(f"best validation: {best} -> {run_dir / 'best_model.zip'}")
    print(f"evaluate:   python train.py evaluate {run_dir}")
    return 130 if result.interrupted else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():  # before the heavy imports: a typo should fail instantly
        raise UserError(f"run folder {args.run_dir!r} does not exist")
    from agents.run import EQUITY_PLOT, SHORTFALL_PLOT, ExecEvalReport, evaluate, format_table

    report = evaluate(args.run_dir, data=args.data, split=args.split, funding=args.funding, model=args.model)
    a, b = report.period
    if isinstance(report, ExecEvalReport):
        n_bars = len({bar for bar, _, _ in report.episodes})
        sides = sorted({"buy" if s > 0 else "sell" for _, s, _ in report.episodes})
        print(
            f"{args.split} period: bars [{a}, {b}) ({b - a} bars), {len(report.episodes)} execution episodes "
            f"({n_bars} arrival bars x {'/'.join(sides)}), the same for every policy; deterministic policy"
        )
        print("implementation shortfall in bp of the arrival notional, fees included (lower is better)")
        plot = SHORTFALL_PLOT
    else:
        print(f"{args.split} period: bars [{a}, {b}) ({b - a} bars), deterministic policy, after all costs")
        plot = EQUITY_PLOT
    print(format_table(report))
    print(f"wrote {Path(args.run_dir) / 'eval.json'} and {Path(args.run_dir) / plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "train")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            parser.print_help()
            return 2
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("PERPCLIP_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
