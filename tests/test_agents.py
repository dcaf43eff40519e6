"""agents/: SB3 algorithms with separately clipped policy and value updates (tiny nets, few hundred steps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_util import make_vec_env

from agents.algos import build_model, load_model, resolve_hyperparams, save_model
from agents.clip_hooks import CLIPPER_ARCHIVE_NAME, read_clipper_state, split_actor_critic
from agents.config import (
    ALGO_NAMES,
    AlgoConfig,
    ClipConfig,
    RunConfig,
    load_config,
    parse_clip_spec,
    parse_kwargs,
    save_config,
)
from agents.errors import UserError
from envs.market import load_embedded
from envs.trading_env import CryptoFuturesEnv

CLIPPERS = ("none", "norm", "value", "autoclip", "zclip", "agc", "quantile")
#: The 999-bar embedded perpetual set: small and fast (the default market has 29k bars).
SMALL = "btcusdt-perp-1h-2025"

# Tiny settings per algorithm: every update path runs within ~100-200 env steps.
TINY_HP = {
    "ppo": {"n_steps": 32, "batch_size": 32, "n_epochs": 2},
    "a2c": {"n_steps": 8},
    "recurrent_ppo": {
        "n_steps": 32,
        "batch_size": 32,
        "n_epochs": 2,
        "policy_kwargs": {"lstm_hidden_size": 8},
    },
    "sac": {"learning_starts": 32, "batch_size": 32, "buffer_size": 1_000},
    "td3": {"learning_starts": 32, "batch_size": 32, "buffer_size": 1_000},
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny nets are fastest on one thread, and on a busy 2-core machine several threads spin-wait for each
    # other (10x slower). Restored afterwards: other test modules keep their setting.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def market():
    return load_embedded(SMALL)


def tiny_env(market, seed=0):
    return make_vec_env(lambda: CryptoFuturesEnv(market, window=4, episode_bars=48), n_envs=1, seed=seed)


def tiny_model(market, algo="ppo", clip="zclip", seed=0, clip_kwargs=None, **hp):
    algo_cfg = AlgoConfig(
        algo=algo, timesteps=128, n_envs=1, seed=seed, net_arch=[8], hyperparams={**TINY_HP[algo], **hp}
    )
    kw = dict(clip_kwargs or {})
    return build_model(algo_cfg, ClipConfig(clip, dict(kw), clip, dict(kw)), tiny_env(market, seed))


def params_of(model):
    return [p.detach().clone() for p in model.policy.parameters()]


def optimizers(cm):
    return [s.optimizer for s in cm.hooks.steps]


def set_grads(params, fill):
    """Give every parameter a gradient (fill: a function of the parameter)."""
    for p in params:
        p.grad = fill(p)


# ----------------------------------------------------------------------------------------------- splits


def test_explicit_fold_without_val_range_gets_no_validation_after_its_test_period():
    from agents.config import DataConfig
    from agents.env_factory import split_ranges

    # The look-ahead this guards against: the fraction split put validation at [699, 849), after the test.
    p = split_ranges(999, DataConfig(train_range=(0, 150), test_range=(150, 200)))
    assert (p["train"].start, p["train"].stop, p["test"].start, p["test"].stop) == (0, 150, 150, 200)
    assert (p["val"].start, p["val"].stop) == (150, 150)
    with pytest.raises(UserError, match=r"validation period \[150, 200\)|does not end before the test"):
        split_ranges(999, DataConfig(train_range=(0, 150), val_range=(150, 250), test_range=(200, 300)))
    with pytest.raises(UserError, match="does not end before the test period"):
        split_ranges(999, DataConfig(test_range=(100, 200)))  # fraction train [0, 699) overlaps it


@settings(max_examples=200, deadline=None)
@given(
    n_bars=st.integers(60, 3000),
    cuts=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    which=st.sampled_from(["train", "test", "both", "none"]),
    val_range=st.booleans(),
)
def test_validation_never_overlaps_or_follows_test(n_bars, cuts, which, val_range):
    from agents.config import DataConfig
    from agents.env_factory import split_ranges

    a, b, c, d = sorted(int(x * n_bars) for x in cuts)
    b, d = max(b, a + 1), max(d, c + 1)
    if d > n_bars or b > c:
        return
    kw = {}
    if which in ("train", "both"):
        kw["train_range"] = (a, b)
    if which in ("test", "both"):
        kw["test_range"] = (c, d)
    if val_range and which == "both" and b < c:
        kw["val_range"] = (b, c)
    try:
        p = split_ranges(n_bars, DataConfig(**kw))
    except UserError:
        # A valid fold never fails; one explicit range may collide with the other's fraction split.
        assert which in ("train", "test")
        return
    test, val, train = p["test"], p["val"], p["train"]
    assert train.stop <= test.start
    if val.stop > val.start:
        assert val.stop <= test.start and (val.start >= train.stop or val.stop <= train.start)
    if which != "none" and "val_range" not in kw:
        assert val.start == val.stop == train.stop


# ----------------------------------------------------------------------------------------------- config


def test_config_yaml_round_trip(tmp_path):
    cfg = RunConfig().replace(
        algo={"algo": "sac", "seed": 3, "net_arch": [16, 16], "hyperparams": {"learning_rate": 1e-4}},
        clip={"policy": "zclip", "policy_kwargs": {"z_thresh": 2.0}, "value": "autoclip"},
        data={"test_range": (900, 999)},
    )
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_config_unknown_keys_are_named():
    with pytest.raises(ValueError, match="'lr'.*section 'algo'"):
        RunConfig.from_dict({"algo": {"lr": 1}})
    with pytest.raises(ValueError, match="'clipping'"):
        RunConfig.from_dict({"clipping": {}})
    with pytest.raises(UserError, match="unknown algo 'ppp'.*Did you mean 'ppo'"):
        AlgoConfig(algo="ppp")
    with pytest.raises(UserError, match="cannot be mixed"):
        ClipConfig(policy="sb3", value="zclip")


def test_clip_spec_parsing_is_literal_never_eval():
    assert parse_clip_spec("zclip:z_thresh=2.0,alpha=0.9") == ("zclip", {"z_thresh": 2.0, "alpha": 0.9})
    assert parse_clip_spec("AutoClip") == ("autoclip", {})
    assert parse_kwargs("a=[1,2],b=true,c=none,d=1e-3,e=zscore") == {
        "a": [1, 2],
        "b": True,
        "c": None,
        "d": 1e-3,
        "e": "zscore",
    }
    # Python expressions stay strings: nothing is evaluated.
    assert parse_kwargs("x=__import__('os').getcwd()") == {"x": "__import__('os').getcwd()"}
    with pytest.raises(UserError, match="key=value"):
        parse_kwargs("alpha")


# --------------------------------------------------------------------------------------- partition


@pytest.mark.parametrize("algo", ["ppo", "a2c", "recurrent_ppo"])
def test_shared_optimizer_is_partitioned_into_actor_and_critic(market, algo):
    cm = tiny_model(market, algo)
    policy = cm.model.policy
    actor, critic = split_actor_critic(policy)
    ids_a, ids_c = {id(p) for p in actor}, {id(p) for p in critic}
    assert not ids_a & ids_c
    assert ids_a | ids_c == {id(p) for p in policy.parameters()}
    assert {id(p) for p in policy.value_net.parameters()} <= ids_c
    assert {id(p) for p in policy.action_net.parameters()} <= ids_a
    assert id(policy.log_std) in ids_a
    if algo == "recurrent_ppo":
        assert {id(p) for p in policy.lstm_critic.parameters()} <= ids_c
        assert {id(p) for p in policy.lstm_actor.parameters()} <= ids_a
    assert math.isinf(cm.model.max_grad_norm)  # SB3's joint clip is off: nothing is clipped twice


# ------------------------------------------------------------------------------------------ learning


@pytest.mark.parametrize("clipper", CLIPPERS)
def test_ppo_learns_with_each_clipper(market, clipper):
    cm = tiny_model(market, "ppo", clipper, clip_kwargs={"clip_value": 0.1} if clipper == "value" else None)
    before = params_of(cm.model)
    cm.model.learn(128)
    after = params_of(cm.model)
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    for part in ("policy", "value"):
        assert cm.hooks.parts[part].stats.steps == 8  # 4 rollouts x 2 epochs x 1 minibatch, each part clipped


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_each_algorithm_learns_through_both_clippers(market, algo):
    cm = tiny_model(market, algo, "autoclip")
    before = params_of(cm.model)
    cm.model.learn(160)
    assert any(not torch.equal(a, b) for a, b in zip(before, params_of(cm.model), strict=True))
    assert all(torch.isfinite(p).all() for p in params_of(cm.model))
    for part in ("policy", "value"):
        assert cm.hooks.parts[part].stats.steps > 0


def test_sb3_mode_uses_sb3s_own_clipping(market):
    cm = tiny_model(market, "ppo", "sb3")
    assert cm.hooks is None and cm.model.max_grad_norm == 0.5
    assert "step" not in vars(cm.model.policy.optimizer)


def test_clipper_with_finite_max_grad_norm_is_refused():
    with pytest.raises(UserError, match="max_grad_norm"):
        resolve_hyperparams(AlgoConfig(hyperparams={"max_grad_norm": 0.5}), ClipConfig())


def test_optimizer_kwargs_keep_sb3_adam_eps(market):
    cm = tiny_model(market, "ppo", policy_kwargs={"optimizer_kwargs": {"weight_decay": 0.0}})
    assert cm.model.policy.optimizer.param_groups[0]["eps"] == 1e-5


# ---------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_same_seed_gives_identical_runs(market, algo):
    runs = []
    for seed in (7, 7, 8):
        cm = tiny_model(market, algo, "zclip", seed=seed, clip_kwargs={"warmup_steps": 3})
        cm.model.learn(128)
        runs.append((params_of(cm.model), cm.hooks.state_dict()))
    (p1, s1), (p2, s2), (p3, _) = runs
    assert all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))
    assert s1 == s2
    assert any(not torch.equal(a, b) for a, b in zip(p1, p3, strict=True))


# ------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_save_load_continue_keeps_clipper_statistics(market, algo, tmp_path):
    clip_kwargs = {"warmup_steps": 3}
    cm = tiny_model(market, algo, "zclip", clip_kwargs=clip_kwargs)
    cm.model.learn(160)
    assert cm.hooks.parts["value"].clipper.initialized  # past warm-up: there are statistics to lose
    path = save_model(cm, tmp_path / "model.zip")
    algo_cfg = AlgoConfig(algo=algo, net_arch=[8], hyperparams=TINY_HP[algo])
    clip_cfg = ClipConfig("zclip", clip_kwargs, "zclip", clip_kwargs)
    loaded = load_model(algo_cfg, clip_cfg, path, env=tiny_env(market))
    assert loaded.hooks.state_dict() == cm.hooks.state_dict()
    assert "step" in vars(
        loaded.model.policy.optimizer
        if algo in ("ppo", "a2c", "recurrent_ppo")
        else loaded.model.actor.optimizer
    )  # hooks re-attached after load

    # The next step after loading clips exactly like the uninterrupted model's next step: same planted
    # gradients (a spike, so the statistics decide), same thresholds, same updated parameters.
    for cm_ in (cm, loaded):
        gen = torch.Generator().manual_seed(0)
        for part in ("policy", "value"):
            set_grads(cm_.hooks.parts[part].params, lambda p, g=gen: 1e3 * torch.randn(p.shape, generator=g))
        for opt in optimizers(cm_):
            opt.step()
    for part in ("policy", "value"):
        a, b = cm.hooks.parts[part].last, loaded.hooks.parts[part].last
        assert a == b and a.clipped and math.isfinite(a.threshold)
    assert all(torch.equal(a, b) for a, b in zip(params_of(cm.model), params_of(loaded.model), strict=True))


# --------------------------------------------------------------------------------- spikes and NaNs


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_planted_gradient_spike_is_clipped_and_the_update_bounded(market, algo):
    results = {}
    for clipper in ("zclip", "none"):
        cm = tiny_model(
            market, algo, clipper, clip_kwargs={"warmup_steps": 5} if clipper == "zclip" else None
        )
        part = cm.hooks.parts["policy"]
        opt = cm.hooks.steps[0].optimizer
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):  # ordinary steps: unit-scale gradients
            set_grads(part.params, lambda p, g=gen: torch.randn(p.shape, generator=g) / math.sqrt(p.numel()))
            opt.step()
        set_grads(part.params, lambda p, g=gen: 1e6 * torch.randn(p.shape, generator=g))  # the spike
        planted = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in part.params])).item()
        before = [opt.state[p]["exp_avg_sq"].clone() for p in part.params]
        opt.step()
        clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in part.params])).item()
        growth = max(
            float((opt.state[p]["exp_avg_sq"] - b).max()) for p, b in zip(part.params, before, strict=True)
        )
        results[clipper] = (part.last, planted, clipped, growth)
    stats, planted, clipped, growth = results["zclip"]
    assert stats.clipped and stats.grad_norm == pytest.approx(planted, rel=1e-5)
    assert clipped <= stats.threshold * (1 + 1e-5) and stats.threshold < 10.0  # bounded near the usual norms
    # Adam's second moment barely moves with the clip, and explodes without it.
    assert growth < 1.0 < 1e6 < results["none"][3]


@pytest.mark.parametrize("algo", ["ppo", "recurrent_ppo", "sac", "td3"])
def test_nonfinite_gradients_skip_the_step(market, algo):
    cm = tiny_model(market, algo, "norm", clip_kwargs={"max_norm": 1.0})
    cm.model.learn(96)  # optimizer state exists
    pol, val = cm.hooks.parts["policy"], cm.hooks.parts["value"]
    opts = optimizers(cm)
    state_of = {id(p): opt.state[p] for opt in opts for p in opt.state}

    def snapshot():
        return (
            [p.detach().clone() for p in pol.params],
            [p.detach().clone() for p in val.params],
            {k: int(v["step"]) for k, v in state_of.items()},
        )

    # NaN in the policy part only: the policy parameters and their Adam state stay, the value part steps.
    p0, v0, s0 = snapshot()
    set_grads(pol.params, lambda p: torch.full(p.shape, float("nan")))
    set_grads(val.params, lambda p: torch.ones(p.shape))
    for opt in opts:
        opt.step()
    p1, v1, s1 = snapshot()
    assert pol.last.nonfinite and not val.last.nonfinite
    assert all(torch.equal(a, b) for a, b in zip(p0, p1, strict=True))
    assert all(s1[id(p)] == s0[id(p)] for p in pol.params if id(p) in s0)
    assert any(not torch.equal(a, b) for a, b in zip(v0, v1, strict=True))
    assert all(s1[id(p)] == s0[id(p)] + 1 for p in val.params if id(p) in s0)
    # inf everywhere: nothing moves at all.
    set_grads(pol.params + val.params, lambda p: torch.full(p.shape, float("inf")))
    for opt in opts:
        opt.step()
    p2, v2, s2 = snapshot()
    assert all(torch.equal(a, b) for a, b in zip(p1 + v1, p2 + v2, strict=True)) and s2 == s1
    assert cm.hooks.nonfinite() == {"policy": 2, "value": 1}


def test_nan_during_training_is_skipped_and_training_goes_on(market):
    cm = tiny_model(market, "ppo", "zclip")
    calls = {"n": 0}

    def poison(grad):  # the 3rd backward pass through log_std gets a NaN gradient
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 3 else grad

    cm.model.policy.log_std.register_hook(poison)
    cm.model.learn(128)
    # SB3's disabled joint clip (clip_grad_norm_ with max_norm=inf) still multiplies every gradient by
    # min(inf / (norm + eps), 1), which is NaN when any gradient is: on one-optimizer algorithms a NaN in one
    # part reaches both, and the whole step is skipped.
    assert cm.hooks.nonfinite() == {"policy": 1, "value": 1}
    assert cm.hooks.parts["policy"].stats.steps == 8
    assert all(torch.isfinite(p).all() for p in cm.model.policy.parameters())


# ------------------------------------------------------------------------------------ train/evaluate


def tiny_config(**algo):
    return RunConfig().replace(
        algo={
            "algo": "ppo",
            "timesteps": 128,
            "n_envs": 2,
            "net_arch": [8],
            "hyperparams": {"n_steps": 32, "batch_size": 32, "n_epochs": 1},
            **algo,
        },
        clip={"policy": "zclip", "value": "autoclip"},
        env={"window": 4, "episode_bars": 48},
        eval={"eval_freq": 64},
        data={"data": SMALL},
    )


def test_train_writes_a_complete_run_folder_and_logs(tmp_path):
    from agents.run import train

    run = tmp_path / "run"
    res = train(tiny_config(), run, command="python train.py --test")
    assert res.timesteps == 128 and not res.diverged and not res.interrupted
    assert set(res.clip_fraction) == {"policy", "value"} and res.nonfinite == {"policy": 0, "value": 0}
    for name in (
        "config.yaml",
        "command.txt",
        "model.zip",
        "best_model.zip",
        "clipper_state.pt",
        "progress.csv",
        "train_result.json",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert load_config(run / "config.yaml").algo.hyperparams["gamma"] == 0.99  # resolved defaults recorded
    header = (run / "progress.csv").read_text().splitlines()[0].split(",")
    for key in (
        "clip/policy/grad_norm",
        "clip/policy/clip_fraction",
        "clip/policy/nonfinite",
        "clip/value/grad_norm",
        "clip/value/threshold",
        "clip/value/bound",  # autoclip (value): finite from the second update; zclip is still warming up
        "trade/sharpe",
        "trade/max_drawdown",
        "trade/turnover",
        "trade/fees",
        "trade/funding",
        "trade/liquidations",
        "trade/total_return",
        "eval/sharpe",
        "train/value_loss",
    ):
        assert key in header, key
    state = read_clipper_state(run / "model.zip")
    assert state == torch.load(run / "clipper_state.pt", weights_only=False)
    assert state["policy"]["name"] == "zclip" and state["value"]["name"] == "autoclip"
    assert json.loads((run / "train_result.json").read_text())["timesteps"] == 128
    with pytest.raises(UserError, match="already exists and is not empty"):
        train(tiny_config(), run)


def test_resume_continues_timesteps_and_clipper_statistics(tmp_path):
    from agents.run import train

    run = tmp_path / "run"
    train(tiny_config(), run, command="first")
    steps_before = read_clipper_state(run / "model.zip")["value"]["totals"]["steps"]
    res = train(tiny_config(timesteps=64), run, resume=True, command="second")
    assert res.timesteps == 192
    state = read_clipper_state(run / "model.zip")
    assert state["value"]["totals"]["steps"] > steps_before  # continued counting from the saved statistics
    assert (run / "command.txt").read_text().splitlines() == ["first", "second"]
    assert (run / "progress-resume1.csv").is_file()
    with pytest.raises(UserError, match="different configuration.*algo.seed"):
        train(tiny_config(seed=5), run, resume=True)


def test_ctrl_c_saves_the_model(tmp_path, monkeypatch):
    from agents import callbacks
    from agents.run import train

    def interrupt(self):
        if self.num_timesteps >= 64:
            raise KeyboardInterrupt
        return True

    monkeypatch.setattr(callbacks.TradeMetricsCallback, "_on_step", interrupt)
    res = train(tiny_config(timesteps=100_000), tmp_path / "run")
    assert res.interrupted and 64 <= res.timesteps < 100_000
    assert (tmp_path / "run" / "model.zip").is_file()


def test_divergence_is_detected_and_stops_training(tmp_path, monkeypatch):
    from agents import clip_hooks
    from agents.run import train

    original = clip_hooks.ClippedStep.__call__

    def always_nan(self, closure=None):
        for part in self.parts:
            set_grads(part.params, lambda p: torch.full(p.shape, float("nan")))
        return original(self, closure)

    monkeypatch.setattr(clip_hooks.ClippedStep, "__call__", always_nan)
    res = train(tiny_config(timesteps=5_000).replace(eval={"eval_freq": 0}), tmp_path / "run")
    assert res.diverged and "non-finite" in res.diverged_reason
    assert res.timesteps < 5_000  # stopped early
    assert res.nonfinite["policy"] >= 50


def test_evaluate_reports_agent_and_baselines_on_the_test_period(tmp_path):
    from agents.run import evaluate, format_table, train

    run = tmp_path / "run"
    train(tiny_config(), run)
    rep = evaluate(run)
    n = rep.period[1] - rep.period[0]
    assert rep.split == "test" and rep.period[1] == 999 and rep.period[0] == 999 - round(999 * 0.15)
    assert len(rep.equity) == n and len(rep.positions) == n - 1
    assert set(rep.baselines) == {"flat", "buy_and_hold", "trend"}
    assert rep.baselines["flat"]["total_return"] == 0.0
    assert rep.metrics["n_bars"] == n and rep.metrics["n_returns"] == n - 1
    saved = json.loads((run / "eval.json").read_text())
    assert saved["split"] == "test" and saved["agent"]["n_bars"] == n
    # The agent also ran over its training bars, for the memorisation check (warnings: a list, maybe empty).
    assert saved["agent_train"]["n_bars"] > n and isinstance(saved["warnings"], list)
    assert rep.metrics["sharpe_meaningful"] is False and "n/m" in format_table(rep)  # 150 bars < 30 days
    assert (run / "equity.png").stat().st_size > 1000
    table = format_table(rep)
    assert "Sharpe (ann.)" in table and "buy-and-hold" in table and "liquidations" in table
    # the best model and the validation split work too
    assert evaluate(run, split="val", model="best").split == "val"


def test_evaluate_rejects_bad_run_folders(tmp_path):
    from agents.run import evaluate, train

    with pytest.raises(UserError, match="does not exist"):
        evaluate(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run folder"):
        evaluate(tmp_path / "empty")
    run = tmp_path / "run"
    train(tiny_config(), run)
    with pytest.raises(UserError, match="unknown split"):
        evaluate(run, split="holdout")
    cfg = load_config(run / "config.yaml")
    save_config(cfg.replace(env={"window": 6}), run / "config.yaml")
    with pytest.raises(UserError, match=r"observations of shape \(23,\).*gives \(33,\)"):
        evaluate(run)
    Path(run / "model.zip").unlink()
    with pytest.raises(UserError, match="has no model.zip"):
        evaluate(run, model="final")
    Path(run / "best_model.zip").unlink()  # the default (auto) falls back to model.zip, which is gone too
    with pytest.raises(UserError, match="has no model.zip"):
        evaluate(run)


def test_clipper_state_member_is_not_a_pth_file():
    # SB3's loader tries to load every .pth member of the archive into the model.
    assert not CLIPPER_ARCHIVE_NAME.endswith(".pth")


def test_policy_act_is_deterministic(market):
    from agents.env_factory import policy_act

    cm = tiny_model(market, "recurrent_ppo")
    env = CryptoFuturesEnv(market, window=4, episode_bars=None)
    obs, info = env.reset(options={"start": 100})
    a1 = [policy_act(cm.model)(obs, info) for _ in range(2)]
    assert np.array_equal(a1[0], a1[1])


def test_train_on_another_market_and_normalized_observations(tmp_path):
    from agents.run import evaluate, train

    cfg = tiny_config(normalize_obs=True, normalize_reward=True).replace(
        data={"train_data": "synthetic:garch:n_bars=1500,seed=3"}
    )
    run = tmp_path / "run"
    res = train(cfg, run)
    assert res.timesteps == 128
    assert (run / "vecnormalize.pkl").is_file() and (run / "best_vecnormalize.pkl").is_file()
    rep = evaluate(run)  # on the real bars' test period, observations normalized with the saved statistics
    assert rep.period[1] == 999 and np.isfinite(rep.equity).all()


@pytest.mark.parametrize("algo", ["recurrent_ppo", "sac"])
def test_train_and_evaluate_other_algorithms_end_to_end(tmp_path, algo):
    from agents.run import evaluate, train

    cfg = tiny_config(algo=algo, hyperparams=TINY_HP[algo])
    res = train(cfg, tmp_path / "run")
    assert res.timesteps >= 128 and not res.diverged and res.best_eval is not None
    rep = evaluate(tmp_path / "run")
    assert np.isfinite(rep.equity).all() and set(rep.baselines) == {"flat", "buy_and_hold", "trend"}


# ------------------------------------------------------------------- clipping-study wiring (issue 14)


def test_zclip_skip_update_on_spike_freezes_statistics_but_keeps_updating(market, tmp_path):
    import pandas as pd
    from stable_baselines3.common.logger import configure

    from agents.callbacks import ClipLoggerCallback

    cm = tiny_model(market, "ppo", "zclip", clip_kwargs={"skip_update_on_spike": True, "warmup_steps": 5})
    pol = cm.hooks.parts["policy"]
    opt = optimizers(cm)[0]
    params = pol.params + cm.hooks.parts["value"].params
    for _ in range(20):  # calm level: statistics settle
        set_grads(params, lambda p: torch.full(p.shape, 1e-3))
        opt.step()
    assert pol.stats.frozen == 0
    moved = 0
    for _ in range(10):  # lasting level shift: every step is a spike, statistics stay frozen
        before = [p.detach().clone() for p in pol.params]
        set_grads(params, lambda p: torch.full(p.shape, 1.0))
        opt.step()
        assert pol.last.spike and pol.last.stats_frozen and not pol.last.skip
        moved += any(not torch.equal(a, b) for a, b in zip(before, pol.params, strict=True))
    assert moved == 10  # the clipped gradient is applied on every frozen step
    assert pol.stats.frozen == 10 and pol.stats.skipped == 0
    cm.model.set_logger(configure(str(tmp_path), ["csv"]))
    cb = ClipLoggerCallback(cm.hooks)
    cb.init_callback(cm.model)
    cb.on_training_end()
    row = pd.read_csv(tmp_path / "progress.csv").iloc[-1]
    assert row["clip/policy/frozen_fraction"] == pytest.approx(10 / 30)
    assert row["clip/policy/frozen_fraction"] > 0


def test_sac_entropy_coefficient_step_skips_nonfinite_gradients(market):
    cm = tiny_model(market, "sac", "zclip")
    guard = cm.hooks.guards["ent_coef"]
    log_ent = cm.model.log_ent_coef
    cm.model.learn(64)
    before = log_ent.detach().clone()
    log_ent.grad = torch.full_like(log_ent, float("nan"))
    cm.model.ent_coef_optimizer.step()
    assert torch.equal(log_ent.detach(), before) and guard.nonfinite == 1
    calls = {"n": 0}

    def poison(grad):  # the 3rd entropy-coefficient backward pass inside learn() gets a NaN gradient
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 3 else grad

    log_ent.register_hook(poison)
    cm.model.learn(64)
    assert calls["n"] > 3 and guard.nonfinite == 2
    assert torch.isfinite(log_ent).all()
    assert cm.hooks.guarded_nonfinite() == {"ent_coef": 2}
    assert cm.hooks.flush()["ent_coef"] == {"nonfinite": 2.0}


def test_last_update_clip_statistics_are_written(tmp_path):
    import pandas as pd

    from agents.run import train

    cfg = tiny_config().replace(eval={"eval_freq": 0})
    res = train(cfg, tmp_path / "run")
    df = pd.read_csv(tmp_path / "run" / "progress.csv")
    last = df.iloc[-1]
    # The row dumped at the end of training: the last (4th) update's statistics, tagged with the final step.
    assert last["time/total_timesteps"] == res.timesteps
    for key in ("clip/policy/grad_norm", "clip/value/grad_norm", "clip/policy/frozen_fraction"):
        assert np.isfinite(last[key]), key
    # Every update's statistics are logged: 128 steps / (2 envs x 32) = 2 updates, both flushed.
    assert df["clip/policy/grad_norm"].notna().sum() == 2


def test_clip_sb3_with_an_off_policy_algorithm_is_refused(tmp_path):
    from agents.run import train

    cfg = tiny_config(algo="sac", hyperparams=TINY_HP["sac"]).replace(clip={"policy": "sb3", "value": "sb3"})
    with pytest.raises(UserError, match=r"PPO/A2C/RecurrentPPO.*--clip none"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_clip_inf_from_the_command_line_is_float_inf(tmp_path):
    from agents.cli import build_parser
    from agents.compare_spec import parse_clips
    from agents.options import config_from_args

    args = build_parser().parse_args(["train", "--clip", "norm:max_norm=inf", "--algo", "ppo"])
    cfg = config_from_args(args)
    assert cfg.clip.policy_kwargs == {"max_norm": math.inf}
    assert cfg.clip.value_kwargs == {"max_norm": math.inf}
    (spec,) = parse_clips("norm:max_norm=inf")
    assert dict(spec.policy.kwargs)["max_norm"] == math.inf
    save_config(cfg, tmp_path / "config.yaml")  # and it survives the run's config.yaml
    assert load_config(tmp_path / "config.yaml").clip.policy_kwargs["max_norm"] == math.inf


def test_validation_keeps_the_untrained_policy_when_training_shows_no_edge():
    """Early stopping sees the step-0 policy: later checkpoints replace it only with a better score."""
    from stable_baselines3 import PPO

    from agents.callbacks import ValidationCallback

    scores = iter([0.0, -1.0, -0.5, 0.25])  # step 0, then after 32, 64, 96 steps
    best_at: list[int] = []
    model = PPO(
        "MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=32, n_epochs=1, policy_kwargs={"net_arch": [8]},
        seed=0, device="cpu",
    )
    cb = ValidationCallback(
        lambda: {"sharpe_lcb": next(scores)},
        eval_freq=32,
        n_envs=1,
        metric="sharpe_lcb",
        score=lambda _m, v: v,
        on_best=lambda _metrics: best_at.append(cb.num_timesteps),
    )
    model.learn(64, callback=cb)
    assert [step for step, _ in cb.history] == [0, 32, 64]
    assert best_at == [0] and cb.best == 0.0  # no checkpoint beat the untrained policy
    assert cb.evaluated_after_start
    model.learn(32, callback=cb, reset_num_timesteps=False)  # a resume: no second step-0 pass
    assert [step for step, _ in cb.history] == [0, 32, 64, 96] and best_at == [0, 96]


def test_evaluate_defaults_to_the_model_selected_on_validation(tmp_path):
    from agents.run import evaluate, train

    run = tmp_path / "run"
    res = train(tiny_config(), run)
    assert res.best_eval is not None and "sharpe_lcb" in res.best_eval
    cfg = load_config(run / "config.yaml")
    assert cfg.eval.metric == "sharpe_lcb"  # the trading task's default selection metric
    # Sharpe minus eval.lcb_z (2 by default) standard errors, 0 for a policy that never trades.
    from envs.metrics import sharpe_lower_bound

    assert cfg.eval.lcb_z == 2.0 and res.best_eval["sharpe_lcb_z"] == 2.0
    assert res.best_eval["sharpe_lcb"] == sharpe_lower_bound(res.best_eval, z=2.0)
    evaluate(run)
    assert json.loads((run / "eval.json").read_text())["model"] == "best_model.zip"
    evaluate(run, model="final")
    assert json.loads((run / "eval-test-final.json").read_text())["model"] == "model.zip"
    (run / "best_model.zip").unlink()  # a run without validation: the final model
    evaluate(run)
    assert json.loads((run / "eval.json").read_text())["model"] == "model.zip"


@pytest.mark.parametrize("algo", ["PPO", "SAC"])
def test_policy_act_equals_predict(algo):
    """The validation/evaluation fast path gives ``model.predict``'s actions (clip or unscale); deterministic
    ones go through numpy (``agents.numpy_policy``), equal to float32 rounding."""
    import stable_baselines3 as sb3
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from agents.env_factory import policy_act

    venv = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), norm_reward=False)
    venv.obs_rms.mean[:] = [0.5, -0.2, 1.0]
    venv.obs_rms.var[:] = [2.0, 0.5, 3.0]
    venv.training = False
    model = getattr(sb3, algo)("MlpPolicy", venv, policy_kwargs={"net_arch": [8]}, seed=0, device="cpu")
    rng = np.random.default_rng(0)
    for vecnorm in (None, venv):
        for deterministic in (True, False) if algo == "PPO" else (True,):
            act = policy_act(model, vecnormalize=vecnorm, deterministic=deterministic)
            act.reset()
            for _ in range(20):
                obs = (rng.standard_normal(3) * 5).astype(np.float32)
                x = vecnorm.normalize_obs(obs) if vecnorm is not None else obs
                if deterministic:
                    want, _ = model.predict(x, deterministic=True)
                    got = act(obs, {})
                    assert got.shape == want.shape == (1,) and got.dtype == want.dtype
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
                else:  # sampled: same bounds, same shape
                    got = act(obs, {})
                    assert got.shape == (1,) and -2.0 <= got[0] <= 2.0


@pytest.mark.parametrize("algo", ["sac", "td3", "ppo"])
def test_untrained_policy_starts_flat(market, algo):
    """``flat_init``: the untrained deterministic policy targets ~0 (inside the 0.2 no-trade band)."""
    env = tiny_env(market)
    obs = np.random.default_rng(0).standard_normal((64, *env.observation_space.shape)).astype(np.float32)
    hp = TINY_HP[algo]
    actions = {}
    for flat in (True, False):
        cfg = AlgoConfig(algo=algo, n_envs=1, net_arch=[8], hyperparams=hp, flat_init=flat)
        model = build_model(cfg, ClipConfig("none", {}, "none", {}), env).model
        actions[flat] = np.abs(model.predict(obs, deterministic=True)[0])
        if algo == "td3":  # the target actor starts as the (scaled) actor
            for a, b in zip(model.actor.parameters(), model.actor_target.parameters(), strict=True):
                assert torch.equal(a, b)
    assert actions[True].max() < 0.05
    if algo != "ppo":  # SB3's default actor init holds a position; PPO's action layer is small already
        assert actions[False].max() > 0.2


def test_trade_metrics_callback_records_the_market_stress_of_each_update():
    """|bar log return| per env between consecutive steps, never across an episode boundary."""
    from agents.callbacks import TradeMetricsCallback

    class Logger:
        def __init__(self):
            self.values = {}

        def record(self, key, value, exclude=None):
            self.values[key] = value

        def record_mean(self, key, value, exclude=None):
            self.values[key] = value

    cb = TradeMetricsCallback()
    log = Logger()
    cb.model = type("Model", (), {"logger": log})()  # BaseCallback.logger is the model's
    steps = [
        ([100.0, 50.0], [False, True]),  # env 1's episode ends: its next price starts a new one
        ([110.0, 80.0], [False, False]),
        ([99.0, 88.0], [False, False]),
    ]
    for prices, dones in steps:
        cb.locals = {"infos": [{"price": p} for p in prices], "dones": np.array(dones)}
        cb._on_step()
    cb._on_rollout_start()
    rets = [math.log(110 / 100), math.log(99 / 110), math.log(88 / 80)]  # not 50 -> 80
    assert log.values["train/batch_abs_return_max"] == pytest.approx(max(abs(r) for r in rets))
    assert log.values["train/batch_abs_return_mean"] == pytest.approx(np.mean(np.abs(rets)))
    log.values.clear()
    cb._on_rollout_start()  # nothing stepped since: nothing recorded
    assert log.values == {}
