"""SB3 algorithms behind one interface: defaults, construction with clippers, save and load.

``build_model`` creates the algorithm with SB3's joint clipping disabled (``max_grad_norm=inf``) and hooks the
policy and value clippers into its optimizer(s) (:mod:`agents.clip_hooks`); ``save_model`` / ``load_model``
keep the clipper statistics inside ``model.zip`` and re-attach the hooks after loading.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import NormalActionNoise

from agents.clip_hooks import ClipHooks, attach_clippers, read_clipper_state, write_clipper_state
from agents.config import ALGO_NAMES, AlgoConfig, ClipConfig
from agents.errors import UserError

__all__ = [
    "ALGOS",
    "OPTIMIZERS",
    "AlgoSpec",
    "ClippedModel",
    "build_model",
    "load_model",
    "resolve_hyperparams",
    "resolve_n_envs",
    "save_model",
]


@dataclass(frozen=True)
class AlgoSpec:
    """How perpclip runs one SB3 algorithm."""

    cls: type[BaseAlgorithm]
    policy: str
    dict_policy: str
    on_policy: bool
    continuous_only: bool
    defaults: dict[str, Any]
    n_envs: int = 16  # AlgoConfig.n_envs when that is None


# Defaults for hourly trading: chosen for short CPU runs on ~1k-100k bars, not tuned on the test period
# (screening on the planted markets' validation periods: benchmarks/LEARNING.md).
# gamma 0.99 (a ~100-bar = 4-day horizon): funding is paid every 8 bars and fees on every trade, so the value
# of holding a position is a multi-bar quantity.
# PPO rollouts: 32 batched envs (AlgoSpec.n_envs) x n_steps 128 = 4096 frames per update in minibatches of
# 1024 keep the per-frame cost of the update small. 32 x 128 replaced 16 x 256 (same rollout, same
# minibatches, half the policy calls and vector steps per rollout: the default run 30 -> 25 s): over seeds 0-2
# on the planted phi=0.2 market its test Sharpe was 5.6-8.2 against 4.8-6.2, and on phi=0.05 it stayed out
# in every seed tried (LEARNING.md, "rollout shape"). 64 x 64 was faster still (21 s) but traded its way to
# -29 % on phi=0.05 with seed 0, which learning.py runs.
# log_std_init -1.5 (std 0.22 instead of 1 on a [-1, 1] target): with std 1 the early policy swings between
# the bounds and learns to live with churn; with 0.22 turnover fell 5-45x on the planted markets.
# SAC: 2 gradient steps per vector step of 16 envs (one per 8 frames) instead of one per frame.
ALGOS: dict[str, AlgoSpec] = {
    "ppo": AlgoSpec(
        PPO,
        "MlpPolicy",
        "MultiInputPolicy",
        True,
        False,
        {
            "learning_rate": 3e-4,
            "n_steps": 128,
            "batch_size": 1024,
            "n_epochs": 10,
            "gamma": 0.99,
            "gae_lambda": 0.95,
            "ent_coef": 0.0,
            "clip_range": 0.2,
            "policy_kwargs": {"log_std_init": -1.5},
        },
        n_envs=32,
    ),
    "a2c": AlgoSpec(
        A2C,
        "MlpPolicy",
        "MultiInputPolicy",
        True,
        False,
        {"learning_rate": 7e-4, "n_steps": 16, "gamma": 0.99, "gae_lambda": 1.0, "ent_coef": 0.0},
    ),
    "recurrent_ppo": AlgoSpec(
        RecurrentPPO,
        "MlpLstmPolicy",
        "MultiInputLstmPolicy",
        True,
        False,
        {
            "learning_rate": 3e-4,
            "n_steps": 256,
            "batch_size": 128,
            "n_epochs": 10,
            "gamma": 0.99,
            "gae_lambda": 0.95,
            "ent_coef": 0.0,
            "policy_kwargs": {"lstm_hidden_size": 64},
        },
    ),
    "sac": AlgoSpec(
        SAC,
        "MlpPolicy",
        "MultiInputPolicy",
        False,
        True,
        {
            "learning_rate": 3e-4,
            "buffer_size": 200_000,
            "learning_starts": 1_000,
            "batch_size": 256,
            "tau": 0.005,
            "gamma": 0.99,
            "train_freq": 1,
            "gradient_steps": 2,
        },
    ),
    "td3": AlgoSpec(
        TD3,
        "MlpPolicy",
        "MultiInputPolicy",
        False,
        True,
        {
            "learning_rate": 1e-3,
            "buffer_size": 200_000,
            "learning_starts": 1_000,
            "batch_size": 256,
            "tau": 0.005,
            "gamma": 0.99,
            "train_freq": 1,
            "gradient_steps": -1,
            "action_noise": {"kind": "normal", "sigma": 0.1},
        },
    ),
}
assert set(ALGOS) == set(ALGO_NAMES)

#: Names ``hyperparams.policy_kwargs.optimizer_class`` accepts (YAML-safe) -> the ``torch.optim`` class name.
#: ``sgd`` is plain ``torch.optim.SGD``: step = lr x gradient (momentum etc. via ``optimizer_kwargs``).
OPTIMIZERS = {"adam": "Adam", "sgd": "SGD"}


def _optimizer_name(value: Any) -> str:
    """The lower-case name of an ``optimizer_class`` value (a name of :data:`OPTIMIZERS` or a torch class)."""
    name = value.__name__ if isinstance(value, type) else str(value)
    key = name.rpartition(".")[2].lower()
    if key not in OPTIMIZERS:
        raise UserError(
            f"hyperparams.policy_kwargs.optimizer_class {name!r} is not supported; use one of "
            f"{', '.join(OPTIMIZERS)} (e.g. compare --optimizer adam,sgd)"
        )
    return key


def resolve_n_envs(algo: AlgoConfig) -> int:
    """``algo.n_envs``, or the algorithm's default (``AlgoSpec.n_envs``) where it is None."""
    return ALGOS[algo.algo].n_envs if algo.n_envs is None else algo.n_envs


