"""``train.py tune``: calibrate a clipper's parameters by nested walk-forward search, and test the choice.

Nesting (the outer test period never reaches the search):

- **Outer folds** over the whole market (:func:`agents.compare_spec.make_folds`, as ``compare --folds``).
  Outer fold ``k`` has a training window (plus a ``--val-bars`` tail, as in compare) and a test period.
- **Inner folds** are walk-forward folds made inside outer fold ``k``'s training window only (its
  ``--val-bars`` tail included, the ``--gap`` before the outer test excluded): every inner run trains,
  validates and is evaluated on bars before outer test ``k``.
- **Search**: one Optuna study per outer fold (TPE, seeded). A trial is one setting of the searched
  keywords (``--space``); its objective is the mean, over inner folds x seeds, of the inner held-out
  period's ``--metric`` (oriented so that higher is better: :meth:`agents.task_spec.TaskSpec.score`). A trial
  with a failed run or a non-finite metric fails (Optuna never picks it).
- **Test**: the best trial's setting is trained on outer fold ``k``'s training window (x seeds) and evaluated
  on outer test ``k``, next to the ``--against`` arms on the same folds and seeds (``default``: the clipper of
  ``--clip`` untuned; ``none`` or any compare spec). ``summary.md`` compares the arms run by run with the
  ``default`` arm (:func:`agents.compare_report.paired_report`: IQM with stratified bootstrap CIs, paired
  differences, probability of improvement, Holm-corrected Wilcoxon p-values).

Execution: the runs of a trial are :class:`agents.compare_spec.RunJob` executed by compare's backends
(:func:`agents.compare_backends.make_backend`: inline, worker processes, or Ray with ``--ray-address``) and
stored in the tune folder as a compare folder stores them (:class:`agents.compare_store.ResultStore`, one
``result.json`` per run folder; TensorBoard sees every run). Each round asks ``--batch`` trials of every
outer fold's study (the studies are independent, so their runs go to the backend together), runs their jobs,
and tells the objectives; then the final runs of every fold run together.

Determinism and resume: each ask uses a TPE sampler (5 random trials first, :data:`STARTUP_TRIALS`) seeded
from (``--sampler-seed``, outer fold, trial number), so a search depends on its study's history and
``--batch`` only, not on the backend, the worker count or whether it was interrupted; the first N trials of
a search are those of the same search run with ``--trials N``. Optuna's storage is ``<out>/optuna.db``
(SQLite, written by the driver only); re-running the same command resumes: finished trials are kept, a trial
left running by a killed run is completed from the runs already stored, and stored runs are reused (a run
folder is named by the setting, the seed and the fold, so a setting sampled again is not retrained). Raising
``--trials`` extends the search.
Nothing written is overwritten; a tune folder started with other settings is refused (``tune.json``).

Outputs in the tune folder: ``trials.csv`` (every trial: outer fold, number, state, setting, objective),
``results.csv`` (the outer test runs: one row per arm x outer fold x seed), ``summary.md`` (chosen setting
per fold, outer test per arm, the paired comparison), ``tune.json``, ``commands.txt``, ``optuna.db`` and the
run folders (``outer<k>__inner<i>__<setting>__seed<s>`` for the search, ``outer<k>__test__<setting>__seed<s>``
for the outer test).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import math
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agents.compare_backends import default_workers, make_backend, ray_connection
from agents.compare_outcome import Runner
from agents.compare_report import (
    PAIRED_DEFINITIONS,
    format_paired,
    paired_report,
    primary_metric,
    results_frame,
)
from agents.compare_spec import ClipPart, ClipSpec, FoldRanges, RunJob, expand_grid, make_folds, parse_clips
from agents.compare_spec import parse_seeds as _parse_seeds
from agents.compare_store import ResultStore, config_diff, write_row
from agents.errors import UserError
from agents.options import add_run_options
from agents.tune_space import Param, check_part, check_space, default_space, parse_space, tuned_spec

__all__ = ["NestedFold", "TuneResult", "nested_folds", "register_cli", "run_from_args", "run_tune"]

#: The tuned arm's label in results.csv and summary.md.
TUNED = "tuned"
#: Random trials of every study before TPE models the objective.
STARTUP_TRIALS = 5
#: The ``--against`` word for the clipper of ``--clip`` with its untuned (default) keywords.
DEFAULT = "default"


@dataclass(frozen=True)
class NestedFold:
    """One outer walk-forward fold and the inner folds of its search.

    Attributes:
        outer: the outer fold (its test period is what the chosen setting is judged on).
        inner: walk-forward folds inside ``search_window``; every range ends by ``search_window[1]``.
    """

    outer: FoldRanges
    inner: tuple[FoldRanges, ...]

    @property
    def search_window(self) -> tuple[int, int]:
        """The bars the search of this fold may use: the outer training window with its validation tail."""
        end = self.outer.val[1] if self.outer.val else self.outer.train[1]
        return self.outer.train[0], end


def _shift(f: FoldRanges, by: int) -> FoldRanges:
    move = lambda r: (r[0] + by, r[1] + by)  # noqa: E731
    return FoldRanges(f.index, move(f.train), move(f.val) if f.val else None, move(f.test))


def nested_folds(
    n_bars: int,
    outer_folds: int,
    inner_folds: int,
    *,
    mode: str = "expanding",
    test_bars: int | None = None,
    min_train_bars: int | None = None,
    inner_bars: int | None = None,
    val_bars: int = 0,
    gap: int = 0,
) -> list[NestedFold]:
    """Outer walk-forward folds over ``n_bars`` and, inside each one's training window, inner folds.

    Args:
        n_bars: bars in the data.
        outer_folds, inner_folds: numbers of folds (>= 1).
        mode, test_bars, min_train_bars, val_bars, gap: the outer folds, as :func:`make_folds`.
        inner_bars: bars per inner held-out period (default: walk_forward's, window // (inner_folds + 1)).
            The inner folds use the same ``mode``, ``val_bars`` and ``gap``.

    Raises:
        ValueError: folds that do not fit (the message names the outer fold and the option to change).
    """
    if inner_folds < 1:
        raise ValueError(f"--inner-folds must be >= 1, got {inner_folds}")
    outer = make_folds(
        n_bars,
        outer_folds,
        mode=mode,
        test_bars=test_bars,
        min_train_bars=min_train_bars,
        val_bars=val_bars,
        gap=gap,
    )
    out = []
    for f in outer:
        a, b = NestedFold(f, ()).search_window
        try:
            inner = make_folds(
                b - a, inner_folds, mode=mode, test_bars=inner_bars, val_bars=val_bars, gap=gap
            )
        except ValueError as exc:
            raise ValueError(
                f"outer fold {f.index} (search window [{a}, {b})): inner folds do not fit: {exc}; use fewer "
                "--inner-folds, a smaller --inner-bars, fewer --outer-folds or more data"
            ) from None
        out.append(NestedFold(f, tuple(_shift(g, a) for g in inner)))
    return out


@dataclass(frozen=True)
class TuneResult:
    """What a tune produced.

    Attributes:
        out_dir: the tune folder.
        trials: one row per trial (trials.csv).
        results: one row per arm x outer fold x seed (results.csv).
        chosen: outer fold -> the chosen setting (searched keywords), None when every trial failed.
        paired: the paired comparison with the reference arm (None without ``--against`` arms).
        reference: the reference arm; metric: the test metric of ``paired``.
        n_ran: runs executed by this call; n_skipped: runs found finished and reused.
    """

    out_dir: Path
    trials: pd.DataFrame
    results: pd.DataFrame
    chosen: dict[int, dict[str, Any] | None]
    paired: pd.DataFrame | None
    reference: str | None
    metric: str
    n_ran: int
    n_skipped: int


@dataclass(frozen=True)
class _Plan:
    """What a tune runs: the clipper, its space, the arms, seeds, folds and the task that judges them."""

    base: ClipPart
    space: tuple[Param, ...]
    arms: dict[str, ClipSpec]  # --against arm label -> spec (tuned arm not included)
    seeds: list[int]
    folds: list[NestedFold]
    metric: str
    task: Any
    base_config: dict[str, Any]


class _Executor:
    """Runs jobs on compare's backends, reusing what the store (or this call) already has."""

    def __init__(
        self,
        store: ResultStore,
        runner: Runner,
        *,
        workers: int | None,
        ray_address: str | None,
        retry_failed: bool,
        say: Callable[[str], None],
    ) -> None:
        self.store, self.runner, self.workers, self.ray_address = store, runner, workers, ray_address
        self.retry_failed, self.say = retry_failed, say
        self.rows: dict[str, dict[str, Any]] = {}
        self.n_ran = 0
        self.n_skipped = 0

    def run(self, jobs: Sequence[RunJob]) -> dict[str, dict[str, Any]]:
        """The row of every job (by name), running the ones not finished yet."""
        unique = list({j.name: j for j in jobs}.values())
        rest = [j for j in unique if j.name not in self.rows]
        # Each job is scanned once per call, so a failed run is retried (--retry-failed) at most once.
        found, todo = self.store.scan(rest, retry_failed=self.retry_failed, say=self.say)
        self.rows.update(found)
        self.n_skipped += len(found)
        if todo:
            n_workers = self.workers if self.workers is not None else default_workers(len(todo))
            backend = make_backend(self.store, self.runner, workers=n_workers, ray_address=self.ray_address)
            self.say(f"tune: running {len(todo)} run(s) on {backend.where}")

            def on_done(row: dict[str, Any]) -> None:
                self.rows[row["run"]] = row
                self.n_ran += 1

            backend.run(todo, on_done)
        return {j.name: self.rows[j.name] for j in unique if j.name in self.rows}


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[None]:
    """Connect to Ray once for the whole tune (compare's RayBackend then reuses the connection instead of
    connecting and disconnecting in every round)."""
    if not address:
        yield
        return
    with ray_connection(address):
        yield


def _new_out_dir(root: Path = Path("runs")) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = root / f"tune-{stamp}"
    k = 2
    while out.exists():
        out = root / f"tune-{stamp}-{k}"
        k += 1
    return out


def _inner_jobs(plan: _Plan, k: int, spec: ClipSpec) -> list[RunJob]:
    jobs = expand_grid(plan.base_config, [spec], plan.seeds, plan.folds[k].inner)
    return [replace(j, name=f"outer{k}__inner{j.fold}__{spec.slug}__seed{j.seed}") for j in jobs]


def _test_jobs(plan: _Plan, k: int, spec: ClipSpec) -> list[RunJob]:
    jobs = expand_grid(plan.base_config, [spec], plan.seeds, [plan.folds[k].outer])
    return [replace(j, name=f"outer{k}__test__{spec.slug}__seed{j.seed}") for j in jobs]


def _objective(rows: Sequence[dict[str, Any] | None], plan: _Plan) -> tuple[float | None, float, str]:
    """``(objective, mean metric, note)``: objective None when a run failed or its metric is not finite."""
    values, raw = [], []
    for r in rows:
        if r is None or r.get("status") != "ok":
            what = r.get("error", "") if r else "not run"
            return None, math.nan, f"run {r['run'] if r else '?'} failed: {what}"[:300]
        v = r.get(f"test_{plan.metric}")
        if not (isinstance(v, (int, float)) and math.isfinite(v)):
            return None, math.nan, f"run {r['run']}: test {plan.metric} is not finite ({v})"
        raw.append(float(v))
        values.append(plan.task.score(plan.metric, float(v)))
    return float(np.mean(values)), float(np.mean(raw)), ""


def _check_metric(rows: Sequence[dict[str, Any]], metric: str) -> None:
    """A ``--metric`` no finished run reports is a typo: fail after the first round, not after the budget."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if ok and not any(f"test_{metric}" in r for r in ok):
        names = sorted({k[5:] for r in ok for k in r if k.startswith("test_")})
        raise UserError(
            f"--metric {metric!r} is not a test metric of these runs; use one of {', '.join(names)}"
        )


def _trial_seed(sampler_seed: int, fold: int, number: int) -> int:
    return int(np.random.SeedSequence([sampler_seed, fold, number]).generate_state(1)[0])


class _Search:
    """The Optuna studies of a tune (one per outer fold) in ``<out>/optuna.db``."""

    def __init__(self, out_dir: Path, n_trials: int, sampler_seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.storage = optuna.storages.RDBStorage(f"sqlite:///{(out_dir / 'optuna.db').resolve()}")
        self.n_trials = n_trials
        self.sampler_seed = sampler_seed
        # TPE models from a few random trials first. A fixed count (not one derived from --trials), so that
        # raising --trials extends a search exactly as a fresh run with the larger budget would have run it.
        self.startup = STARTUP_TRIALS

    def study(self, k: int, number: int = 0) -> Any:
        """Outer fold ``k``'s study, with a TPE sampler seeded for trial ``number``."""
        sampler = self.optuna.samplers.TPESampler(
            seed=_trial_seed(self.sampler_seed, k, number), n_startup_trials=self.startup
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", self.optuna.exceptions.ExperimentalWarning)
            return self.optuna.create_study(
                storage=self.storage,
                study_name=f"outer{k}",
                sampler=sampler,
                direction="maximize",
                load_if_exists=True,
            )

    def trials(self, k: int) -> list[Any]:
        return self.study(k).get_trials(deepcopy=False)


def _say_trial(
    say: Callable[[str], None], k: int, number: int, spec: ClipSpec, obj: float | None, note: str
) -> None:
    what = f"objective {obj:+.4f}" if obj is not None else f"FAILED ({note})"
    say(f"tune: outer fold {k} trial {number}: {spec.label} -> {what}")


def _search(plan: _Plan, search: _Search, ex: _Executor, batch: int, say: Callable[[str], None]) -> None:
    """Ask, run and tell trials until every study has ``n_trials`` finished ones."""
    state = search.optuna.trial.TrialState
    distributions = {p.name: p.distribution() for p in plan.space}
    # A trial left RUNNING belongs to a tune that was killed (this call holds the folder's lock): complete it
    # from its stored runs first.
    stale = {k: [t for t in search.trials(k) if t.state == state.RUNNING] for k in range(len(plan.folds))}
    first = True
    while True:
        round_trials: list[tuple[int, int, dict[str, Any]]] = []
        for k in range(len(plan.folds)):
            trials = search.trials(k)
            n_finished = sum(t.state in (state.COMPLETE, state.FAIL, state.PRUNED) for t in trials)
            round_trials += [(k, t.number, dict(t.params)) for t in stale[k]]
            want = min(batch, search.n_trials - n_finished - len(stale[k]))
            stale[k] = []
            for _ in range(max(0, want)):
                number = len(search.trials(k))
                trial = search.study(k, number).ask(distributions)
                round_trials.append((k, trial.number, dict(trial.params)))
        if not round_trials:
            return
        specs = {}
        for k, number, params in round_trials:
            spec = tuned_spec(plan.base, params)
            try:
                check_part(spec.policy, what=f"outer fold {k} trial {number}")
            except ValueError as exc:
                raise UserError(f"{exc}; narrow --space to values the clipper accepts") from None
            specs[(k, number)] = spec
        jobs = [j for (k, number), spec in specs.items() for j in _inner_jobs(plan, k, spec)]
        rows = ex.run(jobs)
        if first:
            _check_metric(list(rows.values()), plan.metric)
            first = False
        for (k, number), spec in specs.items():
            obj, _, note = _objective([rows.get(j.name) for j in _inner_jobs(plan, k, spec)], plan)
            study = search.study(k)
            if obj is None:
                study.tell(number, state=state.FAIL, skip_if_finished=True)
            else:
                study.tell(number, obj, skip_if_finished=True)
            _say_trial(say, k, number, spec, obj, note)


def _trials_frame(plan: _Plan, search: _Search, store: ResultStore) -> pd.DataFrame:
    recs = []
    for k in range(len(plan.folds)):
        for t in search.trials(k):
            spec = tuned_spec(plan.base, dict(t.params))
            rows = [store.read(j) for j in _inner_jobs(plan, k, spec)]
            obj, raw, note = _objective(rows, plan)
            rec: dict[str, Any] = {
                "outer_fold": k,
                "trial": t.number,
                "state": t.state.name.lower(),
                "clip": spec.label,
            }
            rec.update({f"param_{p.name}": t.params.get(p.name) for p in plan.space})
            rec.update(
                objective=t.value if t.value is not None else math.nan,
                **{f"inner_{plan.metric}": raw},
                n_runs=len(rows),
                n_ok=sum(1 for r in rows if r and r.get("status") == "ok"),
                note=note,
            )
            recs.append(rec)
    return pd.DataFrame(recs)


def _best(search: _Search, k: int) -> Any | None:
    state = search.optuna.trial.TrialState
    done = [t for t in search.trials(k) if t.state == state.COMPLETE]
    # The highest objective; ties go to the earliest trial (Optuna's best_trial rule, stated here).
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _plan(
    base_config: dict[str, Any],
    clip: str | ClipPart,
    space: str | Sequence[Param] | None,
    seeds: Any,
    outer_folds: int,
    inner_folds: int,
    n_bars: int | None,
    fold_opts: dict[str, Any],
    metric: str | None,
    against: str | Sequence[str],
    runner: Runner | None,
) -> _Plan:
    from agents.compare import AgentsRunner, _load_market, _preflight
    from agents.tasks import get_task

    task = get_task(base_config.get("task", "trading"))
    try:  # from the command line: a bad value is the user's mistake
        given = space is not None and not (isinstance(space, str) and not space.strip())
        if given:  # before --clip: a typo in the space fails before torch is imported
            params = parse_space(space) if isinstance(space, str) else tuple(space)
        base = _base_part(clip)
        if not given:
            fixed = {k for k, _ in base.kwargs}
            params = tuple(p for p in default_space(base.name) if p.name not in fixed)
        check_space(base, params)
        seed_list = _parse_seeds(seeds)
        arms = _parse_against(against, base)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    real = runner is None or isinstance(runner, AgentsRunner)
    market = _load_market(base_config) if real or n_bars is None else None
    try:
        folds = nested_folds(len(market) if n_bars is None else n_bars, outer_folds, inner_folds, **fold_opts)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    metric = metric or task.default_metric
    plan = _Plan(base, params, arms, seed_list, folds, metric, task, base_config)
    if real:
        real_runner = runner or AgentsRunner()
        default = ClipSpec(base, base)
        specs = list({s.label: s for s in [default, *arms.values()]}.values())
        outer = [f.outer for f in folds]
        _preflight(expand_grid(base_config, specs, seed_list[:1], outer), outer, market, real_runner)
        for f in folds:
            try:
                _preflight(
                    expand_grid(base_config, [default], seed_list[:1], f.inner),
                    list(f.inner),
                    market,
                    real_runner,
                )
            except UserError as exc:
                raise UserError(f"inner folds of outer fold {f.outer.index}: {exc}") from None
    return plan


def _base_part(clip: str | ClipPart) -> ClipPart:
    if isinstance(clip, ClipPart):
        return clip
    specs = parse_clips(clip)
    if len(specs) != 1 or specs[0].policy != specs[0].value:
        raise ValueError(
            f"--clip {clip!r}: tune searches one clipper used for both the policy and the value update; give "
            "one name[:key=value,...], e.g. --clip zclip"
        )
    if specs[0].policy.name in ("none", "sb3"):
        raise ValueError(f"--clip {clip!r} has no parameter to tune; give e.g. --clip zclip or --clip norm")
    return specs[0].policy


def _parse_against(against: str | Sequence[str], base: ClipPart) -> dict[str, ClipSpec]:
    """``--against``: ``default`` (``--clip`` untuned) and compare specs; arm label -> spec."""
    texts = [against] if isinstance(against, str) else list(against)
    arms: dict[str, ClipSpec] = {}
    for text in texts:
        if not text.strip():
            continue
        rest = []
        for token in (t.strip() for t in text.split(";")):
            words = [w.strip() for w in token.split(",")]
            if DEFAULT in words:
                if DEFAULT in arms or words.count(DEFAULT) > 1:
                    raise ValueError(f"--against: {DEFAULT!r} is given twice")
                arms[DEFAULT] = ClipSpec(base, base)
                words = [w for w in words if w != DEFAULT]
            rest += [",".join(words)] if any(words) else []
        for spec in parse_clips(";".join(rest)) if rest else []:
            if spec.label in arms or spec.label in (TUNED, DEFAULT):
                raise ValueError(f"--against: {spec.label!r} is given twice (or is a reserved arm name)")
            arms[spec.label] = spec
    return arms


def _manifest(plan: _Plan) -> dict[str, Any]:
    return {
        "clip": plan.base.text,
        "space": [p.text for p in plan.space],
        "seeds": plan.seeds,
        "metric": plan.metric,
        "folds": [
            {
                "outer": {"train": f.outer.train, "val": f.outer.val, "test": f.outer.test},
                "inner": [{"train": g.train, "val": g.val, "test": g.test} for g in f.inner],
            }
            for f in plan.folds
        ],
        "base_config": plan.base_config,
    }


def _check_manifest(
    store: ResultStore, manifest: dict[str, Any], sampler_seed: int, command: str | None
) -> None:
    """``tune.json``: what the tune was started with; a resumed tune must ask for the same (but the budget,
    the batch and where it runs)."""
    import json

    path = store.out_dir / "tune.json"
    want = {**manifest, "sampler_seed": sampler_seed}
    if path.exists():
        old = json.loads(path.read_text())
        diff = config_diff({k: old.get(k) for k in want}, json.loads(json.dumps(want, default=str)))
        if diff:
            raise UserError(
                f"{store.out_dir} holds a tune started with other settings ({'; '.join(diff[:4])}); re-run "
                "with the options it was started with (only --trials, --batch, --workers, --ray-address may "
                "change), "
                "or use a new --out"
            )
    else:
        write_row(path, {**want, "command": command})


def run_tune(
    base_config: dict[str, Any],
    clip: str | ClipPart,
    space: str | Sequence[Param] | None = None,
    *,
    trials: int = 20,
    seeds: int | str | Sequence[int] = 2,
    outer_folds: int = 3,
    inner_folds: int = 2,
    n_bars: int | None = None,
    fold_mode: str = "expanding",
    test_bars: int | None = None,
    min_train_bars: int | None = None,
    inner_bars: int | None = None,
    val_bars: int = 0,
    gap: int = 0,
    metric: str | None = None,
    against: str | Sequence[str] = "default,none",
    batch: int = 1,
    sampler_seed: int = 0,
    out: str | Path | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    retry_failed: bool = False,
    runner: Runner | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = print,
) -> TuneResult:
    """Run (or resume) a nested tune and write its results (see the module docstring).

    Args:
        base_config: a RunConfig dict; its clip section, seed and data ranges are replaced per run.
        clip: the clipper to tune (``name[:key=value,...]``; given keywords stay fixed).
        space: the searched keywords (``--space`` text or parsed); default: the clipper's default space.
        trials: trials per outer fold.
        seeds: seeds of every setting (count, comma list or sequence).
        outer_folds, inner_folds: numbers of outer and inner walk-forward folds.
        n_bars: bars in the data (counted from ``base_config["data"]`` when None).
        fold_mode, test_bars, min_train_bars, val_bars, gap: the outer folds (as compare's); inner_bars:
            bars per inner held-out period. See :func:`nested_folds`.
        metric: the test metric the search optimizes (default: the task's, ``sharpe`` for trading).
        against: arms tested on the outer folds next to the tuned one: ``default`` (``clip`` untuned) and
            compare clipper specs, comma separated; ``""`` for none.
        batch: trials asked per study and round (their runs go to the backend together).
        sampler_seed: seeds Optuna's sampler (with the outer fold and the trial number).
        out: tune folder (default ``runs/tune-<timestamp>``); an existing one is resumed.
        workers, ray_address, retry_failed, runner, command, log: as :func:`agents.compare.run_compare`.

    Returns:
        The :class:`TuneResult`.

    Raises:
        UserError: bad options, folds that do not fit, a tune folder started with other settings.
    """
    say = log or (lambda _msg: None)
    for name, value, low in (("--trials", trials, 1), ("--batch", batch, 1)):
        if not isinstance(value, int) or value < low:
            raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
    fold_opts = {
        "mode": fold_mode,
        "test_bars": test_bars,
        "min_train_bars": min_train_bars,
        "inner_bars": inner_bars,
        "val_bars": val_bars,
        "gap": gap,
    }
    plan = _plan(
        base_config, clip, space, seeds, outer_folds, inner_folds, n_bars, fold_opts, metric, against, runner
    )
    if runner is None:
        from agents.compare import AgentsRunner

        runner = AgentsRunner()
    out_dir = Path(out) if out is not None else _new_out_dir()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder; give a folder path")
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out_dir)
    with store.lock(), _ray_session(ray_address):
        store.append_command(command)
        _check_manifest(store, _manifest(plan), sampler_seed, command)
        search = _Search(out_dir, trials, sampler_seed)
        ex = _Executor(
            store, runner, workers=workers, ray_address=ray_address, retry_failed=retry_failed, say=say
        )
        say(
            f"tune: {plan.base.name} over {', '.join(p.text for p in plan.space)}; {trials} trial(s) x "
            f"{len(plan.folds)} outer fold(s), {len(plan.folds[0].inner)} inner fold(s) x {len(plan.seeds)} "
            f"seed(s) each; output in {out_dir}"
        )
        _search(plan, search, ex, batch, say)
        chosen, final_specs = {}, {}
        for k in range(len(plan.folds)):
            best = _best(search, k)
            chosen[k] = dict(best.params) if best is not None else None
            final_specs[k] = {TUNED: tuned_spec(plan.base, chosen[k])} if best is not None else {}
            final_specs[k].update(plan.arms)
            if best is None:
                say(f"tune: outer fold {k}: every trial failed; no tuned setting to test")
        ex.run(
            [j for k, specs in final_specs.items() for s in specs.values() for j in _test_jobs(plan, k, s)]
        )
        trials_df = _trials_frame(plan, search, store)
        results = _results(plan, final_specs, ex.rows, search)
        paired, ref, metric_used = _paired(plan, results)
        _write_outputs(store, plan, trials_df, results, paired, ref, metric_used, chosen, search, command)
    say("")
    say((out_dir / "summary.md").read_text().split("## Definitions")[0].rstrip())
    say("")
    say(
        f"tune: {ex.n_ran} run(s) ran, {ex.n_skipped} reused; trials.csv, results.csv, summary.md in "
        f"{out_dir}; "
        f"tensorboard --logdir {out_dir}"
    )
    return TuneResult(out_dir, trials_df, results, chosen, paired, ref, metric_used, ex.n_ran, ex.n_skipped)


def _results(
    plan: _Plan, final_specs: dict[int, dict[str, ClipSpec]], rows: dict[str, dict[str, Any]], search: _Search
) -> pd.DataFrame:
    """One row per arm x outer fold x seed (a run shared by two arms, e.g. a tuned setting equal to an
    ``--against`` spec, appears under both)."""
    recs = []
    for k, specs in final_specs.items():
        best = _best(search, k)
        for arm, spec in specs.items():
            for job in _test_jobs(plan, k, spec):
                row = rows.get(job.name)
                if row is None:
                    continue
                rec = {key: v for key, v in row.items() if key != "config"}
                rec["arm"] = arm
                rec["inner_objective"] = best.value if arm == TUNED and best is not None else math.nan
                recs.append(rec)
    if not recs:
        return pd.DataFrame(columns=["arm", "clip", "seed", "fold", "status"])
    frame = results_frame(recs)
    lead = ["arm", "inner_objective"]
    return frame[lead + [c for c in frame.columns if c not in lead]]


def _paired(plan: _Plan, results: pd.DataFrame) -> tuple[pd.DataFrame | None, str | None, str]:
    if results.empty or not plan.arms:
        return None, None, plan.metric
    columns = plan.task.summary_columns()
    metric, _ = primary_metric(results, plan.metric, ((plan.metric, "", 4), *columns))
    ref = DEFAULT if DEFAULT in plan.arms else next(iter(plan.arms))
    order = [TUNED, *plan.arms]
    table, _ = paired_report(
        results.assign(clip=results["arm"]),
        order,
        metric=metric,
        reference=ref,
        lower_is_better=metric in plan.task.lower_is_better,
    )
    return table, ref, metric


def _fmt_params(params: dict[str, Any] | None) -> str:
    if params is None:
        return "— (every trial failed)"
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _cell(x: Any) -> str:
    return f"{x:+.4f}" if isinstance(x, (int, float)) and math.isfinite(x) else "—"


def _write_outputs(
    store: ResultStore,
    plan: _Plan,
    trials_df: pd.DataFrame,
    results: pd.DataFrame,
    paired: pd.DataFrame | None,
    ref: str | None,
    metric: str,
    chosen: dict[int, dict[str, Any] | None],
    search: _Search,
    command: str | None,
) -> None:
    # Derived from optuna.db and the runs' result.json files, so rewritten whole on resume (temp name first:
    # a crash leaves the old files intact).
    out_dir = store.out_dir
    for name, frame in (("trials.csv", trials_df), ("results.csv", results)):
        tmp = out_dir / f".{name}.tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, out_dir / name)
    arms = [TUNED, *plan.arms]
    col = f"test_{metric}"
    head = [
        "outer fold",
        "search window",
        "outer test",
        "trials ok/failed",
        "chosen setting",
        "inner objective",
        *[f"{a} {metric}" for a in arms],
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for k, f in enumerate(plan.folds):
        t = trials_df[trials_df["outer_fold"] == k] if len(trials_df) else trials_df
        n_ok = int((t["state"] == "complete").sum()) if len(t) else 0
        best = _best(search, k)
        means = []
        for arm in arms:
            g = (
                results[(results["arm"] == arm) & (results["fold"] == k)]
                if col in results
                else results.iloc[:0]
            )
            vals = pd.to_numeric(g[col], errors="coerce") if len(g) else pd.Series(dtype=float)
            means.append(_cell(float(vals.mean())) if vals.notna().any() else "—")
        a, b = f.search_window
        lines.append(
            f"| {k} | [{a}, {b}) | [{f.outer.test[0]}, {f.outer.test[1]}) | {n_ok}/{len(t) - n_ok} | "
            f"{_fmt_params(chosen[k])} | {_cell(best.value if best else math.nan)} | "
            + " | ".join(means)
            + " |"
        )
    paired_text = ""
    if paired is not None:
        label = f"test {metric}"
        paired_text = (
            f"## Paired comparison with `{ref}` on {label} (same seed, same outer fold)\n\n"
            f"{format_paired(paired, label=label)}\n\n"
            f"`{TUNED}` is the setting chosen for each outer fold by its own search.\n\n"
        )
    algo, data = plan.base_config.get("algo", {}), plan.base_config.get("data", {})
    fold_lines = "\n".join(
        f"| {f.outer.index} | outer | [{f.outer.train[0]}, {f.outer.train[1]}) | "
        f"{f'[{f.outer.val[0]}, {f.outer.val[1]})' if f.outer.val else '—'} | "
        f"[{f.outer.test[0]}, {f.outer.test[1]}) |\n"
        + "\n".join(
            f"| {f.outer.index} | inner {g.index} | [{g.train[0]}, {g.train[1]}) | "
            f"{f'[{g.val[0]}, {g.val[1]})' if g.val else '—'} | [{g.test[0]}, {g.test[1]}) |"
            for g in f.inner
        )
        for f in plan.folds
    )
    failed = results[results["status"] != "ok"] if "status" in results else results.iloc[:0]
    fail_lines = "".join(f"- `{r.run}` ({r.arm}): {r.error}\n" for r in failed.itertuples()) or "none\n"
    text = (
        f"# Clipper calibration: `{plan.base.text}` ({plan.task.name} task)\n\n"
        f"Command: `{command or '(python API)'}`\n\n"
        f"Algorithm `{algo.get('algo')}`, {algo.get('timesteps')} timesteps per run, "
        f"net {algo.get('net_arch')}, "
        f"data `{data.get('data')}`; seeds {plan.seeds}; searched: "
        f"{', '.join(f'`{p.text}`' for p in plan.space)}; {search.n_trials} trial(s) per outer fold, "
        f"objective: mean inner {plan.metric} (higher is better"
        f"{', sign flipped' if plan.metric in plan.task.lower_is_better else ''}).\n\n"
        f"## Chosen setting and outer test per fold (mean over seeds)\n\n" + "\n".join(lines) + "\n\n"
        f"{paired_text}"
        f"## Definitions\n\n{NESTING}\n\n{PAIRED_DEFINITIONS}\n\n"
        f"## Folds (bar index ranges [start, stop))\n\n| outer fold | fold | train | val | test |\n"
        f"|---|---|---|---|---|\n{fold_lines}\n\n## Failed outer test runs\n\n{fail_lines}\n"
        "Every trial in `trials.csv`; outer test runs in `results.csv`; run folders hold config.yaml, "
        "TensorBoard events, eval.json.\n"
    )
    tmp = out_dir / ".summary.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, out_dir / "summary.md")


#: How a tune is nested (written into every summary.md; a constant: ``python -OO`` strips docstrings).
NESTING = """\
- **nesting**: for each outer fold, the search sees only its search window (the outer training window and
  its validation tail, before the outer test period and its gap). Inner walk-forward folds are made inside
  that window; a trial's **inner objective** is the mean over inner folds x seeds of the metric on the inner
  held-out periods. The best trial's setting is then trained on the outer training window and evaluated on
  the outer test period, which no run of the search has seen.
- **arms**: `tuned` (each outer fold's own chosen setting), `default` (the clipper of --clip with its
  default keywords) and the other --against specs, on the same outer folds and seeds."""


# ----------------------------------------------------------------------------------------------------
# CLI


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``tune`` subcommand to ``train.py``'s parser (called by :func:`agents.cli.build_parser`)."""
    from agents.tune_space import DEFAULT_SPACES

    defaults = "\n".join(f"  {k:9s} {v}" for k, v in DEFAULT_SPACES.items())
    p = subparsers.add_parser(
        "tune",
        help="calibrate a clipper's parameters by nested walk-forward search (Optuna), tested out of sample",
        description=(
            "Search a clipper's keywords with Optuna on inner walk-forward folds made inside each outer "
            "fold's training window, then train the chosen setting on that window and test it on the outer "
            "test period, which the search never saw; compare it there with the untuned clipper (and "
            "--against arms) run by run. Re-running with the same --out resumes."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "search space (--space): key=kind:spec, comma separated; kinds:\n"
            "  float:LO:HI  logfloat:LO:HI (alias log)  int:LO:HI  logint:LO:HI  choice:A|B|... (alias cat)\n"
            "default spaces:\n" + defaults + "\n"
            "nesting: outer fold k's search uses only bars before its test period (minus --gap):\n"
            "  inner folds (--inner-folds, --inner-bars) split that window; a trial's objective is the\n"
            "  mean --metric over inner held-out periods x seeds. The best setting is then trained on the\n"
            "  outer window and tested on outer test k, next to --against (default: untuned and none).\n"
            "determinism: TPE seeded by (--sampler-seed, outer fold, trial number); runs by their seeds.\n"
            "examples:\n"
            "  python train.py tune --clip zclip --trials 20 --seeds 2 --outer-folds 3 --inner-folds 2\n"
            "  python train.py tune --clip norm --space max_norm=logfloat:0.01:10 --against default,zclip\n"
            "output: runs/tune-<timestamp>/ (or --out): trials.csv, results.csv, summary.md, optuna.db and\n"
            "  one folder per run; tensorboard --logdir <that folder> shows every run."
        ),
    )
    p.add_argument(
        "--clip",
        required=True,
        metavar="NAME[:K=V,...]",
        help="the clipper to tune (both parts); keywords given here stay fixed",
    )
    p.add_argument(
        "--space", metavar="SPACE", help="searched keywords (default: the clipper's default space)"
    )
    p.add_argument("--trials", type=int, default=20, help="trials per outer fold (default 20)")
    p.add_argument(
        "--seeds", default="2", help="seeds per setting: a count (2 -> 0,1) or a comma list (default 2)"
    )
    p.add_argument("--outer-folds", type=int, default=3, help="outer walk-forward folds (default 3)")
    p.add_argument(
        "--inner-folds", type=int, default=2, help="inner folds in each outer training window (default 2)"
    )
    p.add_argument(
        "--inner-bars", type=int, help="bars per inner held-out period (default: window // (inner folds + 1))"
    )
    p.add_argument(
        "--metric",
        help="test metric the search maximizes (default: the task's, sharpe for trading; "
        "use total_return when held-out periods are under 30 days)",
    )
    p.add_argument(
        "--against",
        default="default,none",
        metavar="ARMS",
        help="arms tested next to the tuned one: 'default' (--clip untuned) and clipper specs "
        "(default: default,none; '' for none)",
    )
    p.add_argument("--batch", type=int, default=1, help="trials asked per outer fold and round (default 1)")
    p.add_argument("--sampler-seed", type=int, default=0, help="seed of Optuna's TPE sampler (default 0)")
    p.add_argument(
        "--fold-mode",
        choices=("expanding", "rolling"),
        default="expanding",
        help="training windows from bar 0 (expanding, default) or of fixed length (rolling)",
    )
    p.add_argument(
        "--test-bars", type=int, help="bars per outer test period (default: n_bars // (folds + 1))"
    )
    p.add_argument(
        "--min-train-bars", type=int, help="bars in the first (or every rolling) outer training window"
    )
    p.add_argument(
        "--val-bars",
        type=int,
        default=0,
        help="validation tail of every training window (outer and inner), as in compare (default 0)",
    )
    p.add_argument("--gap", type=int, default=0, help="bars left out before every test period (default 0)")
    p.add_argument(
        "--model",
        choices=("auto", "final", "best"),
        default="auto",
        help="evaluate the checkpoint selected on validation where runs validate (with --val-bars; the "
        "default, auto), else the final model; or force final / best",
    )
    add_run_options(p, per_run=False)
    p.add_argument(
        "--workers", type=int, help="parallel worker processes (default min(CPUs, runs of a round))"
    )
    p.add_argument(
        "--out", metavar="DIR", help="tune folder (default runs/tune-<timestamp>); reuse to resume"
    )
    p.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help="run on this Ray cluster instead (pip install 'perpclip[distributed]')",
    )
    p.add_argument("--retry-failed", action="store_true", help="run the runs recorded as failed again")
    p.set_defaults(func=run_from_args)
    return p


def run_from_args(args: argparse.Namespace) -> int:
    """The ``tune`` subcommand; returns the exit code (0, or 1 when no outer fold got a tuned setting)."""
    from agents.compare import AgentsRunner, build_base_config

    base = build_base_config(args)
    command = "python train.py " + shlex.join(sys.argv[1:])
    result = run_tune(
        base,
        args.clip,
        args.space,
        trials=args.trials,
        seeds=args.seeds,
        outer_folds=args.outer_folds,
        inner_folds=args.inner_folds,
        fold_mode=args.fold_mode,
        test_bars=args.test_bars,
        min_train_bars=args.min_train_bars,
        inner_bars=args.inner_bars,
        val_bars=args.val_bars,
        gap=args.gap,
        metric=args.metric,
        against=args.against,
        batch=args.batch,
        sampler_seed=args.sampler_seed,
        out=args.out,
        workers=args.workers,
        ray_address=args.ray_address,
        retry_failed=args.retry_failed,
        runner=AgentsRunner(model=args.model),
        command=command,
    )
    return 1 if all(v is None for v in result.chosen.values()) else 0
