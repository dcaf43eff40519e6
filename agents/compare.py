"""``train.py compare``: train every (clipper, seed, walk-forward fold) and compare them on held-out periods.

Each run is an ordinary run folder (``agents.run.train`` then ``agents.run.evaluate(split="test")``) inside
the compare folder, so ``tensorboard --logdir <compare folder>`` shows every curve side by side. The compare
folder also gets ``results.csv`` (one row a run, with ``delta_vs_reference`` and the grad-norm stability
columns), ``summary.md`` (the per-clipper table, the paired comparison with the ``--reference`` clipper,
across-seed dispersion, definitions, folds, command), ``test_<metric>.png`` (``test_sharpe.png`` for trading),
``test_<metric>_iqm.png`` (IQM with 95 % CIs) and ``commands.txt`` (every invocation, appended). Any
registered task can be compared: runs are judged by the task's test metrics (``TaskSpec.summary_columns``)
next to its reference baseline.

The parts, each behind a small interface:

- what the command asks for: :mod:`agents.compare_spec` (clipper specs, seeds, folds, the grid of jobs);
- the stress axes (``--lr``, ``--optimizer``, ``--reward-scale``, ``--markets``) crossed into arms:
  :mod:`agents.compare_arms`; tables, paired statistics and plots are made per arm;
- one run in a worker and its typed outcome with the divergence rules: :mod:`agents.compare_outcome`;
- where runs execute (inline, a process per job, Ray): :mod:`agents.compare_backends`;
- the compare folder as a result store (lock, ``result.json`` per run, the resume scan):
  :mod:`agents.compare_store`;
- tables and plots: :mod:`agents.compare_report`.

This module orchestrates them and declares the subcommand. Failures: an exception in train or evaluate is
caught in the worker; the run gets ``status=failed``, the error's last line in ``results.csv`` and the full
traceback in ``<run>/traceback.txt``; the other runs go on.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from agents.compare_arms import ARM_DEFINITIONS, add_arm_options, apply_arm, arms_from_args
from agents.compare_backends import default_workers, make_backend
from agents.compare_outcome import Runner, execute_job
from agents.compare_report import (
    DEFINITIONS,
    PAIRED_DEFINITIONS,
    format_dispersion,
    format_paired,
    format_summary,
    paired_report,
    plot_iqm,
    plot_metric,
    primary_metric,
    results_frame,
    summarize,
)
from agents.compare_spec import (
    Arm,
    ClipSpec,
    FoldRanges,
    RunJob,
    expand_grid,
    make_folds,
    parse_clips,
    parse_seeds,
)
from agents.compare_store import TRACEBACK_FILE, ResultStore
from agents.errors import UserError
from agents.options import add_run_options

__all__ = [
    "AgentsRunner",
    "CompareResult",
    "Runner",
    "default_workers",
    "execute_job",
    "register_cli",
    "run_compare",
    "run_from_args",
]


@dataclass(frozen=True)
class AgentsRunner:
    """:func:`agents.run.train` then :func:`agents.run.evaluate` (``split="test"``) on a RunConfig dict.

    Attributes:
        num_threads: torch threads per run (1: runs in parallel processes should not fight over cores).
            ``None`` leaves torch's setting alone.
        model: what gets evaluated on the test range: ``auto`` (``best_model.zip`` where the run validated,
            i.e. with ``--val-bars``, else ``model.zip``), ``final`` or ``best``.
    """

    num_threads: int | None = 1
    model: str = "auto"

    def train(self, config: dict[str, Any], run_dir: Path) -> Any:
        if self.num_threads:
            import torch

            torch.set_num_threads(self.num_threads)
        from agents.config import RunConfig
        from agents.run import train

        return train(RunConfig.from_dict(config), run_dir)

    def evaluate(self, run_dir: Path) -> Any:
        from agents.run import evaluate

        return evaluate(run_dir, split="test", model=self.model)

    def warmup(self) -> None:
        """Import the training stack once per worker, so the first run's wall time is not inflated by it."""
        if self.num_threads:
            import torch

            torch.set_num_threads(self.num_threads)
        # What a first run would otherwise import on the clock: SB3 and torch (agents.run), the env, the
        # baselines, the loaders, TensorBoard's writer and matplotlib (evaluate's equity plot).
        import importlib

        import matplotlib

        matplotlib.use("Agg")
        for module in (
            "agents.run",
            "envs.trading_env",
            "envs.baselines",
            "envs.loaders",
            "envs.synthetic",
            "torch.utils.tensorboard",
            "matplotlib.pyplot",
        ):
            importlib.import_module(module)


