"""The adaptive clippers follow their published update rules, step by step, on fixed norm sequences.

Every expected value below is worked out by hand in the comments (the code line under each comment is the
same arithmetic, so the float64 rounding matches); nothing is computed by calling ``clipping``.
A chosen norm is fed as one float64 parameter whose gradient is ``[norm]``, so the global norm is exact.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clipping import make_clipper

EPS = 1e-6  # clip_grad_norm_'s epsilon in the scale threshold / (norm + 1e-6)


def feed(clipper, norm: float):
    """Clip a one-element gradient of the given norm; return (stats, gradient after clipping)."""
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    p.grad = torch.tensor([norm], dtype=torch.float64)
    stats = clipper.clip([p])
    assert stats.grad_norm == norm
    return stats, p.grad.item()


def expect(clipper, norm, threshold, *, clipped, spike=False, skip=False, bound=None, frozen=False):
    """Feed ``norm``; check threshold/flags, ``bound`` (when given) and the clipped gradient."""
    stats, after = feed(clipper, norm)
    assert stats.threshold == pytest.approx(threshold, rel=1e-12, abs=0.0), (norm, stats)
    if bound is not None:
        assert stats.bound == pytest.approx(bound, rel=1e-12, abs=0.0), (norm, stats)
    assert stats.clipped is clipped and stats.spike is spike and stats.skip is skip, stats
    assert stats.stats_frozen is frozen, stats
    # Clipped gradients are scaled by threshold / (norm + 1e-6); others are untouched.
    assert after == (pytest.approx(norm * threshold / (norm + EPS), rel=1e-12) if clipped else norm)


# --------------------------------------------------------------------------------------- AutoClip
def test_autoclip_paper_algorithm_1_appends_then_takes_the_percentile():
    # quantile 0.75, window 3; linear interpolation at position q * (n - 1) of the sorted window.
    c = make_clipper("autoclip", quantile=0.75, window=3, include_current=True)
    # step 1: H = [1]            -> 1                                   ; 1 > 1? no
    expect(c, 1.0, 1.0, clipped=False)
    # step 2: H = [1, 3]         -> pos 0.75: 1 + 0.75 * (3 - 1) = 2.5   ; 3 > 2.5 -> clip to 2.5
    expect(c, 3.0, 2.5, clipped=True)
    # step 3: H = [1, 3, 2]      -> sorted [1, 2, 3], pos 1.5: 2 + 0.5 * 1 = 2.5 ; 2 -> no clip
    expect(c, 2.0, 2.5, clipped=False)
    # step 4: window drops the 1: H = [3, 2, 10] -> [2, 3, 10], pos 1.5: 3 + 0.5 * 7 = 6.5 ; clip 10
    expect(c, 10.0, 6.5, clipped=True)
    # step 5: H = [2, 10, 4]     -> [2, 4, 10], pos 1.5: 4 + 0.5 * 6 = 7 ; 4 -> no clip
    expect(c, 4.0, 7.0, clipped=False)
    # The history holds the PRE-clip norms (10, not 6.5).
    assert c.history == [2.0, 10.0, 4.0]


def test_autoclip_package_mode_uses_past_norms_only():
    # autoclip.torch.QuantileClip(global_threshold=True): threshold from the history, then append.
    c = make_clipper("autoclip", quantile=0.75, window=3, include_current=False)
    # step 1: H = []             -> no threshold (inf)                 ; H <- [1]
    expect(c, 1.0, math.inf, clipped=False, bound=math.inf)
    # step 2: H = [1]            -> 1 ; 3 > 1 -> clip to 1              ; H <- [1, 3]
    expect(c, 3.0, 1.0, clipped=True)
    # step 3: H = [1, 3]         -> 1 + 0.75 * 2 = 2.5 ; 2 -> no clip    ; H <- [1, 3, 2]
    expect(c, 2.0, 2.5, clipped=False)
    # step 4: H = [1, 3, 2]      -> [1, 2, 3], pos 1.5: 2.5 ; clip 10    ; H <- [3, 2, 10]
    expect(c, 10.0, 2.5, clipped=True, bound=2.5)
    # step 5: H = [3, 2, 10]     -> [2, 3, 10], pos 1.5: 3 + 3.5 = 6.5 ; 4 -> no clip (bound still 6.5)
    expect(c, 4.0, 6.5, clipped=False, bound=6.5)
    assert c.history == [2.0, 10.0, 4.0]


def test_autoclip_paper_defaults_whole_history_tenth_percentile():
    c = make_clipper("autoclip", quantile=0.1, window=None, include_current=True)
    for norm in (5.0, 1.0, 4.0, 2.0):
        feed(c, norm)
    # H = [5, 1, 4, 2, 3] -> [1, 2, 3, 4, 5], pos 0.1 * 4 = 0.4: 1 + 0.4 * (2 - 1) = 1.4 ; 3 -> clip
    expect(c, 3.0, 1.4, clipped=True)
    # 100 more norms are all kept (window=None); with one more 10: sorted [1, 2, 3, 4, 5, 10 x 101],
    # 106 entries, pos 0.1 * 105 = 10.5 -> between two 10s -> 10 ; 10 > 10? no
    for _ in range(100):
        feed(c, 10.0)
    expect(c, 10.0, 10.0, clipped=False)
    assert len(c.history) == 106


def test_autoclip_quantile_agrees_with_torch_quantile_on_random_histories():
    # linear interpolation "as torch.quantile / np.percentile" (one independent check with torch itself).
    gen = torch.Generator().manual_seed(0)
    values = (torch.rand(57, generator=gen, dtype=torch.float64) * 10).tolist()
    for q in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        c = make_clipper("autoclip", quantile=q, window=None, include_current=False)
        for v in values:
            feed(c, v)
        stats, _ = feed(c, 1e9)
        reference = torch.quantile(torch.tensor(values, dtype=torch.float64), q).item()
        assert stats.threshold == pytest.approx(reference, rel=1e-12)


# ------------------------------------------------------------------------------------------ ZClip
# Warm-up on [1, 3]: mean = (1 + 3) / 2 = 2, var = ((1 - 2)^2 + (3 - 2)^2) / 2 = 1, std = 1.
# alpha = 0.5, z_thresh = 2, so z = (g - 2) / (1 + 1e-6) and a spike is z > 2, i.e. g > ~4.
def warmed(**kwargs):
    c = make_clipper("zclip", alpha=0.5, z_thresh=2.0, warmup_steps=2, **kwargs)
    cap = kwargs.get("max_grad_norm") or math.inf
    expect(c, 1.0, cap, clipped=False, bound=cap)  # warm-up: no adaptive clipping, level = the cap
    assert not c.initialized
    expect(c, 3.0, cap, clipped=cap < 3.0, bound=cap)  # (also on the step that completes the warm-up)
    assert c.initialized and c.mean == 2.0 and c.var == 1.0
    return c


def test_zclip_adaptive_scaling_warmup_then_ema():
    c = warmed()
    # step 3, g = 10: z = 8 / (1 + 1e-6) ~ 8 > 2 -> spike; eta = z / 2 ~ 4;
    # threshold = mean + z_thresh * std / eta = 2 + 2 * 1 / 4 = 2.5 (exactly 2 + 4 * (1 + 1e-6) / 8)
    z = (10.0 - 2.0) / (1.0 + 1e-6)
    t3 = 2.0 + (2.0 * 1.0) / (z / 2.0)
    assert t3 == pytest.approx(2.5000005, rel=1e-12)
    # bound: the detection level mean + z_thresh * std = 2 + 2 * 1 = 4 (the threshold applied is lower)
    expect(c, 10.0, t3, clipped=True, spike=True, bound=4.0)
    # EMA with the CLIPPED norm x = t3, variance against the UPDATED mean:
    # mean = 0.5 * 2 + 0.5 * 2.5000005 = 2.25000025
    # var = 0.5 * 1 + 0.5 * (2.5000005 - 2.25000025)^2 ~ 0.53125
    m3 = 0.5 * 2.0 + 0.5 * t3
    v3 = 0.5 * 1.0 + 0.5 * (t3 - m3) ** 2
    assert c.mean == pytest.approx(2.25000025, rel=1e-12) and c.var == pytest.approx(0.53125006, rel=1e-7)
    assert (c.mean, c.var) == (pytest.approx(m3, rel=1e-15), pytest.approx(v3, rel=1e-15))
    # step 4, g = 3: z = (3 - 2.25) / (sqrt(0.53125) + 1e-6) ~ 1.03 <= 2 -> no spike, no threshold;
    # but a level: bound = 2.25000025 + 2 * sqrt(0.53125006) ~ 2.25 + 2 * 0.72887 = 3.70774
    # EMA with g itself: mean = 0.5 * 2.25 + 1.5 = 2.625 ; var = 0.5 * 0.53125 + 0.5 * (3 - 2.625)^2 ~ 0.3359
    b4 = m3 + 2.0 * v3**0.5
    assert b4 == pytest.approx(3.70774, rel=1e-5)
    expect(c, 3.0, math.inf, clipped=False, bound=b4)
    m4 = 0.5 * m3 + 0.5 * 3.0
    v4 = 0.5 * v3 + 0.5 * (3.0 - m4) ** 2
    assert c.mean == pytest.approx(m4, rel=1e-15) and c.var == pytest.approx(v4, rel=1e-15)
    assert c.var == pytest.approx(0.3359375, rel=1e-6)
    # step 5, g = 6: z = (6 - 2.625) / (0.5796 + 1e-6) ~ 5.82 -> spike;
    # threshold = 2.625 + 2 * 0.5796 / (5.82 / 2) ~ 3.0233
    s4 = v4**0.5
    z5 = (6.0 - m4) / (s4 + 1e-6)
    t5 = m4 + (2.0 * s4) / (z5 / 2.0)
    assert t5 == pytest.approx(3.0233, rel=1e-4)
    # bound = 2.625 + 2 * 0.57960 = 3.78420 (the z-score crossing: (3.7842 - 2.625) / 0.5796 = 2)
    b5 = m4 + 2.0 * s4
    assert b5 == pytest.approx(3.78420, rel=1e-5)
    expect(c, 6.0, t5, clipped=True, spike=True, bound=b5)
    # step 6, g = 3.5, calm, judged against the statistics after the spike (fed with t5):
    # mean = 0.5 * 2.625 + 0.5 * 3.0233 = 2.8242 ; var = 0.5 * 0.33594 + 0.5 * (3.0233 - 2.8242)^2 = 0.18779
    # bound = 2.8242 + 2 * sqrt(0.18779) = 2.8242 + 2 * 0.43335 = 3.6909 ; 3.5 below it -> not clipped
    m5 = 0.5 * m4 + 0.5 * t5
    v5 = 0.5 * v4 + 0.5 * (t5 - m5) ** 2
    b6 = m5 + 2.0 * v5**0.5
    assert b6 == pytest.approx(3.6909, rel=1e-4)
    expect(c, 3.5, math.inf, clipped=False, bound=b6)


def test_zclip_nonfinite_step_reports_the_level_in_force():
    c = make_clipper("zclip", alpha=0.5, z_thresh=2.0, warmup_steps=2, max_grad_norm=9.0)
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    p.grad = torch.tensor([math.nan], dtype=torch.float64)
    stats = c.clip([p])
    # warm-up: the level is the cap; threshold 0 says "all zeroed", bound is still the level, not 0
    assert (stats.nonfinite, stats.threshold, stats.bound) == (True, 0.0, 9.0)
    feed(c, 1.0)
    feed(c, 3.0)  # mean 2, var 1 (as in warmed())
    p.grad = torch.tensor([math.inf], dtype=torch.float64)
    stats = c.clip([p])
    assert (stats.threshold, stats.bound) == (0.0, 4.0)  # min(2 + 2 * 1, 9)
    assert (c.mean, c.var) == (2.0, 1.0)


def test_zclip_clip_factor_scales_the_adaptive_threshold():
    c = warmed(clip_factor=0.8)
    # threshold = (2 + 2 * 1 / (z / 2)) * 0.8 ~ 2.5 * 0.8 = 2.0
    t3 = (2.0 + 2.0 / ((8.0 / (1.0 + 1e-6)) / 2.0)) * 0.8
    assert t3 == pytest.approx(2.0, rel=1e-6)
    expect(c, 10.0, t3, clipped=True, spike=True, bound=4.0)  # clip_factor scales clip_val, not the level
    assert c.mean == pytest.approx(0.5 * 2.0 + 0.5 * t3, rel=1e-15)


def test_zclip_mean_option_clips_to_the_ema_mean():
    c = warmed(clip_option="mean")
    # step 3, g = 10, spike -> threshold = mean = 2 ; EMA with x = 2: mean = 2, var = 0.5 * 1 + 0.5 * 0 = 0.5
    expect(c, 10.0, 2.0, clipped=True, spike=True, bound=4.0)
    assert (c.mean, c.var) == (2.0, 0.5)
    # step 4, g = 2.5: z = 0.5 / (0.7071 + 1e-6) ~ 0.71 -> no spike; bound = 2 + 2 * sqrt(0.5) = 3.41421
    # mean = 0.5 * 2 + 0.5 * 2.5 = 2.25 ; var = 0.5 * 0.5 + 0.5 * (2.5 - 2.25)^2 = 0.28125
    expect(c, 2.5, math.inf, clipped=False, bound=2.0 + 2.0 * math.sqrt(0.5))
    assert (c.mean, c.var) == (2.25, 0.28125)


def test_zclip_percentile_mode_clips_to_mean_plus_z_std():
    c = warmed(mode="percentile", clip_factor=0.5)  # clip_factor is unused in percentile mode (as in zclip)
    # step 3: bound = 2 + 2 * 1 = 4 ; 10 > 4 -> clip to 4
    # mean = 0.5 * 2 + 0.5 * 4 = 3 ; var = 0.5 + 0.5 * 1 = 1
    expect(c, 10.0, 4.0, clipped=True, spike=True, bound=4.0)  # here the level is also the clip value
    assert (c.mean, c.var) == (3.0, 1.0)
    # step 4: bound = 3 + 2 = 5 ; 4.5 <= 5 -> no clip ; mean = 3.75 ; var = 0.5 + 0.5 * 0.75^2 = 0.78125
    expect(c, 4.5, math.inf, clipped=False, bound=5.0)
    assert (c.mean, c.var) == (3.75, 0.78125)


def test_zclip_max_grad_norm_caps_every_step_but_is_not_fed_back():
    # The package: during warm-up clip_grad_norm_(max_grad_norm); afterwards the applied threshold is
    # min(clip_val or g, max_grad_norm); the EMA is still updated with clip_val or g.
    c = warmed(max_grad_norm=2.4)  # step 2 (g = 3 > 2.4) was clipped to 2.4 during warm-up...
    assert c.mean == 2.0  # ...but the warm-up buffer got the pre-clip 3
    # step 3, g = 10: clip_val = 2.5000005 (as above) -> applied min(2.5000005, 2.4) = 2.4
    t3 = 2.0 + 4.0 * (1.0 + 1e-6) / 8.0
    expect(c, 10.0, 2.4, clipped=True, spike=True, bound=2.4)  # min(2 + 2 * 1, 2.4)
    assert c.mean == pytest.approx(0.5 * 2.0 + 0.5 * t3, rel=1e-15)  # fed with 2.5000005, not 2.4
    # step 4, g = 2.45: no spike (z ~ 0.27) but above the cap -> clipped to 2.4, EMA fed with 2.45
    # bound = min(2.25 + 2 * 0.7289, 2.4) = 2.4
    m3 = 0.5 * 2.0 + 0.5 * t3
    expect(c, 2.45, 2.4, clipped=True, bound=2.4)
    assert c.mean == pytest.approx(0.5 * m3 + 0.5 * 2.45, rel=1e-15)


def test_zclip_skip_update_on_spike_keeps_statistics_and_flags_the_step():
    c = warmed(skip_update_on_spike=True)
    # As in the zclip package: the spike is clipped and APPLIED (skip False), only mean/var stay frozen.
    expect(c, 10.0, 2.0 + 4.0 * (1.0 + 1e-6) / 8.0, clipped=True, spike=True, bound=4.0, frozen=True)
    assert (c.mean, c.var) == (2.0, 1.0)  # untouched
    expect(c, 3.0, math.inf, clipped=False, bound=4.0)  # calm step: same level (statistics untouched)
    assert (c.mean, c.var) == (2.5, 0.5 * 1.0 + 0.5 * 0.5**2)


def test_zclip_matches_the_reference_package_on_a_long_sequence():
    """The zclip package's update (bluorion-com/ZClip, ZClip.step), restated with its own operation order
    on python floats, must give bit-identical mean/var/thresholds on a long noisy sequence with spikes."""
    alpha, z_thresh, warmup, eps = 0.97, 2.5, 25, 1e-6
    gen = torch.Generator().manual_seed(1)
    norms = (1.0 + 0.2 * torch.randn(300, generator=gen, dtype=torch.float64)).abs().tolist()
    for i in range(40, 300, 37):
        norms[i] *= 15.0  # spikes
    c = make_clipper("zclip")
    buffer, mean, var, spikes = [], None, None, 0
    for g in norms:
        stats, _ = feed(c, g)
        spikes += stats.spike
        if mean is None:
            buffer.append(g)
            if len(buffer) >= warmup:
                mean = sum(buffer) / len(buffer)
                var = sum((x - mean) ** 2 for x in buffer) / len(buffer)
            assert stats.threshold == stats.bound == math.inf
            continue
        std = var**0.5
        assert stats.bound == mean + z_thresh * std  # every step, spike or not, before the update
        z = (g - mean) / (std + eps)
        clip_val = (mean + (z_thresh * std) / (z / z_thresh)) * 1.0 if z > z_thresh else None
        assert stats.spike == (clip_val is not None)
        assert stats.threshold == (clip_val if clip_val is not None else math.inf)
        x = clip_val if clip_val is not None else g
        mean = alpha * mean + (1 - alpha) * x
        var = alpha * var + (1 - alpha) * (x - mean) ** 2
        assert (c.mean, c.var) == (mean, var)
    assert spikes >= 8  # the 8 planted spikes (at least) went through the spike branch


# ------------------------------------------------------------------------------ quantile tracking
def test_quantile_tracking_geometric_update():
    # target 0.5, lr = 2 ln 2: exp(-lr * (b - 0.5)) = 2 after a clipped step (b = 0), 1/2 after an
    # unclipped one (b = 1). C0 = 1.
    lr = 2.0 * math.log(2.0)
    c = make_clipper("quantile", target_quantile=0.5, lr=lr, initial=1.0)
    # step 1: C = 1, g = 3 > 1 -> clip to 1 ; b = 0 -> C = 1 * 2 = 2
    expect(c, 3.0, 1.0, clipped=True)
    # step 2: C = 2, g = 0.5 <= 2 -> no clip ; b = 1 -> C = 2 / 2 = 1 (bound: the C used, 2)
    expect(c, 0.5, 2.0, clipped=False, bound=2.0)
    # step 3: C = 1, g = 1 (boundary: b = 1 since g <= C) -> no clip ; C = 1 / 2 = 0.5
    expect(c, 1.0, 1.0, clipped=False)
    # step 4: C = 0.5, g = 1.5 -> clip to 0.5 ; C = 1
    expect(c, 1.5, 0.5, clipped=True, bound=0.5)
    assert c.threshold == pytest.approx(1.0, rel=1e-12)
    assert c.state_dict()["threshold"] == c.threshold


def test_quantile_tracking_default_rates():
    # target 0.9, lr 0.2: a clipped step multiplies C by exp(0.2 * 0.9) = exp(0.18) ~ 1.1972,
    # an unclipped one by exp(-0.2 * 0.1) = exp(-0.02) ~ 0.9802.
    c = make_clipper("quantile")
    expect(c, 5.0, 1.0, clipped=True)
    assert c.threshold == pytest.approx(math.exp(0.18), rel=1e-12)
    expect(c, 0.1, math.exp(0.18), clipped=False)
    assert c.threshold == pytest.approx(math.exp(0.18) * math.exp(-0.02), rel=1e-12)
    # It settles where ~90% of the norms are below it: on norms 1..10 (uniform grid) it hovers near 9-10.
    for i in range(3000):
        feed(c, float(i % 10 + 1))
    assert 8.0 < c.threshold < 11.0


# ------------------------------------------------------------------------- ZClip and level shifts
def shifted_norms(level: float, n: int, seed: int = 3) -> list[float]:
    """8 calm warm-up norms around 1, then ``n`` norms around ``level`` (10 % noise)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(8 + n, generator=gen, dtype=torch.float64).tolist()
    return [1.0 + 0.05 * e for e in noise[:8]] + [level * (1.0 + 0.1 * e) for e in noise[8:]]


