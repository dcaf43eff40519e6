"""Property tests of every clipper in ``clipping/`` (optax-style invariants) and of the public API."""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import clipping
from clipping import CLIPPERS, ClipStats, make_clipper

# One representative configuration (or several) per clipper; small windows/warm-ups so that short
# sequences exercise the adaptive regime.
CONFIGS: dict[str, tuple[str, dict]] = {
    "none": ("none", {}),
    "norm": ("norm", {"max_norm": 1.0}),
    "value": ("value", {"clip_value": 0.05}),
    "autoclip": ("autoclip", {"quantile": 0.5, "window": 8}),
    "autoclip_paper": ("autoclip", {"quantile": 0.5, "window": 8, "include_current": True}),
    "zclip": ("zclip", {"warmup_steps": 3, "z_thresh": 1.0}),
    "zclip_mean": ("zclip", {"warmup_steps": 3, "z_thresh": 1.0, "clip_option": "mean"}),
    "zclip_percentile": ("zclip", {"warmup_steps": 3, "z_thresh": 1.0, "mode": "percentile"}),
    "zclip_capped_skip": ("zclip", {"warmup_steps": 3, "max_grad_norm": 2.0, "skip_update_on_spike": True}),
    "agc": ("agc", {"clip_factor": 0.05}),
    "quantile": ("quantile", {"target_quantile": 0.5, "initial": 1.0}),
}
NORM_BASED = [k for k in CONFIGS if k != "value"]  # threshold bounds the global norm after clipping
ADAPTIVE = ["autoclip", "autoclip_paper", "zclip", "zclip_mean", "zclip_percentile", "zclip_capped_skip",
            "quantile"]
# A threshold so large that nothing may ever change (for autoclip: the max of a history that contains
# the current norm, i.e. the paper's mode with quantile 1).
HUGE: dict[str, dict] = {
    "none": {},
    "norm": {"max_norm": 1e30},
    "value": {"clip_value": 1e30},
    "autoclip": {"quantile": 1.0, "include_current": True, "window": None},
    "zclip": {"z_thresh": 1e30, "warmup_steps": 2},
    "agc": {"clip_factor": 1e30},
    "quantile": {"initial": 1e30},
}

SHAPES = [(16, 8), (16,), (4, 16), (4,), (1,), (3, 2, 2)]
FAST = settings(max_examples=20, deadline=None)


def build(key: str) -> clipping.Clipper:
    name, kwargs = CONFIGS[key]
    return make_clipper(name, **kwargs)


def make_params(seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in SHAPES]


def set_grads(params: list[torch.Tensor], seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale


def grads_of(params) -> list[torch.Tensor]:
    return [p.grad.clone() for p in params]


def global_norm64(tensors) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def run(clipper, params, seeds_scales) -> list[ClipStats]:
    out = []
    for seed, scale in seeds_scales:
        set_grads(params, seed, scale)
        out.append(clipper.clip(params))
    return out


def comparable(stats: ClipStats) -> tuple:
    """ClipStats as a tuple where NaN == NaN (non-finite steps report grad_norm=nan)."""
    return tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in dataclasses.astuple(stats))


# Sequences of (seed, scale): log-uniform scales over 4 decades give both calm steps and spikes.
step_seq = st.lists(
    st.tuples(st.integers(0, 2**31 - 1), st.floats(-2.0, 2.0).map(lambda e: 10.0**e)), min_size=1, max_size=14
)


def test_every_registered_clipper_is_property_tested():
    assert {name for name, _ in CONFIGS.values()} == set(CLIPPERS)
    assert set(HUGE) == set(CLIPPERS)
    assert list(CLIPPERS) == ["none", "norm", "value", "autoclip", "zclip", "agc", "quantile"]


# ------------------------------------------------------------------------------------ invariants
@pytest.mark.parametrize("name", sorted(HUGE))
@FAST
@given(seq=step_seq)
def test_huge_threshold_is_a_noop(name, seq):
    clipper = make_clipper(name, **HUGE[name])
    params = make_params(0)
    for seed, scale in seq:
        set_grads(params, seed, scale)
        before = grads_of(params)
        stats = clipper.clip(params)
        assert not stats.clipped and not stats.nonfinite
        assert all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=True))
        assert stats.grad_norm == pytest.approx(global_norm64(before), rel=1e-5)


