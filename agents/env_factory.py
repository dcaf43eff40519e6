"""Markets, time splits and envs for a run: training VecEnv, and whole-period envs for validation and test.

The env of each task comes from its :class:`agents.task_spec.TaskSpec` (``agents.tasks``): the functions here
take the task's env config (``cfg.task_env``) and build the matching env, with no per-task branches.

A period ``[start, stop)`` of bars is evaluated on ``market.slice(start - warmup, stop)`` with the first
decision pinned at ``start`` (``reset(options={"start": warmup})``; execution episodes start at any arrival
bar from there to ``stop - 1 - horizon_bars``): the bars before ``start`` feed the features only, the agent
never acts on (or is scored on) anything outside the period, and nothing after ``stop`` exists for the env.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize

from agents.algos import resolve_n_envs
from agents.config import DataConfig, RunConfig
from agents.errors import UserError
from agents.task_spec import TaskSpec
from agents.tasks import TASKS

__all__ = [
    "Period",
    "RunData",
    "ScaledRewardVecEnv",
    "load_data",
    "make_env",
    "make_period_env",
    "make_train_env",
    "policy_act",
    "split_ranges",
    "warmup_bars",
]

VECNORMALIZE_FILE = "vecnormalize.pkl"


@dataclasses.dataclass(frozen=True)
class Period:
    """A split of a market, as bar indices ``[start, stop)`` of the full market."""

    name: str
    start: int
    stop: int


def load_data(spec: str, funding: str | list[str] | None = None, **options: Any) -> Any:
    """``envs.loaders.load_market`` with its ValueErrors turned into one-line user errors.

    ``options`` are passed through (``fill_gaps``, ``funding_tz``); None values are left out. This is where
    user data enters: the envs raise ``ValueError`` for bad files, and here it becomes a :class:`UserError`.
    """
    from envs.loaders import load_market, split_tz_suffix

    files = [funding] if isinstance(funding, str) else list(funding or [])
    for f in files:
        path, _ = split_tz_suffix(f)  # "web.csv@UTC+8": the file is web.csv
        if not Path(path).is_file():
            raise UserError(f"funding file {path!r} does not exist")
    kwargs = {k: v for k, v in options.items() if v is not None}
    if files:
        kwargs["funding"] = files[0] if len(files) == 1 else files
    try:
        return load_market(spec, **kwargs)
    except FileNotFoundError as exc:
        raise UserError(f"data {spec!r}: file not found ({exc.filename or exc})") from None
    except ValueError as exc:
        raise UserError(f"data {spec!r}: {exc}") from None


class RunData:
    """The markets and periods of a run: ``data`` (or another market for evaluation) split in time."""

    def __init__(self, cfg: RunConfig, data: str | None = None, funding: Any = None) -> None:
        self.cfg = cfg
        spec = data if data is not None else cfg.data.data
        #: the market's spec (``data`` or the run's): baselines that need the generator (the planted oracle).
        self.spec = spec
        if data is None:
            funding = cfg.data.funding
        opts = {"fill_gaps": cfg.data.fill_gaps or None, "funding_tz": cfg.data.funding_tz}
        self.market = load_data(spec, funding, **opts)
        self.periods = split_ranges(len(self.market), cfg.data)

    def train_market(self) -> Any:
        """The market the agent trains on: ``train_data`` whole, else the train period of ``data``."""
        if self.cfg.data.train_data is not None:
            return load_data(self.cfg.data.train_data)
        p = self.periods["train"]
        return self.market.slice(p.start, p.stop)


def split_ranges(n_bars: int, data: DataConfig) -> dict[str, Period]:
    """Train/val/test periods: ``envs.splits.time_split`` fractions, overridden by explicit ranges.

    With an explicit ``train_range`` or ``test_range`` (a walk-forward fold) and no ``val_range``, the
    validation period is empty, at the end of the train range: the fraction split's validation bars could
    lie inside or after the fold's test period, and the model selected on them would have seen the future.
    Give ``val_range`` explicitly to validate in such a fold.

    Raises:
        UserError: a range past the end of the data; periods that overlap; a validation period (or a
            train period) that does not end before the test period starts.
    """
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
    explicit_split = data.train_range is not None or data.test_range is not None
    if explicit_split and data.val_range is None:
        stop = ranges["train"][1]
        ranges["val"] = (stop, stop)
    test_start = ranges["test"][0]
    for name in ("train", "val"):
        a, b = ranges[name]
        if b > a and b > test_start:
            raise UserError(
                f"the {name} period [{a}, {b}) does not end before the test period "
                f"[{test_start}, {ranges['test'][1]}) starts: it would select or train the model on bars at "
                f"or after the test bars; set data.{name}_range (or data.test_range) so that it ends by bar "
                f"{test_start}"
            )
    (ta, tb), (va, vb) = ranges["train"], ranges["val"]
    if vb > va and va < tb and ta < vb:
        raise UserError(
            f"the validation period [{va}, {vb}) overlaps the train period [{ta}, {tb}); "
            "set data.val_range outside data.train_range"
        )
    return {name: Period(name, int(a), int(b)) for name, (a, b) in ranges.items()}


def task_of(env_cfg: Any) -> TaskSpec:
    """The task whose env config ``env_cfg`` is (by its class)."""
    for task in TASKS.values():
        if isinstance(env_cfg, task.config_cls):
            return task
    raise TypeError(f"no registered task is configured by a {type(env_cfg).__name__}")


def _env_kwargs(env_cfg: Any, section: str) -> dict[str, Any]:
    from envs.contract import ExecutionConfig, MarginConfig

    kw = env_cfg.env_kwargs()
    for key, cls in (("execution", ExecutionConfig), ("margin", MarginConfig)):
        if isinstance(kw.get(key), dict):
            try:
                kw[key] = cls(**kw[key])
            except (TypeError, ValueError) as exc:
                names = ", ".join(f.name for f in dataclasses.fields(cls))
                hint = f"; valid fields: {names}" if isinstance(exc, TypeError) else ""
                raise UserError(f"{section}.{key}: {exc}{hint}") from None
    return kw


def make_env(market: Any, env_cfg: Any, **overrides: Any) -> Any:
    """One env of the task ``env_cfg`` configures, on ``market``, with the config's arguments (and
    ``overrides``).

    Raises:
        UserError: the env rejects its arguments (the envs raise ValueError/TypeError for bad arguments; this
            is where a config's values enter the env, so the message becomes a user error here).
    """
    task = task_of(env_cfg)
    kw = {**_env_kwargs(env_cfg, task.section), **overrides}
    try:
        return task.make_env(market, **kw)
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot build the {task.name} env: {exc}") from None


def warmup_bars(market: Any, env_cfg: Any) -> int:
    """Bars of history the env needs before its first decision (``env.min_start`` on this market)."""
    return int(make_env(market, env_cfg, **task_of(env_cfg).whole_period).min_start)


def make_period_env(market: Any, env_cfg: Any, period: Period) -> tuple[Any, int, Period]:
    """An env over ``period`` (plus warm-up bars before it), the local start bar to pass to reset, and the
    period actually traded.

    A period that starts before the warm-up is complete (the train split starts at bar 0) is traded from the
    first bar with a full history: the returned period says so. For the execution task the local start is
    the first arrival bar (``env.min_start``); every episode's fills lie inside the period.

    Raises:
        UserError: the period is too short for the task (``TaskSpec.period_bars``).
    """
    task = task_of(env_cfg)
    warm = warmup_bars(market, env_cfg)
    if period.start < warm:
        period = Period(period.name, warm, period.stop)
    need, what = task.period_bars(env_cfg)
    if period.stop - period.start < need:
        raise UserError(
            f"the {period.name} period [{period.start}, {period.stop}) is too short {what} after "
            f"{warm} bars of history)"
        )
    env = make_env(market.slice(period.start - warm, period.stop), env_cfg, **task.whole_period)
    if int(env.min_start) != warm:  # the warm-up is a function of the config only; guard the slicing
        raise RuntimeError(f"warm-up changed with the data slice ({warm} -> {env.min_start})")
    return env, warm, period


def make_train_env(cfg: RunConfig, market: Any, *, seed: int | None = None) -> VecEnv:
    """The training VecEnv: ``n_envs`` envs on the training market, episodes counted by a monitor.

    With more than one env and a task that has a batched env (``TaskSpec.make_batched_env``: the trading
    task's ``envs.CryptoFuturesVecEnv``, the execution task's ``envs.CryptoFuturesExecutionVecEnv``), the envs
    step together in numpy behind ``agents.vec_adapter.SB3VecEnvAdapter`` + ``VecMonitor``, seeded ``seed``
    (one generator draws every episode start, and for execution every side and size); otherwise ``n_envs``
    Monitor-wrapped single envs in a ``DummyVecEnv``, seeded ``seed + i``. Trading episodes start at random
    bars and last ``env.episode_bars``; execution episodes draw arrival bar, side and size the same way. For
    the execution task the rewards (bp) are multiplied by ``exec_env.reward_scale`` after the monitor
    (``Monitor`` or ``VecMonitor``), so ``rollout/ep_rew_mean`` stays minus the mean shortfall in bp.
    """
    seed = cfg.algo.seed if seed is None else seed
    n_envs = resolve_n_envs(cfg.algo)
    env_cfg = cfg.task_env
    task = task_of(env_cfg)
    costs = _train_costs(env_cfg, task, cfg.algo.train_cost_scale)
    # Build one env now so a bad env config fails here with a clear message rather than inside the VecEnv.
    probe = make_env(market, env_cfg, **costs)
    probe.close()
    vec: VecEnv
    if task.make_batched_env is not None and n_envs > 1:
        from stable_baselines3.common.vec_env import VecMonitor

        from agents.vec_adapter import SB3VecEnvAdapter

        kw = {**_env_kwargs(env_cfg, task.section), **costs}
        try:
            batched = task.make_batched_env(market, n_envs, **kw)
        except (TypeError, ValueError) as exc:
            raise UserError(f"cannot build the {task.name} env: {exc}") from None
        adapter = SB3VecEnvAdapter(batched, info_keys=task.train_info_keys)
        adapter.seed(seed)
        vec = VecMonitor(adapter)
    else:

        def factory() -> Any:
            return make_env(market, env_cfg, **costs)

        vec = make_vec_env(factory, n_envs=n_envs, seed=seed, vec_env_cls=FreshInfoVecEnv)
    if cfg.spec.wrap_train_env is not None:
        vec = cfg.spec.wrap_train_env(vec, env_cfg)
    if cfg.algo.train_reward_scale != 1.0:
        # After the monitor (ep_rew_mean stays in real units), before VecNormalize: what the agent sees.
        vec = ScaledRewardVecEnv(vec, cfg.algo.train_reward_scale)
    if cfg.algo.normalize_obs or cfg.algo.normalize_reward:
        vec = VecNormalize(
            vec, norm_obs=cfg.algo.normalize_obs, norm_reward=cfg.algo.normalize_reward, gamma=_gamma(cfg)
        )
    return vec


def _train_costs(env_cfg: Any, task: TaskSpec, scale: float) -> dict[str, Any]:
    """``{"execution": ...}`` with fee rates and half-spread times ``scale`` (``AlgoConfig.train_cost_scale``)
    for the training envs of the trading task; nothing at scale 1 or for another task (the execution task's
    shortfall is measured against its real costs, which are what it learns to schedule around).
    """
    if scale == 1.0 or task.name != "trading":
        return {}
    from envs.contract import ExecutionConfig

    ex = _env_kwargs(env_cfg, task.section).get("execution") or ExecutionConfig()
    return {
        "execution": dataclasses.replace(
            ex,
            taker_fee=ex.taker_fee * scale,
            maker_fee=ex.maker_fee * scale,
            half_spread_bps=ex.half_spread_bps * scale,
        )
    }


class ScaledRewardVecEnv(VecEnvWrapper):
    """Multiplies the rewards by a constant (training only; the Monitor inside still sees raw rewards).

    Args:
        venv: the VecEnv.
        scale: the factor (> 0).
    """

    def __init__(self, venv: VecEnv, scale: float) -> None:
        super().__init__(venv)
        self.scale = float(scale)

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs, rewards * self.scale, dones, infos


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
    """An ``act(obs, info) -> action`` for ``envs.baselines.run_episode`` (and
    ``envs.execution_baselines.run_execution_episode``) from an SB3 model.

    Recurrent policies carry their LSTM state between calls; ``act.reset(env)`` (called by both episode
    runners after ``env.reset``) starts a fresh one, so one ``act`` can run many episodes.
    Observations are normalized with the training statistics when the run used ``VecNormalize``.
    """
    fast = _fast_act(model, vecnormalize, deterministic)
    if fast is not None:
        return fast
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

    def reset(env: Any = None) -> None:
        nonlocal state, episode_start
        state = None
        episode_start = np.ones((1,), dtype=bool)

    act.reset = reset  # type: ignore[attr-defined]
    return act


def _fast_act(
    model: Any, vecnormalize: VecNormalize | None, deterministic: bool
) -> Callable[[np.ndarray, dict], np.ndarray] | None:
    """``model.predict`` for one flat observation without its per-call checks and conversions, or None where
    that does not apply (recurrent policies, non-Box observations).

    A validation pass calls the policy once per bar (4,395 calls over the default validation period, five
    passes per default run); ``predict``'s input checks and tensor conversion took about 2/3 of each call.
    The arithmetic is ``BasePolicy.predict``'s: ``_predict`` under ``no_grad``, then ``unscale_action`` for
    squashed Box actions (SAC), clipping to the bounds otherwise; ``tests/test_agents.py`` checks the actions
    equal ``predict``'s. Deterministic actions of plain MLP policies skip torch altogether
    (``agents.numpy_policy.numpy_actor``: ~8x faster for one observation, equal to float32 rounding).
    """
    import torch
    from gymnasium import spaces

    from agents.numpy_policy import numpy_actor

    policy = model.policy
    if hasattr(policy, "lstm_actor") or not isinstance(policy.observation_space, spaces.Box):
        return None
    space = policy.action_space
    box = isinstance(space, spaces.Box)
    squash = box and bool(policy.squash_output)
    obs_shape = (1, *policy.observation_space.shape)
    act_shape = (-1, *space.shape)
    device = policy.device
    forward = numpy_actor(policy) if deterministic else None

    def act(obs: np.ndarray, info: dict | None = None) -> np.ndarray:
        if vecnormalize is not None:
            obs = vecnormalize.normalize_obs(obs)
        if forward is not None:
            actions = forward(obs).reshape(act_shape)
        else:
            with torch.no_grad():
                x = torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(obs_shape), device=device)
                actions = policy._predict(x, deterministic=deterministic).cpu().numpy().reshape(act_shape)
        if squash:
            actions = policy.unscale_action(actions)
        elif box:
            actions = np.clip(actions, space.low, space.high)
        return actions.squeeze(axis=0)

    def reset(env: Any = None) -> None:
        policy.set_training_mode(False)  # as predict does: dropout/batch-norm layers in eval mode

    act.reset = reset  # type: ignore[attr-defined]
    policy.set_training_mode(False)
    return act
