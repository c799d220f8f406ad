"""The concurrency contract (issue 16): who owns the outcome stream, and backpressure.

The dispatcher ends :attr:`Dispatcher.outcomes` at exit and never closes the reader's
side; a bounded ``outcome_buffer`` bounds memory by pushing back (receivers and flusher
pause, the queue fills, ``submit`` waits or raises ``QueueFull``); nothing left unread at
exit is dropped; nothing leaks a ResourceWarning. On
:class:`~backtest_queue.testing.MemoryNetwork`, both backends.
"""

from __future__ import annotations

import contextlib
import gc
import types
import warnings
from collections import Counter
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar, cast

import anyio
import anyio.lowlevel
import pytest

from backtest_queue import BacktestRequest, QueueFull, Strategy, open_dispatcher
from backtest_queue.outcome import Outcome
from backtest_queue.testing import MemoryNetwork, echo_result

pytestmark = pytest.mark.anyio
EP = "tcp://fake:5580"
T = TypeVar("T")


def request(i: int) -> BacktestRequest:
    strategy = Strategy(name=f"s{i}", kind="sma_cross", params={"fast": 5, "slow": 20 + i})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=f"req-{i}")


async def test_a_collector_in_an_outer_task_group_ends_normally_at_exit() -> None:
    """A collector still processing the last outcome when the dispatcher exits sees the
    end of its loop: no ClosedResourceError."""
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    got: list[Outcome] = []
    processing = anyio.Event()
    release = anyio.Event()
    ended = anyio.Event()

    async def collect(d: Any) -> None:
        async for outcome in d.outcomes:
            got.append(outcome)
            processing.set()
            await release.wait()  # still busy at exit (the script slept here)
        ended.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as outer:
            async with open_dispatcher([EP], network=net) as d:
                outer.start_soon(collect, d)
                await d.wait_connected()
                await d.submit(request(0))
                await processing.wait()  # read: the stream's buffer is empty at exit
                await d.wait_idle()
            assert not ended.is_set()
            release.set()
            await ended.wait()
    assert [o.request_id for o in got] == ["req-0"]
    assert got[0].ok


async def test_a_bounded_buffer_nobody_reads_pushes_back_then_everything_arrives() -> None:
    """outcome_buffer=100, 5 000 echo requests fed with submit_many while nobody reads:
    the feeder is held back, unread outcomes stay bounded; then a reader gets every
    request's outcome, exactly once."""
    n, bound, max_pending, chunk = 5_000, 100, 64, 250
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    fed = 0
    async with open_dispatcher([EP], network=net, outcome_buffer=bound, capacity=500,
                               max_pending=max_pending) as d:  # fmt: skip
        with anyio.fail_after(5):
            await d.wait_connected()

        async def feed() -> None:
            nonlocal fed
            for start in range(0, n, chunk):
                await d.submit_many([request(i) for i in range(start, start + chunk)])
                fed += chunk

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            with anyio.fail_after(20):
                await anyio.wait_all_tasks_blocked()  # everyone waits: pushed back
            stats = d.stats()
            assert fed < n, "nobody reads, yet every request was accepted"
            assert stats.unread_outcomes <= bound + 1024, stats
            assert stats.queue.queued + stats.queue.pending <= 500 + max_pending, stats
            counts: Counter[str] = Counter()
            with anyio.fail_after(60):
                async for outcome in d.outcomes:
                    counts[outcome.request_id] += 1
                    assert outcome.ok, outcome
                    if len(counts) == n:
                        break
                    if len(counts) % 500 == 0:
                        assert d.stats().unread_outcomes <= bound + 1024
        assert counts == Counter({f"req-{i}": 1 for i in range(n)})
        assert d.stats().unread_outcomes == 0


async def test_a_full_buffer_makes_submit_nowait_raise_queue_full() -> None:
    """on_full="error": with nobody reading, submit_nowait hits QueueFull (pushed back)
    instead of buffering without end; every accepted request still gets its outcome."""
    bound, capacity, max_pending = 100, 500, 64
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    accepted: list[str] = []
    async with open_dispatcher([EP], network=net, outcome_buffer=bound, capacity=capacity,
                               max_pending=max_pending, on_full="error") as d:  # fmt: skip
        with anyio.fail_after(5):
            await d.wait_connected()

        def submit_until_full() -> None:
            with contextlib.suppress(QueueFull):
                while len(accepted) < 20_000:
                    d.submit_nowait(request(len(accepted)))
                    accepted.append(f"req-{len(accepted)}")

        with anyio.fail_after(20):
            submit_until_full()
            await anyio.wait_all_tasks_blocked()  # the flusher hands over what it may
            submit_until_full()  # the room that made
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(QueueFull):  # pushed back: nothing more was handed over
                d.submit_nowait(request(len(accepted)))
            assert d.stats().unread_outcomes <= bound + 1024
            outcomes = [await d.outcomes.receive() for _ in accepted]
    assert len(accepted) < 20_000
    assert sorted(o.request_id for o in outcomes) == sorted(accepted)


