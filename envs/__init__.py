"""perpclip environments: USDT-margined perpetual-futures trading and execution (numpy/pandas/gymnasium).

Importing this package registers the Gymnasium ids ``CryptoFutures-v0`` (take positions) and
``CryptoFuturesExecution-v0`` (execute a parent order); ``gym.make`` with no arguments uses the embedded data.
"""

from gymnasium.envs.registration import register

from envs.contract import ExecutionConfig, MarginConfig
from envs.execution_env import CryptoFuturesExecutionEnv
from envs.execution_vec_env import CryptoFuturesExecutionVecEnv
from envs.features import FeatureConfig
from envs.loaders import load_funding, load_market
from envs.market import EMBEDDED, MarketData, load_embedded, load_funding_history
from envs.metrics import trade_metrics
from envs.splits import Fold, time_split, walk_forward
from envs.synthetic import SYNTHETIC_KINDS, make_market, planted_oracle_positions
from envs.trading_env import CryptoFuturesEnv
from envs.vec_env import CryptoFuturesVecEnv

__all__ = [
    "EMBEDDED",
    "SYNTHETIC_KINDS",
    "CryptoFuturesEnv",
    "CryptoFuturesExecutionEnv",
    "CryptoFuturesExecutionVecEnv",
    "CryptoFuturesVecEnv",
    "ExecutionConfig",
    "FeatureConfig",
    "Fold",
    "MarginConfig",
    "MarketData",
    "load_embedded",
    "load_funding",
    "load_funding_history",
    "load_market",
    "make_market",
    "planted_oracle_positions",
    "time_split",
    "trade_metrics",
    "walk_forward",
]

register(
    id="CryptoFutures-v0",
    entry_point="envs.trading_env:CryptoFuturesEnv",
    vector_entry_point="envs.vec_env:CryptoFuturesVecEnv",
)
register(
    id="CryptoFuturesExecution-v0",
    entry_point="envs.execution_env:CryptoFuturesExecutionEnv",
    vector_entry_point="envs.execution_vec_env:CryptoFuturesExecutionVecEnv",
)
