"""Evaluate a saved run: its policy, deterministically, over one period next to the task's baselines.

What is run and reported is the task's (``TaskSpec.evaluate`` returns a ``TaskReport``: table rows, JSON,
plot); this module loads the run, builds the period's env and writes the outputs the :class:`RunDir` names.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from agents import env_factory
from agents.algos import load_model
from agents.config import load_config
from agents.errors import UserError
from agents.rundir import RunDir, write_json_atomic
from agents.task_spec import TaskReport

__all__ = ["SPLITS", "evaluate", "format_table"]

SPLITS = ("train", "val", "test", "all")


def format_table(report: TaskReport) -> str:
    """The one table ``train.py evaluate`` prints: the agent next to the baselines, one metric per row."""
    return report.table()


def evaluate(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    funding: Any = None,
    model: str = "auto",
    log_tensorboard: bool = True,
) -> TaskReport:
    """Run a saved policy deterministically over one period, next to the task's baselines; write the JSON
    report and the plot (``eval.json`` and ``equity.png``/``shortfall.png`` for the default model on the test
    split, ``eval-<split>-<model>.json`` and ``<plot>-<split>-<model>.png`` otherwise).

    Args:
        run_dir: a run folder written by ``train``.
        data: evaluate on this market instead of the run's (same split fractions/ranges applied to it).
        split: ``test`` (default: the held-out period, never trained on), ``val``, ``train`` or ``all`` (every
            bar after the warm-up). Warm-up bars before the period feed the features only.
        funding: funding file(s) for ``data``.
        model: ``auto`` (default: ``best_model.zip`` where training validated, i.e. early stopping on the
            validation split, else ``model.zip``), ``final`` (``model.zip``) or ``best`` (``best_model.zip``).
        log_tensorboard: also log the metrics and the figure to the run's TensorBoard folder.

    Raises:
        UserError: not a run folder, no model, unknown split, or a model/env shape mismatch.
    """
    run = RunDir(run_dir)
    run.check_readable(model)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    cfg = load_config(run.config)
    task = cfg.spec
    d = env_factory.RunData(cfg, data, funding)
    period = env_factory.Period("all", 0, len(d.market)) if split == "all" else d.periods[split]
    env, start, period = env_factory.make_period_env(d.market, cfg.task_env, period)
    which = run.resolve_model(model)
    cm = load_model(cfg.algo, cfg.clip, run.model(which), env=env)
    vecnorm = None
    if run.vecnormalize(which).is_file():
        from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

        vecnorm = VecNormalize.load(str(run.vecnormalize(which)), DummyVecEnv([lambda: env]))
        vecnorm.training = False
    act = env_factory.policy_act(cm.model, vecnormalize=vecnorm, deterministic=True)
    report = task.evaluate(env, act, cfg, period, start, d)
    header = {
        "task": cfg.task,
        "run_dir": str(run),
        "model": run.model(which).name,
        "data": data if data is not None else cfg.data.data,
        "split": split,
        "period": [period.start, period.stop],
        "period_utc": [str(d.market.index[period.start]), str(d.market.index[period.stop - 1])],
    }
    write_json_atomic(run.eval_json(split, model), {**header, **report.to_json()})
    image = report.plot(run.plot(task.plot_name, split, model))
    if log_tensorboard:
        from stable_baselines3.common.logger import Image, Logger, TensorBoardOutputFormat

        logger = Logger(folder=str(run.tb), output_formats=[TensorBoardOutputFormat(str(run.tb))])
        prefix = f"eval_{split}" if model == "auto" else f"eval_{split}_{model}"
        for key, value in report.metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                logger.record(f"{prefix}/{key}", float(value))
        for name, m in report.baselines.items():
            value = m.get(task.default_metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                logger.record(f"{prefix}/{name}_{task.default_metric}", float(value))
        logger.record(
            f"{prefix}/{task.plot_name}", Image(image, "HWC"), exclude=("stdout", "log", "json", "csv")
        )
        logger.dump(step=int(cm.model.num_timesteps))
        logger.close()
    return report
