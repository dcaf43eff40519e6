"""CryptoFuturesExecutionVecEnv: step-for-step equality with N single execution envs, vector-env API checks,
gymnasium's ``make_vec``, the SB3 adapter and the training path."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers the ids)
from envs.contract import ExecutionConfig
from envs.execution_env import INFO_KEYS, SUMMARY_KEYS, CryptoFuturesExecutionEnv
from envs.execution_vec_env import CryptoFuturesExecutionVecEnv
from envs.loaders import load_market
from envs.market import MarketData

N = 12
LOT = 0.001
# A tight participation cap (2 % of the bar's volume) against orders of 1 % to 40 % of the daily volume over
# 6 bars: the cap binds on most large child orders and the deadline sweeps what is left.
CAPPED = ExecutionConfig(
    taker_fee=0.0005,
    half_spread_bps=1.0,
    impact_coef=1.5,
    max_participation=0.02,
    lot_size=LOT,
    min_qty=0.002,
)


def _with_empty_bars(spec: str, share: float, seed: int = 0) -> MarketData:
    """The synthetic market with ``share`` of its bars traded nothing (volume 0): a child order finds no
    liquidity there, and a forced order uses the profile's expected volume instead."""
    df = load_market(spec).to_frame()
    rng = np.random.default_rng(seed)
    df.loc[rng.random(len(df)) < share, "volume"] = 0.0
    return MarketData.from_frame(df)


@pytest.fixture(scope="module")
def hourly():
    return _with_empty_bars("synthetic:jump:n_bars=3000,seed=1", 0.08)


@pytest.fixture(scope="module")
def daily():
    # Daily bars: the three 8-hourly settlements fall inside each bar (two of them after its open).
    return load_market("synthetic:gbm:n_bars=400,seed=2,bar_seconds=86400")


def _replay(infos, i):
    """Reset options pinning a single env to sub-env ``i``'s episode (drawn by the vec env's np_random): the
    parent size as reported in ``info`` (lots x lot) reads back as the same lots."""
    return {
        "start": int(infos["bar_index"][i]),
        "side": int(infos["side"][i]),
        "quantity": float(infos["quantity"][i]),
    }


def _actions(rng, action, steps, n):
    if action == "discrete":
        return rng.choice([0, 0, 1, 2, 3, 4, 4, 4], size=(steps, n))
    a = rng.uniform(-1.2, 1.2, size=(steps, n, 1)).astype(np.float32)
    u = rng.random((steps, n))
    a[u < 0.25] = 1.0  # everything now: the participation cap binds
    a[(u >= 0.25) & (u < 0.4)] = -1.0  # wait
    return a


def _close(x, y, what):
    np.testing.assert_allclose(
        np.asarray(x, dtype=float), np.asarray(y, dtype=float), rtol=1e-9, atol=1e-9, err_msg=what
    )


CASES = [
    # action, impact_halflife, side, market, execution, size
    ("continuous", 2.0, "random", "hourly", CAPPED, {"quantity_adv": (0.01, 0.4)}),
    ("discrete", 3.0, "random", "hourly", CAPPED, {"quantity_adv": (0.01, 0.4)}),
    ("continuous", None, "sell", "hourly", CAPPED, {"quantity": (5.0, 3000.0)}),
    # No participation cap: child orders meet the empty bars themselves (the stand-in liquidity).
    ("continuous", 1.0, "buy", "hourly", ExecutionConfig(max_participation=None, lot_size=LOT), {}),
    ("discrete", 1.0, "random", "daily", CAPPED, {"quantity_adv": (0.001, 0.01)}),
]


