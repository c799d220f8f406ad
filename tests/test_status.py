"""Asking a service (ping_service), refused handshakes, and the unconnected warning.

Real ZeroMQ sockets on 127.0.0.1 (a stub ROUTER; CURVE with pyzmq's zmq.auth) and the
in-memory network; every test runs on trio and asyncio.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import anyio
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from backtest_queue import BacktestRequest, Strategy, open_dispatcher
from backtest_queue.errors import HandshakeRefused, NoAnswer, ProtocolError, TransportError
from backtest_queue.pong_fields import DatasetRange
from backtest_queue.protocol import Pong, decode_message, encode_message
from backtest_queue.security import (
    AllowedKeys,
    generate_keys,
    load_client,
    server_options,
    start_authenticator,
)
from backtest_queue.status import ping_service
from backtest_queue.status_command import describe, status_document
from backtest_queue.testing import MemoryNetwork

from stubs import STUB_FINGERPRINT, echo, free_tcp_endpoint, stub_service

pytestmark = pytest.mark.anyio

# Generous: these only catch hangs on a loaded machine.
BOUND = 20.0


def request(i: int = 0) -> BacktestRequest:
    strategy = Strategy(name=f"s{i}", kind="sma_cross", params={"fast": 5, "slow": 20})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1")


# -- the PONG's optional status fields ------------------------------------------------


def test_an_old_pong_without_the_status_fields_still_decodes() -> None:
    pong = decode_message(b'{"type":"PONG","v":1,"version":"0.0.9","datasets":["A"],"workers":2}')
    assert isinstance(pong, Pong)
    assert (pong.ranges, pong.running, pong.queued, pong.uptime_s) == ({}, None, None, None)


stamps = st.datetimes(min_value=datetime(1900, 1, 1))


@given(
    bars=st.integers(1, 2**53),
    a=stamps,
    b=stamps,
    running=st.none() | st.integers(0, 2**53),
    uptime=st.none() | st.floats(0, 1e12),
)
def test_status_fields_round_trip(
    bars: int, a: object, b: object, running: int | None, uptime: float | None
) -> None:
    first, last = sorted([a, b])  # type: ignore[type-var]
    span = DatasetRange(bars=bars, first=first.isoformat(), last=last.isoformat())
    pong = Pong(datasets=["X"], ranges={"X": span}, running=running, queued=0, uptime_s=uptime)
    assert decode_message(encode_message(pong)) == pong


@pytest.mark.parametrize(("credit", "shown"), [(3, "credit 3"), (None, "credit ?")])
def test_status_shows_the_advertised_credit(credit: int | None, shown: str) -> None:
    pong = Pong(datasets=[], workers=1, credit=credit, running=0, queued=0)
    assert status_document("tcp://h:1", pong)["credit"] == credit
    assert f"workers 1, {shown}; backtests running 0, queued 0" in describe("tcp://h:1", pong)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ('"ranges":{"X":{"bars":0,"first":"2020-01-01","last":"2020-01-02"}}', "ranges.bars"),
        ('"ranges":{"X":{"bars":2,"first":"2020-01-03","last":"2020-01-02"}}', "ranges.last"),
        ('"ranges":{"X":{"bars":2,"first":"soon","last":"2020-01-02"}}', "ranges.first"),
        (
            '"ranges":{"X":{"bars":2,"first":"2020-01-01T00:00+01:00","last":"2021-01-01"}}',
            "ranges.first",
        ),
        ('"ranges":{"-X":{"bars":2,"first":"2020-01-01","last":"2020-01-02"}}', "ranges key"),
        ('"ranges":{"X":{"bars":2,"first":"2020-01-01"}}', "last"),
        ('"running":-1', "running"),
        ('"queued":1.5', "queued"),
        ('"uptime_s":-0.5', "uptime_s"),
        ('"uptime_s":"1"', "uptime_s"),
    ],
)
def test_bad_status_fields_are_refused_naming_the_field(fields: str, named: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_message(f'{{"type":"PONG","v":1,{fields}}}'.encode())
    assert named in caught.value.message


# -- ping_service -----------------------------------------------------------------------


async def test_ping_service_returns_the_pong() -> None:
    endpoint = free_tcp_endpoint()
    async with stub_service(endpoint, echo):
        with anyio.fail_after(BOUND):
            pong = await ping_service(endpoint, timeout=BOUND)
    assert pong.fingerprints == {"EURUSD-H1": STUB_FINGERPRINT}


async def test_ping_service_says_nothing_listens_within_the_timeout() -> None:
    endpoint = free_tcp_endpoint()  # nothing bound there
    with anyio.fail_after(BOUND), pytest.raises(NoAnswer) as caught:
        await ping_service(endpoint, timeout=0.5)
    assert not caught.value.connected
    assert "nothing there completed a ZeroMQ handshake" in str(caught.value)


async def test_ping_service_says_a_peer_that_does_not_answer_is_silent() -> None:
    endpoint = free_tcp_endpoint()
    async with stub_service(endpoint, echo, read=False) as stub:
        with anyio.fail_after(BOUND), pytest.raises(NoAnswer) as caught:
            await ping_service(endpoint, timeout=1.0)
        assert stub.up.is_set()
    assert caught.value.connected
    assert "sent no PONG" in str(caught.value)


async def test_ping_service_refuses_a_malformed_endpoint_with_one_error() -> None:
    with anyio.fail_after(BOUND), pytest.raises(TransportError, match="nonsense") as caught:
        await ping_service("nonsense")
    assert "cannot connect to 'nonsense'" in str(caught.value)  # not "connect nonsense to"


# -- refused handshakes -------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    generate_keys(tmp_path / "service", "service")
    generate_keys(tmp_path / "other", "service")
    generate_keys(tmp_path / "allowed", "requester")
    generate_keys(tmp_path / "stranger", "requester")
    return tmp_path


@pytest.fixture
def curve_context(keys: Path) -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth = start_authenticator(ctx, AllowedKeys(keys / "allowed"))
    try:
        yield ctx
    finally:
        auth.stop()
        ctx.destroy(linger=0)


def client_keys(keys: Path, who: str) -> object:
    if who == "no keys":
        return None
    requester = "allowed" if who == "wrong service key" else "stranger"
    service = "other" if who == "wrong service key" else "service"
    return load_client(keys / requester / "requester.key_secret", keys / service / "service.key")


WHO = ["no keys", "wrong service key", "unknown requester key"]


@pytest.mark.parametrize("who", WHO)
async def test_ping_service_reports_a_refused_handshake_before_its_timeout(
    keys: Path, curve_context: zmq.Context[zmq.Socket[bytes]], who: str
) -> None:
    endpoint = free_tcp_endpoint()
    options = server_options(keys / "service" / "service.key_secret")
    async with stub_service(endpoint, echo, options=options, context=curve_context):
        start = anyio.current_time()
        with anyio.fail_after(BOUND), pytest.raises(HandshakeRefused) as caught:
            await ping_service(endpoint, timeout=60.0, curve=client_keys(keys, who))  # type: ignore[arg-type]
        assert anyio.current_time() - start < BOUND  # long before the 60 s timeout
    assert "--curve-keys DIR" in str(caught.value)
    # A requester that gave no keys is told the service wants them, not that they "do not fit".
    assert ("gave no keys" in str(caught.value)) == (who == "no keys")
    assert ("do not fit" in str(caught.value)) == (who != "no keys")


async def test_ping_service_with_the_right_keys_gets_the_pong(
    keys: Path, curve_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    endpoint = free_tcp_endpoint()
    options = server_options(keys / "service" / "service.key_secret")
    curve = load_client(keys / "allowed" / "requester.key_secret", keys / "service" / "service.key")
    async with stub_service(endpoint, echo, options=options, context=curve_context):
        with anyio.fail_after(BOUND):
            pong = await ping_service(endpoint, timeout=BOUND, curve=curve)
    assert pong.fingerprints == {"EURUSD-H1": STUB_FINGERPRINT}


@pytest.mark.parametrize("who", WHO)
async def test_wait_connected_raises_when_the_handshake_is_refused(
    keys: Path, curve_context: zmq.Context[zmq.Socket[bytes]], who: str
) -> None:
    """The issue's hang: evolve against a CURVE service waited for ever."""
    endpoint = free_tcp_endpoint()
    options = server_options(keys / "service" / "service.key_secret")
    curve = client_keys(keys, who)
    async with (
        stub_service(endpoint, echo, options=options, context=curve_context) as stub,
        open_dispatcher([endpoint], curve=curve) as d,  # type: ignore[arg-type]
    ):
        await d.submit(request())
        with anyio.fail_after(BOUND), pytest.raises(HandshakeRefused) as caught:
            await d.wait_connected()
        with pytest.raises(HandshakeRefused):  # the endpoint by name, too
            await d.wait_connected(endpoint)
        assert not d.connected
        assert stub.received == []
    assert caught.value.endpoint == endpoint
    with d.outcomes:
        assert [o.reason async for o in d.outcomes] == ["shutdown"]


