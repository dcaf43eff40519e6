"""Where the runs of a compare execute, behind one interface: ``backend.run(jobs, on_done)``.

- :class:`InlineBackend` (``workers == 1``): one after the other in this process.
- :class:`ProcessBackend` (``workers > 1``): a ``ProcessPoolExecutor`` with the ``spawn`` start method (fork
  is unsafe with torch threads); each worker uses one torch thread. If a worker process dies (segfault, out
  of memory) the pool breaks; the runs it took down are then retried each in its own process, so the culprit
  is recorded as failed and the others complete.
- :class:`RayBackend` (``ray_address``): one Ray task (1 CPU) per run on an existing cluster (``auto`` or
  ``HOST:PORT``). Every node needs perpclip installed (``pip install perpclip[distributed]``) and the compare
  folder should be on storage all nodes share; the driver also stores each run's ``result.json`` from the
  returned row, so results.csv is complete even when it is not.

Every backend calls ``on_done(row)`` once per job, in completion order.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

from agents.compare_outcome import Runner, execute_job, failure_row
from agents.compare_spec import RunJob
from agents.compare_store import ResultStore
from agents.errors import UserError

__all__ = ["Backend", "InlineBackend", "ProcessBackend", "RayBackend", "default_workers", "make_backend"]

OnDone = Callable[[dict[str, Any]], None]


class Backend(Protocol):
    """Runs jobs and reports each one's row."""

    def run(self, jobs: list[RunJob], on_done: OnDone) -> None: ...

    @property
    def where(self) -> str:
        """Where the runs execute, for the progress line."""
        ...


def worker_init(runner: Runner | None = None, showwarning: Callable[..., None] | None = None) -> None:
    """Set up a worker process before its first run: one BLAS/OpenMP thread, the training stack imported,
    and the parent's way of showing warnings (a spawned process starts with Python's own: the CLI's one-line
    ``warning:`` format, each message once per worker, would otherwise become a traceback-style pair of lines
    per run)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if showwarning is not None:
        warnings.showwarning = showwarning
    warmup(runner)


def _shippable_showwarning() -> Callable[..., None] | None:
    """``warnings.showwarning`` if a spawned worker can receive it (a module-level function), else None."""
    import pickle

    try:
        pickle.dumps(warnings.showwarning)
    except Exception:  # a lambda or closure installed by the caller: workers keep Python's default
        return None
    return warnings.showwarning


def warmup(runner: Runner | None) -> None:
    fn = getattr(runner, "warmup", None)
    if fn is not None:
        # A failing warm-up is not fatal here: the run itself hits the same error and records its traceback.
        with contextlib.suppress(Exception):
            fn()


def _record_failure(store: ResultStore, job: RunJob, error: str) -> dict[str, Any]:
    row = failure_row(job, error)
    store.write(job, row, overwrite=False)
    return row


def _isolated_main(
    job: RunJob, out_dir: str, runner: Runner, showwarning: Callable[..., None] | None = None
) -> None:
    worker_init(runner, showwarning)
    execute_job(job, out_dir, runner)


def _ray_task(job: RunJob, out_dir: str, runner: Runner) -> dict[str, Any]:
    worker_init(runner)
    return execute_job(job, out_dir, runner)


@dataclass
class InlineBackend:
    store: ResultStore
    runner: Runner
    where: str = "this process"

    def run(self, jobs: list[RunJob], on_done: OnDone) -> None:
        warmup(self.runner)
        for job in jobs:
            on_done(execute_job(job, self.store.out_dir, self.runner))


@dataclass
class ProcessBackend:
    store: ResultStore
    runner: Runner
    workers: int

    @property
    def where(self) -> str:
        return f"{self.workers} worker processes"

    def run(self, jobs: list[RunJob], on_done: OnDone) -> None:
        import multiprocessing as mp

        out_dir = str(self.store.out_dir)
        broken: list[RunJob] = []
        with ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=worker_init,
            initargs=(self.runner, _shippable_showwarning()),
        ) as pool:
            futs: dict[Future, RunJob] = {pool.submit(execute_job, j, out_dir, self.runner): j for j in jobs}
            for fut in as_completed(futs):
                job = futs[fut]
                try:
                    row = fut.result()
                except BrokenProcessPool:
                    row = self.store.read(job)  # it may have finished just before the pool broke
                    if row is None:
                        broken.append(job)
                        continue
                except Exception as err:  # e.g. the job or runner could not be pickled
                    row = _record_failure(
                        self.store, job, f"could not run in a worker: {type(err).__name__}: {err}"
                    )
                on_done(row)
        if broken:
            print(
                f"compare: a worker process died; retrying {len(broken)} run(s) one process each "
                "to find which one crashed",
                file=sys.stderr,
                flush=True,
            )
            for job in broken:
                self.store.move_aside(job, "_incomplete")
            self.run_isolated(broken, on_done)

    def run_isolated(self, jobs: list[RunJob], on_done: OnDone) -> None:
        """Each job in its own spawned process (N at a time): a crash takes down only its own run."""
        import multiprocessing as mp

        ctx = mp.get_context("spawn")

        def one(job: RunJob) -> dict[str, Any]:
            proc = ctx.Process(
                target=_isolated_main,
                args=(job, str(self.store.out_dir), self.runner, _shippable_showwarning()),
                name=f"compare-{job.name}",
            )
            proc.start()
            proc.join()
            row = self.store.read(job)
            if row is None:
                code = proc.exitcode
                why = " (killed by a signal, e.g. out of memory)" if code is not None and code < 0 else ""
                row = _record_failure(self.store, job, f"worker process died with exit code {code}{why}")
            return row

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for fut in as_completed([pool.submit(one, j) for j in jobs]):
                on_done(fut.result())


@dataclass
class RayBackend:
    store: ResultStore
    runner: Runner
    address: str

    @property
    def where(self) -> str:
        return f"Ray cluster {self.address}"

    def run(self, jobs: list[RunJob], on_done: OnDone) -> None:
        with ray_connection(self.address) as ray:
            task = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
            refs = {task.remote(j, str(self.store.out_dir), self.runner): j for j in jobs}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    job = refs[ref]
                    try:
                        row = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        row = _record_failure(
                            self.store, job, f"ray task failed: {type(err).__name__}: {err}"
                        )
                    else:
                        # Without a shared filesystem the worker wrote result.json on its own node: keep a
                        # copy here.
                        self.store.write(job, row, overwrite=False)
                    on_done(row)


@contextlib.contextmanager
def ray_connection(address: str) -> Iterator[Any]:
    """The ``ray`` module, connected to the cluster at ``address`` (``auto`` or ``HOST:PORT``) unless this
    process is connected already; disconnects on exit only if it connected here (so a caller holding one
    connection for many backend runs, like ``train.py tune``, keeps it).

    Raises:
        UserError: Ray is not installed, or no cluster answers at ``address``.
    """
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
        yield ray
    finally:
        if own:
            ray.shutdown()


def default_workers(n_runs: int) -> int:
    """min(usable CPUs, runs), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, n_runs))


def make_backend(store: ResultStore, runner: Runner, *, workers: int, ray_address: str | None) -> Backend:
    """Ray when an address is given, else inline for one worker, else worker processes."""
    if ray_address:
        return RayBackend(store, runner, ray_address)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    return InlineBackend(store, runner) if workers == 1 else ProcessBackend(store, runner, workers)
