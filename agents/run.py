"""Train and evaluate one run: the run folder, the SB3 model with its clippers, logging, evaluation.

A run folder holds everything needed to reproduce and evaluate the run:

============================  ==========================================================================
``config.yaml``               the resolved :class:`~agents.config.RunConfig` (hyperparameters filled in)
``command.txt``               the command line(s) that produced it (one line per train/resume)
``model.zip``                 the final SB3 model; the clipper state is inside (``perpclip_clippers.pt``)
``clipper_state.pt``          the same clipper state as a separate file, for inspection
``best_model.zip``            the model with the best validation metric (``eval.metric``), with its clippers
``vecnormalize.pkl``          observation/reward normalization statistics (only with ``normalize_*``)
``tb/``                       TensorBoard events: ``train/ rollout/ clip/ trade/ eval/ time/``
``progress.csv``              the same scalars as CSV (``progress-resume<N>.csv`` after a resume)
``train_result.json``         :class:`TrainResult` of the last train/resume
``eval.json``, ``equity.png`` written by :func:`evaluate`
============================  ==========================================================================
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.logger import CSVOutputFormat, Image, Logger, TensorBoardOutputFormat
from stable_baselines3.common.vec_env import VecNormalize

from agents import env_factory
from agents.algos import build_model, load_model, resolve_hyperparams, save_model, validate_clip
from agents.callbacks import ClipLoggerCallback, TradeMetricsCallback, TradingEvalCallback
from agents.config import RunConfig, load_config, save_config
from agents.errors import UserError

__all__ = ["EvalReport", "TrainResult", "evaluate", "format_table", "resolve_config", "train"]

MODEL_FILE = "model.zip"
BEST_MODEL_FILE = "best_model.zip"
CONFIG_FILE = "config.yaml"
CLIPPER_FILE = "clipper_state.pt"
VECNORM_FILE = env_factory.VECNORMALIZE_FILE
BEST_VECNORM_FILE = "best_vecnormalize.pkl"
RESULT_FILE = "train_result.json"
#: Stop (and report divergence) after this many optimizer steps in a row with non-finite gradients.
MAX_CONSECUTIVE_NONFINITE = 50


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        run_dir: the run folder.
        wall_time_s: seconds spent in this call (data loading to final save).
        timesteps: the model's total environment steps (including earlier runs when resumed).
        diverged: training stopped on divergence (non-finite parameters, or
            ``MAX_CONSECUTIVE_NONFINITE`` skipped steps in a row).
        diverged_reason: why, or None.
        clip_fraction: part -> share of (finite) updates that were clipped (empty with ``clip: sb3``).
        nonfinite: part -> number of optimizer steps skipped for non-finite gradients.
        interrupted: stopped by Ctrl-C (the model was saved).
        best_eval: the validation metrics of ``best_model.zip`` (None without evaluation).
    """

    run_dir: Path
    wall_time_s: float
    timesteps: int
    diverged: bool
    diverged_reason: str | None
    clip_fraction: dict[str, float]
    nonfinite: dict[str, int]
    interrupted: bool = False
    best_eval: dict[str, Any] | None = None


@dataclass(frozen=True)
class EvalReport:
    """Result of :func:`evaluate` on one period.

    Attributes:
        metrics: the agent's ``envs.metrics.trade_metrics`` dict.
        baselines: name -> metrics of ``flat``, ``buy_and_hold``, ``momentum`` on the same period.
        positions: the agent's position (base units) after each bar.
        equity: the agent's equity curve (start + one value per bar).
        split: which period (``train``, ``val``, ``test``, ``all``).
        period: ``(start, stop)`` bar indices in the data.
        baseline_equity: name -> equity curve of each baseline.
    """

    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    positions: np.ndarray
    equity: np.ndarray
    split: str = "test"
    period: tuple[int, int] = (0, 0)
    baseline_equity: dict[str, np.ndarray] = field(default_factory=dict)


def resolve_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the algorithm's hyperparameters filled in (what ``config.yaml`` records)."""
    hp = resolve_hyperparams(cfg.algo, cfg.clip)
    return cfg.replace(algo={"hyperparams": hp})


def _command_line() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    return shlex.join(["python", *argv]) if argv[0].endswith(".py") else shlex.join(argv)


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise UserError(f"cannot resume {str(run_dir)!r}: it is not a run folder (no {CONFIG_FILE})")
        if not (run_dir / MODEL_FILE).is_file():
            raise UserError(f"cannot resume {str(run_dir)!r}: it has no {MODEL_FILE} (was the run saved?)")
    elif run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(
            f"run folder {str(run_dir)!r} already exists and is not empty; choose another --run-dir "
            f"(or --resume {run_dir} to continue it)"
        )