@pytest.mark.parametrize("key", sorted(CONFIGS))
@FAST
@given(seq=step_seq)
def test_clipped_gradients_respect_the_threshold(key, seq):
    clipper = build(key)
    params = make_params(1)
    for seed, scale in seq:
        set_grads(params, seed, scale)
        before = grads_of(params)
        stats = clipper.clip(params)
        after = grads_of(params)
        if not stats.clipped:  # untouched, bit for bit
            assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
        if key == "value":
            bound = float(torch.tensor(stats.threshold, dtype=torch.float32))  # the clamp runs in float32
            assert max(float(g.abs().max()) for g in after) <= bound
            assert stats.clipped == (max(float(g.abs().max()) for g in before) > stats.threshold)
        else:
            assert global_norm64(after) <= stats.threshold * (1 + 1e-5)
            if key == "norm":  # torch's rule: factor max_norm / (norm + 1e-6) < 1
                assert stats.clipped == (stats.threshold / (stats.grad_norm + 1e-6) < 1) or math.isclose(
                    stats.threshold, stats.grad_norm + 1e-6, rel_tol=1e-6)
            elif key != "agc":  # (AGC's threshold is the bound of its unit caps, not a trigger)
                assert stats.clipped == (stats.grad_norm > stats.threshold)


@pytest.mark.parametrize("key", sorted(set(CONFIGS) - {"autoclip_paper"}))
@FAST
@given(seq=step_seq, seed=st.integers(0, 2**31 - 1), scale=st.floats(-2.0, 2.0).map(lambda e: 10.0**e))
def test_clipping_twice_with_frozen_state_equals_once(key, seq, seed, scale):
    clipper = build(key)
    params = make_params(2)
    run(clipper, params, seq)  # reach some non-trivial state first
    frozen = clipper.state_dict()

    set_grads(params, seed, scale)
    clipper.clip(params)
    once = grads_of(params)
    again = make_clipper(frozen["name"], **frozen["config"])
    again.load_state_dict(frozen)
    again.clip(params)
    for a, b in zip(grads_of(params), once, strict=True):
        # clip_grad_norm_'s scale max/(norm + 1e-6) leaves the norm a hair below the threshold; `norm`
        # (torch's exact rule) may then rescale by ~1 - 1e-6/norm, the others do not touch it at all.
        torch.testing.assert_close(a, b, rtol=2e-6, atol=0.0)


# Clippers whose decision is a global-norm level (value and agc clip element-/unit-wise: no such level).
NORM_LEVEL = [k for k in CONFIGS if k not in ("value", "agc")]


@pytest.mark.parametrize("key", sorted(CONFIGS))
@FAST
@given(seq=step_seq)
def test_norms_at_or_below_the_bound_are_never_clipped(key, seq):
    clipper = build(key)
    params = make_params(12)
    for seed, scale in seq:
        set_grads(params, seed, scale)
        stats = clipper.clip(params)
        assert not math.isnan(stats.bound) and stats.bound > 0.0
        if key in NORM_LEVEL:
            # norm: torch's factor max_norm / (norm + 1e-6) already rescales within 1e-6 below max_norm.
            level = stats.bound - 1e-6 if key == "norm" else stats.bound
            if stats.grad_norm <= level:
                assert not stats.clipped, stats
        if key in ("norm", "autoclip", "autoclip_paper", "quantile", "agc"):
            assert stats.bound == stats.threshold
        elif key in ("none", "value"):
            assert stats.bound == math.inf


def test_value_and_agc_clip_below_their_bound_which_is_why_it_is_not_a_trigger():
    # value: one element 0.06 > clip_value 0.05 is clipped although the norm (0.06) is far below
    # clip_value * sqrt(n) = 0.05 * 2 = 0.1; the reported bound is inf.
    p = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    p.grad = torch.tensor([0.06, 0.0, 0.0, 0.0], dtype=torch.float64)
    stats = make_clipper("value", clip_value=0.05).clip([p])
    assert stats.clipped and stats.bound == math.inf
    # agc: two unit rows with weight norm 1 -> caps 0.1 each, bound sqrt(0.1^2 + 0.1^2) ~ 0.1414; a gradient
    # of norm 0.12 all in the first row exceeds that row's cap and is clipped, below the bound.
    w = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    w.grad = torch.tensor([[0.12, 0.0], [0.0, 0.0]], dtype=torch.float64)
    stats = make_clipper("agc", clip_factor=0.1).clip([w])
    assert stats.clipped and stats.grad_norm < stats.bound == pytest.approx(math.sqrt(0.02), rel=1e-12)


