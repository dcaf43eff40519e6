"""Stress axes of train.py compare (--lr, --optimizer, --reward-scale, --markets): the grid of arms, what
each axis does to a run, per-arm reports, and the user errors.

Runs use ``test_compare.FakeRunner`` (milliseconds); the real training of an arm (Adam vs SGD) is in
``test_compare.test_ray_runs_real_training_identical_to_worker_processes``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import assert_user_error, run_cli
from test_compare import BASE, FOLDS, FakeEval, FakeRunner, _calls, _specs

from agents.compare import run_compare
from agents.compare_arms import (
    apply_arm,
    make_arms,
    parse_markets,
    parse_optimizers,
    parse_positive_floats,
)
from agents.compare_spec import Arm, expand_grid
from agents.errors import UserError

GBM = "synthetic:gbm:n_bars=600,seed=1"
GARCH = "synthetic:garch:n_bars=600,df=3"


def test_arms_cross_every_axis_and_set_the_config():
    arms = make_arms(
        lr=parse_positive_floats("3e-4,1e-3", option="--lr"),
        optimizer=parse_optimizers(["adam,sgd:momentum=0.9,nesterov=true"]),
        reward_scale=parse_positive_floats("1,100", option="--reward-scale"),
        market=parse_markets(f"{GBM},{GARCH};btcusdt-perp-1h-2025"),
    )
    assert len(arms) == 2 * 2 * 2 * 3 and len({a.slug for a in arms}) == len(arms)
    arm = arms[-1]
    assert dict(arm.values) == {
        "lr": 1e-3,
        "optimizer": "sgd:momentum=0.9,nesterov=true",
        "reward_scale": 100.0,
        "market": "btcusdt-perp-1h-2025",
    }
    assert arm.label == (
        "lr=0.001 optimizer=sgd:momentum=0.9,nesterov=true reward_scale=100.0 market=btcusdt-perp-1h-2025"
    )
    assert "/" not in arm.slug and ":" not in arm.slug and " " not in arm.slug
    cfg = apply_arm(BASE, arm)
    assert cfg["algo"]["hyperparams"] == {
        "learning_rate": 1e-3,
        "policy_kwargs": {"optimizer_class": "sgd", "optimizer_kwargs": {"momentum": 0.9, "nesterov": True}},
    }
    # The reward scale is a training-env multiplier; normalization, which would undo it, is off.
    assert cfg["algo"]["train_reward_scale"] == 100.0 and cfg["algo"]["normalize_reward"] is False
    assert cfg["data"]["data"] == "btcusdt-perp-1h-2025" and BASE["algo"] == {
        "algo": "ppo",
        "timesteps": 64,
        "seed": 0,
    }
    adam = apply_arm(BASE, arms[0])
    assert adam["algo"]["hyperparams"]["policy_kwargs"] == {"optimizer_class": "adam"}
    assert adam["data"]["data"] == GBM and adam["algo"]["normalize_reward"] is False  # scale 1: raw reward
    # The config of every job is a valid RunConfig and carries its arm; names are prefixed by the arm.
    from agents.config import RunConfig

    jobs = expand_grid(cfg, _specs("none,zclip"), [0, 1], FOLDS, arm)
    assert len(jobs) == 8 and all(j.name.startswith(arm.slug + "__") and j.arm == arm for j in jobs)
    rc = RunConfig.from_dict(jobs[0].config)
    assert rc.algo.train_reward_scale == 100.0 and not rc.algo.normalize_reward
    assert make_arms() == [Arm()] and apply_arm(BASE, Arm()) == BASE


def _fake_metric(config: dict) -> float:
    """A test Sharpe that depends on the arm (lr, optimizer) and the clipper, so arms differ."""
    hp = config["algo"].get("hyperparams", {})
    sgd = hp.get("policy_kwargs", {}).get("optimizer_class") == "sgd"
    clip_bonus = {"none": 0.0, "norm": 0.3 if sgd else -0.1}.get(config["clip"]["policy"], 0.05)
    seed, start = config["algo"]["seed"], config["data"]["test_range"][0]
    return 1000 * hp.get("learning_rate", 3e-4) + clip_bonus * (1 + seed) + start / 1000.0


@dataclass(frozen=True)
class ArmRunner(FakeRunner):
    def evaluate(self, run_dir: Path) -> FakeEval:
        ev = super().evaluate(run_dir)
        config = json.loads((Path(run_dir) / "config.json").read_text())
        return FakeEval({**ev.metrics, "sharpe": _fake_metric(config)}, ev.baselines, ev.positions, ev.equity)


def test_compare_over_arms_reports_within_each_arm(tmp_path):
    from agents.compare_report import paired_report

    out = tmp_path / "cmp"
    arms = make_arms(lr=[1e-3, 3e-3], optimizer=parse_optimizers("adam,sgd"))
    res = run_compare(
        BASE, _specs("none,norm,zclip"), 3, folds=FOLDS, out=out, workers=1, runner=ArmRunner(), log=None,
        arms=arms,
    )
    assert res.n_ran == 4 * 3 * 3 * 2 and res.n_failed == 0
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns[:5]) == ["run", "arm", "lr", "optimizer", "clip"]
    assert set(df["arm"]) == {a.label for a in arms} and set(df["optimizer"]) == {"adam", "sgd"}
    for r in df.itertuples():  # each run's stored config is its arm's
        cfg = json.loads((out / r.run / "config.json").read_text())
        assert cfg["algo"]["hyperparams"]["learning_rate"] == r.lr
        assert cfg["algo"]["hyperparams"]["policy_kwargs"]["optimizer_class"] == r.optimizer
    assert np.allclose(df["test_sharpe"], [_fake_metric(json.loads((out / r / "config.json").read_text()))
                                           for r in df["run"]])
    # Paired statistics: computed on each arm's runs alone (pairs: same seed, fold and arm; Holm per arm).
    assert list(res.paired["arm"].unique()) == [a.label for a in arms]
    for arm in arms:
        sub = df[df["arm"] == arm.label]
        want, deltas = paired_report(sub, ["none", "norm", "zclip"], metric="sharpe", reference="none")
        got = res.paired[res.paired["arm"] == arm.label].drop(columns="arm").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
        assert sub["delta_vs_reference"].to_numpy() == pytest.approx(deltas.to_numpy(), nan_ok=True)
        ref = sub[sub["clip"] == "none"].set_index(["seed", "fold"])["test_sharpe"]
        norm = sub[sub["clip"] == "norm"]
        cells = list(zip(norm["seed"], norm["fold"], strict=True))
        assert norm["delta_vs_reference"].to_numpy() == pytest.approx(
            norm["test_sharpe"].to_numpy() - ref.loc[cells].to_numpy()
        )
    norm_rows = res.paired[res.paired["clip"] == "norm"].set_index("arm")
    sgd, adam = norm_rows.loc["lr=0.001 optimizer=sgd"], norm_rows.loc["lr=0.001 optimizer=adam"]
    assert (sgd["wins"], adam["losses"]) == (6, 6)  # norm helps under SGD and hurts under Adam, by design
    assert len(res.summary) == 4 * (3 + 1) and list(res.summary.columns[:2]) == ["arm", "clip"]
    summary = (out / "summary.md").read_text()
    for arm in arms:
        assert f"## Arm `{arm.label}`" in summary
    assert "4 arm(s) over lr, optimizer" in summary and "same seed, same fold, same arm" in summary
    assert "## Arms" in summary and "plain torch SGD" in summary
    assert (out / "test_sharpe.png").stat().st_size > 1000 and (out / "test_sharpe_iqm.png").exists()


def test_arms_resume_and_a_single_arm_keeps_todays_layout(tmp_path):
    out = tmp_path / "cmp"
    kw = {"folds": FOLDS[:1], "out": out, "workers": 1, "runner": FakeRunner(), "log": None}
    res = run_compare(BASE, _specs("none,norm"), 1, arms=make_arms(lr=[1e-3]), **kw)
    df = pd.read_csv(out / "results.csv")
    assert set(df["arm"]) == {"lr=0.001"} and (df["lr"] == 1e-3).all()
    summary = (out / "summary.md").read_text()
    assert "## Arm " not in summary and "; arm `lr=0.001`" in summary
    assert "## Paired comparison with `none` on test Sharpe (same seed, same fold, same arm)" in summary
    assert "arm" in res.paired.columns
    # A second lr: the first arm's runs are found and skipped, only the new arm runs.
    res = run_compare(BASE, _specs("none,norm"), 1, arms=make_arms(lr=[1e-3, 3e-3]), **kw)
    assert (res.n_skipped, res.n_ran) == (2, 2)
    assert sorted(_calls(out)) == sorted(["lr=0.001__none__seed0__fold0", "lr=0.001__norm__seed0__fold0",
                                          "lr=0.003__none__seed0__fold0", "lr=0.003__norm__seed0__fold0"])
    # The same arm names with another base config are refused, naming the difference.
    other = {**BASE, "algo": {**BASE["algo"], "timesteps": 128}}
    with pytest.raises(UserError, match=r"algo\.timesteps: 64 before, 128 now"):
        run_compare(other, _specs("none,norm"), 1, arms=make_arms(lr=[1e-3]), **kw)


def test_markets_get_their_own_folds(tmp_path):
    out = tmp_path / "cmp"
    arms = make_arms(market=parse_markets(f"{GBM};synthetic:jump:n_bars=900,seed=2"))
    res = run_compare(BASE, _specs("none"), 1, folds=2, out=out, workers=1, runner=FakeRunner(), log=None,
                      arms=arms)
    df = res.results
    stops = df.groupby("market")["test_stop"].max().to_dict()
    assert stops == {GBM: 600, "synthetic:jump:n_bars=900,seed=2": 900}
    summary = (out / "summary.md").read_text()
    assert f"Market `{GBM}`" in summary and "data per arm" in summary


def _model(hyperparams: dict, algo: str = "ppo"):
    from agents.algos import build_model
    from agents.config import RunConfig
    from agents.env_factory import load_data, make_train_env

    small = {"n_steps": 32, "batch_size": 32} if algo == "ppo" else {"n_steps": 32}
    cfg = RunConfig.from_dict(
        {
            "algo": {"algo": algo, "n_envs": 1, "net_arch": [4], "hyperparams": {**small, **hyperparams}},
            "clip": {"policy": "norm", "value": "norm"},
            "data": {"data": "btcusdt-perp-1h-2025"},
            "env": {"window": 8, "episode_bars": 32},
        }
    )
    env = make_train_env(cfg, load_data("btcusdt-perp-1h-2025"))
    return build_model(cfg.algo, cfg.clip, env)


def test_sgd_arm_builds_an_sgd_optimizer_and_adam_keeps_sb3s_eps():
    import torch

    from agents import algos, compare_arms
    from agents.clip_hooks import ClippedStep

    assert compare_arms.OPTIMIZERS == algos.OPTIMIZERS
    sgd = apply_arm({"algo": {"hyperparams": {}}}, Arm((("optimizer", "sgd:momentum=0.9"),)))
    cm = _model(sgd["algo"]["hyperparams"])
    opt = cm.model.policy.optimizer
    assert type(opt) is torch.optim.SGD and isinstance(opt.step, ClippedStep)  # clipped SGD
    assert opt.param_groups[0]["momentum"] == 0.9 and "eps" not in opt.param_groups[0]
    plain = _model({"policy_kwargs": {"optimizer_class": "sgd"}}).model.policy.optimizer
    assert type(plain) is torch.optim.SGD and plain.param_groups[0]["momentum"] == 0
    # Adam with other optimizer kwargs keeps SB3's eps 1e-5 (PPO and A2C, whose own default is RMSprop).
    adam = _model({"policy_kwargs": {"optimizer_class": "adam", "optimizer_kwargs": {"weight_decay": 0.0}}})
    assert type(adam.model.policy.optimizer) is torch.optim.Adam
    assert adam.model.policy.optimizer.param_groups[0]["eps"] == 1e-5
    a2c = _model({"policy_kwargs": {"optimizer_class": "adam"}}, algo="a2c").model.policy.optimizer
    assert type(a2c) is torch.optim.Adam and a2c.param_groups[0]["eps"] == 1e-5
    with pytest.raises(UserError, match="optimizer_class 'lion' is not supported; use one of adam, sgd"):
        _model({"policy_kwargs": {"optimizer_class": "lion"}})


def test_reward_scale_multiplies_the_training_reward_only():
    """The training VecEnv's rewards are 100x those of a bare, identically seeded env; the bare env (what
    validation and test are built from: ``make_period_env`` takes the env section, never ``algo``) is raw."""
    from agents.config import RunConfig
    from agents.env_factory import load_data, make_env, make_train_env

    market = load_data("btcusdt-perp-1h-2025")
    actions = (0.5, -0.3, 0.8, 0.8, 0.0, -1.0)
    algo = {"n_envs": 1, "seed": 3, "train_reward_scale": 100.0, "normalize_reward": False,
            "train_cost_scale": 1.0}
    cfg = RunConfig.from_dict({"algo": algo, "data": {"data": "btcusdt-perp-1h-2025"},
                               "env": {"window": 8, "episode_bars": 32}})
    vec = make_train_env(cfg, market)
    vec.reset()
    scaled = [float(vec.step(np.array([[a]], dtype=np.float32))[1][0]) for a in actions]
    vec.close()
    bare = make_env(market, cfg.task_env)  # make_vec_env seeds env i with seed + i
    bare.reset(seed=3)
    raw = [float(bare.step(np.array([a], dtype=np.float32))[1]) for a in actions]
    assert np.abs(raw).max() > 0 and max(abs(r) for r in raw) < 0.1  # hourly-return-sized rewards
    # rel 1e-6: the VecEnv's reward buffer is float32.
    assert scaled == pytest.approx([100.0 * r for r in raw], rel=1e-6, abs=0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"lr": "1e-3,abc"}, "--lr: expected a comma list of positive numbers"),
        ({"lr": "0"}, "--lr"),
        ({"lr": "1e-3,0.001"}, "--lr: '0.001' is given twice"),
        ({"reward_scale": "-1"}, "--reward-scale"),
        ({"optimizer": "adam,rmsprop"}, "--optimizer: unknown optimizer 'rmsprop'"),
        ({"optimizer": "sgd:momentm=0.9"}, "--optimizer: invalid optimizer spec 'sgd:momentm=0.9'"),
        ({"optimizer": "sgd:lr=0.1"}, "give learning rates with --lr"),
        ({"markets": "synthetic:gbmm:n_bars=500"}, "--markets: unknown synthetic kind 'gbmm'"),
        ({"markets": f"{GBM};{GBM}"}, "--markets: 'synthetic:gbm:n_bars=600,seed=1' is given twice"),
    ],
)
def test_bad_axis_values_name_the_option(kwargs, needle):
    import argparse

    from agents.compare_arms import arms_from_args

    args = argparse.Namespace(lr=None, optimizer=None, reward_scale=None, markets=None)
    for key, value in kwargs.items():
        setattr(args, key, [value] if key in ("optimizer", "markets") else value)
    with pytest.raises(UserError) as exc:
        arms_from_args(args)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_axis_and_base_option_conflicts_are_refused():
    hp = {**BASE, "algo": {**BASE["algo"], "hyperparams": {"learning_rate": 1e-4}}}
    with pytest.raises(UserError, match="--lr and --hp learning_rate"):
        apply_arm(hp, Arm((("lr", 1e-3),)))
    with pytest.raises(UserError, match="--markets with --train-data"):
        apply_arm({**BASE, "data": {"data": "x", "train_data": GBM}}, Arm((("market", GBM),)))


def test_cli_bad_axis_is_a_one_line_error(tmp_path):
    proc = run_cli("compare", "--clips", "none", "--seeds", "1", "--optimizer", "adam,sgdd", cwd=tmp_path)
    assert_user_error(proc, "--optimizer", "sgdd", "adam, sgd")
    assert not (tmp_path / "runs").exists()
