"""Task wiring of the dispatcher on an in-memory network, in virtual time.

On trio the tests run under ``MockClock(autojump_threshold=0)``: time jumps whenever every
task is blocked, so the rate limit, deadlines and retry backoff are checked to the exact
virtual instant in milliseconds of real time. On asyncio (no mock clock) the same tests
run on the real clock with the times scaled down and a small tolerance. Real ZeroMQ
sockets are tested elsewhere (``test_dispatcher.py``); never autojump with real sockets.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import anyio
import pytest
import trio
import trio.lowlevel

from backtest_queue import BacktestRequest, DuplicateRequest, UsageError, open_dispatcher
from backtest_queue.testing import MemoryNetwork, echo_result
from story_time import Time, request, story_time

# The kit's marker: trio under MockClock(autojump_threshold=0), asyncio on the real clock.
pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]
EP = "tcp://fake:5580"


@pytest.fixture
def t(anyio_backend: object) -> Time:
    return story_time(anyio_backend, asyncio_slack=0.02)


def assert_times(got: list[float], expected: list[float], t: Time) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert e - 1e-9 <= g <= e + t.slack, (got, expected)


async def test_sends_follow_the_token_bucket_to_the_instant(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    async with open_dispatcher([EP], network=net, rate=2 / t.scale, burst=1,
                               flush_interval=t(1000)) as d:  # fmt: skip
        await d.wait_connected()
        start = anyio.current_time()
        states = [await d.submit(request(i)) for i in range(5)]
        assert [s.state for s in states] == ["sent", *["queued"] * 4]
        assert {s.reason for s in states[1:]} == {"rate"}
        outcomes = [await d.outcomes.receive() for _ in range(5)]
    assert all(o.ok for o in outcomes)
    assert_times([r.at - start for r in net.received], [t(x) for x in (0, 0.5, 1, 1.5, 2)], t)


async def test_retries_back_off_then_fail_at_the_last_deadline(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, lambda r: [])  # a service that never answers
    async with open_dispatcher([EP], network=net, result_timeout=t(1), retry_backoff=2.0,
                               max_attempts=3, flush_interval=t(1000)) as d:  # fmt: skip
        await d.wait_connected()
        start = anyio.current_time()
        state = await d.submit(request(0))
        outcome = await d.wait(state.request_id)
        failed_at = anyio.current_time() - start
        assert d.stats().queue.pending == 0
    assert (outcome.reason, outcome.attempts) == ("timeout", 3)
    # Sent at 0, again at 1 (first deadline), again at 1 + 2; failed at 1 + 2 + 4.
    assert_times([r.at - start for r in net.received], [t(0), t(1), t(3)], t)
    assert_times([failed_at], [t(7)], t)


async def test_a_submit_whose_deadline_comes_first_wakes_the_sleeping_flusher(t: Time) -> None:
    """The flusher sleeps until the earliest deadline it knows (a retry's, far off); a
    request submitted later with an earlier deadline is retried at that deadline, not
    at the retry's: the submit re-arms the flusher."""
    net = MemoryNetwork()
    net.bind(EP, lambda r: [])  # a service that never answers
    async with open_dispatcher([EP], network=net, result_timeout=t(1), retry_backoff=10.0,
                               max_attempts=2, flush_interval=t(1000)) as d:  # fmt: skip
        await d.wait_connected()
        start = anyio.current_time()
        await d.submit(request(0))  # sent at 0, again at 1 with its deadline at 1 + 10
        await anyio.sleep(t(2))
        await d.submit(request(1))  # sent at 2, deadline 3: before the flusher's 11
        outcome = await d.wait("req-1")
    assert (outcome.reason, outcome.attempts) == ("timeout", 2)
    sends = [r.at - start for r in net.received if r.request_id == "req-1"]
    assert_times(sends, [t(2), t(3)], t)


async def test_the_connect_event_flushes_at_that_instant(t: Time) -> None:
    net = MemoryNetwork()
    async with open_dispatcher([EP], network=net, flush_interval=t(3600)) as d:
        for i in range(3):
            assert (await d.submit(request(i))).reason == "not_connected"
        await anyio.sleep(t(5))
        bound_at = anyio.current_time()
        net.bind(EP, echo_result)
        outcomes = [await d.outcomes.receive() for _ in range(3)]
    assert [o.request_id for o in outcomes] == ["req-0", "req-1", "req-2"]
    assert_times([r.at - bound_at for r in net.received], [0.0, 0.0, 0.0], t)


async def test_a_disconnect_requeues_at_once_not_at_the_deadline(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, lambda r: [])
    async with open_dispatcher([EP], network=net, result_timeout=t(100),
                               flush_interval=t(3600)) as d:  # fmt: skip
        await d.wait_connected()
        await d.submit(request(0))
        await anyio.sleep(t(2))
        net.unbind(EP)
        await anyio.sleep(t(3))
        back_at = anyio.current_time()
        net.bind(EP, echo_result)
        outcome = await d.outcomes.receive()
    assert outcome.ok
    assert outcome.attempts == 2
    assert_times([net.received[-1].at - back_at], [0.0], t)  # re-sent on reconnect


# -- virtual time must not spin (issue 16) -----------------------------------------------


@contextmanager
def real_time_watchdog(anyio_backend: object, seconds: float) -> Iterator[None]:
    """Fail, instead of hanging, if the block takes ``seconds`` of real time.

    Under ``MockClock(autojump_threshold=0)`` a flusher that wakes again and again at one
    instant keeps the scheduler busy, so virtual time never moves and ``fail_after``
    never fires: only a real-time bound can catch that spin. (On asyncio the clock is the
    real one and ``fail_after`` does the job.)
    """
    if anyio_backend == "asyncio":
        yield
        return
    token = trio.lowlevel.current_trio_token()
    scope = trio.CancelScope()
    done = threading.Event()

    def watch() -> None:
        if not done.wait(seconds):
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        with scope:
            yield
    finally:
        done.set()
        thread.join()
    if scope.cancelled_caught:
        pytest.fail(f"virtual time spun: the block did not end in {seconds} s of real time")


@pytest.mark.parametrize("interval", [0.1, 0.2, 0.3, 1 / 3, 0.7, 1.1])
async def test_a_periodic_flush_that_can_send_nothing_lets_virtual_time_move(
    interval: float, t: Time, anyio_backend: object
) -> None:
    """The issue's script: max_pending=1, a silent service, two requests, sleep(3).

    The flusher wakes at each tick and can send nothing (pending is full); the tick must
    still be due at the instant the policy named, or it wakes again at once, forever.
    """
    net = MemoryNetwork()
    net.bind(EP, lambda r: [])  # silent: the pending slot is never freed
    with real_time_watchdog(anyio_backend, 30.0), anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, max_pending=1,
                                   flush_interval=t(interval)) as d:  # fmt: skip
            await d.wait_connected()
            start = anyio.current_time()
            await d.submit_many([request(0), request(1)])
            await anyio.sleep(t(3))
            assert anyio.current_time() - start >= t(3)
            s = d.stats().queue
            assert (s.pending, s.queued, s.sent) == (1, 1, 1)
            # The ticks went on to the end (each moved last_flush), none was skipped.
            # (On asyncio's real clock a tick may run just before the sleeper resumes.)
            early, late = (0.5 * t(3), t.slack) if anyio_backend == "asyncio" else (t.slack, 0)
            assert t(3) - t(interval) - early <= s.last_flush - start <= t(3) + late
    with d.outcomes:  # one outcome each, at exit
        assert [o.reason async for o in d.outcomes] == ["shutdown", "shutdown"]