@dataclass(frozen=True)
class CompareResult:
    """What a compare produced.

    Attributes:
        out_dir: the compare folder.
        results: one row per run of the grid (results.csv).
        summary: one row per clipper (+ a buy & hold reference row) (the printed table).
        table: the summary as Markdown.
        n_ran: runs executed by this call; n_skipped: finished runs found and skipped; n_failed: failed runs
            in the grid (this call or earlier).
        paired: one row per clipper: IQM with CI, dispersion and the paired comparison with ``reference``
            on the test ``metric`` (:func:`agents.compare_report.paired_report`).
        reference: the reference clipper's label; metric: the test metric of ``paired``.

    With stress axes (more than the one empty arm) ``summary`` and ``paired`` have a leading ``arm`` column
    and one block of rows per arm.
    """

    out_dir: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    table: str
    n_ran: int
    n_skipped: int
    n_failed: int
    paired: pd.DataFrame | None = None
    reference: str | None = None
    metric: str | None = None


def _new_out_dir(root: Path = Path("runs")) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = root / f"compare-{stamp}"
    k = 2
    while out.exists():
        out = root / f"compare-{stamp}-{k}"
        k += 1
    return out


def run_compare(
    base_config: dict[str, Any],
    clips: Sequence[ClipSpec] | str | Sequence[str],
    seeds: int | str | Sequence[int] = 5,
    *,
    folds: int | Sequence[FoldRanges] = 3,
    n_bars: int | None = None,
    fold_mode: str = "expanding",
    test_bars: int | None = None,
    min_train_bars: int | None = None,
    val_bars: int = 0,
    gap: int = 0,
    out: str | Path | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    retry_failed: bool = False,
    runner: Runner | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = print,
    reference: str | None = None,
    arms: Sequence[Arm] | None = None,
) -> CompareResult:
    """Run (or resume) a compare and write its results.

    Args:
        base_config: a RunConfig dict (``RunConfig.to_dict()``); its clip section, seed and data ranges are
            replaced per run.
        clips: clipper specs (parsed ones or ``--clips`` strings).
        seeds: number of seeds (0..n-1), a comma list or a sequence of seeds.
        folds: number of walk-forward folds (needs ``n_bars``, else the data is loaded to count them) or
            explicit :class:`FoldRanges`.
        n_bars: bars in the data; counted from ``base_config["data"]`` when ``None``.
        fold_mode, test_bars, min_train_bars, val_bars, gap: see :func:`agents.compare_spec.make_folds`.
        out: compare folder (default ``runs/compare-<timestamp>``); an existing one is resumed.
        workers: parallel worker processes (default min(CPUs, runs)); 1 runs in this process.
        ray_address: run on this Ray cluster instead (``auto`` or ``HOST:PORT``).
        retry_failed: run again the runs recorded as failed (their folders are moved to ``_failed/``).
        runner: what trains and evaluates a run (default :class:`AgentsRunner`); must be picklable. With the
            real runner, every config, clipper and fold is checked before anything is launched.
        command: the command line, recorded in commands.txt and summary.md.
        log: where progress lines go (``None``: silent).
        reference: the clipper spec the others are compared with, pair by pair (same seed, same fold);
            default ``none`` if it is in the grid, else the first spec.
        arms: the stress-axis combinations (:func:`agents.compare_arms.make_arms`); each is crossed with
            clippers x seeds x folds, and compared within itself. Default: one arm, the base config.

    Returns:
        The :class:`CompareResult`; the table is also in ``summary.md``.

    Raises:
        ValueError: on bad specs / seeds / folds, or an existing compare folder holding a run with another
            config.
    """
    say = log or (lambda _msg: None)
    plan = _plan(
        base_config,
        clips,
        seeds,
        folds,
        n_bars,
        fold_mode,
        test_bars,
        min_train_bars,
        val_bars,
        gap,
        runner,
        list(arms) if arms else [Arm()],
    )
    ref_label = _reference_label(reference, plan.specs)
    runner = runner if runner is not None else AgentsRunner()
    out_dir = Path(out) if out is not None else _new_out_dir()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder; give a folder path")
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out_dir)
    with store.lock():
        store.append_command(command)
        store.write_manifest(
            {
                "command": command,
                "clips": [s.label for s in plan.specs],
                "seeds": plan.seeds,
                "folds": [{"train": f.train, "val": f.val, "test": f.test} for f in plan.folds],
                "base_config": base_config,
                **({"arms": [dict(a.values) for a in plan.arms]} if plan.has_arms else {}),
            }
        )
        rows, todo = store.scan(plan.jobs, retry_failed=retry_failed, say=say)
        n_skipped = len(rows)
        if n_skipped:
            say(f"compare: {n_skipped} of {len(plan.jobs)} run(s) already finished in {out_dir}; skipping")
        if todo:
            _execute(plan, todo, store, runner, rows, workers=workers, ray_address=ray_address, say=say)
        ordered = [rows[j.name] for j in plan.jobs if j.name in rows]
        frame = results_frame(ordered)
        reports = _arm_reports(frame, plan, ref_label)
        deltas = pd.concat([r.paired.deltas for r in reports]).reindex(frame.index)
        frame = results_frame(frame.assign(delta_vs_reference=deltas).to_dict("records"))
        _write_outputs(store, frame, reports, plan, command, getattr(runner, "model", None))
    n_failed = int((frame["status"] != "ok").sum())
    for rep in reports:
        say("")
        if plan.has_arms and len(plan.arms) > 1:
            say(f"== arm {rep.arm.label} ==")
        say(rep.table)
        say("")
        say(rep.paired.heading)
        say(rep.paired.table_md)
    say("")
    say(
        f"compare: {len(ordered) - n_failed} ok, {n_failed} failed of {len(plan.jobs)} run(s); "
        f"results in {out_dir}/results.csv, summary.md, {_plot_file(plan.task)}; "
        f"tensorboard --logdir {out_dir}"
    )
    if n_failed:
        say(f"compare: failed runs keep their traceback in <run>/{TRACEBACK_FILE}")
    if plan.has_arms:
        summary = pd.concat([r.summary.assign(arm=r.arm.label) for r in reports], ignore_index=True)
        paired_table = pd.concat([r.paired.table.assign(arm=r.arm.label) for r in reports], ignore_index=True)
        summary = summary[["arm", *[c for c in summary.columns if c != "arm"]]]
        paired_table = paired_table[["arm", *[c for c in paired_table.columns if c != "arm"]]]
        table = "\n\n".join(f"arm {r.arm.label}\n{r.table}" for r in reports)
    else:
        summary, paired_table, table = reports[0].summary, reports[0].paired.table, reports[0].table
    return CompareResult(
        out_dir,
        frame,
        summary,
        table,
        len(todo),
        n_skipped,
        n_failed,
        paired_table,
        ref_label,
        reports[0].paired.metric,
    )


