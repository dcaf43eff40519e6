"""One run of a compare, executed in a worker: train, evaluate, and the typed outcome with its divergence
rules (what becomes a row of ``results.csv``).

Divergence (``RunOutcome.diverged``): training hit non-finite values (``TrainResult.diverged``), or the
policy collapsed: a constant *non-zero* position over the whole test period (max - min <=
:data:`COLLAPSE_TOL`: stuck at one bet), or a Gaussian action std (SB3's last ``train/std``) below
:data:`STD_COLLAPSE`. A policy that never holds a position is not a divergence: staying out is what the
defaults should do without an edge (the run's ``flat`` column says it, and its metrics are 0).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from agents.compare_spec import ClipPart, RunJob
from agents.compare_store import TRACEBACK_FILE, ResultStore

__all__ = ["COLLAPSE_TOL", "STD_COLLAPSE", "RunOutcome", "Runner", "execute_job", "failure_row"]

#: A test-period position range (max - min, base units) at or below this is a constant, collapsed policy.
COLLAPSE_TOL = 1e-9
#: A Gaussian policy whose last logged action std (SB3's ``train/std``) is below this has stopped exploring.
STD_COLLAPSE = 1e-3


class Runner(Protocol):
    """What a compare needs from the training code; ``agents.compare.AgentsRunner`` is the real one.

    Must be picklable (it is sent to worker processes / Ray tasks with each job).
    """

    def train(self, config: dict[str, Any], run_dir: Path) -> Any:
        """Train one run; returns an object with TrainResult's attributes."""
        ...

    def evaluate(self, run_dir: Path) -> Any:
        """Evaluate a trained run on its test range; returns an object with a TaskReport's attributes."""
        ...


def _scalar(x: Any) -> Any:
    if isinstance(x, np.generic):
        x = x.item()
    return x if isinstance(x, (int, float, bool, str)) or x is None else repr(x)


def base_row(job: RunJob) -> dict[str, Any]:
    """The identifying columns of a run's row (fold ranges, clippers), status ``failed`` until it is not."""
    f = job.folds
    clip = job.config.get("clip", {})
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
        **job.arm.columns(),
    }


def failure_row(job: RunJob, error: str) -> dict[str, Any]:
    """The row of a run whose worker died before it could write one."""
    row = base_row(job)
    row.update(error=error[:500], wall_time_s=math.nan, config=job.config, diverged=None)
    return row