@pytest.mark.parametrize("rate", [3.0, 7.0, 1 / 0.7, 10 / 3])
async def test_rate_limited_sends_let_virtual_time_move(
    rate: float, t: Time, anyio_backend: object
) -> None:
    """The token time the policy names is one at which the token is there."""
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    with real_time_watchdog(anyio_backend, 30.0), anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net, rate=rate / t.scale, burst=1,
                                   flush_interval=t(0.7)) as d:  # fmt: skip
            await d.wait_connected()
            await d.submit_many([request(i) for i in range(8)])
            outcomes = [await d.outcomes.receive() for _ in range(8)]
    assert all(o.ok for o in outcomes)
    gaps = [b.at - a.at for a, b in zip(net.received, net.received[1:], strict=False)]
    # Exact on trio; on asyncio a send is stamped a little after the instant the policy
    # took its token, so a gap may look shorter by that much.
    assert all(g >= t(1 / rate) - t.slack for g in gaps), gaps


# -- the fake network models what a real one allows (issue 16) ---------------------------


async def test_two_dispatchers_on_one_fake_endpoint_each_get_their_own_replies(
    t: Time,
) -> None:
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    with anyio.fail_after(t(60)):
        async with (
            open_dispatcher([EP], network=net, flush_interval=t(1)) as a,
            open_dispatcher([EP], network=net, flush_interval=t(1)) as b,
        ):
            await a.wait_connected()
            await b.wait_connected()
            await a.submit_many([request(i) for i in range(5)])
            await b.submit_many([request(i) for i in range(5, 8)])
            got_a = sorted([(await a.outcomes.receive()).request_id for _ in range(5)])
            got_b = sorted([(await b.outcomes.receive()).request_id for _ in range(3)])
            # The service goes and comes back: both requesters are served again.
            net.unbind(EP)
            net.bind(EP, echo_result)
            await a.submit(request(8))
            await b.submit(request(9))
            assert (await a.outcomes.receive()).request_id == "req-8"
            assert (await b.outcomes.receive()).request_id == "req-9"
            sa, sb = a.stats().queue, b.stats().queue
    assert got_a == [f"req-{i}" for i in range(5)]
    assert got_b == [f"req-{i}" for i in range(5, 8)]
    assert (sa.results, sa.unknown_results) == (6, 0)  # none of b's replies reached a
    assert (sb.results, sb.unknown_results) == (4, 0)
    assert {r.request_id for r in net.received} == {f"req-{i}" for i in range(10)}


