"""The concurrency contract (issue 16): a call that raises accepted nothing; an outcome is
consumed only when a caller received it; a locked store is waited out, not fatal.

Store tests use a real SQLite file and a second ``sqlite3`` connection that holds the
write lock (``BEGIN IMMEDIATE``) so that a commit waits, deterministically. Wiring tests
use :class:`~backtest_queue.testing.MemoryNetwork`; the clean-close rounds use a real
ZeroMQ stub service. Every wait is bounded with ``fail_after``; no test sleeps to let
things settle (``wait_all_tasks_blocked`` says when every task waits).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest

from backtest_queue import (
    BacktestRequest,
    DuplicateRequest,
    Strategy,
    UsageError,
    errors,
    open_dispatcher,
)
from backtest_queue.outcome import Outcome
from backtest_queue.store import SqliteStore
from backtest_queue.testing import MemoryNetwork, echo_result

from stubs import echo, free_tcp_endpoint, stub_service

pytestmark = pytest.mark.anyio
EP = "tcp://fake:5580"


def request(i: int | str, *, content: int | None = None) -> BacktestRequest:
    """A request with id ``req-<i>``; ``content`` picks its parameters (default: ``i``)."""
    n = content if content is not None else (i if isinstance(i, int) else 0)
    strategy = Strategy(name=f"s{n}", kind="sma_cross", params={"fast": 5, "slow": 20 + n})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=f"req-{i}")


def stored_ids(db: Path) -> tuple[list[str], list[str]]:
    """What the next dispatcher on ``db`` would restore: (requests to send, outcomes)."""
    with SqliteStore(db) as store:
        restored = store.restore()
    return (
        [r.request_id for r in restored.requests],
        [r.request_id for r, _ in restored.outcomes],
    )


class WriteLock:
    """The store's write lock, held by another connection (``BEGIN IMMEDIATE``) from
    creation until :meth:`release` (idempotent) or the end of the ``with`` block."""

    def __init__(self, db: Path) -> None:
        self._other = sqlite3.connect(db, isolation_level=None, timeout=0)
        self._other.execute("BEGIN IMMEDIATE")
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._other.execute("ROLLBACK")
        self._other.close()

    def __enter__(self) -> WriteLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def signal_when_called(obj: Any, name: str, *, hold: threading.Event | None = None) -> anyio.Event:
    """Wrap ``obj.name`` so that the returned event is set when a worker thread starts it;
    with ``hold``, that call then waits for ``hold`` before doing its work."""
    entered = anyio.Event()
    original: Callable[..., Any] = getattr(obj, name)

    loop_thread = threading.get_ident()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == loop_thread:  # (the store's last writes, at exit)
            return original(*args, **kwargs)
        anyio.from_thread.run_sync(entered.set)
        if hold is not None:
            assert hold.wait(10), "the test never released the held call"
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)
    return entered


async def drain(d: Any) -> list[Outcome]:
    """Every outcome left on the stream after the block (which ended it)."""
    with anyio.fail_after(5), d.outcomes:
        return [o async for o in d.outcomes]


# -- cancellation leaves nothing half done (with a store) ------------------------------


async def test_submit_cancelled_during_its_cache_lookup_accepted_nothing(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    endpoint = free_tcp_endpoint()
    release = threading.Event()
    outcome_of_submit: list[object] = []
    async with stub_service(endpoint, echo) as stub, open_dispatcher([endpoint], store=db) as d:
        with anyio.fail_after(10):
            await d.wait_connected()  # the PONG is in: submit looks the cache up
        assert d._writer is not None
        entered = signal_when_called(d._writer.store, "cached_results", hold=release)

        async def submit_in(scope: anyio.CancelScope) -> None:
            with scope:
                outcome_of_submit.append(await d.submit(request(1)))

        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit_in, scope)
            with anyio.fail_after(10):
                await entered.wait()
            scope.cancel()  # while the lookup runs in its thread
            release.set()
        assert scope.cancelled_caught
        assert outcome_of_submit == []
        assert d.queue.state_of("req-1") is None
        assert d.stats().queue.queued == d.stats().queue.pending == 0
        with pytest.raises(UsageError):
            await d.wait("req-1")
        assert stub.ids == []
        # Nothing of it lingers: the same request can be submitted again, and runs once.
        with anyio.fail_after(10):
            await d.submit(request(1))
            assert (await d.wait("req-1")).ok
    assert await drain(d) == []
    assert stub.ids == ["req-1"]
    assert stored_ids(db) == ([], [])
    async with open_dispatcher([EP], network=MemoryNetwork(), store=db) as again:
        assert "req-1" not in again.restored_ids


async def test_submit_cancelled_during_its_commit_accepted_nothing(tmp_path: Path) -> None:
    """The commit waits for a lock another connection holds; the submit is cancelled
    while its transaction waits, then the lock is released: the transaction commits,
    and the submit, which raised, must have taken its request back out."""
    db = tmp_path / "q.db"
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    outcome_of_submit: list[object] = []
    # cache=False: MemoryNetwork's fake services do not answer the PING the cache sends
    async with open_dispatcher([EP], network=net, store=db, cache=False) as d:
        with anyio.fail_after(5):
            await d.wait_connected()
        assert d._writer is not None
        in_transaction = signal_when_called(d._writer.store, "apply")
        scope = anyio.CancelScope()

        async def submit_in() -> None:
            with scope:
                outcome_of_submit.append(await d.submit(request(1)))

        with WriteLock(db) as lock:
            async with anyio.create_task_group() as tg:
                tg.start_soon(submit_in)
                with anyio.fail_after(10):
                    await in_transaction.wait()  # its transaction waits for the lock
                scope.cancel()
                lock.release()  # now the transaction commits: the submit must undo it
        assert scope.cancelled_caught
        assert outcome_of_submit == []
        assert d.queue.state_of("req-1") is None
        assert [r.request_id for r in net.received] == []
        with pytest.raises(UsageError):
            await d.wait("req-1")
    assert "req-1" not in [o.request_id for o in await drain(d)]
    assert stored_ids(db) == ([], [])
    async with open_dispatcher([EP], network=MemoryNetwork(), store=db) as again:
        assert "req-1" not in again.restored_ids


async def test_a_submit_withdrawn_before_its_transaction_leaves_nothing_and_the_other_returns(
    tmp_path: Path,
) -> None:
    """Two submits wait for the same locked store: A's transaction is running, B's writes
    wait behind it. B is cancelled: nothing of B is stored. A returns once the lock is
    released: its request is both queued and stored."""
    db = tmp_path / "q.db"
    net = MemoryNetwork()  # no service: what is accepted stays queued
    states: dict[str, object] = {}
    async with open_dispatcher([EP], network=net, store=db) as d:
        assert d._writer is not None
        in_transaction = signal_when_called(d._writer.store, "apply")
        scope_b = anyio.CancelScope()

        async def submit_a() -> None:
            states["a"] = await d.submit(request("a"))

        b_done = anyio.Event()

        async def submit_b() -> None:
            try:
                with scope_b:
                    states["b"] = await d.submit(request("b"))
            finally:
                b_done.set()

        with WriteLock(db) as lock:
            async with anyio.create_task_group() as tg:
                tg.start_soon(submit_a)
                with anyio.fail_after(10):
                    await in_transaction.wait()
                tg.start_soon(submit_b)
                with anyio.fail_after(10):
                    await anyio.wait_all_tasks_blocked()  # B's writes wait behind A's
                scope_b.cancel()
                with anyio.fail_after(10):
                    await b_done.wait()  # B ends while the lock is still held
                lock.release()
        assert scope_b.cancelled_caught
        assert "b" not in states
        assert "a" in states
        assert d.queue.state_of("req-a") == "queued"
        assert d.queue.state_of("req-b") is None
        assert stored_ids_while_open(d) == ["req-a"]
    assert stored_ids(db) == (["req-a"], [])


def stored_ids_while_open(d: Any) -> list[str]:
    """Request ids the dispatcher's own store holds right now (read with a new connection)."""
    assert d._writer is not None
    other = sqlite3.connect(d._writer.store.path)
    try:
        return [rid for (rid,) in other.execute("SELECT request_id FROM requests ORDER BY seq")]
    finally:
        other.close()


