"""Helpers shared by the subprocess tests of ``train.py`` (test_cli.py, test_execution_cli.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Options of a real run small enough for subprocess tests: the 999-bar set, 128 steps of a one-env tiny PPO.
TINY_RUN = (
    "--data",
    "btcusdt-perp-1h-2025",
    "--timesteps",
    "128",
    "--n-envs",
    "1",
    "--net-arch",
    "8",
    "--hp",
    "n_steps=64,batch_size=32,n_epochs=1",
)


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python train.py ARGS`` in ``cwd`` as a user would, one torch/OpenMP thread."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PERPCLIP_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user mistake: exit code 2 and one ``error: ...`` line naming every fragment, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
