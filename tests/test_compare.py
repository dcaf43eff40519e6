"""train.py compare: spec parsing, folds, grid, resume, failures, worker processes, Ray, and one real compare.

Most tests use ``FakeRunner`` (below), a deterministic stand-in for agents.run, so the grid/resume/failure
logic is tested in milliseconds; ``test_cli_real_compare_end_to_end`` runs the real thing through ``python
train.py``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cli_helpers import TINY_RUN, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.compare import run_compare
from agents.compare_spec import (
    ClipPart,
    ClipSpec,
    FoldRanges,
    expand_grid,
    make_folds,
    parse_clips,
    parse_seeds,
)
from agents.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------------
# A fast stand-in for agents.run (module level: spawned workers import it as test_compare.FakeRunner)


@dataclass(frozen=True)
class FakeTrain:
    run_dir: Path
    wall_time_s: float
    timesteps: int
    diverged: bool = False
    diverged_reason: str | None = None
    clip_fraction: dict[str, float] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False


@dataclass(frozen=True)
class FakeEval:
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    positions: np.ndarray
    equity: np.ndarray


@dataclass(frozen=True)
class FakeRunner:
    """Deterministic metrics from (seed, test start); fails, crashes, collapses or diverges on request.

    Each attribute is a tuple of run-name substrings that trigger the behaviour.
    """

    fail: tuple[str, ...] = ()
    crash: tuple[str, ...] = ()
    collapse: tuple[str, ...] = ()
    flat: tuple[str, ...] = ()
    nonfinite: tuple[str, ...] = ()
    interrupt: tuple[str, ...] = ()

    def train(self, config: dict[str, Any], run_dir: Path) -> FakeTrain:
        run_dir = Path(run_dir)
        # Like agents.run.train: refuse an existing non-empty folder (a compare must never reuse one).
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(f"{run_dir} is not empty")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config))
        with open(run_dir.parent / "calls.log", "a") as fh:  # one line per training call, across processes
            fh.write(run_dir.name + "\n")
        if any(s in run_dir.name for s in self.crash):
            os._exit(3)
        if any(s in run_dir.name for s in self.fail):
            raise RuntimeError(f"boom in {run_dir.name}")
        diverged = any(s in run_dir.name for s in self.nonfinite)
        if any(s in run_dir.name for s in self.interrupt):  # like agents.run.train after Ctrl-C
            return FakeTrain(run_dir, 0.01, 1, interrupted=True)
        return FakeTrain(
            run_dir,
            0.01,
            int(config["algo"]["timesteps"]),
            diverged=diverged,
            diverged_reason="non-finite loss" if diverged else None,
            clip_fraction={"policy": 0.25, "value": 0.0 if config["clip"]["value"] == "none" else 0.5},
            nonfinite={"policy": 0, "value": 0},
        )

    def evaluate(self, run_dir: Path) -> FakeEval:
        run_dir = Path(run_dir)
        config = json.loads((run_dir / "config.json").read_text())
        seed, (start, stop) = config["algo"]["seed"], config["data"]["test_range"]
        n = stop - start
        collapsed = any(s in run_dir.name for s in self.collapse)
        positions = np.full(n, 0.37) if collapsed else np.random.default_rng([seed, start]).uniform(-1, 1, n)
        if any(s in run_dir.name for s in self.flat):
            positions = np.zeros(n)
        sharpe = float(seed) + start / 1000.0
        return FakeEval(
            metrics={"total_return": sharpe / 100, "sharpe": sharpe, "max_drawdown": -0.1, "n_bars": n},
            baselines={"buy_and_hold": {"total_return": start / 1e4, "sharpe": start / 100.0}},
            positions=positions,
            equity=np.linspace(1.0, 1.0 + sharpe / 100, n),
        )


def _calls(out: Path) -> list[str]:
    log = out / "calls.log"
    return log.read_text().split() if log.exists() else []


BASE = {
    "algo": {"algo": "ppo", "timesteps": 64, "seed": 0},
    "clip": {},
    "data": {"data": "btcusdt-perp-1h-2025"},
}
FOLDS = [FoldRanges(0, (0, 100), None, (100, 150)), FoldRanges(1, (0, 150), None, (150, 200))]


def _specs(text: str) -> list[ClipSpec]:
    return parse_clips(text, validate=False)


# ----------------------------------------------------------------------------------------------------
# Spec parsing


def test_parse_plain_names_and_sweep_grammar():
    specs = parse_clips("none,norm,autoclip,zclip,agc")
    assert [s.label for s in specs] == ["none", "norm", "autoclip", "zclip", "agc"]
    assert all(s.policy == s.value for s in specs)

    specs = parse_clips("norm:max_norm=0.05,norm:max_norm=0.5,zclip:z_thresh=2.0")
    assert [s.label for s in specs] == ["norm:max_norm=0.05", "norm:max_norm=0.5", "zclip:z_thresh=2.0"]
    assert specs[0].clip_config() == {
        "policy": "norm",
        "policy_kwargs": {"max_norm": 0.05},
        "value": "norm",
        "value_kwargs": {"max_norm": 0.05},
    }


def test_parse_continuation_pairs_semicolons_and_repeats():
    # A token with '=' and no ':' before it continues the previous part's keywords.
    (spec,) = _specs("zclip:z_thresh=2.0,alpha=0.9")
    assert spec.policy == ClipPart("zclip", (("z_thresh", 2.0), ("alpha", 0.9)))
    specs = _specs("norm:max_norm=0.5,zclip")
    assert [s.label for s in specs] == ["norm:max_norm=0.5", "zclip"]
    # policy/value pairs; keywords after the '/' belong to the value part.
    (pair,) = _specs("norm:max_norm=0.5/zclip:z_thresh=3,alpha=0.9")
    assert pair.policy == ClipPart("norm", (("max_norm", 0.5),))
    assert pair.value == ClipPart("zclip", (("z_thresh", 3), ("alpha", 0.9)))
    assert pair.label == "norm:max_norm=0.5/zclip:z_thresh=3,alpha=0.9"
    assert "/" not in pair.slug and ":" not in pair.slug
    (pair,) = _specs("norm:max_norm=0.5,foo=1/agc")
    assert pair.policy.kwargs == (("max_norm", 0.5), ("foo", 1)) and pair.value == ClipPart("agc")
    # ';' and repeated --clips start new specs; values: ints, floats, 1e-3, bools, none, strings.
    specs = _specs(["norm;agc:clip=1e-3,eps=true", "value:v=none,mode=abs"])
    assert [s.label for s in specs] == ["norm", "agc:clip=0.001,eps=true", "value:v=none,mode=abs"]
    assert dict(specs[1].policy.kwargs) == {"clip": 1e-3, "eps": True}
    assert dict(specs[2].policy.kwargs) == {"v": None, "mode": "abs"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("norm,,zclip", "empty entry"),
        ("max_norm=0.5,norm", "is a keyword with no clipper before it"),
        ("norm:0.5", "expected key=value"),
        ("norm:", "no key=value"),
        ("norm:max norm=1", "expected key=value"),
        ("norm:max_norm=1,max_norm=2", "more than once"),
        ("norm,zclip,norm", "given twice"),
        ("norm:max_norm=0.5,norm:max_norm=0.50", "given twice"),
        ("norm/zclip/agc", "more than one '/'"),
        ("/zclip", "no policy clipper"),
        ("norm/max_norm=1", "after '/'"),
        ("sb3/zclip", "cannot be mixed"),
        ("3norm", "clipper name"),
    ],
)
def test_parse_errors_name_the_bad_token(text, needle):
    with pytest.raises(ValueError, match="--clips") as exc:
        parse_clips(text, validate=False)
    assert needle in str(exc.value)


def test_parse_validates_names_and_keywords_with_make_clipper():
    with pytest.raises(ValueError) as exc:
        parse_clips("norm,zclipp")
    msg = str(exc.value)
    assert "'zclipp'" in msg and "zclip" in msg and "agc" in msg  # the bad name and the valid ones
    with pytest.raises(ValueError) as exc:
        parse_clips("norm:max_nrm=0.5")
    assert "max_nrm" in str(exc.value) and "norm:max_nrm=0.5" in str(exc.value)
    with pytest.raises(ValueError, match="takes no keywords"):
        parse_clips("sb3:max_grad_norm=0.5")
    assert [s.label for s in parse_clips("sb3,zclip")] == ["sb3", "zclip"]


def test_parse_seeds():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("4,9") == [4, 9]
    assert parse_seeds(2) == [0, 1]
    for bad in ("0", "x", "1,1", "-2"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


# ----------------------------------------------------------------------------------------------------
# Folds and grid


@settings(max_examples=60, deadline=None)
@given(
    n_bars=st.integers(200, 5000),
    n_folds=st.integers(1, 5),
    mode=st.sampled_from(["expanding", "rolling"]),
    val_frac=st.sampled_from([0.0, 0.05, 0.2]),
)
def test_folds_are_time_ordered_and_disjoint(n_bars, n_folds, mode, val_frac):
    try:
        first = make_folds(n_bars, n_folds, mode=mode)
    except ValueError:
        return  # too few bars for that many folds: refused, fine
    val_bars = int(val_frac * (first[0].train[1] - first[0].train[0]))
    folds = make_folds(n_bars, n_folds, mode=mode, val_bars=val_bars)
    assert len(folds) == n_folds
    prev_test_stop = 0
    for i, f in enumerate(folds):
        assert f.index == i
        a, b = f.train
        c, d = f.test
        assert 0 <= a < b <= c < d <= n_bars  # train strictly before test: no overlap, no look-ahead
        if val_bars:
            assert f.val == (b, b + val_bars) and f.val[1] <= c
        else:
            assert f.val is None
        assert c >= prev_test_stop  # test periods walk forward without overlapping each other
        prev_test_stop = d
        if mode == "expanding":
            assert a == 0


def test_make_folds_errors():
    with pytest.raises(ValueError, match="--folds"):
        make_folds(1000, 0)
    with pytest.raises(ValueError, match="--val-bars"):
        make_folds(1000, 3, val_bars=10_000)


def test_expand_grid_every_combination_once():
    specs = _specs("none,norm:max_norm=0.5/zclip")
    jobs = expand_grid(BASE, specs, [3, 4], FOLDS)
    assert len(jobs) == 2 * 2 * 2
    assert len({j.name for j in jobs}) == len(jobs)
    assert {(j.clip, j.seed, j.fold) for j in jobs} == {
        (s.label, seed, f.index) for s in specs for seed in (3, 4) for f in FOLDS
    }
    j = next(j for j in jobs if j.clip.startswith("norm") and j.seed == 4 and j.fold == 1)
    assert j.config["algo"] == {"algo": "ppo", "timesteps": 64, "seed": 4}
    assert j.config["clip"] == {
        "policy": "norm",
        "policy_kwargs": {"max_norm": 0.5},
        "value": "zclip",
        "value_kwargs": {},
    }
    assert j.config["data"]["train_range"] == [0, 150] and j.config["data"]["test_range"] == [150, 200]
    assert BASE["algo"]["seed"] == 0 and BASE["clip"] == {}  # the base config is not mutated


# ----------------------------------------------------------------------------------------------------
# Running, resuming, failures (fake runner)


def test_compare_writes_results_and_records_failures(tmp_path):
    out = tmp_path / "cmp"
    runner = FakeRunner(
        fail=("norm__seed1__fold0",), collapse=("none__seed0__fold1",), flat=("norm__seed0__fold1",)
    )
    res = run_compare(BASE, _specs("none,norm"), 2, folds=FOLDS, out=out, workers=1, runner=runner, log=None)
    assert res.n_ran == 8 and res.n_failed == 1
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 8 and list(df["status"]).count("failed") == 1
    bad = df[df["status"] == "failed"].iloc[0]
    assert bad["run"] == "norm__seed1__fold0" and "RuntimeError: boom" in bad["error"]
    assert "boom in norm__seed1__fold0" in (out / bad["run"] / "traceback.txt").read_text()
    # The other runs still ran and were evaluated on their own fold's test range.
    ok = df[df["status"] == "ok"]
    assert np.allclose(ok["test_sharpe"], ok["seed"] + ok["test_start"] / 1000.0)
    assert set(zip(ok["test_start"], ok["test_stop"], strict=True)) == {(100, 150), (150, 200)}
    collapsed = df[df["run"] == "none__seed0__fold1"].iloc[0]
    assert collapsed["diverged"] and "collapsed: constant position 0.37" in collapsed["diverged_reason"]
    assert not collapsed["flat"]
    # Never holding a position is staying out, not a divergence.
    flat = df[df["run"] == "norm__seed0__fold1"].iloc[0]
    assert flat["flat"] and not flat["collapsed"] and not flat["diverged"]
    assert df.loc[df["run"] != "none__seed0__fold1", "diverged"].dropna().eq(False).all()
    assert df.loc[df["clip"] == "norm", "clip_frac_value"].dropna().eq(0.5).all()
    # Summary: per-clipper mean ± std over seeds and folds, from ok runs only.
    none = res.summary.set_index("clip").loc["none"]
    expect = [0.1, 0.15, 1.1, 1.15]
    assert none["sharpe_mean"] == pytest.approx(np.mean(expect))
    assert none["sharpe_std"] == pytest.approx(np.std(expect, ddof=1))
    assert none["diverged_share"] == pytest.approx(0.25)
    norm = res.summary.set_index("clip").loc["norm"]
    assert (norm["ok"], norm["runs"], norm["failed"]) == (3, 4, 1)
    summary = (out / "summary.md").read_text()
    assert "| `none` | 4/4 |" in summary and "| `norm` | 3/4 |" in summary and "boom" in summary
    assert (out / "test_sharpe.png").stat().st_size > 1000
    for name in ("none__seed0__fold0", "norm__seed1__fold1"):
        assert json.loads((out / name / "result.json").read_text())["status"] == "ok"


def test_resume_skips_finished_runs_and_keeps_what_was_written(tmp_path):
    out = tmp_path / "cmp"
    specs = _specs("none,norm")
    run_compare(
        BASE,
        specs,
        1,
        folds=FOLDS,
        out=out,
        workers=1,
        runner=FakeRunner(fail=("norm__seed0__fold1",)),
        log=None,
    )
    assert len(_calls(out)) == 4
    before = {p: p.read_bytes() for p in out.glob("*/*") if p.is_file()}
    # An interrupted run: folder without result.json. It is moved aside and run again.
    (out / "none__seed0__fold1" / "result.json").unlink()
    (out / "none__seed0__fold1" / "partial.txt").write_text("half")

    res = run_compare(BASE, specs, 1, folds=FOLDS, out=out, workers=1, runner=FakeRunner(), log=None)
    assert (res.n_ran, res.n_skipped, res.n_failed) == (1, 3, 1)  # failed run kept as failed, not retried
    assert _calls(out)[4:] == ["none__seed0__fold1"]
    assert (out / "_incomplete" / "none__seed0__fold1.1" / "partial.txt").read_text() == "half"
    for p, data in before.items():
        if p.parent.name != "none__seed0__fold1":
            assert p.read_bytes() == data, f"{p} was rewritten"
    # A larger grid in the same folder runs only the new runs.
    res = run_compare(BASE, specs, 2, folds=FOLDS, out=out, workers=1, runner=FakeRunner(), log=None)
    assert (res.n_ran, res.n_skipped) == (4, 4) and len(res.results) == 8
    # --retry-failed runs the failed one again; its old folder is kept under _failed/.
    res = run_compare(
        BASE, specs, 2, folds=FOLDS, out=out, workers=1, runner=FakeRunner(), retry_failed=True, log=None
    )
    assert res.n_ran == 1 and res.n_failed == 0
    assert (out / "_failed" / "norm__seed0__fold1.1" / "traceback.txt").exists()
    assert len((out / "commands.txt").read_text().splitlines()) == 4


def test_interrupted_run_is_not_recorded_as_finished(tmp_path):
    out = tmp_path / "cmp"
    run_compare(
        BASE,
        _specs("none"),
        2,
        folds=FOLDS[:1],
        out=out,
        workers=1,
        runner=FakeRunner(interrupt=("seed1",)),
        log=None,
    )
    assert not (out / "none__seed1__fold0" / "result.json").exists()
    res = run_compare(
        BASE, _specs("none"), 2, folds=FOLDS[:1], out=out, workers=1, runner=FakeRunner(), log=None
    )
    assert (res.n_ran, res.n_skipped, res.n_failed) == (1, 1, 0)
    assert (out / "_incomplete" / "none__seed1__fold0.1" / "config.json").exists()


def test_resume_refuses_a_run_with_another_config(tmp_path):
    out = tmp_path / "cmp"
    run_compare(BASE, _specs("none"), 1, folds=FOLDS[:1], out=out, workers=1, runner=FakeRunner(), log=None)
    other = {**BASE, "algo": {**BASE["algo"], "timesteps": 128}}
    with pytest.raises(UserError, match=r"algo\.timesteps: 64 before, 128 now"):
        run_compare(
            other, _specs("none"), 1, folds=FOLDS[:1], out=out, workers=1, runner=FakeRunner(), log=None
        )
    assert _calls(out) == ["none__seed0__fold0"]


def test_nonfinite_training_counts_as_diverged(tmp_path):
    res = run_compare(
        BASE,
        _specs("none"),
        2,
        folds=FOLDS[:1],
        out=tmp_path / "c",
        workers=1,
        runner=FakeRunner(nonfinite=("seed1",)),
        log=None,
    )
    df = res.results.set_index("run")
    assert df.loc["none__seed1__fold0", "diverged"] and df.loc["none__seed1__fold0", "diverged_reason"]
    assert not df.loc["none__seed0__fold0", "diverged"]
    assert res.summary.set_index("clip").loc["none", "diverged_share"] == 0.5


def test_real_runner_preflight_rejects_bad_folds_before_launching(tmp_path):
    """With the real runner every config and fold is checked before any run starts."""
    from agents.compare import AgentsRunner

    out = tmp_path / "cmp"
    too_early = [FoldRanges(0, (0, 10), None, (10, 60))]  # the env needs `window` bars before bar 10
    with pytest.raises(UserError, match="needs .* bars of history"):
        run_compare(BASE, _specs("none"), 1, folds=too_early, out=out, workers=1, log=None)
    with pytest.raises(UserError, match="--model best needs a validation range"):
        run_compare(
            BASE,
            _specs("none"),
            1,
            folds=FOLDS,
            out=out,
            workers=1,
            runner=AgentsRunner(model="best"),
            log=None,
        )
    bad_env = {**BASE, "env": {"action": "sideways"}}
    with pytest.raises(UserError, match="sideways"):
        run_compare(bad_env, _specs("none"), 1, folds=FOLDS, out=out, workers=1, log=None)
    assert not out.exists()  # nothing launched, nothing written


def test_worker_processes_survive_a_crashing_run(tmp_path):
    """Spawned workers: one run kills its process; it is recorded as failed and the others finish."""
    out = tmp_path / "cmp"
    res = run_compare(
        BASE,
        _specs("none"),
        3,
        folds=FOLDS[:1],
        out=out,
        workers=2,
        runner=FakeRunner(crash=("seed1",)),
        log=None,
    )
    df = res.results.set_index("run")
    assert df.loc["none__seed1__fold0", "status"] == "failed"
    assert "exit code 3" in df.loc["none__seed1__fold0", "error"]
    assert (df.drop("none__seed1__fold0")["status"] == "ok").all()
    assert sorted(set(_calls(out))) == ["none__seed0__fold0", "none__seed1__fold0", "none__seed2__fold0"]


def test_ray_path_on_a_local_instance(tmp_path, ray_head):
    ray, address = ray_head
    # Ray workers do not have tests/ on their path: ship this module's fakes by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = tmp_path / "cmp"
    res = run_compare(
        BASE,
        _specs("none,norm"),
        2,
        folds=FOLDS[:1],
        out=out,
        ray_address=address,
        runner=FakeRunner(fail=("norm__seed1",)),
        log=None,
    )
    assert not ray.is_initialized()  # run_compare connected, and disconnected when done
    df = res.results.set_index("run")
    assert len(df) == 4 and df.loc["norm__seed1__fold0", "status"] == "failed"
    assert "boom" in df.loc["norm__seed1__fold0", "error"]
    assert (df.drop("norm__seed1__fold0")["status"] == "ok").all()
    assert df.loc["none__seed1__fold0", "test_sharpe"] == pytest.approx(1.1)
    assert all((out / r / "result.json").exists() for r in df.index)
    assert sorted(_calls(out)) == sorted(df.index)  # each run trained exactly once, on the cluster


#: A tiny real PPO run on the 999-bar embedded market: seconds per run.
TINY_REAL = {
    "algo": {
        "algo": "ppo",
        "timesteps": 128,
        "n_envs": 1,
        "net_arch": [8],
        "hyperparams": {"n_steps": 64, "batch_size": 32, "n_epochs": 1},
    },
    "data": {"data": "btcusdt-perp-1h-2025"},
    "env": {"window": 8, "episode_bars": 64},
}

#: Columns that depend on the run's numbers only (not on where or how fast it ran).
_TIMING = ("wall_time_s", "train_time_s")


@pytest.mark.slow
def test_ray_runs_real_training_identical_to_worker_processes(tmp_path, ray_head):
    """Real PPO on a local Ray head (127.0.0.1), then the same compare on worker processes: every run's
    numbers agree exactly (seeded runs, one torch thread in both). 2 clippers x 2 optimizer arms (Adam, plain
    SGD: the stress axis trained for real) x 1 seed x 1 fold."""
    ray, address = ray_head
    from agents.compare_arms import make_arms, parse_optimizers
    from agents.config import RunConfig

    base = RunConfig.from_dict(TINY_REAL).to_dict()
    arms = make_arms(optimizer=parse_optimizers("adam,sgd"))
    kw = {"folds": 1, "test_bars": 150, "log": None, "arms": arms}
    specs = _specs("none,norm:max_norm=0.5")
    on_ray = run_compare(base, specs, 1, out=tmp_path / "ray", ray_address=address, **kw)
    assert not ray.is_initialized()  # connected for the compare, disconnected after it
    local = run_compare(base, specs, 1, out=tmp_path / "proc", workers=2, **kw)
    a, b = (r.results.set_index("run").sort_index() for r in (on_ray, local))
    assert len(a) == 4 and (a["status"] == "ok").all(), a[["error"]]
    assert (b["status"] == "ok").all(), b[["error"]]
    numbers = [c for c in a.columns if c not in _TIMING and c != "run_dir"]
    assert numbers == [c for c in b.columns if c not in _TIMING and c != "run_dir"]
    pd.testing.assert_frame_equal(a[numbers], b[numbers], check_exact=True)
    # Not trivially equal: the runs differ (optimizer, clipper), and the SGD arm trained with SGD.
    assert np.isfinite(a["test_total_return"]).all() and a["action_std"].nunique() >= 3
    assert list(a["optimizer"].unique()) == ["adam", "sgd"]
    sgd_run = a.index[a["optimizer"] == "sgd"][0]
    assert "optimizer_class: sgd" in (tmp_path / "ray" / sgd_run / "config.yaml").read_text()


# ----------------------------------------------------------------------------------------------------
# Command line


def test_cli_bad_spec_is_a_one_line_error(tmp_path):
    proc = run_cli("compare", "--clips", "norm,max_nrm=0.5", "--seeds", "1", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "max_nrm" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing launched


@pytest.mark.slow
def test_cli_real_compare_end_to_end(tmp_path):
    """2 clippers x 2 seeds x 2 folds of real PPO (tiny budget), through train.py, then resumed."""
    out = tmp_path / "cmp"
    args = (
        "compare",
        "--algo",
        "ppo",
        "--clips",
        "none,norm:max_norm=0.5",
        "--seeds",
        "2",
        "--folds",
        "2",
        *TINY_RUN,
        "--env",
        "window=8,episode_bars=64",
        "--workers",
        "2",
        "--out",
        str(out),
    )
    proc = run_cli(*args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 8 and (df["status"] == "ok").all(), df[["run", "error"]]
    assert np.isfinite(df["test_total_return"]).all()
    # Each fold tests on ~a week of hourly bars: too short to annualize a Sharpe ratio (not meaningful).
    assert df["test_sharpe"].isna().all()
    for _, r in df.iterrows():  # each run evaluated on its own held-out fold, after its training window
        assert r["train_stop"] <= r["test_start"]
        run_dir = out / r["run"]
        assert (run_dir / "config.yaml").exists() and (run_dir / "result.json").exists()
        assert list(run_dir.rglob("events.out.tfevents.*")), f"no TensorBoard events in {run_dir}"
    assert set(df["clip"]) == {"none", "norm:max_norm=0.5"}
    assert "| `norm:max_norm=0.5` | 4/4 |" in (out / "summary.md").read_text()
    assert "test Sharpe" in proc.stdout and (out / "test_sharpe.png").exists()
    # Paired statistics against `none` (the default reference); the week-long folds have no finite Sharpe,
    # so they fall back to the test return.
    summary = (out / "summary.md").read_text()
    assert "## Paired comparison with `none` on test return (same seed, same fold)" in summary
    assert "| `none` (reference) | 4 |" in summary
    line = next(ln for ln in summary.splitlines() if ln.startswith("| `norm:max_norm=0.5` | 4 |"))
    assert line.count("[") >= 4  # IQM, delta, P(improve) with CIs, and the p-values
    assert "Paired comparison with `none`" in proc.stdout and (out / "test_total_return_iqm.png").exists()
    paired = df[df["clip"] == "norm:max_norm=0.5"]
    ref = df[df["clip"] == "none"].set_index(["seed", "fold"])["test_total_return"]
    cells = list(zip(paired["seed"], paired["fold"], strict=True))
    expect = paired["test_total_return"].to_numpy() - ref.loc[cells].to_numpy()
    assert paired["delta_vs_reference"].to_numpy() == pytest.approx(expect)
    assert {"grad_spikes_policy", "grad_kurtosis_value"} <= set(df.columns)
    # Same command again: everything is skipped.
    proc = run_cli(*args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "8 of 8 run(s) already finished" in proc.stdout


# ----------------------------------------------------------------------------------------------------
# Paired statistics against a reference clipper (hand-made metric values, checked against agents.stats)

#: Test Sharpe of (clipper, seed, fold): made up, with wins, losses and a tie against ``none``.
HAND_SHARPE = {
    ("none", 0, 0): 0.10, ("none", 0, 1): -0.20, ("none", 1, 0): 0.40, ("none", 1, 1): 0.05,
    ("none", 2, 0): -0.30, ("none", 2, 1): 0.90,
    ("norm", 0, 0): 0.35, ("norm", 0, 1): 0.10, ("norm", 1, 0): 0.40, ("norm", 1, 1): 0.55,
    ("norm", 2, 0): 0.20, ("norm", 2, 1): 0.70,
    ("zclip", 0, 0): -0.50, ("zclip", 0, 1): -0.25, ("zclip", 1, 0): 0.30, ("zclip", 1, 1): -0.10,
    ("zclip", 2, 0): -0.90, ("zclip", 2, 1): 1.40,
}
#: A logged grad-norm series with two spikes (above median + 5 MAD).
HAND_GRAD_NORMS = [1.0, 1.1, 0.9, 1.05, 0.95, 9.0, 1.0, 1.02, 0.98, 30.0, 1.01, 0.99]


@dataclass(frozen=True)
class TableRunner(FakeRunner):
    """FakeRunner whose test Sharpe is :data:`HAND_SHARPE` and whose progress.csv holds a grad-norm series."""

    def train(self, config: dict[str, Any], run_dir: Path) -> FakeTrain:
        out = super().train(config, run_dir)
        pd.DataFrame(
            {"time/total_timesteps": range(len(HAND_GRAD_NORMS)), "clip/policy/grad_norm": HAND_GRAD_NORMS}
        ).to_csv(Path(run_dir) / "progress.csv", index=False)
        return out

    def evaluate(self, run_dir: Path) -> FakeEval:
        ev = super().evaluate(run_dir)
        config = json.loads((Path(run_dir) / "config.json").read_text())
        fold = 0 if config["data"]["test_range"][0] == 100 else 1
        sharpe = HAND_SHARPE[(Path(run_dir).name.split("__")[0], config["algo"]["seed"], fold)]
        return FakeEval({**ev.metrics, "sharpe": sharpe}, ev.baselines, ev.positions, ev.equity)


def test_paired_statistics_match_agents_stats_on_hand_made_values(tmp_path):
    from agents import stats

    out = tmp_path / "cmp"
    res = run_compare(
        BASE, _specs("norm,none,zclip"), 3, folds=FOLDS, out=out, workers=1, runner=TableRunner(), log=None
    )
    assert res.reference == "none" and res.metric == "sharpe"  # none is in the grid: the default reference
    df = pd.read_csv(out / "results.csv")
    table = res.paired.set_index("clip")

    def arm(clip):
        g = df[df["clip"] == clip].sort_values(["seed", "fold"])
        return g["test_sharpe"].to_numpy(), g["fold"].to_numpy()

    ref, folds = arm("none")
    p_raw = {}
    for clip in ("norm", "zclip"):
        x, _ = arm(clip)
        # IQM with the fold-stratified CI, from the rows in results.csv order.
        g = df[df["clip"] == clip]
        ci = stats.iqm_ci(g["test_sharpe"].to_numpy(), list(g["fold"]), n_boot=2000, seed=0)
        row = table.loc[clip]
        assert (row["iqm"], row["iqm_low"], row["iqm_high"]) == pytest.approx((ci.estimate, ci.low, ci.high))
        # Paired cells: same seed, same fold.
        d = x - ref
        assert row["cells"] == 6 and row["delta"] == pytest.approx(d.mean())
        assert (row["wins"], row["losses"], row["ties"]) == ((d > 0).sum(), (d < 0).sum(), (d == 0).sum())
        assert row["p_value"] == pytest.approx(stats.wilcoxon_p_value(d))
        p_raw[clip] = stats.wilcoxon_p_value(d)
        assert row["poi"] == pytest.approx(stats.paired_probability_of_improvement(x, ref, list(folds)))
        assert row["poi_low"] <= row["poi"] <= row["poi_high"]
        assert row["delta_low"] <= row["delta"] <= row["delta_high"]
        disp = stats.dispersion(x)
        assert (row["median"], row["iqr"], row["min"], row["max"]) == pytest.approx(
            (disp.median, disp.iqr, disp.min, disp.max)
        )
        # Per-run deltas in results.csv.
        got = df[df["clip"] == clip].sort_values(["seed", "fold"])["delta_vs_reference"].to_numpy()
        assert got == pytest.approx(d)
    assert (table.loc["norm", "wins"], table.loc["norm", "losses"], table.loc["norm", "ties"]) == (4, 1, 1)
    holm = stats.holm([p_raw["norm"], p_raw["zclip"]])
    assert [table.loc["norm", "p_holm"], table.loc["zclip", "p_holm"]] == pytest.approx(list(holm))
    assert df.loc[df["clip"] == "none", "delta_vs_reference"].isna().all()
    # Stability columns from each run's progress.csv.
    assert (df["grad_spikes_policy"] == stats.count_spikes(HAND_GRAD_NORMS, 5.0)).all()
    assert stats.count_spikes(HAND_GRAD_NORMS, 5.0) == 2
    assert df["grad_kurtosis_policy"].to_numpy() == pytest.approx(
        np.full(len(df), stats.excess_kurtosis(HAND_GRAD_NORMS))
    )
    # The printed / written table carries the same numbers.
    summary = (out / "summary.md").read_text()
    assert "## Paired comparison with `none` on test Sharpe" in summary
    norm = table.loc["norm"]
    line = next(ln for ln in summary.splitlines() if ln.startswith("| `norm` | 6 |"))
    assert f"{norm['delta']:+.2f} [{norm['delta_low']:+.2f}, {norm['delta_high']:+.2f}]" in line
    assert "| 4/1/1 |" in line and f"{norm['p_holm']:.3g} [{norm['p_value']:.3g}]" in line
    assert "`none` (reference)" in summary and "Across-seed dispersion" in summary
    assert "interquartile mean" in summary  # the definitions paragraph
    assert (out / "test_sharpe_iqm.png").stat().st_size > 1000


def test_reference_option_picks_another_reference_and_rejects_unknown_ones(tmp_path):
    res = run_compare(BASE, _specs("norm:max_norm=0.5,zclip"), 2, folds=FOLDS, out=tmp_path / "a", workers=1,
                      runner=TableRunner(), log=None)
    assert res.reference == "norm:max_norm=0.5"  # no `none` in the grid: the first spec
    res = run_compare(BASE, _specs("none,zclip"), 2, folds=FOLDS, out=tmp_path / "b", workers=1,
                      runner=TableRunner(), log=None, reference="zclip")
    table = res.paired.set_index("clip")
    assert res.reference == "zclip" and table.loc["zclip", "reference"] and not table.loc["none", "reference"]
    with pytest.raises(UserError, match=r"--reference 'agc' is not one of the compared clipper specs"):
        run_compare(BASE, _specs("none,zclip"), 2, folds=FOLDS, out=tmp_path / "c", workers=1,
                    runner=TableRunner(), log=None, reference="agc")
    assert not (tmp_path / "c").exists()


def test_paired_statistics_for_a_lower_is_better_metric():
    from agents.compare_report import paired_report

    df = pd.DataFrame({
        "clip": ["ref"] * 3 + ["arm"] * 3, "seed": [0, 1, 2] * 2, "fold": [0] * 6, "status": ["ok"] * 6,
        "test_shortfall_bps": [10.0, 12.0, 8.0, 7.0, 13.0, 5.0],
    })
    table, deltas = paired_report(df, ["ref", "arm"], metric="shortfall_bps", reference="ref",
                                  lower_is_better=True)
    arm = table.set_index("clip").loc["arm"]
    # Lower is better: 2 wins (7 < 10, 5 < 8), 1 loss; the difference stays in bp (arm - ref).
    assert (arm["wins"], arm["losses"]) == (2, 1) and arm["delta"] == pytest.approx((-3 + 1 - 3) / 3)
    assert arm["poi"] == pytest.approx(2 / 3) and arm["delta_low"] <= arm["delta"] <= arm["delta_high"]
    assert list(deltas.iloc[3:]) == pytest.approx([-3.0, 1.0, -3.0])


def test_summary_shows_every_baseline_on_the_same_folds():
    """Walk-forward mean ± std of the agent next to buy-and-hold, trend (and oracle), one value per fold."""
    from agents.compare_report import summarize

    rows = []
    for fold, (bh, tr) in enumerate([(0.10, -0.20), (0.30, 0.40)]):
        for seed in (0, 1):
            rows.append(
                {
                    "clip": "zclip", "fold": fold, "seed": seed, "status": "ok", "diverged": False,
                    "test_total_return": 0.01 * (seed + fold), "test_sharpe": 0.5 * seed,
                    "test_turnover_per_year": 10.0,
                    "baseline_buy_and_hold_total_return": bh, "baseline_buy_and_hold_sharpe": 1.0,
                    "baseline_buy_and_hold_turnover_per_year": 1.0,
                    "baseline_trend_total_return": tr, "baseline_trend_sharpe": -1.0 + fold,
                    "baseline_trend_turnover_per_year": 20.0 + fold,
                    "baseline_flat_total_return": 0.0, "baseline_flat_sharpe": 0.0,
                    "baseline_flat_turnover_per_year": 0.0,
                }
            )
    cols = (("total_return", "r", 4), ("sharpe", "s", 2), ("turnover_per_year", "t", 0))
    s = summarize(pd.DataFrame(rows), columns=cols).set_index("clip")
    assert list(s.index) == ["zclip", "(buy & hold)", "(trend)"]  # flat: never a row
    assert s.loc["(trend)", "runs"] == 2  # one per test period, not per run
    assert s.loc["(trend)", "total_return_mean"] == pytest.approx(0.10)
    assert s.loc["(trend)", "total_return_std"] == pytest.approx(np.std([-0.2, 0.4], ddof=1))
    assert s.loc["(trend)", "turnover_per_year_mean"] == pytest.approx(20.5)
    assert s.loc["zclip", "total_return_mean"] == pytest.approx(0.01)


def test_loss_spikes_and_validation_auc_from_progress_csv(tmp_path):
    from agents.compare_outcome import loss_and_validation_stability, read_progress

    rows = [{"eval/sharpe": 0.0}]  # step 0: validated before any training row
    for i in range(1, 21):
        rows.append({"time/total_timesteps": 100 * i, "train/value_loss": 1.0 + 0.01 * i, "train/loss": 0.5})
        if i % 10 == 0:
            rows.append({"eval/sharpe": i / 10})  # dumped after the training row of step 100 * i
    rows[5]["train/value_loss"] = 50.0  # one spike
    pd.DataFrame(rows).to_csv(tmp_path / "progress.csv", index=False)
    out = loss_and_validation_stability(read_progress(tmp_path))
    assert out["loss_spikes_value_loss"] == 1 and out["loss_spikes_loss"] == 0
    # Curve (0, 0), (1000, 1), (2000, 2): trapezoids 500 + 1500 over 2000 steps = 1.0.
    assert out["val_auc_sharpe"] == pytest.approx(1.0)
    assert read_progress(tmp_path / "missing") is None
    assert loss_and_validation_stability(None) == {}


def test_gradient_norm_against_market_stress_correlation(tmp_path):
    from agents.compare_outcome import loss_and_validation_stability, read_progress

    stress = [0.01, 0.05, 0.02, 0.08, 0.03]
    rows = [
        {"clip/value/grad_norm": 10 * s, "clip/policy/grad_norm": -s, "train/batch_abs_return_max": s}
        for s in stress
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "progress.csv", index=False)
    out = loss_and_validation_stability(read_progress(tmp_path))
    assert out["grad_return_corr_value"] == pytest.approx(1.0)
    assert out["grad_return_corr_policy"] == pytest.approx(-1.0)


def test_workers_show_warnings_the_way_the_parent_does(monkeypatch):
    """Spawned compare workers get the parent's ``warnings.showwarning`` (the CLI's one-line format) when it
    can be shipped to them, and keep Python's default when it cannot (a closure)."""
    import warnings

    from agents import cli
    from agents.compare_backends import _shippable_showwarning, worker_init

    monkeypatch.setattr(warnings, "showwarning", cli._one_line_warning)
    assert _shippable_showwarning() is cli._one_line_warning
    monkeypatch.setattr(warnings, "showwarning", lambda *a, **k: None)
    assert _shippable_showwarning() is None
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, ""))  # worker_init sets them: restored after the test
    threads = torch.get_num_threads()
    try:
        worker_init(None, cli._one_line_warning)
        assert warnings.showwarning is cli._one_line_warning
    finally:
        torch.set_num_threads(threads)


def test_plot_of_a_compare_where_every_run_failed(tmp_path):
    """No finished run: the plot is drawn empty instead of failing on an object-dtype column."""
    from agents.compare_report import plot_metric

    df = pd.DataFrame(
        {"clip": ["none", "zclip"], "status": ["failed", "failed"], "test_sharpe": [None, None]}
    )
    path = plot_metric(df, tmp_path / "test_sharpe.png", order=["none", "zclip"])
    assert path.is_file()
    df = df.drop(columns="test_sharpe")  # and a results.csv without the metric column at all
    assert plot_metric(df, tmp_path / "again.png", order=["none", "zclip"]).is_file()