@pytest.mark.parametrize(
    ("action", "halflife", "side", "market", "execution", "size"),
    CASES,
    ids=["continuous", "discrete", "sell-base-units-no-transient", "buy-no-cap", "daily-bars"],
)
def test_batched_env_equals_single_envs_step_for_step(
    request, action, halflife, side, market, execution, size
):
    mkt = request.getfixturevalue(market)
    kw = dict(
        market=mkt,
        horizon_bars=6,
        profile_days=2,
        window=5,
        side=side,
        action=action,
        n_levels=5,
        impact_halflife=halflife,
        execution=execution,
        **size,
    )
    vec = CryptoFuturesExecutionVecEnv(num_envs=N, **kw)
    singles = [CryptoFuturesExecutionEnv(**kw) for _ in range(N)]
    obs, infos = vec.reset(seed=5)
    for i, env in enumerate(singles):
        o, info = env.reset(options=_replay(infos, i))
        _close(obs[i], o, f"reset obs env {i}")
        for k, v in info.items():
            if k != "horizon":
                _close(infos[k][i], v, f"reset info {k} env {i}")
    steps = 240
    rng = np.random.default_rng(1)
    acts = _actions(rng, action, steps, N)
    n_done = n_capped = n_forced = n_empty = n_funding = 0
    sides = set()
    volume = mkt.volume
    for s in range(steps):
        remaining = [env.remaining for env in singles]
        obs, rew, term, trunc, infos = vec.step(acts[s])
        assert obs.dtype == np.float32 and rew.dtype == np.float64 and obs in vec.observation_space
        assert term.dtype == bool and trunc.dtype == bool and not trunc.any()
        want_obs, want_rew, want_term = [], [], []
        want_info = {k: [] for k in INFO_KEYS}
        for i, env in enumerate(singles):
            a = acts[s][i] if action == "continuous" else int(acts[s][i])
            o, r, te, tr, info = env.step(a)
            assert not tr
            want_rew.append(r)
            want_term.append(te)
            asked = remaining[i] * (float(a[0]) + 1) / 2 if action == "continuous" else 0.0
            n_capped += (not info["forced"]) and info["fill_qty"] < 0.9 * asked - 1.0
            n_forced += info["forced_qty"] > 0
            n_empty += info["fill_qty"] > 0 and volume[info["bar_index"]] == 0.0
            n_funding += info["funding_paid"] != 0.0
            sides.add(info["side"])
            if te:
                where = f"step {s} env {i}"
                assert infos["_final_obs"][i] and infos["_final_info"][i], where
                _close(infos["final_obs"][i], o, f"final obs {where}")
                fi = infos["final_info"]
                for k in INFO_KEYS:
                    _close(fi[k][i], info[k], f"final info {k} {where}")
                for k in SUMMARY_KEYS:
                    _close(fi["execution"][k][i], info["execution"][k], f"summary {k} {where}")
                n_done += 1
                o, info = env.reset(options=_replay(infos, i))
                info = {**dict.fromkeys(INFO_KEYS, 0.0), **info}  # the flows of a fresh episode are 0
            want_obs.append(o)
            for k in INFO_KEYS:
                want_info[k].append(info[k])
        np.testing.assert_array_equal(term, want_term, err_msg=f"terminated, step {s}")
        np.testing.assert_array_equal(infos.get("_final_obs", np.zeros(N, bool)), term)
        _close(rew, want_rew, f"reward, step {s}")
        _close(obs, np.stack(want_obs), f"obs, step {s}")
        for k in INFO_KEYS:
            _close(infos[k], want_info[k], f"info {k}, step {s}")
    # The comparison only means something if the rare paths ran: many autoresets, forced completions,
    # empty bars met by a fill (hourly market), funding paid, both sides.
    assert n_done >= 4 * N, n_done
    assert n_forced >= 10, n_forced
    assert n_funding >= 50, n_funding
    if market == "hourly":
        assert n_empty >= 3, n_empty
    if action == "continuous" and execution.max_participation is not None:
        assert n_capped >= 50, n_capped
    assert sides == ({1, -1} if side == "random" else {1 if side == "buy" else -1})


