"""Statistics for the clipping study: robust aggregates, stratified bootstrap CIs, paired tests, stability.

Pure functions of numpy arrays (numpy + scipy only; no SB3, torch or pandas), seeded, so that
``train.py compare`` can report every number with its uncertainty and rerun to the same digits.

Vocabulary. A *run* is one training run (one seed, one fold, one market, one clipper arm) and gives one
score. A *stratum* is the group inside which runs are exchangeable - a task, a walk-forward fold, a market:
the bootstrap resamples runs *within* each stratum and never mixes them, exactly as rliable's
``StratifiedBootstrap`` resamples runs within each task. A *cell* is a (seed, fold, market) combination:
two arms that were run on the same cells are *paired*, and paired statistics work on the per-cell
differences.

Where the definitions come from:

* IQM, stratified bootstrap percentile CIs and the average probability of improvement follow Agarwal,
  Schwarzer, Castro, Courville & Bellemare, "Deep Reinforcement Learning at the Edge of the Statistical
  Precipice", NeurIPS 2021 (https://arxiv.org/abs/2108.13264) and their library ``rliable``
  (``metrics.aggregate_iqm``, ``metrics.probability_of_improvement``, ``library.StratifiedBootstrap``).
  ``rliable`` itself is not used: it pulls in ``arch``, ``seaborn`` and ``absl`` for what is ~100 lines
  here, and its bootstrap draws from numpy's global RNG; this module takes a seed instead.
* Holm, "A Simple Sequentially Rejective Multiple Test Procedure", Scand. J. Statist. 6 (1979) 65-70.
* Wilcoxon, "Individual Comparisons by Ranking Methods", Biometrics Bulletin 1 (1945) 80-83 (via
  ``scipy.stats.wilcoxon``); the sign-flip permutation test is Fisher's randomization test for paired
  data (Good, "Permutation, Parametric and Bootstrap Tests of Hypotheses", 3rd ed., Springer 2005, ch. 3).
* Hill, "A Simple General Approach to Inference About the Tail of a Distribution", Ann. Statist. 3
  (1975) 1163-1174. Heavy-tailed gradient norms in deep learning: Simsekli, Sagun & Gurbuzbalaban,
  "A Tail-Index Analysis of Stochastic Gradient Noise in Deep Neural Networks", ICML 2019.
* Spikes above median + k * MAD: Hampel, "The Influence Curve and its Role in Robust Estimation", JASA 69
  (1974) 383-393 (the MAD here is the raw median absolute deviation, *not* scaled by 1.4826).

Conventions: inputs are array-likes of finite floats (``ValueError`` naming the argument otherwise, except
in the per-update stability metrics, whose job is partly to count non-finite entries); ``strata`` is a
sequence of hashable labels, one per value (``None``: one stratum); random functions take ``seed`` (an
``int`` or a ``numpy.random.Generator``) and return the same result for the same seed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

__all__ = [
    "Comparison",
    "Dispersion",
    "Interval",
    "count_spikes",
    "dispersion",
    "divergence_rate",
    "excess_kurtosis",
    "grad_norm_return_correlation",
    "hill_tail_index",
    "holm",
    "iqm",
    "iqm_ci",
    "normalized_auc",
    "paired_comparison",
    "paired_difference_ci",
    "paired_probability_of_improvement",
    "paired_probability_of_improvement_ci",
    "probability_of_improvement",
    "probability_of_improvement_ci",
    "sign_flip_p_value",
    "stability_summary",
    "stratified_bootstrap_ci",
    "wilcoxon_p_value",
]

Seed = int | np.random.Generator
Statistic = Callable[..., Any]

#: Most float64 values drawn per bootstrap chunk (~16 MB), so that many replicates of many runs fit in memory.
_CHUNK_ELEMENTS = 2_000_000
#: The sign-flip test enumerates all 2**n sign patterns up to this n, and samples them beyond.
_EXACT_SIGN_FLIP_MAX_N = 16


# ----------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile confidence interval.

    Attributes:
        estimate: The statistic on the data as given.
        low: Lower end, the ``(1 - confidence) / 2`` quantile of the bootstrap distribution.
        high: Upper end, the ``(1 + confidence) / 2`` quantile.
        confidence: Nominal coverage, e.g. 0.95.
        n_boot: Number of bootstrap replicates.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n_boot: int

    def as_dict(self) -> dict[str, float]:
        """``{"estimate", "low", "high"}`` (e.g. for one results-table row)."""
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Dispersion:
    """Across-seed spread of one final metric: median, interquartile range and min-max."""

    median: float
    iqr: float
    min: float
    max: float

    @property
    def range(self) -> float:
        """``max - min``."""
        return self.max - self.min


@dataclass(frozen=True)
class Comparison:
    """One arm against the reference arm on the same cells (see :func:`paired_comparison`).

    Attributes:
        name: The arm.
        n: Number of paired cells.
        mean_diff: Mean of the per-cell differences ``arm - reference``.
        median_diff: Their median.
        diff_ci: Stratified bootstrap CI of ``mean_diff``.
        wins, losses, ties: Cells where the arm scored higher / lower / equal.
        prob_improvement: Paired probability of improvement (ties count one half), averaged over strata.
        p_value: Two-sided p-value of the paired test (``test``), uncorrected.
        p_holm: Holm-adjusted p-value across all arms compared in the same call.
        test: ``"wilcoxon"`` or ``"sign_flip"``.
    """

    name: str
    n: int
    mean_diff: float
    median_diff: float
    diff_ci: Interval
    wins: int
    losses: int
    ties: int
    prob_improvement: float
    p_value: float
    p_holm: float
    test: str

    def as_dict(self) -> dict[str, Any]:
        """A flat row (the CI as ``diff_low``/``diff_high``), e.g. for a CSV or Markdown table."""
        return {"name": self.name, "n": self.n, "mean_diff": self.mean_diff, "diff_low": self.diff_ci.low,
                "diff_high": self.diff_ci.high, "median_diff": self.median_diff, "wins": self.wins,
                "losses": self.losses, "ties": self.ties, "prob_improvement": self.prob_improvement,
                "p_value": self.p_value, "p_holm": self.p_holm, "test": self.test}


# -------------------------------------------------------------------------------------- validation
def _vector(x: Any, arg: str, *, min_size: int = 1, finite: bool = True) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{arg} must be a 1-D array of numbers, got {type(x).__name__} {x!r:.80}") from None
    if a.ndim != 1:
        raise ValueError(f"{arg} must be 1-D (one value per run/update), got shape {a.shape}; flatten it "
                         "and pass the grouping as strata")
    if a.size < min_size:
        raise ValueError(f"{arg} needs at least {min_size} value(s), got {a.size}")
    if finite and not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a))
        raise ValueError(f"{arg} has {bad.size} non-finite value(s) (first at index {int(bad[0])}: "
                         f"{a[bad[0]]}); drop or impute them first (e.g. count the run as diverged)")
    return a


def _groups(n: int, strata: Sequence[Hashable] | None, arg: str) -> dict[Hashable, np.ndarray]:
    """Stratum label -> indices into the values, in order of first appearance."""
    if strata is None:
        return {None: np.arange(n)}
    labels = list(strata)
    if len(labels) != n:
        raise ValueError(f"{arg} has {len(labels)} labels but there are {n} values; give one label per value")
    out: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        out.setdefault(label, []).append(i)
    return {k: np.asarray(v) for k, v in out.items()}


def _rng(seed: Seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int or a numpy Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_boot(n_boot: Any, confidence: Any) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}; e.g. n_boot=2000")
    if not (isinstance(confidence, (float, int)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}; e.g. confidence=0.95")


def _percentile_interval(estimate: float, boot: np.ndarray, confidence: float) -> Interval:
    low, high = np.quantile(boot, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return Interval(float(estimate), float(low), float(high), float(confidence), int(boot.size))


def _chunks(n_boot: int, width: int) -> list[int]:
    per = max(1, _CHUNK_ELEMENTS // max(width, 1))
    return [min(per, n_boot - start) for start in range(0, n_boot, per)]


# ------------------------------------------------------------------------------------- aggregates
def iqm(x: Any, axis: int | None = None) -> Any:
    """Interquartile mean: the mean of the values left after trimming 25 % from each end.

    rliable's definition (``scipy.stats.trim_mean(x, 0.25)``): ``int(0.25 * n)`` values are cut from each
    end, so for ``n`` not divisible by 4 slightly less than a quarter goes (``n = 10``: 2 each side, the
    mean of the middle 6). Robust to outlier runs like the median, yet it uses half of the data.

    Args:
        x: Values (pooled over runs and strata, as rliable pools runs x tasks).
        axis: Axis to reduce (``None``: all values, a float). With an axis: an array, which is how the
            bootstrap calls it on a (replicates, runs) matrix.

    Returns:
        The IQM (a float for ``axis=None``).
    """
    if axis is None:
        return float(scipy.stats.trim_mean(_vector(np.ravel(np.asarray(x, dtype=np.float64)), "x"), 0.25))
    return scipy.stats.trim_mean(np.asarray(x, dtype=np.float64), 0.25, axis=axis)


def _apply(statistic: Statistic, samples: np.ndarray) -> np.ndarray:
    out = np.asarray(statistic(samples, axis=-1), dtype=np.float64)
    if out.shape != samples.shape[:-1]:
        raise ValueError(f"statistic must reduce the last axis like np.mean(x, axis=-1); {statistic!r} "
                         f"returned shape {out.shape} for input shape {samples.shape}")
    return out


def stratified_bootstrap_ci(
    values: Any,
    strata: Sequence[Hashable] | None = None,
    *,
    statistic: Statistic = iqm,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: Seed = 0,
) -> Interval:
    """Percentile CI of ``statistic(values)``, resampling runs with replacement within each stratum.

    Each replicate draws, in every stratum independently, as many runs as the stratum has (with
    replacement), pools the draws and applies ``statistic`` - rliable's ``StratifiedBootstrap`` with
    ``method="percentile"``. Strata are never mixed, so the replicate keeps the design (e.g. 5 seeds on
    each of 3 markets) and a market that is simply harder does not inflate the interval.

    Args:
        values: One score per run.
        strata: One label per run (task / fold / market); ``None``: a single stratum (plain bootstrap).
        statistic: Reduces the last axis of an array (``iqm``, ``np.mean``, ``np.median`` ...); it is
            called once on the data (as a 1 x n array) and on (replicates x n) matrices.
        n_boot: Number of replicates.
        confidence: Nominal coverage of the interval.
        seed: Seed (or Generator) of the resampling.

    Returns:
        :class:`Interval` with ``estimate = statistic(values)``.
    """
    x = _vector(values, "values")
    groups = list(_groups(x.size, strata, "strata").values())
    _check_boot(n_boot, confidence)
    rng = _rng(seed)
    estimate = _apply(statistic, x[None, :])[0]
    boot = []
    for size in _chunks(n_boot, x.size):
        draws = [x[g[rng.integers(0, g.size, size=(size, g.size))]] for g in groups]
        boot.append(_apply(statistic, np.concatenate(draws, axis=1)))
    return _percentile_interval(estimate, np.concatenate(boot), confidence)


def iqm_ci(
    values: Any,
    strata: Sequence[Hashable] | None = None,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: Seed = 0,
) -> Interval:
    """IQM with its stratified bootstrap percentile CI (see :func:`stratified_bootstrap_ci`)."""
    return stratified_bootstrap_ci(values, strata, statistic=iqm, n_boot=n_boot, confidence=confidence,
                                   seed=seed)


def _paired(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vector(x, "x"), _vector(y, "y")
    if a.size != b.size:
        raise ValueError(f"paired data: x has {a.size} values and y has {b.size}; pass one value per cell, "
                         "in the same cell order (same seed, fold, market at each position)")
    return a, b


def paired_difference_ci(
    x: Any,
    y: Any,
    strata: Sequence[Hashable] | None = None,
    *,
    statistic: Statistic = np.mean,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: Seed = 0,
) -> Interval:
    """CI of ``statistic(x - y)`` over paired cells, resampling cells within strata.

    Resampling whole cells keeps each pair together, so the between-cell variation that both arms share
    (an easy market, a lucky seed) cancels - the reason to run arms on the same cells.

    Args:
        x, y: One score per cell for each arm, same cell at the same position.
        strata: One label per cell; ``None``: one stratum.
        statistic: Reduction of the differences (default ``np.mean``; ``iqm`` and ``np.median`` work).
        n_boot, confidence, seed: As in :func:`stratified_bootstrap_ci`.
    """
    a, b = _paired(x, y)
    return stratified_bootstrap_ci(a - b, strata, statistic=statistic, n_boot=n_boot, confidence=confidence,
                                   seed=seed)


# ---------------------------------------------------------------------- probability of improvement
def _prob_greater(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + 0.5 P(X = Y) over the last two axes' pairs: ``U / (n m)`` of Mann-Whitney."""
    gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return gt + 0.5 * eq