def resolve_hyperparams(algo: AlgoConfig, clip: ClipConfig) -> dict[str, Any]:
    """perpclip's defaults for ``algo.algo`` overlaid with ``algo.hyperparams`` (policy_kwargs merged
    key-wise).

    With a perpclip clipper active, ``max_grad_norm`` is not a hyperparameter (it is forced to inf); asking
    for it is an error rather than silently ignored. With ``clip: sb3`` SB3's default (0.5) is made explicit.
    """
    spec = ALGOS[algo.algo]
    hp = copy.deepcopy(spec.defaults)
    user = copy.deepcopy(algo.hyperparams)
    pk = {**hp.pop("policy_kwargs", {}), **user.pop("policy_kwargs", {})}
    hp.update(user)
    if pk:
        hp["policy_kwargs"] = pk
    if spec.on_policy:
        if clip.active and "max_grad_norm" in hp:
            raise UserError(
                f"hyperparams.max_grad_norm={hp['max_grad_norm']} would clip the joint gradient before the "
                f"perpclip "
                f"clippers ({clip.label}); remove it, or use --clip sb3 for SB3's own clipping"
            )
        if not clip.active:
            hp.setdefault("max_grad_norm", 0.5)
    if "optimizer_class" in pk:
        _optimizer_name(pk["optimizer_class"])  # an unknown name fails here, before anything is built
    for forbidden in ("env", "policy", "seed", "device", "tensorboard_log", "verbose"):
        if forbidden in hp:
            raise UserError(
                f"hyperparams.{forbidden} is set by perpclip itself; use the matching option instead"
            )
    return hp


