"""The run options of ``train.py`` and ``train.py compare``, declared once, and the RunConfig they make.

Every option that sets a field of a :class:`~agents.config.RunConfig` is one :class:`Option` of
:data:`RUN_OPTIONS`; :func:`add_run_options` adds them to the ``train`` parser and (all but the per-run
ones: seed, clippers) to the ``compare`` parser, and :func:`config_from_args` applies them over ``--config``
(or the defaults), so an option means the same thing in both commands. Values of ``--hp``/``--env`` and
clipper specs are read by the one value parser (:func:`envs.spec.parse_value`). No torch, no SB3.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

from agents.config import ALGO_NAMES, SB3_CLIP, RunConfig, load_config, parse_clip_spec, parse_kwargs
from agents.errors import UserError
from agents.tasks import TASKS

__all__ = ["RUN_OPTIONS", "Option", "add_run_options", "config_from_args", "given_run_options"]


@dataclass(frozen=True)
class Option:
    """One command-line option of a run.

    Attributes:
        flags: the option strings (``--n-envs``).
        kwargs: ``argparse.add_argument`` keywords (help, type, metavar, action).
        per_run: set per run by ``compare`` (seed, clippers): not a compare option.
    """

    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    per_run: bool = False

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest", self.flags[0].lstrip("-").replace("-", "_"))


class _ClipHelp(str):
    """The ``--clip`` help, listing ``clipping.available_clippers()`` (built-ins and installed plugins).

    argparse formats every help string with ``help % params`` only when help is printed; the names are
    looked up there, so that parsing a command line does not import ``clipping`` (and torch) just for a
    help text nobody asked for.
    """

    def __mod__(self, params: Any) -> str:
        from clipping import available_clippers

        names = ", ".join(available_clippers())
        return str(self).replace("{names}", names) % params


def _task_help() -> str:
    return (
        f"what to learn: {', '.join(TASKS)} (default trading: take positions, CryptoFutures-v0; execution: "
        "execute a parent order within horizon_bars, judged by implementation shortfall); --env then sets "
        "that task's env arguments"
    )


RUN_OPTIONS: tuple[Option, ...] = (
    Option(("--task",), {"metavar": "TASK", "help": None}),
    Option(("--algo",), {"help": f"algorithm: {', '.join(ALGO_NAMES)} (default ppo)"}),
    Option(
        ("--clip",),
        {
            "metavar": "NAME[:K=V,...]",
            "help": _ClipHelp(
                "clipper for both the policy and the value update, e.g. zclip or autoclip:quantile=0.1 "
                f"(names: {{names}}; a plugin class: module.path:Class[:K=V,...] with its folder on "
                f"PYTHONPATH; '{SB3_CLIP}': SB3's own max_grad_norm, PPO/A2C/RecurrentPPO only)"
            ),
        },
        per_run=True,
    ),
    Option(
        ("--policy-clip",),
        {"metavar": "NAME[:K=V,...]", "help": "clipper of the policy (actor) update"},
        True,
    ),
    Option(
        ("--value-clip",), {"metavar": "NAME[:K=V,...]", "help": "clipper of the value (critic) update"}, True
    ),
    Option(
        ("--data",),
        {"help": "embedded name (btcusdt-1h), CSV/Parquet path, or synthetic:<kind>[:k=v,...]"},
    ),
    Option(
        ("--funding",),
        {
            "metavar": "PATH",
            "action": "append",
            "help": "funding-rate file (CSV/Parquet) for --data; repeat to merge several files",
        },
    ),
    Option(
        ("--funding-tz",),
        {"metavar": "TZ", "help": "time zone of naive funding timestamps, e.g. UTC+8 (default: UTC)"},
    ),
    Option(
        ("--fill-gaps",),
        {
            "action": "store_true",
            "default": None,
            "help": "forward-fill missing bars of --data (volume 0) instead of refusing the file",
        },
    ),
    Option(
        ("--train-data",),
        {
            "metavar": "SPEC",
            "help": "train on this market instead (e.g. synthetic:garch:n_bars=50000,seed=1); "
            "validation/test stay on --data",
        },
    ),
    Option(("--timesteps",), {"type": int, "help": "environment steps to train (more steps when resuming)"}),
    Option(("--seed",), {"type": int, "help": "random seed (same seed -> same run)"}, per_run=True),
    Option(
        ("--n-envs",),
        {"type": int, "help": "parallel training envs (default: the algorithm's own; PPO 32, the others 16)"},
    ),
    Option(("--net-arch",), {"metavar": "N,N", "help": "hidden layer sizes, e.g. 64,64"}),
    Option(
        ("--hp",),
        {
            "action": "append",
            "metavar": "K=V,...",
            "help": "SB3 hyperparameters, e.g. --hp learning_rate=1e-4,n_steps=256 (repeatable)",
        },
    ),
    Option(
        ("--env",),
        {
            "action": "append",
            "metavar": "K=V,...",
            "help": "env arguments, e.g. --env window=16,episode_bars=512,reward=differential_sharpe; with "
            "--task execution e.g. --env horizon_bars=8,quantity_adv=[0.01,0.03],side=buy,reward_scale=0.1",
        },
    ),
    Option(("--eval-freq",), {"type": int, "help": "validate every N steps (0: never)"}),
    Option(
        ("--config",),
        {"metavar": "YAML", "help": "config file (e.g. a run's config.yaml); options override it"},
    ),
)


def add_run_options(parser: argparse.ArgumentParser, *, per_run: bool = True) -> None:
    """Add :data:`RUN_OPTIONS` to ``parser`` (without the per-run ones when ``per_run`` is False)."""
    for opt in RUN_OPTIONS:
        if opt.per_run and not per_run:
            continue
        kwargs = dict(opt.kwargs)
        if opt.flags == ("--task",):
            kwargs["help"] = _task_help()
        parser.add_argument(*opt.flags, **kwargs)


def given_run_options(args: argparse.Namespace) -> list[str]:
    """The run options the user gave (``--resume`` refuses all of them but ``--timesteps``)."""
    return [
        opt.flags[0]
        for opt in RUN_OPTIONS
        if opt.flags[0] != "--timesteps" and getattr(args, opt.dest, None) is not None
    ]


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of a train command: ``--config`` (or defaults), then every given option over it."""
    cfg = load_config(args.config) if getattr(args, "config", None) else RunConfig()
    task = getattr(args, "task", None)
    if task is not None:
        cfg = cfg.with_task(task)
    get = lambda name: getattr(args, name, None)  # noqa: E731 (compare's namespace lacks per-run options)
    algo: dict[str, Any] = {}
    for key in ("algo", "timesteps", "seed", "n_envs"):
        if get(key) is not None:
            algo[key] = get(key)
    if get("net_arch") is not None:
        try:
            algo["net_arch"] = [int(x) for x in args.net_arch.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--net-arch: expected layer sizes like 64,64, got {args.net_arch!r}") from None
    if get("hp"):
        hp = dict(cfg.algo.hyperparams)
        for item in args.hp:
            hp.update(parse_kwargs(item, where="--hp"))
        algo["hyperparams"] = hp
    clip: dict[str, Any] = {}
    if get("clip") is not None:
        name, kwargs = parse_clip_spec(args.clip)
        clip.update(policy=name, policy_kwargs=kwargs, value=name, value_kwargs=dict(kwargs))
    for part in ("policy", "value"):
        spec = get(f"{part}_clip")
        if spec is not None:
            name, kwargs = parse_clip_spec(spec)
            clip.update({part: name, f"{part}_kwargs": kwargs})
    data: dict[str, Any] = {}
    for key in ("data", "train_data", "funding_tz", "fill_gaps"):
        if get(key) is not None:
            data[key] = get(key)
    if get("funding"):
        data["funding"] = args.funding[0] if len(args.funding) == 1 else list(args.funding)
    env: dict[str, Any] = {}
    section = cfg.spec.section
    env_fields = {f.name for f in fields(cfg.spec.config_cls)}
    for item in get("env") or ():
        kw = parse_kwargs(item, where="--env")
        if "kwargs" not in env_fields:  # every argument of the env is a field: unknown ones fail by name
            env.update(kw)
            continue
        # The config passes unknown arguments through to the env in ``kwargs`` (the env checks them).
        env.update({k: v for k, v in kw.items() if k in env_fields})
        extra = {k: v for k, v in kw.items() if k not in env_fields}
        if extra:
            env["kwargs"] = {**cfg.task_env.kwargs, **env.get("kwargs", {}), **extra}
    evl: dict[str, Any] = {}
    if get("eval_freq") is not None:
        evl["eval_freq"] = args.eval_freq
    sections = (("algo", algo), ("clip", clip), ("data", data), (section, env), ("eval", evl))
    changes = {k: v for k, v in sections if v}
    return cfg.replace(**changes) if changes else cfg
