"""train.py tune: the search-space grammar, nested folds, nesting (checked with a spy runner), resume,
seeded search, one real tune through ``python train.py`` and one on a local Ray instance.

Most tests use :class:`SpyRunner`, a stand-in for agents.run whose test metric is a known function of the
clipper's keywords and which records every period it trains and evaluates on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cli_helpers import TINY_RUN, assert_user_error, run_cli

from agents.compare_spec import ClipPart
from agents.errors import UserError
from agents.tune import nested_folds, run_tune
from agents.tune_space import check_space, default_space, parse_space

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------------
# A spy stand-in for agents.run (module level: picklable for worker processes)


@dataclass(frozen=True)
class SpyTrain:
    run_dir: Path
    wall_time_s: float = 0.0
    timesteps: int = 1
    diverged: bool = False
    diverged_reason: str | None = None
    clip_fraction: dict[str, float] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False


@dataclass(frozen=True)
class SpyEval:
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    positions: Any = None


#: The setting the spy's metric peaks at (zclip's keywords); the untuned zclip (2.5, 0.97) scores ~0.6 below.
OPTIMUM = {"z_thresh": 3.2, "alpha": 0.9}


def spy_metric(name: str, kwargs: dict[str, Any], seed: int, start: int) -> float:
    """A smooth bowl around :data:`OPTIMUM` (0 for ``none``), plus a little noise from the seed and the
    period, so seeds and folds differ as real runs do."""
    z, a = kwargs.get("z_thresh", 2.5), kwargs.get("alpha", 0.97)
    bowl = (
        1.0 - (z - OPTIMUM["z_thresh"]) ** 2 - 20.0 * (a - OPTIMUM["alpha"]) ** 2 if name == "zclip" else 0.0
    )
    return bowl + 0.01 * float(np.random.default_rng([seed, start]).standard_normal())


@dataclass(frozen=True)
class SpyRunner:
    """Records the ranges of every train and evaluate call, one JSON line each, in ``<out>/spy.log``."""

    def _log(self, run_dir: Path, what: str, data: dict[str, Any]) -> None:
        with open(run_dir.parent / "spy.log", "a") as fh:
            rec = {
                "run": run_dir.name,
                "what": what,
                **{k: data.get(f"{k}_range") for k in ("train", "val", "test")},
            }
            fh.write(json.dumps(rec) + "\n")

    def train(self, config: dict[str, Any], run_dir: Path) -> SpyTrain:
        run_dir = Path(run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(f"{run_dir} is not empty")  # a tune must never reuse a run folder
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps(config))
        self._log(run_dir, "train", config["data"])
        return SpyTrain(run_dir)

    def evaluate(self, run_dir: Path) -> SpyEval:
        run_dir = Path(run_dir)
        config = json.loads((run_dir / "config.json").read_text())
        # What the real runner's evaluate(split="test") sees: the run's test range, nothing else.
        self._log(run_dir, "evaluate", {"test_range": config["data"]["test_range"]})
        clip = config["clip"]
        value = spy_metric(
            clip["policy"], clip["policy_kwargs"], config["algo"]["seed"], config["data"]["test_range"][0]
        )
        return SpyEval({"sharpe": value, "total_return": value / 10})


def _spy_log(out: Path) -> list[dict[str, Any]]:
    path = out / "spy.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


BASE = {
    "algo": {"algo": "ppo", "timesteps": 64, "seed": 0},
    "clip": {},
    "data": {"data": "btcusdt-perp-1h-2025"},
}
SPACE = "z_thresh=float:1.5:4,alpha=float:0.8:0.99"


def _tune(out: Path, space: str = SPACE, **kw: Any) -> Any:
    opts = dict(
        trials=3,
        seeds=2,
        outer_folds=2,
        inner_folds=2,
        n_bars=1000,
        workers=1,
        runner=SpyRunner(),
        log=None,
        out=out,
    )
    opts.update(kw)
    return run_tune(BASE, "zclip", space, **opts)


# ----------------------------------------------------------------------------------------------------
# The search space


def test_parse_space_kinds_and_aliases():
    space = parse_space(
        "z_thresh=float:1.5:4, max_norm=log:0.01:10,warmup_steps=int:5:50,mode=cat:zscore|percentile"
    )
    assert [(p.name, p.kind) for p in space] == [
        ("z_thresh", "float"),
        ("max_norm", "logfloat"),
        ("warmup_steps", "int"),
        ("mode", "choice"),
    ]
    assert space[0].low == 1.5 and space[0].high == 4.0
    assert space[2].low == 5 and isinstance(space[2].low, int)
    assert space[3].choices == ("zscore", "percentile")
    dist = space[1].distribution()
    assert dist.log and dist.low == 0.01


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "--space is empty"),
        ("z_thresh", "expected key=kind"),
        ("z_thresh=uniform:1:2", "unknown kind 'uniform'"),
        ("z_thresh=float:1", "two bounds"),
        ("z_thresh=float:a:2", "'a' is not a number"),
        ("z_thresh=float:3:2", "must be below"),
        ("max_norm=logfloat:0:1", "low bound > 0"),
        ("warmup_steps=int:1.5:4", "not an integer"),
        ("mode=choice:", "separated by '|'"),
        ("mode=choice:a|a", "listed twice"),
        ("alpha=float:0.8:0.9,alpha=float:0.1:0.2", "more than once"),
        ("z_thresh=float:1:inf", "must be finite"),
    ],
)
def test_parse_space_errors_name_the_entry(text, needle):
    with pytest.raises(ValueError, match=None) as info:
        parse_space(text)
    assert needle in str(info.value)


def test_space_is_checked_by_constructing_the_clipper():
    for name in ("norm", "zclip", "autoclip", "quantile", "agc", "value"):
        check_space(ClipPart(name), default_space(name))  # the default spaces are valid
    with pytest.raises(ValueError, match="unknown keyword 'alpah'.*did you mean 'alpha'"):
        check_space(ClipPart("zclip"), parse_space("alpah=float:0.5:0.9"))
    with pytest.raises(ValueError, match=r"alpha=float:0.5:1.5.*alpha must be"):
        check_space(ClipPart("zclip"), parse_space("alpha=float:0.5:1.5"))
    with pytest.raises(ValueError, match=r"searches \['alpha'\], which --clip 'zclip:alpha=0.9' also fixes"):
        check_space(ClipPart("zclip", (("alpha", 0.9),)), parse_space("alpha=float:0.5:0.9"))
    with pytest.raises(ValueError, match="no default search space; give one with --space"):
        default_space("none")


def test_run_tune_rejects_bad_options_before_running(tmp_path):
    out = tmp_path / "t"
    with pytest.raises(UserError, match="no parameter to tune"):
        run_tune(BASE, "none", None, n_bars=1000, runner=SpyRunner(), log=None, out=out)
    with pytest.raises(UserError, match="one clipper used for both"):
        run_tune(BASE, "norm/zclip", None, n_bars=1000, runner=SpyRunner(), log=None, out=out)
    with pytest.raises(UserError, match="--trials must be"):
        _tune(out, trials=0)
    with pytest.raises(UserError, match="inner folds do not fit"):
        _tune(out, inner_folds=5, inner_bars=200)
    with pytest.raises(UserError, match="'default' is given twice"):
        _tune(out, against="default,none,default")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------
# Nesting


@pytest.mark.parametrize("mode", ["expanding", "rolling"])
def test_nested_folds_stay_inside_the_outer_training_window(mode):
    folds = nested_folds(2000, 3, 2, mode=mode, val_bars=30, gap=7, inner_bars=150)
    assert len(folds) == 3
    for f in folds:
        a, b = f.search_window
        assert a == f.outer.train[0] and b == f.outer.val[1] and b + 7 == f.outer.test[0]
        assert len(f.inner) == 2
        for g in f.inner:
            for rng in (g.train, g.val, g.test):
                assert a <= rng[0] < rng[1] <= b
            assert g.test[1] - g.test[0] == 150 and g.val[1] + 7 == g.test[0]
        assert f.inner[-1].test[1] == b  # the last inner period ends where the search window ends


def test_outer_test_period_never_reaches_the_search(tmp_path):
    """The spy records every period each run trains, validates and is evaluated on: no run of outer fold k's
    search touches outer test k (nor its gap), and only the final runs are evaluated on outer test periods."""
    out = tmp_path / "t"
    res = _tune(out, val_bars=20, gap=5, batch=2)
    log = _spy_log(out)
    folds = nested_folds(1000, 2, 2, val_bars=20, gap=5)
    outer_tests = {tuple(f.outer.test) for f in folds}
    n_inner = 0
    for rec in log:
        k = int(rec["run"].split("__")[0].removeprefix("outer"))
        test_k = folds[k].outer.test
        ranges = [r for r in (rec["train"], rec["val"], rec["test"]) if r]
        if "__inner" in rec["run"]:
            n_inner += 1
            for r in ranges:  # every bar it trains, validates or is evaluated on lies before test k's gap
                assert r[1] <= test_k[0] - 5, (rec, test_k)
            assert tuple(rec["test"]) not in outer_tests
        else:
            assert "__test__" in rec["run"]
            if rec["what"] == "evaluate":
                assert tuple(rec["test"]) == tuple(test_k)
    evaluated_outer = {
        tuple(r["test"]) for r in log if r["what"] == "evaluate" and tuple(r["test"]) in outer_tests
    }
    assert evaluated_outer == outer_tests
    # 3 trials x 2 inner folds x 2 seeds per outer fold, trained and evaluated once each
    assert n_inner == 2 * (2 * 3 * 2 * 2)
    # tuned + default + none on each outer fold x seed
    assert len(res.results) == 3 * 2 * 2 and set(res.results["arm"]) == {"tuned", "default", "none"}
    assert (res.results.groupby("arm").size() == 4).all()


# ----------------------------------------------------------------------------------------------------
# Resume, determinism, the search itself


def test_resume_runs_nothing_new_and_extends_the_search(tmp_path):
    out = tmp_path / "t"
    first = _tune(out)
    assert first.n_ran > 0
    files = {n: (out / n).read_text() for n in ("trials.csv", "results.csv")}
    again = _tune(out)
    assert again.n_ran == 0 and again.chosen == first.chosen
    assert {n: (out / n).read_text() for n in files} == files
    # A tune killed between ask and tell leaves a RUNNING trial: the next call completes it from the store.
    import optuna

    study = optuna.load_study(study_name="outer0", storage=f"sqlite:///{out / 'optuna.db'}")
    dists = {p.name: p.distribution() for p in parse_space(SPACE)}
    study.ask(dists)
    more = _tune(out, trials=4)
    trials = more.trials.groupby("outer_fold")["state"].agg(list)
    assert all(states == ["complete"] * 4 for states in trials)
    # Only the new trials' runs (2 inner folds x 2 seeds each, 2 outer folds) and new finals ran.
    assert 8 <= more.n_ran <= 8 + 2 * 2 * 1
    with pytest.raises(UserError, match="other settings"):
        _tune(out, space="z_thresh=float:1.5:3")


def test_search_finds_the_optimum_and_is_seeded(tmp_path):
    """The spy's metric is a known bowl: TPE finds its neighbourhood and the tuned setting beats the untuned
    one on the outer test; the sampler is seeded per trial, so a shorter search in another folder makes the
    same first trials, and another --sampler-seed other ones."""
    kw = dict(seeds=1, outer_folds=1, inner_folds=1)
    a = _tune(tmp_path / "a", trials=25, **kw)
    chosen = a.chosen[0]
    assert abs(chosen["z_thresh"] - OPTIMUM["z_thresh"]) < 0.5
    assert abs(chosen["alpha"] - OPTIMUM["alpha"]) < 0.04
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert "## Paired comparison with `default`" in summary and "| `tuned` | 1 |" in summary
    assert a.paired.set_index("clip").loc["tuned", "delta"] > 0
    b = _tune(tmp_path / "b", trials=8, **kw)
    pd.testing.assert_frame_equal(b.trials, a.trials.iloc[:8])
    c = _tune(tmp_path / "c", trials=2, sampler_seed=1, **kw)
    assert not np.allclose(c.trials["param_z_thresh"], a.trials["param_z_thresh"].iloc[:2])


def test_failed_trials_are_not_chosen(tmp_path):
    """A setting whose runs fail makes its trial fail; the fold keeps the best of the others."""

    out = tmp_path / "t"
    res = _tune(out, runner=FailingSpy(), trials=4, seeds=1, outer_folds=1, inner_folds=1)
    states = res.trials["state"].tolist()
    assert "fail" in states and "complete" in states
    assert res.chosen[0]["z_thresh"] <= 3.0
    assert res.trials.loc[res.trials["state"] == "fail", "note"].str.contains("failed").all()


@dataclass(frozen=True)
class FailingSpy(SpyRunner):
    """Fails every run whose z_thresh is above 3."""

    def train(self, config: dict[str, Any], run_dir: Path) -> SpyTrain:
        if config["clip"]["policy_kwargs"].get("z_thresh", 0) > 3.0:
            raise RuntimeError("boom")
        return super().train(config, run_dir)


# ----------------------------------------------------------------------------------------------------
# Command line: errors, one real tune, Ray


def test_cli_bad_space_is_a_one_line_error(tmp_path):
    proc = run_cli("tune", "--clip", "zclip", "--space", "z_thresh=uniform:1:2", cwd=tmp_path)
    assert_user_error(proc, "--space", "uniform")
    assert not (tmp_path / "runs").exists()


#: A real tune small enough for CI: 1 outer fold, 1 inner fold, 1 seed, 2 trials, a tiny PPO.
TINY = (
    "--clip",
    "norm",
    "--space",
    "max_norm=logfloat:0.05:5",
    "--trials",
    "2",
    "--batch",
    "2",
    "--seeds",
    "1",
    "--outer-folds",
    "1",
    "--inner-folds",
    "1",
    "--metric",
    "total_return",
    "--against",
    "default",
    *TINY_RUN,
    "--env",
    "window=8,episode_bars=64,execution={deadband: 0}",  # deadband 0: the tiny agents trade
)


@pytest.mark.slow
def test_cli_real_tune_end_to_end(tmp_path):
    out = tmp_path / "t"
    proc = run_cli("tune", *TINY, "--workers", "1", "--out", str(out), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and (trials["state"] == "complete").all()
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["arm"]) == ["default", "tuned"] and (results["status"] == "ok").all()
    assert np.isfinite(results["test_total_return"]).all()
    tuned = results[results["arm"] == "tuned"].iloc[0]
    assert tuned["train_stop"] <= tuned["test_start"]
    assert list((out / tuned["run"]).rglob("events.out.tfevents.*"))
    assert "Chosen setting and outer test per fold" in (out / "summary.md").read_text()
    assert (out / "optuna.db").exists() and (out / "tune.json").exists()
    proc = run_cli("tune", *TINY, "--workers", "1", "--out", str(out), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "tune: 0 run(s) ran" in proc.stdout


@pytest.mark.slow
def test_ray_tune_matches_worker_processes(tmp_path, ray_head):
    """The same tiny real tune on a local Ray instance and in worker processes: same trials, same chosen
    setting, same outer test results (runs are seeded; the sampler is seeded per trial)."""
    ray, address = ray_head
    from agents.cli import build_parser
    from agents.compare import AgentsRunner, build_base_config

    args = build_parser().parse_args(["tune", *TINY])
    base = build_base_config(args)
    kw = dict(
        trials=2,
        batch=2,
        seeds=1,
        outer_folds=1,
        inner_folds=1,
        metric="total_return",
        against="default",
        runner=AgentsRunner(),
        log=None,
    )
    local = run_tune(base, "norm", "max_norm=logfloat:0.05:5", out=tmp_path / "proc", workers=2, **kw)
    remote = run_tune(
        base, "norm", "max_norm=logfloat:0.05:5", out=tmp_path / "ray", ray_address=address, **kw
    )
    assert not ray.is_initialized()  # connected for the tune, disconnected after it
    assert remote.chosen == local.chosen and remote.n_ran == local.n_ran == 4
    cols = ["objective", "param_max_norm", "state"]
    pd.testing.assert_frame_equal(remote.trials[cols], local.trials[cols])
    cols = ["arm", "clip", "seed", "fold", "status", "test_total_return"]
    pd.testing.assert_frame_equal(remote.results[cols], local.results[cols])