def _make_logger(run_dir: Path, resume: bool) -> Logger:
    tb = run_dir / "tb"
    tb.mkdir(parents=True, exist_ok=True)
    csv = run_dir / "progress.csv"
    n = 1
    while resume and csv.exists():
        csv = run_dir / f"progress-resume{n}.csv"
        n += 1
    return Logger(
        folder=str(tb), output_formats=[TensorBoardOutputFormat(str(tb)), CSVOutputFormat(str(csv))]
    )


class _Data:
    """The markets and periods of a run."""

    def __init__(self, cfg: RunConfig, data: str | None = None, funding: str | None = None) -> None:
        self.cfg = cfg
        spec = data if data is not None else cfg.data.data
        self.market = env_factory.load_data(spec, funding if data is not None else cfg.data.funding)
        self.periods = env_factory.split_ranges(len(self.market), cfg.data)

    def train_market(self) -> Any:
        """The market the agent trains on: ``train_data`` whole, else the train period of ``data``."""
        if self.cfg.data.train_data is not None:
            return env_factory.load_data(self.cfg.data.train_data)
        p = self.periods["train"]
        return self.market.slice(p.start, p.stop)


def _save_all(cm: Any, run_dir: Path, model_file: str = MODEL_FILE, vecnorm_file: str = VECNORM_FILE) -> None:
    save_model(cm, run_dir / model_file)
    vec = cm.model.get_env()
    if isinstance(vec, VecNormalize):
        vec.save(str(run_dir / vecnorm_file))
    if cm.hooks is not None and model_file == MODEL_FILE:
        torch.save(cm.hooks.state_dict(), run_dir / CLIPPER_FILE)


