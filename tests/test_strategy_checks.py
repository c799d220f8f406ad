"""The checks on a strategy's parameters, fast path or not, against their written-out rule.

``Strategy.__post_init__`` tests each parameter inline (a known-good name, an ``int``
within +-2**53 or a finite ``float``) and hands anything else to
:func:`~backtest_queue.validation.check_params`. Whatever the keys and values, it must
accept exactly what ``check_params`` accepts and refuse the rest with the same error.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from backtest_queue.errors import InvalidRequest
from backtest_queue.protocol import Strategy
from backtest_queue.validation import MAX_SAFE_INTEGER, check_params
from lookalikes import Count, Number, Text


def reference(params: dict[Any, Any]) -> str | None:
    """The rule: the error's text, or None."""
    try:
        check_params(params)
    except InvalidRequest as exc:
        return str(exc)
    return None


def built(params: dict[Any, Any]) -> str | None:
    try:
        Strategy(name="s", kind="k", params=params)
    except InvalidRequest as exc:
        return str(exc)
    return None


_keys = st.one_of(
    st.sampled_from(["fast", "slow", "", "a\nb", "x" * 129, "x" * 128, "\ud800"]),
    st.text(max_size=4),
    st.builds(Text, st.sampled_from(["fast", "slow"])),
    st.integers(0, 2),
    st.none(),
)
_edges = [MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1]
_values = st.one_of(
    st.floats(),  # NaN and infinities included
    st.integers(-(2**54), 2**54),
    st.sampled_from([*_edges, 0, -0.0, 1.5, math.inf, -math.inf, math.nan]),
    st.booleans(),
    st.none(),
    st.text(max_size=2),
    st.builds(Number, st.floats(-1e3, 1e3)),
    st.builds(Count, st.integers(-3, 3)),
)


@given(params=st.dictionaries(_keys, _values, max_size=4))
@example(params={"fast": MAX_SAFE_INTEGER, "slow": -MAX_SAFE_INTEGER})
@example(params={"fast": MAX_SAFE_INTEGER + 1})
@example(params={"fast": -MAX_SAFE_INTEGER - 1})
@example(params={"fast": 1, Text("slow"): 2})
@example(params={"fast": True})
@example(params={"fast": math.nan, "slow": 1.0})
@example(params={"fast": Number(1.0)})
@example(params={"fast": Count(1)})
def test_strategy_params_follow_check_params(params: dict[Any, Any]) -> None:
    assert built(params) == reference(params)
