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
    proc = run_cli("evaluate", str(broken), "--model", "final", cwd=tmp_path)
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

    from agents.cli import _SHOWN, _one_line_warning

    _SHOWN.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _one_line_warning
        warnings.warn("a notional of 50,858 USDT is above\n  the first bracket", UserWarning, stacklevel=1)
        # The same warning with other numbers (another env of the same command) is not repeated...
        warnings.warn("a notional of 61,002.5 USDT is above the first bracket", UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)  # ...another one is shown
    err = capsys.readouterr().err
    assert err == "warning: a notional of 50,858 USDT is above the first bracket\nwarning: something else\n"


def _user_files(tmp_path, n_bars=700, gap_at=300):
    """A user's raw files: hourly bars (UTC) with one missing bar, the funding web export (UTC+8, newest
    first, percent strings, BOM, quoted) for the first half and an API dump (UTC) for the second half, the
    two overlapping."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    times = pd.date_range("2024-01-01", periods=n_bars, freq="1h")
    close = 40_000 * np.exp(np.cumsum(rng.normal(0, 0.004, n_bars)))
    open_ = np.r_[close[0], close[:-1]]
    bars = pd.DataFrame(
        {
            "timestamp": times.strftime("%Y-%m-%d %H:%M:%S"),
            "open": open_,
            "high": np.maximum(open_, close) * 1.001,
            "low": np.minimum(open_, close) * 0.999,
            "close": close,
            "volume": rng.uniform(500, 1500, n_bars),
        }
    ).drop(index=gap_at)
    bars.to_csv(tmp_path / "bars.csv", index=False)
    settle = pd.date_range("2024-01-01", periods=n_bars // 8 + 1, freq="8h")
    rates = np.round(rng.normal(1e-4, 5e-5, len(settle)), 8)
    half = len(settle) // 2
    web = [
        f'"{(t + pd.Timedelta(hours=8)):%Y-%m-%d %H:%M:%S}","BTCUSDT Perpetual","8h","{r * 100:.6f}%"'
        for t, r in zip(settle[: half + 10], rates[: half + 10], strict=True)
    ][::-1]
    (tmp_path / "web.csv").write_text(
        '\ufeff"Time","Contracts","Funding Interval","Funding Rate"\n' + "\n".join(web) + "\n",
        encoding="utf-8",
    )
    api = ["fundingTime,fundingRate"] + [
        f"{t:%Y-%m-%d %H:%M:%S}.001000,{r:.8f}" for t, r in zip(settle[half:], rates[half:], strict=True)
    ]
    (tmp_path / "api.csv").write_text("\n".join(api) + "\n")
    return rates


TINY_RUN = (
    "--timesteps",
    "64",
    "--n-envs",
    "1",
    "--net-arch",
    "8",
    "--hp",
    "n_steps=32,batch_size=32",
    "--env",
    "window=4,episode_bars=32",
    "--no-progress",
)


def test_cli_takes_raw_user_files_with_gaps_and_zoned_merged_funding(tmp_path):
    """--fill-gaps and a UTC+8 web export merged with a UTC API dump, through train.py and evaluate."""
    import json

    _user_files(tmp_path)
    proc = run_cli("--data", "bars.csv", *TINY_RUN, "--run-dir", "r0", cwd=tmp_path)
    assert_user_error(proc, "1 missing bar", "--fill-gaps")
    assert not (tmp_path / "r0").exists()
    funding = ("--funding", "web.csv@UTC+8", "--funding", "api.csv")
    proc = run_cli("--data", "bars.csv", "--fill-gaps", *funding, *TINY_RUN, "--run-dir", "r", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1" in proc.stderr and "fill" in proc.stderr.lower()  # the filled bar is reported, on one line
    assert "Traceback" not in proc.stderr and "UserWarning" not in proc.stderr
    ev = run_cli("evaluate", "r", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    # The merged funding reached the env: buy-and-hold holds a position over the test period and pays it.
    baselines = json.loads((tmp_path / "r" / "eval.json").read_text())["baselines"]
    assert baselines["buy_and_hold"]["funding"] != 0.0
    # The web export read as UTC lands every rate on the wrong settlement: refused, naming the fix.
    proc = run_cli("--data", "bars.csv", "--fill-gaps", "--funding", "web.csv", *TINY_RUN, cwd=tmp_path)
    assert_user_error(proc, "web.csv@UTC+8")


def test_cli_refuses_funding_files_that_disagree(tmp_path):
    rates = _user_files(tmp_path)
    lines = (tmp_path / "api.csv").read_text().splitlines()
    t, r = lines[1].split(",")
    lines[1] = f"{t},{float(r) + 1e-4:.8f}"  # one overlapping settlement differs by 1 bp
    (tmp_path / "api.csv").write_text("\n".join(lines) + "\n")
    funding = ("--funding", "web.csv@UTC+8", "--funding", "api.csv")
    proc = run_cli("--data", "bars.csv", "--fill-gaps", *funding, *TINY_RUN, cwd=tmp_path)
    assert_user_error(proc, "web.csv", "api.csv")
    assert len(rates) > 20  # the two files overlap on 10 settlements


@pytest.mark.parametrize(
    ("algo", "hp", "n_envs", "requested", "expected"),
    [
        ("ppo", {"n_steps": 32, "batch_size": 32}, 2, 100, 128),
        ("ppo", {"n_steps": 32, "batch_size": 32}, 2, 128, 128),
        ("sac", {"learning_starts": 10, "train_freq": 3}, 2, 100, 102),
    ],
)
def test_progress_bar_total_is_the_steps_learn_will_take(algo, hp, n_envs, requested, expected):
    """SB3 finishes the rollout it started: the bar's total is rounded up alike (not 200,704 of 200,000)."""
    from agents.algos import build_model
    from agents.callbacks import planned_steps
    from agents.env_factory import make_train_env
    from envs.market import load_embedded

    cfg = RunConfig().replace(
        algo={"algo": algo, "timesteps": requested, "n_envs": n_envs, "net_arch": [8], "hyperparams": hp},
        env={"window": 4, "episode_bars": 32},
        data={"data": "btcusdt-perp-1h-2025"},
    )
    market = load_embedded("btcusdt-perp-1h-2025")
    cm = build_model(cfg.algo, cfg.clip, make_train_env(cfg, market))
    assert planned_steps(cm.model, requested) == expected
    cm.model.learn(requested)
    assert cm.model.num_timesteps == expected


def test_equity_plot_takes_curves_of_different_lengths(tmp_path):
    """A baseline (or the agent) liquidated before the period's end has a shorter equity curve; the plot
    draws each curve on its own length (it raised and failed every compare run of that fold)."""
    import numpy as np
    import pandas as pd

    from agents.task_trading import EvalReport

    metrics = {"total_return": 0.0, "sharpe": 0.0, "max_drawdown": 0.0, "fees": 0.0, "liquidations": 0}
    index = pd.date_range("2024-01-01", periods=11, freq="h", tz="UTC")
    report = EvalReport(
        metrics,
        {"buy_and_hold": dict(metrics)},
        np.zeros(10),
        np.linspace(1e4, 1.1e4, 11),
        baseline_equity={"buy_and_hold": np.linspace(1e4, 0.0, 6)},
        index=index,
    )
    report.plot(tmp_path / "equity.png")
    assert (tmp_path / "equity.png").stat().st_size > 0
