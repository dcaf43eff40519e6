"""The execution task through train.py: train, evaluate next to TWAP/VWAP/Almgren–Chriss, config, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from cli_helpers import assert_user_error, run_cli

from agents.config import RunConfig, load_config, save_config
from agents.errors import UserError

# Tiny: 2-day volume profile and 6-bar orders so the embedded 999 bars leave long validation/test periods.
EXEC_ENV = "horizon_bars=6,profile_days=2,window=4"
TINY = {
    "algo": {
        "timesteps": 256,
        "n_envs": 2,
        "net_arch": [8],
        "hyperparams": {"n_steps": 64, "batch_size": 64, "n_epochs": 1},
    },
    "eval": {"eval_freq": 128, "exec_starts": 20},
    "data": {"data": "btcusdt-perp-1h-2025"},
}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One tiny execution run trained and evaluated through the CLI, shared by the tests that read it."""
    cwd = tmp_path_factory.mktemp("exec_cli")
    (cwd / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    args = ("--config", "tiny.yaml", "--task", "execution", "--env", EXEC_ENV, "--no-progress")
    train = run_cli(*args, cwd=cwd)
    assert train.returncode == 0, train.stderr
    (run,) = (cwd / "runs").iterdir()
    ev = run_cli("evaluate", str(run), cwd=cwd)
    assert ev.returncode == 0, ev.stderr
    return run, train, ev


def test_train_execution_writes_its_config_and_logs_shortfall(evaluated):
    run, train, _ = evaluated
    assert run.name.startswith("exec-ppo-zclip-")
    assert "best validation: mean shortfall" in train.stdout and "TWAP" in train.stdout
    for name in ("config.yaml", "model.zip", "best_model.zip", "clipper_state.pt"):
        assert (run / name).is_file(), name
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["task"] == "execution" and "env" not in cfg  # the trading env section is unused: not written
    assert cfg["exec_env"]["horizon_bars"] == 6 and cfg["exec_env"]["profile_days"] == 2
    assert cfg["algo"]["hyperparams"]["gamma"] == 1.0  # the task's undiscounted default, recorded
    assert cfg["eval"]["metric"] == "shortfall_bps"
    assert load_config(run / "config.yaml") == RunConfig.from_dict(cfg)
    columns = (run / "progress.csv").read_text().splitlines()[0].split(",")
    assert "exec/shortfall_bps" in columns and "eval/shortfall_bps" in columns
    assert "eval/twap_shortfall_bps" in columns
    assert not [c for c in columns if c.startswith("trade/")]
    best = json.loads((run / "train_result.json").read_text())["best_eval"]
    assert best["episodes"] == 2 * 20  # eval.exec_starts arrival bars, each as a buy and a sell


def test_evaluate_prints_one_table_with_the_baselines_on_the_same_episodes(evaluated):
    run, _, ev = evaluated
    lines = ev.stdout.splitlines()
    assert lines[0].startswith("test period: bars [849, 999)")
    header = next(line for line in lines if "agent" in line and "twap" in line)
    assert header.split() == ["agent", "twap", "vwap", "almgren-chriss"]
    out = json.loads((run / "eval.json").read_text())
    assert out["task"] == "execution" and out["split"] == "test" and out["sides"] == ["buy", "sell"]
    per = out["per_episode"]
    n = out["episodes"]
    assert n == 2 * out["arrival_bars"] and len(per["arrival_bar"]) == n
    names = ("agent", "twap", "vwap", "almgren_chriss")
    assert sorted(per["shortfall_bps"]) == sorted(names)
    # Held out: every episode's arrival bar and fills (up to arrival + horizon) lie inside the test period.
    bars = np.array(per["arrival_bar"])
    assert bars.min() >= 849 and bars.max() + 6 <= 998
    # Both sides at each arrival bar, with the same size.
    by_bar = {}
    for bar, side, qty in zip(per["arrival_bar"], per["side"], per["quantity"], strict=True):
        by_bar.setdefault(bar, {})[side] = qty
    assert all(set(v) == {1, -1} and v[1] == v[-1] for v in by_bar.values())
    for name in names:
        stats = out["agent"] if name == "agent" else out["baselines"][name]
        values = np.array(per["shortfall_bps"][name])
        assert stats["episodes"] == n and stats["shortfall_bps"] == pytest.approx(values.mean())
        assert stats["q95_bps"] == pytest.approx(np.quantile(values, 0.95))
    row = next(line for line in lines if line.startswith("mean shortfall (bp)")).split()[-4:]
    expected = [out["agent"]["shortfall_bps"]] + [out["baselines"][k]["shortfall_bps"] for k in names[1:]]
    assert [float(v) for v in row] == pytest.approx(expected, abs=0.006)
    paired = next(line for line in lines if line.startswith("agent minus (paired)"))
    twap_diff = np.mean(np.array(per["shortfall_bps"]["agent"]) - np.array(per["shortfall_bps"]["twap"]))
    assert f"{twap_diff:+.2f}" in paired
    assert (run / "shortfall.png").stat().st_size > 1000


def test_evaluate_baseline_numbers_are_reproduced_by_the_env_alone(evaluated):
    """TWAP's reported shortfalls come from the test period's bars, with its warm-up only before it."""
    from envs.contract import ExecutionConfig
    from envs.execution_baselines import TWAP, run_execution_episode
    from envs.execution_env import CryptoFuturesExecutionEnv
    from envs.market import load_embedded

    run, _, _ = evaluated
    out = json.loads((run / "eval.json").read_text())
    per = out["per_episode"]
    market = load_embedded("btcusdt-perp-1h-2025")
    warm = 2 * 24  # profile_days=2 of hourly bars: the env's warm-up here
    env = CryptoFuturesExecutionEnv(
        market.slice(849 - warm, 999), horizon_bars=6, profile_days=2, window=4, execution=ExecutionConfig()
    )
    assert env.min_start == warm
    for i in range(0, out["episodes"], 7):
        options = {"start": per["arrival_bar"][i] - 849 + warm, "side": per["side"][i]}
        res = run_execution_episode(env, TWAP(), options={**options, "quantity": per["quantity"][i]})
        assert res.shortfall_bps == pytest.approx(per["shortfall_bps"]["twap"][i], rel=1e-9, abs=1e-9)


def tiny_exec_config(**algo) -> RunConfig:
    return RunConfig.from_dict({**TINY, "task": "execution"}).replace(
        algo={**TINY["algo"], **algo},
        exec_env={"horizon_bars": 6, "profile_days": 2, "window": 4},
        eval={"eval_freq": 0},
    )


def test_same_seed_same_result_and_resume(tmp_path):
    import torch

    from agents.run import evaluate, train

    torch.set_num_threads(1)
    cfg = tiny_exec_config(timesteps=128)
    reports = []
    for name in ("a", "b"):
        train(cfg, tmp_path / name)
        reports.append(evaluate(tmp_path / name, split="val", log_tensorboard=False))
    a, b = reports
    assert a.episodes == b.episodes
    np.testing.assert_array_equal(a.shortfall_bps["agent"], b.shortfall_bps["agent"])
    assert a.metrics == b.metrics
    # Resume: more steps on the same run, same config.
    res = train(cfg.replace(algo={"timesteps": 64}), tmp_path / "a", resume=True)
    assert res.timesteps == 128 + 128  # PPO rounds up to whole rollouts (n_steps 64 x 2 envs)
    with pytest.raises(UserError, match="cannot resume"):
        train(cfg.replace(exec_env={"horizon_bars": 5}), tmp_path / "a", resume=True)


def test_execution_config_yaml_round_trip(tmp_path):
    cfg = RunConfig(task="execution").replace(
        algo={"algo": "sac", "seed": 3},
        exec_env={
            "horizon_bars": 8,
            "quantity_adv": [0.01, 0.03],
            "side": "buy",
            "execution": {"max_participation": 0.2, "taker_fee": 0.0004},
            "impact_halflife": 2.5,
            "reward_scale": 0.05,
        },
        eval={"exec_starts": None},
    )
    assert cfg.exec_env.quantity_adv == (0.01, 0.03) and cfg.eval.metric == "shortfall_bps"
    assert cfg.task_env is cfg.exec_env
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert "env" not in cfg.to_dict() and "exec_env" not in RunConfig().to_dict()
    # A non-default section of the other task is kept (nothing the user wrote is dropped).
    mixed = cfg.replace(env={"window": 16})
    assert RunConfig.from_dict(mixed.to_dict()) == mixed
    # Switching tasks moves the default validation metric with it.
    assert cfg.with_task("trading").eval.metric == "sharpe_lcb"
    assert RunConfig.from_dict({"task": "execution"}).eval.metric == "shortfall_bps"
    # A trading config.yaml written before the execution task existed still loads.
    old = RunConfig().to_dict()
    del old["eval"]["exec_starts"]
    old["eval"]["metric"] = "sortino"
    assert RunConfig.from_dict(old) == RunConfig().replace(eval={"metric": "sortino"})


def test_best_model_selection_prefers_lower_shortfall():
    from agents.callbacks import ValidationCallback

    cb = ValidationCallback(lambda: {}, eval_freq=10, n_envs=1, metric="shortfall_bps")
    assert cb.score({"shortfall_bps": 10.0}) > cb.score({"shortfall_bps": 20.0})


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--task", "exec"], ["unknown task 'exec'", "trading, execution", "Did you mean 'execution'"]),
        (["--task", "execution", "--env", "horizon=6"], ["unknown key(s) 'horizon'", "horizon_bars"]),
        (["--task", "execution", "--env", "side=up"], ["exec_env.side", "'up'"]),
        (["--task", "execution", "--env", "quantity=1,quantity_adv=0.01"], ["not both"]),
        (["--task", "execution", "--env", "reward_scale=0"], ["exec_env.reward_scale"]),
    ],
)
def test_bad_execution_input_is_one_line_error(tmp_path, args, fragments):
    assert_user_error(run_cli(*args, "--run-dir", "r", cwd=tmp_path), *fragments)
    assert not (tmp_path / "r").exists()


def test_bad_execution_config_errors(tmp_path, evaluated):
    run, _, _ = evaluated
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"task": "execution", "eval": {"metric": "sharpe"}}))
    assert_user_error(run_cli("--config", "c.yaml", cwd=tmp_path), "'sharpe' does not apply", "shortfall_bps")
    assert_user_error(
        run_cli("--resume", str(run), "--task", "trading", cwd=tmp_path), "--task cannot be changed"
    )


def test_period_shorter_than_the_horizon_is_a_user_error(tmp_path):
    from agents.run import train

    cfg = tiny_exec_config().replace(exec_env={"horizon_bars": 160}, eval={"eval_freq": 64})
    with pytest.raises(UserError, match=r"the val period \[699, 849\) is too short to execute"):
        train(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()
