"""Train and evaluate one run: the public entry points, in one import.

* :func:`train` / :class:`TrainResult` / :func:`resolve_config` — :mod:`agents.training`;
* :func:`evaluate` / :func:`format_table` — :mod:`agents.evaluation`;
* the run folder's files — :class:`agents.rundir.RunDir` (its docstring lists them);
* what differs between tasks (env, metrics, baselines, report) — :mod:`agents.tasks`; the reports are
  :class:`EvalReport` (trading) and :class:`ExecEvalReport` (execution).
"""

from __future__ import annotations

from agents.evaluation import SPLITS, evaluate, format_table
from agents.rundir import RunDir
from agents.task_execution import ExecEvalReport, execution_metrics, run_execution_policies
from agents.task_trading import EvalReport
from agents.training import MAX_CONSECUTIVE_NONFINITE, TrainResult, resolve_config, train

__all__ = [
    "MAX_CONSECUTIVE_NONFINITE",
    "SPLITS",
    "EvalReport",
    "ExecEvalReport",
    "RunDir",
    "TrainResult",
    "evaluate",
    "execution_metrics",
    "format_table",
    "resolve_config",
    "run_execution_policies",
    "train",
]
