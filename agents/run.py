"""Train and evaluate one run: the run folder, the SB3 model with its clippers, logging, evaluation.

A run folder holds everything needed to reproduce and evaluate the run:

============================  ==========================================================================
``config.yaml``               the resolved :class:`~agents.config.RunConfig` (hyperparameters filled in)
``command.txt``               the command line(s) that produced it (one line per train/resume)
``model.zip``                 the final SB3 model; the clipper state is inside (``perpclip_clippers.pt``)
``clipper_state.pt``          the same clipper state as a separate file, for inspection
``best_model.zip``            the model with the best validation metric (``eval.metric``), with its clippers
``vecnormalize.pkl``          observation/reward normalization statistics (only with ``normalize_*``)
``tb/``                       TensorBoard events: ``train/ rollout/ clip/ trade/ (or exec/) eval/ time/``
``progress.csv``              the same scalars as CSV (``progress-resume<N>.csv`` after a resume)
``train_result.json``         :class:`TrainResult` of the last train/resume
``eval.json``, ``equity.png`` written by :func:`evaluate` (execution task: ``shortfall.png``)
============================  ==========================================================================

Two tasks share all of it (``RunConfig.task``): ``trading`` reports trading metrics against flat,
buy-and-hold and momentum; ``execution`` reports the implementation shortfall (bp of the arrival notional)
against TWAP, VWAP and Almgren–Chriss on the same episodes (every arrival bar of the period, as a buy and as
a sell).
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
from agents.callbacks import (
    ClipLoggerCallback,
    ExecutionMetricsCallback,
    TradeMetricsCallback,
    TradingEvalCallback,
)
from agents.config import RunConfig, load_config, save_config
from agents.errors import UserError

__all__ = [
    "EvalReport",
    "ExecEvalReport",
    "TrainResult",
    "evaluate",
    "format_table",
    "resolve_config",
    "train",
]

MODEL_FILE = "model.zip"
BEST_MODEL_FILE = "best_model.zip"
CONFIG_FILE = "config.yaml"
CLIPPER_FILE = "clipper_state.pt"
VECNORM_FILE = env_factory.VECNORMALIZE_FILE
BEST_VECNORM_FILE = "best_vecnormalize.pkl"
RESULT_FILE = "train_result.json"
EQUITY_PLOT = "equity.png"
SHORTFALL_PLOT = "shortfall.png"
#: Discount of the execution task (unless ``hyperparams.gamma`` says otherwise): the shortfall is the
#: undiscounted sum of an episode's rewards over at most ``horizon_bars`` steps, and any discount would make
#: costs paid late (the forced completion at the deadline) look cheaper than the same costs paid early.
EXECUTION_GAMMA = 1.0
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


@dataclass(frozen=True)
class ExecEvalReport:
    """Result of :func:`evaluate` for the execution task: shortfalls on the same episodes for every policy.

    Attributes:
        metrics: the agent's shortfall statistics (:func:`execution_metrics`; bp of the arrival notional).
        baselines: name -> the same statistics for ``twap``, ``vwap``, ``almgren_chriss``.
        shortfall_bps: policy name (``agent`` and the baselines) -> shortfall of each episode, bp.
        episodes: ``(arrival bar in the data, side, quantity)`` of each episode, the same for every policy.
        split: which period.
        period: ``(start, stop)`` bar indices in the data.
    """

    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    shortfall_bps: dict[str, np.ndarray]
    episodes: list[tuple[int, int, float]]
    split: str = "test"
    period: tuple[int, int] = (0, 0)


def resolve_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the algorithm's hyperparameters filled in (what ``config.yaml`` records).

    The execution task trains undiscounted (``gamma`` :data:`EXECUTION_GAMMA`) unless ``hyperparams`` sets
    ``gamma``.
    """
    algo = cfg.algo
    if cfg.task == "execution" and "gamma" not in algo.hyperparams:
        algo = cfg.replace(algo={"hyperparams": {"gamma": EXECUTION_GAMMA, **algo.hyperparams}}).algo
    hp = resolve_hyperparams(algo, cfg.clip)
    return cfg.replace(algo={"hyperparams": hp})