def _matched_groups(x: np.ndarray, y: np.ndarray, x_strata: Any, y_strata: Any) -> list[tuple[Any, Any]]:
    gx, gy = _groups(x.size, x_strata, "x_strata"), _groups(y.size, y_strata, "y_strata")
    if set(gx) != set(gy):
        only_x, only_y = set(gx) - set(gy), set(gy) - set(gx)
        raise ValueError(f"x and y must cover the same strata; only in x: {sorted(map(str, only_x))}, only "
                         f"in y: {sorted(map(str, only_y))}")
    return [(gx[k], gy[k]) for k in gx]


def probability_of_improvement(
    x: Any, y: Any, x_strata: Sequence[Hashable] | None = None, y_strata: Sequence[Hashable] | None = None
) -> float:
    """Average probability of improvement P(X > Y), rliable's definition.

    In each stratum, the probability that a random run of X beats a random run of Y, ties counting one half
    - the Mann-Whitney ``U`` statistic divided by ``n_x * n_y`` - then the plain mean over strata (each task
    weighs the same whatever its number of runs). ``P(X > Y) + P(Y > X) = 1``. Unpaired: the runs of X
    and Y need not share seeds; see :func:`paired_probability_of_improvement` for paired cells.

    Args:
        x, y: Scores of the runs of each arm.
        x_strata, y_strata: Their stratum labels (the same set of strata); ``None``: one stratum.
    """
    a, b = _vector(x, "x"), _vector(y, "y")
    per = [_prob_greater(a[ix], b[iy]) for ix, iy in _matched_groups(a, b, x_strata, y_strata)]
    return float(np.mean(per))


