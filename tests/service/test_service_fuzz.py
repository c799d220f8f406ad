"""Arbitrary bytes and JSON: the decoder always explains, the service always answers.

The in-process service (trio and asyncio); ``test_service_hostile`` does the same to a
live service process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backtest_queue.errors import ProtocolError
from backtest_queue.protocol import ERROR_CODES, decode_message
from backtest_queue.service.server import HARD_CAP_FACTOR

from hostile import hostile_bodies, json_values
from service_helpers import SHARED_MAX_MESSAGE_BYTES, PortalService, RawClient

Client = Callable[..., RawClient]

TYPES = ["BACKTEST", "BACKTEST_RESULT", "ERROR", "PING", "PONG", "NOPE"]

numbers = st.integers(-5, 300) | st.floats(-5.0, 300.0, allow_nan=False)
strategies = st.fixed_dictionaries(
    {"name": st.text(max_size=5), "kind": st.sampled_from(["sma_cross", "rsi_reversion", "x"])},
    optional={
        "params": st.dictionaries(
            st.sampled_from(["fast", "slow", "period", "lower", "upper", "q"]), numbers
        )
        | json_values,
        "sl": st.floats(-1, 2) | json_values,
        "tp": st.floats(0, 1),
    },
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={
        "v": st.sampled_from([1, 1, 1, 2, "1", None, 1.5]),
        "request_id": st.text(min_size=0, max_size=70) | json_values,
        "strategy": strategies | json_values,
        "data_id": st.sampled_from(["GOOG-D1", "EURUSD-small", "BTCUSD-MN1", "nope", ""]),
        "start": st.sampled_from(["2010-01-01", "2017-05-01T00:00:00Z", "bad", None]),
        "end": st.sampled_from(["2012-12-31", "2017-05-03", "", None]),
        "cash": numbers | json_values,
        "commission": st.floats(-1, 2) | json_values,
        "code": st.sampled_from(ERROR_CODES),
        "message": st.text(max_size=10),
        "result": json_values,
        "extra": json_values,
    },
)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def assert_explained(body: bytes) -> None:
    """Decoding succeeds or raises a ProtocolError with a known code and a message."""
    error: ProtocolError | None = None
    try:
        decode_message(body, max_bytes=4096)
    except ProtocolError as exc:
        error = exc
    if error is not None:
        assert error.code in ERROR_CODES
        assert error.message
        assert error.request_id is None or 0 < len(error.request_id) <= 64


@given(st.binary(max_size=5000))
def test_the_decoder_explains_any_bytes(body: bytes) -> None:
    assert_explained(body)


@given(messages | json_values)
def test_the_decoder_explains_any_json(value: Any) -> None:
    assert_explained(json.dumps(value).encode())


def exactly_one_reply(client: RawClient, frames: list[bytes]) -> dict[str, Any]:
    """Send one message; return its only reply, proving nothing else comes."""
    client.socket.send_multipart(frames)
    _, replies = client.ping()
    if not replies:  # a valid backtest: its result comes after the PONG
        replies.append(client.receive())
    _, late = client.ping()
    assert len(replies) == 1, replies
    assert late == []
    return replies[0]


@FUZZ
@given(body=st.binary(max_size=3000))
def test_the_service_answers_any_bytes(
    shared_service: PortalService, client_factory: Client, body: bytes
) -> None:
    client = client_factory(shared_service.endpoint)
    reply = exactly_one_reply(client, [b"", body])
    assert reply["type"] in ("ERROR", "PONG")


@FUZZ
@given(value=messages | json_values)
def test_the_service_answers_any_json(
    shared_service: PortalService, client_factory: Client, value: Any
) -> None:
    client = client_factory(shared_service.endpoint)
    reply = exactly_one_reply(client, [b"", json.dumps(value).encode()])
    if reply["type"] == "ERROR":
        assert reply["code"] in ERROR_CODES
        assert reply["code"] != "engine_error", reply
    else:
        assert reply["type"] in ("PONG", "BACKTEST_RESULT")


@settings(FUZZ, max_examples=40)
@given(frames=st.lists(st.binary(max_size=40), min_size=1, max_size=4))
def test_the_service_answers_any_framing(
    shared_service: PortalService, client_factory: Client, frames: list[bytes]
) -> None:
    client = client_factory(shared_service.endpoint)
    client.socket.send_multipart(frames)
    pong, replies = client.ping()
    assert pong["type"] == "PONG"
    assert len(replies) == 1
    assert replies[0]["type"] in ("ERROR", "PONG")


@FUZZ
@given(body=hostile_bodies())
def test_the_service_answers_mutated_and_nested_messages(
    shared_service: PortalService, client_factory: Client, body: bytes
) -> None:
    """Valid messages with fields replaced by deep nesting, NaN literals, huge numbers,
    lone surrogates, duplicated keys or damaged bytes: one reply each, never a crash.

    Up to the hard cap: a frame over ``ZMQ_MAXMSGSIZE`` (twice the shared service's 16 KiB
    ``max_message_bytes``) makes libzmq drop the connection without a reply, as
    documented; three deeply nested replacements can make one (32 840 bytes, seen)."""
    assume(len(body) <= HARD_CAP_FACTOR * SHARED_MAX_MESSAGE_BYTES)
    client = client_factory(shared_service.endpoint)
    reply = exactly_one_reply(client, [b"", body])
    if reply["type"] == "ERROR":
        assert reply["code"] in ERROR_CODES
        assert reply["code"] != "engine_error", reply
    else:
        assert reply["type"] in ("PONG", "BACKTEST_RESULT")