def _params_finite(model: Any) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.policy.parameters())


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    progress_bar: bool = False,
    resume: bool = False,
    command: str | None = None,
    verbose: int = 0,
    on_start: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (or continue the run there with ``resume=True``).

    Resuming loads ``model.zip`` with its clipper statistics (and normalization statistics) and trains
    ``cfg.algo.timesteps`` more steps; ``cfg`` must equal the run's ``config.yaml`` except for
    ``algo.timesteps``. A KeyboardInterrupt saves the model and returns with ``interrupted=True``.
    ``on_start(run_dir)`` is called once the configuration, data and envs are valid and the folder exists.

    Raises:
        UserError: bad configuration, data or run folder — before anything is written.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, resume)
    cfg = resolve_config(cfg)
    if resume:
        saved = load_config(run_dir / CONFIG_FILE)
        same = saved.replace(algo={"timesteps": cfg.algo.timesteps})
        if same != cfg:
            diff = [
                f"{section}.{k}"
                for section in ("algo", "clip", "data", "env", "eval")
                for k, v in asdict(getattr(cfg, section)).items()
                if asdict(getattr(same, section))[k] != v
            ]
            raise UserError(
                f"cannot resume {str(run_dir)!r} with a different configuration "
                f"({', '.join(diff) or 'task'}); "
                "only the number of timesteps may change"
            )
        cfg = saved.replace(algo={"timesteps": cfg.algo.timesteps})
    validate_clip(cfg.clip)
    data = _Data(cfg)
    train_env = env_factory.make_train_env(cfg, data.train_market())
    val_env = None
    val = data.periods["val"]
    if cfg.eval.eval_freq > 0 and val.stop > val.start:  # val=0: no validation period, no evaluation
        val_env, val_start, _ = env_factory.make_period_env(data.market, cfg.env, val)

    run_dir.mkdir(parents=True, exist_ok=True)
    if on_start is not None:  # the CLI prints where the run is once it is sure to exist
        on_start(run_dir)
    if not resume:
        save_config(cfg, run_dir / CONFIG_FILE)
    with open(run_dir / "command.txt", "a") as f:
        f.write((command if command is not None else _command_line()) + "\n")

    if resume:
        cm = load_model(cfg.algo, cfg.clip, run_dir / MODEL_FILE, env=None)
        if isinstance(train_env, VecNormalize) and (run_dir / VECNORM_FILE).is_file():
            train_env = VecNormalize.load(str(run_dir / VECNORM_FILE), train_env.venv)
        cm.model.set_env(train_env)
    else:
        cm = build_model(cfg.algo, cfg.clip, train_env, verbose=verbose)
    model = cm.model
    model.set_logger(_make_logger(run_dir, resume))

    callbacks: list[Any] = [TradeMetricsCallback()]
    clip_cb = None
    if cm.hooks is not None:
        clip_cb = ClipLoggerCallback(cm.hooks, max_consecutive_nonfinite=MAX_CONSECUTIVE_NONFINITE)
        callbacks.append(clip_cb)
    eval_cb = None
    if val_env is not None:

        def run_val() -> dict[str, Any]:
            from envs.baselines import run_episode

            vec = model.get_env()
            act = env_factory.policy_act(
                model,
                vecnormalize=vec if isinstance(vec, VecNormalize) else None,
                deterministic=cfg.eval.deterministic,
            )
            return run_episode(val_env, act, start=val_start, seed=cfg.algo.seed).metrics

        def on_best(_: dict[str, Any]) -> None:
            if cfg.eval.save_best:
                _save_all(cm, run_dir, BEST_MODEL_FILE, BEST_VECNORM_FILE)

        eval_cb = TradingEvalCallback(
            run_val,
            eval_freq=cfg.eval.eval_freq,
            n_envs=cfg.algo.n_envs,
            metric=cfg.eval.metric,
            on_best=on_best,
        )
        callbacks.append(eval_cb)
        previous = run_dir / RESULT_FILE
        if resume and previous.is_file() and (run_dir / BEST_MODEL_FILE).is_file():
            # Keep the earlier best_model.zip unless the continued training beats it.
            best = json.loads(previous.read_text()).get("best_eval")
            if isinstance(best, dict) and isinstance(best.get(cfg.eval.metric), (int, float)):
                eval_cb.best = eval_cb.score(best)
                eval_cb.best_metrics = best

    interrupted = False
    diverged_reason = None
    try:
        model.learn(
            total_timesteps=cfg.algo.timesteps,
            callback=callbacks,
            reset_num_timesteps=not resume,
            progress_bar=progress_bar,
            tb_log_name="tb",
        )
    except KeyboardInterrupt:
        interrupted = True
    except ValueError as exc:
        # A policy with NaN weights makes torch.distributions raise ValueError while collecting rollouts.
        if _params_finite(model):
            raise
        diverged_reason = f"non-finite policy parameters ({str(exc).splitlines()[0][:200]})"
    if clip_cb is not None and clip_cb.diverged_reason is not None:
        diverged_reason = clip_cb.diverged_reason
    if diverged_reason is None and not _params_finite(model):
        diverged_reason = "non-finite policy parameters after training"
    if eval_cb is not None and not interrupted and diverged_reason is None and eval_cb.best_metrics is None:
        eval_cb.run_eval()  # budget shorter than eval_freq: still keep a best model and log eval/ once

    _save_all(cm, run_dir)
    hooks = cm.hooks
    result = TrainResult(
        run_dir=run_dir,
        wall_time_s=time.perf_counter() - t0,
        timesteps=int(model.num_timesteps),
        diverged=diverged_reason is not None,
        diverged_reason=diverged_reason,
        clip_fraction=hooks.clip_fraction() if hooks is not None else {},
        nonfinite=hooks.nonfinite() if hooks is not None else {},
        interrupted=interrupted,
        best_eval=eval_cb.best_metrics if eval_cb is not None else None,
    )
    d = asdict(result)
    d["run_dir"] = str(run_dir)
    (run_dir / RESULT_FILE).write_text(json.dumps(_jsonable(d), indent=2) + "\n")
    model.logger.close()
    train_env.close()
    return result


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else str(x)  # JSON has no inf/nan
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


SPLITS = ("train", "val", "test", "all")