def _reference_label(reference: str | None, specs: Sequence[ClipSpec]) -> str:
    """The label of the reference spec: ``reference`` in canonical form, checked to be in the grid."""
    labels = [s.label for s in specs]
    if reference is None:
        return "none" if "none" in labels else labels[0]
    try:
        parsed = parse_clips(reference, validate=False)
    except ValueError as exc:
        raise UserError(f"--reference: {exc}") from None
    if len(parsed) != 1 or parsed[0].label not in labels:
        raise UserError(
            f"--reference {reference!r} is not one of the compared clipper specs ({', '.join(labels)}); "
            "give one of them, e.g. --reference " + labels[0]
        )
    return parsed[0].label


@dataclass(frozen=True)
class _PairedOut:
    """The paired statistics of a compare and their text."""

    metric: str
    label: str
    reference: str
    note: str
    table: pd.DataFrame
    deltas: pd.Series
    heading: str
    table_md: str
    dispersion_md: str


def _paired(
    frame: pd.DataFrame, plan: _Plan, ref_label: str, metric: str, note: str, arm: Arm
) -> _PairedOut:
    task = plan.task
    columns = task.summary_columns()
    label, digits = next(((lab, d) for key, lab, d in columns if key == metric), (f"test {metric}", 4))
    order = [s.label for s in plan.specs]
    table, deltas = paired_report(
        frame, order, metric=metric, reference=ref_label, lower_is_better=metric in task.lower_is_better
    )
    same = "same seed, same fold, same arm" if plan.has_arms else "same seed, same fold"
    heading = f"Paired comparison with `{ref_label}` on {label} ({same})"
    if plan.has_arms and len(plan.arms) > 1:
        heading += f" in arm `{arm.label}`"
    if note:
        heading += f"; {note}, so {label} is used"
    return _PairedOut(
        metric,
        label,
        ref_label,
        note,
        table,
        deltas,
        heading,
        format_paired(table, label=label, digits=digits),
        format_dispersion(table, digits=digits),
    )


