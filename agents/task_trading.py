"""The ``trading`` task: take positions on ``envs.trading_env.CryptoFuturesEnv`` (``CryptoFutures-v0``).

Its env arguments are the ``env`` section (:class:`EnvConfig`); validation and evaluation run the policy
deterministically over a whole period and report ``envs.metrics.trade_metrics`` next to the baselines of
``envs.baselines.baseline_policies`` on the same bars — flat, true buy-and-hold, the banded trend rule, and on
planted markets the oracle (its threshold chosen on the validation period) — with a warning when the agent's
train-period result is so far above its test result that it memorised its training bars (:class:`EvalReport`:
table and equity plot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.errors import UserError
from agents.reporting import metric_table, new_figure, save_figure
from agents.task_spec import TaskSpec

__all__ = ["EnvConfig", "EvalReport", "TRADING"]

#: Validation metrics (``trade_metrics`` keys, and ``sharpe_lcb``); the first is the headline of reports.
TRADING_METRICS = ("sharpe", "sharpe_lcb", "total_return", "sortino", "max_drawdown", "calmar")
#: The default selection metric: ``envs.metrics.sharpe_lower_bound`` (Sharpe minus ``eval.lcb_z`` standard
#: errors, 0 for a policy that never trades) is early stopping that can say "no edge": with the validation
#: pass at step 0, where PPO's initial policy sits inside the no-trade band, a trained checkpoint replaces the
#: flat start only with a validation edge.
SELECT_METRIC = "sharpe_lcb"


@dataclass(frozen=True)
class EnvConfig:
    """Keyword arguments of ``envs.trading_env.CryptoFuturesEnv`` (see its docstring for their meaning).

    ``execution`` and ``margin`` are dicts of ``envs.contract.ExecutionConfig`` / ``MarginConfig`` fields
    (None: the env's defaults). ``kwargs`` passes any other constructor argument through unchanged.
    ``episode_bars`` applies to training episodes (random start); evaluation always runs a whole period.
    """

    window: int = 32
    episode_bars: int | None = 256
    initial_balance: float = 10_000.0
    leverage: float = 3.0
    action: str = "continuous"
    n_levels: int = 3
    reward: str = "log_return"
    execution: dict[str, Any] | None = None
    margin: dict[str, Any] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in ("continuous", "discrete"):
            raise UserError(f"env.action must be 'continuous' or 'discrete', got {self.action!r}")
        if self.episode_bars is not None and (
            not isinstance(self.episode_bars, int) or self.episode_bars < 2
        ):
            raise UserError(
                f"env.episode_bars must be an integer >= 2 or null (whole data), got {self.episode_bars!r}"
            )
        if not isinstance(self.kwargs, dict):
            raise UserError(f"env.kwargs must be a mapping of extra env arguments, got {self.kwargs!r}")
        object.__setattr__(self, "kwargs", dict(self.kwargs))

    def env_kwargs(self) -> dict[str, Any]:
        """The constructor keywords, execution/margin still as dicts (agents.envs builds the dataclasses)."""
        d = {
            "window": self.window,
            "episode_bars": self.episode_bars,
            "initial_balance": self.initial_balance,
            "leverage": self.leverage,
            "action": self.action,
            "n_levels": self.n_levels,
            "reward": self.reward,
        }
        if self.execution is not None:
            d["execution"] = dict(self.execution)
        if self.margin is not None:
            d["margin"] = dict(self.margin)
        d.update(self.kwargs)
        return d


@dataclass(frozen=True)
class EvalReport:
    """Result of ``agents.run.evaluate`` on one period of the trading task.

    Attributes:
        metrics: the agent's ``envs.metrics.trade_metrics`` dict.
        baselines: name -> metrics of ``flat``, ``buy_and_hold``, ``trend`` (and ``oracle`` on planted
            markets) on the same period.
        positions: the agent's position (base units) after each bar.
        equity: the agent's equity curve (start + one value per bar).
        split: which period (``train``, ``val``, ``test``, ``all``).
        period: ``(start, stop)`` bar indices in the data.
        baseline_equity: name -> equity curve of each baseline.
        index: timestamps of the period's bars (the plot's x axis; None: bar numbers).
    """

    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    positions: np.ndarray
    equity: np.ndarray
    split: str = "test"
    period: tuple[int, int] = (0, 0)
    baseline_equity: dict[str, np.ndarray] = field(default_factory=dict)
    index: Any = None
    train_metrics: dict[str, Any] | None = None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"agent": self.metrics, "baselines": self.baselines}
        if self.train_metrics is not None:
            out["agent_train"] = self.train_metrics
        out["warnings"] = list(self.warnings)
        return out

    def describe(self) -> list[str]:
        a, b = self.period
        lines = [
            f"{self.split} period: bars [{a}, {b}) ({b - a} bars), deterministic policy, after all costs"
        ]
        return lines + [f"warning: {w}" for w in self.warnings]

    def table(self) -> str:
        cols = {"agent": self.metrics, **{k.replace("_", "-"): v for k, v in self.baselines.items()}}
        return "\n".join(metric_table(cols, ROWS))

    def plot(self, path: Path) -> np.ndarray:
        fig, ax = new_figure((9, 4.5))
        index = self.index if self.index is not None else []

        def xs(n: int) -> Any:
            return index[:n] if len(index) >= n else np.arange(n)

        # Each curve on its own length: an episode that ends early (a liquidated baseline or agent) has a
        # shorter curve than the period.
        ax.plot(xs(len(self.equity)), self.equity, label="agent", linewidth=1.6)
        for name, eq in self.baseline_equity.items():
            ax.plot(xs(len(eq)), eq, label=name.replace("_", "-"), linewidth=1.0, alpha=0.8)
        ax.set_title(f"equity on the {self.split} period (bars {self.period[0]}-{self.period[1]})")
        ax.set_ylabel("equity (USDT)")
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
        fig.autofmt_xdate()
        return save_figure(fig, path)


ROWS = (
    ("total_return", "total return", "{:+.2%}"),
    ("sharpe", "Sharpe (ann.)", "{:.2f}"),
    ("sortino", "Sortino (ann.)", "{:.2f}"),
    ("max_drawdown", "max drawdown", "{:.2%}"),
    ("calmar", "Calmar", "{:.2f}"),
    ("turnover", "turnover (x equity)", "{:.2f}"),
    ("turnover_per_year", "turnover / year", "{:.2f}"),
    ("fees", "fees (USDT)", "{:.2f}"),
    ("funding", "funding (USDT)", "{:.2f}"),
    ("liquidations", "liquidations", "{:d}"),
)


def _make_env(market: Any, **kwargs: Any) -> Any:
    from envs.trading_env import CryptoFuturesEnv

    return CryptoFuturesEnv(market, **kwargs)


def _make_batched_env(market: Any, num_envs: int, **kwargs: Any) -> Any:
    from envs.vec_env import CryptoFuturesVecEnv

    return CryptoFuturesVecEnv(market, num_envs=num_envs, **kwargs)


def _make_validator(env: Any, cfg: Any, start: int) -> Any:
    from envs.baselines import run_episode
    from envs.metrics import sharpe_lower_bound

    def validate(act: Any) -> dict[str, Any]:
        # Ranking checkpoints on one period stays sound even where annualizing its ratios is not.
        metrics = run_episode(env, act, start=start, seed=cfg.algo.seed, short_ratios="keep").metrics
        z = cfg.eval.lcb_z
        return {**metrics, "sharpe_lcb": sharpe_lower_bound(metrics, z=z), "sharpe_lcb_z": z}

    return validate


def _period_env(cfg: Any, data: Any, name: str) -> tuple[Any, int] | None:
    """An env over the run's ``name`` period and its local start, or None where the period is empty."""
    from agents.env_factory import make_period_env

    period = data.periods.get(name)
    if period is None or period.stop <= period.start:
        return None
    try:
        env, start, _ = make_period_env(data.market, cfg.task_env, period)
    except UserError:  # too short to trade after its warm-up
        return None
    return env, start


