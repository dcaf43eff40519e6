"""Stable-Baselines3 ``VecEnv`` over a batched gymnasium vector env (``envs.CryptoFuturesVecEnv``, and
``envs.CryptoFuturesExecutionVecEnv``).

SB3 steps N envs through its own ``VecEnv`` API (``step_async``/``step_wait``, a list of per-env info dicts,
``terminal_observation``); :class:`SB3VecEnvAdapter` gives it that API over a gymnasium ``VectorEnv`` that
autoresets in the same step (``AutoresetMode.SAME_STEP``), so that SB3 trains on the numpy-batched env without
SB3's per-env Python loop. ``VecMonitor``, ``VecNormalize`` and the other ``VecEnvWrapper`` s wrap it like any
``VecEnv``::

    from envs import CryptoFuturesVecEnv
    from agents.vec_adapter import SB3VecEnvAdapter
    venv = VecMonitor(SB3VecEnvAdapter(CryptoFuturesVecEnv(num_envs=64, window=16)))
    PPO("MlpPolicy", venv).learn(10_000)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

__all__ = ["SB3VecEnvAdapter"]


class SB3VecEnvAdapter(VecEnv):
    """SB3 ``VecEnv`` view of a SAME_STEP-autoresetting gymnasium ``VectorEnv`` with dict-of-arrays infos.

    Args:
        venv: the vector env (e.g. ``envs.CryptoFuturesVecEnv``); its ``metadata["autoreset_mode"]`` must be
            ``AutoresetMode.SAME_STEP`` (the finished episode's last observation is then in
            ``infos["final_obs"]``, which SB3 wants as ``terminal_observation``).
        info_keys: keys of the vector env's infos copied into every per-env info dict on every step (``None``:
            all array keys, gymnasium's ``_key`` masks excluded). Default ``()``: none, because building N
            dicts of scalars per step costs more than the batched step itself (at N = 1024 all 15 keys cut
            throughput about 4x); SB3 reads infos only on an episode's last step, where the finished
            episode's whole info (incl. ``episode_metrics``), ``terminal_observation`` and
            ``TimeLimit.truncated`` are always present.

    Per-env infos follow SB3's ``DummyVecEnv``: on a step that ends an episode, ``infos[i]`` is the finished
    episode's last info plus ``terminal_observation`` and ``TimeLimit.truncated`` (``truncated and not
    terminated``), the returned observation is the new episode's first and ``reset_infos[i]`` its info (the
    ``info_keys`` entries). Other steps carry only the ``info_keys`` entries (read ``TimeLimit.truncated``
    with ``info.get(..., False)``, as SB3 does).

    Seeding: ``seed(s)`` (SB3's convention, applied at the next ``reset``) seeds the vector env's
    ``np_random`` with ``s``, from which all episode starts are drawn; the vector env has one generator, so
    the per-env seeds ``s + i`` of SB3 collapse to ``s``. ``set_options({"start": starts})`` pins the next
    reset's starts (a list of per-env ``{"start": bar}`` dicts works as well).

    ``get_attr`` / ``set_attr`` / ``env_method`` act on the vector env itself (all sub-envs share one
    configuration): ``get_attr(name)`` returns its attribute once per requested index, ``set_attr`` is
    refused for a subset of the sub-envs, and ``env_method(name)`` calls the vector env's method, else the
    single-env method of its ``proto`` env (e.g. ``target_to_action``), once, and repeats the result.
    """

    def __init__(self, venv: gym.vector.VectorEnv, info_keys: Sequence[str] | None = ()) -> None:
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                "SB3VecEnvAdapter needs a vector env with metadata['autoreset_mode'] == "
                f"AutoresetMode.SAME_STEP, "
                f"got {mode!r}; build it with autoreset_mode=AutoresetMode.SAME_STEP (SyncVectorEnv) or use "
                "stable_baselines3's DummyVecEnv over single envs"
            )
        self.venv = venv
        self.info_keys = None if info_keys is None else tuple(info_keys)
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    # ------------------------------------------------------------------------------------------ stepping

    def _info_dicts(self, infos: dict[str, Any]) -> list[dict[str, Any]]:
        keys = self.info_keys
        if keys == ():
            return [{} for _ in range(self.num_envs)]
        if keys is None:
            keys = tuple(
                k
                for k, v in infos.items()
                if not k.startswith("_")
                and k not in ("final_obs", "final_info")
                and isinstance(v, np.ndarray)
                and v.shape[:1] == (self.num_envs,)
            )
        cols = [infos[k].tolist() for k in keys]
        return [dict(zip(keys, vals, strict=True)) for vals in zip(*cols, strict=True)]

    def reset(self) -> VecEnvObs:
        seed = self._seeds[0]
        options = self._merge_options()
        obs, infos = self.venv.reset(seed=seed, options=options)
        self.reset_infos = self._info_dicts(infos)
        self._reset_seeds()
        self._reset_options()
        return obs

    def _merge_options(self) -> dict[str, Any] | None:
        opts = self._options
        if not any(opts):
            return None
        first = opts[0]
        same = all(set(o) == set(first) and all(np.array_equal(o[k], first[k]) for k in o) for o in opts)
        if same and not ("start" in first and np.ndim(first["start"]) == 0):
            return dict(first)
        if all(set(o) == {"start"} and np.ndim(o["start"]) == 0 for o in opts):
            return {"start": np.array([int(o["start"]) for o in opts])}
        raise ValueError(
            "set_options: pass one dict for all sub-envs (e.g. {'start': array of num_envs bars}) or one "
            f"{{'start': bar}} dict per sub-env; got {opts!r}"
        )

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        dones = terminated | truncated
        out = self._info_dicts(infos)
        if dones.any():
            final_obs = infos["final_obs"]
            final_info = infos["final_info"]
            for i in np.flatnonzero(dones):
                self.reset_infos[i] = out[i]
                info = _row(final_info, i)
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                info["terminal_observation"] = final_obs[i]
                out[i] = info
        return obs, rewards.astype(np.float32, copy=False), dones, out

    def close(self) -> None:
        self.venv.close()

    # ------------------------------------------------------------------------------------ attributes

    def _n(self, indices: VecEnvIndices) -> int:
        return len(list(self._get_indices(indices)))

    def _lookup(self, name: str) -> Any:
        if hasattr(self.venv, name):
            return getattr(self.venv, name)
        proto = getattr(self.venv, "proto", None)
        if proto is not None and hasattr(proto, name):
            return getattr(proto, name)
        raise AttributeError(f"neither the vector env {self.venv!r} nor its single-env proto has {name!r}")

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = self._lookup(attr_name)
        return [value] * self._n(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if self._n(indices) != self.num_envs:
            raise ValueError(
                f"set_attr({attr_name!r}) on a subset of sub-envs: the batched env's sub-envs share one "
                "configuration; set it for all (indices=None)"
            )
        setattr(self.venv, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        result = self._lookup(method_name)(*method_args, **method_kwargs)
        return [result] * self._n(indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False] * self._n(indices)

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    def _get_indices(self, indices: VecEnvIndices) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, (int, np.integer)):
            return [int(indices)]
        return indices


def _row(arrays: dict[str, Any], i: int) -> dict[str, Any]:
    """Entry ``i`` of a gymnasium dict-of-arrays info (nested dicts included, ``_key`` masks dropped)."""
    out: dict[str, Any] = {}
    for k, v in arrays.items():
        if k.startswith("_"):
            continue
        out[k] = _row(v, i) if isinstance(v, dict) else v[i].item() if isinstance(v, np.ndarray) else v
    return out
