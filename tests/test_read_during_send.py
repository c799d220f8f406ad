"""Replies read during a send (issue 14's review findings 2 and 3), on
:class:`~backtest_queue.testing.MemoryNetwork` with ``read_during_send=True``.

A send that finds replies waiting while the receiver waits applies them in the sending
task's turn (``FdSocket.on_readable`` -> ``Dispatcher._read_now``). Two faults
lived there, each fixed without a test of its own:

* a request that a reply read during a flush's first send resolved was sent again on
  the flush's second connection (and its metrics stamp stayed for ever);
* replies found by a send made while other replies were being applied (a PONG's flush)
  were applied against a room those other replies would take: the outcome buffer
  overfilled.

The dispatcher wires ``on_readable`` on every requester that has the hook
(:class:`~backtest_queue.transport.ReadsInTurn`), the memory ones included
(:func:`read_in_turn` checks it did). Both backends.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry

from backtest_queue import BacktestRequest, Strategy, open_dispatcher
from backtest_queue.dispatcher import Dispatcher
from backtest_queue.protocol import encode_message
from backtest_queue.testing import MemoryNetwork, echo_result
from backtest_queue.testing.network import _MemoryRequester

pytestmark = pytest.mark.anyio
A, B = "tcp://a:5580", "tcp://b:5580"


def request(i: int) -> BacktestRequest:
    strategy = Strategy(name=f"s{i}", kind="sma_cross", params={"fast": 5, "slow": 20 + i})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=f"req-{i}")


def read_in_turn(d: Dispatcher) -> dict[str, _MemoryRequester]:
    """The memory requesters, each with the hook the dispatcher's receiver set on it
    (replies found by a send are read by ``Dispatcher._read_now`` in that turn)."""
    requesters: dict[str, _MemoryRequester] = {}
    for endpoint, sock in d._sockets.items():
        assert isinstance(sock, _MemoryRequester)
        hook = sock.on_readable
        assert isinstance(hook, partial)
        assert hook.func == d._read_now
        assert hook.args == (endpoint,)
        requesters[endpoint] = sock
    return requesters


async def until(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` holds (the caller bounds the wait): the memory network's
    state changes only in the dispatcher's tasks, so each look lets them run once."""
    while not condition():
        await anyio.lowlevel.checkpoint()


def sent_at(d: Dispatcher) -> dict[str, float]:
    """The metrics' send stamps still held (an entry per request awaiting its reply)."""
    assert d.metrics is not None
    stamps: dict[str, float] = d.metrics._sent_at
    return stamps


async def test_a_request_resolved_during_the_first_send_is_not_sent_on_the_second() -> None:
    """One flush hands ``req-0`` to one connection and ``req-1`` to the other. The
    service that gets ``req-0`` answers ``req-1`` too, at once (as a late result of an
    earlier attempt would come): read during the first send, it resolves ``req-1``,
    which must then not go out on the second connection, nor leave a send stamp."""
    first, second = request(0), request(1)

    def service(r: BacktestRequest) -> list[bytes]:
        if r.request_id == first.request_id:
            return echo_result(second) + echo_result(first)
        return echo_result(r)

    net = MemoryNetwork(read_during_send=True)
    net.bind(A, service)
    net.bind(B, service)
    with anyio.fail_after(5):
        async with open_dispatcher([A, B], network=net, metrics=CollectorRegistry()) as d:
            requesters = read_in_turn(d)
            await d.wait_connected(A)
            await d.wait_connected(B)
            await until(lambda: all(r.readers for r in requesters.values()))  # they wait
            await d.submit_many([first, second])  # one flush: one request per connection
            got = {(await d.outcomes.receive()).request_id for _ in range(2)}
            assert got == {first.request_id, second.request_id}
            assert sum(r.offered for r in requesters.values()) >= 1  # read during a send
            assert sent_at(d) == {}  # no stamp for a reply that will never come
            assert [r.request_id for r in net.received] == [first.request_id]
            assert d.queue.stats().pending == 0