def probability_of_improvement_ci(
    x: Any,
    y: Any,
    x_strata: Sequence[Hashable] | None = None,
    y_strata: Sequence[Hashable] | None = None,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: Seed = 0,
) -> Interval:
    """:func:`probability_of_improvement` with a stratified bootstrap CI.

    X and Y are resampled independently, each within its strata (rliable's
    ``StratifiedIndependentBootstrap``).
    """
    a, b = _vector(x, "x"), _vector(y, "y")
    pairs = _matched_groups(a, b, x_strata, y_strata)
    _check_boot(n_boot, confidence)
    rng = _rng(seed)
    estimate = float(np.mean([_prob_greater(a[ix], b[iy]) for ix, iy in pairs]))
    width = max(ix.size * iy.size for ix, iy in pairs)
    boot = []
    for size in _chunks(n_boot, width):
        per = []
        for ix, iy in pairs:
            xs = a[ix[rng.integers(0, ix.size, size=(size, ix.size))]]
            ys = b[iy[rng.integers(0, iy.size, size=(size, iy.size))]]
            per.append(_prob_greater(xs, ys))
        boot.append(np.mean(per, axis=0))
    return _percentile_interval(estimate, np.concatenate(boot), confidence)


def _win_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a > b) + 0.5 * (a == b)