@dataclass(frozen=True)
class _ArmReport:
    """The tables of one arm: the per-clipper summary and the paired statistics."""

    arm: Arm
    summary: pd.DataFrame
    table: str
    paired: _PairedOut


def _arm_reports(frame: pd.DataFrame, plan: _Plan, ref_label: str) -> list[_ArmReport]:
    """Summary and paired statistics per arm (pairs: same seed, same fold, same arm). One metric for all
    arms: the task's default unless no arm has a finite value of it."""
    task = plan.task
    columns = task.summary_columns()
    metric, note = primary_metric(frame, task.default_metric, columns)
    out = []
    for arm in plan.arms:
        sub = frame[frame["arm"] == arm.label] if plan.has_arms and "arm" in frame else frame
        order = [s.label for s in plan.specs]
        summary = summarize(sub, order=order, columns=columns, reference=task.reference)
        paired = _paired(sub, plan, ref_label, metric, note, arm)
        out.append(_ArmReport(arm, summary, format_summary(summary, columns), paired))
    return out


@dataclass(frozen=True)
class _Plan:
    """What a compare runs: the parsed specs, seeds and folds, the jobs, and the task that judges them.

    ``folds`` are the first market's; ``market_folds`` has every market's (data spec -> folds) when the arms
    span several markets.
    """

    specs: list[ClipSpec]
    seeds: list[int]
    folds: list[FoldRanges]
    jobs: list[RunJob]
    task: Any
    arms: list[Arm] = field(default_factory=lambda: [Arm()])
    market_folds: dict[str, list[FoldRanges]] = field(default_factory=dict)

    @property
    def has_arms(self) -> bool:
        """True when stress axes were given (even with one value each): arm columns, per-arm reports."""
        return bool(self.arms[0].values)


