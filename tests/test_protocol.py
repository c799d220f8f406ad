"""Wire protocol v1 codec: round trips and the error codes bad bodies get."""

from __future__ import annotations

import json
import math

import pytest

from backtest_queue import BacktestRequest, Metrics, ProtocolError, Strategy
from backtest_queue.protocol import (
    ERROR_CODES,
    BacktestResult,
    ErrorReply,
    decode_message,
    encode_message,
)


def body(**fields: object) -> bytes:
    message = {
        "type": "BACKTEST",
        "v": 1,
        "request_id": "r1",
        "strategy": {"name": "s", "kind": "sma_cross", "params": {"fast": 10, "slow": 40}},
        "data_id": "EURUSD-H1",
    }
    message.update(fields)
    return json.dumps({k: v for k, v in message.items() if v is not ...}).encode()


def code_of(raw: bytes, **kwargs: int) -> tuple[str, str | None]:
    with pytest.raises(ProtocolError) as info:
        decode_message(raw, **kwargs)
    return info.value.code, info.value.request_id


def test_round_trip_of_every_message_kind() -> None:
    request = BacktestRequest(
        strategy=Strategy(name="s", kind="ema_cross", params={"fast": 5, "slow": 9.5}, sl=0.01),
        data_id="GOOG-D1",
        start="2017-01-01",
    )
    result = BacktestResult(request_id=request.request_id, result=Metrics(strategy_name="s"))
    error = ErrorReply(request_id=None, code="unavailable", message="stopping")
    for message in (request, result, error):
        assert decode_message(encode_message(message)) == message
    assert encode_message(request).startswith(b'{"type":"BACKTEST","v":1,')


def test_generated_ids_are_unique() -> None:
    strategy = Strategy(name="s", kind="sma_cross")
    ids = {BacktestRequest(strategy=strategy, data_id="x").request_id for _ in range(1000)}
    assert len(ids) == 1000


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", ("invalid_request", None)),
        (b"[1, 2]", ("invalid_request", None)),
        (body(type="NOPE"), ("invalid_request", "r1")),
        (body(v=2), ("unsupported_version", "r1")),
        (body(request_id=...), ("invalid_request", None)),
        (body(request_id="x" * 65), ("invalid_request", None)),
        (body(data_id="../etc/passwd"), ("invalid_request", "r1")),
        (body(cash=-1.0), ("invalid_request", "r1")),
        (body(strategy={"name": "s", "kind": "k", "sl": 1.5}), ("invalid_request", "r1")),
        (
            body(strategy={"name": "s", "kind": "k", "params": {"fast": "10"}}),
            ("invalid_request", "r1"),
        ),
    ],
    ids=[
        "not-json",
        "not-object",
        "unknown-type",
        "v2",
        "no-id",
        "long-id",
        "bad-data-id",
        "negative-cash",
        "sl-over-1",
        "string-param",
    ],
)
def test_bad_bodies_get_the_right_code_and_id(raw: bytes, expected: tuple[str, str | None]) -> None:
    assert code_of(raw) == expected
    assert expected[0] in ERROR_CODES


def test_a_request_id_is_required_on_the_wire_even_if_a_param_is_called_so() -> None:
    sneaky = body(
        request_id=...,
        strategy={"name": "s", "kind": "k", "params": {"request_id": 1}},
    )
    assert code_of(sneaky) == ("invalid_request", None)


def test_oversize_bodies_are_refused_before_decoding() -> None:
    assert code_of(body(), max_bytes=10)[0] == "too_large"


def test_metrics_are_never_nan_or_infinite() -> None:
    with pytest.raises(ValueError, match="finite"):
        Metrics(strategy_name="s", sharpe=math.nan)
    with pytest.raises(ProtocolError):
        decode_message(
            b'{"type":"BACKTEST_RESULT","v":1,"request_id":"r",'
            b'"result":{"strategy_name":"s","sharpe":1e999}}'
        )
