"""``train.py compare``: train every (clipper, seed, walk-forward fold) and compare them on held-out periods.

Each run is an ordinary run folder (``agents.run.train`` then ``agents.run.evaluate(split="test")``) inside
the compare folder, so ``tensorboard --logdir <compare folder>`` shows every curve side by side. The compare
folder also gets ``results.csv`` (one row a run), ``summary.md`` (the per-clipper table, definitions, folds,
command), ``test_sharpe.png`` and ``commands.txt`` (every invocation, appended).

Execution:

- ``workers == 1``: runs one after the other in this process.
- ``workers > 1`` (default: min(CPU count, runs)): a ``ProcessPoolExecutor`` with the ``spawn`` start method
  (fork is unsafe with torch threads); each worker uses one torch thread. If a worker process dies (segfault,
  out of memory) the pool breaks; the runs it took down are then retried each in its own process, so the
  culprit is recorded as failed and the others complete.
- ``ray_address``: one Ray task (1 CPU) per run on an existing cluster (``auto`` or ``HOST:PORT``). Every node
  needs perpclip installed (``pip install perpclip[distributed]``) and the compare folder should be on storage
  all nodes share; the driver also writes each run's ``result.json`` from the returned row, so results.csv is
  complete even when it is not.

Resuming: a run is finished when its folder holds ``result.json`` (written last, atomically, by the worker). A
re-run of the same command with the same ``--out`` skips finished runs (failed ones too, unless
``retry_failed``), and refuses to mix in a run whose stored config differs from what the command asks for. A
folder left without ``result.json`` (run killed mid-way) is moved to ``_incomplete/`` and the run started
again; a failed run being retried is moved to ``_failed/``. Nothing already written is overwritten or deleted.

Failures: an exception in train or evaluate is caught in the worker; the run gets ``status=failed``, the
error's last line in ``results.csv`` and the full traceback in ``<run>/traceback.txt``; the other runs go on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from agents.compare_report import DEFINITIONS, format_table, plot_sharpe, results_frame, summarize
from agents.compare_spec import (
    ClipSpec,
    FoldRanges,
    RunJob,
    expand_grid,
    make_folds,
    parse_clips,
    parse_seeds,
)
from agents.errors import UserError

__all__ = [
    "AgentsRunner",
    "CompareResult",
    "Runner",
    "execute_job",
    "register_cli",
    "run_compare",
    "run_from_args",
]

RESULT_FILE = "result.json"
TRACEBACK_FILE = "traceback.txt"
#: A test-period position range (max - min, base units) at or below this is a constant, collapsed policy.
COLLAPSE_TOL = 1e-9
#: A Gaussian policy whose last logged action std (SB3's ``train/std``) is below this has stopped exploring.
STD_COLLAPSE = 1e-3


class Runner(Protocol):
    """What a compare needs from the training code; :class:`AgentsRunner` is the real one.

    Must be picklable (it is sent to worker processes / Ray tasks with each job).
    """

    def train(self, config: dict[str, Any], run_dir: Path) -> Any:
        """Train one run; returns an object with TrainResult's attributes."""
        ...

    def evaluate(self, run_dir: Path) -> Any:
        """Evaluate a trained run on its test range; returns an object with EvalReport's attributes."""
        ...


@dataclass(frozen=True)
class AgentsRunner:
    """:func:`agents.run.train` then :func:`agents.run.evaluate` (``split="test"``) on a RunConfig dict.

    Attributes:
        num_threads: torch threads per run (1: runs in parallel processes should not fight over cores).
            ``None`` leaves torch's setting alone.
        model: ``final`` (``model.zip``) or ``best`` (``best_model.zip``, selected on the fold's validation
            range) is what gets evaluated on the test range.
    """

    num_threads: int | None = 1
    model: str = "final"

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


# ----------------------------------------------------------------------------------------------------
# One run (executed in a worker)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (Path, tuple)):
        return str(x) if isinstance(x, Path) else list(x)
    return repr(x)