def _evaluate(env: Any, act: Any, cfg: Any, period: Any, start: int, data: Any) -> EvalReport:
    from envs.baselines import baseline_policies, run_episode
    from envs.metrics import memorisation_warning

    seed = cfg.algo.seed
    agent = run_episode(env, act, start=start, seed=seed)
    val = _period_env(cfg, data, "val")
    policies = baseline_policies(
        data.spec, val[0] if val else None, val_start=val[1] if val else None, seed=seed
    )
    baselines, baseline_equity = {}, {}
    for name, policy in policies.items():
        res = run_episode(env, policy, start=start, seed=seed)
        baselines[name] = res.metrics
        baseline_equity[name] = np.asarray(res.equity)
    # Memorisation: the same policy on the bars it trained on (only where it trained on this market's train
    # period, not on --train-data) against this period.
    train_metrics, warnings = None, []
    if period.name == "test" and cfg.data.train_data is None:
        train = _period_env(cfg, data, "train")
        if train is not None:
            train_metrics = run_episode(train[0], act, start=train[1], seed=seed).metrics
            warning = memorisation_warning(train_metrics, agent.metrics)
            if warning:
                warnings.append(warning)
    market = data.market
    return EvalReport(
        metrics=agent.metrics,
        baselines=baselines,
        positions=np.asarray(agent.positions),
        equity=np.asarray(agent.equity),
        split=period.name,
        period=(period.start, period.stop),
        baseline_equity=baseline_equity,
        index=market.index[period.start : period.stop],
        train_metrics=train_metrics,
        warnings=tuple(warnings),
    )


def _metrics_callback() -> Any:
    from agents.callbacks import TradeMetricsCallback

    return TradeMetricsCallback()


TRADING = TaskSpec(
    name="trading",
    section="env",
    config_cls=EnvConfig,
    make_env=_make_env,
    make_batched_env=_make_batched_env,
    metrics=TRADING_METRICS,
    select_metric=SELECT_METRIC,
    train_info_keys=("price",),  # TradeMetricsCallback's market stress per update
    lower_is_better=("max_drawdown",),
    make_validator=_make_validator,
    evaluate=_evaluate,
    metrics_callback=_metrics_callback,
    whole_period={"episode_bars": None},
    period_bars=lambda env_cfg: (2, "to trade (it needs 2 bars"),
    summary=(
        ("total_return", "test return", 4),
        ("sharpe", "test Sharpe", 2),
        ("turnover_per_year", "turnover/yr", 0),
    ),
    reference="buy_and_hold",
    best_line=lambda m: (
        f"Sharpe {m['sharpe']:.2f} (minus {m.get('sharpe_lcb_z', 1.0):g} standard errors: "
        f"{m.get('sharpe_lcb', float('nan')):.2f}), "
        f"return {m['total_return']:+.2%}, turnover {m.get('turnover', float('nan')):.1f}x"
    ),
    plot_name="equity",
)