def test_zclip_skip_update_on_spike_after_a_level_shift_keeps_applying_clipped_gradients():
    """The zclip package (ZClip.step) on a spike with skip_update_on_spike: it clips the gradient, which the
    optimizer then applies, and only returns before ``_update_ema``. After a lasting shift every step is a
    spike: the statistics stay frozen for good but the parameter keeps moving (with a clipped step)."""
    z_thresh, eps = 2.5, 1e-6
    norms = shifted_norms(10.0, 300)
    c = make_clipper("zclip", warmup_steps=8, skip_update_on_spike=True)
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=1.0)
    for g in norms[:8]:
        feed(c, g)
    # The package's _initialize_ema on the 8 warm-up norms (population mean and variance):
    mean = sum(norms[:8]) / 8
    var = sum((x - mean) ** 2 for x in norms[:8]) / 8
    assert (c.mean, c.var) == (mean, var)
    for g in norms[8:]:
        opt.zero_grad()
        p.grad = torch.tensor([g], dtype=torch.float64)
        before = p.item()
        stats = c.clip([p])
        # The package's _compute_clip_val (zscore, adaptive_scaling) with the frozen mean/var:
        std = var**0.5
        z = (g - mean) / (std + eps)
        clip_val = mean + (z_thresh * std) / (z / z_thresh)
        assert stats.spike and stats.stats_frozen and stats.clipped and not stats.skip, stats
        assert stats.threshold == clip_val
        # clipped, not zeroed: the package's apply_in_place_clipping scale max / (norm + 1e-6)
        assert p.grad.item() == pytest.approx(g * clip_val / (g + EPS), rel=1e-12) and p.grad.item() > 0
        if not stats.skip:  # the documented training loop
            opt.step()
        assert p.item() == pytest.approx(before - g * clip_val / (g + EPS), rel=1e-12)
        assert (c.mean, c.var) == (mean, var)  # the package skips _update_ema: frozen for good


