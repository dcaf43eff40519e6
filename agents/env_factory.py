"""Markets, time splits and envs for a run: training VecEnv, and whole-period envs for validation and test.

A period ``[start, stop)`` of bars is evaluated on ``market.slice(start - warmup, stop)`` with the first
decision pinned at ``start`` (``reset(options={"start": warmup})``): the bars before ``start`` feed the
features only, the agent never acts on (or is scored on) anything outside the period, and nothing after
``stop`` exists for the env.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from agents.config import DataConfig, EnvConfig, RunConfig
from agents.errors import UserError

__all__ = [
    "Period",
    "load_data",
    "make_env",
    "make_period_env",
    "make_train_env",
    "policy_act",
    "split_ranges",
]

VECNORMALIZE_FILE = "vecnormalize.pkl"


@dataclasses.dataclass(frozen=True)
class Period:
    """A split of a market, as bar indices ``[start, stop)`` of the full market."""

    name: str
    start: int
    stop: int


def load_data(spec: str, funding: str | None = None) -> Any:
    """``envs.loaders.load_market`` with its ValueErrors turned into one-line user errors."""
    from envs.loaders import load_market

    if funding is not None and not Path(funding).is_file():
        raise UserError(f"funding file {funding!r} does not exist")
    try:
        return load_market(spec, funding=funding)
    except FileNotFoundError as exc:
        raise UserError(f"data {spec!r}: file not found ({exc.filename or exc})") from None
    except ValueError as exc:
        raise UserError(f"data {spec!r}: {exc}") from None


def split_ranges(n_bars: int, data: DataConfig) -> dict[str, Period]:
    """Train/val/test periods: ``envs.splits.time_split`` fractions, overridden by explicit ranges."""
    from envs.splits import time_split

    try:
        ranges = dict(time_split(n_bars, val=data.val, test=data.test))
    except ValueError as exc:
        raise UserError(f"cannot split {n_bars} bars into train/val/test: {exc}") from None
    for name in ("train", "val", "test"):
        explicit = getattr(data, f"{name}_range")
        if explicit is not None:
            if explicit[1] > n_bars:
                raise UserError(
                    f"data.{name}_range {list(explicit)} goes past the end of the data ({n_bars} bars)"
                )
            ranges[name] = tuple(explicit)
    return {name: Period(name, int(a), int(b)) for name, (a, b) in ranges.items()}


def _env_kwargs(env_cfg: EnvConfig) -> dict[str, Any]:
    from envs.contract import ExecutionConfig, MarginConfig

    kw = env_cfg.env_kwargs()
    for key, cls in (("execution", ExecutionConfig), ("margin", MarginConfig)):
        if key in kw:
            try:
                kw[key] = cls(**kw[key])
            except TypeError as exc:
                names = ", ".join(f.name for f in dataclasses.fields(cls))
                raise UserError(f"env.{key}: {exc}; valid fields: {names}") from None
    return kw


def make_env(market: Any, env_cfg: EnvConfig, **overrides: Any) -> Any:
    """One ``CryptoFuturesEnv`` on ``market`` with the config's arguments (and ``overrides``)."""
    from envs.trading_env import CryptoFuturesEnv

    kw = {**_env_kwargs(env_cfg), **overrides}
    try:
        return CryptoFuturesEnv(market, **kw)
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot build the trading env: {exc}") from None


def warmup_bars(market: Any, env_cfg: EnvConfig) -> int:
    """Bars of history the env needs before its first decision (``env.min_start`` on this market)."""
    return int(make_env(market, env_cfg, episode_bars=None).min_start)


def make_period_env(market: Any, env_cfg: EnvConfig, period: Period) -> tuple[Any, int, Period]:
    """An env over ``period`` (plus warm-up bars before it), the local start bar to pass to reset, and the
    period actually traded.

    A period that starts before the warm-up is complete (the train split starts at bar 0) is traded from the
    first bar with a full history: the returned period says so.

    Raises:
        UserError: the period is too short to trade.
    """
    warm = warmup_bars(market, env_cfg)
    if period.start < warm:
        period = Period(period.name, warm, period.stop)
    if period.stop - period.start < 2:
        raise UserError(
            f"the {period.name} period [{period.start}, {period.stop}) is too short to trade "
            f"(the env needs {warm} bars of history before its first decision)"
        )
    env = make_env(market.slice(period.start - warm, period.stop), env_cfg, episode_bars=None)
    return env, warm, period


def make_train_env(cfg: RunConfig, market: Any, *, seed: int | None = None) -> VecEnv:
    """The training VecEnv: ``n_envs`` Monitor-wrapped envs on the training market, seeded ``seed + i``.

    Episodes start at random bars (drawn from each env's ``np_random``) and last ``env.episode_bars``.
    """
    seed = cfg.algo.seed if seed is None else seed
    # Build one env now so a bad env config fails here with a clear message rather than inside the VecEnv.
    probe = make_env(market, cfg.env)
    probe.close()

    def factory() -> Any:
        return make_env(market, cfg.env)

    vec = make_vec_env(factory, n_envs=cfg.algo.n_envs, seed=seed, vec_env_cls=FreshInfoVecEnv)
    if cfg.algo.normalize_obs or cfg.algo.normalize_reward:
        vec = VecNormalize(
            vec, norm_obs=cfg.algo.normalize_obs, norm_reward=cfg.algo.normalize_reward, gamma=_gamma(cfg)
        )
    return vec


class FreshInfoVecEnv(DummyVecEnv):
    """``DummyVecEnv`` that hands out the envs' info dicts without ``deepcopy``.

    SB3 deep-copies every info dict on every step to protect against envs that reuse one dict object.
    ``CryptoFuturesEnv`` builds a fresh dict per step (14 entries, plus ``episode_metrics`` at the end), so
    the copy only costs time: about 10 % of PPO's end-to-end training time with 4 envs. Everything else,
    including the ``TimeLimit.truncated`` and ``terminal_observation`` entries, is exactly DummyVecEnv's.
    """

    def step_wait(self) -> Any:
        for i in range(self.num_envs):
            obs, self.buf_rews[i], terminated, truncated, info = self.envs[i].step(self.actions[i])
            self.buf_dones[i] = terminated or truncated
            info["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[i]:
                info["terminal_observation"] = obs
                obs, self.reset_infos[i] = self.envs[i].reset()
            self.buf_infos[i] = info
            self._save_obs(i, obs)
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), list(self.buf_infos)


def _gamma(cfg: RunConfig) -> float:
    from agents.algos import resolve_hyperparams

    return float(resolve_hyperparams(cfg.algo, cfg.clip).get("gamma", 0.99))


def policy_act(
    model: Any, *, vecnormalize: VecNormalize | None = None, deterministic: bool = True
) -> Callable[[np.ndarray, dict], np.ndarray]:
    """An ``act(obs, info) -> action`` for ``envs.baselines.run_episode`` from an SB3 model.

    Recurrent policies carry their LSTM state between calls; a fresh ``act`` starts a fresh episode.
    Observations are normalized with the training statistics when the run used ``VecNormalize``.
    """
    state: Any = None
    episode_start = np.ones((1,), dtype=bool)

    def act(obs: np.ndarray, info: dict | None = None) -> np.ndarray:
        nonlocal state, episode_start
        if vecnormalize is not None:
            obs = vecnormalize.normalize_obs(obs)
        action, state = model.predict(
            obs, state=state, episode_start=episode_start, deterministic=deterministic
        )
        episode_start = np.zeros((1,), dtype=bool)
        return action

    return act