async def test_submit_many_cancelled_while_waiting_for_room_leaves_nothing(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    net = MemoryNetwork()  # no service: the queue does not drain
    # capacity 2 with one queued: submit_many([a, b]) fits the capacity but must wait.
    async with open_dispatcher([EP], network=net, store=db, capacity=2, on_full="wait") as d:
        await d.submit(request("x"))
        scope = anyio.CancelScope()
        returned: list[object] = []

        async def submit_two() -> None:
            with scope:
                returned.append(await d.submit_many([request("a"), request("b")]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit_two)
            with anyio.fail_after(10):
                await anyio.wait_all_tasks_blocked()  # waiting for room
            assert returned == []
            scope.cancel()
        assert scope.cancelled_caught
        assert returned == []
        assert d.queue.state_of("req-a") is None
        assert d.queue.state_of("req-b") is None
        assert d.stats().queue.queued == 1
        assert stored_ids_while_open(d) == ["req-x"]
        # the room it waited for is not held: one more request fits
        await d.submit(request("c"))
    assert sorted(o.request_id for o in await drain(d)) == ["req-c", "req-x"]  # shutdown
    assert stored_ids(db) == (["req-x", "req-c"], [])


async def test_a_returned_submit_is_queued_and_stored(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    async with open_dispatcher([EP], network=MemoryNetwork(), store=db, capacity=3) as d:
        states = await d.submit_many([request(i) for i in range(3)])
        assert [s.state for s in states] == ["queued"] * 3
        assert [d.queue.state_of(f"req-{i}") for i in range(3)] == ["queued"] * 3
        assert stored_ids_while_open(d) == ["req-0", "req-1", "req-2"]


# -- a locked store ------------------------------------------------------------------


async def test_a_locked_store_raises_store_busy_and_the_dispatcher_lives_on(
    tmp_path: Path,
) -> None:
    db = tmp_path / "q.db"
    net = MemoryNetwork()
    # 'late' is never answered: it times out (an outcome decided) while the store is locked
    net.bind(EP, lambda r: [] if r.request_id == "req-late" else echo_result(r))
    async with open_dispatcher([EP], network=net, store=db, store_timeout=0.5,
                               result_timeout=0.5, max_attempts=1, cache=False) as d:  # fmt: skip
        with anyio.fail_after(5):
            await d.wait_connected()
        await d.submit_many([request(0), request("late")])
        with WriteLock(db):
            with anyio.fail_after(10):
                assert (await d.wait("req-0")).ok  # its 'ack' is written while locked
                await d.wait_idle()  # 'late' timed out: its 'outcome' too
            with anyio.fail_after(20), pytest.raises(errors.StoreBusy):
                await d.submit(request(1))
            assert d.queue.state_of("req-1") is None  # accepted nothing
            stats = d.stats()
            assert stats.store_busy
            assert stats.store_busy_waits >= 1
            assert not stats.closed
        # released: submits work again, and what waited is committed
        with anyio.fail_after(10):
            await d.submit(request(2))
            assert (await d.wait("req-2")).ok
        assert not d.stats().store_busy
    unread = await drain(d)
    assert [(o.request_id, o.reason) for o in unread if o.request_id == "req-late"] == [
        ("req-late", "timeout")
    ]
    # req-0's ack, written while locked, was committed (it is not re-delivered); so was
    # late's outcome (kept for the next run: it was read only after the store closed).
    assert stored_ids(db) == ([], ["req-late"])


async def test_store_busy_comes_after_store_timeout(tmp_path: Path) -> None:
    """``store_timeout`` bounds how long ``submit`` waits for a locked store (not the
    SQLite busy timeout of the store's connection)."""
    db = tmp_path / "q.db"
    async with open_dispatcher([EP], network=MemoryNetwork(), store=db, store_timeout=0.5) as d:
        with WriteLock(db):
            start = anyio.current_time()
            with anyio.fail_after(20), pytest.raises(errors.StoreBusy):
                await d.submit(request(1))
            waited = anyio.current_time() - start
        assert d.queue.state_of("req-1") is None
    assert 0.5 <= waited < 2.5, f"submit raised StoreBusy after {waited:.2f} s"


async def test_a_clean_close_neither_redelivers_nor_forgets_the_result(tmp_path: Path) -> None:
    """Open, submit one request to a live service, read its outcome, leave normally;
    reopen: nothing restored, and the result is cached. Several rounds (it was flaky)."""
    db = tmp_path / "q.db"
    endpoint = free_tcp_endpoint()
    async with stub_service(endpoint, echo) as stub:
        for round_ in range(6):
            async with open_dispatcher([endpoint], store=db) as d:
                assert d.restored_ids == frozenset(), f"round {round_}"
                with anyio.fail_after(10):
                    await d.wait_connected()
                    if round_:  # the previous round's content, under a new id: cached
                        state = await d.submit(request(f"again-{round_}", content=round_ - 1))
                        assert state.state == "cached", f"round {round_}"
                        assert (await d.wait(state.request_id)).detail == "cached result"
                    state = await d.submit(request(round_))
                    assert state.state == "sent"
                    assert (await d.wait(state.request_id)).ok
            assert await drain(d) == []
        assert stub.ids == [f"req-{i}" for i in range(6)]  # each run once, none re-sent
    assert stored_ids(db) == ([], [])


# -- wait: an outcome is consumed only when a caller received it ----------------------


async def test_a_cancelled_wait_on_an_arrived_outcome_does_not_consume_it() -> None:
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    async with open_dispatcher([EP], network=net) as d:
        with anyio.fail_after(5):
            await d.wait_connected()
            await d.submit(request(1))
            await d.wait_idle()  # its outcome has arrived, unread
        with anyio.CancelScope() as scope:
            scope.cancel()
            await d.wait("req-1")
        assert scope.cancelled_caught
        with anyio.fail_after(5):
            outcome = await d.wait("req-1")
        assert outcome.request_id == "req-1"
        assert outcome.ok
        assert d.stats().unread_outcomes == 0
    assert await drain(d) == []


async def test_a_cancelled_wait_before_the_outcome_does_not_consume_it() -> None:
    net = MemoryNetwork()  # no service yet
    async with open_dispatcher([EP], network=net) as d:
        await d.submit(request(1))
        with anyio.move_on_after(0.05):
            await d.wait("req-1")
        net.bind(EP, echo_result)
        with anyio.fail_after(5):
            outcome = await d.wait("req-1")
        assert outcome.ok


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_native_task_cancel_after_hand_over_does_not_lose_the_outcome() -> None:
    """asyncio: ``Task.cancel()`` (as ``asyncio.timeout`` does) landing after the outcome
    was handed to the waiting task, before it ran: the outcome is not lost."""
    import asyncio

    net = MemoryNetwork()  # no service yet
    async with open_dispatcher([EP], network=net) as d:
        await d.submit(request(1))
        waiter = asyncio.ensure_future(d.wait("req-1"))
        with anyio.fail_after(5):
            await anyio.wait_all_tasks_blocked()  # it waits for the outcome
        book = d._book
        deliver = book.deliver

        def deliver_then_cancel(outcome: Outcome) -> None:
            deliver(outcome)  # handed to the waiter, which has not run yet
            waiter.cancel()

        book.deliver = deliver_then_cancel  # type: ignore[method-assign]
        net.bind(EP, echo_result)
        with anyio.fail_after(5):
            with pytest.raises(asyncio.CancelledError):
                await waiter
            outcome = await d.wait("req-1")  # still there, for a later wait
        assert outcome.request_id == "req-1"
        assert outcome.ok
        assert d.stats().outcomes == 1


# -- duplicates ------------------------------------------------------------------------


def _reuse_at_once(how: str, d: Any, reused: BacktestRequest) -> None:
    """Submit ``reused`` with ``how``, run to its end without letting any other task run
    (an ``async`` call is driven by hand through its checkpoint): what a task scheduled
    between an outcome's hand-over and its waiter's resumption would do."""
    if how == "submit_nowait":
        d.submit_nowait(reused)
        return
    call = d.submit(reused) if how == "submit" else d.submit_many([reused])
    try:
        while True:
            call.send(None)  # the checkpoint's yield; nothing else runs in between
    except StopIteration:
        return
    finally:
        call.close()


async def test_an_id_handed_to_a_waiter_that_has_not_resumed_cannot_be_reused() -> None:
    """From the hand-over of an outcome to a task in ``wait`` until that task resumes,
    the outcome is not received yet: a submit reusing its id is refused (found in review:
    it was accepted, and on asyncio a cancel of the waiter then lost an outcome)."""
    await _reuse_while_handed_over("submit_nowait")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("how", ["submit", "submit_many"])
async def test_an_id_handed_to_a_waiter_cannot_be_reused_by_async_submits(how: str) -> None:
    """The same for ``submit`` (its own inline check) and ``submit_many``, driven by hand
    through their checkpoint: asyncio only (a trio checkpoint needs trio's scheduler)."""
    await _reuse_while_handed_over(how)


async def _reuse_while_handed_over(how: str) -> None:
    net = MemoryNetwork()  # no service yet: the wait starts before the outcome comes
    got: list[Outcome] = []
    async with open_dispatcher([EP], network=net) as d:
        first = request(1)
        await d.submit(first)
        book = d._book
        deliver = book.deliver
        refused: list[BaseException] = []

        def deliver_then_reuse(outcome: Outcome) -> None:
            deliver(outcome)
            if outcome.request_id == first.request_id:
                book.deliver = deliver  # type: ignore[method-assign]
                with pytest.raises(DuplicateRequest) as caught:
                    _reuse_at_once(how, d, request(1, content=2))
                refused.append(caught.value)

        book.deliver = deliver_then_reuse  # type: ignore[method-assign]

        async def wait() -> None:
            got.append(await d.wait(first.request_id))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()  # it waits for the outcome
                net.bind(EP, echo_result)
            await d.wait_idle()
        assert [o.request for o in got] == [first]
        assert len(refused) == 1
        assert [r.request_id for r in net.received] == [first.request_id]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_native_cancel_after_hand_over_and_a_reused_id_lose_no_outcome() -> None:
    """asyncio: the outcome is handed to a waiter, another task reuses the id, then
    ``Task.cancel()`` lands before the waiter resumes (so it puts the outcome back).
    Every accepted request must still get its own outcome."""
    import asyncio

    net = MemoryNetwork()  # no service yet: the wait starts before the outcome comes
    async with open_dispatcher([EP], network=net) as d:
        first = request(1)
        await d.submit(first)
        book = d._book
        deliver = book.deliver
        accepted = [first]

        def deliver_reuse_cancel(outcome: Outcome) -> None:
            deliver(outcome)
            if outcome.request_id == first.request_id:
                book.deliver = deliver  # type: ignore[method-assign]
                with contextlib.suppress(DuplicateRequest):
                    d.submit_nowait(request(1, content=2))
                    accepted.append(request(1, content=2))
                waiter.cancel()

        book.deliver = deliver_reuse_cancel  # type: ignore[method-assign]
        waiter = asyncio.ensure_future(d.wait(first.request_id))
        with anyio.fail_after(5):
            await anyio.wait_all_tasks_blocked()  # it waits for the outcome
            net.bind(EP, echo_result)
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await d.wait_idle()
    got = await drain(d)
    assert sorted(o.request.strategy.name for o in got) == sorted(r.strategy.name for r in accepted)


async def test_two_waiting_submit_many_sharing_an_id_the_loser_accepts_nothing() -> None:
    net = MemoryNetwork()  # no service yet: the queue fills
    refused: dict[str, BaseException] = {}
    returned: dict[str, object] = {}
    async with open_dispatcher([EP], network=net, capacity=2, on_full="wait") as d:
        await d.submit(request("x"))

        async def submit_many(name: str, other: str) -> None:
            try:
                returned[name] = await d.submit_many([request(other), request("shared")])
            except DuplicateRequest as exc:
                refused[name] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit_many, "first", "a")
            tg.start_soon(submit_many, "second", "b")
            with anyio.fail_after(5):
                await anyio.wait_all_tasks_blocked()
            net.bind(EP, echo_result)  # room: x is sent
        with anyio.fail_after(5):
            await d.wait_idle()
    assert len(refused) == 1, (refused, returned)
    assert len(returned) == 1, (refused, returned)
    loser_id = "req-a" if "first" in refused else "req-b"
    winner_id = "req-b" if "first" in refused else "req-a"
    sent = [r.request_id for r in net.received]
    assert loser_id not in sent
    assert sorted(sent) == sorted(["req-x", winner_id, "req-shared"])
    assert sorted(o.request_id for o in await drain(d)) == sorted(sent)
