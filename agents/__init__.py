"""perpclip agents: SB3 algorithms with separately clipped policy and value updates, runs, CLI.

The one package that knows stable-baselines3, the envs and the clippers together. Submodules are imported on
demand (``agents.config`` loads neither torch nor SB3):

* :mod:`agents.config` — ``RunConfig`` and its sections (YAML round-trip);
* :mod:`agents.run` — ``train(cfg, run_dir)`` / ``evaluate(run_dir)``;
* :mod:`agents.algos` — model construction, save/load with clipper state;
* :mod:`agents.clip_hooks` — the optimizer-step hook that clips each part and skips non-finite steps;
* :mod:`agents.callbacks` — ``clip/``, ``trade/`` and ``eval/`` logging;
* :mod:`agents.cli` — ``train.py``.
"""