def paired_probability_of_improvement(x: Any, y: Any, strata: Sequence[Hashable] | None = None) -> float:
    """Paired probability of improvement: share of cells where X beats Y (ties: one half), mean over strata.

    For arms run on the same (seed, fold) cells within each market: compares each cell with its own twin
    instead of with every run of the other arm, so the shared luck of a cell cancels.

    Args:
        x, y: One score per cell for each arm, same cell at the same position.
        strata: One label per cell (e.g. the market); ``None``: one stratum.
    """
    a, b = _paired(x, y)
    w = _win_scores(a, b)
    return float(np.mean([w[g].mean() for g in _groups(a.size, strata, "strata").values()]))


def paired_probability_of_improvement_ci(
    x: Any,
    y: Any,
    strata: Sequence[Hashable] | None = None,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: Seed = 0,
) -> Interval:
    """:func:`paired_probability_of_improvement` with a CI that resamples cells within strata."""
    a, b = _paired(x, y)
    w = _win_scores(a, b)
    groups = list(_groups(a.size, strata, "strata").values())
    _check_boot(n_boot, confidence)
    rng = _rng(seed)
    estimate = float(np.mean([w[g].mean() for g in groups]))
    boot = []
    for size in _chunks(n_boot, a.size):
        per = [w[g[rng.integers(0, g.size, size=(size, g.size))]].mean(axis=1) for g in groups]
        boot.append(np.mean(per, axis=0))
    return _percentile_interval(estimate, np.concatenate(boot), confidence)


