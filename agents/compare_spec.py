"""What ``train.py compare`` runs: clipper specs, seeds, walk-forward folds and the grid of runs.

This module is pure bookkeeping (no torch, no SB3): it turns the command line into a list of :class:`RunJob`,
each carrying the full :class:`agents.config.RunConfig` of one run as a plain dict, so that jobs can be
pickled to worker processes or Ray tasks and compared with what an earlier (resumed) compare wrote.

The ``--clips`` grammar is :mod:`clipping.spec`'s; values are read by :func:`envs.spec.parse_value`, the one
value parser of every ``key=value`` spec. Every spec is validated by constructing the clipper with
:func:`clipping.make_clipper` before anything is launched.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agents.config import SB3_CLIP

__all__ = [
    "Arm",
    "ClipPart",
    "ClipSpec",
    "FoldRanges",
    "RunJob",
    "expand_grid",
    "make_folds",
    "parse_clips",
    "parse_seeds",
]

_EXAMPLE = "e.g. --clips none,norm:max_norm=0.5,zclip:z_thresh=2.0"


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class ClipPart:
    """One clipper: a name from :data:`clipping.CLIPPERS` and the keyword arguments the user gave."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def text(self) -> str:
        """Canonical spec text, e.g. ``norm:max_norm=0.5``."""
        if not self.kwargs:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in self.kwargs)


@dataclass(frozen=True)
class ClipSpec:
    """The clippers of one compared configuration: one for the policy part, one for the value part."""

    policy: ClipPart
    value: ClipPart

    @property
    def label(self) -> str:
        """Canonical text: ``norm:max_norm=0.5`` when both parts agree, else ``policy/value``."""
        if self.policy == self.value:
            return self.policy.text
        return f"{self.policy.text}/{self.value.text}"

    @property
    def slug(self) -> str:
        """The label made safe for a folder name on any OS."""
        return re.sub(r"[^A-Za-z0-9._=+\-]", "_", self.label.replace("/", "+").replace(":", "_"))

    def clip_config(self) -> dict[str, Any]:
        """The ``clip`` section of a RunConfig dict."""
        return {
            "policy": self.policy.name,
            "policy_kwargs": dict(self.policy.kwargs),
            "value": self.value.name,
            "value_kwargs": dict(self.value.kwargs),
        }


def _parse_one(whole: str) -> list[list[tuple[str, list[tuple[str, Any]]]]]:
    """Split one ``--clips`` value into specs, each a list of 1 or 2 parts (name, kwargs)."""
    from clipping.spec import parse_clip_specs  # clipping imports torch: only when specs are parsed
    from envs.spec import parse_value

    return parse_clip_specs(whole, parse_value, where="--clips")


def _validate_part(name: str, kwargs: list[tuple[str, Any]], *, text: str) -> ClipPart:
    keys = [k for k, _ in kwargs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"--clips: {text!r} gives keyword(s) {dup} more than once")
    return ClipPart(name, tuple(kwargs))




def _check_with_make_clipper(part: ClipPart, *, text: str) -> None:
    from clipping import make_clipper

    if part.name == SB3_CLIP:
        if part.kwargs:
            raise ValueError(
                f"--clips: {text!r}: '{SB3_CLIP}' (SB3's built-in max_grad_norm) takes no keywords; "
                "set it with --hp max_grad_norm=0.5"
            )
        return
    try:
        make_clipper(part.name, **dict(part.kwargs))
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"--clips: invalid clipper spec {text!r}: {err} "
            "(spec syntax: name[:key=value,...][/value_name[:key=value,...]]; a plugin class: "
            "module.path:Class[:key=value,...])"
        ) from err