def test_info_keys_are_the_single_envs():
    """The batched env reports ``INFO_KEYS`` / ``SUMMARY_KEYS``: a key the single env grows must be added."""
    env = CryptoFuturesExecutionEnv(
        load_market("synthetic:gbm:n_bars=600,seed=3"), horizon_bars=2, profile_days=2
    )
    env.reset(seed=0)
    info = env.step(np.array([-1.0], dtype=np.float32))[4]
    assert tuple(info) == INFO_KEYS
    _, _, term, _, info = env.step(np.array([-1.0], dtype=np.float32))
    assert term and tuple(info) == (*INFO_KEYS, "execution") and tuple(info["execution"]) == SUMMARY_KEYS


# ------------------------------------------------------------------------------------------ invariants

_SMALL = load_market("synthetic:gbm:n_bars=600,seed=3")
_VEC = {
    mode: CryptoFuturesExecutionVecEnv(
        _SMALL,
        num_envs=4,
        horizon_bars=5,
        profile_days=2,
        window=4,
        action=mode,
        n_levels=5,
        impact_halflife=2.0,
        quantity_adv=(0.005, 0.3),
        execution=CAPPED,
    )
    for mode in ("continuous", "discrete")
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(["continuous", "discrete"]),
    seed=st.integers(0, 2**31 - 1),
    actions=st.lists(st.floats(-1.0, 1.0), min_size=4 * 12, max_size=4 * 12),
)
def test_rewards_of_each_episode_sum_to_minus_its_shortfall(mode, seed, actions):
    vec = _VEC[mode]
    obs, infos = vec.reset(seed=seed)
    assert obs in vec.observation_space
    total = np.zeros(4)
    a = np.array(actions, dtype=np.float32).reshape(12, 4)
    finished = 0
    for row in a:
        act = row[:, None] if mode == "continuous" else np.rint((row + 1) * 2).astype(np.int64)
        obs, rew, term, trunc, infos = vec.step(act)
        assert obs in vec.observation_space and not trunc.any()
        total += rew
        for i in np.flatnonzero(term):
            fi = infos["final_info"]
            assert fi["remaining"][i] == 0.0 and fi["executed"][i] == pytest.approx(fi["quantity"][i])
            assert 1 <= fi["step"][i] <= vec.horizon
            assert total[i] == pytest.approx(-fi["execution"]["shortfall_bps"][i], rel=1e-9, abs=1e-9)
            total[i] = 0.0
            finished += 1
        # Started episodes: nothing executed yet, all of it remains.
        fresh = term
        np.testing.assert_array_equal(infos["step"][fresh], 0)
        np.testing.assert_array_equal(infos["remaining"][fresh], infos["quantity"][fresh])
    assert finished >= 4  # every sub-env ended at least two episodes (horizon 5, 12 steps)


# ------------------------------------------------------------------------------------ vector-env API checks


def _small(**kw):
    kw = {"horizon_bars": 4, "profile_days": 2, "window": 4, **kw}
    return CryptoFuturesExecutionVecEnv(_SMALL, **kw)


@pytest.mark.parametrize("action", ["continuous", "discrete"])
def test_spaces_dtypes_and_return_types(action):
    vec = _small(num_envs=5, action=action)
    single = CryptoFuturesExecutionEnv(_SMALL, horizon_bars=4, profile_days=2, window=4, action=action)
    assert vec.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    assert vec.single_observation_space == single.observation_space
    assert vec.single_action_space == single.action_space
    assert vec.observation_space.shape == (5, *single.observation_space.shape)
    assert vec.observation_space.dtype == np.float32
    if action == "continuous":
        assert vec.action_space.shape == (5, 1) and vec.action_space.dtype == np.float32
    else:
        assert isinstance(vec.action_space, gym.spaces.MultiDiscrete)
        assert vec.action_space.nvec.tolist() == [11] * 5
    obs, infos = vec.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs in vec.observation_space
    for key in INFO_KEYS:
        assert infos[key].shape == (5,) and infos["_" + key].all(), key
    vec.action_space.seed(0)
    seen_final = False
    for _ in range(12):
        obs, rew, term, trunc, infos = vec.step(vec.action_space.sample())
        assert obs in vec.observation_space
        assert rew.shape == term.shape == trunc.shape == (5,)
        assert rew.dtype == np.float64 and term.dtype == bool and trunc.dtype == bool
        assert infos["bar_index"].dtype.kind == "i" and infos["forced"].dtype == bool
        assert infos["quantity"].dtype == np.float64
        if term.any():
            seen_final = True
            fi = infos["final_info"]
            assert set(SUMMARY_KEYS) <= set(fi["execution"]) and fi["_execution"].tolist() == term.tolist()
            assert all(infos["final_obs"][i] is None for i in np.flatnonzero(~term))
            for i in np.flatnonzero(term):
                assert infos["final_obs"][i] in vec.single_observation_space
                assert infos["final_obs"][i][0] == 0.0  # nothing remains
    assert seen_final
    obs2 = vec.step(vec.action_space.sample())[0]
    assert not np.shares_memory(obs, obs2)


