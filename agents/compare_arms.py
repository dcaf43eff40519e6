"""Stress axes of ``train.py compare``: learning rate, optimizer, reward scale and market.

Under Adam a huge gradient cannot make a huge step (the step is bounded by about the learning rate); its
damage is an inflated second moment. Clipping should matter more with plain SGD, large learning rates,
unnormalized reward scales and heavy-tailed markets. Each axis given on the command line is crossed with the
others into *arms*; every arm is crossed with clippers x seeds x folds, and the paired statistics compare
clippers within an arm (same seed, same fold, same arm), so a user can see where their own setting sits.

- ``--lr 3e-4,1e-3,3e-3``: ``algo.hyperparams.learning_rate`` of the arm.
- ``--optimizer adam,sgd,sgd:momentum=0.9``: the torch optimizer of every network
  (``hyperparams.policy_kwargs.optimizer_class``, mapped to the class by :mod:`agents.algos`). ``adam`` is
  ``torch.optim.Adam`` (SB3's default for PPO/SAC/TD3; A2C's own default, RMSprop, is replaced), with SB3's
  ``eps=1e-5`` for the on-policy algorithms. ``sgd`` is ``torch.optim.SGD`` with the same learning rate and
  no momentum unless given: a step is ``lr * gradient``, so its size grows with the gradient -- what
  clipping bounds. Keywords after ``:`` go to the optimizer (``momentum``, ``nesterov``, ``weight_decay``,
  ``dampening``).
- ``--reward-scale 1,100``: multiplies the reward of the *training* env (``algo.train_reward_scale``);
  validation, evaluation and the baselines see the real rewards. Reward normalization (VecNormalize,
  ``algo.normalize_reward``, on by default) divides by the running std of the return and would undo a
  constant scale, so with this axis every arm, scale 1 included, trains with reward normalization off:
  the scale-1 arm is the raw reward (per-bar log returns, ~1e-3), the others that reward times the scale.
- ``--markets 'synthetic:gbm:n_bars=4000;synthetic:garch:n_bars=4000,df=3;btcusdt-1h'``: the data of the arm
  (``data.data``, anything ``--data`` accepts). Each market gets its own walk-forward folds (markets differ
  in length). ``;`` separates markets; a comma token with ``=`` and no ``:`` continues the previous spec
  (as in ``--clips``), so ``synthetic:jump:n_bars=4000,seed=1,btcusdt-1h`` is two markets.

No torch at import; the optimizer keywords are checked by constructing the optimizer.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
from collections.abc import Sequence
from typing import Any

from agents.compare_spec import Arm
from agents.errors import UserError

__all__ = [
    "ARM_DEFINITIONS",
    "AXES",
    "OPTIMIZERS",
    "add_arm_options",
    "apply_arm",
    "arms_from_args",
    "make_arms",
    "parse_markets",
    "parse_optimizers",
    "parse_positive_floats",
]

#: The axes, in the order they appear in arm labels and results.csv columns.
AXES = ("lr", "optimizer", "reward_scale", "market")
#: ``--optimizer`` names -> torch.optim class names (:data:`agents.algos.OPTIMIZERS`, kept equal by a test;
#: not imported from there: agents.algos loads SB3).
OPTIMIZERS = {"adam": "Adam", "sgd": "SGD"}

#: What the arm columns mean (summary.md; a constant: ``python -OO`` strips docstrings).
ARM_DEFINITIONS = """\
- **arm**: one combination of the stress axes given (`--lr`, `--optimizer`, `--reward-scale`, `--markets`);
  every clipper, seed and fold runs in every arm, and the paired statistics compare clippers within an arm
  (same seed, same fold, same arm; Holm's correction within the arm).
- **lr**: the learning rate of every network. **optimizer**: `adam` is torch's Adam (SB3's eps 1e-5 for
  on-policy algorithms); `sgd` is plain torch SGD (no momentum unless given, e.g. `sgd:momentum=0.9`): its
  step is lr x gradient, so a spike in the gradient is a spike in the step, unlike Adam's.
- **reward_scale**: the training env's reward is multiplied by it (validation and test see real rewards);
  reward normalization is off in every arm of this axis (it would undo a constant scale).
