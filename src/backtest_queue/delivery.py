"""Outcome bookkeeping: every outcome is held until a caller actually has it.

An outcome leaves the dispatcher in exactly one of two ways: a task that ``wait``\\ s for
that request returns it, or a reader receives it from :attr:`Dispatcher.outcomes`
(an :class:`OutcomeStream`). Until then it is *unread* and stays in :class:`OutcomeBook`:
a cancelled ``wait`` or ``receive`` never consumes one, and a ``wait`` for an outcome that
is still unread takes it out of the stream, so nothing is delivered twice.

Backpressure: the book is *full* when ``outcome_buffer`` outcomes are unread. The
dispatcher's receivers then stop reading replies and its flusher stops handing requests
over, so pending requests stay where they are, the send queue fills and ``submit`` waits
(or raises :class:`~backtest_queue.QueueFull`): memory stays bounded by
``capacity + max_pending + outcome_buffer`` requests and outcomes, plus the ZeroMQ
high-water marks. Failures the dispatcher decides itself (deadlines, disconnects,
``shutdown``) are still recorded when the book is full: they are bounded by the requests
already accepted.

Reading in bursts: while outcomes are unread and nothing waits on a reply, the receivers
may leave replies in the socket for a moment (:mod:`backtest_queue.receiving`). When the
caller takes the last unread outcome the book has them read in that caller's turn
(``on_drained``), and wakes the receivers (:meth:`OutcomeBook.wait_drained`) if none
was there, when a task starts to ``wait`` and when the book ends.

Stream ownership follows anyio: the dispatcher ends the stream (readers see
``EndOfStream`` after the last outcome, ``shutdown`` ones included) and never closes the
reader's side; outcomes left unread at exit stay readable after the block.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import anyio
import anyio.lowlevel
from anyio.abc import ObjectReceiveStream

from .backend import backend_checkpoint, backend_checkpoint_if_cancelled
from .errors import UsageError
from .outcome import Outcome

__all__ = ["OutcomeBook", "OutcomeStream", "OutcomeStreamStatistics"]

log = logging.getLogger("backtest_queue")

_WARN_EVERY = 60.0  # seconds between warnings that waiters depend on the stream


@dataclass(frozen=True, slots=True)
class OutcomeStreamStatistics:
    """A snapshot of an :class:`OutcomeStream`.

    Attributes:
        current_buffer_used: outcomes delivered and not yet read.
        max_buffer_size: ``outcome_buffer``: unread outcomes at which the dispatcher
            stops reading replies (backpressure); ``math.inf`` for no bound.
        tasks_waiting_receive: tasks blocked in :meth:`OutcomeStream.receive`.
        ended: whether the dispatcher has closed (no outcome will be added).
    """

    current_buffer_used: int
    max_buffer_size: float
    tasks_waiting_receive: int
    ended: bool


class _Waiter:
    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.outcome: Outcome | None = None


class OutcomeBook:
    """Where outcomes wait until a caller has them. Used by the dispatcher only.

    Args:
        bound: unread outcomes at which :attr:`full` becomes true (``outcome_buffer``).
        on_received: called once for each outcome a caller received (``wait`` returned
            it or the stream yielded it), e.g. to drop it from a durable store; ``None``
            when nothing needs to know.
        on_room: called when the book stops being full (to wake the flusher).
        on_drained: called when a caller takes the last unread outcome while receivers
            leave replies unread (:meth:`wait_drained`): to have them read (in that
            caller's turn, or by waking the receivers with :meth:`read_soon`); ``None``:
            the receivers are woken.
    """

    def __init__(
        self,
        bound: float,
        on_received: Callable[[Outcome], None] | None,
        on_room: Callable[[], None],
        on_drained: Callable[[], object] | None = None,
    ) -> None:
        self.bound = bound
        self._on_received = on_received
        self._on_room = on_room
        self._on_drained = on_drained
        self._unread: OrderedDict[str, Outcome] = OrderedDict()
        # A waiter stays here until its wait_for() returns or raises, also after its
        # outcome was handed over: until then the id is still in use (see holds()).
        self._waiters: dict[str, _Waiter] = {}
        # Set when an outcome is added while a reader waits for one, or the book ends.
        # Only a task in wait_arrival() waits on it (and it found nothing unread, with no
        # checkpoint in between), so it is set only when _readers says one is there, and
        # once: _signalled mirrors is_set() without a call per outcome.
        self._arrived = anyio.Event()
        self._signalled = False
        self._room = anyio.Event()  # set when the book stops being full
        # Set (and dropped) when no outcome is left unread, a wait starts or the book
        # ends: receivers that leave replies unread meanwhile wait on it (wait_drained).
        # None: nobody waits on it, so taking an outcome costs one test.
        self._drained: anyio.Event | None = None
        self._readers = 0
        self._held = False  # full: held until unread falls to the low-water mark
        self._warned_at = -math.inf
        self._low = math.floor(bound / 2) if math.isfinite(bound) else 0
        self.ended = False  # the dispatcher closed: nothing more is added
        self.reader_closed = False
        self.delivered = 0
        self.dropped = 0

    @property
    def full(self) -> bool:
        """Whether the dispatcher is held back: ``bound`` outcomes became unread, and
        fewer than half of ``bound`` have been read since (hysteresis, so that reading
        one outcome does not wake the receivers and the flusher for one more)."""
        return self._held

    @property
    def unread(self) -> int:
        return len(self._unread)

    def room(self) -> int | float:
        """How many more outcomes fit before the book is full (at least 0)."""
        return 0 if self._held else max(0, self.bound - len(self._unread))

    def is_awaited(self, request_id: str) -> bool:
        return request_id in self._waiters

    @property
    def deferring(self) -> bool:
        """Whether a receiver may be leaving replies unread (:meth:`wait_drained`)."""
        return self._drained is not None

    @property
    def awaited(self) -> bool:
        """Whether a task waits in :meth:`wait_for` (for any request)."""
        return bool(self._waiters)

    def holds(self, request_id: str) -> bool:
        """Whether an outcome of this id is unread, or handed to a ``wait`` that has not
        returned yet (that wait may still put it back: a reused id would overwrite it)."""
        return request_id in self._unread or request_id in self._waiters

    # -- the dispatcher's side ---------------------------------------------------

    def deliver(self, outcome: Outcome) -> None:
        """Hand an outcome to the task waiting for it, or keep it for the stream."""
        self.delivered += 1
        if self._waiters:
            waiter = self._waiters.get(outcome.request.request_id)
            if waiter is not None and waiter.outcome is None:
                waiter.outcome = outcome  # it leaves _waiters when wait_for() resumes
                waiter.event.set()
                return
        self._keep(outcome)

    def _keep(self, outcome: Outcome) -> None:
        if self.reader_closed:
            self.dropped += 1
            log.debug("outcome for %s not kept: the reader closed the outcome stream",
                      outcome.request_id)  # fmt: skip
            return
        unread = self._unread
        unread[outcome.request.request_id] = outcome
        if len(unread) >= self.bound and not self._held:
            self._held = True
            if self._waiters:
                self.warn_held()
        if self._readers and not self._signalled:
            self._signal_arrival()

    def _signal_arrival(self) -> None:
        self._signalled = True
        self._arrived.set()

    def warn_held(self) -> None:
        """Say (at most once a minute) that tasks in ``wait`` depend on the stream being
        read: a silent hang is the one thing backpressure must not look like."""
        now = anyio.current_time()
        if now - self._warned_at < _WARN_EVERY:
            return
        self._warned_at = now
        log.warning(
            "%d outcomes are unread (outcome_buffer=%g): the dispatcher reads no replies "
            "and sends no requests until half of them are read from `outcomes`; %d task(s) "
            "in wait() may not return until then",
            len(self._unread), self.bound, len(self._waiters),
        )  # fmt: skip

    def end(self) -> None:
        """No more outcomes will come: readers get ``EndOfStream`` after the unread ones."""
        self.ended = True
        self._signal_arrival()
        self._room.set()
        self.read_soon()

    async def wait_drained(self) -> None:
        """Wait until no outcome is unread, or :meth:`read_soon` (returns at once if
        none is unread). For receivers that leave replies unread while the caller has
        outcomes to go on with; bound it with a timeout."""
        if not self._unread:
            return
        if self._drained is None:
            self._drained = anyio.Event()
        await self._drained.wait()

    def read_soon(self) -> None:
        """Wake the tasks in :meth:`wait_drained`: something needs the replies read now."""
        drained = self._drained
        if drained is not None:
            self._drained = None
            drained.set()

    async def wait_for_room(self) -> None:
        """Wait until the book is not full (returns at once if it is not)."""
        while self.full and not self.ended:
            if self._room.is_set():
                self._room = anyio.Event()
            await self._room.wait()

    def _taken(self) -> None:
        if not self._unread and self._drained is not None:  # the caller caught up
            if self._on_drained is not None:
                self._on_drained()  # reads them in this turn, or wakes the receivers
            else:
                self.read_soon()
        if self._held and len(self._unread) <= self._low:  # the low-water mark
            self._held = False
            self._room.set()
            self._on_room()

    # -- the caller's side -------------------------------------------------------

    def claim(self, request_id: str) -> Outcome | None:
        """Take the unread outcome of one request, if there is one (for ``wait``)."""
        outcome = self._unread.pop(request_id, None)
        if outcome is not None:
            self._taken()
            if self._on_received is not None:
                self._on_received(outcome)
        return outcome

    async def wait_for(self, request_id: str) -> Outcome:
        """Wait until that request's outcome is delivered, and take it.

        The caller checked that the request is known and has no unread outcome. If this
        is cancelled after the outcome was handed over (a native asyncio cancel can land
        there), the outcome is put back, unread, for the stream or a later ``wait``.

        Raises:
            UsageError: another task already waits for it.
        """
        if request_id in self._waiters:
            raise UsageError(f"another task already waits for request {request_id!r}")
        waiter = _Waiter()
        self._waiters[request_id] = waiter
        self.read_soon()  # its outcome may be among the replies left unread
        if self._held:
            self.warn_held()
        try:
            await waiter.event.wait()
        except BaseException:
            del self._waiters[request_id]
            if waiter.outcome is not None:  # handed over, but we are not returning it
                self._keep(waiter.outcome)  # not consumed
            raise
        del self._waiters[request_id]
        assert waiter.outcome is not None
        if self._on_received is not None:
            self._on_received(waiter.outcome)
        return waiter.outcome

    def can_take(self) -> bool:
        """Whether :meth:`take_next` would return or raise ``EndOfStream`` now."""
        return bool(self._unread) or self.ended

    def take_next(self) -> Outcome:
        """Take the oldest unread outcome (for the stream).

        Raises:
            anyio.WouldBlock: none is unread and more may come.
            anyio.EndOfStream: none is unread and the dispatcher has closed.
        """
        if self._unread:
            _, outcome = self._unread.popitem(last=False)
            self._taken()
            if self._on_received is not None:
                self._on_received(outcome)
            return outcome
        if self.ended:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def wait_arrival(self) -> None:
        self._readers += 1
        try:
            if self._arrived.is_set():
                self._arrived = anyio.Event()
                self._signalled = False
            await self._arrived.wait()
        finally:
            self._readers -= 1

    def close_reader(self) -> None:
        """The reader closed the stream: outcomes delivered from now on are not kept."""
        self.reader_closed = True
        self._unread.clear()
        self._held = False
        self._signal_arrival()
        self._room.set()
        self.read_soon()

    def statistics(self) -> OutcomeStreamStatistics:
        return OutcomeStreamStatistics(len(self._unread), self.bound, self._readers, self.ended)


class OutcomeStream(ObjectReceiveStream[Outcome]):
    """The caller's side of the dispatcher's outcomes (:attr:`Dispatcher.outcomes`).

    An anyio object receive stream: ``async for outcome in d.outcomes``,
    :meth:`receive`, :meth:`receive_nowait`, :meth:`aclose` (or ``with``). It is the
    reader's to close; the dispatcher only ends it (``EndOfStream`` after the last
    outcome). An outcome is consumed only when :meth:`receive` returns it: a cancelled
    receive leaves it unread. A ``wait`` for a request takes that request's outcome out
    of the stream (each outcome is delivered exactly once).
    """

    def __init__(self, book: OutcomeBook) -> None:
        self._book = book
        self._closed = False
        self._checkpoint = backend_checkpoint()
        self._checkpoint_if_cancelled = backend_checkpoint_if_cancelled()

    def __repr__(self) -> str:
        s = self._book.statistics()
        state = "closed" if self._closed else ("ended" if s.ended else "open")
        return f"<OutcomeStream unread={s.current_buffer_used} {state}>"

    def receive_nowait(self) -> Outcome:
        """Take the oldest unread outcome without waiting.

        Raises:
            anyio.ClosedResourceError: this stream was closed by its reader.
            anyio.EndOfStream: the dispatcher closed and every outcome was read.
            anyio.WouldBlock: no outcome is unread yet.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        return self._book.take_next()

    async def receive(self) -> Outcome:
        """Wait for the next outcome and take it. A checkpoint on every path.

        Raises:
            anyio.ClosedResourceError: this stream was closed by its reader.
            anyio.EndOfStream: the dispatcher closed and every outcome was read.
        """
        if self._closed or self._book.can_take():
            await self._checkpoint()
        else:
            # Nothing to take yet: the wait below is the schedule point (as in trio's
            # memory channels); a scope already cancelled raises here, before it. A full
            # checkpoint first would cost a scheduler pass per outcome at low rates.
            await self._checkpoint_if_cancelled()
        while True:
            try:
                return self.receive_nowait()
            except anyio.WouldBlock:
                await self._book.wait_arrival()

    def close(self) -> None:
        """Stop reading: unread outcomes are discarded, later ones are not kept.

        With a store, discarded outcomes were never received, so they stay in the store
        and are delivered again by the next dispatcher on it.
        """
        if not self._closed:
            self._closed = True
            self._book.close_reader()

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()

    def __enter__(self) -> OutcomeStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def statistics(self) -> OutcomeStreamStatistics:
        """Return a frozen snapshot (see :class:`OutcomeStreamStatistics`)."""
        return self._book.statistics()