def evaluate(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    funding: str | None = None,
    model: str = "final",
    log_tensorboard: bool = True,
) -> EvalReport:
    """Run a saved policy deterministically over one period, next to the baselines; write eval.json and
    equity.png.

    Args:
        run_dir: a run folder written by :func:`train`.
        data: evaluate on this market instead of the run's (same split fractions/ranges applied to it).
        split: ``test`` (default: the held-out period, never trained on), ``val``, ``train`` or ``all`` (every
            bar after the warm-up). Warm-up bars before the period feed the features only.
        funding: funding file for ``data``.
        model: ``final`` (``model.zip``) or ``best`` (``best_model.zip``, selected on the validation split).
        log_tensorboard: also log the metrics and the equity image to the run's TensorBoard folder.

    Raises:
        UserError: not a run folder, no model, unknown split, or a model/env shape mismatch.
    """
    from envs.baselines import buy_and_hold, flat, momentum, run_episode

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {str(run_dir)!r} does not exist")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(
            f"{str(run_dir)!r} is not a run folder (no {CONFIG_FILE}); pass a folder made by train.py"
        )
    if model not in ("final", "best"):
        raise UserError(f"model must be 'final' or 'best', got {model!r}")
    model_file = run_dir / (MODEL_FILE if model == "final" else BEST_MODEL_FILE)
    if not model_file.is_file():
        raise UserError(
            f"run folder {str(run_dir)!r} has no {model_file.name} (training did not finish or was not saved)"
        )
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    cfg = load_config(run_dir / CONFIG_FILE)
    d = _Data(cfg, data, funding)
    period = env_factory.Period("all", 0, len(d.market)) if split == "all" else d.periods[split]
    env, start, period = env_factory.make_period_env(d.market, cfg.env, period)
    cm = load_model(cfg.algo, cfg.clip, model_file, env=env)
    vecnorm = None
    vn_file = run_dir / (VECNORM_FILE if model == "final" else BEST_VECNORM_FILE)
    if vn_file.is_file():
        from stable_baselines3.common.vec_env import DummyVecEnv

        vecnorm = VecNormalize.load(str(vn_file), DummyVecEnv([lambda: env]))
        vecnorm.training = False
    act = env_factory.policy_act(cm.model, vecnormalize=vecnorm, deterministic=True)
    agent = run_episode(env, act, start=start, seed=cfg.algo.seed)
    baselines, baseline_equity = {}, {}
    for name, policy in (("flat", flat), ("buy_and_hold", buy_and_hold), ("momentum", momentum())):
        res = run_episode(env, policy, start=start, seed=cfg.algo.seed)
        baselines[name] = res.metrics
        baseline_equity[name] = np.asarray(res.equity)
    report = EvalReport(
        metrics=agent.metrics,
        baselines=baselines,
        positions=np.asarray(agent.positions),
        equity=np.asarray(agent.equity),
        split=split,
        period=(period.start, period.stop),
        baseline_equity=baseline_equity,
    )
    out = {
        "run_dir": str(run_dir),
        "model": model_file.name,
        "data": data if data is not None else cfg.data.data,
        "split": split,
        "period": list(report.period),
        "period_utc": [str(d.market.index[period.start]), str(d.market.index[period.stop - 1])],
        "agent": report.metrics,
        "baselines": report.baselines,
    }
    (run_dir / "eval.json").write_text(json.dumps(_jsonable(out), indent=2) + "\n")
    image = _plot_equity(report, d.market.index[period.start : period.stop], run_dir / "equity.png")
    if log_tensorboard:
        logger = Logger(
            folder=str(run_dir / "tb"), output_formats=[TensorBoardOutputFormat(str(run_dir / "tb"))]
        )
        for key, value in report.metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                logger.record(f"eval_{split}/{key}", float(value))
        logger.record(f"eval_{split}/equity", Image(image, "HWC"), exclude=("stdout", "log", "json", "csv"))
        logger.dump(step=int(cm.model.num_timesteps))
        logger.close()
    return report


def _plot_equity(report: EvalReport, index: Any, path: Path) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    n = len(report.equity)
    x = index[:n] if len(index) >= n else np.arange(n)
    ax.plot(x, report.equity[: len(x)], label="agent", linewidth=1.6)
    for name, eq in report.baseline_equity.items():
        ax.plot(x, eq[: len(x)], label=name.replace("_", "-"), linewidth=1.0, alpha=0.8)
    ax.set_title(f"equity on the {report.split} period (bars {report.period[0]}-{report.period[1]})")
    ax.set_ylabel("equity (USDT)")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


_ROWS = (
    ("total_return", "total return", "{:+.2%}"),
    ("sharpe", "Sharpe (ann.)", "{:.2f}"),
    ("sortino", "Sortino (ann.)", "{:.2f}"),
    ("max_drawdown", "max drawdown", "{:.2%}"),
    ("calmar", "Calmar", "{:.2f}"),
    ("turnover", "turnover (x equity)", "{:.2f}"),
    ("fees", "fees (USDT)", "{:.2f}"),
    ("funding", "funding (USDT)", "{:.2f}"),
    ("liquidations", "liquidations", "{:d}"),
)


def format_table(report: EvalReport) -> str:
    """The one table ``train.py evaluate`` prints: the agent next to the baselines, one metric per row."""
    cols = {"agent": report.metrics, **{k.replace("_", "-"): v for k, v in report.baselines.items()}}
    widths = [max(20, *(len(label) for _, label, _ in _ROWS))] + [max(12, len(c) + 2) for c in cols]
    lines = ["".join([f"{'':<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(cols, widths[1:], strict=True))])]
    for key, label, fmt in _ROWS:
        cells = []
        for metrics, w in zip(cols.values(), widths[1:], strict=True):
            v = metrics.get(key)
            if v is None:
                s = "-"
            elif isinstance(v, float) and not math.isfinite(v):
                s = str(v)
            else:
                s = fmt.format(int(v) if fmt == "{:d}" else float(v))
            cells.append(f"{s:>{w}}")
        lines.append(f"{label:<{widths[0]}}" + "".join(cells))
    return "\n".join(lines)
