"""Plugin clippers named on the command line (``module.path:Class[:key=value,...]``): the spec grammar, and
``train.py`` / ``train.py compare`` (with spawned worker processes) using a module that is only on PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from agents.config import ClipConfig, load_config, parse_clip_spec
from agents.errors import UserError
from clipping.spec import ClipSpecError, parse_clip_part, parse_clip_specs

ROOT = Path(__file__).resolve().parents[1]
SMALL = "btcusdt-perp-1h-2025"

PLUGIN = '''
"""A plugin clipper outside perpclip: a norm clip whose bound is max_norm * factor."""
from clipping import NormClip


class HalfNorm(NormClip):
    name = "halfnorm"

    def __init__(self, max_norm: float = 1.0, factor: float = 0.5) -> None:
        super().__init__(max_norm=max_norm * factor)
'''


def test_grammar_reads_import_paths_with_and_without_keywords():
    assert parse_clip_part("mypkg.mod:MyClipper:k=1,j=2") == ("mypkg.mod:MyClipper", [("k", "1"), ("j", "2")])
    assert parse_clip_part("Mod:Cls") == ("Mod:Cls", [])  # case kept: Python names are case-sensitive
    assert parse_clip_part("ZCLIP:z_thresh=2") == ("zclip", [("z_thresh", "2")])  # built-ins: lowercased
    specs = parse_clip_specs("none,pkg.m:A:k=1,j=2;pkg.m:B/zclip:alpha=0.9")
    assert specs == [
        [("none", [])],
        [("pkg.m:A", [("k", "1"), ("j", "2")])],
        [("pkg.m:B", []), ("zclip", [("alpha", "0.9")])],
    ]
    with pytest.raises(ClipSpecError, match="module.path:Class"):
        parse_clip_part("my-pkg:Cls")
    assert parse_clip_spec("pkg.mod:My:max_norm=inf") == ("pkg.mod:My", {"max_norm": float("inf")})
    assert ClipConfig("pkg.mod:My", {}, "pkg.mod:My", {}).policy == "pkg.mod:My"
    assert ClipConfig("pkg.mod:My", {}, "zclip", {}).label == "My+zclip"


def test_builtin_name_with_a_bare_word_gets_a_keyword_hint():
    from agents.algos import validate_clip

    with pytest.raises(UserError, match=r"'norm' is a built-in clipper.*norm:max_norm=\.\.\."):
        validate_clip(ClipConfig(*parse_clip_spec("norm:max_norm"), "none", {}))


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "plug").mkdir(exist_ok=True)
    (tmp_path / "plug" / "perpclip_test_plug.py").write_text(textwrap.dedent(PLUGIN))
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "plug"), str(ROOT)]),
        "OMP_NUM_THREADS": "1",
    }


def _cli(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TINY = (
    "--data", SMALL, "--timesteps", "64", "--n-envs", "1", "--net-arch", "8",
    "--hp", "n_steps=32,batch_size=32,n_epochs=1", "--env", "window=4,episode_bars=48", "--eval-freq", "0",
)


def test_train_with_a_plugin_clipper_from_pythonpath(tmp_path):
    from agents.clip_hooks import read_clipper_state

    run = tmp_path / "run"
    proc = _cli(tmp_path, "train", "--clip", "perpclip_test_plug:HalfNorm:factor=0.25", *TINY,
                "--run-dir", str(run), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(run / "config.yaml")
    assert cfg.clip.policy == "perpclip_test_plug:HalfNorm" and cfg.clip.policy_kwargs == {"factor": 0.25}
    state = read_clipper_state(run / "model.zip")
    assert state["policy"]["name"] == "halfnorm" and state["policy"]["config"] == {"max_norm": 0.25}
    assert state["policy"]["totals"]["steps"] == 2  # 64 steps / 32 per rollout, one epoch of one batch
    # Without the folder on PYTHONPATH: a one-line error that says so.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["train", "--clip", "perpclip_test_plug:HalfNorm", *TINY, "--run-dir", str(tmp_path / "r2")]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "PYTHONPATH" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_compare_with_a_plugin_clipper_in_spawned_workers(tmp_path):
    out = tmp_path / "cmp"
    clips = "none,perpclip_test_plug:HalfNorm:factor=0.25"
    grid = ("--clips", clips, "--seeds", "1", "--folds", "1")
    proc = _cli(tmp_path, "compare", *grid, *TINY, "--workers", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 worker processes" in proc.stdout  # the spawn backend, not this process
    df = pd.read_csv(out / "results.csv")
    assert (df["status"] == "ok").all(), df[["run", "error"]]
    assert set(df["clip"]) == {"none", "perpclip_test_plug:HalfNorm:factor=0.25"}
    plug = df[df["clip"] != "none"].iloc[0]
    assert plug["policy_clip"] == "perpclip_test_plug:HalfNorm:factor=0.25"
    assert "Paired comparison with `none`" in (out / "summary.md").read_text()