def _scalar(x: Any) -> Any:
    if isinstance(x, np.generic):
        x = x.item()
    return x if isinstance(x, (int, float, bool, str)) or x is None else repr(x)


def _base_row(job: RunJob) -> dict[str, Any]:
    f = job.folds
    clip = job.config.get("clip", {})
    from agents.compare_spec import ClipPart

    return {
        "run": job.name,
        "clip": job.clip,
        "policy_clip": ClipPart(clip.get("policy", ""), tuple(clip.get("policy_kwargs", {}).items())).text,
        "value_clip": ClipPart(clip.get("value", ""), tuple(clip.get("value_kwargs", {}).items())).text,
        "seed": job.seed,
        "fold": job.fold,
        "train_start": f.train[0],
        "train_stop": f.train[1],
        "val_start": f.val[0] if f.val else None,
        "val_stop": f.val[1] if f.val else None,
        "test_start": f.test[0],
        "test_stop": f.test[1],
        "status": "failed",
        "error": "",
        "run_dir": job.name,
    }


def _train_fields(tr: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "diverged": bool(getattr(tr, "diverged", False)),
        "diverged_reason": getattr(tr, "diverged_reason", None) or "",
        "timesteps": _scalar(getattr(tr, "timesteps", None)),
        "train_time_s": _scalar(getattr(tr, "wall_time_s", None)),
    }
    for part, frac in sorted((getattr(tr, "clip_fraction", None) or {}).items()):
        row[f"clip_frac_{part}"] = float(frac)
    for part, n in sorted((getattr(tr, "nonfinite", None) or {}).items()):
        row[f"nonfinite_{part}"] = int(n)
    return row


def _eval_fields(ev: Any) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k, v in (getattr(ev, "metrics", None) or {}).items():
        v = _scalar(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            row[f"test_{k}"] = v
    for name, metrics in (getattr(ev, "baselines", None) or {}).items():
        for k in ("total_return", "sharpe"):
            if k in (metrics or {}):
                row[f"baseline_{name}_{k}"] = _scalar(metrics[k])
    pos = getattr(ev, "positions", None)
    if pos is not None:
        pos = np.asarray(pos, dtype=float).ravel()
        if pos.size and np.all(np.isfinite(pos)):
            row["collapsed"] = bool(pos.size >= 2 and float(np.ptp(pos)) <= COLLAPSE_TOL)
            row["position_mean"] = float(pos.mean())
            row["position_std"] = float(pos.std())
        elif pos.size:
            row["collapsed"] = True  # non-finite positions: the policy is broken
    return row


def execute_job(job: RunJob, out_dir: str | Path, runner: Runner) -> dict[str, Any]:
    """Train and evaluate one run, catching any exception; writes ``result.json`` (and ``traceback.txt``).

    Returns:
        The results.csv row (with the run's ``config`` dict, used when resuming).
    """
    run_dir = Path(out_dir) / job.name
    row = _base_row(job)
    t0 = time.perf_counter()
    stage = "train"
    try:
        tr = runner.train(job.config, run_dir)
        if getattr(tr, "interrupted", False):
            # Ctrl-C reached the worker: the run is not finished. No result.json, so a re-run moves the folder
            # to _incomplete/ and trains it again.
            row["status"] = "interrupted"
            return row
        row.update(_train_fields(tr))
        std = _final_action_std(run_dir)
        if std is not None:
            row["action_std"] = std
        stage = "evaluate"
        ev = runner.evaluate(run_dir)
        row.update(_eval_fields(ev))
        row["status"] = "ok"
    except Exception as err:
        msg = " ".join(str(err).split())
        row["error"] = f"{stage}: {type(err).__name__}: {msg}"[:500]
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / TRACEBACK_FILE).write_text(traceback.format_exc())
    if "diverged" in row:  # training finished: non-finite training or a collapsed policy
        std_dead = row.get("action_std") is not None and row["action_std"] < STD_COLLAPSE
        if not row["diverged"] and row.get("collapsed"):
            row["diverged_reason"] = (
                f"collapsed: constant position {row.get('position_mean', math.nan):.6g} over the test period"
            )
        elif not row["diverged"] and std_dead:
            row["diverged_reason"] = f"collapsed: action std {row['action_std']:.2g} < {STD_COLLAPSE:g}"
        row["diverged"] = bool(row["diverged"]) or bool(row.get("collapsed")) or std_dead
    else:
        row["diverged"] = None
    row["wall_time_s"] = time.perf_counter() - t0
    row["config"] = job.config
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(run_dir / RESULT_FILE, row)
    return row


