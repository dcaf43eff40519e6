"""Train one run: data and envs, the SB3 model with its clippers, callbacks, saving, divergence.

Task-neutral: everything that differs between tasks (env, discount, training metrics, validation) comes
from ``cfg.spec`` (:mod:`agents.tasks`). Files are named by :class:`agents.rundir.RunDir`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.logger import CSVOutputFormat, Logger, TensorBoardOutputFormat
from stable_baselines3.common.vec_env import VecNormalize

from agents import env_factory
from agents.algos import (
    ALGOS,
    build_model,
    load_model,
    resolve_hyperparams,
    resolve_n_envs,
    save_model,
    validate_clip,
)
from agents.callbacks import ClipLoggerCallback, ValidationCallback
from agents.config import RunConfig, load_config, save_config
from agents.errors import UserError
from agents.rundir import RunDir, write_json_atomic

__all__ = ["MAX_CONSECUTIVE_NONFINITE", "TrainResult", "resolve_config", "train"]

#: Stop (and report divergence) after this many optimizer steps in a row with non-finite gradients.
MAX_CONSECUTIVE_NONFINITE = 50


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        run_dir: the run folder.
        wall_time_s: seconds spent in this call (data loading to final save).
        timesteps: the model's total environment steps (including earlier runs when resumed).
        diverged: training stopped on divergence (non-finite parameters, or
            ``MAX_CONSECUTIVE_NONFINITE`` skipped steps in a row).
        diverged_reason: why, or None.
        clip_fraction: part -> share of (finite) updates that were clipped (empty with ``clip: sb3``).
        nonfinite: part -> number of optimizer steps skipped for non-finite gradients (with ``ent_coef``
            for SAC's guarded entropy-coefficient optimizer).
        interrupted: stopped by Ctrl-C (the model was saved).
        best_eval: the validation metrics of ``best_model.zip`` (None without evaluation).
    """

    run_dir: Path
    wall_time_s: float
    timesteps: int
    diverged: bool
    diverged_reason: str | None
    clip_fraction: dict[str, float]
    nonfinite: dict[str, int]
    interrupted: bool = False
    best_eval: dict[str, Any] | None = None


