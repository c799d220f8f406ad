"""Per-service credit (issue 13, section 2): the PONG field, and the dispatcher honouring it.

A real dispatcher against a real ROUTER stub on 127.0.0.1 (trio and asyncio) whose PONG
the test controls: held back, never sent, with or without ``credit``. The stub keeps
every request it reads unanswered until the test answers it, so what the stub holds is
exactly what the dispatcher has in flight there. The policy's own rules are proved by
``tests/test_policy_stateful.py`` (``TestCredited``) and ``tests/test_policy_credit.py``;
real services with real backtests are in ``tests/service/test_service_credit.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import pytest
import zmq

from backtest_queue import BacktestRequest, Strategy, open_dispatcher
from backtest_queue.errors import InvalidMessage, ProtocolError, UsageError
from backtest_queue.protocol import Ping, Pong, decode_message, encode_message
from backtest_queue.sending import _CREDIT_BEFORE_PONG, _PONG_WAIT
from backtest_queue.service import open_service
from backtest_queue.service.server import default_credit
from backtest_queue.transport import ConnectionEvent, open_socket, run_monitor

from stubs import free_tcp_endpoint, result_for

pytestmark = pytest.mark.anyio

HOLD = "hold"  # the stub keeps the PING until the test releases it
NEVER = "never"  # the stub never answers a PING


def make_request(i: int) -> BacktestRequest:
    strategy = Strategy(name=f"s{i}", kind="sma_cross", params={"fast": 5, "slow": 20 + i})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=f"req-{i:03d}")


# -- the PONG field ------------------------------------------------------------------


def test_a_pong_without_credit_still_decodes_and_means_no_limit() -> None:
    old = b'{"type":"PONG","v":1,"version":"0.1.0","datasets":["EURUSD-H1"],"workers":2}'
    pong = decode_message(old)
    assert isinstance(pong, Pong)
    assert pong.credit is None


def test_a_pong_carries_its_credit_both_ways() -> None:
    pong = Pong(workers=3, credit=6)
    assert msgspec.json.decode(encode_message(pong))["credit"] == 6
    assert decode_message(encode_message(pong)) == pong


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "3"])
def test_a_bad_credit_in_a_pong_is_refused_naming_the_field(bad: object) -> None:
    body = msgspec.json.encode({"type": "PONG", "v": 1, "credit": bad})
    with pytest.raises(ProtocolError, match="credit"):
        decode_message(body)
    with pytest.raises(InvalidMessage, match="credit"):
        Pong(credit=bad)  # type: ignore[arg-type]


# -- the service's setting -----------------------------------------------------------


def test_the_default_credit_is_every_worker_busy_and_one_waiting_each() -> None:
    assert default_credit(1, 1000) == 2
    assert default_credit(3, 1000) == 6
    assert default_credit(4, 2) == 6  # at most max_queued waiting


@pytest.mark.parametrize("bad", [0, 12, True, 2.0])
async def test_a_credit_the_service_cannot_hold_is_refused_before_it_starts(bad: object) -> None:
    with pytest.raises(UsageError, match="credit"):
        async with open_service(bind="tcp://127.0.0.1:*", workers=1, max_queued=10,
                                credit=bad):  # type: ignore[arg-type]  # fmt: skip
            pass


# -- a stub whose PONG the test controls ---------------------------------------------


@dataclass
class CreditStub:
    """What the stub read, and the handles to answer."""

    endpoint: str
    pong: int | str | None  # the credit to advertise, None (no field), HOLD or NEVER
    held: list[tuple[bytes, BacktestRequest]] = field(default_factory=list)
    received: list[tuple[float, str]] = field(default_factory=list)
    pings: int = 0
    release: anyio.Event = field(default_factory=anyio.Event)
    router: Any = None
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_received(self, n: int) -> None:
        while len(self.received) < n:
            await self._changed.wait()

    def answer(self, k: int) -> None:
        """Answer the oldest ``k`` held requests with results."""
        for identity, request in self.held[:k]:
            self.router.try_send([identity, b"", result_for(request)])
        del self.held[:k]


@asynccontextmanager
async def credit_stub(endpoint: str, pong: int | str | None) -> AsyncIterator[CreditStub]:
    stub = CreditStub(endpoint, pong)
    ctx: zmq.Context[Any] = zmq.Context()
    events_send, events = anyio.create_memory_object_stream[ConnectionEvent](16)
    opts = {zmq.LINGER: 0, zmq.ROUTER_MANDATORY: 1}
    try:
        with events, events_send:
            async with (
                open_socket(ctx, zmq.ROUTER, name="stub", options=opts, bind=endpoint) as router,
                anyio.create_task_group() as tg,
            ):
                stub.router = router

                async def answer_ping(identity: bytes, ping: Ping) -> None:
                    if stub.pong == NEVER:
                        return
                    if stub.pong == HOLD:
                        await stub.release.wait()
                    credit = stub.pong if isinstance(stub.pong, int) else None
                    pong = Pong(request_id=ping.request_id, workers=1, credit=credit)
                    router.try_send([identity, b"", encode_message(pong)])

                async def serve() -> None:
                    while True:
                        for frames in await router.receive_batch():
                            identity, body = frames[0], frames[-1]
                            message = decode_message(body)
                            if isinstance(message, Ping):
                                stub.pings += 1
                                tg.start_soon(answer_ping, identity, message)
                            else:
                                assert isinstance(message, BacktestRequest)
                                stub.received.append((anyio.current_time(), message.request_id))
                                stub.held.append((identity, message))
                            stub.changed()

                await tg.start(run_monitor, ctx, router, events_send.clone())
                tg.start_soon(serve)
                try:
                    yield stub
                finally:
                    tg.cancel_scope.cancel()
    finally:
        ctx.destroy(linger=0)


async def test_a_new_service_gets_one_request_until_its_pong_then_its_credit() -> None:
    """Issue 13: 10 requests queued before the service is up. It gets one at connect,
    then, once its PONG says credit 3, exactly 3 in flight; each answer frees one."""
    endpoint = free_tcp_endpoint()
    async with open_dispatcher([endpoint], flush_interval=3600, max_pending=64) as d:
        for i in range(10):
            await d.submit(make_request(i))
        with anyio.fail_after(10):
            async with credit_stub(endpoint, HOLD) as stub:
                await stub.wait_received(_CREDIT_BEFORE_PONG)
                assert stub.pings == 1  # sent at connect though the cache is off
                q = d.queue
                assert (q.credit_of(endpoint), q.pending_on(endpoint), q.queued) == (1, 1, 9)
                assert q.throttle().reason == "pending"
                stub.pong = 3
                stub.release.set()
                await d.wait_connected(endpoint)  # up: its PONG is in
                await stub.wait_received(3)
                assert (q.credit_of(endpoint), q.pending_on(endpoint), q.queued) == (3, 3, 7)
                assert len(stub.held) == 3
                stub.answer(1)
                await stub.wait_received(4)
                assert q.pending_on(endpoint) <= 3
                stub.answer(len(stub.held))
                outcome = await d.outcomes.receive()
                assert outcome.ok


async def test_a_service_without_credit_in_its_pong_gets_no_limit() -> None:
    """An older service (no ``credit`` in PONG): today's behaviour, all at once."""
    endpoint = free_tcp_endpoint()
    async with open_dispatcher([endpoint], flush_interval=3600, max_pending=None) as d:
        for i in range(10):
            await d.submit(make_request(i))
        with anyio.fail_after(10):
            async with credit_stub(endpoint, None) as stub:
                await stub.wait_received(10)
                assert d.queue.credit_of(endpoint) is None