def _final_action_std(run_dir: Path) -> float | None:
    """Last ``train/std`` SB3 logged to ``progress.csv`` (Gaussian policies of PPO/A2C), if any."""
    path = run_dir / "progress.csv"
    if not path.is_file():
        return None
    try:
        col = pd.read_csv(path, usecols=lambda c: c == "train/std")
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if "train/std" not in col or col["train/std"].dropna().empty:
        return None
    return float(col["train/std"].dropna().iloc[-1])


def _worker_init(runner: Runner | None = None) -> None:
    # Before torch is imported: one BLAS/OpenMP thread per worker, workers are the parallelism.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _warmup(runner)


def _warmup(runner: Runner | None) -> None:
    warmup = getattr(runner, "warmup", None)
    if warmup is not None:
        # A failing warm-up is not fatal here: the run itself hits the same error and records its traceback.
        with contextlib.suppress(Exception):
            warmup()


def _isolated_main(job: RunJob, out_dir: str, runner: Runner) -> None:
    _worker_init(runner)
    execute_job(job, out_dir, runner)


def _failure_row(job: RunJob, error: str) -> dict[str, Any]:
    row = _base_row(job)
    row.update(error=error[:500], wall_time_s=math.nan, config=job.config, diverged=None)
    return row


# ----------------------------------------------------------------------------------------------------
# Backends


OnDone = Callable[[dict[str, Any]], None]


def _read_result(out_dir: Path, job: RunJob) -> dict[str, Any] | None:
    path = out_dir / job.name / RESULT_FILE
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
    return None


def _record_failure(out_dir: Path, job: RunJob, error: str) -> dict[str, Any]:
    row = _failure_row(job, error)
    run_dir = out_dir / job.name
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / RESULT_FILE).exists():
        _write_json_atomic(run_dir / RESULT_FILE, row)
    return row


def _run_inline(jobs: list[RunJob], out_dir: Path, runner: Runner, on_done: OnDone) -> None:
    _warmup(runner)
    for job in jobs:
        on_done(execute_job(job, out_dir, runner))