def _plan(
    base_config: dict[str, Any],
    clips: Any,
    seeds: Any,
    folds: Any,
    n_bars: int | None,
    fold_mode: str,
    test_bars: int | None,
    min_train_bars: int | None,
    val_bars: int,
    gap: int,
    runner: Runner | None,
    arms: list[Arm],
) -> _Plan:
    from agents.tasks import get_task

    task = get_task(base_config.get("task", "trading"))
    try:  # specs, seeds and folds come from the command line: a bad one is the user's mistake
        specs = list(clips) if _parsed(clips) else parse_clips(clips)
        seed_list = parse_seeds(seeds)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    real = runner is None or isinstance(runner, AgentsRunner)
    configs = [apply_arm(base_config, arm) for arm in arms]
    # Markets differ in length: folds (and the preflight's warm-up check) are per market.
    by_market: dict[str, tuple[Any, list[FoldRanges]]] = {}
    for cfg in configs:
        data = cfg.get("data", {}).get("data", "btcusdt-1h")
        if data in by_market:
            continue
        market = _load_market(cfg) if real or (isinstance(folds, int) and n_bars is None) else None
        if isinstance(folds, int):
            try:
                fold_list = make_folds(
                    len(market) if n_bars is None else n_bars,
                    folds,
                    mode=fold_mode,
                    test_bars=test_bars,
                    min_train_bars=min_train_bars,
                    val_bars=val_bars,
                    gap=gap,
                )
            except ValueError as exc:
                where = f"market {data!r}: " if len(arms) > 1 else ""
                raise UserError(f"{where}{exc}") from None
        else:
            fold_list = list(folds)
        by_market[data] = (market, fold_list)
    jobs: list[RunJob] = []
    for arm, cfg in zip(arms, configs, strict=True):
        data = cfg.get("data", {}).get("data", "btcusdt-1h")
        jobs += expand_grid(cfg, specs, seed_list, by_market[data][1], arm)
    if real:
        for data, (market, fold_list) in by_market.items():
            market_jobs = [j for j in jobs if j.config.get("data", {}).get("data", "btcusdt-1h") == data]
            _preflight(market_jobs, fold_list, market, runner or AgentsRunner())
    market_folds = {data: fl for data, (_, fl) in by_market.items()}
    first = next(iter(market_folds.values()))
    return _Plan(specs, seed_list, first, jobs, task, arms, market_folds if len(market_folds) > 1 else {})


def _parsed(clips: Any) -> bool:
    return not isinstance(clips, str) and all(isinstance(c, ClipSpec) for c in clips)


def _execute(
    plan: _Plan,
    todo: list[RunJob],
    store: ResultStore,
    runner: Runner,
    rows: dict[str, dict[str, Any]],
    *,
    workers: int | None,
    ray_address: str | None,
    say: Callable[[str], None],
) -> None:
    """Run ``todo`` on the chosen backend, filling ``rows`` and printing one line per finished run."""
    columns = plan.task.summary_columns()
    done_count = [0]

    def on_done(row: dict[str, Any]) -> None:
        rows[row["run"]] = row
        done_count[0] += 1
        if row.get("status") == "ok":
            values = "  ".join(
                f"{label} {row.get(f'test_{key}', math.nan):+.{digits}f}" for key, label, digits in columns
            )
            what = f"ok  {values}"
            if row.get("diverged"):
                what += f"  DIVERGED ({row.get('diverged_reason', '')})"
        else:
            what = f"FAILED  {row.get('error', '')}"
        wall = row.get("wall_time_s", math.nan)
        wall = wall if isinstance(wall, (int, float)) else math.nan
        say(f"[{done_count[0]}/{len(todo)}] {row['run']}: {what}  ({wall:.1f} s)")

    # Clippers interleaved (for each seed and fold, every clipper in turn): each clipper meets the same
    # machine load and worker warm-up, so wall times stay comparable.
    rank = {s.label: i for i, s in enumerate(plan.specs)}
    arm_rank = {a.label: i for i, a in enumerate(plan.arms)}
    todo.sort(key=lambda j: (j.seed, j.fold, arm_rank.get(j.arm.label, 0), rank[j.clip]))
    n_workers = workers if workers is not None else default_workers(len(todo))
    backend = make_backend(store, runner, workers=n_workers, ray_address=ray_address)
    say(f"compare: running {len(todo)} run(s) on {backend.where}; output in {store.out_dir}")
    backend.run(todo, on_done)


def _plot_file(task: Any) -> str:
    return f"test_{task.default_metric}.png"


def _load_market(base_config: dict[str, Any]) -> Any:
    from agents.env_factory import load_data

    data = base_config.get("data", {})
    opts = {"fill_gaps": data.get("fill_gaps") or None, "funding_tz": data.get("funding_tz")}
    return load_data(data.get("data", "btcusdt-1h"), data.get("funding"), **opts)