async def test_one_dispatcher_closing_leaves_the_other_connected(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    with anyio.fail_after(t(60)):
        async with open_dispatcher([EP], network=net) as b:
            async with open_dispatcher([EP], network=net) as a:
                await a.wait_connected()
            await b.wait_connected()
            outcome = await b.wait((await b.submit(request(1))).request_id)
    assert outcome.ok


def test_binding_a_bound_fake_endpoint_twice_is_refused() -> None:
    net = MemoryNetwork()
    net.bind(EP)
    with pytest.raises(UsageError, match="already bound"):
        net.bind(EP)
    net.unbind(EP)
    with pytest.raises(UsageError, match="no fake service"):
        net.unbind(EP)


# -- what reaches the wire is what submit validated (issue 14: encoded once) --------------


async def test_the_wire_carries_the_request_as_validated_not_as_changed_later() -> None:
    """``submit``, ``submit_many`` and ``submit_nowait`` send the encoding they checked:
    a params dict the caller changes afterwards (to another valid value) never reaches a
    service, whether the request left at once or waited in the queue."""
    seen: dict[str, dict[str, int | float]] = {}

    def record(r: BacktestRequest) -> list[bytes]:
        seen[r.request_id] = dict(r.strategy.params)
        return echo_result(r)

    net = MemoryNetwork()
    async with open_dispatcher([EP], network=net, flush_interval=3600) as d:
        queued = [request(i) for i in range(3)]  # submitted before any service is up
        await d.submit(queued[0])
        await d.submit_many(queued[1:])
        for r in queued:
            r.strategy.params["slow"] = 99
        net.bind(EP, record)
        with anyio.fail_after(5):
            await d.wait_connected()
            at_once = [request(i) for i in range(3, 6)]
            await d.submit(at_once[0])
            await d.submit_many([at_once[1]])
            d.submit_nowait(at_once[2])
            for r in at_once:
                r.strategy.params["slow"] = 99
            await d.wait_idle()
    assert seen == {f"req-{i}": {"fast": 5, "slow": 20 + i} for i in range(6)}


async def test_a_submit_with_a_queued_or_pending_id_raises_and_changes_nothing() -> None:
    """``submit`` with the id of a request still queued, or pending at a service, raises
    ``DuplicateRequest`` with room in the queue (its common path) and leaves the queue,
    the pending table and the outcomes as they were: one outcome per id."""
    net = MemoryNetwork()
    held: list[BacktestRequest] = []
    net.bind(EP, lambda r: held.append(r) or [])  # keeps them pending until answered
    async with open_dispatcher([EP], network=net, max_pending=1, flush_interval=3600) as d:
        with anyio.fail_after(5):
            await d.wait_connected()
        assert (await d.submit(request(0))).state == "sent"
        assert (await d.submit(request(1))).reason == "pending"
        for i in (0, 1):  # pending, queued
            with pytest.raises(DuplicateRequest):
                await d.submit(request(i))
        stats = d.stats().queue
        assert (stats.pending, stats.queued, stats.enqueued) == (1, 1, 2)
        assert [r.request_id for r in held] == ["req-0"]
    with d.outcomes:
        outcomes = [o async for o in d.outcomes]
    assert sorted((o.request_id, o.reason) for o in outcomes) == [
        ("req-0", "shutdown"),
        ("req-1", "shutdown"),
    ]
