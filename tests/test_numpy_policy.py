"""``agents.numpy_policy.numpy_actor``: the deterministic action in numpy equals SB3's torch forward."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3 as sb3
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.policies import ActorCriticPolicy

from agents.numpy_policy import numpy_actor

TINY = {"net_arch": [8, 8]}


def _model(algo: str, env_id: str = "Pendulum-v1", **policy_kwargs):
    env = gym.make(env_id)
    return getattr(sb3, algo)("MlpPolicy", env, policy_kwargs={**TINY, **policy_kwargs}, seed=0, device="cpu")


def _torch_action(policy, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return policy._predict(torch.as_tensor(obs[None]), deterministic=True).numpy()


def _observations(env_id: str, n: int = 50) -> np.ndarray:
    space = gym.make(env_id).observation_space
    rng = np.random.default_rng(1)
    return (rng.standard_normal((n, *space.shape)) * 3).astype(np.float32)


@pytest.mark.parametrize(
    "algo,env_id,kwargs",
    [
        ("PPO", "Pendulum-v1", {}),
        ("A2C", "Pendulum-v1", {}),
        ("PPO", "Pendulum-v1", {"activation_fn": torch.nn.ReLU}),
        ("PPO", "CartPole-v1", {}),
        ("SAC", "Pendulum-v1", {}),
        ("TD3", "Pendulum-v1", {}),
    ],
)
def test_equals_torch_forward(algo, env_id, kwargs):
    model = _model(algo, env_id, **kwargs)
    act = numpy_actor(model.policy)
    assert act is not None
    for obs in _observations(env_id):
        want, got = _torch_action(model.policy, obs), act(obs)
        assert got.shape == want.shape and got.dtype == want.dtype
        if env_id == "CartPole-v1":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_follows_parameter_updates_without_rebuilding():
    """The numpy layers are views of the parameters: training and ``set_parameters`` show through."""
    model = _model("PPO")
    act = numpy_actor(model.policy)
    obs = _observations("Pendulum-v1", 1)[0]
    before = act(obs).copy()
    model.learn(128)  # optimizer steps update the parameters in place
    params = model.get_parameters()
    params["policy"] = {k: v * 1.5 for k, v in params["policy"].items()}
    model.set_parameters(params)  # load_state_dict copies in place too
    after = act(obs)
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after, _torch_action(model.policy, obs), rtol=1e-5, atol=1e-6)


def test_input_not_modified():
    model = _model("SAC")
    obs = _observations("Pendulum-v1", 1)[0]
    keep = obs.copy()
    numpy_actor(model.policy)(obs)
    np.testing.assert_array_equal(obs, keep)


class _Subclassed(ActorCriticPolicy):
    pass


class _DictObs(gym.ObservationWrapper):
    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Dict({"x": env.observation_space})

    def observation(self, observation):
        return {"x": observation}


@pytest.mark.parametrize(
    "make",
    [
        lambda: _model("PPO", activation_fn=torch.nn.ELU),  # an activation it does not know
        lambda: sb3.PPO("MlpPolicy", "Pendulum-v1", use_sde=True, device="cpu"),
        lambda: sb3.PPO(_Subclassed, "Pendulum-v1", device="cpu"),  # a subclass may override any step
        lambda: RecurrentPPO("MlpLstmPolicy", "Pendulum-v1", device="cpu"),
        lambda: sb3.PPO("MultiInputPolicy", _DictObs(gym.make("Pendulum-v1")), device="cpu"),
    ],
    ids=["elu", "gsde", "subclass", "recurrent", "dict-obs"],
)
def test_declines_what_it_does_not_cover(make):
    assert numpy_actor(make().policy) is None
