"""perpclip environments: USDT-margined perpetual futures trading and execution (numpy, pandas, gymnasium only).

Importing this package registers the Gymnasium ids (``gym.make("CryptoFutures-v0")``).
"""

from gymnasium.envs.registration import register

from envs.market import EMBEDDED, MarketData, load_embedded, load_funding_history

__all__ = ["EMBEDDED", "MarketData", "load_embedded", "load_funding_history"]

# Registration uses string entry points so importing `envs` stays cheap; each helper module adds its own id here.
register(id="CryptoFutures-v0", entry_point="envs.trading_env:CryptoFuturesEnv")
