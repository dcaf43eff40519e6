"""The defaults train end to end through the CLI, and config.yaml records exactly the defaults.

A smoke test, not a learning test: whether the defaults *learn* is measured by benchmarks/learning.py
(results in benchmarks/LEARNING.md).
"""

from __future__ import annotations

import pytest
import yaml
from cli_helpers import run_cli

from agents.algos import ALGOS, resolve_hyperparams
from agents.config import AlgoConfig, ClipConfig, RunConfig


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_default_config_trains_and_records_its_defaults(tmp_path, algo):
    run = tmp_path / "run"
    # Only the data (the small 999-bar set), the length and the validation are changed: everything else is
    # the default a user gets from `python train.py`.
    proc = run_cli(
        "--algo", algo, "--data", "btcusdt-perp-1h-2025", "--timesteps", "64", "--eval-freq", "0",
        "--no-progress", "--run-dir", str(run), cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (run / "model.zip").is_file()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    want = RunConfig().replace(algo={"algo": algo})
    assert cfg["algo"]["n_envs"] == AlgoConfig().n_envs
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
    assert (AlgoConfig().n_envs * hp["n_steps"]) % hp["batch_size"] == 0
