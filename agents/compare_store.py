"""The compare folder as a result store: one ``result.json`` per finished run, a lock, the resume scan.

A run is finished when its folder holds ``result.json`` (written last, atomically). Re-running a compare
skips finished runs (failed ones too, unless retried), refuses to mix in a run whose stored config differs
from what the command asks for, and moves a folder left without ``result.json`` (killed mid-way) to
``_incomplete/`` (a failed run being retried: ``_failed/``). Nothing already written is overwritten or
deleted. ``compare.lock`` (a :mod:`filelock` lock, released by the OS if the process dies) keeps two
compares from writing the same folder.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from agents.compare_spec import RunJob
from agents.errors import UserError

__all__ = ["RESULT_FILE", "TRACEBACK_FILE", "ResultStore", "config_diff"]

RESULT_FILE = "result.json"
TRACEBACK_FILE = "traceback.txt"


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old before, new now`` for every (flattened) key whose value differs."""
    a = _flat(json.loads(json.dumps(old, default=_json_default)))
    b = _flat(json.loads(json.dumps(new, default=_json_default)))
    return [
        f"{k}: {a.get(k, '<absent>')!r} before, {b.get(k, '<absent>')!r} now"
        for k in sorted(a.keys() | b.keys())
        if a.get(k, "<absent>") != b.get(k, "<absent>")
    ]


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return repr(x)


def write_row(path: Path, row: dict[str, Any]) -> None:
    """Write a result row atomically (NaN stays a number: results.csv reads it back as missing)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(row, indent=1, default=_json_default))
    os.replace(tmp, path)


class ResultStore:
    """The results of the runs of one compare folder."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def run_dir(self, job: RunJob) -> Path:
        return self.out_dir / job.name

    @contextmanager
    def lock(self) -> Iterator[ResultStore]:
        """Hold ``compare.lock`` (non-blocking).

        Raises:
            UserError: another compare holds it.
        """
        lock = filelock.FileLock(str(self.out_dir / "compare.lock"), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise UserError(
                f"another compare is running in {self.out_dir}; wait for it or use another --out"
            ) from None
        try:
            yield self
        finally:
            lock.release()

    def read(self, job: RunJob) -> dict[str, Any] | None:
        """The stored row of ``job``, or None when it has not finished (or its file is unreadable)."""
        path = self.run_dir(job) / RESULT_FILE
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                return None
        return None

    def write(self, job: RunJob, row: dict[str, Any], *, overwrite: bool = True) -> None:
        """Store ``row`` as the result of ``job`` (kept as is when ``overwrite`` is False and one exists)."""
        run_dir = self.run_dir(job)
        run_dir.mkdir(parents=True, exist_ok=True)
        if overwrite or not (run_dir / RESULT_FILE).exists():
            write_row(run_dir / RESULT_FILE, row)

    def move_aside(self, job: RunJob, where: str) -> Path | None:
        """Move the run's folder to ``<where>/<run>.<k>`` (never overwriting); None if there is none."""
        src = self.run_dir(job)
        if not src.exists():
            return None
        dest_root = self.out_dir / where
        dest_root.mkdir(exist_ok=True)
        k = 1
        while (dest_root / f"{job.name}.{k}").exists():
            k += 1
        dest = dest_root / f"{job.name}.{k}"
        os.replace(src, dest)
        return dest

    def append_command(self, command: str | None) -> None:
        with open(self.out_dir / "commands.txt", "a") as fh:
            fh.write(f"{_dt.datetime.now().isoformat(timespec='seconds')}  {command or '(python API)'}\n")

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """``compare.json``: what the compare was first started with (kept on resume)."""
        if not (self.out_dir / "compare.json").exists():
            write_row(self.out_dir / "compare.json", manifest)

    def scan(
        self, jobs: Sequence[RunJob], *, retry_failed: bool, say: Callable[[str], None]
    ) -> tuple[dict[str, dict[str, Any]], list[RunJob]]:
        """Split ``jobs`` into finished ones (name -> stored row) and the ones to run.

        Raises:
            UserError: a stored run was made with another config than its job's.
        """
        rows: dict[str, dict[str, Any]] = {}
        todo: list[RunJob] = []
        for job in jobs:
            prev = self.read(job)
            if prev is not None:
                diff = config_diff(prev.get("config", {}), job.config)
                if diff:
                    raise UserError(
                        f"{self.run_dir(job)} was run with another config ({'; '.join(diff[:4])}); "
                        "re-run with the options it was started with, or use a new --out"
                    )
                if prev.get("status") != "ok" and retry_failed:
                    dest = self.move_aside(job, "_failed")
                    say(f"retrying failed run {job.name} (old folder kept in {dest})")
                    todo.append(job)
                else:
                    rows[job.name] = prev
            else:
                if self.run_dir(job).exists():
                    dest = self.move_aside(job, "_incomplete")
                    say(f"{job.name} has no {RESULT_FILE} (interrupted?); moved to {dest}, running it again")
                todo.append(job)
        return rows, todo