- **market**: the data of the arm, with its own walk-forward folds."""


def parse_positive_floats(text: str, *, option: str) -> list[float]:
    """``"3e-4,1e-3"`` -> ``[0.0003, 0.001]``: distinct finite numbers > 0 (values by envs.spec.parse_value).

    Raises:
        UserError: naming ``option`` and the bad value.
    """
    from envs.spec import parse_value, split_top_level

    out: list[float] = []
    for token in split_top_level(str(text)):
        value = parse_value(token) if token else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise UserError(
                f"{option}: expected a comma list of positive numbers (e.g. {option} 1e-4,1e-3), got "
                f"{token!r} in {text!r}"
            )
        if float(value) in out:
            raise UserError(f"{option}: {token!r} is given twice in {text!r}; each value must be distinct")
        out.append(float(value))
    return out


def _check_optimizer_kwargs(name: str, kwargs: dict[str, Any], text: str) -> None:
    import torch

    cls = getattr(torch.optim, OPTIMIZERS[name])
    try:
        cls([torch.zeros(1, requires_grad=True)], lr=1e-3, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(
            f"--optimizer: invalid optimizer spec {text!r}: {' '.join(str(err).split())} "
            "(e.g. --optimizer adam,sgd,sgd:momentum=0.9)"
        ) from None


def parse_optimizers(texts: str | Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """``--optimizer`` values -> ``[(name, kwargs), ...]``; the grammar is ``--clips``' (name[:k=v,...]).

    Raises:
        UserError: an unknown name, ``lr`` among the keywords (that is ``--lr``), keywords the optimizer
            does not take, or a repeated spec.
    """
    from clipping.spec import parse_clip_specs
    from envs.spec import parse_value

    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for whole in [texts] if isinstance(texts, str) else list(texts):
        try:
            specs = parse_clip_specs(whole, parse_value, where="--optimizer")
        except ValueError as err:
            raise UserError(str(err)) from None
        for parts in specs:
            if len(parts) != 1:
                raise UserError(f"--optimizer: {whole!r}: '/' has no meaning here; e.g. --optimizer adam,sgd")
            name, kwargs = parts[0][0].lower(), dict(parts[0][1])
            if name not in OPTIMIZERS:
                raise UserError(
                    f"--optimizer: unknown optimizer {parts[0][0]!r} in {whole!r}; choose from "
                    f"{', '.join(OPTIMIZERS)} (e.g. --optimizer adam,sgd:momentum=0.9)"
                )
            text = _optimizer_text(name, kwargs)
            if "lr" in kwargs:
                raise UserError(f"--optimizer: {text!r} sets lr; give learning rates with --lr")
            _check_optimizer_kwargs(name, kwargs, text)
            if text in seen:
                raise UserError(f"--optimizer: {text!r} is given twice; each spec must be distinct")
            seen.add(text)
            out.append((name, kwargs))
    return out


def _optimizer_text(name: str, kwargs: dict[str, Any]) -> str:
    from agents.compare_spec import ClipPart

    return ClipPart(name, tuple(kwargs.items())).text  # the same canonical ``name:k=v`` text as a clipper


def parse_markets(texts: str | Sequence[str]) -> list[str]:
    """``--markets`` values -> data specs. ``;`` separates specs; a comma token with ``=`` and no ``:``
    before it continues the previous one (``synthetic:gbm:n_bars=4000,seed=1,btcusdt-1h``: two specs).

    Synthetic specs are parsed here (cheap) so a typo fails now; names and files are loaded by the compare.

    Raises:
        UserError: an empty entry, a bad synthetic spec or a repeated market.
    """
    from envs.spec import split_top_level
    from envs.synthetic import parse_synthetic_spec

    out: list[str] = []
    for whole in [texts] if isinstance(texts, str) else list(texts):
        for chunk in split_top_level(whole, ";"):
            specs: list[str] = []
            for token in split_top_level(chunk):
                key, eq, _ = token.partition("=")
                if specs and eq and ":" not in key:
                    specs[-1] += "," + token
                elif not token:
                    raise UserError(
                        f"--markets: empty entry in {whole!r}; e.g. --markets 'synthetic:gbm;btcusdt-1h'"
                    )
                else:
                    specs.append(token)
            for spec in specs:
                if spec.lower().startswith("synthetic:"):
                    try:
                        parse_synthetic_spec(spec)
                    except ValueError as err:
                        raise UserError(f"--markets: {err}") from None
                if spec in out:
                    raise UserError(f"--markets: {spec!r} is given twice; each market must be distinct")
                out.append(spec)
    return out


def make_arms(
    *,
    lr: Sequence[float] | None = None,
    optimizer: Sequence[tuple[str, dict[str, Any]]] | None = None,
    reward_scale: Sequence[float] | None = None,
    market: Sequence[str] | None = None,
) -> list[Arm]:
    """Every combination of the given axes (``None``: axis not given), in axis order; ``[Arm()]`` if none.

    The optimizer is stored as its canonical text (``sgd:momentum=0.9``), the form results.csv shows.
    """
    given: list[tuple[str, list[Any]]] = []
    for axis, values in (
        ("lr", lr),
        ("optimizer", [_optimizer_text(n, k) for n, k in optimizer] if optimizer else optimizer),
        ("reward_scale", reward_scale),
        ("market", market),
    ):
        if values:
            given.append((axis, list(values)))
    if not given:
        return [Arm()]
    names = [axis for axis, _ in given]
    arms = [Arm(tuple(zip(names, combo, strict=True))) for combo in itertools.product(*(v for _, v in given))]
    slugs = [a.slug for a in arms]
    if len(set(slugs)) != len(slugs):
        raise UserError("two arms map to the same run folder name; make the --markets specs differ more")
    return arms


def _optimizer_from_text(text: str) -> tuple[str, dict[str, Any]]:
    (parsed,) = parse_optimizers(text)
    return parsed


def apply_arm(base_config: dict[str, Any], arm: Arm) -> dict[str, Any]:
    """The RunConfig dict of ``arm``: ``base_config`` with the arm's axis values set (a copy).

    Raises:
        UserError: the base config sets what an axis sets (``--hp learning_rate`` with ``--lr``, optimizer
            settings with ``--optimizer``, ``--train-data``/``--funding`` with ``--markets``).
    """
    cfg = copy.deepcopy(base_config)
    if not arm.values:
        return cfg
    algo = cfg.setdefault("algo", {})
    hp = algo.setdefault("hyperparams", {})
    data = cfg.setdefault("data", {})
    for axis, value in arm.values:
        if axis == "lr":
            if "learning_rate" in base_config.get("algo", {}).get("hyperparams", {}):
                raise UserError(
                    "--lr and --hp learning_rate (or the config's hyperparams.learning_rate) both set the "
                    "learning rate; give it in one place"
                )
            hp["learning_rate"] = float(value)
        elif axis == "optimizer":
            pk = hp.setdefault("policy_kwargs", {})
            if {"optimizer_class", "optimizer_kwargs"} & set(pk):
                raise UserError(
                    "--optimizer and hyperparams.policy_kwargs optimizer_class/optimizer_kwargs both set the "
                    "optimizer; give it in --optimizer only (e.g. --optimizer sgd:momentum=0.9)"
                )
            name, kwargs = _optimizer_from_text(value)
            pk["optimizer_class"] = name
            if kwargs:
                pk["optimizer_kwargs"] = kwargs
        elif axis == "reward_scale":
            algo["train_reward_scale"] = float(value)
            # VecNormalize would divide the scale out again (see the module docstring).
            algo["normalize_reward"] = False
        elif axis == "market":
            for key, option in (("train_data", "--train-data"), ("funding", "--funding")):
                if data.get(key):
                    raise UserError(
                        f"--markets with {option} {data[key]!r}: {option} belongs to one market; drop it "
                        "(embedded names and synthetic markets carry their funding)"
                    )
            data["data"] = str(value)
        else:  # pragma: no cover (Arm values come from make_arms)
            raise ValueError(f"unknown arm axis {axis!r}")
    return cfg


def add_arm_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--lr``, ``--optimizer``, ``--reward-scale`` and ``--markets`` to the ``compare`` parser."""
    group = parser.add_argument_group(
        "stress axes (each crosses with clippers x seeds x folds; an arm = one combination)"
    )
    group.add_argument("--lr", metavar="LIST", help="learning rates, e.g. 3e-4,1e-3,3e-3")
    group.add_argument(
        "--optimizer",
        action="append",
        metavar="LIST",
        help="optimizers: adam, sgd (plain SGD: step = lr x gradient), sgd:momentum=0.9 (repeatable)",
    )
    group.add_argument(
        "--reward-scale",
        metavar="LIST",
        help="training-reward multipliers, e.g. 1,100 (evaluation unaffected; turns reward normalization off "
        "in every arm, since it would undo the scale)",
    )
    group.add_argument(
        "--markets",
        action="append",
        metavar="SPECS",
        help="data specs separated by ';', e.g. 'synthetic:gbm:n_bars=4000;synthetic:garch:n_bars=4000,df=3;"
        "btcusdt-1h' (each with its own folds; repeatable)",
    )


def arms_from_args(args: argparse.Namespace) -> list[Arm]:
    """The arms of a ``compare`` command line (``[Arm()]`` when no axis is given)."""
    lr = getattr(args, "lr", None)
    scale = getattr(args, "reward_scale", None)
    opt = getattr(args, "optimizer", None)
    markets = getattr(args, "markets", None)
    return make_arms(
        lr=parse_positive_floats(lr, option="--lr") if lr is not None else None,
        optimizer=parse_optimizers(opt) if opt else None,
        reward_scale=parse_positive_floats(scale, option="--reward-scale") if scale is not None else None,
        market=parse_markets(markets) if markets else None,
    )