def _constructor_kwargs(algo: AlgoConfig, clip: ClipConfig, n_actions: int) -> dict[str, Any]:
    hp = resolve_hyperparams(algo, clip)
    spec = ALGOS[algo.algo]
    policy_kwargs = dict(hp.pop("policy_kwargs", {}))
    policy_kwargs.setdefault("net_arch", copy.deepcopy(algo.net_arch))
    optimizer = policy_kwargs.get("optimizer_class")
    if optimizer is not None:
        import torch

        optimizer = _optimizer_name(optimizer)
        policy_kwargs["optimizer_class"] = getattr(torch.optim, OPTIMIZERS[optimizer])
    # Adam is every algorithm's default but A2C's (RMSprop unless an optimizer_class is given).
    adam = optimizer == "adam" or (optimizer is None and algo.algo != "a2c")
    if adam:
        kw = dict(policy_kwargs.get("optimizer_kwargs") or {})
        if spec.on_policy:
            # SB3 sets Adam eps=1e-5 only when no optimizer_kwargs are given; any given kwargs silently fall
            # back to torch's 1e-8. Keep SB3's value unless the user chose one (SGD has no eps: not added).
            kw.setdefault("eps", 1e-5)
        if "foreach" not in kw and str(algo.device).split(":")[0] in ("cpu", "cuda", "auto"):
            # torch's fused Adam: the same update in one kernel over all parameters. On CPU torch otherwise
            # runs a Python loop over the parameters (~0.5 ms per step for PPO's two 64x64 MLPs, 0.1 ms
            # fused); results agree to float32 rounding (tests/test_defaults.py).
            kw.setdefault("fused", True)
        policy_kwargs["optimizer_kwargs"] = kw
    hp["policy_kwargs"] = policy_kwargs
    noise = hp.pop("action_noise", None)
    if noise is not None:
        if not isinstance(noise, dict) or noise.get("kind") != "normal" or "sigma" not in noise:
            raise UserError(
                f"hyperparams.action_noise must look like {{kind: normal, sigma: 0.1}}, got {noise!r}"
            )
        import numpy as np

        hp["action_noise"] = NormalActionNoise(
            np.zeros(n_actions), float(noise["sigma"]) * np.ones(n_actions)
        )
    if spec.on_policy and clip.active:
        hp["max_grad_norm"] = math.inf
    return hp


class ClippedModel:
    """An SB3 model and the clip hooks attached to it (``hooks`` is None with ``clip: sb3``)."""

    def __init__(self, model: BaseAlgorithm, hooks: ClipHooks | None) -> None:
        self.model = model
        self.hooks = hooks


def _policy_name(spec: AlgoSpec, observation_space: spaces.Space) -> str:
    return spec.dict_policy if isinstance(observation_space, spaces.Dict) else spec.policy


def build_model(
    algo: AlgoConfig,
    clip: ClipConfig,
    env: Any,
    *,
    tensorboard_log: str | None = None,
    verbose: int = 0,
) -> ClippedModel:
    """Create the SB3 model for ``algo`` on ``env`` (a VecEnv) with the clippers of ``clip`` hooked in.

    Raises:
        UserError: algorithm/action-space mismatch, bad hyperparameters or clipper names/arguments.
    """
    spec = ALGOS[algo.algo]
    if spec.continuous_only and not isinstance(env.action_space, spaces.Box):
        raise UserError(
            f"{algo.algo} needs a continuous action space; the env has {env.action_space} "
            "(set env.action: continuous -- exec_env.action for the execution task -- or use "
            "ppo/a2c/recurrent_ppo)"
        )
    n_actions = int(math.prod(env.action_space.shape)) if isinstance(env.action_space, spaces.Box) else 1
    kwargs = _constructor_kwargs(algo, clip, n_actions)
    clippers = _make_clippers(clip)
    try:
        model = spec.cls(
            _policy_name(spec, env.observation_space),
            env,
            seed=algo.seed,
            device=algo.device,
            verbose=verbose,
            tensorboard_log=tensorboard_log,
            **kwargs,
        )
    except TypeError as exc:  # unknown constructor keyword
        raise UserError(f"bad hyperparams for {algo.algo}: {exc}") from None
    if algo.flat_init:
        _flat_actor_output(model)
    hooks = attach_clippers(model, *clippers) if clippers else None
    return ClippedModel(model, hooks)


def _flat_actor_output(model: Any) -> None:
    """Scale the deterministic actor's output layer (SAC, TD3) by 0.01 and zero its bias: see
    ``AlgoConfig.flat_init``. PPO-style policies are left alone: SB3 already inits their action layer
    small."""
    import torch

    actor = getattr(model, "actor", None)
    mu = getattr(actor, "mu", None)
    if mu is None:
        return
    layer = mu if isinstance(mu, torch.nn.Linear) else None
    if isinstance(mu, torch.nn.Sequential):
        layer = next((m for m in reversed(mu) if isinstance(m, torch.nn.Linear)), None)
    if layer is None:
        return
    with torch.no_grad():
        layer.weight.mul_(0.01)
        if layer.bias is not None:
            layer.bias.zero_()
    target = getattr(model, "actor_target", None)
    if target is not None:  # TD3: the target starts as a copy of the actor
        target.load_state_dict(actor.state_dict())