def execution_metrics(results: list[Any]) -> dict[str, Any]:
    """Statistics of execution episodes (``envs.execution_baselines.ExecutionResult``), all in bp.

    ``shortfall_bps`` is the mean implementation shortfall (lower is better); ``std_bps``, ``sem_bps`` and the
    quantiles ``q05_bps .. q95_bps`` describe its spread; ``timing/spread/impact/fees_bps`` are the means of
    its decomposition; ``forced_share`` the mean share of the order left to the forced completion.
    """
    from envs.execution_baselines import summarize_shortfall

    values = np.array([r.shortfall_bps for r in results], dtype=np.float64)
    s = summarize_shortfall(values)
    out: dict[str, Any] = {"shortfall_bps": s["mean"]}
    for key in ("std", "sem", "q05", "q25", "median", "q75", "q95"):
        out[f"{key}_bps"] = s[key]
    for key in ("timing_bps", "spread_bps", "impact_bps", "fees_bps"):
        out[key] = float(np.mean([r.summary[key] for r in results]))
    out["forced_share"] = float(np.mean([r.summary["forced_qty"] / r.summary["quantity"] for r in results]))
    out["episodes"] = int(s["n"])
    return out


def run_execution_policies(env: Any, policies: dict[str, Any], cfg: RunConfig) -> dict[str, list[Any]]:
    """Every policy on the same execution episodes of ``env``'s period; name -> list of ``ExecutionResult``.

    The episodes: up to ``eval.exec_starts`` arrival bars spread evenly over the period (every valid one by
    default on short data), each run as a buy and as a sell (only the configured side when ``exec_env.side``
    is fixed), with the parent size drawn from the seed ``algo.seed`` (so a buy and a sell at the same bar
    have the same size, and every policy meets the same episode).
    """
    from envs.execution_baselines import evaluate_execution, evenly_spaced_starts

    e = env.unwrapped
    n_valid = int(e.max_start - e.min_start + 1)
    n = n_valid if cfg.eval.exec_starts is None else min(cfg.eval.exec_starts, n_valid)
    starts = evenly_spaced_starts(env, n)
    sides = ("buy", "sell") if cfg.exec_env.side == "random" else (cfg.exec_env.side,)
    out: dict[str, list[Any]] = {name: [] for name in policies}
    for side in sides:
        res = evaluate_execution(env, policies, starts=starts, seed=cfg.algo.seed, options={"side": side})
        for name in policies:
            out[name].extend(res[name]["results"])
    keys = {name: [(r.start, r.side, r.quantity) for r in rs] for name, rs in out.items()}
    first = next(iter(keys.values()))
    if any(k != first for k in keys.values()):  # the comparison is paired: guard it
        raise RuntimeError("execution policies met different episodes; the comparison would not be paired")
    return out


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
                for section in ("algo", "clip", "data", "env", "exec_env", "eval")
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
    execution = cfg.task == "execution"
    train_env = env_factory.make_train_env(cfg, data.train_market())
    val_env = None
    val = data.periods["val"]
    if cfg.eval.eval_freq > 0 and val.stop > val.start:  # val=0: no validation period, no evaluation
        val_env, val_start, _ = env_factory.make_period_env(data.market, cfg.task_env, val)

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

    callbacks: list[Any] = [ExecutionMetricsCallback() if execution else TradeMetricsCallback()]
    clip_cb = None
    if cm.hooks is not None:
        clip_cb = ClipLoggerCallback(cm.hooks, max_consecutive_nonfinite=MAX_CONSECUTIVE_NONFINITE)
        callbacks.append(clip_cb)
    eval_cb = None
    if val_env is not None:
        twap_val: list[float] = []  # TWAP's validation shortfall: computed once, logged next to the agent's

        def run_val() -> dict[str, Any]:
            vec = model.get_env()
            act = env_factory.policy_act(
                model,
                vecnormalize=vec if isinstance(vec, VecNormalize) else None,
                deterministic=cfg.eval.deterministic,
            )
            if execution:
                from envs.execution_baselines import TWAP

                policies = {"agent": act} if twap_val else {"agent": act, "twap": TWAP()}
                res = run_execution_policies(val_env, policies, cfg)
                if not twap_val:
                    twap_val.append(execution_metrics(res["twap"])["shortfall_bps"])
                return {**execution_metrics(res["agent"]), "twap_shortfall_bps": twap_val[0]}
            from envs.baselines import run_episode

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
) -> EvalReport | ExecEvalReport:
    """Run a saved policy deterministically over one period, next to the baselines; write eval.json and
    equity.png (trading) or shortfall.png (execution).

    For the execution task every policy (the agent, TWAP, VWAP, Almgren–Chriss) executes the same episodes
    (:func:`run_execution_policies`) and the report holds their shortfall statistics in bp.

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
    env, start, period = env_factory.make_period_env(d.market, cfg.task_env, period)
    cm = load_model(cfg.algo, cfg.clip, model_file, env=env)
    vecnorm = None
    vn_file = run_dir / (VECNORM_FILE if model == "final" else BEST_VECNORM_FILE)
    if vn_file.is_file():
        from stable_baselines3.common.vec_env import DummyVecEnv

        vecnorm = VecNormalize.load(str(vn_file), DummyVecEnv([lambda: env]))
        vecnorm.training = False
    act = env_factory.policy_act(cm.model, vecnormalize=vecnorm, deterministic=True)
    header = {
        "task": cfg.task,
        "run_dir": str(run_dir),
        "model": model_file.name,
        "data": data if data is not None else cfg.data.data,
        "split": split,
        "period": [period.start, period.stop],
        "period_utc": [str(d.market.index[period.start]), str(d.market.index[period.stop - 1])],
    }
    if cfg.task == "execution":
        report, out, image = _evaluate_execution(env, act, cfg, split, period, start, header, run_dir)
    else:
        report, out, image = _evaluate_trading(env, act, cfg, split, period, start, header, run_dir, d)
    (run_dir / "eval.json").write_text(json.dumps(_jsonable(out), indent=2) + "\n")
    if log_tensorboard:
        logger = Logger(
            folder=str(run_dir / "tb"), output_formats=[TensorBoardOutputFormat(str(run_dir / "tb"))]
        )
        for key, value in report.metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                logger.record(f"eval_{split}/{key}", float(value))
        if cfg.task == "execution":
            for name, m in report.baselines.items():
                logger.record(f"eval_{split}/{name}_shortfall_bps", float(m["shortfall_bps"]))
        name = "shortfall" if cfg.task == "execution" else "equity"
        logger.record(f"eval_{split}/{name}", Image(image, "HWC"), exclude=("stdout", "log", "json", "csv"))
        logger.dump(step=int(cm.model.num_timesteps))
        logger.close()
    return report


def _evaluate_trading(
    env: Any,
    act: Any,
    cfg: RunConfig,
    split: str,
    period: Any,
    start: int,
    header: dict[str, Any],
    run_dir: Path,
    d: _Data,
) -> tuple[EvalReport, dict[str, Any], np.ndarray]:
    from envs.baselines import buy_and_hold, flat, momentum, run_episode

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
    out = {**header, "agent": report.metrics, "baselines": report.baselines}
    image = _plot_equity(report, d.market.index[period.start : period.stop], run_dir / EQUITY_PLOT)
    return report, out, image


def _evaluate_execution(
    env: Any,
    act: Any,
    cfg: RunConfig,
    split: str,
    period: Any,
    start: int,
    header: dict[str, Any],
    run_dir: Path,
) -> tuple[ExecEvalReport, dict[str, Any], np.ndarray]:
    from envs.execution_baselines import TWAP, VWAP, AlmgrenChriss

    policies = {"agent": act, "twap": TWAP(), "vwap": VWAP(), "almgren_chriss": AlmgrenChriss()}
    res = run_execution_policies(env, policies, cfg)
    offset = period.start - start  # local bar index of the period env -> bar index of the data
    episodes = [(r.start + offset, r.side, r.quantity) for r in res["agent"]]
    shortfall = {name: np.array([r.shortfall_bps for r in rs]) for name, rs in res.items()}
    metrics = {name: execution_metrics(rs) for name, rs in res.items()}
    report = ExecEvalReport(
        metrics=metrics.pop("agent"),
        baselines=metrics,
        shortfall_bps=shortfall,
        episodes=episodes,
        split=split,
        period=(period.start, period.stop),
    )
    sides = sorted({s for _, s, _ in episodes}, reverse=True)
    out = {
        **header,
        "horizon_bars": cfg.exec_env.horizon_bars,
        "episodes": len(episodes),
        "arrival_bars": len({b for b, _, _ in episodes}),
        "sides": ["buy" if s > 0 else "sell" for s in sides],
        "agent": report.metrics,
        "baselines": report.baselines,
        "agent_minus": {name: _paired(shortfall["agent"], shortfall[name]) for name in report.baselines},
        "per_episode": {
            "arrival_bar": [b for b, _, _ in episodes],
            "side": [s for _, s, _ in episodes],
            "quantity": [q for _, _, q in episodes],
            "shortfall_bps": {name: v.tolist() for name, v in shortfall.items()},
        },
    }
    image = _plot_shortfall(report, run_dir / SHORTFALL_PLOT)
    return report, out, image


def _paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean and standard error of the paired difference ``a - b`` (same episodes)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    sem = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else 0.0
    return {"mean": float(diff.mean()), "sem": sem}


def _plot_shortfall(report: ExecEvalReport, path: Path) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.shortfall_bps)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    data = [report.shortfall_bps[n] for n in names]
    ax.boxplot(data, whis=(5, 95), showfliers=False, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), [n.replace("_", "-") for n in names])
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_ylabel("implementation shortfall (bp of arrival notional)")
    ax.set_title(
        f"{report.split} period (bars {report.period[0]}-{report.period[1]}), "
        f"{len(report.episodes)} episodes: box 25-75 %, whiskers 5-95 %, triangle = mean",
        fontsize=9,
    )
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


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


_EXEC_ROWS = (
    ("shortfall_bps", "mean shortfall (bp)", "{:.2f}"),
    ("std_bps", "std", "{:.2f}"),
    ("sem_bps", "std error of mean", "{:.2f}"),
    ("q05_bps", "5% quantile", "{:.2f}"),
    ("q25_bps", "25% quantile", "{:.2f}"),
    ("median_bps", "median", "{:.2f}"),
    ("q75_bps", "75% quantile", "{:.2f}"),
    ("q95_bps", "95% quantile", "{:.2f}"),
    ("timing_bps", "  timing (mean)", "{:.2f}"),
    ("spread_bps", "  spread (mean)", "{:.2f}"),
    ("impact_bps", "  impact (mean)", "{:.2f}"),
    ("fees_bps", "  fees (mean)", "{:.2f}"),
    ("forced_share", "left to forced fill", "{:.1%}"),
)


def format_table(report: EvalReport | ExecEvalReport) -> str:
    """The one table ``train.py evaluate`` prints: the agent next to the baselines, one metric per row.

    Execution: shortfall statistics in bp (lower is better), its mean decomposition, and the paired
    difference agent minus each baseline on the same episodes (mean +- standard error; negative: the agent
    is cheaper).
    """
    execution = isinstance(report, ExecEvalReport)
    rows = _EXEC_ROWS if execution else _ROWS
    cols = {"agent": report.metrics, **{k.replace("_", "-"): v for k, v in report.baselines.items()}}
    widths = [max(20, *(len(label) for _, label, _ in rows))] + [max(12, len(c) + 2) for c in cols]
    if execution:
        widths[1:] = [max(w, 16) for w in widths[1:]]
    lines = ["".join([f"{'':<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(cols, widths[1:], strict=True))])]
    for key, label, fmt in rows:
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
    if execution:
        agent = report.shortfall_bps["agent"]
        cells = [f"{'-':>{widths[1]}}"]
        for name, w in zip(report.baselines, widths[2:], strict=True):
            p = _paired(agent, report.shortfall_bps[name])
            cells.append(f"{p['mean']:+.2f} ± {p['sem']:.2f}".rjust(w))
        lines.append(f"{'agent minus (paired)':<{widths[0]}}" + "".join(cells))
    return "\n".join(lines)