async def test_a_service_that_never_answers_the_ping_gets_no_limit_after_the_wait() -> None:
    """No PONG: one request in flight for _PONG_WAIT seconds, then no per-service
    limit (nothing stalls for good), and it counts as up."""
    endpoint = free_tcp_endpoint()
    async with open_dispatcher([endpoint], flush_interval=3600, max_pending=None) as d:
        for i in range(5):
            await d.submit(make_request(i))
        with anyio.fail_after(10 + _PONG_WAIT):
            async with credit_stub(endpoint, NEVER) as stub:
                await stub.wait_received(1)
                await d.wait_connected(endpoint)
                await stub.wait_received(5)
                assert d.queue.credit_of(endpoint) is None
    first, second = stub.received[0][0], stub.received[1][0]
    assert second - first >= _PONG_WAIT - 0.05  # (a timer may fire a hair early)


async def test_a_reconnect_starts_again_from_one_and_takes_the_new_pong() -> None:
    """The service restarts on the same endpoint with another credit: the dispatcher
    re-pings, and the new credit (not the old) applies."""
    endpoint = free_tcp_endpoint()
    async with open_dispatcher([endpoint], flush_interval=3600, reconnect_ivl=0.05) as d:
        for i in range(20):
            await d.submit(make_request(i))
        with anyio.fail_after(20):
            async with credit_stub(endpoint, 2) as stub:
                await stub.wait_received(2)
                await d.wait_connected(endpoint)
                assert d.queue.credit_of(endpoint) == 2
            # The disconnect re-queues the two; the reconnect starts from one again, so
            # with the old credit kept (2) the new stub would never see 5.
            async with credit_stub(endpoint, 5) as stub:
                await stub.wait_received(5)
                await d.wait_connected(endpoint)
                assert stub.pings == 1
                assert (d.queue.credit_of(endpoint), d.queue.pending_on(endpoint)) == (5, 5)