def _make_clippers(clip: ClipConfig) -> tuple[Any, Any] | None:
    """Build both clippers up front so a bad name fails before anything is created."""
    if not clip.active:
        return None
    from clipping import make_clipper

    out = []
    for part in ("policy", "value"):
        name, kwargs = getattr(clip, part), getattr(clip, f"{part}_kwargs")
        try:
            out.append(make_clipper(name, **kwargs))
        except ValueError as exc:
            raise UserError(f"{part} clipper: {exc}") from None
        except TypeError as exc:
            raise UserError(f"{part} clipper {name!r}: {exc}") from None
    return out[0], out[1]


def validate_clip(clip: ClipConfig) -> None:
    """Raise UserError now if a clipper name or keyword is wrong."""
    _make_clippers(clip)


def save_model(cm: ClippedModel, path: str | Path) -> Path:
    """``model.save(path)`` plus the clipper state inside the same archive. Returns the .zip path."""
    path = Path(path)
    if path.suffix != ".zip":
        path = path.with_suffix(".zip")
    tmp = path.with_name(path.stem + ".saving.zip")
    cm.model.save(tmp)
    if cm.hooks is not None:
        write_clipper_state(tmp, cm.hooks)
    tmp.replace(path)  # atomic: an interrupted save never leaves a half-written model.zip
    return path


def load_model(
    algo: AlgoConfig,
    clip: ClipConfig,
    path: str | Path,
    env: Any | None = None,
    *,
    device: str | None = None,
) -> ClippedModel:
    """Load a model saved by :func:`save_model` and re-attach its clippers with their saved statistics.

    Raises:
        UserError: missing file, or an env whose observation/action space differs from the model's.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no model file {str(path)!r}")
    spec = ALGOS[algo.algo]
    saved_obs, saved_act = _guard_archive(path, lambda: _saved_spaces(spec, path))  # damaged: fails here
    if env is not None:
        if saved_obs.shape != env.observation_space.shape:
            raise UserError(
                f"the model in {str(path)!r} was trained on observations of shape {saved_obs.shape} but this "
                f"env "
                f"gives {env.observation_space.shape}; use the env settings of the run's config.yaml "
                "(window, features)"
            )
        if type(saved_act) is not type(env.action_space) or saved_act.shape != env.action_space.shape:
            raise UserError(
                f"the model in {str(path)!r} acts in {saved_act} but this env's action space is "
                f"{env.action_space}; use the env settings of the run's config.yaml"
            )
    model = _guard_archive(path, lambda: spec.cls.load(path, env=env, device=device or algo.device))
    hooks = None
    state = read_clipper_state(path)
    if clip.active:
        clippers = _make_clippers(clip)
        assert clippers is not None
        hooks = attach_clippers(model, *clippers)
        if state is not None:
            hooks.load_state_dict(state)
    return ClippedModel(model, hooks)


def _guard_archive(path: Path, read: Callable[[], Any]) -> Any:
    """``read()``, with a damaged archive (truncated, not a zip) reported as a user error, not a traceback."""
    import zipfile

    try:
        return read()
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError) as exc:
        msg = " ".join(str(exc).split()).removeprefix("Error: ") or type(exc).__name__
        raise UserError(
            f"cannot read the model {str(path)!r}: the file is damaged or not an SB3 model archive ({msg}); "
            "train the run again or evaluate another model (--model best/final)"
        ) from None


def _saved_spaces(spec: AlgoSpec, path: Path) -> tuple[spaces.Space, spaces.Space]:
    from stable_baselines3.common.save_util import load_from_zip_file

    data, _, _ = load_from_zip_file(path, load_data=True, device="cpu")
    if data is None or "observation_space" not in data:
        raise UserError(f"{str(path)!r} is not an SB3 model archive (no observation space stored)")
    return data["observation_space"], data["action_space"]