def _preflight(jobs: list[RunJob], folds: list[FoldRanges], market: Any, runner: AgentsRunner) -> None:
    """Check what can be checked before launching anything, so a bad option fails in seconds, not mid-grid:
    every RunConfig, every clipper with the algorithm's hyperparameters, and the env's warm-up against the
    folds (a test or validation period needs ``window`` bars of history before it)."""
    from agents.algos import validate_clip
    from agents.config import RunConfig
    from agents.env_factory import warmup_bars
    from agents.run import resolve_config

    checked: set[tuple[str, str]] = set()
    cfg = None
    for job in jobs:
        try:
            cfg = RunConfig.from_dict(job.config)
            if (job.arm.label, job.clip) not in checked:
                validate_clip(cfg.clip)
                resolve_config(cfg)
                checked.add((job.arm.label, job.clip))
        except (ValueError, TypeError) as err:
            raise UserError(f"compare: run {job.name}: {' '.join(str(err).split())}") from err
    if cfg is None:
        return
    if runner.model == "best" and any(f.val is None for f in folds):
        raise UserError("--model best needs a validation range in every fold: set --val-bars (e.g. 100)")
    warm = warmup_bars(market, cfg.task_env)
    for f in folds:
        for name, rng in (("validation", f.val), ("test", f.test)):
            if rng is not None and rng[0] < warm:
                raise UserError(
                    f"fold {f.index}: the {name} period starts at bar {rng[0]} but the env needs {warm} "
                    "bars of history before its first decision; use --min-train-bars, fewer --folds or a "
                    "smaller window"
                )


