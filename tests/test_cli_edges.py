"""Edges of the command line: -OO, help, failed starts and resumes, damaged models, pipes, output names."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cli_helpers import ROOT, assert_user_error, run_cli

from agents.config import RunConfig
from agents.reporting import format_cell


def test_help_works_without_docstrings():
    """``python -OO`` strips docstrings: nothing may use one as data."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in (["--help"], ["compare", "--help"], ["evaluate", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-OO", str(ROOT / "train.py"), *args], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout
    assert (
        "examples:"
        in subprocess.run(
            [sys.executable, "-OO", str(ROOT / "train.py"), "--help"], capture_output=True, text=True, env=env
        ).stdout
    )


def test_help_subcommand_prints_help(tmp_path):
    proc = run_cli("help", cwd=tmp_path)
    assert proc.returncode == 0 and "usage: train.py" in proc.stdout and "compare" in proc.stdout
    proc = run_cli("help", "compare", cwd=tmp_path)
    assert proc.returncode == 0 and "--clips" in proc.stdout
    assert not (tmp_path / "runs").exists()


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    proc = run_cli("--hp", "learning_rate=-1", "--timesteps", "64", "--run-dir", "r", cwd=tmp_path)
    assert_user_error(proc, "learning rate", "-1")
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny trained run (with a validation period, so best_model.zip exists)."""
    import torch

    from agents.run import train

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("edges") / "run"
    cfg = RunConfig().replace(
        algo={
            "timesteps": 64,
            "n_envs": 1,
            "net_arch": [8],
            "hyperparams": {"n_steps": 32, "batch_size": 32},
        },
        env={"window": 4, "episode_bars": 48},
        eval={"eval_freq": 32},
        data={"data": "btcusdt-perp-1h-2025"},  # the 999-bar set: fast
    )
    train(cfg, path, command="python train.py (test)")
    return path


def test_evaluate_names_outputs_by_split_and_model(run, tmp_path):
    assert run_cli("evaluate", str(run), cwd=tmp_path).returncode == 0
    first = (run / "eval.json").read_text()
    proc = run_cli("evaluate", str(run), "--split", "val", "--model", "best", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "eval-val-best.json" in proc.stdout and "equity-val-best.png" in proc.stdout
    out = json.loads((run / "eval-val-best.json").read_text())
    assert (out["split"], out["model"]) == ("val", "best_model.zip")
    assert (run / "equity-val-best.png").is_file()
    assert (run / "eval.json").read_text() == first  # the test/final report is not overwritten


def test_evaluate_into_a_closed_pipe_is_quiet(run):
    """``train.py evaluate RUN | head``: the reader leaving is not an error (no BrokenPipeError traceback)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "evaluate", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 0


def test_damaged_model_and_failed_resume(run, tmp_path):
    """A truncated model.zip is one clean error line; a failed --resume does not touch command.txt."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    data = (broken / "model.zip").read_bytes()
    (broken / "model.zip").write_bytes(data[: len(data) // 2])
    commands = (broken / "command.txt").read_text()
    proc = run_cli("evaluate", str(broken), cwd=tmp_path)
    assert_user_error(proc, "model.zip", "damaged")
    assert "Error: Error" not in proc.stderr and "error: Error" not in proc.stderr
    proc = run_cli("--resume", str(broken), "--timesteps", "32", cwd=tmp_path)
    assert_user_error(proc, "damaged")
    assert (broken / "command.txt").read_text() == commands


@pytest.mark.parametrize(
    ("value", "fmt", "text"),
    [
        (-1e-9, "{:.2f}", "0.00"),
        (-4e-6, "{:+.2%}", "+0.00%"),
        (-0.004, "{:+.2%}", "-0.40%"),
        (None, "{:.2f}", "-"),
    ],
)
def test_no_negative_zero_in_tables(value, fmt, text):
    assert format_cell(value, fmt) == text


def test_tables_never_show_minus_zero():
    import numpy as np

    from agents.task_trading import EvalReport

    metrics = {
        "total_return": -1e-12,
        "sharpe": -0.001,
        "max_drawdown": 0.0,
        "fees": -1e-9,
        "liquidations": 0,
    }
    report = EvalReport(metrics, {"flat": dict(metrics)}, np.zeros(3), np.ones(4))
    assert "-0.00" not in report.table()


def test_data_options_reach_load_market(tmp_path, monkeypatch):
    """--fill-gaps, --funding-tz and repeated --funding are recorded in the config and passed through."""
    import envs.loaders
    from agents.cli import build_parser
    from agents.env_factory import RunData
    from agents.options import config_from_args

    a, b = tmp_path / "f1.csv", tmp_path / "f2.csv"
    a.write_text("x")
    b.write_text("x")
    argv = ["train", "--data", "bars.csv", "--funding", str(a), "--funding", str(b)]
    cfg = config_from_args(build_parser().parse_args([*argv, "--funding-tz", "UTC+8", "--fill-gaps"]))
    assert cfg.data.funding == [str(a), str(b)] and cfg.data.funding_tz == "UTC+8" and cfg.data.fill_gaps
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    seen = {}

    def fake_load_market(spec, **kwargs):
        seen.update(kwargs, spec=spec)
        raise ValueError("stop here")

    monkeypatch.setattr(envs.loaders, "load_market", fake_load_market)
    with pytest.raises(ValueError, match="stop here"):
        RunData(cfg)
    assert seen == {"spec": "bars.csv", "funding": [str(a), str(b)], "funding_tz": "UTC+8", "fill_gaps": True}
    one = config_from_args(build_parser().parse_args(["train", "--funding", str(a)]))
    assert one.data.funding == str(a) and not one.data.fill_gaps and one.data.funding_tz is None


def test_console_script_points_at_the_cli(monkeypatch):
    """``perpclip`` (pyproject's console script) is the same command line as ``python train.py``."""
    import importlib

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["perpclip"]
    module, _, attr = target.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    monkeypatch.setattr(sys, "argv", ["perpclip", "help"])
    with pytest.raises(SystemExit) as exc:
        fn()
    assert exc.value.code == 0


def test_library_warnings_print_as_one_line(capsys):
    """A library warning reaching the CLI is one ``warning: ...`` line, without the raising source line."""
    import warnings

    from agents.cli import _one_line_warning

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _one_line_warning
        warnings.warn("a notional of 50,858 USDT is above\n  the first bracket", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == "warning: a notional of 50,858 USDT is above the first bracket\n"
