"""Replies read in bursts while the caller has unread outcomes, and what ends a burst.

While outcomes are unread and nothing waits on a reply, the dispatcher's receivers leave
replies in the socket for at most ``_DEFER_READ_MAX`` seconds (issue 14: a ``ZMQ_EVENTS``
read per send and a read per reply cost row 4 a third of its rate). Here that bound is
set to 1000 s, so whatever must not wait for it (a ``wait``, ``wait_idle``, a queued
request that needs a slot, a deadline, a new service's PONG) is shown to end the burst by
itself. On trio in virtual time (``MockClock(autojump_threshold=0)``): a missing wake-up
would jump the clock by 1000 s; on asyncio's real clock it would trip ``fail_after``.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from prometheus_client import CollectorRegistry

import backtest_queue.receiving as receiving_module
from backtest_queue import Dispatcher, TransportError, open_dispatcher
from backtest_queue.receiving import _Receiving
from backtest_queue.testing import Faults, MemoryNetwork, echo_result
from story_time import Time, request, story_time

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]
EP = "tcp://fake:5580"
LONG = 1000.0  # the deferral bound in these tests: nothing may wait for it


@pytest.fixture
def t(anyio_backend: object) -> Time:
    return story_time(anyio_backend, asyncio_slack=0.05)


@pytest.fixture(autouse=True)
def long_deferral(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(receiving_module, "_DEFER_READ_MAX", LONG)


def latencies(*seconds: float) -> Faults:
    """A service whose n-th reply leaves ``seconds[n]`` after its request came."""
    it: Iterator[float] = iter(seconds)
    return Faults(latency=lambda _rng: next(it))


async def leave_a_reply_unread(d: Dispatcher, t: Time) -> None:
    """req-0's outcome unread in the book; req-1 answered at once, its reply left in
    the socket (its request still pending)."""
    await d.wait_connected()
    await d.submit(request(0))
    await anyio.sleep(t(1))  # req-0's outcome is in; nobody reads it
    await d.submit(request(1))
    await anyio.sleep(t(1))
    assert d.stats().queue.pending == 1


async def test_a_reply_waits_unread_while_the_caller_has_an_outcome(t: Time) -> None:
    """The burst itself: with one outcome unread, the reply to the next request stays
    in the socket (its request still pending) until the caller takes that outcome."""
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, flush_interval=t(3600)) as d:
            await leave_a_reply_unread(d, t)
            taken_at = anyio.current_time()
            first = await d.outcomes.receive()
            second = await d.outcomes.receive()  # read when the caller caught up
            assert anyio.current_time() - taken_at <= t.slack
    assert [first.request_id, second.request_id] == ["req-0", "req-1"]
    assert second.ok


@pytest.mark.parametrize("submit", ["submit", "submit_nowait"])
async def test_a_reply_after_the_caller_caught_up_is_read_when_it_comes(
    t: Time, submit: str
) -> None:
    """The caller takes its last outcome while req-1 is still at the service (with
    ``submit_nowait``, still waiting for the flusher, which sends it and finds no reply
    yet): nothing is left to read, so the receivers wait on the socket, and req-1's
    outcome arrives with its reply (0.5 s), not when the deferral would have run out."""
    net = MemoryNetwork()
    net.bind(EP, faults=latencies(0.0, t(0.5)))
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, flush_interval=t(3600)) as d:
            await d.wait_connected()
            await d.submit(request(0))
            await anyio.sleep(t(0.1))  # req-0's outcome unread
            start = anyio.current_time()
            if submit == "submit":
                await d.submit(request(1))  # answered 0.5 s from now
            else:
                d.submit_nowait(request(1))  # queued until the flusher runs
            assert d.outcomes.receive_nowait().request_id == "req-0"
            assert (await d.outcomes.receive()).request_id == "req-1"
            assert anyio.current_time() - start <= t(0.5) + t.slack


async def test_wait_for_a_reply_left_unread_returns_at_once(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, flush_interval=t(3600)) as d:
            await leave_a_reply_unread(d, t)
            start = anyio.current_time()
            outcome = await d.wait("req-1")
            assert anyio.current_time() - start <= t.slack
            assert outcome.ok
            assert (await d.outcomes.receive()).request_id == "req-0"  # still there


async def test_wait_idle_reads_the_replies_left_unread(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, flush_interval=t(3600)) as d:
            await leave_a_reply_unread(d, t)
            start = anyio.current_time()
            await d.wait_idle()
            assert anyio.current_time() - start <= t.slack
            assert d.stats().queue.pending == 0


async def test_a_queued_request_is_sent_as_soon_as_a_reply_frees_its_slot(t: Time) -> None:
    """max_pending=1: req-1's reply sits unread behind req-0's outcome; req-2, queued
    for the slot that reply frees, makes the receivers read it at once (nothing else
    would: nobody waits, and the periodic flush is an hour away)."""
    net = MemoryNetwork()
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, max_pending=1,
                                   flush_interval=t(3600)) as d:  # fmt: skip
            await d.submit(request(0))  # queued: no service yet
            assert d.maybe_flush() == 0  # the periodic flush ran: the next is an hour off
            net.bind(EP, echo_result)
            await anyio.sleep(t(1))  # req-0 sent at the connect; its outcome unread
            await d.submit(request(1))
            await anyio.sleep(t(1))
            assert d.stats().queue.pending == 1  # req-1's reply is unread
            start = anyio.current_time()
            assert (await d.submit(request(2))).reason == "pending"
            await anyio.sleep(t(1))  # nobody waits; the queued request alone must do
            sent = {r.request_id: r.at - start for r in net.received}
            assert sent["req-2"] <= t.slack
            outcomes = [await d.outcomes.receive() for _ in range(3)]
    assert [o.request_id for o in outcomes] == ["req-0", "req-1", "req-2"]


async def test_with_metrics_replies_are_read_at_once(t: Time) -> None:
    """Metrics time each reply from its send to its reading: none is left unread."""
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, flush_interval=t(3600),
                                   metrics=CollectorRegistry()) as d:  # fmt: skip
            await d.wait_connected()
            await d.submit(request(0))
            await anyio.sleep(t(1))
            await d.submit(request(1))
            await anyio.sleep(t(1))
            assert d.stats().queue.pending == 0
            assert d.stats().unread_outcomes == 2


async def test_a_reply_that_came_in_time_is_not_a_timeout(t: Time) -> None:
    """req-1's reply arrives 0.5 s into its 1 s deadline while req-0's outcome is unread;
    when the deadline comes the flusher reads it before it would call it a timeout."""
    net = MemoryNetwork()
    net.bind(EP, faults=latencies(0.0, t(0.5)))
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, result_timeout=t(1), max_attempts=1,
                                   flush_interval=t(3600)) as d:  # fmt: skip
            await d.wait_connected()
            await d.submit(request(0))
            await anyio.sleep(t(0.1))
            await d.submit(request(1))
            await anyio.sleep(t(2))  # past req-1's deadline, no outcome taken
            outcomes = [await d.outcomes.receive() for _ in range(2)]
    assert [(o.request_id, o.reason, o.attempts) for o in outcomes] == [
        ("req-0", None, 1),
        ("req-1", None, 1),
    ]


async def test_a_service_that_comes_back_is_ready_when_its_pong_comes(t: Time) -> None:
    """A service that comes (back) up while replies are left unread answers its PING at
    once; the PONG is read then, not after the second a PONG may take."""
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, flush_interval=t(3600)) as d:
            await leave_a_reply_unread(d, t)
            net.unbind(EP)
            await anyio.sleep(t(1))
            start = anyio.current_time()
            net.bind(EP, echo_result)
            await d.wait_connected()
            assert anyio.current_time() - start <= t.slack
            outcomes = [await d.outcomes.receive() for _ in range(2)]
    assert all(o.ok for o in outcomes)


async def test_a_caller_sitting_on_an_outcome_does_not_wake_the_receiver_on_a_timer(
    t: Time, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing in flight, one outcome unread for a while: once a deferral ran out with
    nothing to read, the receiver waits on the socket, not on a timer that fires every
    few ms (a caller sitting on an outcome for an hour would cost 720 000 wake-ups, on
    trio's virtual clock as much as on a real one)."""
    monkeypatch.setattr(receiving_module, "_DEFER_READ_MAX", t(0.005))
    reads = 0
    read_now = _Receiving._read_now

    def counting(self: _Receiving, endpoint: str) -> int:
        nonlocal reads
        reads += 1
        return read_now(self, endpoint)

    monkeypatch.setattr(_Receiving, "_read_now", counting)
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, flush_interval=t(3600)) as d:
            await d.wait_connected()
            await d.submit(request(0))
            await anyio.sleep(t(1))  # its outcome unread, nothing in flight
            before = reads
            await anyio.sleep(t(2))  # 400 deferrals of 5 ms, if each started another
            assert reads - before <= 1
            await d.submit(request(1))
            await anyio.sleep(t(1))
            assert d.stats().queue.pending == 0  # its reply was read, without a wait
            outcomes = [await d.outcomes.receive() for _ in range(2)]
    assert [o.request_id for o in outcomes] == ["req-0", "req-1"]


