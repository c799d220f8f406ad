"""The command line's numeric option types take any text: a value in range, or
argparse's own error (exit 2 with the message), never another exception."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtest_queue.cli_types import integer, number

TEXT = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-inf", "inf", "1e400", " 7 ", "0x10", "1_000", "", "-0", "٣"]),
)


def outcome(parse: Callable[[str], float], text: str) -> float | str:
    """The parsed value, or the message of argparse's error (any other exception fails)."""
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        return str(exc)


@given(TEXT, st.integers(-5, 5), st.integers(0, 10))
def test_integer_accepts_only_whole_numbers_in_range(text: str, low: int, span: int) -> None:
    parse = integer(low, low + span, also=(-100,))
    value = outcome(parse, text)
    if isinstance(value, str):
        assert repr(text) in value
        assert f"from {low} to {low + span} or -100" in value
        return
    assert isinstance(value, int)
    assert value == -100 or low <= value <= low + span


@given(TEXT, st.floats(-10, 10), st.floats(0, 10), st.booleans())
def test_number_accepts_only_finite_numbers_in_range(
    text: str, low: float, span: float, exclusive: bool
) -> None:
    parse = number(low, low + span, exclusive=exclusive, unit="seconds")
    value = outcome(parse, text)
    if isinstance(value, str):
        assert repr(text) in value
        assert "(seconds)" in value
        return
    assert math.isfinite(value)
    if exclusive:
        assert low < value < low + span
    else:
        assert low <= value <= low + span


@pytest.mark.parametrize("text", ["4294967295", "0", "7"])
def test_every_numpy_seed_is_accepted(text: str) -> None:
    assert integer(0, 2**32 - 1)(text) == int(text)
