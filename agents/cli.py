"""Command line of ``train.py`` (and the ``perpclip`` console script): train (default), ``evaluate``,
``compare``, ``tune``, ``help``. The examples are :data:`EXAMPLES`.

User mistakes (:class:`agents.errors.UserError`) print ``error: <message>`` on one line and exit with status
2 (no traceback; set ``PERPCLIP_DEBUG=1`` to see one); any other exception is a bug and keeps its traceback.
Ctrl-C saves the model and exits with status 130.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from pathlib import Path

from agents.compare import register_cli
from agents.config import RunConfig, load_config
from agents.errors import UserError
from agents.options import add_run_options, config_from_args, given_run_options
from agents.tune import register_cli as register_tune_cli

__all__ = ["EXAMPLES", "build_parser", "config_from_args", "main", "main_exit"]

SUBCOMMANDS = ("train", "evaluate", "compare", "tune", "help")

#: The examples shown by ``--help`` (a constant, not a docstring: ``python -OO`` strips docstrings).
EXAMPLES = """\
examples:
  python train.py                                   # PPO + zclip on the embedded BTCUSDT 1h bars
  python train.py --algo sac --clip autoclip --timesteps 50000
  python train.py --policy-clip zclip:z_thresh=2.0,alpha=0.9 --value-clip norm:max_norm=1.0
  python train.py --data prices.parquet --funding funding.csv --fill-gaps
  python train.py --resume runs/ppo-zclip-20250101-120000 --timesteps 20000
  python train.py evaluate runs/ppo-zclip-20250101-120000 [--split test] [--data ...]
  python train.py compare --clips none,norm,zclip --seeds 3
  python train.py tune --clip zclip --trials 20 --seeds 2 --outer-folds 3 --inner-folds 2
  python train.py --task execution --env horizon_bars=8,quantity_adv=0.02 --timesteps 100000"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train RL trading agents on crypto perpetual futures with clipped policy and value "
        "updates. Without a subcommand, trains (see 'train.py train --help').",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,compare,tune,help}")
    t = sub.add_parser("train", help="train an agent (the default)")
    add_run_options(t)
    t.add_argument("--run-dir", metavar="DIR", help="run folder (default runs/<algo>-<clip>-<timestamp>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue training the run in RUN_DIR")
    t.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show a progress bar (default: when stdout is a terminal)",
    )
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    t.add_argument("--threads", type=int, help="torch CPU threads (default 1: fastest for small networks)")
    t.add_argument("--verbose", action="store_true", help="print SB3's training tables")
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("evaluate", help="evaluate a saved run on its held-out test period next to baselines")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by train.py")
    e.add_argument("--data", help="evaluate on this data instead of the run's (same split fractions)")
    e.add_argument(
        "--funding", metavar="PATH", action="append", help="funding-rate file for --data (repeatable)"
    )
    e.add_argument("--split", default="test", help="test (default), val, train or all")
    e.add_argument(
        "--model",
        default="auto",
        choices=("auto", "final", "best"),
        help="auto (default): best_model.zip where training validated (early stopping), else model.zip; "
        "final: model.zip; best: best_model.zip",
    )
    e.set_defaults(func=_cmd_evaluate)
    register_cli(sub)
    register_tune_cli(sub)
    h = sub.add_parser("help", help="show this help, or a subcommand's (train.py help compare)")
    h.add_argument("topic", nargs="?", choices=SUBCOMMANDS[:-1], help="a subcommand")
    h.set_defaults(func=lambda args: _cmd_help(parser, sub, args))
    return parser


def _cmd_help(
    parser: argparse.ArgumentParser, sub: argparse._SubParsersAction, args: argparse.Namespace
) -> int:
    (sub.choices[args.topic] if args.topic else parser).print_help()
    return 0


def _new_run_dir(cfg: RunConfig, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"{cfg.spec.run_prefix}{cfg.algo.algo}-{cfg.clip.label}-{stamp}"
    path, n = base, 1
    while path.exists():  # never reuse a folder (two runs started in the same second)
        path = base.with_name(f"{base.name}-{n}")
        n += 1
    return path


def _cmd_train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        given = given_run_options(args) + (["--run-dir"] if args.run_dir is not None else [])
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
    print(
        f"{verb} {cfg.algo.algo} {cfg.spec.describe(cfg)}(policy clip {cfg.clip.policy}, value clip "
        f"{cfg.clip.value}) on "
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
        metric = cfg.eval.metric
        best = cfg.spec.best_line(m) if cfg.spec.best_line is not None else f"{metric} {m.get(metric)}"
        print(f"best validation: {best} -> {run_dir / 'best_model.zip'}")
    print(f"evaluate:   python train.py evaluate {run_dir}")
    return 130 if result.interrupted else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():  # before the heavy imports: a typo should fail instantly
        raise UserError(f"run folder {args.run_dir!r} does not exist")
    from agents.run import RunDir, evaluate

    funding = args.funding[0] if args.funding and len(args.funding) == 1 else args.funding
    report = evaluate(args.run_dir, data=args.data, split=args.split, funding=funding, model=args.model)
    run = RunDir(args.run_dir)
    which = run.model(run.resolve_model(args.model)).name
    auto_best = args.model == "auto" and which == "best_model.zip"
    why = " (selected on the validation period; --model final for the last)" if auto_best else ""
    for line in report.describe():
        print(line)
    print(report.table())
    print(f"model: {which}{why}")
    cfg = load_config(run.config)
    plot = run.plot(cfg.spec.plot_name, args.split, args.model)
    print(f"wrote {run.eval_json(args.split, args.model)} and {plot}")
    return 0


def _stdout_gone() -> None:
    # The reader of a pipe left (``train.py evaluate ... | head``): point stdout at /dev/null so the
    # interpreter's final flush does not raise a second BrokenPipeError.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "train")
    parser = build_parser()
    if not os.environ.get("PERPCLIP_DEBUG"):
        warnings.showwarning = _one_line_warning
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            parser.print_help()
            return 2
        status = int(args.func(args))
        sys.stdout.flush()  # inside the try: a reader that left (``| head``) is handled below
        return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _stdout_gone()
        return 0
    except UserError as exc:
        if os.environ.get("PERPCLIP_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2


#: Warnings already shown by this process, numbers blanked (see :func:`_one_line_warning`).
_SHOWN: set[tuple[type[Warning], str]] = set()


def _one_line_warning(message: Warning | str, category: type[Warning], *args: object, **kw: object) -> None:
    """Warnings as one ``warning: ...`` line on stderr: the user needs the message (it says what to pass),
    not the library line that raised it (``PERPCLIP_DEBUG=1`` keeps Python's format). A message that differs
    from one already shown only in its numbers is not repeated (``evaluate`` runs the agent and every
    baseline in envs of their own, and each would say once that a notional passed the flat-rate bracket)."""
    text = " ".join(str(message).split())
    key = (category, re.sub(r"\d[\d,.]*", "#", text))
    if key in _SHOWN:
        return
    _SHOWN.add(key)
    print(f"warning: {text}", file=sys.stderr)


def main_exit() -> None:
    """The ``perpclip`` console script: :func:`main` with its status as the exit code."""
    sys.exit(main())
