"""The ``execution`` task: execute a parent order within ``horizon_bars`` on
``envs.execution_env.CryptoFuturesExecutionEnv`` (``CryptoFuturesExecution-v0``).

Its env arguments are the ``exec_env`` section (:class:`ExecEnvConfig`). A policy is judged by the
implementation shortfall (bp of the arrival notional, lower is better) on the same episodes as TWAP, VWAP
and Almgren-Chriss: every arrival bar of the period (at most ``eval.exec_starts``), as a buy and as a sell.
Training is undiscounted (:data:`EXECUTION_GAMMA`) and rewards are scaled by ``exec_env.reward_scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.errors import UserError
from agents.reporting import format_cell, metric_table, new_figure, save_figure
from agents.task_spec import TaskSpec

__all__ = ["EXECUTION", "ExecEnvConfig", "ExecEvalReport", "execution_metrics", "run_execution_policies"]

#: Discount of the execution task (unless ``hyperparams.gamma`` says otherwise): the shortfall is the
#: undiscounted sum of an episode's rewards over at most ``horizon_bars`` steps, and any discount would make
#: costs paid late (the forced completion at the deadline) look cheaper than the same costs paid early.
EXECUTION_GAMMA = 1.0


def _check_size(name: str, value: Any) -> float | tuple[float, float] | None:
    """A parent size: None, a number > 0, or a ``[low, high]`` pair (a tuple, so YAML round-trips)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"exec_env.{name} must be > 0, got {value!r}")
        return float(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            lo = hi = math.nan
        if math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi:
            return (lo, hi)
    raise UserError(
        f"exec_env.{name} must be a number > 0 or a [low, high] range with 0 < low <= high, got {value!r}"
    )


@dataclass(frozen=True)
class ExecEnvConfig:
    """Arguments of ``envs.execution_env.CryptoFuturesExecutionEnv`` (``task: execution``; see its docstring).

    Attributes:
        horizon_bars: bars to complete each parent order (``T``).
        quantity, quantity_adv: parent size in base units, or as a fraction of the average daily volume; a
            number or a ``[low, high]`` range drawn per episode; at most one of the two (both None: the env's
            default, 1 % to 5 % of ADV).
        side: ``buy``, ``sell`` or ``random`` (per episode). Evaluation runs every arrival bar as a buy and
            as a sell with ``random``, else only the given side.
        action, n_levels: continuous fraction of the remainder, or ``n_levels`` discrete fractions.
        execution: dict of ``envs.contract.ExecutionConfig`` fields (None: the env's defaults).
        impact_halflife: half-life in bars of the transient impact (None: purely temporary impact).
        window: past returns in the observation.
        profile_days: days of the intraday volume profile and of the ADV (also the warm-up).
        reward_scale: training rewards (basis points of the arrival notional) are multiplied by this, so
            that PPO's value targets are O(1-10) rather than O(100) bp; evaluation always reports raw bp.
    """

    horizon_bars: int = 12
    quantity: float | tuple[float, float] | None = None
    quantity_adv: float | tuple[float, float] | None = None
    side: str = "random"
    action: str = "continuous"
    n_levels: int = 11
    execution: dict[str, Any] | None = None
    impact_halflife: float | None = None
    window: int = 8
    profile_days: int = 7
    reward_scale: float = 0.1

    def __post_init__(self) -> None:
        for name, low in (("horizon_bars", 1), ("n_levels", 2), ("window", 1), ("profile_days", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UserError(f"exec_env.{name} must be an integer >= {low}, got {v!r}")
        for name in ("quantity", "quantity_adv"):
            object.__setattr__(self, name, _check_size(name, getattr(self, name)))
        if self.quantity is not None and self.quantity_adv is not None:
            raise UserError(
                "exec_env: give the parent size as quantity (base units) or as quantity_adv (fraction of the "
                "average daily volume), not both; set the other to null"
            )
        if self.side not in ("buy", "sell", "random"):
            raise UserError(f"exec_env.side must be 'buy', 'sell' or 'random', got {self.side!r}")
        if self.action not in ("continuous", "discrete"):
            raise UserError(f"exec_env.action must be 'continuous' or 'discrete', got {self.action!r}")
        if self.execution is not None and not isinstance(self.execution, dict):
            raise UserError(
                f"exec_env.execution must be a mapping of ExecutionConfig fields, got {self.execution!r}"
            )
        if self.execution is not None:
            object.__setattr__(self, "execution", dict(self.execution))
        hl = self.impact_halflife
        if hl is not None and (
            isinstance(hl, bool) or not isinstance(hl, (int, float)) or not (math.isfinite(hl) and hl > 0)
        ):
            raise UserError(f"exec_env.impact_halflife must be a number of bars > 0 or null, got {hl!r}")
        rs = self.reward_scale
        if isinstance(rs, bool) or not isinstance(rs, (int, float)) or not (math.isfinite(rs) and rs > 0):
            raise UserError(f"exec_env.reward_scale must be a number > 0 (e.g. 0.1), got {rs!r}")
        object.__setattr__(self, "reward_scale", float(rs))

    def env_kwargs(self) -> dict[str, Any]:
        """The constructor keywords (``execution`` still a dict; ``reward_scale`` is a training wrapper)."""
        d = {
            "horizon_bars": self.horizon_bars,
            "quantity": self.quantity,
            "quantity_adv": self.quantity_adv,
            "side": self.side,
            "action": self.action,
            "n_levels": self.n_levels,
            "impact_halflife": self.impact_halflife,
            "window": self.window,
            "profile_days": self.profile_days,
        }
        if self.execution is not None:
            d["execution"] = dict(self.execution)
        return d


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


def run_execution_policies(env: Any, policies: dict[str, Any], cfg: Any) -> dict[str, list[Any]]:
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


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean and standard error of the paired difference ``a - b`` (same episodes)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    sem = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else 0.0
    return {"mean": float(diff.mean()), "sem": sem}


ROWS = (
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


@dataclass(frozen=True)
class ExecEvalReport:
    """Result of ``agents.run.evaluate`` for the execution task: shortfalls on the same episodes for every
    policy.

    Attributes:
        metrics: the agent's shortfall statistics (:func:`execution_metrics`; bp of the arrival notional).
        baselines: name -> the same statistics for ``twap``, ``vwap``, ``almgren_chriss``.
        shortfall_bps: policy name (``agent`` and the baselines) -> shortfall of each episode, bp.
        episodes: ``(arrival bar in the data, side, quantity)`` of each episode, the same for every policy.
        split: which period.
        period: ``(start, stop)`` bar indices in the data.
        horizon_bars: the order's horizon.
    """

    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    shortfall_bps: dict[str, np.ndarray]
    episodes: list[tuple[int, int, float]]
    split: str = "test"
    period: tuple[int, int] = (0, 0)
    horizon_bars: int | None = None

    def to_json(self) -> dict[str, Any]:
        episodes = self.episodes
        sides = sorted({s for _, s, _ in episodes}, reverse=True)
        agent = self.shortfall_bps["agent"]
        return {
            "horizon_bars": self.horizon_bars,
            "episodes": len(episodes),
            "arrival_bars": len({b for b, _, _ in episodes}),
            "sides": ["buy" if s > 0 else "sell" for s in sides],
            "agent": self.metrics,
            "baselines": self.baselines,
            "agent_minus": {name: paired(agent, self.shortfall_bps[name]) for name in self.baselines},
            "per_episode": {
                "arrival_bar": [b for b, _, _ in episodes],
                "side": [s for _, s, _ in episodes],
                "quantity": [q for _, _, q in episodes],
                "shortfall_bps": {name: v.tolist() for name, v in self.shortfall_bps.items()},
            },
        }

    def describe(self) -> list[str]:
        a, b = self.period
        n_bars = len({bar for bar, _, _ in self.episodes})
        sides = sorted({"buy" if s > 0 else "sell" for _, s, _ in self.episodes})
        return [
            f"{self.split} period: bars [{a}, {b}) ({b - a} bars), {len(self.episodes)} execution episodes "
            f"({n_bars} arrival bars x {'/'.join(sides)}), the same for every policy; deterministic policy",
            "implementation shortfall in bp of the arrival notional, fees included (lower is better)",
        ]

    def table(self) -> str:
        """Shortfall statistics in bp, their mean decomposition, and the paired difference agent minus each
        baseline on the same episodes (mean +- standard error; negative: the agent is cheaper)."""
        cols = {"agent": self.metrics, **{k.replace("_", "-"): v for k, v in self.baselines.items()}}
        lines = metric_table(cols, ROWS, min_width=16)
        w0 = max(20, *(len(label) for _, label, _ in ROWS))
        widths = [max(16, len(c) + 2) for c in cols]
        cells = [f"{'-':>{widths[0]}}"]
        for name, w in zip(self.baselines, widths[1:], strict=True):
            p = paired(self.shortfall_bps["agent"], self.shortfall_bps[name])
            cells.append(f"{format_cell(p['mean'], '{:+.2f}')} ± {format_cell(p['sem'], '{:.2f}')}".rjust(w))
        lines.append(f"{'agent minus (paired)':<{w0}}" + "".join(cells))
        return "\n".join(lines)

    def plot(self, path: Path) -> np.ndarray:
        names = list(self.shortfall_bps)
        fig, ax = new_figure((8, 4.5))
        ax.boxplot([self.shortfall_bps[n] for n in names], whis=(5, 95), showfliers=False, showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), [n.replace("_", "-") for n in names])
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_ylabel("implementation shortfall (bp of arrival notional)")
        ax.set_title(
            f"{self.split} period (bars {self.period[0]}-{self.period[1]}), "
            f"{len(self.episodes)} episodes: box 25-75 %, whiskers 5-95 %, triangle = mean",
            fontsize=9,
        )
        ax.grid(alpha=0.3, axis="y")
        return save_figure(fig, path)


def _make_env(market: Any, **kwargs: Any) -> Any:
    from envs.execution_env import CryptoFuturesExecutionEnv

    return CryptoFuturesExecutionEnv(market, **kwargs)


def _make_batched_env(market: Any, num_envs: int, **kwargs: Any) -> Any:
    from envs.execution_vec_env import CryptoFuturesExecutionVecEnv

    return CryptoFuturesExecutionVecEnv(market, num_envs=num_envs, **kwargs)


def _make_validator(env: Any, cfg: Any, start: int) -> Any:
    twap_val: list[float] = []  # TWAP's validation shortfall: computed once, logged next to the agent's

    def validate(act: Any) -> dict[str, Any]:
        from envs.execution_baselines import TWAP

        policies = {"agent": act} if twap_val else {"agent": act, "twap": TWAP()}
        res = run_execution_policies(env, policies, cfg)
        if not twap_val:
            twap_val.append(execution_metrics(res["twap"])["shortfall_bps"])
        return {**execution_metrics(res["agent"]), "twap_shortfall_bps": twap_val[0]}

    return validate


def _evaluate(env: Any, act: Any, cfg: Any, period: Any, start: int, data: Any) -> ExecEvalReport:
    from envs.execution_baselines import TWAP, VWAP, AlmgrenChriss

    policies = {"agent": act, "twap": TWAP(), "vwap": VWAP(), "almgren_chriss": AlmgrenChriss()}
    res = run_execution_policies(env, policies, cfg)
    offset = period.start - start  # local bar index of the period env -> bar index of the data
    episodes = [(r.start + offset, r.side, r.quantity) for r in res["agent"]]
    shortfall = {name: np.array([r.shortfall_bps for r in rs]) for name, rs in res.items()}
    metrics = {name: execution_metrics(rs) for name, rs in res.items()}
    return ExecEvalReport(
        metrics=metrics.pop("agent"),
        baselines=metrics,
        shortfall_bps=shortfall,
        episodes=episodes,
        split=period.name,
        period=(period.start, period.stop),
        horizon_bars=cfg.exec_env.horizon_bars,
    )


def _metrics_callback() -> Any:
    from agents.callbacks import ExecutionMetricsCallback

    return ExecutionMetricsCallback()


def _wrap_train_env(vec: Any, env_cfg: ExecEnvConfig) -> Any:
    if env_cfg.reward_scale == 1.0:
        return vec
    from agents.env_factory import ScaledRewardVecEnv

    return ScaledRewardVecEnv(vec, env_cfg.reward_scale)


def _period_bars(env_cfg: ExecEnvConfig) -> tuple[int, str]:
    need = env_cfg.horizon_bars + 1
    return need, f"to execute an order over horizon_bars={env_cfg.horizon_bars} (it needs {need} bars"


EXECUTION = TaskSpec(
    name="execution",
    section="exec_env",
    config_cls=ExecEnvConfig,
    make_env=_make_env,
    make_batched_env=_make_batched_env,
    metrics=("shortfall_bps",),
    lower_is_better=("shortfall_bps",),
    make_validator=_make_validator,
    evaluate=_evaluate,
    metrics_callback=_metrics_callback,
    gamma=EXECUTION_GAMMA,
    run_prefix="exec-",
    period_bars=_period_bars,
    wrap_train_env=_wrap_train_env,
    summary=(("shortfall_bps", "test shortfall bp", 2),),
    reference="twap",
    describe=lambda cfg: f"for the execution task (horizon {cfg.exec_env.horizon_bars} bars) ",
    best_line=lambda m: (
        f"mean shortfall {m['shortfall_bps']:.2f} bp (TWAP {m['twap_shortfall_bps']:.2f} bp, "
        f"{m['episodes']} episodes)"
    ),
    plot_name="shortfall",
)
