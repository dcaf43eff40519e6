"""CryptoFuturesVecEnv: step-for-step equality with N single envs, vector-env API checks, SB3 adapter."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from envs.contract import ExecutionConfig, MarginConfig
from envs.loaders import load_market
from envs.market import MarketData
from envs.trading_env import FRAME_HEIGHT, FRAME_WIDTH, INFO_KEYS, CryptoFuturesEnv
from envs.vec_env import CryptoFuturesVecEnv

# Spiky: frequent large jumps, so that 5x positions get liquidated (also through gaps) within a few hundred
# steps.
SPIKY = "synthetic:jump:n_bars=1500,seed=7,vol=0.9,jump_intensity=600,jump_std=0.09"
N = 12
EPISODE = 60
# Brackets (cap, mmr, maintenance amount[, max leverage]); with the 4th column, 5x may only reach 40,000 USDT.
TIERS = ((2_000.0, 0.004, 0.0), (20_000.0, 0.01, 12.0), (1e12, 0.05, 792.0))
TIERS_LEV = ((20_000.0, 0.004, 0.0, 125.0), (40_000.0, 0.01, 120.0, 10.0), (1e12, 0.05, 1_720.0, 4.0))


@pytest.fixture(scope="module")
def spiky():
    """The jump market with gaps added: synthetic bars are contiguous (open = previous close), real ones are
    not, and only a gap liquidates at the open, beyond the bankruptcy price (bad debt)."""
    df = load_market(SPIKY).to_frame()
    rng = np.random.default_rng(0)
    n = len(df)
    gap = np.exp(rng.normal(0.0, 0.002, n) + (rng.random(n) < 0.03) * rng.normal(0.0, 0.15, n))
    df["open"] = df["open"] * gap
    df["high"] = np.maximum(df["high"], df["open"])
    df["low"] = np.minimum(df["low"], df["open"])
    return MarketData.from_frame(df)


def _kwargs(market, action, fill_at, reward, tiers, impact=1.5):
    return dict(
        market=market,
        window=6,
        episode_bars=EPISODE,
        leverage=5.0,
        action=action,
        n_levels=5,
        reward=reward,
        execution=ExecutionConfig(
            taker_fee=0.0006,
            half_spread_bps=2.0 if impact < 10 else 2_500.0,
            impact_coef=impact,
            deadband=0.05,
            max_participation=0.0003,
            lot_size=0.001,
            min_qty=0.002,
            fill_at=fill_at,
        ),
        margin=MarginConfig(leverage=5.0, tiers=tiers, flat_rate_max_notional=None),
    )


def _actions(rng, action, steps):
    if action == "discrete":
        # Mostly extreme levels (full 5x long/short) with some flat and partial levels.
        return rng.choice([0, 0, 1, 2, 3, 4, 4], size=(steps, N))
    a = rng.uniform(-1.3, 1.3, size=(steps, N, 1)).astype(np.float32)
    a[rng.random((steps, N)) < 0.1] = 0.0
    return a


def _assert_close(x, y, what):
    np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9, err_msg=what)


@pytest.mark.parametrize(
    ("action", "fill_at", "reward", "tiers", "impact"),
    [
        ("continuous", "next_open", "log_return", None, 1.5),
        ("discrete", "next_open", "differential_sharpe", TIERS, 1.5),
        ("continuous", "next_close", "pnl", TIERS, 1.5),
        ("discrete", "next_close", "log_return", TIERS_LEV, 1.5),
        ("continuous", "next_open", "pnl", TIERS_LEV, 1.5),
        # Ruinous costs (25 % half-spread, huge impact): the margin trim still lets an order open, and closing
        # it costs more than the equity left, the bankruptcy path.
        ("continuous", "next_open", "log_return", None, 40.0),
        ("discrete", "next_close", "log_return", None, 40.0),
    ],
)
def test_vec_env_equals_single_envs_step_for_step(spiky, action, fill_at, reward, tiers, impact):
    kw = _kwargs(spiky, action, fill_at, reward, tiers, impact)
    vec = CryptoFuturesVecEnv(num_envs=N, **kw)
    singles = [CryptoFuturesEnv(**kw) for _ in range(N)]
    rng = np.random.default_rng(1)
    starts = rng.integers(vec.min_start, vec.max_start + 1, size=N)
    obs, infos = vec.reset(seed=3, options={"start": starts})
    for i, env in enumerate(singles):
        o, info = env.reset(options={"start": int(starts[i])})
        _assert_close(obs[i], o, f"reset obs env {i}")
        for k in INFO_KEYS:
            _assert_close(infos[k][i], info[k], f"reset info {k} env {i}")
    steps = 300
    acts = _actions(rng, action, steps)
    n_liq = n_trunc = n_bad_debt = n_partial = n_bankrupt = 0
    for s in range(steps):
        # Close accounts near their liquidation price (margin ratio, the last observation entry, above 0.4):
        # with ruinous costs the close lands beyond the bankruptcy price.
        step_acts = acts[s].copy()
        step_acts[obs[:, -1] > 0.4] = 0.0 if action == "continuous" else 2
        obs, rew, term, trunc, infos = vec.step(step_acts)
        assert obs.dtype == np.float32 and rew.dtype == np.float64
        assert term.dtype == bool and trunc.dtype == bool
        want_obs, want_rew, want_term, want_trunc = [], [], [], []
        want_info = {k: [] for k in INFO_KEYS}
        for i, env in enumerate(singles):
            a = step_acts[i] if action == "continuous" else int(step_acts[i])
            o, r, te, tr, info = env.step(a)
            want_rew.append(r)
            want_term.append(te)
            want_trunc.append(tr)
            if te or tr:
                where = f"step {s} env {i}"
                assert infos["_final_obs"][i] and infos["_final_info"][i], where
                _assert_close(infos["final_obs"][i], o, f"final obs {where}")
                fi = infos["final_info"]
                for k in INFO_KEYS:
                    _assert_close(fi[k][i], info[k], f"final info {k} {where}")
                for k, v in info["episode_metrics"].items():
                    _assert_close(fi["episode_metrics"][k][i], v, f"episode metric {k} {where}")
                n_liq += info["liquidated"]
                n_bankrupt += info["bankrupt"]
                n_trunc += tr
                n_bad_debt += info["bad_debt"] > 0
                # The vec env drew the next episode's start from its np_random; pin the single env to it.
                o, info = env.reset(options={"start": int(infos["bar_index"][i])})
            else:
                n_partial += info["unfilled_qty"] > 0
            want_obs.append(o)
            for k in INFO_KEYS:
                want_info[k].append(info[k])
        np.testing.assert_array_equal(term, want_term, err_msg=f"terminated, step {s}")
        np.testing.assert_array_equal(trunc, want_trunc, err_msg=f"truncated, step {s}")
        assert not np.any(term & trunc)
        np.testing.assert_array_equal(infos.get("_final_obs", False), term | trunc)
        _assert_close(rew, want_rew, f"reward, step {s}")
        _assert_close(obs, np.stack(want_obs), f"obs, step {s}")
        for k in INFO_KEYS:
            _assert_close(infos[k], np.asarray(want_info[k], dtype=float), f"info {k}, step {s}")
    # The comparison only means something if the rare paths ran: liquidations (some beyond the bankruptcy
    # price, on a gap: bad debt), truncations (so autoresets), partial fills (participation cap, margin trim),
    # and with ruinous costs bankruptcies on a close.
    if impact >= 10:
        assert n_bankrupt >= 3, n_bankrupt
    else:
        assert n_liq >= 3, n_liq
        assert n_bad_debt >= 1, n_bad_debt
        assert n_trunc >= N, n_trunc
    assert n_partial >= 50, n_partial


# ------------------------------------------------------------------------------------ vector-env API checks


def _small(**kw):
    return CryptoFuturesVecEnv(load_market("synthetic:gbm:n_bars=400,seed=1"), window=4, **kw)


@pytest.mark.parametrize("action", ["continuous", "discrete"])
def test_spaces_dtypes_and_return_types(action):
    vec = _small(num_envs=5, episode_bars=7, action=action)
    assert vec.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    assert (
        vec.single_observation_space
        == CryptoFuturesEnv(vec.market, window=4, episode_bars=7).observation_space
    )
    assert vec.observation_space.shape == (5, *vec.single_observation_space.shape)
    assert vec.observation_space.dtype == np.float32
    if action == "continuous":
        assert vec.action_space.shape == (5, 1) and vec.action_space.dtype == np.float32
    else:
        assert (
            isinstance(vec.action_space, gym.spaces.MultiDiscrete)
            and vec.action_space.nvec.tolist() == [3] * 5
        )
    obs, infos = vec.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs in vec.observation_space
    assert isinstance(infos, dict)
    for key in INFO_KEYS:
        assert infos[key].shape == (5,) and infos["_" + key].all(), key
    vec.action_space.seed(0)
    for _ in range(20):
        obs, rew, term, trunc, infos = vec.step(vec.action_space.sample())
        assert obs in vec.observation_space
        assert rew.shape == term.shape == trunc.shape == (5,)
        assert rew.dtype == np.float64 and term.dtype == bool and trunc.dtype == bool
        assert infos["bar_index"].dtype.kind == "i" and infos["equity"].dtype == np.float64
        np.testing.assert_array_equal(infos["equity"][~(term | trunc)] > 0, True)
    # The returned arrays are not reused by the next step.
    obs2 = vec.step(vec.action_space.sample())[0]
    assert not np.shares_memory(obs, obs2)


def test_seeding_determinism_and_starts_from_np_random():
    def run(seed):
        vec = _small(num_envs=6, episode_bars=5)
        obs, infos = vec.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = [obs, infos["bar_index"]]
        for _ in range(23):  # through four autoresets
            obs, rew, term, trunc, infos = vec.step(rng.uniform(-1, 1, (6, 1)).astype(np.float32))
            out += [obs, rew, infos["bar_index"]]
        return out

    a, b, c = run(42), run(42), run(43)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    starts = a[1]
    vec = _small(num_envs=6, episode_bars=5)
    assert ((starts >= vec.min_start) & (starts <= vec.max_start)).all()
    assert len(set(starts.tolist())) > 1  # drawn, not one start for all


def test_same_step_autoreset_reports_final_obs_and_info():
    vec = _small(num_envs=4, episode_bars=3)
    starts = np.array([vec.min_start, vec.min_start + 5, vec.min_start + 9, vec.max_start])
    vec.reset(seed=1, options={"start": starts})
    act = np.full((4, 1), 0.5, dtype=np.float32)
    for _ in range(2):
        _, _, term, trunc, infos = vec.step(act)
        assert not (term | trunc).any() and "final_obs" not in infos
    obs, rew, term, trunc, infos = vec.step(act)
    assert trunc.all() and not term.any()
    assert infos["_final_obs"].all() and infos["_final_info"].all()
    fi = infos["final_info"]
    np.testing.assert_array_equal(fi["bar_index"], starts + 3)
    assert (fi["position"] != 0).all() and (infos["position"] == 0).all()
    np.testing.assert_array_equal(infos["equity"], vec.initial_balance)
    np.testing.assert_array_equal(fi["episode_metrics"]["n_bars"], 4)  # 3 steps: 4 equity points
    # The returned observation is the new episode's first: equal to a fresh env reset at the drawn start.
    for i in range(4):
        single = CryptoFuturesEnv(vec.market, window=4, episode_bars=3)
        o, _ = single.reset(options={"start": int(infos["bar_index"][i])})
        np.testing.assert_array_equal(obs[i], o)
        assert infos["final_obs"][i].shape == o.shape
        assert not np.array_equal(infos["final_obs"][i][-3:], 0.0)  # the finished episode held a position


def test_gymnasium_make_vec_entry_point_and_vector_wrappers():
    vec = gym.make_vec(
        "CryptoFutures-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        market="synthetic:gbm:n_bars=400,seed=1",
        window=4,
        episode_bars=4,
    )
    assert isinstance(vec, CryptoFuturesVecEnv) and vec.num_envs == 3
    assert vec.spec is not None and vec.spec.id == "CryptoFutures-v0"
    stats = gym.wrappers.vector.RecordEpisodeStatistics(vec)
    stats.reset(seed=0)
    total = np.zeros(3)
    for _ in range(4):
        _, rew, term, trunc, infos = stats.step(np.zeros((3, 1), dtype=np.float32) + 0.3)
        total += rew
    assert trunc.all() and infos["_episode"].all()
    np.testing.assert_allclose(infos["episode"]["r"], total)
    np.testing.assert_array_equal(infos["episode"]["l"], 4)


def test_bad_arguments_and_actions_raise_value_errors():
    with pytest.raises(ValueError, match="num_envs"):
        _small(num_envs=0)
    with pytest.raises(ValueError, match="window"):
        CryptoFuturesVecEnv(load_market("synthetic:gbm:n_bars=400,seed=1"), num_envs=2, window=0)
    with pytest.raises(ValueError, match="render_mode"):
        _small(num_envs=2, render_mode="rgb_array")
    vec = _small(num_envs=3, episode_bars=5)
    with pytest.raises(RuntimeError, match="reset"):
        vec.step(np.zeros((3, 1), dtype=np.float32))
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros((2, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="finite.*sub-env 1"):
        vec.step(np.array([[0.0], [np.nan], [0.0]], dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        vec.step(np.array([[0.0], [0.0], [-np.inf]], dtype=np.float32))
    with pytest.raises(ValueError, match="outside the valid range"):
        vec.reset(options={"start": np.array([vec.min_start, vec.max_start + 1, vec.min_start])})
    with pytest.raises(ValueError, match="unknown reset option"):
        vec.reset(options={"begin": 3})
    disc = _small(num_envs=2, episode_bars=5, action="discrete")
    disc.reset(seed=0)
    with pytest.raises(ValueError, match="out of range"):
        disc.step(np.array([0, 3]))
    # Out-of-range continuous actions are clipped, as in the single env.
    vec.reset(seed=0, options={"start": np.full(3, vec.min_start)})
    _, _, _, _, big = vec.step(np.full((3, 1), 7.0, dtype=np.float32))
    vec.reset(seed=0, options={"start": np.full(3, vec.min_start)})
    _, _, _, _, one = vec.step(np.ones((3, 1), dtype=np.float32))
    np.testing.assert_array_equal(big["position"], one["position"])


def test_vec_env_warns_once_above_the_flat_rate_range():
    vec = _small(num_envs=2, episode_bars=5, leverage=10.0, initial_balance=100_000.0)
    vec.reset(seed=0)
    with pytest.warns(UserWarning, match="flat_rate_max_notional"):
        vec.step(np.ones((2, 1), dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vec.step(-np.ones((2, 1), dtype=np.float32))


def test_render_ansi_lines():
    vec = _small(num_envs=2, episode_bars=5, render_mode="ansi")
    vec.reset(seed=0)
    lines = vec.render()
    assert len(lines) == 2 and all("equity" in x for x in lines)


# ----------------------------------------------------------------- single env: rgb_array, SB3 make_vec_env


def test_single_env_rgb_array_frame():
    margin = MarginConfig(leverage=5.0, flat_rate_max_notional=None)
    env = CryptoFuturesEnv(
        load_market(SPIKY), window=4, episode_bars=40, margin=margin, render_mode="rgb_array"
    )
    env.reset(seed=4)  # an episode that ends in a liquidation
    first = env.render()
    assert first.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3) and first.dtype == np.uint8
    rng = np.random.default_rng(0)
    done = False
    while not done:
        _, _, term, trunc, _ = env.step(np.array([rng.choice([-1.0, 1.0])], dtype=np.float32))
        frame = env.render()
        done = term or trunc
    assert frame.shape == first.shape and frame.dtype == np.uint8
    assert not np.array_equal(frame, first)
    # Each of the three panels has its line drawn.
    third = FRAME_HEIGHT // 3
    for k in range(3):
        assert (frame[k * third + 6 : (k + 1) * third - 6].max(axis=2) > 60).any(axis=0).all()
    assert term  # the red border marks the liquidation
    red = np.array([230, 40, 40], dtype=np.uint8)
    assert (frame[0, 0] == red).all() and (frame[FRAME_HEIGHT // 2, -1] == red).all()
    assert not (first[0, 0] == red).all()


def test_sb3_make_vec_env_works_with_rgb_array_render():
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env(
        "CryptoFutures-v0",
        n_envs=2,
        seed=0,
        env_kwargs={"market": "synthetic:gbm:n_bars=400,seed=1", "window": 4, "episode_bars": 50},
    )
    obs = venv.reset()
    assert obs.shape == (2, 4 * 5 + 3)
    obs, rew, done, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
    assert rew.shape == (2,) and "equity" in infos[0]
    frame = venv.render(mode="rgb_array")
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
    venv.close()


# ------------------------------------------------------------------------------------------- SB3 adapter


def test_sb3_adapter_dones_terminal_observation_and_truncation_flags(spiky):
    from agents.vec_adapter import SB3VecEnvAdapter

    margin = MarginConfig(leverage=5.0, flat_rate_max_notional=None)
    vec = CryptoFuturesVecEnv(spiky, num_envs=6, window=4, episode_bars=8, margin=margin)
    venv = SB3VecEnvAdapter(vec, info_keys=None)
    venv.seed(3)
    obs = venv.reset()
    assert obs.shape == (6, vec.single_observation_space.shape[0])
    assert [r["bar_index"] for r in venv.reset_infos] == vec._t.tolist()
    rng = np.random.default_rng(0)
    seen_trunc = seen_term = False
    for _ in range(150):
        obs, rew, dones, infos = venv.step(rng.choice([-1.0, 1.0], size=(6, 1)).astype(np.float32))
        assert rew.dtype == np.float32 and dones.dtype == bool and len(infos) == 6
        for i in np.flatnonzero(dones):
            info = infos[i]
            term_obs = info["terminal_observation"]
            assert term_obs.shape == obs[i].shape and not np.array_equal(term_obs, obs[i])
            assert info["TimeLimit.truncated"] == (not info["liquidated"] and not info["bankrupt"])
            assert info["episode_metrics"]["n_bars"] >= 1
            # The info is the finished episode's; the returned obs and reset_infos are the next one's.
            assert venv.reset_infos[i]["equity"] == vec.initial_balance
            assert venv.reset_infos[i]["bar_index"] != info["bar_index"] or info["bar_index"] == 0
            seen_trunc |= info["TimeLimit.truncated"]
            seen_term |= not info["TimeLimit.truncated"]
        for i in np.flatnonzero(~dones):
            assert "terminal_observation" not in infos[i] and not infos[i].get("TimeLimit.truncated", False)
    assert seen_trunc and seen_term


def test_sb3_adapter_seed_options_attributes():
    from agents.vec_adapter import SB3VecEnvAdapter

    def first_obs(seed):
        venv = SB3VecEnvAdapter(_small(num_envs=4, episode_bars=5), info_keys=())
        venv.seed(seed)
        return venv.reset()

    np.testing.assert_array_equal(first_obs(7), first_obs(7))
    assert not np.array_equal(first_obs(7), first_obs(8))
    venv = SB3VecEnvAdapter(_small(num_envs=4, episode_bars=5), info_keys=("equity",))
    start = venv.venv.min_start + 3
    venv.set_options({"start": np.full(4, start)})
    venv.reset()
    assert [r["equity"] for r in venv.reset_infos] == [venv.venv.initial_balance] * 4
    assert set(venv.reset_infos[0]) == {"equity"}
    np.testing.assert_array_equal(venv.venv._t, start)
    venv.set_options([{"start": np.full(4, start + 1)} for _ in range(4)])  # equal dicts, distinct arrays
    venv.reset()
    np.testing.assert_array_equal(venv.venv._t, start + 1)
    venv.set_options([{"start": start + i} for i in range(4)])
    venv.reset()
    np.testing.assert_array_equal(venv.venv._t, start + np.arange(4))
    assert venv.get_attr("window") == [4] * 4 and venv.get_attr("render_mode", indices=[0, 2]) == [None, None]
    assert venv.env_method("target_to_action", 1.0, indices=1) == [np.array([1.0], dtype=np.float32)]
    assert venv.env_is_wrapped(gym.Wrapper) == [False] * 4
    with pytest.raises(ValueError, match="subset"):
        venv.set_attr("dsr_eta", 0.1, indices=[0])
    venv.set_attr("dsr_eta", 0.1)
    assert venv.get_attr("dsr_eta") == [0.1] * 4
    with pytest.raises(AttributeError):
        venv.get_attr("no_such_attribute")
    sync = gym.vector.SyncVectorEnv([lambda: CryptoFuturesEnv(venv.venv.market, window=4, episode_bars=5)])
    with pytest.raises(ValueError, match="SAME_STEP"):
        SB3VecEnvAdapter(sync)


def test_sb3_ppo_runs_on_the_adapter_under_vecmonitor_and_vecnormalize():
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from agents.vec_adapter import SB3VecEnvAdapter

    margin = MarginConfig(leverage=5.0, flat_rate_max_notional=None)
    vec = CryptoFuturesVecEnv(load_market(SPIKY), num_envs=8, window=4, episode_bars=16, margin=margin)
    venv = VecNormalize(VecMonitor(SB3VecEnvAdapter(vec)), gamma=0.9)
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=32,
        batch_size=64,
        n_epochs=1,
        gamma=0.9,
        policy_kwargs={"net_arch": [16]},
        seed=0,
        device="cpu",
    )
    model.learn(total_timesteps=512)
    assert model.num_timesteps >= 512
    assert len(model.ep_info_buffer) >= 8  # VecMonitor saw finished episodes
    assert all(np.isfinite(e["r"]) and e["l"] <= 16 for e in model.ep_info_buffer)
    assert venv.obs_rms.count > 256 and np.isfinite(venv.obs_rms.mean).all()
    obs = venv.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (8, 1)


def test_episodes_to_the_end_of_the_data_match_the_single_env():
    market = load_market("synthetic:garch:n_bars=300,seed=2")
    kw = dict(market=market, window=4, episode_bars=None, leverage=2.0)
    vec = CryptoFuturesVecEnv(num_envs=3, **kw)
    starts = np.array([vec.max_start - 40, vec.max_start - 10, vec.min_start])
    obs, _ = vec.reset(seed=0, options={"start": starts})
    singles = [CryptoFuturesEnv(**kw) for _ in range(3)]
    for env, s in zip(singles, starts, strict=True):
        env.reset(options={"start": int(s)})
    rng = np.random.default_rng(5)
    n_trunc = 0
    for _ in range(45):
        acts = rng.uniform(-1, 1, (3, 1)).astype(np.float32)
        obs, rew, term, trunc, infos = vec.step(acts)
        for i, env in enumerate(singles):
            o, r, te, tr, info = env.step(acts[i])
            assert (te, tr) == (term[i], trunc[i])
            _assert_close(rew[i], r, "reward")
            if te or tr:
                assert info["bar_index"] == vec.n_bars - 1 or te
                n_trunc += tr
                _assert_close(infos["final_obs"][i], o, "final obs")
                for k, v in info["episode_metrics"].items():
                    _assert_close(infos["final_info"]["episode_metrics"][k][i], v, k)
                # episode_bars=None: the next episode starts at the first decision bar again.
                assert infos["bar_index"][i] == vec.min_start
                o, info = env.reset()
            _assert_close(obs[i], o, "obs")
    assert n_trunc >= 2  # the two late starts ran into the end of the data


@pytest.mark.parametrize("fill_at", ["next_open", "next_close"])
def test_daily_bars_with_settlements_inside_the_bar_match_the_single_env(fill_at):
    # Daily bars hold three 8-hourly settlements: one at the open, two later inside the bar (on the position
    # held after the fill).
    market = load_market("synthetic:jump:n_bars=400,seed=3,bar_seconds=86400,jump_intensity=20")
    kw = dict(
        market=market,
        window=4,
        episode_bars=30,
        leverage=4.0,
        execution=ExecutionConfig(fill_at=fill_at, max_participation=None),
        margin=MarginConfig(leverage=4.0, flat_rate_max_notional=None),
    )
    vec = CryptoFuturesVecEnv(num_envs=5, **kw)
    assert vec._has_rate_in
    starts = np.arange(5) * 40 + vec.min_start
    vec.reset(seed=0, options={"start": starts})
    singles = [CryptoFuturesEnv(**kw) for _ in range(5)]
    for env, s in zip(singles, starts, strict=True):
        env.reset(options={"start": int(s)})
    rng = np.random.default_rng(1)
    for _ in range(70):
        acts = rng.uniform(-1.2, 1.2, (5, 1)).astype(np.float32)
        obs, rew, term, trunc, infos = vec.step(acts)
        for i, env in enumerate(singles):
            o, r, te, tr, info = env.step(acts[i])
            assert (te, tr) == (term[i], trunc[i])
            _assert_close(rew[i], r, "reward")
            if te or tr:
                o, info = env.reset(options={"start": int(infos["bar_index"][i])})
            _assert_close(obs[i], o, "obs")
            for k in INFO_KEYS:
                _assert_close(infos[k][i], info[k], k)
    assert (np.abs(infos["funding_paid"]) > 0).any()