# --------------------------------------------------------------------------------- paired tests
def holm(p_values: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control, any dependence between tests).

    With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of the
    ``i``-th is ``max_{j <= i} min(1, (m - j + 1) p_(j))``; it is returned in the input order. Rejecting
    every hypothesis whose adjusted p-value is ``<= alpha`` is Holm's procedure at level ``alpha``.

    Args:
        p_values: Raw p-values in [0, 1].

    Returns:
        Adjusted p-values, same order and length; each ``>=`` its raw value, at most 1, and monotone in the
        raw values.
    """
    p = _vector(p_values, "p_values", min_size=0)
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"p_values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(stepped) if m else stepped
    return out


def wilcoxon_p_value(differences: Any) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (H0: symmetric about 0).

    ``scipy.stats.wilcoxon`` with its defaults (zero differences dropped - Wilcoxon's own convention -
    exact null distribution for small samples without ties, normal approximation otherwise). All
    differences zero: no evidence either way, ``1.0``.
    """
    d = _vector(differences, "differences")
    if not np.any(d):
        return 1.0
    return float(scipy.stats.wilcoxon(d).pvalue)


def sign_flip_p_value(differences: Any, *, n_perm: int = 10_000, seed: Seed = 0) -> float:
    """Two-sided paired permutation (sign-flip) p-value for the mean difference (H0: symmetric about 0).

    Under H0 each cell's difference is as likely to have either sign, so the observed ``|mean(d)|`` is
    compared with ``|mean(s * d)|`` over sign vectors ``s``: all ``2**n`` of them when ``n <= 16`` (exact),
    otherwise ``n_perm`` random ones plus the observed one, ``(1 + #{>=}) / (1 + n_perm)`` (a valid p-value,
    Phipson & Smyth 2010). Assumes less than the Wilcoxon test (no symmetric ranks), uses magnitudes.
    """
    d = _vector(differences, "differences")
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))  # equal means must count as ">=" despite rounding
    if d.size <= _EXACT_SIGN_FLIP_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d) / d.size >= observed - tol))
    if isinstance(n_perm, bool) or not isinstance(n_perm, (int, np.integer)) or n_perm < 1:
        raise ValueError(f"n_perm must be an integer >= 1, got {n_perm!r}")
    rng = _rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(int(n_perm), d.size))
    hits = int(np.sum(np.abs(signs @ d) / d.size >= observed - tol))
    return (1 + hits) / (1 + int(n_perm))


