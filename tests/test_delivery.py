"""The outcome book and stream on their own (no dispatcher, no network), both backends.

Every delivered outcome is received exactly once, oldest first; a reader blocked in
``receive`` wakes for each outcome delivered while it waits, however many were
delivered and read while nobody waited (the book signals arrivals only to waiting
readers); ``on_received`` is optional; and :class:`Outcome` keeps its dataclass
behaviour (equality, hashing, ``repr``, immutability, ``replace``, pickling).
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from dataclasses import dataclass
from typing import Any, Literal, cast

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtest_queue import BacktestRequest, Metrics, Strategy
from backtest_queue.delivery import OutcomeBook, OutcomeStream
from backtest_queue.outcome import (
    FailureReason,
    Outcome,
    SubmitState,
    result_outcome,
    submit_state,
)

pytestmark = pytest.mark.anyio


def request(i: int) -> BacktestRequest:
    strategy = Strategy(name=f"s{i}", kind="sma_cross", params={"fast": 5, "slow": 20 + i})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=f"req-{i}")


def outcome(i: int) -> Outcome:
    return Outcome(request(i), Metrics(strategy_name=f"s{i}", trades=i), None, "", 1)


def book_and_stream(bound: float = math.inf) -> tuple[OutcomeBook, OutcomeStream, list[str]]:
    received: list[str] = []
    book = OutcomeBook(bound, lambda o: received.append(o.request_id), on_room=lambda: None)
    return book, OutcomeStream(book), received


# A program for the book: deliver n outcomes with nobody waiting, read what is there
# without waiting, or block a reader in receive() and deliver one while it waits.
_step = st.one_of(
    st.tuples(st.just("deliver"), st.integers(1, 4)),
    st.tuples(st.just("drain"), st.just(0)),
    st.tuples(st.just("blocked_reader"), st.integers(1, 3)),
)


@given(program=st.lists(_step, max_size=25))
async def test_every_outcome_is_received_once_in_order_and_waiting_readers_wake(
    program: list[tuple[str, int]],
) -> None:
    book, stream, received = book_and_stream()
    delivered: list[str] = []
    taken: list[str] = []
    n = 0

    def deliver() -> None:
        nonlocal n
        book.deliver(outcome(n))
        delivered.append(f"req-{n}")
        n += 1

    def drain() -> None:
        while True:
            try:
                taken.append(stream.receive_nowait().request_id)
            except anyio.WouldBlock:
                return

    async def read_one(got: list[str]) -> None:
        got.append((await stream.receive()).request_id)

    with anyio.fail_after(10):  # a reader that is never woken hangs here
        for op, k in program:
            if op == "deliver":
                for _ in range(k):
                    deliver()
            elif op == "drain":
                drain()
            else:
                drain()  # receive() blocks only when nothing is unread
                got: list[str] = []
                async with anyio.create_task_group() as tg:
                    for _ in range(k):
                        tg.start_soon(read_one, got)
                    while stream.statistics().tasks_waiting_receive < k:
                        await anyio.lowlevel.checkpoint()
                    for _ in range(k):
                        deliver()
                assert sorted(got) == sorted(delivered[-k:])
                taken.extend(delivered[-k:])  # (the readers may finish in any order)
                assert stream.statistics().tasks_waiting_receive == 0
        drain()
    assert taken == delivered
    assert received == delivered  # on_received: once per outcome a reader took
    assert book.delivered == len(delivered)
    assert stream.statistics().current_buffer_used == 0


async def test_a_reader_blocked_after_outcomes_came_and_went_unwatched_still_wakes() -> None:
    """Outcomes delivered while nobody waited do not signal; the next waiting reader is
    still woken by the next delivery (and by the end of the book)."""
    book, stream, _ = book_and_stream()
    for i in range(3):
        book.deliver(outcome(i))
    assert [stream.receive_nowait().request_id for _ in range(3)] == ["req-0", "req-1", "req-2"]
    got: list[Outcome] = []

    async def read() -> None:
        got.append(await stream.receive())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            while stream.statistics().tasks_waiting_receive < 1:
                await anyio.lowlevel.checkpoint()
            book.deliver(outcome(3))
        assert [o.request_id for o in got] == ["req-3"]
        ended = anyio.Event()

        async def read_to_end() -> None:
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
            ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_to_end)
            while stream.statistics().tasks_waiting_receive < 1:
                await anyio.lowlevel.checkpoint()
            book.end()
        assert ended.is_set()


async def test_without_on_received_outcomes_are_still_received_and_claimed() -> None:
    """``on_received=None`` (a dispatcher without a store): the stream, ``claim`` and
    ``wait_for`` work the same."""
    book = OutcomeBook(math.inf, None, on_room=lambda: None)
    stream = OutcomeStream(book)
    book.deliver(outcome(0))
    book.deliver(outcome(1))
    assert stream.receive_nowait().request_id == "req-0"
    claimed = book.claim("req-1")
    assert claimed is not None
    assert claimed.request_id == "req-1"
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                assert (await book.wait_for("req-2")).request_id == "req-2"

            tg.start_soon(wait)
            while not book.is_awaited("req-2"):
                await anyio.lowlevel.checkpoint()
            book.deliver(outcome(2))
    with pytest.raises(anyio.WouldBlock):
        stream.receive_nowait()


async def test_a_full_book_is_held_until_half_is_read() -> None:
    """Backpressure still follows the low-water mark when outcomes are read one by one."""
    rooms: list[int] = []
    book = OutcomeBook(4, lambda o: None, on_room=lambda: rooms.append(book.unread))
    stream = OutcomeStream(book)
    for i in range(4):
        book.deliver(outcome(i))
    assert book.full
    assert book.room() == 0
    stream.receive_nowait()
    assert book.full
    assert rooms == []
    stream.receive_nowait()
    assert not book.full
    assert rooms == [2]


# -- Outcome: a frozen dataclass, however it is built ------------------------------------


@dataclass(frozen=True, slots=True)
class _Reference:
    """What ``Outcome`` is declared as, with dataclass's own generated ``__init__``."""

    request: BacktestRequest
    result: Metrics | None = None
    reason: FailureReason | None = None
    detail: str = ""
    attempts: int = 0


