"""SB3 callbacks: clip statistics (``clip/…``), trading metrics per episode (``trade/…``) or execution
shortfall per episode (``exec/…``), validation (``eval/…``).

All values go through SB3's logger, so they land in the same TensorBoard run (and ``progress.csv``) as SB3's
``train/…`` and ``rollout/…`` keys, at the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, ProgressBarCallback

from agents.clip_hooks import ClipHooks
from envs.metrics import METRIC_KEYS

__all__ = [
    "WholeRolloutProgressBar",
    "ClipLoggerCallback", "ExecutionMetricsCallback", "TradeMetricsCallback", "ValidationCallback"]


class ClipLoggerCallback(BaseCallback):
    """Records ``clip/<part>/{grad_norm,threshold,bound,clip_fraction,frozen_fraction,nonfinite}``; stops a
    diverged run.

    The clip hooks accumulate python floats on every optimizer step; this callback turns them into means at
    the start of each rollout, i.e. right after the previous ``train()``. On-policy algorithms dump their logs
    after the next rollout, so the values are written next to the ``train/…`` values of the same update.
    ``record_mean`` is used because off-policy algorithms train (and flush) many times between two dumps.

    ``grad_norm`` is the mean pre-clip gradient norm of the finite steps, ``threshold`` the mean applied
    threshold (finite ones only: ``none`` has none), ``bound`` the mean clip level in force
    (``ClipStats.bound``: defined on every step, so adaptive thresholds plot as a continuous curve),
    ``clip_fraction`` the share of finite steps that were clipped, ``frozen_fraction`` the share of finite
    steps whose norm the clipper kept out of its statistics (``ClipStats.stats_frozen``: zclip with
    ``skip_update_on_spike=True`` on a spike; the update itself is applied), and ``nonfinite`` the running
    total of skipped steps (also ``clip/ent_coef/nonfinite`` for SAC's guarded entropy coefficient).

    The last update's statistics would otherwise never be written (SB3 dumps before ``train()``, and no dump
    follows the last one), so :meth:`_on_training_end` records them and dumps once more, with
    ``time/total_timesteps`` so that the row can be told apart.

    Args:
        hooks: the model's clip hooks.
        max_consecutive_nonfinite: stop training (divergence) after this many skipped steps in a row in a
            part.
    """

    def __init__(self, hooks: ClipHooks, *, max_consecutive_nonfinite: int = 50) -> None:
        super().__init__()
        self.hooks = hooks
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.diverged_reason: str | None = None

    def _flush(self) -> None:
        for part, values in self.hooks.flush().items():
            for key, value in values.items():
                if key == "nonfinite":
                    self.logger.record(f"clip/{part}/nonfinite", value)
                else:
                    self.logger.record_mean(f"clip/{part}/{key}", value)

    def _on_rollout_start(self) -> None:
        self._flush()

    def _on_step(self) -> bool:
        n = self.hooks.max_consecutive_nonfinite()
        if n >= self.max_consecutive_nonfinite:
            self.diverged_reason = f"{n} consecutive optimizer steps with non-finite gradients"
            return False
        return True

    def _on_training_end(self) -> None:
        self._flush()
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(self.num_timesteps)


class TradeMetricsCallback(BaseCallback):
    """Records ``trade/<metric>`` (mean over the episodes that ended since the last dump).

    Reads ``info["episode_metrics"]`` (``envs.metrics.trade_metrics``), which the env adds on the last step of
    an episode; the VecEnv keeps that info on auto-reset. Non-finite values (a Sharpe of inf for a riskless
    episode) are left out of the mean rather than turning it into inf.
    """

    #: Logged per episode: the money and ratio metrics, not the period's bookkeeping (length, flags).
    KEYS = tuple(
        k
        for k in METRIC_KEYS
        if k not in ("n_bars", "n_returns", "years", "sharpe_meaningful", "calmar_meaningful")
    )

    def __init__(self) -> None:
        super().__init__()
        self._prev_price: np.ndarray | None = None
        self._stress_max = 0.0
        self._stress_sum = 0.0
        self._stress_n = 0

    def _on_rollout_start(self) -> None:
        self._record_stress()

    def _on_training_end(self) -> None:
        self._record_stress()  # the last update's data (ClipLoggerCallback, after this one, dumps the row)

    def _record_stress(self) -> None:
        """``train/batch_abs_return_max`` / ``_mean``: the largest and the mean absolute bar log return the
        envs stepped through since the last record, i.e. in the rollout the update just logged trained on
        (on-policy algorithms record this after ``train()``, in the same row as that update's ``clip/``
        gradient norms; off-policy ones train on replay samples, so there it is the recent data's). Used to
        ask whether a price spike causes a gradient spike (``agents.stats.grad_norm_return_correlation``)."""
        if self._stress_n:
            self.logger.record("train/batch_abs_return_max", self._stress_max)
            self.logger.record("train/batch_abs_return_mean", self._stress_sum / self._stress_n)
        self._stress_max, self._stress_sum, self._stress_n = 0.0, 0.0, 0

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", ())
        for info in infos:
            metrics = info.get("episode_metrics")
            if metrics is None:
                continue
            for key in self.KEYS:
                value = metrics.get(key)
                if value is not None and math.isfinite(value):
                    self.logger.record_mean(f"trade/{key}", float(value))
        price = np.fromiter((info.get("price", math.nan) for info in infos), float, count=len(infos))
        prev = self._prev_price
        if prev is not None and prev.shape == price.shape:
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.abs(np.log(price / prev))
            r = r[np.isfinite(r)]
            if r.size:
                self._stress_max = max(self._stress_max, float(r.max()))
                self._stress_sum += float(r.sum())
                self._stress_n += int(r.size)
        dones = self.locals.get("dones")
        if dones is not None:  # the next step of a finished env starts a new episode: no return across it
            price = np.where(np.asarray(dones, dtype=bool), math.nan, price)
        self._prev_price = price
        return True


class ExecutionMetricsCallback(BaseCallback):
    """Records ``exec/<key>`` (mean over the execution episodes that ended since the last dump).

    Reads ``info["execution"]``, which ``CryptoFuturesExecutionEnv`` adds on an episode's last step: the
    implementation shortfall ``exec/shortfall_bps`` (bp of the arrival notional, raw: the training reward
    scale does not apply), its decomposition ``exec/{timing,spread,impact,fees}_bps``, the number of child
    fills ``exec/n_fills`` and ``exec/forced_share``, the share of the order left to the forced completion.
    """

    KEYS = ("shortfall_bps", "timing_bps", "spread_bps", "impact_bps", "fees_bps", "n_fills")

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            summary = info.get("execution")
            if summary is None:
                continue
            for key in self.KEYS:
                value = summary.get(key)
                if value is not None and math.isfinite(value):
                    self.logger.record_mean(f"exec/{key}", float(value))
            if summary.get("quantity"):
                self.logger.record_mean("exec/forced_share", summary["forced_qty"] / summary["quantity"])
        return True


class ValidationCallback(BaseCallback):
    """Every ``eval_freq`` environment steps, run the policy over the validation period and log ``eval/…``.

    Task-neutral: ``evaluate`` is the task's validator (``TaskSpec.make_validator``: ``trade_metrics`` for
    trading, the shortfall statistics of the validation episodes for execution).

    Args:
        evaluate: returns the metrics dict of one deterministic pass over the validation period.
        eval_freq: in environment steps summed over envs (converted to callback calls internally).
        n_envs: number of training envs.
        metric: the metric that selects the best model.
        score: ``(metric, value) -> float`` to maximize (default: ``TaskSpec.score`` of the registered task
            that has ``metric``: lower is better for ``shortfall_bps``, ``max_drawdown`` by magnitude).
        on_best: called with the metrics whenever a new best is found (saves ``best_model.zip``).
        eval_at_start: also validate the untrained policy before the first step (not when resuming).
    """

    def __init__(
        self,
        evaluate: Callable[[], dict[str, Any]],
        *,
        eval_freq: int,
        n_envs: int,
        metric: str = "sharpe",
        on_best: Callable[[dict[str, Any]], None] | None = None,
        score: Callable[[str, float], float] | None = None,
        eval_at_start: bool = True,
    ) -> None:
        super().__init__()
        self.evaluate = evaluate
        self.eval_at_start = eval_at_start
        self.start_timesteps = 0
        self.every_calls = max(1, eval_freq // max(1, n_envs))
        self.metric = metric
        self.on_best = on_best
        if score is None:
            from agents.tasks import TASKS

            task = next((t for t in TASKS.values() if metric in t.metrics), None)
            score = task.score if task is not None else (lambda _m, v: v)
        self._score = score
        self.best: float = -math.inf
        self.best_metrics: dict[str, Any] | None = None
        self.history: list[tuple[int, dict[str, Any]]] = []

    def score(self, metrics: dict[str, Any]) -> float:
        """The value maximized when selecting the best model."""
        value = float(metrics[self.metric])
        if math.isnan(value):
            return -math.inf
        return self._score(self.metric, value)

    def run_eval(self) -> dict[str, Any]:
        metrics = self.evaluate()
        self.history.append((self.num_timesteps, metrics))
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.logger.record(f"eval/{key}", float(value))
        score = self.score(metrics)
        if score > self.best:
            self.best = score
            self.best_metrics = metrics
            if self.on_best is not None:
                self.on_best(metrics)
        if self.best_metrics is not None and math.isfinite(float(self.best_metrics[self.metric])):
            self.logger.record(f"eval/best_{self.metric}", float(self.best_metrics[self.metric]))
        self.logger.dump(self.num_timesteps)
        return metrics

    def _on_training_start(self) -> None:
        # The untrained policy is a candidate too: early stopping can then keep "never learned anything
        # useful", which for a policy that starts inside the no-trade band means staying out of the market.
        # Not on resume (num_timesteps > 0): the earlier run's best is restored by the caller instead.
        self.start_timesteps = self.num_timesteps
        if self.eval_at_start and self.num_timesteps == 0:
            self.run_eval()

    def _on_step(self) -> bool:
        if self.n_calls % self.every_calls == 0:
            self.run_eval()
        return True

    @property
    def evaluated_after_start(self) -> bool:
        """Whether any validation ran after the first step of this ``learn`` call."""
        return any(step > self.start_timesteps for step, _ in self.history)


def planned_steps(model: Any, remaining: int) -> int:
    """Env steps ``learn`` will actually take for ``remaining`` requested ones: SB3 finishes every rollout it
    starts (on-policy: ``n_steps * n_envs`` steps; off-policy: ``train_freq`` steps of every env), so the
    count is rounded up to whole rollouts (200,000 requested at 4,096 per rollout -> 200,704)."""
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    n_envs = model.get_env().num_envs if model.get_env() is not None else 1
    chunk = n_envs
    if isinstance(model, OnPolicyAlgorithm):
        chunk = int(model.n_steps) * n_envs
    else:
        freq = getattr(model, "train_freq", None)
        unit = getattr(getattr(freq, "unit", None), "value", "step")
        if freq is not None and unit == "step":
            chunk = int(freq.frequency) * n_envs
    return -(-max(remaining, 0) // chunk) * chunk


class WholeRolloutProgressBar(ProgressBarCallback):
    """SB3's progress bar with the total SB3 will really reach (:func:`planned_steps`), so it ends at 100 %
    instead of at 200,704/200,000."""

    def _on_training_start(self) -> None:
        from tqdm.rich import tqdm

        remaining = self.locals["total_timesteps"] - self.model.num_timesteps
        self.pbar = tqdm(total=planned_steps(self.model, remaining))