def test_zclip_bound_is_a_continuous_curve_after_warmup():
    """The point of ``bound``: on calm steps zclip applies no threshold (inf), yet bound is finite on every
    step after warm-up and moves smoothly with the EMA statistics."""
    gen = torch.Generator().manual_seed(3)
    norms = (1.0 + 0.1 * torch.randn(200, generator=gen, dtype=torch.float64)).abs().tolist()
    clipper = make_clipper("zclip")  # alpha 0.97, z_thresh 2.5, warm-up 25, no cap
    bounds, calm = [], 0
    for i, g in enumerate(norms):
        stats = feed(clipper, g)
        if i < 25:
            assert stats.bound == math.inf  # warm-up: no level yet (and no cap)
            continue
        if not stats.spike:
            calm += 1
            assert stats.threshold == math.inf  # calm: no threshold applied...
        assert math.isfinite(stats.bound)  # ...but a level all along
        bounds.append(stats.bound)
    assert calm >= 170  # (a 1 +- 0.1 noise has the odd 2.5-sigma step)
    # One calm EMA step (weight 0.03) moves mean + 2.5 std by a few % of it at most; a bound reported
    # only on spikes (or reset between them) would jump from/to inf instead.
    assert len(bounds) == 175
    assert max(abs(b - a) / a for a, b in zip(bounds[:-1], bounds[1:], strict=True)) < 0.05
    assert 1.1 < min(bounds) <= max(bounds) < 1.5  # near 1 + 2.5 * 0.1, the sequence's mean + z * std


def test_autoclip_paper_mode_is_not_idempotent_by_design():
    # With the current norm inside its own history (Algorithm 1), re-clipping sees a smaller norm and
    # hence a lower quantile: history [1, 2, 3] + 10 -> q0.9 at position 2.7 -> 3 + 0.7 * 7 = 7.9;
    # once clipped, [1, 2, 3] + 7.9 -> 3 + 0.7 * 4.9 = 6.43 < 7.9, so it clips again. Documented.
    clipper = make_clipper("autoclip", quantile=0.9, window=None, include_current=True)
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    for norm in (1.0, 2.0, 3.0):
        p.grad = torch.tensor([norm], dtype=torch.float64)
        clipper.clip([p])
    frozen = copy.deepcopy(clipper)
    p.grad = torch.tensor([10.0], dtype=torch.float64)
    assert clipper.clip([p]).threshold == pytest.approx(7.9)
    once = p.grad.item()
    assert frozen.clip([p]).threshold == pytest.approx(3 + 0.7 * (once - 3))
    assert p.grad.item() < once


def probe_threshold(clipper, norm: float) -> float:
    """The threshold ``clipper`` would apply to a gradient of ``norm`` (on a copy: state untouched)."""
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    p.grad = torch.tensor([norm], dtype=torch.float64)
    return copy.deepcopy(clipper).clip([p]).threshold


def feed(clipper, norm: float) -> ClipStats:
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    p.grad = torch.tensor([norm], dtype=torch.float64)
    return clipper.clip([p])


SPIKE_CONFIGS = {
    # key: (kwargs, strictly up right after the spike?, relative tolerance of the recovery)
    "autoclip": ({"quantile": 0.9, "window": 8}, True, 0.0),
    "autoclip_paper": ({"quantile": 0.9, "window": 8, "include_current": True}, True, 0.0),
    "zclip": ({"warmup_steps": 5}, True, 0.01),
    "zclip_mean": ({"warmup_steps": 5, "clip_option": "mean"}, False, 0.01),
    "zclip_percentile": ({"warmup_steps": 5, "mode": "percentile"}, True, 0.01),
    "zclip_skip": ({"warmup_steps": 5, "skip_update_on_spike": True}, False, 0.01),
    "quantile": ({"target_quantile": 0.5, "lr": 0.2, "initial": 1.0}, True, math.expm1(0.2)),
}


@pytest.mark.parametrize("key", sorted(SPIKE_CONFIGS))
def test_threshold_moves_up_after_a_spike_and_recovers(key):
    """After a spike the threshold must not tighten (it rises, or ZClip keeps it where it was because it
    feeds back the *clipped* norm); after calm steps it is back to the no-spike counterfactual."""
    kwargs, strictly_up, tol = SPIKE_CONFIGS[key]
    name = key.split("_")[0]
    calm = [1.0, 1.2, 0.9, 1.1]  # a noisy but stationary norm sequence
    spiked, twin = make_clipper(name, **kwargs), make_clipper(name, **kwargs)
    for i in range(40):
        feed(spiked, calm[i % 4])
        feed(twin, calm[i % 4])
    probe = 1000.0
    before = probe_threshold(spiked, probe)
    stats = feed(spiked, 50.0)  # the spike
    assert stats.clipped
    feed(twin, calm[40 % 4])  # the counterfactual: a calm step instead
    after = probe_threshold(spiked, probe)
    assert after > before if strictly_up else after >= before * (1 - 1e-12)
    assert after >= probe_threshold(twin, probe) * (1 - 1e-12)
    for i in range(41, 41 + 200):
        feed(spiked, calm[i % 4])
        feed(twin, calm[i % 4])
    recovered, reference = probe_threshold(spiked, probe), probe_threshold(twin, probe)
    assert abs(recovered - reference) <= tol * reference + 1e-12