def parse_clips(texts: str | Sequence[str], *, validate: bool = True) -> list[ClipSpec]:
    """Parse ``--clips`` values into clipper specs (see the module docstring for the grammar).

    Args:
        texts: one ``--clips`` string or several (repeated option).
        validate: construct every clipper with :func:`clipping.make_clipper` to reject unknown names and
            keywords before anything is launched.

    Returns:
        The specs in the order given.

    Raises:
        ValueError: naming the offending token, on syntax errors, duplicate keywords, duplicate specs, unknown
            clipper names or keywords.
    """
    if isinstance(texts, str):
        texts = [texts]
    specs: list[ClipSpec] = []
    for whole in texts:
        if not whole or not whole.strip():
            raise ValueError(f"--clips is empty; {_EXAMPLE}")
        for parts in _parse_one(whole):
            cparts = [_validate_part(n, kw, text=whole) for n, kw in parts]
            spec = ClipSpec(cparts[0], cparts[-1])
            if (spec.policy.name == SB3_CLIP) != (spec.value.name == SB3_CLIP):
                raise ValueError(
                    f"--clips: {spec.label!r}: '{SB3_CLIP}' (SB3's own clipping of all parameters) "
                    "cannot be mixed "
                    "with a perpclip clipper; use it alone, e.g. --clips sb3,zclip"
                )
            if validate:
                for part in {spec.policy, spec.value}:
                    _check_with_make_clipper(part, text=part.text)
            specs.append(spec)
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.label in seen:
            raise ValueError(f"--clips: {spec.label!r} is given twice; each spec must be distinct")
        if spec.slug in seen.values():
            raise ValueError(f"--clips: {spec.label!r} maps to the same run folder name as another spec")
        seen[spec.label] = spec.slug
    return specs


def parse_seeds(seeds: int | str | Sequence[int]) -> list[int]:
    """``5`` -> seeds 0..4; ``"3,7,11"`` -> those seeds; a sequence of ints is taken as is."""
    if isinstance(seeds, str):
        text = seeds.strip()
        try:
            if "," in text:
                out = [int(s) for s in text.split(",")]
            else:
                n = int(text)
                if n < 1:
                    raise ValueError
                out = list(range(n))
        except ValueError:
            raise ValueError(
                f"--seeds: expected a count (e.g. 5 -> seeds 0..4) or a comma list of seeds (e.g. 0,3,7), "
                f"got {seeds!r}"
            ) from None
    elif isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"--seeds: the number of seeds must be >= 1, got {seeds}")
        out = list(range(seeds))
    else:
        out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"--seeds: seeds must be distinct and non-empty, got {out}")
    return out


@dataclass(frozen=True)
class FoldRanges:
    """Bar index ranges ``[start, stop)`` of one walk-forward fold, in time order: train, (val), test.

    ``val`` (possibly ``None``) is the tail of the fold's training window, held out for model selection;
    ``train`` then ends where ``val`` starts, so the three never overlap and ``test`` starts at or after their
    end.
    """

    index: int
    train: tuple[int, int]
    val: tuple[int, int] | None
    test: tuple[int, int]


def make_folds(
    n_bars: int,
    n_folds: int,
    *,
    mode: str = "expanding",
    test_bars: int | None = None,
    min_train_bars: int | None = None,
    val_bars: int = 0,
    gap: int = 0,
) -> list[FoldRanges]:
    """Walk-forward folds from :func:`envs.splits.walk_forward`, optionally carving a validation tail.

    Args:
        n_bars: bars in the data.
        n_folds: number of folds (>= 1).
        mode: ``"expanding"`` (train from bar 0) or ``"rolling"`` (fixed-length train window).
        test_bars: bars per test period (default: walk_forward's).
        min_train_bars: passed to walk_forward.
        val_bars: bars taken from the end of each training window as a validation range (0: none).
        gap: bars left out between each training window and its test period (walk_forward's embargo).

    Raises:
        ValueError: on bad arguments or when a fold's train window is not longer than ``val_bars``.
    """
    from envs.splits import walk_forward

    if n_folds < 1:
        raise ValueError(f"--folds must be >= 1, got {n_folds}")
    if val_bars < 0:
        raise ValueError(f"--val-bars must be >= 0, got {val_bars}")
    folds = walk_forward(
        n_bars, n_folds, test_bars=test_bars, mode=mode, min_train_bars=min_train_bars, gap=gap
    )
    out: list[FoldRanges] = []
    for i, fold in enumerate(folds):
        (a, b), (c, d) = tuple(fold.train), tuple(fold.test)
        if not (0 <= a < b <= c < d <= n_bars):
            # walk_forward's contract; checked here because every result of the compare rests on it.
            raise ValueError(f"walk_forward returned an invalid fold {i}: train [{a}, {b}), test [{c}, {d})")
        val = None
        if val_bars:
            if b - a <= val_bars:
                raise ValueError(
                    f"--val-bars {val_bars} leaves no training bars in fold {i} (train [{a}, {b})); "
                    "lower --val-bars or use fewer --folds"
                )
            val = (b - val_bars, b)
            b -= val_bars
        out.append(FoldRanges(i, (int(a), int(b)), val, (int(c), int(d))))
    return out