def test_seeding_determinism_and_draws_from_np_random():
    def run(seed):
        vec = _small(num_envs=6, quantity=(10.0, 20.0))
        obs, infos = vec.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = [obs, infos["bar_index"], infos["side"], infos["quantity"]]
        for _ in range(13):  # through several autoresets
            obs, rew, term, trunc, infos = vec.step(rng.uniform(-1, 1, (6, 1)).astype(np.float32))
            out += [obs, rew, infos["bar_index"], infos["quantity"]]
        return out

    a, b, c = run(42), run(42), run(43)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    vec = _small(num_envs=6)
    starts, sides, qty = a[1], a[2], a[3]
    assert ((starts >= vec.min_start) & (starts <= vec.max_start)).all() and len(set(starts.tolist())) > 1
    assert set(sides.tolist()) <= {1, -1}
    assert ((qty >= 10.0 - LOT) & (qty <= 20.0)).all() and len(set(qty.tolist())) > 1


def test_reset_options_pin_the_first_episodes_as_the_single_env_does():
    vec = _small(num_envs=3, quantity_adv=(0.01, 0.02))
    start = np.array([vec.min_start, vec.min_start + 7, vec.max_start])
    opts = {"start": start, "side": ["buy", "sell", "buy"], "quantity_adv": 0.03}
    obs, infos = vec.reset(seed=1, options=opts)
    np.testing.assert_array_equal(infos["bar_index"], start)
    np.testing.assert_array_equal(infos["side"], [1, -1, 1])
    for i in range(3):
        single = CryptoFuturesExecutionEnv(_SMALL, horizon_bars=4, profile_days=2, window=4)
        o, info = single.reset(
            options={"start": int(start[i]), "side": opts["side"][i], "quantity_adv": 0.03}
        )
        np.testing.assert_array_equal(obs[i], o)
        assert infos["quantity"][i] == info["quantity"] and infos["arrival_price"][i] == info["arrival_price"]
    obs, infos = vec.reset(options={"start": vec.min_start + 3, "side": -1, "quantity": [1.0, 2.0, 3.5]})
    np.testing.assert_array_equal(infos["bar_index"], vec.min_start + 3)
    np.testing.assert_array_equal(infos["side"], -1)
    np.testing.assert_allclose(infos["quantity"], [1.0, 2.0, 3.5])
    # Later episodes draw: everything sent at once ends each episode on its first step.
    _, _, term, _, infos = vec.step(np.ones((3, 1), dtype=np.float32))
    assert term.all() and (infos["quantity"] != np.array([1.0, 2.0, 3.5])).all()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"begin": 3}, "unknown reset option"),
        ({"start": [200, 10_000, 200]}, r"options\['start'\]\[1\]=10000 is outside"),
        ({"start": [200.0, 201.0, 202.0]}, r"options\['start'\] must be int"),
        ({"start": [200, 201]}, r"options\['start'\] must be one value or an array of 3"),
        ({"side": ["buy", "hold", "sell"]}, r"options\['side'\]\[1\] must be 'buy' or 'sell'"),
        ({"side": 0}, r"options\['side'\]\[0\]"),
        ({"quantity": [1.0, -1.0, 1.0]}, r"options\['quantity'\]\[1\] must be a number > 0"),
        ({"quantity_adv": np.nan}, r"options\['quantity_adv'\]\[0\]"),
        ({"quantity": 1.0, "quantity_adv": 0.01}, "not both"),
        ({"quantity": [1.0, 0.0001, 1.0]}, r"options\['quantity'\]\[1\].*below the minimum order"),
    ],
)
def test_bad_reset_options_raise_value_error_naming_the_option(options, match):
    vec = _small(num_envs=3, execution=CAPPED)
    with pytest.raises(ValueError, match=match):
        vec.reset(seed=0, options=options)