@pytest.mark.parametrize("key", sorted(CONFIGS))
@FAST
@given(seq=step_seq, cut=st.integers(0, 14), nan_at=st.integers(0, 20))
def test_state_dict_round_trip_continues_bit_for_bit(key, seq, cut, nan_at):
    cut = min(cut, len(seq))
    params_a, params_b = make_params(3), make_params(3)
    a, b = build(key), build(key)
    stats_a, stats_b = [], []
    for i, (seed, scale) in enumerate(seq):
        for params, clipper, out in ((params_a, a, stats_a), (params_b, b, stats_b)):
            set_grads(params, seed, scale)
            if i == nan_at:
                params[0].grad[0, 0] = math.nan
            out.append(clipper.clip(params))
        if i + 1 == cut:  # save b, restore it into a fresh clipper through torch.save/torch.load
            buf = io.BytesIO()
            torch.save(b.state_dict(), buf)
            buf.seek(0)
            state = torch.load(buf, weights_only=True)
            b = make_clipper(state["name"], **state["config"])
            b.load_state_dict(state)
        assert all(torch.equal(x.grad, y.grad) for x, y in zip(params_a, params_b, strict=True))
    assert [comparable(s) for s in stats_a] == [comparable(s) for s in stats_b]
    assert a.state_dict() == b.state_dict()


@pytest.mark.parametrize("key", sorted(CONFIGS))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@settings(max_examples=8, deadline=None)
@given(seq=step_seq, where=st.integers(0, len(SHAPES) - 1))
def test_nonfinite_gradients_are_neutralized_and_leave_statistics_alone(key, bad, seq, where):
    params, twin_params = make_params(4), make_params(4)
    clipper, twin = build(key), build(key)
    run(clipper, params, seq)
    run(twin, twin_params, seq)
    before = clipper.state_dict()

    set_grads(params, 99, 1.0)
    params[where].grad.view(-1)[-1] = bad
    stats = clipper.clip(params)
    assert stats.nonfinite and stats.skip and stats.clipped and stats.threshold == 0.0
    assert all(torch.count_nonzero(p.grad) == 0 for p in params)  # every tensor zeroed, not just the bad one
    after = clipper.state_dict()
    assert after.pop("nonfinite_count") == before.pop("nonfinite_count") + 1
    assert after == before
    # ...and the next finite step behaves as if the bad step never happened.
    set_grads(params, 7, 3.0)
    set_grads(twin_params, 7, 3.0)
    twin_stats = twin.clip(twin_params)
    assert clipper.clip(params) == twin_stats
    # The bad step reported the level in force (not 0): the one the twin's next step is judged against -
    # except in AutoClip's paper mode, whose level includes the current norm: there, the quantile of the
    # history alone.
    if key == "autoclip_paper":
        history = torch.tensor(before["history"], dtype=torch.float64)
        level = torch.quantile(history, 0.5).item() if len(history) else math.inf
        assert stats.bound == pytest.approx(level, rel=1e-12)
    else:
        assert stats.bound == twin_stats.bound
    assert all(torch.equal(x.grad, y.grad) for x, y in zip(params, twin_params, strict=True))


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_empty_parameter_lists_and_params_without_grads(key):
    clipper = build(key)
    fresh = clipper.state_dict()
    # Nothing is clipped, but bound still reports the level in force: a fresh clipper's fixed level, its
    # cap, or its initial C (the adaptive ones have no history yet: inf).
    level = {"norm": 1.0, "zclip_capped_skip": 2.0, "quantile": 1.0}.get(key, math.inf)
    nothing = ClipStats(grad_norm=0.0, threshold=math.inf, bound=level, clipped=False, nonfinite=False)
    assert clipper.clip([]) == nothing
    assert clipper.clip(p for p in []) == nothing
    no_grad = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2, 2))]
    assert clipper.clip(no_grad) == nothing
    assert clipper.clip(no_grad[0]) == nothing  # a single tensor is accepted too
    assert clipper.state_dict() == fresh

    # Mixed: params without grad are skipped and keep grad None; the others clip as if alone.
    twin = build(key)
    params, alone = make_params(5), make_params(5)
    for step in range(6):
        set_grads(params, step, 10.0 ** (step % 3 - 1))
        set_grads(alone, step, 10.0 ** (step % 3 - 1))
        params[1].grad = None
        mixed_stats = clipper.clip(iter(params))  # a generator
        alone_stats = twin.clip([p for i, p in enumerate(alone) if i != 1])
        assert mixed_stats == alone_stats
        assert params[1].grad is None
        assert all(torch.equal(params[i].grad, alone[i].grad) for i in range(len(SHAPES)) if i != 1)


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_reset_forgets_every_statistic(key):
    clipper, fresh = build(key), build(key)
    params = make_params(6)
    run(clipper, params, [(i, 10.0 ** (i % 4 - 2)) for i in range(12)])
    params[0].grad[0, 0] = math.inf
    clipper.clip(params)
    clipper.reset()
    assert clipper.state_dict() == fresh.state_dict()


