"""The dispatcher: the public API callers use, outcomes and the receivers.

:func:`~backtest_queue.open_dispatcher` (:mod:`backtest_queue.lifecycle`) opens one task
group and runs sibling tasks in it, all methods of :class:`Dispatcher`:

* the **connector**: one requester (ZeroMQ DEALER) per endpoint and a socket monitor for
  each, publishing connect/disconnect events into a memory channel. "Connected" means a
  ZMTP handshake with a service succeeded;
* the **flusher** (:mod:`backtest_queue.sending`): flushes on connect events, kicks,
  periodic ticks, rate-limit tokens and deadlines;
* the **receivers**: one long-lived task per socket (a receive is never timed out, so it
  can never swallow a message), reading replies as they come or, while the caller has
  unread outcomes and nothing waits on a reply, in bursts; :mod:`backtest_queue.replies`
  decides what each reply means;
* with a store, the **store writer** (:mod:`backtest_queue.store_writer`).

Outcomes are held by :class:`~backtest_queue.delivery.OutcomeBook` until a caller has
them; a full book is backpressure (receivers and flusher pause). All I/O is
non-blocking and synchronous between awaits, so a flush and its sends are never
interleaved with another flush. What each public call guarantees under cancellation is
in ``docs/concurrency.md``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import anyio.abc
import anyio.lowlevel

from ._ratelog import RateLimitedLog
from .backend import backend_checkpoint, backend_clock
from .delivery import OutcomeBook, OutcomeStream
from .errors import (
    DispatcherClosed,
    DuplicateRequest,
    HandshakeRefused,
    QueueFull,
    TransportError,
    UsageError,
)
from .outcome import DispatcherStats, FailureReason, Outcome, SubmitState, submit_state
from .policy import BacktestQueue, FailedRequest
from .protocol import BacktestRequest, Metrics, validate_request_encoded
from .receiving import _Receiving
from .sending import REFUSALS_TO_GIVE_UP, _Kick
from .store import StoredOutcome, StoreOp
from .store_writer import StoreWriter
from .transport import ConnectionEvent, CurveClient, Requester

if TYPE_CHECKING:
    from .lifecycle import open_dispatcher
    from .metrics import RequesterMetrics

__all__ = ["CurveClient", "Dispatcher", "open_dispatcher"]

log = logging.getLogger("backtest_queue")

_WAKE_BUFFER: Final = 64
_FLUSH_CHUNK: Final = 128
#: Most encoded bodies kept from validation for requests not yet handed to ZeroMQ (the
#: rest are encoded again when sent): bounds what a long backlog costs in memory.
_BODY_CACHE: Final = 1024


class Dispatcher(_Receiving):
    """Submit backtest requests and get their outcomes. Made by :func:`open_dispatcher`.

    Attributes:
        outcomes: every outcome (result or failure), one per submitted request, except
            those claimed by :meth:`wait`: an :class:`~backtest_queue.delivery.OutcomeStream`
            (``async for``). The dispatcher ends it at exit (``EndOfStream`` after the last
            outcome, ``shutdown`` ones included); it never closes it: outcomes left unread
            stay readable after the block. Closing it (``with``/``aclose``) is the reader's.
        endpoints: the endpoints it connects to.
        restored_ids: ids of the requests a store gave back when it opened (queued again,
            or their outcome re-delivered).
        quarantined: rows of the store that could not be read back (see
            :mod:`backtest_queue.store`); reported once in the log.
        metrics: its Prometheus metrics (:class:`~backtest_queue.metrics.RequesterMetrics`:
            ``.url``, ``.port``, ``.registry``) when opened with ``metrics=``, else ``None``.
    """

    def __init__(
        self,
        queue: BacktestQueue[BacktestRequest],
        sockets: dict[str, Requester],
        *,
        on_full: Literal["wait", "error"],
        outcome_buffer: float,
        max_message_bytes: int,
        writer: StoreWriter | None = None,
        cache: bool = True,
        store_timeout: float = 30.0,
        restored_ids: frozenset[str] = frozenset(),
        fingerprints: Mapping[str, str] | None = None,
    ) -> None:
        self._queue = queue
        self._sockets = sockets
        self.endpoints: tuple[str, ...] = tuple(sockets)
        self._sole = self.endpoints[0] if len(self.endpoints) == 1 else None
        self._on_full = on_full
        self._max_message_bytes = max_message_bytes
        # Per-message calls: the backend's own, without anyio's backend lookup per call.
        self._checkpoint = backend_checkpoint()
        self._clock = backend_clock()
        # Without a store nothing needs to know that a caller has an outcome.
        on_received = None if writer is None else self._received
        self._book = OutcomeBook(
            outcome_buffer, on_received, on_room=self._kick, on_drained=self._read_on_drain
        )
        self.outcomes = OutcomeStream(self._book)
        self._wake_send, self._wake_receive = anyio.create_memory_object_stream[
            ConnectionEvent | _Kick
        ](max_buffer_size=_WAKE_BUFFER)
        self._kicked = False
        self._room = anyio.Event()
        self._room_waiters = 0  # submits waiting on _room (cheaper than its statistics())
        # Set, while a task waits in wait_idle, once nothing is queued or pending (and at
        # close); wait_idle replaces it when it finds it set and still has to wait, so
        # no submit and no outcome has to touch it when nobody waits.
        self._idle = anyio.Event()
        self._idle_waiters = 0
        self._connected = anyio.Event()
        self._up: set[str] = set()  # endpoints whose handshake succeeded
        self._ready: set[str] = set()  # up, and their PONG is in (or _PONG_WAIT passed)
        self._blocked: set[str] = set()  # endpoints whose last send hit EAGAIN
        self._connects: dict[str, int] = {}  # endpoint -> connect events (credit, PING)
        self._pong_in: set[str] = set()  # up, and their PONG since that connect is in
        self._accepting: set[str] = set()  # ids of submits under way (not yet accepted)
        self._reserved = 0  # queue room held by submits under way
        self._closed = False
        self._applying = False  # inside _read_now (replies are applied one batch at a time)
        self._thread = threading.get_ident()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._invalid_replies = 0
        self._errors_without_id = 0
        self._would_block = 0
        self._refused = 0
        self._refusals: dict[str, int] = {}
        self._flusher_wakes_at = math.inf  # the deadline the flusher is waiting for
        self._instant: dict[str, Outcome] = {}  # cache hits, delivered by the flusher
        self._bodies: dict[str, bytes] = {}  # validated encodings not sent yet (bounded)
        # data_id -> the services' data fingerprint (the caller's, until a service's)
        self._fingerprints: dict[str, str] = dict(fingerprints or {})
        self._writer = writer
        self._cache = cache and writer is not None
        self._store_timeout = store_timeout
        self.restored_ids = restored_ids
        # A hostile or broken peer cannot flood the log: bursts, then a summary line.
        self._bad_reply_log = RateLimitedLog(log, burst=20, interval=60.0, clock=anyio.current_time)
        self.quarantined: tuple[object, ...] = ()
        self.metrics: RequesterMetrics | None = None  # set by open_dispatcher(metrics=...)

    # -- public API --------------------------------------------------------------

    def __repr__(self) -> str:
        q = self._queue
        cap = "inf" if q.max_pending is None else q.max_pending
        state = "closed" if self._closed else f"up={len(self._up)}/{len(self.endpoints)}"
        return f"<Dispatcher queued={q.queued} pending={q.pending}/{cap} {state}>"

    @property
    def connected(self) -> bool:
        """Whether at least one service has completed a handshake and is up (``False``
        once the dispatcher is closed)."""
        return bool(self._up)

    @property
    def queue(self) -> BacktestQueue[BacktestRequest]:
        """The policy core (read it; changing it from outside breaks the dispatcher)."""
        return self._queue

    def stats(self) -> DispatcherStats:
        """Return a frozen snapshot of the counters (see :class:`DispatcherStats`)."""
        writer = self._writer
        return DispatcherStats(
            queue=self._queue.stats(),
            endpoints=self.endpoints,
            endpoints_up=tuple(sorted(self._up)),
            outcomes=self._book.delivered,
            invalid_replies=self._invalid_replies,
            error_replies_without_id=self._errors_without_id,
            would_block=self._would_block,
            handshakes_refused=self._refused,
            unread_outcomes=self._book.unread,
            store_busy_waits=0 if writer is None else writer.busy_waits,
            store_busy=writer is not None and writer.busy_since is not None,
            closed=self._closed,
        )

    statistics = stats

    async def submit(self, request: BacktestRequest) -> SubmitState:
        """Queue a request and hand it to a service now if the policy allows.

        A checkpoint. The request's outcome arrives later on :attr:`outcomes`, or from
        :meth:`wait`. If ``submit`` raises (cancellation included), the request was not
        accepted: it is not queued, not stored, and gets no outcome.

        Returns:
            Whether it was sent now or queued, and why (see :class:`SubmitState`).

        Raises:
            InvalidRequest: ``request`` is not a valid :class:`BacktestRequest` (names the
                field); nothing was queued.
            QueueFull: the send queue is full and ``on_full="error"``. With
                ``on_full="wait"`` it waits for room instead (bound it with ``fail_after``).
            DuplicateRequest: a request with this id is queued, pending, being submitted
                by another task, or has an outcome nobody has read yet.
            StoreBusy: with a ``store``, another connection held its write lock for
                ``store_timeout`` seconds.
            DispatcherClosed: the dispatcher's block has ended.
            UsageError: called from another thread than the dispatcher's event loop.

        With a ``store``, ``submit`` returns once the request is committed to it (it then
        survives the process being killed), and a request whose content already has a
        cached result computed on the data the services hold now is not sent: its
        outcome (``detail="cached result"``) follows at once.
        """
        await self._checkpoint()
        if self._writer is None:  # the common case, without a list and a reservation
            self._check_caller()
            checked, body = validate_request_encoded(request)
            rid = checked.request_id
            if self._in_use(rid):
                raise DuplicateRequest(rid)
            q = self._queue
            if q.queued + self._reserved < q.capacity:
                self._accept_one(checked, body)
                now = self._clock()
                self._flush(now, "submit")
                self._rearm_flusher(now)
                return self._state(rid, now, False)
        return (await self._submit_many([request]))[0]

    async def submit_many(self, requests: Sequence[BacktestRequest]) -> list[SubmitState]:
        """Submit several requests at once: one store transaction, one hand-over.

        Like :meth:`submit` for each request, in order, all or nothing: if it raises
        (cancellation included) none was accepted; if it returns, all were. With a
        ``store`` all are looked up in the result cache and committed together (one
        commit per batch). With ``on_full="wait"`` it waits until there is room for all
        the uncached ones. A checkpoint.

        Returns:
            One :class:`SubmitState` per request, in order.

        Raises:
            QueueFull: with ``on_full="error"``, the queue has no room for all of them;
                with either setting, more requests than ``capacity``.
            DuplicateRequest: an id is given twice, or as in :meth:`submit`.
            InvalidRequest, StoreBusy, DispatcherClosed, UsageError: as in :meth:`submit`.
        """
        await anyio.lowlevel.checkpoint()
        return await self._submit_many(requests)

    async def _submit_many(self, requests: Sequence[BacktestRequest]) -> list[SubmitState]:
        """:meth:`submit_many` after its checkpoint."""
        self._check_caller()
        if isinstance(requests, BacktestRequest) or not isinstance(requests, Sequence):
            raise UsageError(
                f"submit_many takes a sequence of BacktestRequest, got {type(requests).__name__}"
            )
        bodies: dict[str, bytes] = {}
        checked: list[BacktestRequest] = []  # private, valid copies
        for r in requests:
            copy, bodies[copy.request_id] = validate_request_encoded(r)
            checked.append(copy)
        q = self._queue
        ids: set[str] = set()
        for request in checked:
            rid = request.request_id
            if rid in ids or q.state_of(rid) is not None or self._in_use(rid):
                raise DuplicateRequest(rid)
            ids.add(rid)
        self._accepting |= ids
        reserved = 0
        try:
            cached: dict[str, Metrics] = {}
            if self._writer is not None and self._cache and self._fingerprints:
                cached = await self._writer.cached_results(checked, dict(self._fingerprints))
                self._check_open()
            fresh = [r for r in checked if r.request_id not in cached]
            if len(fresh) > q.capacity:
                raise QueueFull(q.capacity)
            while q.capacity - q.queued - self._reserved < len(fresh):
                if self._on_full == "error":
                    raise QueueFull(q.capacity)
                self._room_waiters += 1
                try:
                    await self._room.wait()
                finally:
                    self._room_waiters -= 1
                self._check_open()
            self._reserved += len(fresh)
            reserved = len(fresh)
            if self._writer is not None and fresh:
                await self._commit(fresh)
        except BaseException:
            if reserved:
                self._reserved -= reserved
                self._room_freed()
            raise
        finally:
            self._accepting -= ids
        # Accepted: from here on nothing awaits, so nothing can interrupt.
        self._reserved -= reserved
        self._accept(fresh, bodies)
        for request in checked:
            metrics = cached.get(request.request_id)
            if metrics is not None:
                # Delivered by the flusher, after this returns, so wait() can claim it.
                outcome = Outcome(request, metrics, None, "cached result", 0)
                self._instant[request.request_id] = outcome
        now = self._clock()
        self._flush(now, "submit")
        if cached:
            self._kick()
        self._rearm_flusher(now)
        return [self._state(r.request_id, now, r.request_id in cached) for r in checked]

    def _in_use(self, rid: str) -> bool:
        """Whether a new request may not take ``rid`` (:class:`DuplicateRequest`), besides
        being queued or pending (which ``enqueue`` refuses before it changes anything):
        another submit is accepting it, its cached outcome waits for delivery, or its
        outcome is unread or with a ``wait`` that has not returned."""
        return rid in self._accepting or rid in self._instant or self._book.holds(rid)

    def _accept(self, fresh: Sequence[BacktestRequest], bodies: dict[str, bytes]) -> None:
        """Queue validated requests (room was checked); keep their encodings for the send."""
        for request in fresh:
            self._accept_one(request, bodies[request.request_id])

    def _accept_one(self, request: BacktestRequest, body: bytes) -> None:
        """Queue one validated request (room was checked; ``enqueue`` raises
        :class:`DuplicateRequest` for a queued or pending id before it changes anything);
        keep its encoding for the send."""
        self._queue.enqueue(request)
        if len(self._bodies) < _BODY_CACHE:
            self._bodies[request.request_id] = body

    async def _commit(self, fresh: list[BacktestRequest]) -> None:
        """Make a submit's requests durable, or leave nothing of them in the store."""
        assert self._writer is not None
        ticket = self._writer.add([StoreOp("add", r) for r in fresh])
        try:
            if not await self._writer.committed(ticket, lock_wait=self._store_timeout):
                self._check_open()
                raise DispatcherClosed("the dispatcher closed before the request was stored")
            self._check_open()
        except BaseException:
            if ticket.state == "committed":  # too late to withdraw: take it back out
                self._writer.write_nowait([StoreOp("ack", r) for r in fresh])
            raise

    def _state(self, rid: str, now: float, cached: bool) -> SubmitState:
        q = self._queue
        queued = q.queued
        if cached:
            return submit_state(rid, "cached", None, queued, q.pending)
        if not queued or q.state_of(rid) != "queued":  # handed over (maybe answered already)
            return submit_state(rid, "sent", None, queued, q.pending)
        reason: Literal["not_connected", "pending", "rate", "backlog"]
        throttle = q.throttle(now)
        if not self._up:
            reason = "not_connected"
        elif not q.connected:  # up, but every socket is at its high-water mark
            reason = "backlog"
        elif throttle.reason is not None:
            reason = throttle.reason
        else:
            reason = "backlog"
        return submit_state(rid, "queued", reason, queued, q.pending)

    def submit_nowait(self, request: BacktestRequest) -> None:
        """Queue a request without waiting; the flusher sends what was queued during
        this scheduler pass in one batch (one wake-up, one send_batch, one re-arm).

        Not a checkpoint. Raises before changing anything:

        Raises:
            QueueFull: the send queue is full (never waits; our error rather than anyio's
                ``WouldBlock``, so that it carries ``capacity`` and is in our root).
            InvalidRequest, DuplicateRequest, DispatcherClosed: as in :meth:`submit`.
            UsageError: the dispatcher has a store (submit must wait for its commit), or
                this is called from another thread than the dispatcher's event loop.
        """
        self._check_caller()
        if self._writer is not None:  # (so no cache hits either: _instant stays empty)
            raise UsageError(
                "submit_nowait cannot be used with a store (a request must be committed "
                "before it is accepted); use submit or submit_many"
            )
        checked, body = validate_request_encoded(request)
        rid = checked.request_id
        if self._in_use(rid):
            raise DuplicateRequest(rid)
        q = self._queue
        if q.queued + self._reserved >= q.capacity:
            raise QueueFull(q.capacity)
        self._accept_one(checked, body)
        self._kick()

    async def wait(self, request_id: str) -> Outcome:
        """Wait for one request's outcome and take it: it is then not on :attr:`outcomes`.

        A checkpoint on every path. An outcome that arrived before anyone waited is
        taken from :attr:`outcomes` if it is still unread there. If ``wait`` raises
        (cancellation included), the outcome was not consumed: it stays unread for
        :attr:`outcomes` or a later ``wait``. Works after the block has ended too.

        Raises:
            UsageError: the id is unknown (never submitted, or its outcome was already
                received), another task already waits for it (our error rather than
                anyio's ``BusyResourceError``, so it is in our root), or this is called
                from another thread.
        """
        await anyio.lowlevel.checkpoint()
        self._check_thread()
        outcome = self._book.claim(request_id)
        if outcome is not None:
            return outcome
        if self._book.is_awaited(request_id):
            raise UsageError(f"another task already waits for request {request_id!r}")
        if self._queue.state_of(request_id) is None and request_id not in self._instant:
            raise UsageError(
                f"request {request_id!r} is not queued or pending: unknown, or its outcome "
                "was already received"
            )
        return await self._book.wait_for(request_id)

    def maybe_flush(self) -> int:
        """The per-cycle hook: flush if ``flush_interval`` has passed since the last one.

        A no-op on an empty queue, before the interval (see
        :meth:`BacktestQueue.maybe_flush`) or while unread outcomes hold the dispatcher
        back (``outcome_buffer``). Never blocks; not a checkpoint.

        Returns:
            How many requests were handed to services.

        Raises:
            DispatcherClosed: the block has ended.
            UsageError: called from another thread.
        """
        self._check_caller()
        if self._book.full:
            return 0
        now = self._clock()
        sent = self._send(self._queue.maybe_flush(now), trigger="cycle")
        self._rearm_flusher(now)
        return sent

    async def wait_connected(self, endpoint: str | None = None) -> None:
        """Wait until a service is up (bound it with ``fail_after``).

        Args:
            endpoint: wait for this one of :attr:`endpoints` (default: any one).

        "Up" means the service has also answered the PING sent at connect (or not within
        a second), so its credit (how many requests it takes in flight) is known and,
        with a store's result cache, the fingerprints of its datasets, so ``submit`` can
        answer from the cache. A checkpoint on every path.

        Raises:
            DispatcherClosed: the block has ended (also while waiting).
            UsageError: ``endpoint`` is not one of :attr:`endpoints`.
            HandshakeRefused: the service refused the handshake (CURVE keys that do not
                fit: retrying will not help) - at once when it said why, after a second
                refusal in a row when libzmq gives no detail - the one ``endpoint``, or,
                without one, every endpoint, and none is up. The dispatcher keeps
                retrying in the background; this tells the caller not to wait for it.
        """
        await anyio.lowlevel.checkpoint()
        self._check_thread()
        if endpoint is not None and endpoint not in self._sockets:
            raise UsageError(f"{endpoint!r} is not one of this dispatcher's endpoints")
        while not (self._ready if endpoint is None else endpoint in self._ready):
            self._check_open()
            self._check_refused(endpoint)
            await self._connected.wait()

    def _check_refused(self, endpoint: str | None) -> None:
        """Raise HandshakeRefused if ``endpoint`` (or every endpoint) keeps refusing."""
        refusing = {e for e, n in self._refusals.items() if n >= REFUSALS_TO_GIVE_UP}
        if endpoint is not None and endpoint in refusing:
            raise HandshakeRefused(endpoint)
        if endpoint is None and not self._up and refusing >= set(self.endpoints):
            raise HandshakeRefused(", ".join(self.endpoints))

    async def wait_idle(self) -> None:
        """Wait until nothing is queued or pending (every outcome delivered; maybe not
        read yet). A checkpoint on every path. Returns at once once closed."""
        await anyio.lowlevel.checkpoint()
        self._check_thread()
        while (self._queue.queued or self._queue.pending or self._instant) and not self._closed:
            if self._idle.is_set():  # set when it was idle, busy again since
                self._idle = anyio.Event()
            self._idle_waiters += 1
            self._book.read_soon()  # replies left unread may be what it waits for
            try:
                await self._idle.wait()
            finally:
                self._idle_waiters -= 1

    # -- internals: callers ------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DispatcherClosed("the dispatcher is closed: its async with block has ended")

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            raise UsageError(
                "the dispatcher was called from another thread; from a worker thread use "
                "anyio.from_thread.run(...) / run_sync(...) (trio.from_thread on trio)"
            )

    def _check_caller(self) -> None:
        # Once per submit: one test on the common path, the two checks (in this order)
        # only when one of them fails.
        if self._closed or threading.get_ident() != self._thread:
            self._check_thread()
            self._check_open()

    # -- internals: outcomes -----------------------------------------------------

    def _deliver(
        self, outcome: Outcome, *, stored: bool = True, fingerprint: str | None = None
    ) -> None:
        """Record an outcome (``stored``: its request is in the store) and hand it over."""
        if self._writer is not None and stored and outcome.reason != "shutdown":
            # Final: the request is not re-sent on restart; its outcome is kept until a
            # caller has it (a 'shutdown' one is not final: the request stays queued).
            ops = [StoreOp("outcome", outcome.request, outcome=StoredOutcome.of(outcome))]
            if outcome.result is not None and fingerprint is not None:
                ops.append(StoreOp("result", outcome.request, result=outcome.result,
                                   fingerprint=fingerprint))  # fmt: skip
            self._writer.write_nowait(ops)
        if self.metrics is not None:
            self.metrics.delivered(outcome)
        self._book.deliver(outcome)
        if self._idle_waiters and not (self._queue.queued or self._queue.pending or self._instant):
            self._idle.set()

    def _received(self, outcome: Outcome) -> None:
        """A caller has the outcome: the store may forget it."""
        if self._writer is not None and outcome.reason != "shutdown":
            self._writer.write_nowait([StoreOp("ack", outcome.request)])

    def _deliver_cached(self) -> None:
        instant, self._instant = self._instant, {}
        for outcome in instant.values():
            self._deliver(outcome, stored=False)

    def _fail(self, failures: list[FailedRequest[BacktestRequest]]) -> None:
        for f in failures:
            if f.reason == "timeout":
                detail = f"no reply in time on any of {f.attempts} attempt(s)"
            else:
                detail = f"service {f.reason}, {f.attempts} attempt(s)"
            reason: FailureReason = "service_error" if f.reason == "unavailable" else f.reason
            self._deliver(Outcome(f.request, None, reason, detail, f.attempts))

    # -- opening and shutdown ----------------------------------------------------

    def _restore(self, outcomes: Sequence[tuple[BacktestRequest, StoredOutcome]]) -> None:
        """Re-deliver outcomes a store kept because no caller had read them."""
        for request, stored in outcomes:
            self._book.deliver(stored.to_outcome(request))

    def _shutdown(self) -> None:
        """Report everything still queued or pending as failed with reason ``shutdown``,
        and end the outcome stream (its reader's side stays open). Replies the receivers
        left unread are applied first: a result that came is not a ``shutdown``."""
        if self._book.deferring:
            with contextlib.suppress(TransportError):  # the block's own error stands
                self._drain_all()
        self._closed = True
        self._bodies.clear()
        self._deliver_cached()
        left = self._queue.drain()
        if left:
            log.warning("dispatcher closed with %d requests still queued or pending; "
                        "each gets a 'shutdown' outcome", len(left))  # fmt: skip
        reason: FailureReason = "shutdown"
        for request in left:
            self._deliver(Outcome(request, None, reason, "the dispatcher was closed", 0))
        self._up.clear()
        self._ready.clear()
        self._bad_reply_log.flush()
        self._book.end()
        self._wake_send.close()
        self._wake_receive.close()
        self._room.set()
        self._idle.set()
        self._connected.set()


def __getattr__(name: str) -> Any:
    # ``open_dispatcher`` lives in :mod:`backtest_queue.lifecycle` (which imports this
    # module); it is still importable from here, as it was.
    if name == "open_dispatcher":
        from .lifecycle import open_dispatcher

        return open_dispatcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
