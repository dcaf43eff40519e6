"""The defaults train end to end through the CLI, and config.yaml records exactly the defaults.

A smoke test, not a learning test: whether the defaults *learn* is measured by benchmarks/learning.py
(results in benchmarks/LEARNING.md).
"""

from __future__ import annotations

import pytest
import yaml
from cli_helpers import run_cli

from agents.algos import ALGOS, resolve_hyperparams, resolve_n_envs
from agents.config import AlgoConfig, ClipConfig, RunConfig
from agents.errors import UserError


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_default_config_trains_and_records_its_defaults(tmp_path, algo):
    run = tmp_path / "run"
    # Only the data (the small 999-bar set), the length and the validation are changed: everything else is
    # the default a user gets from `python train.py`.
    proc = run_cli(
        "--algo",
        algo,
        "--data",
        "btcusdt-perp-1h-2025",
        "--timesteps",
        "64",
        "--eval-freq",
        "0",
        "--no-progress",
        "--run-dir",
        str(run),
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (run / "model.zip").is_file()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    want = RunConfig().replace(algo={"algo": algo})
    assert AlgoConfig().n_envs is None  # the algorithm's own, recorded as a number in config.yaml
    assert cfg["algo"]["n_envs"] == ALGOS[algo].n_envs
    assert cfg["algo"]["normalize_obs"] == want.algo.normalize_obs
    assert cfg["algo"]["normalize_reward"] == want.algo.normalize_reward
    resolved = resolve_hyperparams(AlgoConfig(algo=algo), ClipConfig())
    for key, value in ALGOS[algo].defaults.items():
        if key == "policy_kwargs":
            for k, v in value.items():
                assert cfg["algo"]["hyperparams"]["policy_kwargs"][k] == v
        else:
            assert cfg["algo"]["hyperparams"][key] == resolved[key], key
    assert cfg["env"] == RunConfig().to_dict()["env"]


def test_default_rollout_fills_whole_minibatches():
    """PPO's rollout (n_envs * n_steps) splits into whole minibatches: no ragged last batch each epoch."""
    hp = ALGOS["ppo"].defaults
    assert (resolve_n_envs(AlgoConfig()) * hp["n_steps"]) % hp["batch_size"] == 0


@pytest.mark.parametrize("n_envs", [1, 3])
def test_train_cost_scale_raises_costs_of_the_training_envs_only(n_envs):
    from agents.env_factory import load_data, make_period_env, make_train_env, split_ranges

    cfg = RunConfig().replace(
        data={"data": "btcusdt-perp-1h-2025"},
        algo={"n_envs": n_envs, "train_cost_scale": 3.0},
        env={"window": 4, "episode_bars": 48, "execution": {"taker_fee": 0.001, "deadband": 0.3}},
    )
    market = load_data(cfg.data.data)
    vec = make_train_env(cfg, market)
    inner = vec.venv if hasattr(vec, "venv") else vec  # VecNormalize -> monitor
    inner = inner.venv if hasattr(inner, "venv") else inner  # VecMonitor -> adapter (batched)
    ex = inner.envs[0].unwrapped.execution if n_envs == 1 else inner.venv.execution
    assert ex.taker_fee == pytest.approx(0.003) and ex.half_spread_bps == pytest.approx(1.5)
    assert ex.deadband == 0.3  # only the costs change
    val, _, _ = make_period_env(market, cfg.env, split_ranges(len(market), cfg.data)["val"])
    assert val.unwrapped.execution.taker_fee == 0.001  # validation (and evaluation) at the real costs
    vec.close()


def test_train_cost_scale_rejects_bad_values():
    from agents.errors import UserError

    for bad in (-1.0, float("inf"), "2"):
        with pytest.raises(UserError, match="train_cost_scale"):
            AlgoConfig(train_cost_scale=bad)


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_n_envs_default_follows_the_algorithm_through_config_changes(algo):
    """``n_envs: null`` is each algorithm's own: switching the algorithm of a config does not carry PPO's
    number over, and an explicit number wins."""
    from agents.run import resolve_config

    cfg = RunConfig().replace(algo={"algo": algo})
    assert cfg.algo.n_envs is None
    assert resolve_config(cfg).algo.n_envs == ALGOS[algo].n_envs
    assert resolve_config(cfg.replace(algo={"n_envs": 3})).algo.n_envs == 3
    with pytest.raises(UserError, match="n_envs must be an integer >= 1"):
        RunConfig().replace(algo={"n_envs": 0})


@pytest.mark.parametrize("algo", ["ppo", "sac", "td3"])
def test_adam_is_fused_and_keeps_sb3_eps(algo):
    """Adam runs fused (one kernel over all parameters) with SB3's eps for on-policy policies; the update
    equals the unfused one to float32 rounding; an explicit choice of the user wins."""
    import torch
    from stable_baselines3.common.env_util import make_vec_env

    from agents.algos import build_model

    def params_after_training(hp: dict) -> tuple[torch.Tensor, dict]:
        env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
        small = {"n_steps": 32, "batch_size": 32, "n_epochs": 2} if algo == "ppo" else {"learning_starts": 16}
        cfg = AlgoConfig(algo=algo, n_envs=1, net_arch=[8], hyperparams={**small, **hp})
        model = build_model(cfg, ClipConfig(), env).model
        model.learn(64)
        opt = model.policy.optimizer if algo == "ppo" else model.actor.optimizer
        flat = torch.cat([p.detach().flatten() for p in model.policy.parameters()])
        return flat, opt.defaults

    fused, defaults = params_after_training({})
    assert defaults["fused"] is True
    assert defaults["eps"] == (1e-5 if algo == "ppo" else 1e-8)
    plain, defaults = params_after_training({"policy_kwargs": {"optimizer_kwargs": {"fused": False}}})
    assert not defaults["fused"]
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [-1.0, float("inf"), "2", True])
def test_lcb_z_must_be_a_finite_number_of_standard_errors(bad):
    with pytest.raises(UserError, match="eval.lcb_z must be a finite number >= 0"):
        RunConfig().replace(eval={"lcb_z": bad})