async def test_one_refusing_endpoint_does_not_stop_waiting_for_another(
    keys: Path, curve_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    refusing, plain = free_tcp_endpoint(), free_tcp_endpoint()
    options = server_options(keys / "service" / "service.key_secret")
    async with (
        stub_service(refusing, echo, options=options, context=curve_context),
        stub_service(plain, echo),
        open_dispatcher([refusing, plain]) as d,
    ):
        with anyio.fail_after(BOUND):
            await d.wait_connected()  # the plain one comes up
            with pytest.raises(HandshakeRefused):
                await d.wait_connected(refusing)
        assert d.connected


# -- the warning when requests wait with no service -------------------------------------------


class Warnings(logging.Handler):
    """The unconnected warnings logged, and a way to wait for the n-th (no polling)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self._changed = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "no service has connected" in record.getMessage():
            self.messages.append(record.getMessage())
            self._changed.set()  # logged from the dispatcher's task: same thread
            self._changed = anyio.Event()

    async def wait_for(self, n: int) -> None:
        while len(self.messages) < n:
            await self._changed.wait()

    def naming(self, endpoint: str) -> list[str]:
        return [m for m in self.messages if endpoint in m]

    async def wait_naming(self, endpoint: str, n: int = 1) -> None:
        """Until ``n`` warnings name ``endpoint``."""
        while len(self.naming(endpoint)) < n:
            await self._changed.wait()


WITNESS = "tcp://witness:5580"


async def witness_warns(net: MemoryNetwork, warnings: Warnings, after: float) -> None:
    """Wait until ``after`` seconds have passed for the dispatchers' warning watchers,
    shown by an event rather than a sleep: a witness dispatcher, nothing bound at its
    endpoint, queues a request and warns after ``after`` seconds. Every watcher looks on
    the same clock, each look due at its own time and run in that order (a loaded
    machine delays them, it does not reorder them), so a watcher set to a quarter of
    ``after`` or less has looked several times by then."""
    async with open_dispatcher([WITNESS], network=net, unconnected_warning=after) as witness:
        await witness.submit(request(99))
        await warnings.wait_naming(WITNESS)


@pytest.fixture
def warnings() -> Iterator[Warnings]:
    handler = Warnings()
    logger = logging.getLogger("backtest_queue")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_queued_requests_with_no_service_are_warned_about_once_per_episode(
    warnings: Warnings,
) -> None:
    net = MemoryNetwork()  # nothing bound: the service never comes
    endpoint = "tcp://nowhere:5580"
    async with open_dispatcher([endpoint], network=net, unconnected_warning=0.4) as d:
        with anyio.fail_after(BOUND):
            start = anyio.current_time()
            await d.submit(request(0))
            await warnings.wait_for(1)
            assert anyio.current_time() - start >= 0.4  # not before it was due
            (first,) = warnings.messages
            assert "1 request(s) have been queued" in first
            assert endpoint in first
            assert "backtest-queue status ENDPOINT" in first
            # The same episode: more requests, more time, no second warning.
            await d.submit(request(1))
            await witness_warns(net, warnings, 1.5)
            assert warnings.naming(endpoint) == [first]
            # A service comes, takes the requests and goes: a new episode, a new warning.
            net.bind(endpoint)
            await d.wait_connected()
            assert {(await d.outcomes.receive()).ok for _ in range(2)} == {True}
            net.unbind(endpoint)
            await d.submit(request(2))
            await warnings.wait_naming(endpoint, 2)


async def test_no_warning_when_a_service_is_connected_or_nothing_waits(
    warnings: Warnings,
) -> None:
    net = MemoryNetwork()
    net.bind("tcp://up:5580", lambda r: [])  # connected, never answers: requests pend
    async with (
        open_dispatcher(
            ["tcp://up:5580"], network=net, unconnected_warning=0.2, max_pending=1
        ) as d,  # fmt: skip
        open_dispatcher(["tcp://idle:5580"], network=net, unconnected_warning=0.2),
    ):
        await d.wait_connected()
        await d.submit_many([request(0), request(1)])  # one pending, one queued
        with anyio.fail_after(BOUND):  # five times the setting: a warning would have come
            await witness_warns(net, warnings, 1.0)
    assert warnings.messages == warnings.naming(WITNESS)


async def test_the_warning_can_be_turned_off(warnings: Warnings) -> None:
    net = MemoryNetwork()
    async with open_dispatcher(["tcp://nowhere:1"], network=net, unconnected_warning=None) as d:
        await d.submit(request())
        with anyio.fail_after(BOUND):
            await witness_warns(net, warnings, 1.0)
    assert warnings.messages == warnings.naming(WITNESS)


async def test_the_warning_on_a_real_socket_to_nowhere(warnings: Warnings) -> None:
    endpoint = free_tcp_endpoint()  # nothing listens
    async with open_dispatcher([endpoint], unconnected_warning=0.3) as d:
        await d.submit(request())
        with anyio.fail_after(BOUND):
            await warnings.wait_for(1)
    assert endpoint in warnings.messages[0]


def test_the_warning_setting_is_checked() -> None:
    from backtest_queue.errors import UsageError

    for bad in (0, -1.0, float("nan"), "10", True):
        with pytest.raises(UsageError, match="unconnected_warning"):
            open_dispatcher(["tcp://127.0.0.1:1"], unconnected_warning=bad)  # type: ignore[arg-type]


async def test_curve_keys_against_a_plain_service_are_refused_with_the_fix(keys: Path) -> None:
    endpoint = free_tcp_endpoint()
    curve = load_client(keys / "allowed" / "requester.key_secret", keys / "service" / "service.key")
    async with stub_service(endpoint, echo):  # no CURVE
        with anyio.fail_after(BOUND), pytest.raises(HandshakeRefused) as caught:
            await ping_service(endpoint, timeout=60.0, curve=curve)
    assert "A service without --curve-secret refuses CURVE: then give no keys" in str(caught.value)