def _write_outputs(
    store: ResultStore,
    frame: pd.DataFrame,
    reports: list[_ArmReport],
    plan: _Plan,
    command: str | None,
    evaluated: str | None = None,
) -> None:
    # results.csv / summary.md / the plot are derived from the runs' result.json files (never lost), so they
    # are rewritten as a whole on resume; written to a temp name first so a crash leaves the old ones intact.
    out_dir = store.out_dir
    specs, seeds, folds = plan.specs, plan.seeds, plan.folds
    base_config = plan.jobs[0].config if plan.jobs else {}
    tmp = out_dir / ".results.csv.tmp"
    frame.to_csv(tmp, index=False)
    os.replace(tmp, out_dir / "results.csv")
    task = plan.task
    metric = task.default_metric
    label = next((lab for key, lab, _ in task.summary_columns() if key == metric), f"test {metric}")
    many = len(plan.arms) > 1
    panels = [a.label for a in plan.arms] if many else None
    try:
        plot_metric(
            frame,
            out_dir / _plot_file(task),
            order=[s.label for s in specs],
            metric=metric,
            label=label,
            reference=task.reference,
            panels=panels,
        )
        plot_line = f"![{label} per clipper{' and arm' if many else ''}]({_plot_file(task)})\n\n"
    except Exception as err:  # a plot must not cost the tables
        plot_line = f"(plot failed: {type(err).__name__}: {err})\n\n"
    first = reports[0].paired
    iqm_file = f"test_{first.metric}_iqm.png"
    try:
        tables = [r.paired.table.assign(arm=r.arm.label) for r in reports]
        plot_iqm(pd.concat(tables, ignore_index=True), out_dir / iqm_file, label=first.label, panels=panels)
        iqm_line = f"![{first.label} IQM per clipper]({iqm_file})\n\n"
    except Exception as err:  # a plot must not cost the tables
        iqm_line = f"(plot failed: {type(err).__name__}: {err})\n\n"
    if not many:  # the layout of a compare without arms: table, plot, paired table, IQM plot, dispersion
        rep = reports[0]
        body = (
            f"{rep.table}\n\n{plot_line}## {rep.paired.heading}\n\n{rep.paired.table_md}\n\n{iqm_line}"
            f"### Across-seed dispersion of {rep.paired.label}\n\n{rep.paired.dispersion_md}\n\n"
        )
    else:  # one block per arm, then the plots (one panel per arm)
        body = "".join(
            f"## Arm `{rep.arm.label}`\n\n{rep.table}\n\n### {rep.paired.heading}\n\n{rep.paired.table_md}"
            f"\n\n#### Across-seed dispersion of {rep.paired.label}\n\n{rep.paired.dispersion_md}\n\n"
            for rep in reports
        )
        body += f"## Plots\n\n{plot_line}{iqm_line}"
    algo = base_config.get("algo", {})
    data = base_config.get("data", {})
    market_folds = plan.market_folds or {data.get("data"): folds}
    fold_blocks = []
    for market, fl in market_folds.items():
        lines = "\n".join(
            f"| {f.index} | [{f.train[0]}, {f.train[1]}) | "
            f"{f'[{f.val[0]}, {f.val[1]})' if f.val else '—'} | [{f.test[0]}, {f.test[1]}) |"
            for f in fl
        )
        title = f"Market `{market}`\n\n" if plan.market_folds else ""
        fold_blocks.append(f"{title}| fold | train | val | test |\n|---|---|---|---|\n{lines}\n\n")
    failed = frame[frame["status"] != "ok"]
    fail_lines = "".join(f"- `{r.run}`: {r.error}\n" for r in failed.itertuples()) or "none\n"
    arms_line = ""
    arms_defs = ""
    if plan.has_arms:
        axes = [k for k, _ in plan.arms[0].values]
        arms_line = (
            f"; {len(plan.arms)} arm(s) over {', '.join(axes)}"
            + (": reward normalization off in every arm" if "reward_scale" in axes else "")
            if many
            else f"; arm `{plan.arms[0].label}`"
        )
        arms_defs = f"## Arms\n\n{ARM_DEFINITIONS}\n\n"
    data_text = "per arm" if plan.market_folds else f"`{data.get('data')}`"
    text = (
        f"# Clipping compare ({task.name} task)\n\n"
        f"Command: `{command or '(python API)'}`\n\n"
        f"Algorithm `{algo.get('algo')}`, {algo.get('timesteps')} timesteps per run, "
        f"net {algo.get('net_arch')}, "
        f"data {data_text}; seeds {list(seeds)}; {len(folds)} walk-forward fold(s)"
        f"{arms_line}"
        f"{f'; evaluated model: {evaluated}' if evaluated else ''}.\n\n"
        f"{body}"
        f"### Definitions (paired statistics)\n\n{PAIRED_DEFINITIONS}\n\n"
        f"## Definitions\n\n{DEFINITIONS}\n\n{arms_defs}"
        f"## Folds (bar index ranges [start, stop))\n\n{''.join(fold_blocks)}"
        f"## Failed runs\n\n{fail_lines}\n"
        f"One row per run in `results.csv`; run folders hold config.yaml, TensorBoard events, eval.json.\n"
    )
    tmp = out_dir / ".summary.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, out_dir / "summary.md")