def paired_comparison(
    arms: Mapping[str, Any],
    reference: Any,
    strata: Sequence[Hashable] | None = None,
    *,
    test: str = "wilcoxon",
    n_boot: int = 2000,
    confidence: float = 0.95,
    n_perm: int = 10_000,
    seed: Seed = 0,
) -> list[Comparison]:
    """Compare each arm with a reference arm on the same cells, Holm-corrected across the arms.

    Per arm: the differences ``arm - reference`` cell by cell, their mean, median and stratified bootstrap
    CI, win/loss/tie counts, the paired probability of improvement and a two-sided p-value (``test``);
    then :func:`holm` over the arms' p-values (the family is this call's arms).

    Args:
        arms: Arm name -> one score per cell (e.g. ``{"zclip": [...], "autoclip": [...]}``).
        reference: The reference arm's scores on the same cells (e.g. ``norm:max_norm=0.5``).
        strata: One label per cell (the market, or market and fold); used by the CI and the probability of
            improvement. The tests treat cells as independent pairs.
        test: ``"wilcoxon"`` (:func:`wilcoxon_p_value`) or ``"sign_flip"`` (:func:`sign_flip_p_value`).
        n_boot, confidence: Of the CI of the mean difference.
        n_perm: Sign-flip samples when there are more than 16 cells.
        seed: Seed of the bootstrap and the sign-flip sampling. An int gives every arm the same resampled
            cells (common random numbers); a Generator is drawn from arm after arm.

    Returns:
        One :class:`Comparison` per arm, in the order of ``arms``.
    """
    if test not in ("wilcoxon", "sign_flip"):
        raise ValueError(f"test must be 'wilcoxon' or 'sign_flip', got {test!r}")
    if not arms:
        raise ValueError("arms is empty: pass at least one arm to compare with the reference")
    ref = _vector(reference, "reference")
    rows = []
    for name, scores in arms.items():
        try:
            a, b = _paired(scores, ref)
        except ValueError as err:
            raise ValueError(f"arm {name!r} against the reference: {err}") from None
        d = a - b
        ci = paired_difference_ci(a, b, strata, n_boot=n_boot, confidence=confidence, seed=seed)
        p = wilcoxon_p_value(d) if test == "wilcoxon" else sign_flip_p_value(d, n_perm=n_perm, seed=seed)
        rows.append((name, d, ci, paired_probability_of_improvement(a, b, strata), p))
    adjusted = holm([r[4] for r in rows])
    return [
        Comparison(name=str(name), n=int(d.size), mean_diff=float(d.mean()), median_diff=float(np.median(d)),
                   diff_ci=ci, wins=int((d > 0).sum()), losses=int((d < 0).sum()), ties=int((d == 0).sum()),
                   prob_improvement=poi, p_value=p, p_holm=float(q), test=test)
        for (name, d, ci, poi, p), q in zip(rows, adjusted, strict=True)
    ]