async def test_every_reply_that_came_in_time_is_read_before_the_deadline(t: Time) -> None:
    """40 replies (more than one read's batch of 32) wait in the socket behind req-0's
    unread outcome when their deadline comes: all of them are read first."""
    net = MemoryNetwork()
    net.bind(EP, faults=latencies(0.0, *[t(0.5)] * 40))
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, result_timeout=t(1), max_attempts=1,
                                   flush_interval=t(3600)) as d:  # fmt: skip
            await d.wait_connected()
            await d.submit(request(0))
            await anyio.sleep(t(0.1))
            await d.submit_many([request(i) for i in range(1, 41)])
            await anyio.sleep(t(2))  # past their deadline, no outcome taken
            outcomes = [await d.outcomes.receive() for _ in range(41)]
    assert [o.reason for o in outcomes if not o.ok] == []


async def test_replies_left_unread_at_close_are_results(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, flush_interval=t(3600),
                                   drain_timeout=0) as d:  # fmt: skip
            await leave_a_reply_unread(d, t)
    outcomes = [d.outcomes.receive_nowait() for _ in range(2)]
    assert [(o.request_id, o.reason) for o in outcomes] == [("req-0", None), ("req-1", None)]


async def test_replies_left_unread_before_a_disconnect_are_results(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, flush_interval=t(3600),
                                   max_attempts=1) as d:  # fmt: skip
            await leave_a_reply_unread(d, t)
            net.unbind(EP)
            await anyio.sleep(t(1))
            outcomes = [await d.outcomes.receive() for _ in range(2)]
    assert [(o.request_id, o.reason) for o in outcomes] == [("req-0", None), ("req-1", None)]
    assert len(net.received) == 2  # nothing sent twice


async def test_a_socket_failing_while_the_caller_takes_an_outcome_loses_nothing(
    t: Time, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking the last unread outcome reads the replies left unread, in the caller's
    turn. If the socket fails there, the caller still gets the outcome it took; the
    failure is the receiver's to report (the dispatcher's block raises it)."""
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    failing = False
    taken: list[str] = []
    with anyio.fail_after(t(60)):
        with pytest.RaisesGroup(TransportError, allow_unwrapped=True, flatten_subgroups=True):
            async with open_dispatcher([EP], network=net, flush_interval=t(3600)) as d:
                await leave_a_reply_unread(d, t)
                requester = d._sockets[EP]
                receive_nowait = requester.receive_nowait

                def fail(max_messages: int = 1024) -> list[list[bytes]]:
                    if failing:
                        raise TransportError("the socket failed")
                    return receive_nowait(max_messages)

                monkeypatch.setattr(requester, "receive_nowait", fail)
                failing = True
                try:
                    taken.append(d.outcomes.receive_nowait().request_id)
                except TransportError:
                    taken.append("the take raised")
                await anyio.sleep(t(1))
    assert taken == ["req-0"]