def resolve_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the algorithm's hyperparameters and ``n_envs`` filled in (what ``config.yaml`` records).

    A task with its own discount (``TaskSpec.gamma``; the execution task trains undiscounted) uses it unless
    ``hyperparams`` sets ``gamma``.

    Raises:
        UserError: ``clip: sb3`` with an algorithm that has no ``max_grad_norm`` (SAC, TD3): it would
            train unclipped without saying so.
    """
    algo = cfg.algo
    if not cfg.clip.active and not ALGOS[algo.algo].on_policy:
        raise UserError(
            f"--clip sb3 means SB3's own max_grad_norm, which exists only for PPO/A2C/RecurrentPPO; "
            f"{algo.algo} would train unclipped. Fix: --clip none for no clipping, or a perpclip clipper "
            "(e.g. --clip norm:max_norm=0.5 or --clip zclip)"
        )
    gamma = cfg.spec.gamma
    if gamma is not None and "gamma" not in algo.hyperparams:
        algo = cfg.replace(algo={"hyperparams": {"gamma": gamma, **algo.hyperparams}}).algo
    hp = resolve_hyperparams(algo, cfg.clip)
    return cfg.replace(algo={"hyperparams": hp, "n_envs": resolve_n_envs(algo)})


def _logger(run: RunDir, resume: bool) -> Logger:
    run.tb.mkdir(parents=True, exist_ok=True)
    csv = run.next_progress_csv(resume)
    return Logger(
        folder=str(run.tb), output_formats=[TensorBoardOutputFormat(str(run.tb)), CSVOutputFormat(str(csv))]
    )


def _save_all(cm: Any, run: RunDir, which: str = "final") -> None:
    save_model(cm, run.model(which))
    vec = cm.model.get_env()
    if isinstance(vec, VecNormalize):
        vec.save(str(run.vecnormalize(which)))
    if cm.hooks is not None and which == "final":
        torch.save(cm.hooks.state_dict(), run / RunDir.CLIPPERS)


def _params_finite(model: Any) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.policy.parameters())


def _resumed_config(cfg: RunConfig, run: RunDir) -> RunConfig:
    saved = load_config(run.config)
    same = saved.replace(algo={"timesteps": cfg.algo.timesteps})
    if same != cfg:
        a, b = same.to_dict(), cfg.to_dict()
        diff = []
        for section in dict.fromkeys([*a, *b]):
            old, new = a.get(section), b.get(section)
            if isinstance(old, dict) and isinstance(new, dict):
                diff += [f"{section}.{k}" for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
            elif old != new:
                diff.append(section)
        raise UserError(
            f"cannot resume {str(run)!r} with a different configuration ({', '.join(diff) or 'task'}); "
            "only the number of timesteps may change"
        )
    return saved.replace(algo={"timesteps": cfg.algo.timesteps})


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    progress_bar: bool = False,
    resume: bool = False,
    command: str | None = None,
    verbose: int = 0,
    on_start: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (or continue the run there with ``resume=True``).

    Resuming loads ``model.zip`` with its clipper statistics (and normalization statistics) and trains
    ``cfg.algo.timesteps`` more steps; ``cfg`` must equal the run's ``config.yaml`` except for
    ``algo.timesteps``. A KeyboardInterrupt saves the model and returns with ``interrupted=True``.
    ``on_start(run_dir)`` is called once the configuration, data, envs and model are valid and the folder
    exists.

    Raises:
        UserError: bad configuration, data, hyperparameters or run folder — before anything is written (no
            folder is created and ``command.txt`` is not touched).
    """
    t0 = time.perf_counter()
    run = RunDir(run_dir)
    run.check(resume)
    cfg = resolve_config(cfg)
    if resume:
        cfg = _resumed_config(cfg, run)
    validate_clip(cfg.clip)
    data = env_factory.RunData(cfg)
    train_env = env_factory.make_train_env(cfg, data.train_market())
    validator = None
    val = data.periods["val"]
    if cfg.eval.eval_freq > 0 and val.stop > val.start:  # val=0: no validation period, no evaluation
        val_env, val_start, _ = env_factory.make_period_env(data.market, cfg.task_env, val)
        validator = cfg.spec.make_validator(val_env, cfg, val_start)

    # The model is built (or loaded) before the folder exists: bad hyperparameters or a damaged model.zip
    # must not leave a stray folder or a line in command.txt.
    if resume:
        cm = load_model(cfg.algo, cfg.clip, run.model(), env=None)
        if isinstance(train_env, VecNormalize) and run.vecnormalize().is_file():
            train_env = VecNormalize.load(str(run.vecnormalize()), train_env.venv)
        cm.model.set_env(train_env)
    else:
        try:
            cm = build_model(cfg.algo, cfg.clip, train_env, verbose=verbose)
        except ValueError as exc:  # SB3 rejects a hyperparameter value (e.g. a batch size)
            raise UserError(f"bad hyperparams for {cfg.algo.algo}: {exc}") from None
    model = cm.model

    run.path.mkdir(parents=True, exist_ok=True)
    if on_start is not None:  # the CLI prints where the run is once it is sure to exist
        on_start(run.path)
    if not resume:
        save_config(cfg, run.config)
    run.append_command(command)
    model.set_logger(_logger(run, resume))

    callbacks: list[Any] = []
    if cfg.spec.metrics_callback is not None:
        callbacks.append(cfg.spec.metrics_callback())
    clip_cb = None
    if cm.hooks is not None:
        clip_cb = ClipLoggerCallback(cm.hooks, max_consecutive_nonfinite=MAX_CONSECUTIVE_NONFINITE)
        callbacks.append(clip_cb)
    eval_cb = None
    if validator is not None:

        def run_val() -> dict[str, Any]:
            vec = model.get_env()
            act = env_factory.policy_act(
                model,
                vecnormalize=vec if isinstance(vec, VecNormalize) else None,
                deterministic=cfg.eval.deterministic,
            )
            return validator(act)

        def on_best(_: dict[str, Any]) -> None:
            if cfg.eval.save_best:
                _save_all(cm, run, "best")

        eval_cb = ValidationCallback(
            run_val,
            eval_freq=cfg.eval.eval_freq,
            n_envs=cfg.algo.n_envs,
            metric=cfg.eval.metric,
            on_best=on_best,
            score=cfg.spec.score,
        )
        callbacks.append(eval_cb)
        if resume and run.train_result.is_file() and run.model("best").is_file():
            # Keep the earlier best_model.zip unless the continued training beats it.
            best = json.loads(run.train_result.read_text()).get("best_eval")
            if isinstance(best, dict) and isinstance(best.get(cfg.eval.metric), (int, float)):
                eval_cb.best = eval_cb.score(best)
                eval_cb.best_metrics = best

    if progress_bar:
        from agents.callbacks import WholeRolloutProgressBar

        callbacks.append(WholeRolloutProgressBar())
    interrupted = False
    diverged_reason = None
    try:
        model.learn(
            total_timesteps=cfg.algo.timesteps,
            callback=callbacks,
            reset_num_timesteps=not resume,
            tb_log_name="tb",
        )
    except KeyboardInterrupt:
        interrupted = True
    except ValueError as exc:
        # A policy with NaN weights makes torch.distributions raise ValueError while collecting rollouts.
        if _params_finite(model):
            raise
        diverged_reason = f"non-finite policy parameters ({str(exc).splitlines()[0][:200]})"
    if clip_cb is not None and clip_cb.diverged_reason is not None:
        diverged_reason = clip_cb.diverged_reason
    if diverged_reason is None and not _params_finite(model):
        diverged_reason = "non-finite policy parameters after training"
    ok = not interrupted and diverged_reason is None
    if eval_cb is not None and ok and not eval_cb.evaluated_after_start:
        eval_cb.run_eval()  # budget shorter than eval_freq: the trained policy is still a candidate

    _save_all(cm, run)
    hooks = cm.hooks
    result = TrainResult(
        run_dir=run.path,
        wall_time_s=time.perf_counter() - t0,
        timesteps=int(model.num_timesteps),
        diverged=diverged_reason is not None,
        diverged_reason=diverged_reason,
        clip_fraction=hooks.clip_fraction() if hooks is not None else {},
        nonfinite={**hooks.nonfinite(), **hooks.guarded_nonfinite()} if hooks is not None else {},
        interrupted=interrupted,
        best_eval=eval_cb.best_metrics if eval_cb is not None else None,
    )
    write_json_atomic(run.train_result, asdict(result))
    model.logger.close()
    train_env.close()
    return result
