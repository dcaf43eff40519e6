"""What a task is (:class:`TaskSpec`) and what its evaluation returns (:class:`TaskReport`).

The registry of tasks is :mod:`agents.tasks`; this module only defines the shapes, so that the task
modules (``agents.task_trading``, ``agents.task_execution``) can build their entries without importing the
registry. Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["TaskReport", "TaskSpec"]


class TaskReport(Protocol):
    """What a task's ``evaluate`` returns: the agent's metrics next to the baselines' on one period."""

    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    split: str
    period: tuple[int, int]

    def to_json(self) -> dict[str, Any]:
        """The task's part of ``eval.json`` (the run, split and period header is added by the caller)."""
        ...

    def describe(self) -> list[str]:
        """Lines printed above the table (what was evaluated, on which episodes)."""
        ...

    def table(self) -> str:
        """The one table ``train.py evaluate`` prints."""
        ...

    def plot(self, path: Path) -> Any:
        """Write the report's figure to ``path``; return it as an RGB array (for TensorBoard)."""
        ...


@dataclass(frozen=True)
class TaskSpec:
    """How perpclip trains and judges one task.

    Attributes:
        name: the ``RunConfig.task`` value.
        section: the config section (and ``config.yaml`` key) of the env's arguments.
        config_cls: the frozen dataclass of that section; ``env_kwargs()`` gives the env's keywords.
        make_env: ``make_env(market, **kwargs)`` -> the Gymnasium env (with ``min_start``).
        metrics: validation metrics ``eval.metric`` may name; ``metrics[0]`` is the headline metric of reports
            (compare's tables and plot).
        select_metric: the ``eval.metric`` used when none is given (None: ``metrics[0]``).
        train_info_keys: per-step info keys the task's training callbacks read from the batched env (SB3's
            adapter copies only these into the per-env info dicts: building dicts costs time every step).
        lower_is_better: those of ``metrics`` where lower is better (compared by magnitude for drawdowns).
        make_validator: ``(env, cfg, start) -> (act -> metrics)``: one deterministic pass over the validation
            period (``start``: the local bar of its first decision).
        evaluate: ``(env, act, cfg, period, start, data) -> TaskReport`` over a test (or other) period;
            ``data`` is the run's ``agents.env_factory.RunData`` (``data.market``, ``data.periods``).
        metrics_callback: returns the SB3 callback logging the task's per-episode training metrics.
        gamma: the discount used unless ``hyperparams.gamma`` is set (None: the algorithm's default).
        run_prefix: prefix of the default run folder name.
        whole_period: env overrides for an env that runs one whole period (evaluation).
        period_bars: ``env_cfg -> (bars, why)``: the shortest period the task can run, and why.
        wrap_train_env: ``(vec_env, env_cfg) -> vec_env``: training-only wrappers (reward scaling).
        make_batched_env: ``(market, num_envs, **kwargs)`` -> a gymnasium ``VectorEnv`` stepping ``num_envs``
            copies of ``make_env`` in one batched call, autoresetting in the same step (None: the task has
            none, and training steps single envs in SB3's ``DummyVecEnv``).
        summary: compare table columns ``(metric, label, digits)`` (the default metric is plotted).
        reference: the baseline shown as a reference row in compare tables (None: none).
        describe: ``cfg -> text`` in the CLI's "training ..." line.
        best_line: ``metrics -> text`` in the CLI's "best validation: ..." line.
        plot_name: stem of the evaluation figure file (``equity`` -> ``equity.png``).
    """

    name: str
    section: str
    config_cls: type
    make_env: Callable[..., Any]
    metrics: tuple[str, ...]
    make_validator: Callable[[Any, Any, int], Callable[[Any], dict[str, Any]]]
    evaluate: Callable[..., TaskReport]
    metrics_callback: Callable[[], Any] | None = None
    lower_is_better: tuple[str, ...] = ()
    gamma: float | None = None
    run_prefix: str = ""
    whole_period: Mapping[str, Any] = field(default_factory=dict)
    period_bars: Callable[[Any], tuple[int, str]] = lambda env_cfg: (2, "to run an episode")
    wrap_train_env: Callable[[Any, Any], Any] | None = None
    make_batched_env: Callable[..., Any] | None = None
    summary: tuple[tuple[str, str, int], ...] = ()
    reference: str | None = None
    describe: Callable[[Any], str] = lambda cfg: ""
    best_line: Callable[[dict[str, Any]], str] | None = None
    plot_name: str = "eval"
    select_metric: str | None = None
    train_info_keys: tuple[str, ...] = ()

    @property
    def default_metric(self) -> str:
        """The headline metric: what compare tabulates and plots on test periods."""
        return self.metrics[0]

    @property
    def selection_metric(self) -> str:
        """The validation metric that selects ``best_model.zip`` when ``eval.metric`` is not given."""
        return self.select_metric or self.metrics[0]

    def summary_columns(self) -> tuple[tuple[str, str, int], ...]:
        """Compare table columns; the default metric alone when ``summary`` is empty."""
        return self.summary or ((self.default_metric, f"test {self.default_metric}", 4),)

    def score(self, metric: str, value: float) -> float:
        """``value`` as a higher-is-better score (negated for ``lower_is_better`` metrics)."""
        if metric == "max_drawdown":  # a negative number: compared by magnitude
            return -abs(value)
        return -value if metric in self.lower_is_better else value