async def a_pong_flush_round(bound: int, n: int) -> int:
    """One run of the scenario below; return how many sends offered replies while
    other replies were being applied (``Dispatcher._applying``)."""
    nested = 0
    net = MemoryNetwork(read_during_send=True)
    net.credits.update({A: 1, B: 2})
    net.bind(B)
    async with open_dispatcher([A, B], network=net, outcome_buffer=bound) as d:
        requesters = read_in_turn(d)
        for requester in requesters.values():
            read = requester.on_readable
            assert read is not None

            def offered(read: Callable[[], None] = read) -> None:
                nonlocal nested
                nested += d._applying  # a send made while replies are being applied
                read()

            requester.on_readable = offered
        await d.wait_connected(B)
        await d.submit_many([request(i) for i in range(n)])
        stats = d.outcomes.statistics
        await until(lambda: stats().current_buffer_used >= bound)  # B filled the book
        net.bind(A)
        a = requesters[A]
        await until(lambda: bool(a.stash) and not a.readers)  # A's PONG waits for room
        got: set[str] = set()
        for _ in range(n):
            got.add((await d.outcomes.receive()).request_id)
            # The one just read was unread too: never more than the bound.
            assert stats().current_buffer_used + 1 <= bound
        assert got == {f"req-{i}" for i in range(n)}
    return nested


async def test_replies_found_by_a_pongs_flush_do_not_overfill_the_outcome_buffer() -> None:
    """``outcome_buffer=5``; service B (credit 2) fills it while A is down. A comes up
    while the book is full: its PONG waits, and its receiver later reads it with the
    result of the one request A takes before its PONG. Applying the PONG flushes, B gets
    requests, and B's replies, found by that send, must wait for B's receiver: read
    there and then, they were counted against the room A's result still takes, and the
    book held one outcome more than ``outcome_buffer``.

    Whether A's receiver reads while B has room (before the flusher fills it) depends on
    the scheduler's order, which trio varies: the scenario runs 20 times, and must have
    made a nested read at least once (without the fix it overfilled 7 times in 10 on
    trio, and every time on asyncio)."""
    nested = 0
    for _ in range(20):
        with anyio.fail_after(5):
            nested += await a_pong_flush_round(bound=5, n=40)
    assert nested >= 1


# -- the memory network's read-during-send mode itself -----------------------------------


async def test_a_send_offers_replies_only_while_a_reader_waits() -> None:
    """``read_during_send``: replies stay in the requester until read; a send offers
    them to ``on_readable`` only while a task waits to read, and not again from inside
    the hook; the waiting task then finds what the hook left."""
    net = MemoryNetwork(read_during_send=True)
    net.bind(A)
    async with net.open_requester(A) as requester:
        assert isinstance(requester, _MemoryRequester)
        net.connect(requester, A)
        calls: list[list[list[bytes]]] = []

        def hook() -> None:
            calls.append(requester.receive_nowait(1))  # takes one, leaves the rest
            requester.send_batch([[b"", encode_message(request(3))]])  # no second offer

        requester.on_readable = hook
        requester.send_batch([[b"", encode_message(request(0))]])  # nobody waits
        assert calls == []
        assert len(requester.stash) == 1  # the reply waits in the socket
        assert requester.receive_nowait() == [[b"", echo_result(request(0))[0]]]
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                woke = anyio.Event()

                async def reader() -> None:
                    await requester.wait_readable()
                    woke.set()

                tg.start_soon(reader)
                await until(lambda: requester.readers == 1)
                requester.send_batch([[b"", encode_message(request(1))],
                                      [b"", encode_message(request(2))]])  # fmt: skip
                assert len(calls) == 1
                assert requester.offered == 1
                assert [f[-1] for f in calls[0]] == [echo_result(request(1))[0]]
                await woke.wait()
        assert requester.readers == 0
        left = [f[-1] for f in requester.receive_nowait()]
        assert left == [echo_result(request(2))[0], echo_result(request(3))[0]]