@dataclass(frozen=True)
class Arm:
    """One combination of the stress axes of a compare (``--lr``, ``--optimizer``, ``--reward-scale``,
    ``--markets``; :mod:`agents.compare_arms`): the values every run of the arm shares.

    Attributes:
        values: ``(axis, value)`` pairs in axis order; empty for the one arm of a compare without axes.
    """

    values: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """``lr=0.001 optimizer=sgd`` (space-separated ``axis=value``); empty without axes."""
        return " ".join(f"{k}={_fmt(v)}" for k, v in self.values)

    @property
    def slug(self) -> str:
        """The label made safe for a folder name (axes joined by ``+``)."""
        return "+".join(
            re.sub(r"[^A-Za-z0-9._=\-]", "_", f"{k}={_fmt(v)}".replace(":", "_")) for k, v in self.values
        )

    def columns(self) -> dict[str, Any]:
        """The arm's results.csv columns: ``arm`` (the label) and one per axis; none without axes."""
        return {"arm": self.label, **dict(self.values)} if self.values else {}


@dataclass(frozen=True)
class RunJob:
    """One run of the grid: everything a worker needs, picklable.

    Attributes:
        name: run folder name inside the compare folder (unique within the grid).
        clip: the clipper spec label.
        seed: the run's seed.
        fold: the fold's index.
        folds: the fold's bar ranges.
        config: the full RunConfig as a dict (``RunConfig.to_dict()`` layout).
        arm: the stress-axis values of the run (:class:`Arm`; empty without axes).
    """

    name: str
    clip: str
    seed: int
    fold: int
    folds: FoldRanges
    config: dict[str, Any]
    arm: Arm = Arm()


def expand_grid(
    base_config: dict[str, Any],
    clips: Iterable[ClipSpec],
    seeds: Iterable[int],
    folds: Iterable[FoldRanges],
    arm: Arm | None = None,
) -> list[RunJob]:
    """Every (clipper, seed, fold) combination, as jobs with their RunConfig dicts.

    The base config's ``clip`` section, ``algo.seed`` and ``data`` ranges are replaced per run; everything
    else (algorithm, budget, network, env, data source) is shared, so runs differ only in what is compared.
    ``base_config`` is the arm's config already (:func:`agents.compare_arms.apply_arm`); a non-empty ``arm``
    prefixes the run names (``<arm slug>__<clip slug>__seed<s>__fold<f>``) and is carried by each job.
    """
    arm = arm or Arm()
    prefix = f"{arm.slug}__" if arm.values else ""
    clips, seeds, folds = list(clips), list(seeds), list(folds)
    jobs = []
    for spec in clips:
        for seed in seeds:
            for fold in folds:
                cfg = copy.deepcopy(base_config)
                cfg.setdefault("algo", {})["seed"] = int(seed)
                cfg["clip"] = spec.clip_config()
                data = cfg.setdefault("data", {})
                data["train_range"] = list(fold.train)
                data["val_range"] = list(fold.val) if fold.val else None
                data["test_range"] = list(fold.test)
                if fold.val is None:
                    # No validation range inside the fold: the fraction split's validation period could lie in
                    # the fold's future, so periodic validation (and best-model selection) is switched off.
                    cfg.setdefault("eval", {})["eval_freq"] = 0
                name = f"{prefix}{spec.slug}__seed{seed}__fold{fold.index}"
                jobs.append(RunJob(name, spec.label, int(seed), fold.index, fold, cfg, arm))
    return jobs