@pytest.mark.parametrize("clip_option", ["adaptive_scaling", "mean"])
def test_zclip_zscore_mode_does_not_follow_an_abrupt_level_shift(clip_option):
    """Without skip_update_on_spike the EMA is fed the CLIPPED norm (package behaviour): the variance decays,
    the mean stalls near the old level and every step after a 1 -> 10 shift stays a spike clipped to ~1."""
    c = make_clipper("zclip", warmup_steps=8, clip_option=clip_option)
    stats = [feed(c, g)[0] for g in shifted_norms(10.0, 1000)]
    after = stats[8:]
    assert all(s.spike and s.clipped and not s.skip and not s.stats_frozen for s in after)
    assert max(s.threshold for s in after[-100:]) < 1.5  # pinned at the pre-shift level
    assert c.mean < 1.5 and c.var < 1e-6


def test_zclip_percentile_mode_follows_an_abrupt_level_shift():
    """Percentile mode feeds back mean + z_thresh * std, so the mean climbs and the spikes stop."""
    c = make_clipper("zclip", warmup_steps=8, mode="percentile")
    stats = [feed(c, g)[0] for g in shifted_norms(10.0, 1000)]
    last_spike = max(i for i, s in enumerate(stats) if s.spike)
    assert sum(s.spike for s in stats[-500:]) < 25  # ~ the noise tail beyond mean + 2.5 std, not all
    assert 8.0 < c.mean < 12.0 and last_spike > 8


