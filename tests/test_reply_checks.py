"""The checks on a result's metrics, fast path or not, against their written-out rules.

``Metrics.__post_init__`` takes shortcuts for the common case (five finite floats tested
through their sum); whatever the values, built in Python or decoded from a peer's bytes,
it must accept exactly what the per-field rules accept and refuse the rest with the same
error (the first bad field, by name).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from backtest_queue import Metrics, ProtocolError
from backtest_queue.errors import InvalidMessage
from backtest_queue.protocol import BacktestResult, decode_message
from backtest_queue.validation import check_finite, check_int, check_text

_FLOATS = ("sharpe", "sortino", "return_pct", "max_drawdown_pct", "profit_factor")
_BIG = sys.float_info.max


def reference(fields: dict[str, Any]) -> str | None:
    """The rules, field by field in declaration order: the first error's text, or None."""
    try:
        check_text(fields["strategy_name"], "result.strategy_name", min_length=0,
                   max_length=None, error=InvalidMessage)  # fmt: skip
        for name in _FLOATS:
            if fields[name] is not None:
                check_finite(fields[name], f"result.{name}", error=InvalidMessage)
        if fields["win_rate"] is not None:
            check_finite(fields["win_rate"], "result.win_rate", low=0.0, high=1.0,
                         what="fraction", error=InvalidMessage)  # fmt: skip
        check_int(fields["trades"], "result.trades")
        check_int(fields["bars"], "result.bars")
        check_finite(fields["elapsed_ms"], "result.elapsed_ms", low=0.0, error=InvalidMessage)
    except InvalidMessage as exc:
        return str(exc)
    return None


_number = st.one_of(
    st.none(),
    st.floats(),  # NaN and infinities included
    st.floats(min_value=-_BIG, max_value=_BIG),
    st.sampled_from([_BIG, -_BIG, 1e308, 0.5, -0.0]),  # sums that overflow
    st.integers(-3, 3),
    st.booleans(),
)
_fields = st.fixed_dictionaries(
    {
        "strategy_name": st.one_of(st.text(max_size=8), st.sampled_from(["sma", "a\nb"])),
        **dict.fromkeys(_FLOATS, _number),
        "win_rate": _number,
        "trades": st.one_of(st.integers(-2, 2**54), st.booleans(), st.floats(0, 3)),
        "bars": st.one_of(st.integers(-2, 2**54), st.booleans()),
        "elapsed_ms": st.one_of(st.floats(), st.floats(0, 1e9), st.integers(0, 3)),
    }
)


def _all(value: object, **changes: object) -> dict[str, Any]:
    fields: dict[str, Any] = dict.fromkeys(_FLOATS, value)
    fields.update(strategy_name="s", win_rate=0.5, trades=1, bars=1, elapsed_ms=1.0)
    fields.update(changes)
    return fields


@given(fields=_fields)
@example(fields=_all(_BIG))  # finite values whose sum overflows: accepted
@example(fields=_all(_BIG, profit_factor=math.inf))
@example(fields=_all(_BIG, sharpe=-math.inf, sortino=math.inf))
@example(fields=_all(1.0, return_pct=math.nan))
@example(fields=_all(1.0, sharpe=True))
@example(fields=_all(1.0, sortino=None, win_rate=1.5))
def test_metrics_built_in_python_follow_the_rules(fields: dict[str, Any]) -> None:
    expected = reference(fields)
    if expected is None:
        assert Metrics(**fields).sharpe is fields["sharpe"]
    else:
        with pytest.raises(InvalidMessage) as caught:
            Metrics(**fields)
        assert str(caught.value) == expected


_encoder = msgspec.json.Encoder()


# What a peer's JSON can hold for each field (NaN and infinities go out as null).
_wire_number = st.one_of(st.none(), st.floats(), st.sampled_from([_BIG, -_BIG, 1e308]))
_wire_fields = st.fixed_dictionaries(
    {
        "strategy_name": st.one_of(st.text(max_size=8), st.sampled_from(["sma", "a\tb"])),
        **dict.fromkeys(_FLOATS, _wire_number),
        "win_rate": _wire_number,
        "trades": st.integers(-2, 2**54),
        "bars": st.integers(-2, 2**54),
        "elapsed_ms": st.floats(allow_nan=False, allow_infinity=False),
    }
)


@given(fields=_wire_fields)
@example(fields=_all(_BIG))
@example(fields=_all(-_BIG, trades=3))
@example(fields=_all(0.25, win_rate=1.0000001))
@example(fields=_all(0.25, bars=2**53 + 1))
def test_metrics_decoded_from_a_peer_follow_the_rules(fields: dict[str, Any]) -> None:
    body = _encoder.encode(
        {"type": "BACKTEST_RESULT", "v": 1, "request_id": "r-1", "result": fields}
    )
    expected = reference(msgspec.json.decode(body)["result"])  # what the bytes hold
    if expected is None:
        message = decode_message(body)
        assert isinstance(message, BacktestResult)
        assert reference(msgspec.structs.asdict(message.result)) is None
    else:
        with pytest.raises(ProtocolError) as caught:
            decode_message(body)
        assert caught.value.message == expected