# --------------------------------------------------------------------------- stability (per update)
def count_spikes(x: Any, k: float = 5.0) -> int:
    """Number of values above ``median + k * MAD`` (raw median absolute deviation), non-finite ones included.

    A robust outlier count for per-update logs (gradient norms, losses): the median and MAD are barely
    moved by the spikes they detect. Non-finite entries are counted as spikes (they are the worst kind)
    and left out of the median and MAD. With MAD = 0 (more than half the values equal) every value above
    the median counts.

    Args:
        x: Per-update values.
        k: Threshold in MADs (5 by default: far beyond noise for any reasonable distribution).
    """
    a = _vector(x, "x", finite=False)
    if not (isinstance(k, (int, float)) and not isinstance(k, bool) and k >= 0):
        raise ValueError(f"k must be a number >= 0 (threshold in MADs), got {k!r}; e.g. k=5.0")
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return int(a.size)
    med = np.median(finite)
    mad = np.median(np.abs(finite - med))
    return int((finite > med + k * mad).sum() + (a.size - finite.size))


def hill_tail_index(x: Any, tail_fraction: float = 0.1, *, k: int | None = None) -> float:
    """Hill estimator of the tail index ``alpha`` of positive data (smaller = heavier tail).

    With the values sorted descending, ``X_(1) >= X_(2) >= ...``, and the ``k`` largest used::

        alpha = 1 / ( (1 / k) * sum_{i=1..k} ln(X_(i) / X_(k+1)) )

    For a Pareto tail ``P(X > x) ~ x ** -alpha`` this estimates ``alpha``; ``alpha <= 2`` means infinite
    variance, ``alpha <= 1`` infinite mean. Non-finite and non-positive values are dropped.

    Args:
        x: Per-update positive values (gradient norms).
        tail_fraction: ``k = max(2, int(tail_fraction * n))`` when ``k`` is not given.
        k: Number of upper order statistics (``2 <= k < n``).

    Returns:
        The estimate, ``inf`` when the top ``k + 1`` values are all equal (no tail).
    """
    a = _vector(x, "x", finite=False)
    a = np.sort(a[np.isfinite(a) & (a > 0)])[::-1]
    if k is None:
        if not 0.0 < tail_fraction < 1.0:
            raise ValueError(f"tail_fraction must be in (0, 1), got {tail_fraction!r}")
        k = max(2, int(tail_fraction * a.size))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < a.size:
        raise ValueError(f"k must be an integer in [1, {a.size - 1}] for {a.size} positive finite values, "
                         f"got {k!r}; the Hill estimator needs k + 1 values")
    mean_log = float(np.mean(np.log(a[:k] / a[k])))
    return math.inf if mean_log == 0.0 else 1.0 / mean_log


def excess_kurtosis(x: Any) -> float:
    """Excess kurtosis ``m4 / m2**2 - 3`` with population moments (0 for a normal, > 0 heavy tails).

    ``scipy.stats.kurtosis(x, fisher=True, bias=True)``; non-finite values are dropped. ``nan`` when all
    values are equal.
    """
    a = _vector(x, "x", finite=False)
    a = a[np.isfinite(a)]
    if a.size < 2 or np.all(a == a[0]):
        return math.nan
    return float(scipy.stats.kurtosis(a, fisher=True, bias=True))


def grad_norm_return_correlation(grad_norms: Any, returns: Any) -> float:
    """Spearman correlation between each batch's gradient norm and its absolute market return.

    Does a volatile batch produce a big gradient? Rank-based, so one huge norm does not decide it. Pairs
    with a non-finite entry are dropped; ``nan`` if fewer than 3 pairs remain or one side is constant.

    Args:
        grad_norms: Per-update gradient norms.
        returns: Per-update (signed) market return of the batch, e.g. the mean absolute log return of its
            bars or their sum; its absolute value is used.
    """
    g = _vector(grad_norms, "grad_norms", finite=False)
    r = _vector(returns, "returns", finite=False)
    if g.size != r.size:
        raise ValueError(f"grad_norms has {g.size} values but returns has {r.size}; give one per update")
    keep = np.isfinite(g) & np.isfinite(r)
    g, r = g[keep], np.abs(r[keep])
    if g.size < 3 or np.all(g == g[0]) or np.all(r == r[0]):
        return math.nan
    return float(scipy.stats.spearmanr(g, r)[0])  # [0]: the correlation, in every scipy version