def ramp_mean(seed: int, **kwargs) -> tuple[float, int]:
    """Feed norms rising 1 -> 10 over 500 steps (10 % noise), then 500 at 10; return the final mean and the
    number of spikes among the last 500."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(1000, generator=gen, dtype=torch.float64).tolist()
    c = make_clipper("zclip", **kwargs)
    flagged = [feed(c, (1.0 + 9.0 * min(t / 500, 1.0)) * (1.0 + 0.1 * e))[0].spike
               for t, e in enumerate(noise)]
    return c.mean, sum(flagged[500:])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kwargs", [{}, {"mode": "percentile"}])
def test_zclip_default_and_percentile_modes_follow_a_gradual_drift(kwargs, seed):
    """The counterpart of the level-shift tests: a ramp 1 -> 10 over 500 steps is tracked."""
    mean, late_spikes = ramp_mean(seed, **kwargs)
    assert 9.0 < mean < 11.0
    assert late_spikes < 0.06 * 500  # only the noise tail is flagged, not every step


def test_zclip_mean_option_can_lock_at_the_old_level_on_a_ramp():
    """Documented hazard: clip_option="mean" feeds back the mean itself on a spike, so a run of spikes
    during a ramp can stop the EMA for good (seed 0 of the ramp above)."""
    mean, late_spikes = ramp_mean(0, clip_option="mean")
    assert mean < 2.0 and late_spikes == 500