def _run_isolated(jobs: list[RunJob], out_dir: Path, runner: Runner, workers: int, on_done: OnDone) -> None:
    """Each job in its own spawned process (N at a time): a crash takes down only its own run."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")

    def one(job: RunJob) -> dict[str, Any]:
        proc = ctx.Process(
            target=_isolated_main, args=(job, str(out_dir), runner), name=f"compare-{job.name}"
        )
        proc.start()
        proc.join()
        row = _read_result(out_dir, job)
        if row is None:
            code = proc.exitcode
            why = " (killed by a signal, e.g. out of memory)" if code is not None and code < 0 else ""
            row = _record_failure(out_dir, job, f"worker process died with exit code {code}{why}")
        return row

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for fut in as_completed([pool.submit(one, j) for j in jobs]):
            on_done(fut.result())


def _run_pool(jobs: list[RunJob], out_dir: Path, runner: Runner, workers: int, on_done: OnDone) -> None:
    import multiprocessing as mp

    broken: list[RunJob] = []
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=_worker_init,
        initargs=(runner,),
    ) as pool:
        futs: dict[Future, RunJob] = {pool.submit(execute_job, j, str(out_dir), runner): j for j in jobs}
        for fut in as_completed(futs):
            job = futs[fut]
            try:
                row = fut.result()
            except BrokenProcessPool:
                row = _read_result(out_dir, job)  # it may have finished just before the pool broke
                if row is None:
                    broken.append(job)
                    continue
            except Exception as err:  # e.g. the job or runner could not be pickled
                row = _record_failure(out_dir, job, f"could not run in a worker: {type(err).__name__}: {err}")
            on_done(row)
    if broken:
        print(
            f"compare: a worker process died; retrying {len(broken)} run(s) one process each "
            "to find which one crashed",
            file=sys.stderr,
            flush=True,
        )
        for job in broken:
            _move_aside(out_dir, job, "_incomplete")
        _run_isolated(broken, out_dir, runner, workers, on_done)


def _ray_task(job: RunJob, out_dir: str, runner: Runner) -> dict[str, Any]:
    _worker_init(runner)
    return execute_job(job, out_dir, runner)


def _run_ray(jobs: list[RunJob], out_dir: Path, runner: Runner, address: str, on_done: OnDone) -> None:
    try:
        import ray
    except ImportError:
        raise UserError(
            "--ray-address needs Ray: pip install 'perpclip[distributed]' (or pip install ray)"
        ) from None
    own = not ray.is_initialized()
    if own:
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise UserError(
                f"--ray-address {address!r}: cannot connect to a Ray cluster ({err}); start one with "
                "`ray start --head` and pass auto or its HOST:PORT"
            ) from err
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        refs = {task.remote(j, str(out_dir), runner): j for j in jobs}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                job = refs[ref]
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayError as err:
                    row = _record_failure(out_dir, job, f"ray task failed: {type(err).__name__}: {err}")
                else:
                    # Without a shared filesystem the worker wrote result.json on its own node: keep a
                    # copy here.
                    path = out_dir / job.name / RESULT_FILE
                    if not path.exists():
                        path.parent.mkdir(parents=True, exist_ok=True)
                        _write_json_atomic(path, row)
                on_done(row)
    finally:
        if own:
            ray.shutdown()


# ----------------------------------------------------------------------------------------------------
# Orchestration


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
    """

    out_dir: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    table: str
    n_ran: int
    n_skipped: int
    n_failed: int


def _norm(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_json_default))


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flat(_norm(old)), _flat(_norm(new))
    return [
        f"{k}: {a.get(k, '<absent>')!r} before, {b.get(k, '<absent>')!r} now"
        for k in sorted(a.keys() | b.keys())
        if a.get(k, "<absent>") != b.get(k, "<absent>")
    ]


def _move_aside(out_dir: Path, job: RunJob, where: str) -> Path | None:
    src = out_dir / job.name
    if not src.exists():
        return None
    dest_root = out_dir / where
    dest_root.mkdir(exist_ok=True)
    k = 1
    while (dest_root / f"{job.name}.{k}").exists():
        k += 1
    dest = dest_root / f"{job.name}.{k}"
    os.replace(src, dest)
    return dest


