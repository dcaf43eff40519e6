"""One value parser: the same ``key=value`` text gives the same value through every entry point."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.cli import build_parser, config_from_args
from agents.compare_spec import parse_clips
from agents.config import load_config
from envs.spec import parse_kwargs, parse_value
from envs.synthetic import parse_synthetic_spec

CASES = [
    ("none", None),
    ("None", None),
    ("null", None),
    ("yes", True),
    ("true", True),
    ("no", False),
    ("False", False),
    ("[1,2]", [1, 2]),
    ("[0.5,none,[3]]", [0.5, None, [3]]),
    ("1e-3", 1e-3),
    ("-2.5E+2", -250.0),
    ("7", 7),
    (".inf", math.inf),
    ("inf", math.inf),
    ("-inf", -math.inf),
    ("-.inf", -math.inf),
    ("zscore", "zscore"),
    ("0.4/1.2", (0.4, 1.2)),
]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _through_every_entry_point(text: str, tmp_path) -> dict[str, object]:
    """The value of ``x=<text>`` as each entry point reads it."""
    args = build_parser().parse_args(
        ["train", "--hp", f"x={text}", "--env", f"x={text}", "--clip", f"zclip:x={text}"]
    )
    cfg = config_from_args(args)
    (spec,) = parse_clips(f"zclip:x={text}", validate=False)
    _, synth = parse_synthetic_spec(f"synthetic:gbm:x={text}")
    path = tmp_path / "cfg.yaml"
    path.write_text(f"algo:\n  hyperparams:\n    x: {text}\n")
    return {
        "--hp": cfg.algo.hyperparams["x"],
        "--env": cfg.env.kwargs["x"],
        "--clip": cfg.clip.policy_kwargs["x"],
        "--clips": dict(spec.policy.kwargs)["x"],
        "synthetic": synth["x"],
        "config file": load_config(path).algo.hyperparams["x"],
        "parse_kwargs": parse_kwargs(f"x={text}")["x"],
    }


# '/' separates the policy and value parts in --clips, so ``0.4/1.2`` tuples are checked by parse_value only.
@pytest.mark.parametrize(("text", "expected"), [c for c in CASES if "/" not in c[0]])
def test_same_text_same_value_everywhere(text, expected, tmp_path):
    values = _through_every_entry_point(text, tmp_path)
    for where, value in values.items():
        assert _same(value, expected), (where, value, expected)


def test_nan_is_a_float_everywhere(tmp_path):
    for value in _through_every_entry_point("nan", tmp_path).values():
        assert isinstance(value, float) and math.isnan(value)


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_parse_value_table(text, expected):
    assert _same(parse_value(text), expected)


def test_quoted_text_stays_a_string_and_nothing_is_evaluated():
    assert parse_value("'none'") == "none"
    assert parse_value('"1"') == "1"
    assert parse_kwargs("x=__import__('os').getcwd()") == {"x": "__import__('os').getcwd()"}
    with pytest.raises(ValueError, match="key=value"):
        parse_kwargs("alpha")


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.integers(-(10**9), 10**9),
        st.floats(allow_nan=False),
        st.booleans(),
        st.none(),
        st.lists(st.integers(-100, 100), max_size=4),
    )
)
def test_python_values_round_trip_through_their_text(value):
    """The text perpclip writes for a value (compare labels, YAML) reads back as that value."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "none"
    elif isinstance(value, list):
        text = "[" + ",".join(map(str, value)) + "]"
    else:
        text = repr(value)
    assert _same(parse_value(text), value)