# ------------------------------------------------------------------------- agreement with torch
@FAST
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(-3.0, 3.0).map(lambda e: 10.0**e),
       max_norm=st.floats(1e-3, 1e3), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_norm_clipper_is_identical_to_clip_grad_norm(seed, scale, max_norm, dtype):
    ours, theirs = make_params(8, dtype), make_params(8, dtype)
    set_grads(ours, seed, scale)
    set_grads(theirs, seed, scale)
    total = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    stats = make_clipper("norm", max_norm=max_norm).clip(ours)
    assert stats.grad_norm == total.item()
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, theirs, strict=True))
    # Borderline: a threshold equal to the norm itself still gets torch's (1 - 1e-6/norm) rescale.
    exact = float(total)
    set_grads(ours, seed, scale)
    set_grads(theirs, seed, scale)
    torch.nn.utils.clip_grad_norm_(theirs, exact)
    stats = make_clipper("norm", max_norm=exact).clip(ours)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, theirs, strict=True))
    assert stats.clipped == (float(torch.clamp(exact / (total + 1e-6), max=1.0)) < 1.0)


@FAST
@given(seed=st.integers(0, 2**31 - 1), clip_value=st.floats(1e-3, 3.0))
def test_value_clipper_is_identical_to_clip_grad_value(seed, clip_value):
    ours, theirs = make_params(9), make_params(9)
    set_grads(ours, seed, 1.0)
    set_grads(theirs, seed, 1.0)
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    stats = make_clipper("value", clip_value=clip_value).clip(ours)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, theirs, strict=True))
    set_grads(theirs, seed, 1.0)
    assert stats.clipped == any(float(p.grad.abs().max()) > clip_value for p in theirs)


def reference_agc(params, clip_factor, eps):
    """AGC written out from the paper / timm's adaptive_clip_grad (independent of clipping/)."""
    for p in params:
        g = p.grad
        if g.ndim <= 1:
            cap, gn = p.detach().norm(2), g.norm(2)
        else:
            dims = tuple(range(1, g.ndim))
            cap, gn = p.detach().norm(2, dim=dims, keepdim=True), g.norm(2, dim=dims, keepdim=True)
        cap = cap.clamp(min=eps) * clip_factor
        p.grad = torch.where(gn < cap, g, g * (cap / gn.clamp(min=1e-6)))


@FAST
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(-3.0, 1.0).map(lambda e: 10.0**e),
       clip_factor=st.sampled_from([0.01, 0.05, 0.3]))
def test_agc_matches_the_unitwise_rule(seed, scale, clip_factor):
    ours, theirs = make_params(10), make_params(10)
    with torch.no_grad():
        ours[1].zero_()  # a zero-initialised bias: its cap is clip_factor * eps
        theirs[1].zero_()
    set_grads(ours, seed, scale)
    set_grads(theirs, seed, scale)
    before = global_norm64(p.grad for p in ours)
    reference_agc(theirs, clip_factor, 1e-3)
    stats = make_clipper("agc", clip_factor=clip_factor).clip(ours)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0.0)
    assert stats.grad_norm == pytest.approx(before, rel=1e-5)
    caps = []
    for p in ours:
        unit = p.detach().norm() if p.ndim <= 1 else p.detach().flatten(1).norm(dim=1)
        caps.append(unit.clamp(min=1e-3).double().reshape(-1) * clip_factor)
    assert stats.threshold == pytest.approx(float(torch.cat(caps).norm()), rel=1e-5)


# --------------------------------------------------------------------------------- one sync per call
SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "__array__")


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_at_most_one_device_to_host_sync_per_call(key, monkeypatch):
    """Every way python can pull a tensor value to the host is counted; each clip() uses exactly one
    (none on an empty call). Syncs hidden inside kernels are not visible here; on a GPU,
    ``benchmarks/clip_overhead.py --device cuda`` counts them with CUDA's sync debug mode."""
    clipper = build(key)
    params = make_params(11)
    calls = []
    for attr in SYNCING:
        original = getattr(torch.Tensor, attr, None)
        if original is None:
            continue

        def counted(self, *args, _original=original, _attr=attr, **kwargs):
            calls.append(_attr)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, attr, counted)
    for step in range(40):  # warm-up, calm, clipped and non-finite steps
        set_grads(params, step, 10.0 ** (step % 5 - 2))
        if step % 13 == 12:
            params[2].grad[0, 0] = math.nan
        calls.clear()
        clipper.clip(params)
        assert len(calls) == 1, calls
    calls.clear()
    clipper.clip([])
    assert calls == []


