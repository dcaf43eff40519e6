"""perpclip agents: SB3 algorithms with separately clipped policy and value updates, runs, CLI.

The one package that knows stable-baselines3, the envs and the clippers together. Submodules are imported on
demand (``agents.config`` and ``agents.options`` load neither torch nor SB3). One responsibility each:

* :mod:`agents.errors` — ``UserError`` (what the CLI reports as one line) and ``did_you_mean``;
* :mod:`agents.config` — ``RunConfig`` and its sections, YAML in and out (scalars read by ``envs.spec``);
* :mod:`agents.options` — the run options of ``train`` and ``compare``, declared once, -> ``RunConfig``;
* :mod:`agents.tasks` — the task registry (``TASKS``, ``register_task``); :mod:`agents.task_spec` its
  shapes; :mod:`agents.task_trading` and :mod:`agents.task_execution` the two built-in tasks;
* :mod:`agents.algos` — the algorithm registry, model construction, save/load with clipper state;
* :mod:`agents.clip_hooks` — the optimizer-step hook that clips each part and skips non-finite steps;
* :mod:`agents.callbacks` — ``clip/``, per-task episode metrics and ``eval/`` logging;
* :mod:`agents.env_factory` — a run's markets, time splits and envs (training VecEnv, period envs);
* :mod:`agents.rundir` — the run folder's file names, atomic JSON;
* :mod:`agents.training` — ``train``; :mod:`agents.evaluation` — ``evaluate``; :mod:`agents.reporting`
  — the shared table and figure helpers; :mod:`agents.run` — those entry points in one import;
* :mod:`agents.compare` — the ``compare`` subcommand, orchestrating :mod:`agents.compare_spec` (the grid),
  :mod:`agents.compare_outcome` (one run and its divergence rules), :mod:`agents.compare_backends`
  (inline, processes, Ray), :mod:`agents.compare_store` (results, lock, resume) and
  :mod:`agents.compare_report` (tables, plot);
* :mod:`agents.tune` — the ``tune`` subcommand: nested walk-forward calibration of a clipper's keywords
  with Optuna on compare's backends and store; :mod:`agents.tune_space` its search-space grammar;
* :mod:`agents.cli` — ``train.py`` and the ``perpclip`` console script.
"""