def test_bad_arguments_and_actions_raise_value_errors():
    with pytest.raises(ValueError, match="num_envs"):
        _small(num_envs=0)
    with pytest.raises(ValueError, match="horizon_bars"):
        _small(num_envs=2, horizon_bars=0)
    with pytest.raises(ValueError, match="render_mode"):
        _small(num_envs=2, render_mode="human")
    vec = _small(num_envs=3)
    with pytest.raises(RuntimeError, match="reset"):
        vec.step(np.zeros((3, 1), dtype=np.float32))
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros((2, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="finite.*sub-env 1"):
        vec.step(np.array([[0.0], [np.nan], [0.0]], dtype=np.float32))
    disc = _small(num_envs=2, action="discrete", n_levels=3)
    disc.reset(seed=0)
    with pytest.raises(ValueError, match="action 3 of sub-env 1 is out of range"):
        disc.step(np.array([0, 3]))
    with pytest.raises(ValueError, match="int array"):
        disc.step(np.array([0.0, 1.0]))
    # Out-of-range continuous actions are clipped, as in the single env.
    start = {"start": vec.min_start, "side": "buy", "quantity": 1.0}
    vec.reset(seed=0, options=start)
    big = vec.step(np.full((3, 1), 7.0, dtype=np.float32))[4]
    vec.reset(seed=0, options=start)
    one = vec.step(np.ones((3, 1), dtype=np.float32))[4]
    np.testing.assert_array_equal(big["final_info"]["fill_qty"], one["final_info"]["fill_qty"])


def test_gymnasium_make_vec_entry_point_and_episode_statistics():
    vec = gym.make_vec(
        "CryptoFuturesExecution-v0",
        num_envs=4,
        vectorization_mode="vector_entry_point",
        market=_SMALL,
        horizon_bars=3,
        profile_days=2,
    )
    assert isinstance(vec, CryptoFuturesExecutionVecEnv) and vec.num_envs == 4
    assert vec.spec is not None and vec.spec.id == "CryptoFuturesExecution-v0"
    stats = gym.wrappers.vector.RecordEpisodeStatistics(vec)
    stats.reset(seed=0)
    total = np.zeros(4)
    for _ in range(3):  # waiting to the deadline: the third step is the forced completion
        _, rew, term, trunc, infos = stats.step(-np.ones((4, 1), dtype=np.float32))
        total += rew
    assert term.all() and not trunc.any() and infos["_episode"].all()
    np.testing.assert_allclose(infos["episode"]["r"], total)
    np.testing.assert_allclose(total, -infos["final_info"]["execution"]["shortfall_bps"], rtol=1e-9)
    np.testing.assert_array_equal(infos["episode"]["l"], 3)
    assert infos["final_info"]["forced"].all()


# ------------------------------------------------------------------------------------------- SB3 adapter


def test_sb3_adapter_infos_carry_the_execution_summary_and_terminal_observation():
    from agents.vec_adapter import SB3VecEnvAdapter

    vec = _small(num_envs=4)
    venv = SB3VecEnvAdapter(vec)
    venv.seed(3)
    obs = venv.reset()
    assert obs.shape == (4, vec.single_observation_space.shape[0])
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(12):
        obs, rew, dones, infos = venv.step(rng.uniform(-1, 1, (4, 1)).astype(np.float32))
        assert rew.dtype == np.float32 and dones.dtype == bool and len(infos) == 4
        for i in np.flatnonzero(dones):
            info = infos[i]
            assert info["TimeLimit.truncated"] is False and info["remaining"] == 0.0
            assert info["terminal_observation"].shape == obs[i].shape
            assert info["execution"]["shortfall_bps"] == pytest.approx(info["shortfall_bps"])
            assert info["execution"]["quantity"] == info["quantity"]
            ends += 1
        for i in np.flatnonzero(~dones):
            assert infos[i] == {}
    assert ends >= 8
    assert venv.get_attr("horizon") == [4] * 4
    assert venv.env_method("fraction_to_action", 1.0, indices=0) == [np.array([1.0], dtype=np.float32)]


def test_sb3_ppo_runs_on_the_adapter_under_vecmonitor():
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    from agents.callbacks import ExecutionMetricsCallback
    from agents.vec_adapter import SB3VecEnvAdapter

    venv = VecMonitor(SB3VecEnvAdapter(_small(num_envs=8)))
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=16,
        batch_size=64,
        n_epochs=1,
        gamma=1.0,
        policy_kwargs={"net_arch": [8]},
        seed=0,
        device="cpu",
    )
    seen = []

    class Spy(ExecutionMetricsCallback):
        def _on_step(self) -> bool:
            seen.extend(i["execution"]["shortfall_bps"] for i in self.locals["infos"] if "execution" in i)
            return super()._on_step()

    model.learn(total_timesteps=256, callback=Spy())
    assert model.num_timesteps >= 256
    assert len(model.ep_info_buffer) >= 32
    assert all(np.isfinite(e["r"]) and 1 <= e["l"] <= 4 for e in model.ep_info_buffer)
    # The task's metrics callback reads each finished episode's summary through the adapter.
    assert len(seen) >= 32 and np.isfinite(seen).all()
    assert [e["r"] for e in model.ep_info_buffer][-4:] == pytest.approx([-x for x in seen[-4:]], rel=1e-5)