_reasons = st.sampled_from([None, "timeout", "disconnected", "service_error", "shutdown"])


@pytest.mark.parametrize("anyio_backend", ["trio"])  # no I/O: one backend is enough
@given(
    i=st.integers(0, 3),
    trades=st.none() | st.integers(0, 3),
    reason=_reasons,
    detail=st.text(max_size=5),
    attempts=st.integers(0, 3),
    j=st.integers(0, 3),
    reason2=_reasons,
)
async def test_outcome_behaves_as_its_dataclass_declaration(
    i: int,
    trades: int | None,
    reason: FailureReason | None,
    detail: str,
    attempts: int,
    j: int,
    reason2: FailureReason | None,
) -> None:
    result = None if trades is None else Metrics(strategy_name=f"s{i}", trades=trades)
    args = (request(i), result, reason, detail, attempts)
    o, ref = Outcome(*args), _Reference(*args)
    assert Outcome(request(i), result=result, reason=reason, detail=detail, attempts=attempts) == o
    assert repr(o) == repr(ref).replace("_Reference", "Outcome")
    # (A request holds a dict, so an Outcome of one is unhashable, as its dataclass is.)
    with pytest.raises(TypeError):
        hash(o)
    hashable = (cast(Any, f"r{i}"), None, reason, detail, attempts)
    assert hash(Outcome(*hashable)) == hash(_Reference(*hashable))
    assert dataclasses.astuple(o) == dataclasses.astuple(ref)
    other = Outcome(request(j), result, reason2, detail, attempts)
    assert (o == other) == (ref == _Reference(request(j), result, reason2, detail, attempts))
    assert pickle.loads(pickle.dumps(o)) == o
    assert dataclasses.replace(o, attempts=attempts + 1).attempts == attempts + 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.detail = "changed"  # type: ignore[misc]
    assert o.request_id == f"req-{i}"
    assert o.ok == (result is not None)
    assert Outcome(request(i)) == Outcome(request(i), None, None, "", 0)


@pytest.mark.parametrize("anyio_backend", ["trio"])  # no I/O: one backend is enough
@given(i=st.integers(0, 3), trades=st.integers(0, 3), attempts=st.integers(0, 3))
async def test_result_outcome_is_the_outcome_its_constructor_builds(
    i: int, trades: int, attempts: int
) -> None:
    result = Metrics(strategy_name=f"s{i}", trades=trades)
    o, ref = (
        result_outcome(request(i), result, attempts),
        Outcome(request(i), result, None, "", attempts),
    )
    assert type(o) is Outcome
    assert o == ref
    assert repr(o) == repr(ref)
    assert dataclasses.astuple(o) == dataclasses.astuple(ref)
    assert pickle.loads(pickle.dumps(o)) == ref
    assert dataclasses.replace(o, attempts=attempts + 1) == dataclasses.replace(
        ref, attempts=attempts + 1
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.detail = "changed"  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class _StateReference:
    """What ``SubmitState`` is declared as, with dataclass's own generated ``__init__``."""

    request_id: str
    state: Literal["sent", "queued", "cached"]
    reason: Literal["not_connected", "pending", "rate", "backlog"] | None
    queued: int
    pending: int


@pytest.mark.parametrize("anyio_backend", ["trio"])  # no I/O: one backend is enough
@given(
    rid=st.text(max_size=5),
    state=st.sampled_from(["sent", "queued", "cached"]),
    reason=st.sampled_from([None, "not_connected", "pending", "rate", "backlog"]),
    queued=st.integers(0, 3),
    pending=st.integers(0, 3),
    other_queued=st.integers(0, 3),
)
async def test_submit_state_behaves_as_its_dataclass_declaration(
    rid: str,
    state: Literal["sent", "queued", "cached"],
    reason: Literal["not_connected", "pending", "rate", "backlog"] | None,
    queued: int,
    pending: int,
    other_queued: int,
) -> None:
    args = (rid, state, reason, queued, pending)
    s, ref = SubmitState(*args), _StateReference(*args)
    keywords = SubmitState(
        request_id=rid, state=state, reason=reason, queued=queued, pending=pending
    )
    assert keywords == s
    assert repr(s) == repr(ref).replace("_StateReference", "SubmitState")
    assert hash(s) == hash(ref)
    assert dataclasses.astuple(s) == dataclasses.astuple(ref)
    assert dataclasses.asdict(s) == dataclasses.asdict(ref)
    other = SubmitState(rid, state, reason, other_queued, pending)
    assert (s == other) == (ref == _StateReference(rid, state, reason, other_queued, pending))
    assert pickle.loads(pickle.dumps(s)) == s
    assert dataclasses.replace(s, queued=queued + 1).queued == queued + 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.state = "queued"  # type: ignore[misc]
    with pytest.raises(TypeError):
        SubmitState(rid, state, reason, queued)  # type: ignore[call-arg]
    built = submit_state(*args)
    assert type(built) is SubmitState
    assert built == s
    assert repr(built) == repr(s)
    assert hash(built) == hash(s)
    assert dataclasses.astuple(built) == dataclasses.astuple(s)
    assert pickle.loads(pickle.dumps(built)) == s
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.queued = queued + 1  # type: ignore[misc]
