"""A numpy forward pass of an SB3 policy's deterministic action, for one observation at a time.

Validation and evaluation step one env through a whole period and ask the policy for one action per bar
(4,395 bars per pass over the default validation period, five passes per default run). For a batch of one,
torch's per-module dispatch costs far more than the arithmetic: a 163-64-64-1 MLP took ~75 us through
``nn.Sequential`` and ~150 us through ``policy._predict`` against ~10 us as four numpy calls. So for the
policies whose deterministic action is a plain MLP (the defaults of PPO, A2C, SAC and TD3 on a flat ``Box``
observation) the action is computed here, on numpy *views* of the torch parameters: they share memory, so
optimizer steps and ``set_parameters`` (both in place) are seen without copying. Anything else (gSDE,
recurrent, image or subclassed policies, other activations or layers, parameters on a GPU) returns None and
the caller keeps SB3's torch path.

The layers are SB3's (``ActorCriticPolicy.get_distribution`` then the distribution's mode; SAC's
``Actor.get_action_dist_params`` then ``tanh``; TD3's ``Actor.mu``); float32 throughout as in torch, so the
two agree to float32 rounding (a BLAS may sum in another order), which ``tests/test_numpy_policy.py`` checks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

__all__ = ["numpy_actor"]

Layer = Callable[[np.ndarray], np.ndarray]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


def _tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x, out=x)


_ACTIVATIONS: dict[type[nn.Module], Layer] = {nn.Tanh: _tanh, nn.ReLU: _relu}


def _linear(module: nn.Linear) -> Layer:
    # .numpy() of a CPU parameter is a view: in-place updates of the parameter show through.
    w_t = module.weight.detach().numpy().T
    b = None if module.bias is None else module.bias.detach().numpy()

    def layer(x: np.ndarray) -> np.ndarray:
        y = x @ w_t
        if b is not None:
            y += b
        return y

    return layer


def _layers(modules: list[nn.Module]) -> list[Layer] | None:
    out: list[Layer] = []
    for m in modules:
        if isinstance(m, nn.Sequential):
            inner = _layers(list(m))
            if inner is None:
                return None
            out.extend(inner)
        elif type(m) is nn.Linear:
            out.append(_linear(m))
        elif type(m) in _ACTIVATIONS:
            out.append(_ACTIVATIONS[type(m)])
        elif type(m) is nn.Identity or type(m) is nn.Flatten:
            continue  # a flat (1, n) input is already what they return
        else:
            return None
    return out


def _flat_features(policy: nn.Module, extractor: nn.Module) -> bool:
    from stable_baselines3.common.torch_layers import FlattenExtractor

    obs = policy.observation_space
    return type(extractor) is FlattenExtractor and isinstance(obs, spaces.Box) and len(obs.shape) == 1


def _actor_critic(policy: nn.Module) -> tuple[list[Layer], str] | None:
    from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution

    if getattr(policy, "use_sde", False) or not _flat_features(policy, policy.pi_features_extractor):
        return None
    dist = type(policy.action_dist)
    if dist is DiagGaussianDistribution:
        mode = "identity"  # the mode of a Gaussian is its mean
    elif dist is CategoricalDistribution:
        mode = "argmax"
    else:
        return None
    layers = _layers([policy.mlp_extractor.policy_net, policy.action_net])
    return None if layers is None else (layers, mode)


def _sac(policy: nn.Module) -> tuple[list[Layer], str] | None:
    actor = policy.actor
    if actor.use_sde or not _flat_features(policy, actor.features_extractor):
        return None
    layers = _layers([actor.latent_pi, actor.mu])
    return None if layers is None else (layers, "tanh")  # SquashedDiagGaussian's mode: tanh(mean)


def _td3(policy: nn.Module) -> tuple[list[Layer], str] | None:
    actor = policy.actor
    if not _flat_features(policy, actor.features_extractor):
        return None
    layers = _layers([actor.mu])  # ends in nn.Tanh already
    return None if layers is None else (layers, "identity")


def numpy_actor(policy: nn.Module) -> Callable[[np.ndarray], np.ndarray] | None:
    """The deterministic action of ``policy`` as a numpy function, or None where it does not apply.

    Args:
        policy: an SB3 policy (``model.policy``).

    Returns:
        ``f(obs) -> action``: ``obs`` a float32 array of the observation space's shape (already normalized
        if the run uses ``VecNormalize``); the action as ``policy._predict(obs[None], deterministic=True)``
        returns it: shape ``(1, *action_shape)``, float32 (int64 for ``Discrete``), before SB3's
        ``unscale_action``/clipping. None for policies it does not cover (see the module docstring).
    """
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.sac.policies import SACPolicy
    from stable_baselines3.td3.policies import TD3Policy

    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in policy.parameters()):
        return None
    # Exactly SB3's own classes ("MlpPolicy" of each algorithm): a subclass may override any step.
    kind = type(policy)
    found = (
        _actor_critic(policy)
        if kind is ActorCriticPolicy
        else _sac(policy)
        if kind is SACPolicy
        else _td3(policy)
        if kind is TD3Policy
        else None
    )
    if found is None:
        return None
    layers, mode = found
    shape = (1, *policy.observation_space.shape)

    def act(obs: np.ndarray) -> np.ndarray:
        x = np.array(obs, dtype=np.float32).reshape(shape)  # a copy: layers work in place
        for layer in layers:
            x = layer(x)
        if mode == "tanh":
            return np.tanh(x, out=x)
        if mode == "argmax":
            return np.argmax(x, axis=1)
        return x

    return act
