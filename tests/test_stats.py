"""agents.stats: every function against values worked out by hand (in the comments), plus properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agents import stats

FAST = settings(max_examples=40, deadline=None)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=1, max_size=30)


# ----------------------------------------------------------------------------------------------- IQM
def test_iqm_trims_a_quarter_from_each_end():
    # n = 8: int(0.25 * 8) = 2 cut each side -> mean(3, 4, 5, 6) = 4.5
    assert stats.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5
    # n = 10: int(2.5) = 2 cut each side -> 1, 2 and 9, 100 go: mean(3..8) = 33 / 6 = 5.5
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 8, 9, 100]) == 5.5
    # n = 3: int(0.75) = 0 cut -> the plain mean (0 + 1 + 5) / 3 = 2
    assert stats.iqm([0, 1, 5]) == 2.0
    # Row-wise on a matrix (how the bootstrap calls it): [1, 2, 3, 10] -> mean(2, 3) = 2.5
    assert stats.iqm(np.array([[1, 2, 3, 10], [4, 4, 4, 4]]), axis=-1).tolist() == [2.5, 4.0]


def test_iqm_rejects_empty_and_non_finite_input():
    with pytest.raises(ValueError, match="at least 1"):
        stats.iqm([])
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\) \(first at index 1: nan\)"):
        stats.iqm([1.0, math.nan])


@FAST
@given(samples)
def test_iqm_lies_between_min_and_max(x):
    assert min(x) - 1e-9 * (1 + abs(min(x))) <= stats.iqm(x) <= max(x) + 1e-9 * (1 + abs(max(x)))


# ------------------------------------------------------------------------------ stratified bootstrap
def test_bootstrap_resamples_within_strata_only():
    # Stratum A = {0, 0}, B = {10, 10}: every stratified replicate holds two 0s and two 10s, so its mean is
    # exactly 5 - the interval collapses. An unstratified bootstrap would range from 0 to 10.
    ci = stats.stratified_bootstrap_ci([0, 0, 10, 10], ["A", "A", "B", "B"], statistic=np.mean, n_boot=500)
    assert (ci.estimate, ci.low, ci.high) == (5.0, 5.0, 5.0)
    plain = stats.stratified_bootstrap_ci([0, 0, 10, 10], statistic=np.mean, n_boot=500)
    assert plain.low < 5.0 < plain.high


def test_bootstrap_percentile_interval_of_a_two_point_sample():
    # x = [0, 1]: a replicate's mean is 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4). The 95 % interval spans the
    # 2.5 % and 97.5 % quantiles -> [0, 1]; a 40 % interval spans the 30 % and 70 % quantiles, both 0.5.
    ci = stats.stratified_bootstrap_ci([0.0, 1.0], statistic=np.mean, n_boot=4000, seed=1)
    assert (ci.estimate, ci.low, ci.high, ci.n_boot, ci.confidence) == (0.5, 0.0, 1.0, 4000, 0.95)
    ci40 = stats.stratified_bootstrap_ci([0.0, 1.0], statistic=np.mean, n_boot=4000, confidence=0.4, seed=1)
    assert (ci40.low, ci40.high) == (0.5, 0.5)


def test_bootstrap_is_seeded_and_chunking_does_not_change_it(monkeypatch):
    x = np.random.default_rng(0).normal(size=40)
    strata = ["a", "b"] * 20
    a = stats.iqm_ci(x, strata, n_boot=300, seed=7)
    assert a == stats.iqm_ci(x, strata, n_boot=300, seed=7)
    assert a != stats.iqm_ci(x, strata, n_boot=300, seed=8)
    assert a.estimate == stats.iqm(x)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 40 * 7)  # 7 replicates per chunk
    chunked = stats.iqm_ci(x, strata, n_boot=300, seed=7)
    assert chunked.n_boot == 300 and chunked.low < chunked.estimate < chunked.high


def test_bootstrap_validates_its_arguments():
    with pytest.raises(ValueError, match="strata has 2 labels but there are 3 values"):
        stats.iqm_ci([1, 2, 3], ["a", "b"])
    with pytest.raises(ValueError, match="n_boot must be an integer >= 1"):
        stats.iqm_ci([1, 2, 3], n_boot=0)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        stats.iqm_ci([1, 2, 3], confidence=95)
    with pytest.raises(ValueError, match="must be 1-D"):
        stats.iqm_ci([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="statistic must reduce the last axis"):
        stats.stratified_bootstrap_ci([1, 2, 3], statistic=lambda x, axis: x)
    with pytest.raises(ValueError, match="seed must be an int"):
        stats.iqm_ci([1, 2, 3], seed=1.5)


@FAST
@given(st.lists(finite, min_size=2, max_size=20), st.integers(1, 3), st.sampled_from(["mean", "iqm"]))
def test_bootstrap_ci_contains_the_point_estimate(x, n_strata, name):
    statistic = np.mean if name == "mean" else stats.iqm
    strata = [i % n_strata for i in range(len(x))]
    ci = stats.stratified_bootstrap_ci(x, strata, statistic=statistic, n_boot=400, seed=0)
    tol = 1e-9 * (1 + max(map(abs, x)))
    assert ci.low - tol <= ci.estimate <= ci.high + tol


def test_paired_difference_ci_keeps_pairs_together():
    # Every cell differs by exactly +2 while the cells themselves vary wildly: the paired CI is [2, 2].
    y = np.array([0.0, 100.0, -50.0, 7.0, 3.0])
    ci = stats.paired_difference_ci(y + 2.0, y, ["m1", "m1", "m2", "m2", "m2"], n_boot=300)
    assert (ci.estimate, ci.low, ci.high) == (pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0))
    with pytest.raises(ValueError, match="x has 2 values and y has 3"):
        stats.paired_difference_ci([1, 2], [1, 2, 3])


# ------------------------------------------------------------------------ probability of improvement
def test_probability_of_improvement_by_hand():
    # x = [1, 2, 3] vs y = [2, 2, 0], 9 pairs, ties count 1/2:
    #   1: > 0 only                 -> 1
    #   2: tie, tie, > 0            -> 0.5 + 0.5 + 1 = 2
    #   3: beats all three          -> 3
    # P = 6 / 9
    assert stats.probability_of_improvement([1, 2, 3], [2, 2, 0]) == pytest.approx(6 / 9)
    # Same as scipy's Mann-Whitney U / (n m) (what rliable calls)
    u = scipy.stats.mannwhitneyu([1, 2, 3], [2, 2, 0], alternative="greater").statistic
    assert u / 9 == pytest.approx(6 / 9)
    # Identical samples: 1/2 (rliable's special case falls out of the formula)
    assert stats.probability_of_improvement([1, 5], [5, 1]) == 0.5


def test_probability_of_improvement_averages_strata_equally():
    # Stratum A: x = [10, 11] always beats y = [0] -> 1. Stratum B: x = [0] always loses to y = [1, 2, 3]
    # -> 0. Mean over strata = 0.5, whatever their sizes.
    x, xs = [10, 11, 0], ["A", "A", "B"]
    y, ys = [0, 1, 2, 3], ["A", "B", "B", "B"]
    assert stats.probability_of_improvement(x, y, xs, ys) == 0.5
    with pytest.raises(ValueError, match=r"same strata; only in x: \['C'\]"):
        stats.probability_of_improvement(x, y, ["A", "A", "C"], ys)


def test_probability_of_improvement_ci():
    # Complete separation in every resample: X always wins -> [1, 1].
    ci = stats.probability_of_improvement_ci([5, 6, 7], [1, 2], n_boot=200)
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(0.5, 1, 12), rng.normal(0, 1, 10)
    ci = stats.probability_of_improvement_ci(x, y, n_boot=500, seed=3)
    assert 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0
    assert ci == stats.probability_of_improvement_ci(x, y, n_boot=500, seed=3)


@FAST
@given(st.lists(finite, min_size=1, max_size=12), st.lists(finite, min_size=1, max_size=12))
def test_probability_of_improvement_is_complementary(x, y):
    # Without ties P(X > Y) + P(Y > X) = 1 exactly; with ties too, since a tie counts 1/2 on each side.
    assume(not set(x) & set(y))
    both = stats.probability_of_improvement(x, y) + stats.probability_of_improvement(y, x)
    assert both == pytest.approx(1.0)


@FAST
@given(st.lists(st.integers(0, 3), min_size=1, max_size=10), st.lists(st.integers(0, 3), min_size=1,
                                                                    max_size=10))
def test_probability_of_improvement_is_complementary_with_ties_too(x, y):
    both = stats.probability_of_improvement(x, y) + stats.probability_of_improvement(y, x)
    assert both == pytest.approx(1.0)


def test_paired_probability_of_improvement_by_hand():
    # Cells: 1 vs 0 win, 2 vs 2 tie, 3 vs 5 loss, 4 vs 1 win -> (1 + 0.5 + 0 + 1) / 4 = 0.625
    assert stats.paired_probability_of_improvement([1, 2, 3, 4], [0, 2, 5, 1]) == 0.625
    # By market: a = {win} -> 1, b = {tie, loss, win} -> 1.5 / 3 = 0.5; mean over markets 0.75
    assert stats.paired_probability_of_improvement([1, 2, 3, 4], [0, 2, 5, 1], ["a", "b", "b", "b"]) == 0.75
    ci = stats.paired_probability_of_improvement_ci([1, 2, 3, 4], [0, 2, 5, 1], n_boot=500)
    assert ci.estimate == 0.625 and 0.0 <= ci.low <= 0.625 <= ci.high <= 1.0


# --------------------------------------------------------------------------------------- paired tests
def test_holm_by_hand():
    # p = [0.01, 0.04, 0.03, 0.005], m = 4; sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1:
    #   0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06; back in input order:
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # capped at 1 (0.5 * 2)
    assert stats.holm([]).size == 0
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        stats.holm([0.5, 1.5])


@FAST
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=15))
def test_holm_is_monotone_and_never_below_the_raw_p_values(p):
    adj = stats.holm(p)
    assert np.all(adj >= np.asarray(p)) and np.all(adj <= 1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= 0)


def test_wilcoxon_p_value_by_hand():
    # d = [1, 2, 3, 4, 5], all positive: W+ = 15 is the largest of 2^5 = 32 equally likely sign patterns,
    # so the exact two-sided p = 2 / 32 = 0.0625.
    assert stats.wilcoxon_p_value([1, 2, 3, 4, 5]) == pytest.approx(0.0625)
    assert stats.wilcoxon_p_value([0, 0, 0]) == 1.0


def test_sign_flip_p_value_by_hand():
    # d = [1, 2, 3]: |mean| = 2; of the 8 sign patterns only +++ and --- reach |mean| >= 2 -> 2 / 8
    assert stats.sign_flip_p_value([1, 2, 3]) == 0.25
    # d = [1, -1]: |mean| = 0, every pattern reaches it -> 1
    assert stats.sign_flip_p_value([1, -1]) == 1.0
    # 20 cells, all +1: exact p = 2 / 2^20 ~ 2e-6, so the sampled p is about its floor 1 / (1 + n_perm)
    p = stats.sign_flip_p_value(np.ones(20), n_perm=2000, seed=0)
    assert p == pytest.approx(1 / 2001, abs=2 / 2001)
    assert p == stats.sign_flip_p_value(np.ones(20), n_perm=2000, seed=0)


def test_paired_comparison_against_a_reference():
    ref = np.array([0.0, 10.0, -3.0, 4.0, 1.0])
    arms = {"better": ref + [1, 2, 3, 4, 5], "worse": ref - [1, 2, 3, 4, 5], "same": ref.copy()}
    rows = stats.paired_comparison(arms, ref, ["m1", "m1", "m2", "m2", "m2"], n_boot=300)
    better, worse, same = rows
    assert [r.name for r in rows] == ["better", "worse", "same"]
    # better: d = [1..5], mean 3, median 3, 5 wins; Wilcoxon exact p = 0.0625 (see above)
    assert (better.n, better.mean_diff, better.median_diff) == (5, 3.0, 3.0)
    assert (better.wins, better.losses, better.ties, better.prob_improvement) == (5, 0, 0, 1.0)
    assert better.p_value == pytest.approx(0.0625)
    # Holm over (0.0625, 0.0625, 1): sorted 0.0625 * 3, 0.0625 * 2, 1 * 1 -> 0.1875, 0.1875 (max), 1
    assert (better.p_holm, worse.p_holm, same.p_holm) == (pytest.approx(0.1875),) * 2 + (1.0,)
    assert (worse.wins, worse.losses, worse.prob_improvement) == (0, 5, 0.0)
    assert (same.ties, same.p_value, same.prob_improvement) == (5, 1.0, 0.5)
    assert better.diff_ci.low <= 3.0 <= better.diff_ci.high and better.diff_ci.low >= 1.0
    flips = stats.paired_comparison({"better": arms["better"]}, ref, test="sign_flip")
    assert flips[0].p_value == 2 / 32 and flips[0].test == "sign_flip"  # only +++++ and ----- reach mean 3
    with pytest.raises(ValueError, match="test must be"):
        stats.paired_comparison(arms, ref, test="t")
    with pytest.raises(ValueError, match="arm 'short' against the reference: .*same cell order"):
        stats.paired_comparison({"short": [1.0]}, ref)
    row = better.as_dict()
    assert (row["name"], row["wins"], row["diff_low"], row["diff_high"]) == (
        "better", 5, better.diff_ci.low, better.diff_ci.high)


# ------------------------------------------------------------------------------------------ stability
def test_count_spikes_by_hand():
    # [1, 2, 3, 4, 5, 100]: median 3.5; |x - 3.5| = 2.5, 1.5, .5, .5, 1.5, 96.5 -> MAD = median = 1.5;
    # threshold 3.5 + 5 * 1.5 = 11 -> only 100 is a spike
    assert stats.count_spikes([1, 2, 3, 4, 5, 100]) == 1
    # k = 1: threshold 3.5 + 1.5 = 5 -> still only 100 (5 is not above 5)
    assert stats.count_spikes([1, 2, 3, 4, 5, 100], k=1.0) == 1
    # non-finite entries are spikes and stay out of the median/MAD
    assert stats.count_spikes([1, 2, 3, 4, 5, 100, math.inf, math.nan]) == 3
    with pytest.raises(ValueError, match="k must be a number >= 0"):
        stats.count_spikes([1, 2], k=-1)


def test_hill_tail_index_by_hand():
    # [1, 2, 4, 8, 16] sorted descending 16, 8, 4, 2, 1; k = 2 -> X_(3) = 4:
    # mean(ln(16/4), ln(8/4)) = (2 ln 2 + ln 2) / 2 = 1.5 ln 2 -> alpha = 1 / (1.5 ln 2) ~ 0.9618
    assert stats.hill_tail_index([1, 2, 4, 8, 16], k=2) == pytest.approx(1 / (1.5 * math.log(2)))
    # A Pareto(alpha = 3) sample: the estimate lands near 3
    rng = np.random.default_rng(0)
    assert stats.hill_tail_index(rng.pareto(3.0, 20000) + 1.0, 0.05) == pytest.approx(3.0, rel=0.1)
    assert stats.hill_tail_index([2, 2, 2, 1], k=2) == math.inf  # flat top: no tail
    with pytest.raises(ValueError, match="k must be an integer in"):
        stats.hill_tail_index([1, 2], k=2)


def test_excess_kurtosis_by_hand():
    # [0, 0, 0, 0, 10]: mean 2, deviations -2 (x4), 8; m2 = (4 * 4 + 64) / 5 = 16,
    # m4 = (4 * 16 + 4096) / 5 = 832 -> 832 / 256 - 3 = 0.25
    assert stats.excess_kurtosis([0, 0, 0, 0, 10]) == pytest.approx(0.25)
    # [-1, 1]: m2 = 1, m4 = 1 -> 1 - 3 = -2
    assert stats.excess_kurtosis([-1, 1, math.nan]) == pytest.approx(-2.0)
    assert math.isnan(stats.excess_kurtosis([3, 3, 3]))


def test_grad_norm_return_correlation_by_hand():
    # |returns| = [0.1, 0.5, 0.2, 0.9] ranks 1, 3, 2, 4 vs norms' ranks 1, 2, 3, 4: d = 0, 1, -1, 0,
    # rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    assert stats.grad_norm_return_correlation([1, 2, 3, 4], [0.1, -0.5, 0.2, -0.9]) == pytest.approx(0.8)
    # the pair with a nan is dropped: [1, 2, 4] vs |[0.1, -0.5, -0.9]| -> perfectly monotone
    assert stats.grad_norm_return_correlation([1, 2, 3, 4], [0.1, -0.5, math.nan, -0.9]) == pytest.approx(1.0)
    assert math.isnan(stats.grad_norm_return_correlation([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="one per update"):
        stats.grad_norm_return_correlation([1, 2], [1, 2, 3])


def test_dispersion_by_hand():
    # [5, 1, 4, 2, 3]: sorted 1..5, linear quartiles 2 and 4 -> IQR 2; min 1, max 5, range 4
    d = stats.dispersion([5, 1, 4, 2, 3])
    assert (d.median, d.iqr, d.min, d.max, d.range) == (3.0, 2.0, 1.0, 5.0, 4.0)


def test_normalized_auc_by_hand():
    # steps 0, 10, 30 with values 0, 1, 1: trapezoids 10 * (0 + 1) / 2 + 20 * (1 + 1) / 2 = 25; / 30
    assert stats.normalized_auc([0, 10, 30], [0, 1, 1]) == pytest.approx(25 / 30)
    assert stats.normalized_auc([100, 200], [3, 3]) == 3.0  # a constant curve gives its value
    with pytest.raises(ValueError, match="strictly increasing"):
        stats.normalized_auc([0, 10, 10], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        stats.normalized_auc([0], [1])


def test_divergence_rate_by_hand():
    logs = [[1.0, 2.0], [1.0, math.nan], [1.0, 1e12]]
    assert stats.divergence_rate(logs) == pytest.approx(1 / 3)  # only the nan run
    assert stats.divergence_rate(logs, max_abs=1e6) == pytest.approx(2 / 3)  # and the exploding one
    assert stats.divergence_rate([True, False, False, False]) == 0.25
    with pytest.raises(ValueError, match="runs is empty"):
        stats.divergence_rate([])


def test_stability_summary_keys_and_values():
    norms = [1, 2, 3, 4, 5, 100, 1, 2, 3, 4, 5, 2, 3, 4, 1, 2, 3, 4, 2, 3]
    out = stats.stability_summary(norms, losses=[1, 2, 3, 4, 5, 100], returns=np.arange(20.0))
    assert out["stability/grad_spikes"] == stats.count_spikes(norms)
    assert out["stability/loss_spikes"] == 1.0
    assert out["stability/grad_tail_index"] == stats.hill_tail_index(norms, 0.1)
    assert out["stability/grad_kurtosis"] == stats.excess_kurtosis(norms)
    assert out["stability/nonfinite_grads"] == 0.0
    assert set(out) == {"stability/grad_spikes", "stability/loss_spikes", "stability/grad_tail_index",
                        "stability/grad_kurtosis", "stability/nonfinite_grads",
                        "stability/norm_return_spearman"}
    assert math.isnan(stats.stability_summary([1.0])["stability/grad_tail_index"])  # too few values
