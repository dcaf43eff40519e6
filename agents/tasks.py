"""The task registry: what a run learns to do, and everything that differs between tasks.

Each task (``trading``: take positions, ``execution``: execute a parent order) is one :class:`TaskSpec`
entry of :data:`TASKS`, the way each algorithm is one ``AlgoSpec`` of ``agents.algos.ALGOS``: its env and the
config section of the env's arguments, its validation metrics (the default one and which are lower-is-better),
its default discount, the callback logging its per-episode metrics, how it validates and evaluates a policy
(the report: table rows and plot) and the prefix of its run folders. The rest of ``agents`` (config, CLI,
training, evaluation, compare) asks the registry and has no per-task branches, so a third task is one
:func:`register_task` call (see ``tests/test_tasks.py``).

This module imports the standard library only; the heavy parts of a task (SB3 callbacks, baselines, plots)
are imported by its hooks when called.
"""

from __future__ import annotations

from agents.errors import UserError, did_you_mean
from agents.task_execution import EXECUTION
from agents.task_spec import TaskReport, TaskSpec
from agents.task_trading import TRADING

__all__ = ["TASKS", "TaskReport", "TaskSpec", "get_task", "register_task", "unregister_task"]


#: Every task, by name, in registration order.
TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task; its config section must not clash with another task's or a run section."""
    reserved = {"task", "algo", "clip", "data", "eval"}
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    if spec.section in reserved or any(t.section == spec.section for t in TASKS.values()):
        raise ValueError(f"config section {spec.section!r} of task {spec.name!r} is already in use")
    if not spec.metrics:
        raise ValueError(f"task {spec.name!r} needs at least one validation metric")
    TASKS[spec.name] = spec
    return spec


def unregister_task(name: str) -> None:
    """Remove a task (tests that register a toy task clean up with this)."""
    TASKS.pop(name, None)


def get_task(name: str) -> TaskSpec:
    """The task called ``name``.

    Raises:
        UserError: an unknown task, naming the valid ones.
    """
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise UserError(
            f"unknown task {name!r}; choose one of {', '.join(TASKS)}.{did_you_mean(name, TASKS)}"
        ) from None


def task_of_section(section: str) -> TaskSpec | None:
    """The task whose env config section is ``section``."""
    return next((t for t in TASKS.values() if t.section == section), None)


# The built-in tasks, in the order the CLI lists them.
register_task(TRADING)
register_task(EXECUTION)