async def test_unread_outcomes_left_at_exit_with_a_bounded_buffer_stay_readable() -> None:
    """100 submitted to a service that answers some; a buffer of 10 nobody reads: after
    the block all 100 outcomes (results and 'shutdown' ones) are readable, once each."""
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    async with open_dispatcher([EP], network=net, outcome_buffer=10) as d:
        with anyio.fail_after(5):
            await d.wait_connected()
            await d.submit_many([request(i) for i in range(100)])
            await anyio.wait_all_tasks_blocked()  # replies read until the buffer filled
    with anyio.fail_after(5), d.outcomes:
        outcomes = [o async for o in d.outcomes]
    assert sorted(o.request_id for o in outcomes) == sorted(f"req-{i}" for i in range(100))
    reasons = Counter(o.reason for o in outcomes)
    assert set(reasons) <= {None, "shutdown"}
    assert reasons[None] >= 10


async def _readme_pattern() -> None:
    """The README's example, with no service up: ``fail_after`` around ``wait`` expires."""
    async with open_dispatcher([EP], network=MemoryNetwork()) as d:
        strategy = Strategy(name="sma-10-40", kind="sma_cross", params={"fast": 10, "slow": 40})
        state = await d.submit(BacktestRequest(strategy=strategy, data_id="EURUSD-H1"))
        with anyio.fail_after(0.05):
            await d.wait(state.request_id)


async def test_the_readme_pattern_leaves_no_resource_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            await _readme_pattern()
        except TimeoutError:
            pass
        else:
            pytest.fail("no service is up: wait should have timed out")
        gc.collect()
    assert [str(w.message) for w in caught] == []


async def test_a_stream_read_to_its_end_and_one_never_touched_leave_no_warning() -> None:
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with open_dispatcher([EP], network=net) as d:
            await d.submit(request(0))
        with anyio.fail_after(5):
            assert [o.request_id async for o in d.outcomes] == ["req-0"]  # never closed
        async with open_dispatcher([EP], network=net) as untouched:
            await untouched.submit(request(1))
        del d, untouched
        gc.collect()
    assert [str(w.message) for w in caught] == []


async def test_a_wait_held_back_by_unread_outcomes_says_so_then_returns_once_they_are_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fresh-eyes trial: ``wait`` for one id while other outcomes pile up unread hung
    silently. Backpressure still applies (the bound is the point), but it says so, and
    reading the stream lets the wait return, with nothing lost or doubled."""
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    async with open_dispatcher([EP], network=net, outcome_buffer=5, max_pending=1) as d:
        with anyio.fail_after(10):
            await d.wait_connected()
            states = await d.submit_many([request(i) for i in range(10)])
            last = states[-1].request_id
            got: list[Outcome] = []

            async def waiter() -> None:
                got.append(await d.wait(last))

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert got == []  # held back: five outcomes of other requests are unread
                assert d.stats().unread_outcomes == 5
                assert "may not return" in caplog.text
                read = [await d.outcomes.receive() for _ in range(9)]
    assert [o.request_id for o in got] == [last]
    assert sorted(o.request_id for o in read) == sorted(s.request_id for s in states[:-1])


@types.coroutine
def _counting_suspensions(coro: Coroutine[Any, Any, T], count: list[int]) -> Generator[Any, Any, T]:
    """Drive ``coro`` as the event loop would, counting how often it suspends (each
    suspension is a trip through the scheduler)."""
    send: Any = None
    throw: BaseException | None = None
    while True:
        try:
            yielded = coro.throw(throw) if throw is not None else coro.send(send)
        except StopIteration as stop:
            return cast(T, stop.value)
        count[0] += 1
        try:
            send, throw = (yield yielded), None
        except BaseException as exc:  # handed to the coroutine, as the loop would
            send, throw = None, exc


async def test_receive_on_an_empty_stream_suspends_once_per_outcome() -> None:
    """Waiting is the schedule point (as in trio's memory channels): a receive that finds
    nothing parks at once; it does not also pass through the scheduler before it parks,
    a pass per outcome for a caller that reads outcomes as they come."""
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    async with open_dispatcher([EP], network=net, max_pending=None, rate=None) as d:
        await d.wait_connected()
        got: list[Outcome] = []
        suspensions = [0]

        async def read_one() -> None:
            got.append(await _counting_suspensions(d.outcomes.receive(), suspensions))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_one)
                while not d.outcomes.statistics().tasks_waiting_receive:
                    await anyio.lowlevel.checkpoint()
                parked_after = suspensions[0]
                await d.submit(request(1))
        assert got[0].request.request_id == "req-1"
        assert parked_after == 1