# ----------------------------------------------------------------------------------------- API
def test_make_clipper_rejects_unknown_names_with_a_suggestion():
    with pytest.raises(ValueError, match=r"did you mean 'zclip'\?.*none, norm, value, autoclip, zclip, agc"):
        make_clipper("zclp")
    with pytest.raises(ValueError, match="valid names"):
        make_clipper("totally-unknown")
    with pytest.raises(ValueError, match="must be a string"):
        make_clipper(None)
    assert make_clipper(" ZClip ").name == "zclip"


def test_make_clipper_rejects_unknown_and_missing_keywords():
    with pytest.raises(ValueError, match=r"unknown keyword 'alpah'; did you mean 'alpha'\?.*warmup_steps"):
        make_clipper("zclip", alpah=0.9)
    with pytest.raises(ValueError, match=r"unknown keyword 'max_norm'.*valid keywords: \(none\)"):
        make_clipper("none", max_norm=1.0)
    with pytest.raises(ValueError, match="needs the keyword.*clip_value"):
        make_clipper("value")


@pytest.mark.parametrize(("name", "kwargs", "arg"), [
    ("norm", {"max_norm": 0.0}, "max_norm"),
    ("norm", {"max_norm": "1"}, "max_norm"),
    ("value", {"clip_value": -1.0}, "clip_value"),
    ("autoclip", {"quantile": 1.5}, "quantile"),
    ("autoclip", {"window": 0}, "window"),
    ("autoclip", {"window": 2.5}, "window"),
    ("autoclip", {"include_current": 1}, "include_current"),
    ("zclip", {"alpha": 1.0}, "alpha"),
    ("zclip", {"z_thresh": math.nan}, "z_thresh"),
    ("zclip", {"warmup_steps": True}, "warmup_steps"),
    ("zclip", {"mode": "zscroe"}, "did you mean 'zscore'"),
    ("zclip", {"clip_option": "adaptive"}, "clip_option"),
    ("zclip", {"max_grad_norm": -1.0}, "max_grad_norm"),
    ("zclip", {"eps": 0.0}, "eps"),
    ("agc", {"clip_factor": 0.0}, "clip_factor"),
    ("quantile", {"target_quantile": -0.1}, "target_quantile"),
    ("quantile", {"lr": -1.0}, "lr"),
    ("quantile", {"initial": math.inf}, "initial"),
])
def test_invalid_values_raise_value_errors_naming_the_argument(name, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        make_clipper(name, **kwargs)


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_config_is_yaml_safe_and_rebuilds_the_clipper(key):
    clipper = build(key)
    config = yaml.safe_load(yaml.safe_dump(clipper.config))
    rebuilt = make_clipper(clipper.name, **config)
    assert type(rebuilt) is type(clipper) and rebuilt.config == clipper.config
    assert repr(clipper).startswith(type(clipper).__name__ + "(")


def test_load_state_dict_refuses_another_clipper_or_configuration():
    zclip = make_clipper("zclip")
    with pytest.raises(ValueError, match="belongs to clipper 'autoclip'"):
        zclip.load_state_dict(make_clipper("autoclip").state_dict())
    with pytest.raises(ValueError, match=r"different configuration \(differs in \['alpha'\]"):
        zclip.load_state_dict(make_clipper("zclip", alpha=0.9).state_dict())
    with pytest.raises(ValueError, match="missing"):
        zclip.load_state_dict({"name": "zclip"})


def test_defaults_are_the_documented_ones():
    assert make_clipper("norm").config == {"max_norm": 0.5}
    assert make_clipper("autoclip").config == {"quantile": 0.9, "window": 1000, "include_current": False}
    assert make_clipper("zclip").config == {
        "alpha": 0.97, "z_thresh": 2.5, "warmup_steps": 25, "mode": "zscore",
        "clip_option": "adaptive_scaling", "clip_factor": 1.0, "max_grad_norm": None,
        "skip_update_on_spike": False, "eps": 1e-6}
    assert make_clipper("agc").config == {"clip_factor": 0.01, "eps": 1e-3}
    assert make_clipper("quantile").config == {"target_quantile": 0.9, "lr": 0.2, "initial": 1.0}


def test_every_clipper_class_documents_its_paper_and_state():
    for cls in CLIPPERS.values():
        doc = cls.__doc__
        assert "References:" in doc and "State:" in doc, cls.__name__
        assert cls.__name__ in clipping.__all__


def test_works_inside_a_training_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    clipper = make_clipper("zclip", warmup_steps=2)
    for _ in range(5):
        opt.zero_grad()
        loss = net(torch.randn(16, 4)).pow(2).mean() * 100
        loss.backward()
        stats = clipper.clip(net.parameters())
        assert isinstance(stats.grad_norm, float) and isinstance(stats.clipped, bool)
        if not stats.skip:
            opt.step()
    assert clipper.state_dict()["initialized"] is True
    assert set(stats.as_dict()) == {"grad_norm", "threshold", "bound", "clipped", "nonfinite", "spike",
                                    "skip", "stats_frozen"}


# ------------------------------------------------------------------------------ inf and nan arguments
INF_OK = [  # (name, kwargs with an infinite "no limit" argument)
    ("norm", {"max_norm": math.inf}),
    ("norm", {"max_norm": "inf"}),  # what a CLI parser hands over for ``norm:max_norm=inf``
    ("norm", {"max_norm": ".inf"}),
    ("value", {"clip_value": math.inf}),
    ("value", {"clip_value": "Infinity"}),
    ("zclip", {"max_grad_norm": math.inf, "warmup_steps": 10}),  # warm-up: only the (absent) cap acts
    ("agc", {"clip_factor": math.inf}),
]


@pytest.mark.parametrize(("name", "kwargs"), INF_OK)
def test_inf_means_no_limit_the_norm_is_still_measured(name, kwargs):
    clipper = make_clipper(name, **kwargs)
    assert math.inf in clipper.config.values()
    # The config stays YAML-safe (``.inf``) and rebuilds the same clipper.
    assert make_clipper(name, **yaml.safe_load(yaml.safe_dump(clipper.config))).config == clipper.config
    params = make_params(0)
    for step, scale in enumerate([1.0, 50.0, 0.01, 1e4]):
        set_grads(params, step, scale)
        before = [g.clone() for g in grads_of(params)]
        stats = clipper.clip(params)
        assert stats.grad_norm == pytest.approx(global_norm64(before), rel=1e-5) and stats.grad_norm > 0
        assert not stats.clipped and not stats.skip
        assert all(torch.equal(a, b) for a, b in zip(before, grads_of(params), strict=True))


def test_zclip_max_grad_norm_inf_behaves_like_none():
    a = make_clipper("zclip", warmup_steps=3, z_thresh=1.0, max_grad_norm=math.inf)
    b = make_clipper("zclip", warmup_steps=3, z_thresh=1.0)
    pa, pb = make_params(1), make_params(1)
    for step, scale in enumerate([1.0, 1.1, 0.9, 30.0, 1.0, 0.5]):
        set_grads(pa, step, scale)
        set_grads(pb, step, scale)
        assert clip_and_compare(a, pa) == clip_and_compare(b, pb)


def clip_and_compare(clipper, params) -> tuple:
    return comparable(clipper.clip(params)), [g.tolist() for g in grads_of(params)]


REAL_ARGS = {  # every real-valued constructor argument, and whether +inf is a meaningful "no limit"
    "norm": {"max_norm": True},
    "value": {"clip_value": True},
    "autoclip": {"quantile": False},
    "zclip": {"alpha": False, "z_thresh": False, "clip_factor": False, "max_grad_norm": True, "eps": False},
    "agc": {"clip_factor": True, "eps": False},
    "quantile": {"target_quantile": False, "lr": False, "initial": False},
}


def test_real_arguments_table_covers_every_clipper():
    assert set(REAL_ARGS) == set(CLIPPERS) - {"none"}


@pytest.mark.parametrize(("name", "arg"), [(n, a) for n, args in REAL_ARGS.items() for a in args])
def test_nan_is_rejected_with_a_clear_message(name, arg):
    required = {"clip_value": 1.0} if name == "value" else {}
    with pytest.raises(ValueError, match=rf"{name}: {arg} is nan \(not a number\).*Fix: pass.*{arg}="):
        make_clipper(name, **{**required, arg: math.nan})
    with pytest.raises(ValueError, match=rf"{arg} must be a real number"):
        make_clipper(name, **{**required, arg: -math.inf})


@pytest.mark.parametrize(("name", "arg"), [(n, a) for n, args in REAL_ARGS.items() for a, ok in args.items()
                                           if not ok])
def test_inf_is_rejected_where_no_limit_is_meaningless(name, arg):
    with pytest.raises(ValueError, match=rf"{arg} must be a real number.*got inf"):
        make_clipper(name, **{arg: math.inf})
    with pytest.raises(ValueError, match=rf"{arg} must be a real number.*got 'inf' \(a str\)"):
        make_clipper(name, **{arg: "inf"})


def test_other_strings_are_still_rejected():
    with pytest.raises(ValueError, match=r"max_norm must be a real number.*got '0.5' \(a str\)"):
        make_clipper("norm", max_norm="0.5")
    with pytest.raises(ValueError, match=r"max_norm is nan \(not a number\)"):
        make_clipper("norm", max_norm="nan")  # what a CLI parser hands over for ``norm:max_norm=nan``


# ------------------------------------------------------------------------------------------ plugins
PLUGIN_MODULE = "perpclip_test_plugin"
PLUGIN_SOURCE = '''
"""A third-party clipper module (written by tests/test_clipping.py)."""
from clipping import Clipper


class HalfClip(Clipper):
    """Clips the global norm to ``limit``.

    References: none. State: nonfinite_count.
    """

    name = "half"

    def __init__(self, limit: float = 1.0) -> None:
        self.limit = float(limit)
        super().__init__({"limit": self.limit})

    def _update(self, norm):
        return self.limit, self.limit, False, False


class Duck:
    """Implements the clipper protocol without subclassing clipping.Clipper."""

    name = "duck"
    config = {}

    def clip(self, parameters):
        return None

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def reset(self):
        pass


class NotAClipper:
    def clip(self, parameters):
        return None


not_a_class = 3
'''
ENTRY_POINTS = f"""[perpclip.clippers]
half = {PLUGIN_MODULE}:HalfClip
zclip = {PLUGIN_MODULE}:HalfClip
broken = {PLUGIN_MODULE}:Missing
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder with a plugin module and an installed-distribution record declaring its entry points."""
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    dist = tmp_path / f"{PLUGIN_MODULE}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN_MODULE}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, PLUGIN_MODULE, raising=False)
    yield tmp_path
    sys.modules.pop(PLUGIN_MODULE, None)


def test_make_clipper_builds_a_plugin_class_from_its_import_path(plugin_dir):
    clipper = make_clipper(f"{PLUGIN_MODULE}:HalfClip", limit=2.0)
    assert type(clipper).__name__ == "HalfClip" and clipper.config == {"limit": 2.0}
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    p.grad = torch.tensor([8.0], dtype=torch.float64)
    stats = clipper.clip([p])
    assert stats.clipped and p.grad.item() == pytest.approx(2.0 * 8.0 / (8.0 + 1e-6))
    assert type(make_clipper(f"{PLUGIN_MODULE}:Duck")).__name__ == "Duck"  # protocol, no subclass
    with pytest.raises(ValueError, match=r"unknown keyword 'limt'; did you mean 'limit'\?"):
        make_clipper(f"{PLUGIN_MODULE}:HalfClip", limt=2.0)


@pytest.mark.parametrize(("name", "message"), [
    (f"{PLUGIN_MODULE}:NotAClipper",
     r"neither subclasses clipping.Clipper nor implements its protocol "
     r"\(missing: state_dict, load_state_dict, reset, name.*valid names: none"),
    (f"{PLUGIN_MODULE}:not_a_class", r"not a class.*valid names: none, norm"),
    (f"{PLUGIN_MODULE}:HalfClp", r"has no attribute 'HalfClp'; did you mean 'HalfClip'\?"),
    ("perpclip_no_such_module:X", r"cannot import module 'perpclip_no_such_module'.*PYTHONPATH"),
    (f"{PLUGIN_MODULE}:", r"bad clipper import path.*'module:Class'"),
])
def test_bad_plugin_paths_raise_value_errors(plugin_dir, name, message):
    with pytest.raises(ValueError, match=message):
        make_clipper(name)


def test_entry_point_clippers_are_found_by_name(plugin_dir):
    assert type(make_clipper("half", limit=3.0)).__name__ == "HalfClip"
    assert type(make_clipper("HALF")).__name__ == "HalfClip"
    assert type(make_clipper("zclip")) is clipping.ZClip  # a built-in name cannot be taken over
    known = clipping.available_clippers()
    assert known["half"] == f"{PLUGIN_MODULE}:HalfClip" and known["zclip"] == "built-in"
    with pytest.raises(ValueError, match=r"unknown clipper 'hlaf'; did you mean 'half'\?.*half"):
        make_clipper("hlaf")
    with pytest.raises(ValueError, match=r"loading entry point 'perpclip_test_plugin:Missing'.*failed"):
        make_clipper("broken")


def test_entry_points_are_absent_without_the_distribution():
    assert "half" not in clipping.available_clippers()
    with pytest.raises(ValueError, match="unknown clipper 'half'"):
        make_clipper("half")


def test_a_spawned_process_resolves_plugins_through_pythonpath(plugin_dir):
    """Compare's workers are fresh processes: resolution by import name must work there too."""
    root = Path(clipping.__file__).resolve().parent.parent
    code = ("from clipping import make_clipper; "
            f"print(type(make_clipper('{PLUGIN_MODULE}:HalfClip', limit=2.0)).__name__, "
            "type(make_clipper('half')).__name__)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), str(root)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["HalfClip", "HalfClip"]