# ------------------------------------------------------------------------------- across runs
def dispersion(x: Any) -> Dispersion:
    """Across-seed spread of a final metric: median, interquartile range (linear quantiles), min and max."""
    a = _vector(x, "x")
    q1, med, q3 = np.quantile(a, [0.25, 0.5, 0.75])
    return Dispersion(median=float(med), iqr=float(q3 - q1), min=float(a.min()), max=float(a.max()))


def normalized_auc(steps: Any, values: Any) -> float:
    """Area under a validation curve by the trapezoid rule, divided by the span of steps.

    The result is in the units of ``values``: the curve's time-average (a constant curve ``c`` gives
    ``c``), so runs evaluated over different spans or at different intervals compare directly. Rewards
    learning early as well as ending high.

    Args:
        steps: Strictly increasing training steps of the evaluations (at least 2).
        values: The metric at those steps (finite).
    """
    s, v = _vector(steps, "steps", min_size=2), _vector(values, "values", min_size=2)
    if s.size != v.size:
        raise ValueError(f"steps has {s.size} values but values has {v.size}")
    if np.any(np.diff(s) <= 0):
        raise ValueError("steps must be strictly increasing (sort the evaluations and drop duplicates)")
    return float(np.sum((v[1:] + v[:-1]) * np.diff(s)) / 2.0 / (s[-1] - s[0]))


def divergence_rate(runs: Sequence[Any], *, max_abs: float | None = None) -> float:
    """Share of runs that diverged.

    Args:
        runs: One entry per run: a bool (``True`` = diverged, e.g. the run crashed or was stopped for
            non-finite losses), or that run's per-update log (losses, gradient norms), which counts as
            diverged if any value is non-finite or, with ``max_abs``, exceeds it in magnitude.
        max_abs: Optional magnitude above which a logged value counts as divergence.
    """
    if len(runs) == 0:
        raise ValueError("runs is empty: pass one entry (bool or per-update log) per run")
    flags = []
    for i, run in enumerate(runs):
        if isinstance(run, (bool, np.bool_)):
            flags.append(bool(run))
            continue
        a = _vector(run, f"runs[{i}]", min_size=0, finite=False)
        bad = ~np.isfinite(a)
        if max_abs is not None:
            bad |= np.abs(a) > max_abs
        flags.append(bool(bad.any()))
    return float(np.mean(flags))


def stability_summary(
    grad_norms: Any,
    *,
    losses: Any | None = None,
    returns: Any | None = None,
    k: float = 5.0,
    tail_fraction: float = 0.1,
) -> dict[str, float]:
    """The per-update stability metrics of one run, under ``stability/`` keys (for a results table).

    Keys: ``stability/grad_spikes``, ``stability/grad_tail_index``, ``stability/grad_kurtosis``,
    ``stability/nonfinite_grads`` and, when given, ``stability/loss_spikes`` and
    ``stability/norm_return_spearman``. A metric that cannot be computed (too few values) is ``nan``.
    """
    g = _vector(grad_norms, "grad_norms", finite=False)
    out = {
        "stability/grad_spikes": float(count_spikes(g, k)),
        "stability/nonfinite_grads": float((~np.isfinite(g)).sum()),
        "stability/grad_kurtosis": excess_kurtosis(g),
    }
    try:
        out["stability/grad_tail_index"] = hill_tail_index(g, tail_fraction)
    except ValueError:
        out["stability/grad_tail_index"] = math.nan
    if losses is not None:
        out["stability/loss_spikes"] = float(count_spikes(losses, k))
    if returns is not None:
        out["stability/norm_return_spearman"] = grad_norm_return_correlation(g, returns)
    return out