def test_training_env_of_the_execution_task_is_batched_and_monitors_raw_bp():
    """``make_train_env`` with n_envs > 1: the batched env behind the adapter and a VecMonitor, the reward
    scale applied after the monitor (``rollout/ep_rew_mean`` stays minus the shortfall in bp)."""
    from stable_baselines3.common.vec_env import VecMonitor

    from agents.config import RunConfig
    from agents.env_factory import ScaledRewardVecEnv, make_train_env
    from agents.vec_adapter import SB3VecEnvAdapter

    cfg = RunConfig.from_dict(
        {
            "task": "execution",
            "algo": {"n_envs": 4, "seed": 0, "normalize_reward": False, "normalize_obs": False},
            "exec_env": {"horizon_bars": 3, "profile_days": 2, "window": 4, "reward_scale": 0.1},
        }
    )
    vec = make_train_env(cfg, _SMALL)
    assert isinstance(vec, ScaledRewardVecEnv) and isinstance(vec.venv, VecMonitor)
    adapter = vec.venv.venv
    assert isinstance(adapter, SB3VecEnvAdapter) and isinstance(adapter.venv, CryptoFuturesExecutionVecEnv)
    vec.reset()
    total = np.zeros(4)
    for _ in range(3):
        _, rew, dones, infos = vec.step(-np.ones((4, 1), dtype=np.float32))
        total += rew
    assert dones.all()
    for i, info in enumerate(infos):
        raw = -info["execution"]["shortfall_bps"]
        assert info["episode"]["r"] == pytest.approx(raw, rel=1e-5)  # the monitor sums raw bp (float32)
        assert total[i] == pytest.approx(0.1 * raw, rel=1e-5)  # the agent sees them scaled
