"""The task registry: a third task registered here trains, evaluates and compares through the public API;
``compare`` runs the execution task end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import yaml
from cli_helpers import run_cli

from agents.compare import run_compare
from agents.compare_spec import FoldRanges, parse_clips
from agents.config import RunConfig
from agents.errors import UserError
from agents.reporting import metric_table, new_figure, save_figure
from agents.task_spec import TaskSpec
from agents.tasks import TASKS, register_task, unregister_task

# ----------------------------------------------------------------------------------------------------
# A toy task: bet on the sign of the next bar's return (defined entirely here, registered by a fixture)


@dataclass(frozen=True)
class ToyConfig:
    """The toy env's arguments (its config section is ``toy_env``)."""

    window: int = 2
    episode_bars: int | None = 32

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 1:
            raise UserError(f"toy_env.window must be an integer >= 1, got {self.window!r}")

    def env_kwargs(self) -> dict[str, Any]:
        return {"window": self.window, "episode_bars": self.episode_bars}


class SignEnv(gym.Env):
    """Observation: the last ``window`` log returns (x100); action in [-1, 1]; reward: action x return."""

    def __init__(self, market: Any, window: int = 2, episode_bars: int | None = 32) -> None:
        self.ret = np.diff(np.log(np.asarray(market.close, dtype=np.float64))) * 100.0
        self.window, self.episode_bars = window, episode_bars
        self.min_start = window
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (window,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = self.end = 0

    def _obs(self) -> np.ndarray:
        return self.ret[self.t - self.window : self.t].astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        last = len(self.ret) - 1
        if options and "start" in options:
            self.t = int(options["start"])
        else:
            span = last - (self.episode_bars or 1)
            self.t = int(self.np_random.integers(self.min_start, max(self.min_start + 1, span)))
        self.end = last if self.episode_bars is None else min(last, self.t + self.episode_bars)
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(np.clip(np.asarray(action).ravel()[0], -1, 1)) * float(self.ret[self.t])
        self.t += 1
        return self._obs(), reward, self.t >= self.end, False, {}


def _episode(env: SignEnv, act: Any, start: int) -> dict[str, float]:
    obs, _ = env.reset(options={"start": start})
    if hasattr(act, "reset"):
        act.reset(env)
    rewards, done = [], False
    while not done:
        obs, r, done, _, _ = env.step(act(obs, {}))
        rewards.append(r)
    r = np.asarray(rewards)
    return {"hit_rate": float((r > 0).mean()), "mean_reward": float(r.mean()), "steps": int(r.size)}


@dataclass(frozen=True)
class ToyReport:
    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    split: str
    period: tuple[int, int]

    def to_json(self) -> dict[str, Any]:
        return {"agent": self.metrics, "baselines": self.baselines}

    def describe(self) -> list[str]:
        return [f"{self.split} period {self.period}"]

    def table(self) -> str:
        rows = (("hit_rate", "hit rate", "{:.1%}"), ("mean_reward", "mean reward", "{:.3f}"))
        return "\n".join(metric_table({"agent": self.metrics, **self.baselines}, rows))

    def plot(self, path: Path) -> np.ndarray:
        fig, ax = new_figure((3, 2))
        ax.bar(
            ["agent", *self.baselines],
            [self.metrics["mean_reward"]] + [b["mean_reward"] for b in self.baselines.values()],
        )
        return save_figure(fig, path)


def _toy_validator(env: SignEnv, cfg: Any, start: int) -> Any:
    return lambda act: _episode(env, act, start)


def _toy_evaluate(env: SignEnv, act: Any, cfg: Any, period: Any, start: int, data: Any) -> ToyReport:
    long = _episode(env, lambda obs, info: np.ones(1, dtype=np.float32), start)
    return ToyReport(
        _episode(env, act, start), {"always_long": long}, period.name, (period.start, period.stop)
    )


TOY = TaskSpec(
    name="toy",
    section="toy_env",
    config_cls=ToyConfig,
    make_env=SignEnv,
    metrics=("hit_rate", "mean_reward"),
    make_validator=_toy_validator,
    evaluate=_toy_evaluate,
    run_prefix="toy-",
    whole_period={"episode_bars": None},
    summary=(("hit_rate", "test hit rate", 3), ("mean_reward", "test mean reward", 3)),
    reference="always_long",
    best_line=lambda m: f"hit rate {m['hit_rate']:.1%}",
    plot_name="toy",
)

TINY_ALGO = {
    "algo": "ppo",
    "timesteps": 64,
    "n_envs": 1,
    "net_arch": [8],
    "hyperparams": {"n_steps": 32, "batch_size": 32, "n_epochs": 1},
}


@pytest.fixture
def toy_task():
    register_task(TOY)
    try:
        yield TOY
    finally:
        unregister_task("toy")


def test_a_third_task_is_one_registry_entry(toy_task, tmp_path):
    """Config, train, evaluate and compare a task registered here, through the public API only."""
    import torch

    from agents.options import config_from_args
    from agents.run import evaluate, train

    torch.set_num_threads(1)
    from agents.cli import build_parser

    args = build_parser().parse_args(["train", "--task", "toy", "--env", "window=3", "--timesteps", "64"])
    cfg = config_from_args(args)
    assert cfg.task == "toy" and cfg.toy_env == ToyConfig(window=3) and cfg.eval.metric == "hit_rate"
    with pytest.raises(UserError, match="does not apply to task 'toy'"):
        RunConfig(task="toy", eval={"metric": "sharpe"})

    cfg = RunConfig.from_dict({"task": "toy", "algo": TINY_ALGO, "eval": {"eval_freq": 32}, "toy_env": {}})
    res = train(cfg, tmp_path / "run")
    assert res.timesteps == 64 and res.best_eval is not None and "hit_rate" in res.best_eval
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["task"] == "toy" and saved["toy_env"] == {"window": 2, "episode_bars": 32}
    assert RunConfig.from_dict(saved).toy_env == ToyConfig()
    report = evaluate(tmp_path / "run")
    assert set(report.metrics) == {"hit_rate", "mean_reward", "steps"} and "always_long" in report.baselines
    out = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert out["task"] == "toy" and out["agent"] == report.metrics
    assert (tmp_path / "run" / "toy.png").stat().st_size > 0

    base = RunConfig.from_dict({"task": "toy", "algo": TINY_ALGO}).to_dict()
    folds = [FoldRanges(0, (0, 700), None, (700, 999))]
    res = run_compare(
        base, parse_clips("none,norm"), 1, folds=folds, out=tmp_path / "cmp", workers=1, log=None
    )
    assert res.n_failed == 0, res.results["error"].tolist()
    df = pd.read_csv(tmp_path / "cmp" / "results.csv")
    assert {"test_hit_rate", "test_mean_reward", "baseline_always_long_hit_rate"} <= set(df.columns)
    summary = res.summary.set_index("clip")
    assert {"none", "norm", "(always_long)"} <= set(summary.index)
    assert summary.loc["none", "hit_rate_mean"] == pytest.approx(
        df.loc[df["clip"] == "none", "test_hit_rate"].iloc[0]
    )
    assert "test hit rate (mean ± std)" in res.table
    assert (tmp_path / "cmp" / "test_hit_rate.png").is_file()


def test_registry_refuses_clashing_tasks(toy_task):
    with pytest.raises(ValueError, match="already registered"):
        register_task(TOY)
    with pytest.raises(ValueError, match="already in use"):
        register_task(TaskSpec("toy2", "env", ToyConfig, SignEnv, ("x",), _toy_validator, _toy_evaluate))
    assert list(TASKS)[:2] == ["trading", "execution"]


@pytest.mark.slow
def test_compare_runs_the_execution_task_end_to_end(tmp_path):
    """``train.py compare --task execution``: every run trained, evaluated on shortfall next to TWAP."""
    proc = run_cli(
        "compare",
        "--task",
        "execution",
        "--env",
        "horizon_bars=6,profile_days=2,window=4",
        "--clips",
        "none,zclip",
        "--seeds",
        "1",
        "--folds",
        "1",
        "--timesteps",
        "64",
        "--n-envs",
        "1",
        "--net-arch",
        "8",
        "--hp",
        "n_steps=32,batch_size=32,n_epochs=1",
        "--workers",
        "1",
        "--out",
        "cmp",
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(tmp_path / "cmp" / "results.csv")
    assert list(df["status"]) == ["ok", "ok"]
    assert df["test_shortfall_bps"].notna().all() and df["baseline_twap_shortfall_bps"].notna().all()
    summary = (tmp_path / "cmp" / "summary.md").read_text()
    assert "execution task" in summary and "test shortfall bp (mean ± std)" in summary and "(twap)" in summary
    assert (tmp_path / "cmp" / "test_shortfall_bps.png").is_file()
    for run in df["run_dir"]:
        cfg = yaml.safe_load((tmp_path / "cmp" / run / "config.yaml").read_text())
        assert cfg["task"] == "execution" and cfg["exec_env"]["horizon_bars"] == 6
        assert json.loads((tmp_path / "cmp" / run / "eval.json").read_text())["task"] == "execution"
