"""Hypothesis strategies for what a hostile or broken peer sends: mutated valid messages.

Part of :mod:`backtest_queue.testing.strategies` (import them from there).

Bodies are built as raw JSON text (not through ``json.dumps``), so they can hold what no
encoder writes: nesting thousands of levels deep, ``NaN`` and ``Infinity`` literals,
numbers with thousands of digits, escaped lone surrogates, invalid UTF-8, duplicate keys.

* :func:`hostile_bodies` - request-side bodies (BACKTEST, PING, ...) for a service.
* :func:`hostile_replies` - reply-side bodies (BACKTEST_RESULT, ERROR, PONG, ...) for a
  requester; ``@RID@`` stands for the request id the reply should carry.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "RAW_NASTIES",
    "REPLIES",
    "REQUESTS",
    "Raw",
    "backtest_message",
    "dump",
    "error_message",
    "hostile_bodies",
    "hostile_replies",
    "hostile_values",
    "json_values",
    "mutated",
    "nested",
    "result_message",
]


class Raw(bytes):
    """A JSON fragment written as is."""


def dump(value: Any) -> bytes:
    """Write ``value`` as JSON text; :class:`Raw` fragments go in verbatim."""
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, dict):
        items = b",".join(dump(str(k)) + b":" + dump(v) for k, v in value.items())
        return b"{" + items + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(dump(v) for v in value) + b"]"
    return json.dumps(value).encode()


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> Raw:
    """``depth`` levels of nesting (``[[[...]]]``), as raw JSON."""
    return Raw(opener * depth + closer * depth)


RAW_NASTIES = [
    Raw(b"NaN"), Raw(b"Infinity"), Raw(b"-Infinity"), Raw(b"1e400"), Raw(b"-1e400"),
    Raw(b"9" * 5000), Raw(b"-" + b"9" * 400), Raw(b"-0"), Raw(b"1E-400"),
    Raw(b'"\\udc80"'), Raw(b'"\\ud800x"'), Raw(b'"a\\u0000b"'), Raw(b'"\xff\xfe"'),
    Raw(b'"\x1b[2J"'), Raw(b"true"), Raw(b"false"), Raw(b"null"), Raw(b"[]"), Raw(b"{}"),
    Raw(b'""'), Raw(b'"' + b"x" * 3000 + b'"'), Raw(b"[1,"), Raw(b'{"a":}'),
]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

#: A value to put anywhere: deep nesting, literals no encoder writes, ordinary JSON.
hostile_values = st.one_of(
    st.integers(1, 3000).map(nested),
    st.integers(1, 3000).map(lambda d: Raw(b'{"a":' * d + b"1" + b"}" * d)),
    st.integers(1, 3000).map(lambda d: Raw(b"[{" * d + b"}]" * d)),
    st.sampled_from(RAW_NASTIES),
    json_values,
)


def backtest_message(request_id: str = "r1") -> dict[str, Any]:
    """A valid BACKTEST message as a dict."""
    return {
        "type": "BACKTEST",
        "v": 1,
        "request_id": request_id,
        "strategy": {
            "name": "s",
            "kind": "sma_cross",
            "params": {"fast": 10, "slow": 40},
            "sl": 0.02,
            "tp": 0.04,
        },
        "data_id": "GOOG-D1",
        "start": "2010-01-01",
        "end": "2012-12-31",
        "cash": 10000.0,
        "commission": 0.0002,
    }


def result_message(request_id: str = "@RID@") -> dict[str, Any]:
    """A valid BACKTEST_RESULT message as a dict."""
    return {
        "type": "BACKTEST_RESULT",
        "v": 1,
        "request_id": request_id,
        "result": {
            "strategy_name": "s",
            "sharpe": 0.4,
            "sortino": 0.6,
            "return_pct": 3.2,
            "max_drawdown_pct": -4.1,
            "trades": 57,
            "win_rate": 0.44,
            "profit_factor": 1.12,
            "bars": 5000,
            "elapsed_ms": 38.0,
        },
    }


def error_message(request_id: str = "@RID@", code: str = "engine_error") -> dict[str, Any]:
    """A valid ERROR message as a dict."""
    return {"type": "ERROR", "v": 1, "request_id": request_id, "code": code, "message": "x"}


REQUESTS = [
    backtest_message(),
    {"type": "PING", "v": 1, "request_id": "p1"},
    result_message("r1"),
]
REPLIES = [
    result_message(),
    error_message(),
    error_message(code="unavailable"),
    {
        "type": "PONG",
        "v": 1,
        "request_id": "@RID@",
        "version": "1",
        "datasets": ["A"],
        "workers": 1,
    },
]


def _paths(message: dict[str, Any]) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for key, value in message.items():
        paths.append((key,))
        if isinstance(value, dict):
            paths.extend((key, *sub) for sub in _paths(value))
    return [*paths, ("extra",), ("strategy", "extra")]


@st.composite
def mutated(draw: st.DrawFn, bases: list[dict[str, Any]]) -> bytes:
    """A valid message with one to three fields replaced, deleted or duplicated, then
    maybe damaged at the byte level."""
    message = json.loads(json.dumps(draw(st.sampled_from(bases))))
    duplicates: list[bytes] = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(message)))
        parent = message
        for key in path[:-1]:
            child = parent.get(key)
            if not isinstance(child, dict):
                break
            parent = child
        else:
            action = draw(st.sampled_from(["replace", "replace", "delete", "duplicate"]))
            if action == "delete":
                parent.pop(path[-1], None)
            elif action == "duplicate" and parent is message:
                duplicates.append(dump(path[-1]) + b":" + dump(draw(hostile_values)))
            else:
                parent[path[-1]] = draw(hostile_values)
    body = dump(message)
    if duplicates:
        body = body[:-1] + b"," + b",".join(duplicates) + b"}"
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "flip", "insert"]))
    if damage != "none" and body:
        at = draw(st.integers(0, len(body) - 1))
        if damage == "truncate":
            body = body[:at]
        elif damage == "flip":
            body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
        else:
            body = body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
    return body


def hostile_bodies() -> st.SearchStrategy[bytes]:
    """Bodies a service may be sent: mutated requests, raw bytes, deep nesting."""
    return st.one_of(
        mutated(REQUESTS),
        st.binary(max_size=200),
        st.integers(1, 5000).map(lambda d: bytes(nested(d))),
        json_values.map(lambda v: dump(v)),
    )


def hostile_replies() -> st.SearchStrategy[bytes]:
    """Bodies a requester may get back (``@RID@`` for the request's id)."""
    return st.one_of(
        mutated(REPLIES),
        st.binary(max_size=200),
        st.integers(1, 5000).map(lambda d: bytes(nested(d))),
    )
