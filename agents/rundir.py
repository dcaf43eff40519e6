"""The run folder: every file name of a run, in one place, and how each is written.

============================  ==========================================================================
``config.yaml``               the resolved :class:`~agents.config.RunConfig` (hyperparameters filled in)
``command.txt``               the command line(s) that produced it (one line per train/resume)
``model.zip``                 the final SB3 model; the clipper state is inside (``perpclip_clippers.pt``)
``clipper_state.pt``          the same clipper state as a separate file, for inspection
``best_model.zip``            the model with the best validation metric (``eval.metric``; the untrained policy
                              is a candidate too), with its clippers: what ``evaluate`` uses by default
``vecnormalize.pkl``          observation/reward normalization statistics (only with ``normalize_*``)
``tb/``                       TensorBoard events: ``train/ rollout/ clip/ trade/ (or exec/) eval/ time/``
``progress.csv``              the same scalars as CSV (``progress-resume<N>.csv`` after a resume)
``train_result.json``         ``TrainResult`` of the last train/resume
``eval.json``, ``<plot>.png`` ``evaluate`` of the default model (``best_model.zip`` if there is one, else
                              ``model.zip``) on the test split (``equity.png`` for
                              trading, ``shortfall.png`` for execution); other splits/models get
                              ``eval-<split>-<model>.json`` and ``<plot>-<split>-<model>.png``
============================  ==========================================================================

JSON files are written atomically (a temporary file, then a rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from agents.errors import UserError

__all__ = ["RunDir", "jsonable", "write_json_atomic"]


def jsonable(x: Any) -> Any:
    """Plain JSON data: numpy scalars to Python, tuples to lists, non-finite floats to strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else str(x)  # JSON has no inf/nan
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    return x


def write_json_atomic(path: Path, obj: Any, *, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=indent) + "\n")
    os.replace(tmp, path)


def command_line() -> str:
    """The command line of this process, as the user would type it."""
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    return shlex.join(["python", *argv]) if argv[0].endswith(".py") else shlex.join(argv)


class RunDir:
    """One run folder: the paths of its files and the checks before a run writes into it."""

    CONFIG = "config.yaml"
    COMMAND = "command.txt"
    MODEL = "model.zip"
    BEST_MODEL = "best_model.zip"
    CLIPPERS = "clipper_state.pt"
    VECNORM = "vecnormalize.pkl"
    BEST_VECNORM = "best_vecnormalize.pkl"
    TRAIN_RESULT = "train_result.json"
    TB = "tb"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    def model(self, which: str = "final") -> Path:
        """``model.zip`` (``final``) or ``best_model.zip`` (``best``)."""
        return self.path / (self.MODEL if which == "final" else self.BEST_MODEL)

    def vecnormalize(self, which: str = "final") -> Path:
        return self.path / (self.VECNORM if which == "final" else self.BEST_VECNORM)

    @property
    def train_result(self) -> Path:
        return self.path / self.TRAIN_RESULT

    @property
    def tb(self) -> Path:
        return self.path / self.TB

    def resolve_model(self, model: str = "auto") -> str:
        """``auto`` -> ``best`` where training kept a model selected on validation (early stopping), else
        ``final``; ``final`` and ``best`` unchanged."""
        if model == "auto":
            return "best" if self.model("best").is_file() else "final"
        return model

    def eval_json(self, split: str = "test", model: str = "auto") -> Path:
        """``eval.json`` for the default model (``auto``) on the test split, else
        ``eval-<split>-<model>.json``."""
        return self.path / (
            "eval.json" if (split, model) == ("test", "auto") else f"eval-{split}-{model}.json"
        )

    def plot(self, stem: str, split: str = "test", model: str = "auto") -> Path:
        """``<stem>.png`` for the default model (``auto``) on the test split, else
        ``<stem>-<split>-<model>.png``."""
        return self.path / (
            f"{stem}.png" if (split, model) == ("test", "auto") else f"{stem}-{split}-{model}.png"
        )

    def next_progress_csv(self, resume: bool) -> Path:
        """``progress.csv``, or the first free ``progress-resume<N>.csv`` when resuming."""
        csv = self.path / "progress.csv"
        n = 1
        while resume and csv.exists():
            csv = self.path / f"progress-resume{n}.csv"
            n += 1
        return csv

    def check(self, resume: bool) -> None:
        """A new run needs an empty or missing folder; a resumed one a config and a model.

        Raises:
            UserError: naming the folder and the fix.
        """
        path = self.path
        if resume:
            if not self.config.is_file():
                raise UserError(f"cannot resume {str(path)!r}: it is not a run folder (no {self.CONFIG})")
            if not self.model().is_file():
                raise UserError(f"cannot resume {str(path)!r}: it has no {self.MODEL} (was the run saved?)")
        elif path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UserError(
                f"run folder {str(path)!r} already exists and is not empty; choose another --run-dir "
                f"(or --resume {path} to continue it)"
            )

    def check_readable(self, model: str = "auto") -> None:
        """A folder to evaluate: it exists, holds a config and the model.

        Raises:
            UserError: naming what is missing.
        """
        if not self.path.is_dir():
            raise UserError(f"run folder {str(self.path)!r} does not exist")
        if not self.config.is_file():
            raise UserError(
                f"{str(self.path)!r} is not a run folder (no {self.CONFIG}); pass a folder made by train.py"
            )
        if model not in ("auto", "final", "best"):
            raise UserError(f"model must be 'auto', 'final' or 'best', got {model!r}")
        model = self.resolve_model(model)
        if not self.model(model).is_file():
            raise UserError(
                f"run folder {str(self.path)!r} has no {self.model(model).name} (training did not finish or "
                "was not saved)"
            )

    def append_command(self, command: str | None = None) -> None:
        """Add the command line that trains (or resumes) this run to ``command.txt``."""
        with open(self.path / self.COMMAND, "a") as f:
            f.write((command if command is not None else command_line()) + "\n")

    def write_json(self, path: Path, obj: Any) -> None:
        write_json_atomic(path, obj)
