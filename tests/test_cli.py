"""train.py as users run it: subprocesses for train, resume, evaluate and bad input; parsing in-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_helpers import ROOT, assert_user_error, run_cli

from agents.cli import build_parser, config_from_args

TINY = {
    "algo": {
        "algo": "ppo",
        "timesteps": 128,
        "n_envs": 2,
        "net_arch": [8],
        "hyperparams": {"n_steps": 32, "batch_size": 32, "n_epochs": 1},
    },
    "env": {"window": 4, "episode_bars": 48},
    "eval": {"eval_freq": 64},
    "data": {"data": "btcusdt-perp-1h-2025"},  # the 999-bar set: fast
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run made through the CLI, shared by the tests that read it."""
    cwd = tmp_path_factory.mktemp("cli")
    (cwd / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    proc = run_cli("--config", "tiny.yaml", "--clip", "zclip:warmup_steps=3", "--no-progress", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd, proc


def test_train_creates_a_named_run_folder_and_says_how_to_watch_it(trained):
    cwd, proc = trained
    runs = list((cwd / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("ppo-zclip-")
    run = runs[0]
    assert f"run folder: {Path('runs') / run.name}" in proc.stdout
    assert "tensorboard --logdir runs" in proc.stdout
    assert f"python train.py evaluate {Path('runs') / run.name}" in proc.stdout
    for name in ("config.yaml", "command.txt", "model.zip", "best_model.zip", "clipper_state.pt"):
        assert (run / name).is_file(), name
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["clip"]["policy_kwargs"] == {"warmup_steps": 3} and cfg["algo"]["timesteps"] == 128
    assert "--clip zclip:warmup_steps=3" in (run / "command.txt").read_text()


def test_resume_then_evaluate(trained):
    cwd, _ = trained
    run = next((cwd / "runs").iterdir())
    proc = run_cli("--resume", str(run), "--timesteps", "64", "--no-progress", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "train_result.json").read_text())["timesteps"] == 192
    proc = run_cli("evaluate", str(run), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for row in (
        "total return",
        "Sharpe (ann.)",
        "Sortino (ann.)",
        "max drawdown",
        "Calmar",
        "turnover",
        "fees",
        "funding",
        "liquidations",
    ):
        assert row in out
    for col in ("agent", "flat", "buy-and-hold", "trend"):
        assert col in out
    assert json.loads((run / "eval.json").read_text())["split"] == "test"
    assert (run / "equity.png").is_file()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--algo", "dqn"), ("unknown algo 'dqn'", "ppo, sac")),
        (("--clip", "zclp"), ("unknown clipper 'zclp'", "did you mean 'zclip'")),
        (("--data", "no_such_file.csv", "--run-dir", "r"), ("no_such_file.csv",)),
        (("--hp", "learning_rate"), ("--hp", "key=value")),
        (("--config", "missing.yaml"), ("missing.yaml", "does not exist")),
        (("evaluate", "nowhere"), ("'nowhere' does not exist",)),
        (("--resume", "nowhere"), ("not a run folder",)),
    ],
)
def test_bad_input_is_one_line_error_without_traceback(tmp_path, args, fragments):
    proc = run_cli(*args, cwd=tmp_path)
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()  # nothing created


def test_evaluate_errors_on_missing_model_and_shape_mismatch(trained, tmp_path):
    cwd, _ = trained
    run = next((cwd / "runs").iterdir())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((run / "config.yaml").read_text())
    assert_user_error(run_cli("evaluate", str(broken), cwd=tmp_path), "has no model.zip")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["env"]["window"] = 8
    (broken / "config.yaml").write_text(yaml.safe_dump(cfg))
    (broken / "model.zip").write_bytes((run / "model.zip").read_bytes())
    assert_user_error(run_cli("evaluate", str(broken), cwd=tmp_path), "shape (23,)", "(43,)")


def test_resume_refuses_config_changes(trained):
    cwd, _ = trained
    run = next((cwd / "runs").iterdir())
    assert_user_error(run_cli("--resume", str(run), "--seed", "3", cwd=cwd), "--seed", "only --timesteps")


def test_existing_run_dir_is_never_overwritten(trained):
    cwd, _ = trained
    run = next((cwd / "runs").iterdir())
    before = (run / "model.zip").read_bytes()
    assert_user_error(run_cli("--run-dir", str(run), cwd=cwd), "already exists")
    assert (run / "model.zip").read_bytes() == before


@pytest.mark.slow
def test_ctrl_c_saves_the_model_and_exits_130(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--config",
            "tiny.yaml",
            "--timesteps",
            "10000000",
            "--run-dir",
            "run",
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell runs background jobs (`.ci/run &`, nohup) with SIGINT ignored, and children inherit that;
        # Python then never raises KeyboardInterrupt. Ctrl-C reaches a foreground job: give the child that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 60
    while not list((tmp_path / "run").glob("progress.csv")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # inside learn()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C), model saved" in out
    assert (tmp_path / "run" / "model.zip").is_file()


# ------------------------------------------------------------------------------------------- in-process


def parse(*argv: str):
    return build_parser().parse_args(["train", *argv])


def test_no_arguments_is_ppo_with_zclip_on_embedded_data():
    cfg = config_from_args(parse())
    assert (cfg.algo.algo, cfg.clip.policy, cfg.clip.value, cfg.data.data) == (
        "ppo",
        "zclip",
        "zclip",
        "btcusdt-1h",
    )


def test_bad_clipper_keyword_names_the_part_and_the_fix():
    from agents.algos import validate_clip
    from agents.errors import UserError

    with pytest.raises(UserError, match="value clipper: .*'z_thres'.*did you mean 'z_thresh'"):
        validate_clip(config_from_args(parse("--value-clip", "zclip:z_thres=2")).clip)


def test_cli_options_override_the_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"algo": {"algo": "sac", "seed": 1, "timesteps": 500}}))
    cfg = config_from_args(
        parse(
            "--config",
            str(tmp_path / "c.yaml"),
            "--seed",
            "9",
            "--clip",
            "autoclip:quantile=0.2",
            "--value-clip",
            "zclip:z_thresh=2.0,alpha=0.9",
            "--hp",
            "learning_rate=1e-4",
            "--env",
            "window=16,dsr_eta=0.02",
            "--train-data",
            "synthetic:garch:n_bars=5000,seed=1",
        )
    )
    assert (cfg.algo.algo, cfg.algo.seed, cfg.algo.timesteps) == ("sac", 9, 500)
    assert (cfg.clip.policy, cfg.clip.policy_kwargs) == ("autoclip", {"quantile": 0.2})
    assert (cfg.clip.value, cfg.clip.value_kwargs) == ("zclip", {"z_thresh": 2.0, "alpha": 0.9})
    assert cfg.algo.hyperparams == {"learning_rate": 1e-4}
    assert cfg.env.window == 16 and cfg.env.kwargs == {"dsr_eta": 0.02}
    assert cfg.data.train_data == "synthetic:garch:n_bars=5000,seed=1"
