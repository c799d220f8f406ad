"""A live ``backtest-queue service`` process (trio and asyncio) under hostile bodies.

Issue 10, section 1: a ~2 KB BACKTEST whose strategy is 1000 nested arrays killed the
service process. Now every body gets exactly one reply, the process stays up (PING is
still answered), bad values are refused naming the field, and the log lines about bad
input are rate-limited.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings

from backtest_queue.protocol import ERROR_CODES
from backtest_queue.service.server import ERROR_LOG_BURST

from hostile import hostile_bodies
from service_helpers import RawClient, ServiceProcess, backtest, run_service_process

Client = Callable[..., RawClient]

NESTED_STRATEGY = (
    b'{"type":"BACKTEST","v":1,"request_id":"r1","strategy":'
    + b"[" * 1000
    + b"]" * 1000
    + b',"data_id":"EURUSD-H1"}'
)


@pytest.fixture(scope="module", params=["trio", "asyncio"])
def live_service(
    request: pytest.FixtureRequest,
    zmq_context: zmq.Context[Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    """A real service process per backend; at the end it must stop cleanly (exit 0)."""
    log_path = tmp_path_factory.mktemp(f"hostile-{request.param}") / "service.log"
    with run_service_process(
        zmq_context, log_path, "--workers", "1", "--backend", str(request.param)
    ) as process:
        yield process
        assert process.process.poll() is None, process.log()
        assert process.stop(signal.SIGTERM) == 0, process.log()


def exactly_one_reply(client: RawClient, body: bytes) -> dict[str, Any]:
    """Send one body; return its only reply, and prove the service still answers PING."""
    client.socket.send_multipart([b"", body])
    pong, replies = client.ping()
    assert pong["type"] == "PONG"
    if not replies:  # a valid backtest: its result comes after the PONG
        replies.append(client.receive())
    _, late = client.ping()
    assert late == []
    assert len(replies) == 1, replies
    return replies[0]


def test_the_nested_body_of_the_issue_is_answered_and_the_service_lives(
    live_service: ServiceProcess, client_factory: Client
) -> None:
    client = client_factory(live_service.endpoint)
    reply = exactly_one_reply(client, NESTED_STRATEGY)
    assert (reply["type"], reply["code"], reply["request_id"]) == (
        "ERROR",
        "invalid_request",
        "r1",
    )
    assert reply["message"].startswith("strategy: ")
    deeper = b'{"type":"PING","v":1,"request_id":"p","x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    reply = exactly_one_reply(client, deeper)
    assert (reply["type"], reply["code"]) == ("ERROR", "invalid_request")
    assert live_service.process.poll() is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cash": -5}, "cash"),
        ({"commission": 0.5}, "commission"),  # in [0, 1) but beyond backtesting.py's 10 %
        ({"sl": 1.0}, "strategy.sl"),
        ({"request_id": "x" * 100}, "request_id"),
    ],
)
def test_bad_values_from_the_wire_are_refused_naming_the_field(
    live_service: ServiceProcess, client_factory: Client, fields: dict[str, Any], field: str
) -> None:
    rest = {k: v for k, v in fields.items() if k != "request_id"}
    message = backtest(fields.get("request_id", "bad"), data_id="EURUSD-H1", **rest)
    reply = exactly_one_reply(client_factory(live_service.endpoint), json.dumps(message).encode())
    assert (reply["type"], reply["code"]) == ("ERROR", "invalid_request"), reply
    assert reply["message"].startswith(f"{field}: "), reply
    assert reply["request_id"] == (None if field == "request_id" else "bad")


def test_a_cash_of_1e400_is_refused_naming_the_field(
    live_service: ServiceProcess, client_factory: Client
) -> None:
    body = json.dumps(backtest("huge", data_id="EURUSD-H1")).encode()
    body = body.replace(b'"data_id"', b'"cash": 1e400, "data_id"')
    reply = exactly_one_reply(client_factory(live_service.endpoint), body)
    assert (reply["code"], reply["request_id"]) == ("invalid_request", "huge")
    assert reply["message"].startswith("cash: ")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=hostile_bodies())
def test_the_live_service_answers_every_hostile_body_once_and_lives(
    live_service: ServiceProcess, client_factory: Client, body: bytes
) -> None:
    client = client_factory(live_service.endpoint)
    reply = exactly_one_reply(client, body)
    if reply["type"] == "ERROR":
        assert reply["code"] in ERROR_CODES
        assert reply["code"] != "engine_error", reply
    else:
        assert reply["type"] in ("PONG", "BACKTEST_RESULT"), reply


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_log_lines_about_bad_input_are_rate_limited(
    zmq_context: zmq.Context[Any], tmp_path: Path, backend: str
) -> None:
    """A flood of bad bodies: each is answered, one burst of lines is logged, and the
    rest are summarised in one line (here when the service stops)."""
    with run_service_process(
        zmq_context, tmp_path / "service.log", "--workers", "1", "--backend", backend
    ) as service:
        with RawClient(zmq_context, service.endpoint) as client:
            n = 300
            for i in range(n):
                client.send(b'{"type":"NOPE","v":1,"request_id":"f%d"}' % i)
            replies = [client.receive() for _ in range(n)]
            assert {r["code"] for r in replies} == {"invalid_request"}
            assert [r["request_id"] for r in replies] == [f"f{i}" for i in range(n)]
        assert service.stop() == 0
    log = service.log()
    logged = re.findall(r"with invalid_request \(request 'f\d+'\)", log)
    summaries = [int(k) for k in re.findall(r"suppressed (\d+) similar invalid_request", log)]
    assert len(logged) % ERROR_LOG_BURST == 0  # whole bursts: one per 60 s window
    assert 0 < len(logged) < n
    assert len(logged) + sum(summaries) == n, log  # every line is logged or counted