@dataclass
class RunOutcome:
    """What happened to one run: training and evaluation results, or the error, and the divergence rules.

    Attributes:
        job: the run.
        status: ``ok``, ``failed`` or ``interrupted``.
        error: ``stage: Type: message`` of a failure.
        train: ``diverged, diverged_reason, timesteps, train_time_s, clip_frac_*, nonfinite_*`` (None until
            training finished).
        test: ``test_<metric>``, ``baseline_<name>_<metric>`` and position statistics (empty until
            evaluated).
        action_std: the last ``train/std`` SB3 logged, if any.
        wall_time_s: train + evaluate seconds.
    """

    job: RunJob
    status: str = "failed"
    error: str = ""
    train: dict[str, Any] | None = None
    test: dict[str, Any] = field(default_factory=dict)
    action_std: float | None = None
    wall_time_s: float = math.nan

    def record_train(self, tr: Any) -> None:
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
        self.train = row

    def record_eval(self, ev: Any, baseline_metrics: tuple[str, ...]) -> None:
        row: dict[str, Any] = {}
        for k, v in (getattr(ev, "metrics", None) or {}).items():
            v = _scalar(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[f"test_{k}"] = v
        for name, metrics in (getattr(ev, "baselines", None) or {}).items():
            for k in baseline_metrics:
                if k in (metrics or {}):
                    row[f"baseline_{name}_{k}"] = _scalar(metrics[k])
        pos = getattr(ev, "positions", None)
        if pos is not None:
            pos = np.asarray(pos, dtype=float).ravel()
            if pos.size and np.all(np.isfinite(pos)):
                constant = bool(pos.size >= 2 and float(np.ptp(pos)) <= COLLAPSE_TOL)
                row["flat"] = constant and float(np.abs(pos).max()) <= COLLAPSE_TOL
                row["collapsed"] = constant and not row["flat"]
                row["position_mean"] = float(pos.mean())
                row["position_std"] = float(pos.std())
            elif pos.size:
                row["collapsed"] = True  # non-finite positions: the policy is broken
        self.test = row

    def divergence(self) -> tuple[bool | None, str]:
        """``(diverged, reason)``: None while training has not finished."""
        if self.train is None:
            return None, ""
        reason = self.train["diverged_reason"]
        if self.train["diverged"]:
            return True, reason
        if self.test.get("collapsed"):
            pos = self.test.get("position_mean", math.nan)
            return True, f"collapsed: constant position {pos:.6g} over the test period"
        if self.action_std is not None and self.action_std < STD_COLLAPSE:
            return True, f"collapsed: action std {self.action_std:.2g} < {STD_COLLAPSE:g}"
        return False, reason

    def row(self) -> dict[str, Any]:
        """The results.csv row, with the run's ``config`` (used when resuming)."""
        row = base_row(self.job)
        row.update(status=self.status, error=self.error)
        if self.train is not None:
            row.update(self.train)
        if self.action_std is not None:
            row["action_std"] = self.action_std
        row.update(self.test)
        row["diverged"], reason = self.divergence()
        if self.train is not None:
            row["diverged_reason"] = reason
        row["wall_time_s"] = self.wall_time_s
        row["config"] = self.job.config
        return row


def read_progress(run_dir: Path) -> pd.DataFrame | None:
    """The run's ``progress.csv`` (SB3's logged scalars, one row per dump), or None where there is none or it
    cannot be read. Read once per run: every statistic below is computed from this frame."""
    path = Path(run_dir) / "progress.csv"
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def _series(progress: pd.DataFrame, col: str) -> np.ndarray:
    """One logged column as floats, without the rows of the dumps that did not log it."""
    return pd.to_numeric(progress[col], errors="coerce").dropna().to_numpy(dtype=float)


def final_action_std(progress: pd.DataFrame | None) -> float | None:
    """Last ``train/std`` SB3 logged (Gaussian policies of PPO/A2C), if any."""
    if progress is None or "train/std" not in progress:
        return None
    values = _series(progress, "train/std")
    return float(values[-1]) if values.size else None


#: Spikes are logged grad-norm values above median + SPIKE_MADS * MAD (``agents.stats.count_spikes``).
SPIKE_MADS = 5.0

#: SB3's logged losses whose spikes are counted (PPO/A2C: ``train/value_loss``, ``train/loss``; SAC/TD3:
#: ``train/critic_loss``, ``train/actor_loss``).
LOSS_COLUMNS = ("train/loss", "train/value_loss", "train/critic_loss", "train/actor_loss")


def _grad_norm_columns(progress: pd.DataFrame) -> list[str]:
    return sorted(c for c in progress.columns if c.startswith("clip/") and c.endswith("/grad_norm"))


def grad_norm_stability(progress: pd.DataFrame | None) -> dict[str, float]:
    """Per clipped part, from the ``clip/<part>/grad_norm`` series: ``grad_spikes_<part>`` (values above
    median + 5 MAD, :func:`agents.stats.count_spikes`) and ``grad_kurtosis_<part>`` (excess kurtosis,
    :func:`agents.stats.excess_kurtosis`). Empty when the run logged no such series (``clip: sb3``, or a
    runner that writes no progress.csv).

    Each logged value is the mean over one logging interval (a rollout's updates for PPO), not one update.
    """
    from agents import stats

    out: dict[str, float] = {}
    if progress is None:
        return out
    for col in _grad_norm_columns(progress):
        part = col.split("/")[1]
        series = _series(progress, col)
        if series.size == 0:
            continue
        out[f"grad_spikes_{part}"] = float(stats.count_spikes(series, SPIKE_MADS))
        out[f"grad_kurtosis_{part}"] = stats.excess_kurtosis(series)
    return out


def loss_and_validation_stability(progress: pd.DataFrame | None, metric: str = "sharpe") -> dict[str, float]:
    """``loss_spikes_<name>`` (logged loss values above median + 5 MAD) per SB3 loss,
    ``grad_return_corr_<part>`` (Spearman correlation between an update's gradient norm and the largest
    absolute bar return in its data, :func:`agents.stats.grad_norm_return_correlation`), and
    ``val_auc_<metric>``: the area under the validation curve (``eval/<metric>`` against training steps,
    :func:`agents.stats.normalized_auc`, the curve's time-average: it rewards learning early as well as
    ending high). Empty where the series are missing (no validation: no ``val_auc``).
    """
    from agents import stats

    out: dict[str, float] = {}
    if progress is None:
        return out
    df = progress
    for col in LOSS_COLUMNS:
        if col in df:
            series = _series(df, col)
            if series.size:
                out[f"loss_spikes_{col.split('/')[1]}"] = float(stats.count_spikes(series, SPIKE_MADS))
    # Does a price spike cause a gradient spike? Rows hold an update's mean gradient norm per part next to
    # the largest |bar log return| of the data it trained on (TradeMetricsCallback); Spearman over rows.
    stress = "train/batch_abs_return_max"
    if stress in df:
        for col in _grad_norm_columns(df):
            pair = df[[col, stress]].apply(pd.to_numeric, errors="coerce").dropna()
            if len(pair) >= 3:
                corr = stats.grad_norm_return_correlation(pair[col].to_numpy(), pair[stress].to_numpy())
                out[f"grad_return_corr_{col.split('/')[1]}"] = corr
    value_col = f"eval/{metric}"
    if value_col in df and "time/total_timesteps" in df:
        # Validation rows are dumped at the step of the training row before them (step 0 before any).
        steps = pd.to_numeric(df["time/total_timesteps"], errors="coerce").ffill().fillna(0.0)
        values = pd.to_numeric(df[value_col], errors="coerce")
        curve = pd.DataFrame({"step": steps, "v": values}).dropna().drop_duplicates("step", keep="last")
        curve = curve[pd.Series(curve["v"]).map(math.isfinite)]
        if len(curve) >= 2:
            out[f"val_auc_{metric}"] = stats.normalized_auc(curve["step"].to_numpy(), curve["v"].to_numpy())
    return out


def _baseline_metrics(job: RunJob) -> tuple[str, ...]:
    from agents.tasks import TASKS

    task = TASKS.get(job.config.get("task", "trading"))
    return tuple(m for m, _, _ in task.summary_columns()) if task is not None else ()


def execute_job(job: RunJob, out_dir: str | Path, runner: Runner) -> dict[str, Any]:
    """Train and evaluate one run, catching any exception; stores ``result.json`` (and ``traceback.txt``).

    Returns:
        The results.csv row (with the run's ``config`` dict, used when resuming).
    """
    store = ResultStore(out_dir)
    run_dir = store.run_dir(job)
    outcome = RunOutcome(job)
    t0 = time.perf_counter()
    stage = "train"
    try:
        tr = runner.train(job.config, run_dir)
        if getattr(tr, "interrupted", False):
            # Ctrl-C reached the worker: the run is not finished. No result.json, so a re-run moves the folder
            # to _incomplete/ and trains it again.
            outcome.status = "interrupted"
            return outcome.row()
        outcome.record_train(tr)
        progress = read_progress(run_dir)
        outcome.action_std = final_action_std(progress)
        outcome.train.update(grad_norm_stability(progress))
        outcome.train.update(loss_and_validation_stability(progress))
        stage = "evaluate"
        outcome.record_eval(runner.evaluate(run_dir), _baseline_metrics(job))
        outcome.status = "ok"
    except Exception as err:
        msg = " ".join(str(err).split())
        outcome.error = f"{stage}: {type(err).__name__}: {msg}"[:500]
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / TRACEBACK_FILE).write_text(traceback.format_exc())
    outcome.wall_time_s = time.perf_counter() - t0
    row = outcome.row()
    store.write(job, row)
    return row