class _Lock:
    """``compare.lock`` in the compare folder: two compares writing the same runs would corrupt them."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "compare.lock"

    def __enter__(self) -> _Lock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    raise UserError(
                        f"another compare (pid {pid}) is running in {self.path.parent}; wait for it or use "
                        "another --out"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return self
        raise UserError(f"cannot take the lock {self.path}; delete it if no compare is running")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_workers(n_runs: int) -> int:
    """min(usable CPUs, runs), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, n_runs))


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

    Returns:
        The :class:`CompareResult`; the table is also in ``summary.md``.

    Raises:
        ValueError: on bad specs / seeds / folds, or an existing compare folder holding a run with another
            config.
    """
    say = log or (lambda _msg: None)
    if isinstance(clips, str) or not all(isinstance(c, ClipSpec) for c in clips):
        specs = parse_clips(clips)  # type: ignore[arg-type]
    else:
        specs = list(clips)  # type: ignore[arg-type]
    seed_list = parse_seeds(seeds)
    real = runner is None or isinstance(runner, AgentsRunner)
    market = _load_market(base_config) if real or (isinstance(folds, int) and n_bars is None) else None
    if isinstance(folds, int):
        fold_list = make_folds(
            len(market) if n_bars is None else n_bars,
            folds,
            mode=fold_mode,
            test_bars=test_bars,
            min_train_bars=min_train_bars,
            val_bars=val_bars,
            gap=gap,
        )
    else:
        fold_list = list(folds)
    jobs = expand_grid(base_config, specs, seed_list, fold_list)
    if real:
        _preflight(jobs, fold_list, market, runner or AgentsRunner())
    runner = runner if runner is not None else AgentsRunner()
    out_dir = Path(out) if out is not None else _new_out_dir()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder; give a folder path")
    out_dir.mkdir(parents=True, exist_ok=True)

    with _Lock(out_dir):
        with open(out_dir / "commands.txt", "a") as fh:
            fh.write(f"{_dt.datetime.now().isoformat(timespec='seconds')}  {command or '(python API)'}\n")
        if not (out_dir / "compare.json").exists():
            _write_json_atomic(
                out_dir / "compare.json",
                {
                    "command": command,
                    "clips": [s.label for s in specs],
                    "seeds": seed_list,
                    "folds": [{"train": f.train, "val": f.val, "test": f.test} for f in fold_list],
                    "base_config": base_config,
                },
            )
        rows: dict[str, dict[str, Any]] = {}
        todo: list[RunJob] = []
        for job in jobs:
            prev = _read_result(out_dir, job)
            if prev is not None:
                diff = _config_diff(prev.get("config", {}), job.config)
                if diff:
                    raise UserError(
                        f"{out_dir / job.name} was run with another config ({'; '.join(diff[:4])}); "
                        "re-run with the options it was started with, or use a new --out"
                    )
                if prev.get("status") != "ok" and retry_failed:
                    dest = _move_aside(out_dir, job, "_failed")
                    say(f"retrying failed run {job.name} (old folder kept in {dest})")
                    todo.append(job)
                else:
                    rows[job.name] = prev
            else:
                if (out_dir / job.name).exists():
                    dest = _move_aside(out_dir, job, "_incomplete")
                    say(f"{job.name} has no {RESULT_FILE} (interrupted?); moved to {dest}, running it again")
                todo.append(job)
        n_skipped = len(rows)
        if n_skipped:
            say(f"compare: {n_skipped} of {len(jobs)} run(s) already finished in {out_dir}; skipping them")

        done_count = [0]

        def on_done(row: dict[str, Any]) -> None:
            rows[row["run"]] = row
            done_count[0] += 1
            if row.get("status") == "ok":
                sharpe, ret = row.get("test_sharpe", math.nan), row.get("test_total_return", math.nan)
                what = f"ok  test Sharpe {sharpe:+.2f}  return {ret:+.4f}"
                if row.get("diverged"):
                    what += f"  DIVERGED ({row.get('diverged_reason', '')})"
            else:
                what = f"FAILED  {row.get('error', '')}"
            wall = row.get("wall_time_s", math.nan)
            say(f"[{done_count[0]}/{len(todo)}] {row['run']}: {what}  ({wall:.1f} s)")

        if todo:
            # Clippers interleaved (for each seed and fold, every clipper in turn): each clipper meets the
            # same machine load and worker warm-up, so wall times stay comparable.
            rank = {s.label: i for i, s in enumerate(specs)}
            todo.sort(key=lambda j: (j.seed, j.fold, rank[j.clip]))
            n_workers = workers if workers is not None else default_workers(len(todo))
            if n_workers < 1:
                raise UserError(f"--workers must be >= 1, got {n_workers}")
            where = (
                f"Ray cluster {ray_address}"
                if ray_address
                else ("this process" if n_workers == 1 else f"{n_workers} worker processes")
            )
            say(f"compare: running {len(todo)} run(s) on {where}; output in {out_dir}")
            if ray_address:
                _run_ray(todo, out_dir, runner, ray_address, on_done)
            elif n_workers == 1:
                _run_inline(todo, out_dir, runner, on_done)
            else:
                _run_pool(todo, out_dir, runner, n_workers, on_done)

        ordered = [rows[j.name] for j in jobs if j.name in rows]
        frame = results_frame(ordered)
        summary = summarize(frame, order=[s.label for s in specs])
        table = format_table(summary)
        evaluated = getattr(runner, "model", None)
        _write_outputs(
            out_dir, frame, summary, table, specs, seed_list, fold_list, base_config, command, evaluated
        )
    n_failed = int((frame["status"] != "ok").sum())
    say("")
    say(table)
    say("")
    say(
        f"compare: {len(ordered) - n_failed} ok, {n_failed} failed of {len(jobs)} run(s); "
        f"results in {out_dir}/results.csv, summary.md, test_sharpe.png; tensorboard --logdir {out_dir}"
    )
    if n_failed:
        say(f"compare: failed runs keep their traceback in <run>/{TRACEBACK_FILE}")
    return CompareResult(out_dir, frame, summary, table, len(todo), n_skipped, n_failed)


def _load_market(base_config: dict[str, Any]) -> Any:
    from agents.env_factory import load_data

    data = base_config.get("data", {})
    return load_data(data.get("data", "btcusdt-1h"), data.get("funding"))


def _preflight(jobs: list[RunJob], folds: list[FoldRanges], market: Any, runner: AgentsRunner) -> None:
    """Check what can be checked before launching anything, so a bad option fails in seconds, not mid-grid:
    every RunConfig, every clipper with the algorithm's hyperparameters, and the env's warm-up against the
    folds (a test or validation period needs ``window`` bars of history before it)."""
    from agents.algos import validate_clip
    from agents.config import RunConfig
    from agents.env_factory import warmup_bars
    from agents.run import resolve_config

    checked: set[str] = set()
    cfg = None
    for job in jobs:
        try:
            cfg = RunConfig.from_dict(job.config)
            if cfg.task != "trading":
                # compare scores runs by their test-period trading metrics (Sharpe, return); an execution run
                # reports shortfall instead, so it would fail inside every run rather than here.
                raise UserError(
                    f"compare supports task 'trading' only, got task {cfg.task!r}; "
                    "evaluate execution runs one by one with `train.py evaluate`"
                )
            if job.clip not in checked:
                validate_clip(cfg.clip)
                resolve_config(cfg)
                checked.add(job.clip)
        except (ValueError, TypeError) as err:
            raise UserError(f"compare: run {job.name}: {' '.join(str(err).split())}") from err
    if cfg is None:
        return
    if runner.model == "best" and any(f.val is None for f in folds):
        raise UserError("--model best needs a validation range in every fold: set --val-bars (e.g. 100)")
    warm = warmup_bars(market, cfg.env)
    for f in folds:
        for name, rng in (("validation", f.val), ("test", f.test)):
            if rng is not None and rng[0] < warm:
                raise UserError(
                    f"fold {f.index}: the {name} period starts at bar {rng[0]} but the env needs {warm} "
                    "bars of history before its first decision; use --min-train-bars, fewer --folds or a "
                    "smaller window"
                )


def _write_outputs(
    out_dir: Path,
    frame: pd.DataFrame,
    summary: pd.DataFrame,
    table: str,
    specs: Sequence[ClipSpec],
    seeds: Sequence[int],
    folds: Sequence[FoldRanges],
    base_config: dict[str, Any],
    command: str | None,
    evaluated: str | None = None,
) -> None:
    # results.csv / summary.md / the plot are derived from the runs' result.json files (never lost), so they
    # are rewritten as a whole on resume; written to a temp name first so a crash leaves the old ones intact.
    tmp = out_dir / ".results.csv.tmp"
    frame.to_csv(tmp, index=False)
    os.replace(tmp, out_dir / "results.csv")
    try:
        plot_sharpe(frame, out_dir / "test_sharpe.png", order=[s.label for s in specs])
        plot_line = "![test Sharpe per clipper](test_sharpe.png)\n\n"
    except Exception as err:  # a plot must not cost the tables
        plot_line = f"(plot failed: {type(err).__name__}: {err})\n\n"
    algo = base_config.get("algo", {})
    data = base_config.get("data", {})
    fold_lines = "\n".join(
        f"| {f.index} | [{f.train[0]}, {f.train[1]}) | "
        f"{f'[{f.val[0]}, {f.val[1]})' if f.val else '—'} | [{f.test[0]}, {f.test[1]}) |"
        for f in folds
    )
    failed = frame[frame["status"] != "ok"]
    fail_lines = "".join(f"- `{r.run}`: {r.error}\n" for r in failed.itertuples()) or "none\n"
    text = (
        f"# Clipping compare\n\n"
        f"Command: `{command or '(python API)'}`\n\n"
        f"Algorithm `{algo.get('algo')}`, {algo.get('timesteps')} timesteps per run, "
        f"net {algo.get('net_arch')}, "
        f"data `{data.get('data')}`; seeds {list(seeds)}; {len(folds)} walk-forward fold(s)"
        f"{f'; evaluated model: {evaluated}' if evaluated else ''}.\n\n"
        f"{table}\n\n{plot_line}"
        f"## Definitions\n\n{DEFINITIONS}\n\n"
        f"## Folds (bar index ranges [start, stop))\n\n| fold | train | val | test |\n|---|---|---|---|\n"
        f"{fold_lines}\n\n## Failed runs\n\n{fail_lines}\n"
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
            "clipper specs: name[:key=value,...][/value_name[:key=value,...]]\n"
            "  a comma token with '=' and no ':' before it continues the previous spec; ';' always starts\n"
            "  a new one; --clips may be repeated. 'sb3' = SB3's own max_grad_norm (both parts).\n"
            "examples:\n"
            "  --clips none,norm,autoclip,zclip,agc\n"
            "  --clips norm:max_norm=0.05,norm:max_norm=0.5,zclip:z_thresh=2.0,alpha=0.9\n"
            "  --clips 'norm:max_norm=0.5/zclip'        (policy: norm, value: zclip)\n"
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
        choices=("final", "best"),
        default="final",
        help="evaluate the final model (default) or the best on validation (needs --val-bars)",
    )
    p.add_argument("--algo", help="algorithm (default ppo)")
    p.add_argument(
        "--data", help="embedded name (btcusdt-1h), CSV/Parquet path, or synthetic:<kind>[:k=v,...]"
    )
    p.add_argument("--funding", metavar="PATH", help="funding-rate file for --data")
    p.add_argument("--train-data", metavar="SPEC", help="train on this market instead; folds test on --data")
    p.add_argument("--timesteps", type=int, help="training steps per run")
    p.add_argument("--n-envs", type=int, help="parallel training envs per run")
    p.add_argument("--net-arch", metavar="N,N", help="hidden layer sizes, e.g. 64,64")
    p.add_argument("--hp", action="append", metavar="K=V,...", help="SB3 hyperparameters (repeatable)")
    p.add_argument("--env", action="append", metavar="K=V,...", help="env arguments (repeatable)")
    p.add_argument("--eval-freq", type=int, help="validate every N steps (only with --val-bars)")
    p.add_argument(
        "--config", metavar="YAML", help="base config (e.g. a run's config.yaml); options override it"
    )
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
    p.set_defaults(func=run_from_args)
    return p


def build_base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The RunConfig dict every run starts from: ``--config`` (or defaults) with the options over it.

    Uses :func:`agents.cli.config_from_args`, so the options mean exactly what they mean for ``train.py``.
    """
    from agents.cli import config_from_args

    ns = argparse.Namespace(**vars(args))
    for name in ("seed", "clip", "policy_clip", "value_clip"):  # set per run by the compare
        setattr(ns, name, None)
    return config_from_args(ns).to_dict()


def run_from_args(args: argparse.Namespace) -> int:
    """The ``compare`` subcommand; returns the exit code (0, or 1 when every run failed)."""
    base = build_base_config(args)
    command = "python train.py " + shlex.join(sys.argv[1:])
    result = run_compare(
        base,
        parse_clips(args.clips),
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
    )
    total = len(result.results)
    return 1 if total and result.n_failed == total else 0