# ----------------------------------------------------------------------------------------------------
# CLI


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand to ``train.py``'s parser (called by :func:`agents.cli.build_parser`)."""
    p = subparsers.add_parser(
        "compare",
        help="train every (clipper, seed, walk-forward fold) and compare them on held-out periods",
        description=(
            "Train every (clipper, seed, fold) combination and evaluate each on its fold's held-out test "
            "period (walk-forward, in time order). Re-running with the same --out resumes."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "clipper specs: name[:key=value,...][/value_name[:key=value,...]]; a plugin clipper class:\n"
            "  module.path:Class[:key=value,...] (its folder on PYTHONPATH, also reaches the workers)\n"
            "  a comma token with '=' and no ':' before it continues the previous spec; ';' always starts\n"
            "  a new one; --clips may be repeated. 'sb3' = SB3's own max_grad_norm (both parts).\n"
            "examples:\n"
            "  --clips none,norm,autoclip,zclip,agc\n"
            "  --clips norm:max_norm=0.05,norm:max_norm=0.5,zclip:z_thresh=2.0,alpha=0.9\n"
            "  --clips 'norm:max_norm=0.5/zclip'        (policy: norm, value: zclip)\n"
            "stress axes (crossed into arms; clippers are compared within each arm):\n"
            "  --lr 3e-4,1e-3,3e-3 --optimizer adam,sgd --reward-scale 1,100\n"
            "  --markets 'synthetic:gbm:n_bars=4000;synthetic:garch:n_bars=4000,df=3;btcusdt-1h'\n"
            "output: runs/compare-<timestamp>/ (or --out): one folder per run, results.csv, summary.md,\n"
            "  test_sharpe.png; tensorboard --logdir <that folder> shows every run."
        ),
    )
    p.add_argument(
        "--clips",
        action="append",
        required=True,
        metavar="SPECS",
        help="clipper specs to compare (repeatable)",
    )
    p.add_argument(
        "--seeds", default="5", help="number of seeds (5 -> 0..4) or a comma list, e.g. 0,3,7 (default 5)"
    )
    p.add_argument("--folds", type=int, default=3, help="walk-forward folds (default 3)")
    p.add_argument(
        "--fold-mode",
        choices=("expanding", "rolling"),
        default="expanding",
        help="training window: from bar 0 (expanding, default) or a fixed length moving forward",
    )
    p.add_argument("--test-bars", type=int, help="bars per test period (default: n_bars // (folds + 1))")
    p.add_argument("--min-train-bars", type=int, help="bars in the first (or every rolling) training window")
    p.add_argument(
        "--val-bars",
        type=int,
        default=0,
        help="bars cut from the end of each training window for validation (default 0: none, "
        "periodic validation off)",
    )
    p.add_argument("--gap", type=int, default=0, help="bars left out between training and test (default 0)")
    p.add_argument(
        "--model",
        choices=("auto", "final", "best"),
        default="auto",
        help="evaluate the best model on validation where runs validate (with --val-bars; the default, "
        "auto), else the final one; or force final / best",
    )
    add_run_options(p, per_run=False)  # the options of train.py that are not set per run
    add_arm_options(p)
    p.add_argument("--workers", type=int, help="parallel worker processes (default min(CPUs, runs))")
    p.add_argument(
        "--out", metavar="DIR", help="compare folder (default runs/compare-<timestamp>); reuse to resume"
    )
    p.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help="run on this Ray cluster instead (pip install 'perpclip[distributed]')",
    )
    p.add_argument("--retry-failed", action="store_true", help="run the runs recorded as failed again")
    p.add_argument(
        "--reference",
        metavar="CLIP",
        help="the clipper spec every other one is compared with, run by run (same seed, same fold): IQM "
        "with 95%% CIs, paired differences, probability of improvement, Holm-corrected Wilcoxon p-values "
        "(default: none if it is compared, else the first spec)",
    )
    p.set_defaults(func=run_from_args)
    return p


def build_base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The RunConfig dict every run starts from: ``--config`` (or defaults) with the options over it.

    Uses :func:`agents.options.config_from_args`, so the options mean exactly what they mean for ``train.py``.
    """
    from agents.options import config_from_args

    return config_from_args(args).to_dict()


def run_from_args(args: argparse.Namespace) -> int:
    """The ``compare`` subcommand; returns the exit code (0, or 1 when every run failed)."""
    base = build_base_config(args)
    command = "python train.py " + shlex.join(sys.argv[1:])
    try:  # where the command line's specs enter: their ValueErrors are the user's mistakes
        specs = parse_clips(args.clips)
        parse_seeds(args.seeds)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    arms = arms_from_args(args)
    if any(k == "reward_scale" for k, _ in arms[0].values) and base["algo"].get("normalize_reward", True):
        print("compare: --reward-scale turns reward normalization off in every arm (it would undo the scale)")
    result = run_compare(
        base,
        specs,
        args.seeds,
        folds=args.folds,
        fold_mode=args.fold_mode,
        test_bars=args.test_bars,
        min_train_bars=args.min_train_bars,
        val_bars=args.val_bars,
        gap=args.gap,
        out=args.out,
        workers=args.workers,
        ray_address=args.ray_address,
        retry_failed=args.retry_failed,
        runner=AgentsRunner(model=args.model),
        command=command,
        reference=args.reference,
        arms=arms,
    )
    total = len(result.results)
    return 1 if total and result.n_failed == total else 0
