"""The async I/O shell around :class:`~backtest_queue.BacktestQueue`.

:func:`open_dispatcher` opens one task group and runs sibling tasks in it:

* the **connector**: one ZeroMQ DEALER per endpoint (``ZMQ_IMMEDIATE=1``, ZMTP heartbeats)
  and a socket monitor for each, publishing connect/disconnect events into a memory
  channel. "Connected" means a ZMTP handshake with a service succeeded;
* the **flusher**: waits on that channel inside a cancel scope whose deadline comes from
  the policy core (next periodic flush, next rate-limit token, next pending deadline). A
  connect event flushes at once; an expired interval runs ``maybe_flush``; a freed
  pending slot or a writable socket kicks it (kicks coalesce); expired deadlines are
  retried or reported as failures;
* the **receivers**: one long-lived task per socket (a receive is never timed out, so it
  can never swallow a message), decoding replies, releasing pending slots by
  ``request_id`` and emitting outcomes.

All I/O is non-blocking and synchronous between awaits, so a flush and its sends are
never interleaved with another flush.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio
import anyio.abc
import anyio.lowlevel
import zmq

from .errors import (
    BacktestQueueError,
    DispatcherClosed,
    DuplicateRequest,
    ProtocolError,
    QueueFull,
    UsageError,
)
from .outcome import DispatcherStats, FailureReason, Outcome, SubmitState
from .policy import BacktestQueue, FailedRequest
from .protocol import (
    DEFAULT_ENDPOINT,
    DEFAULT_MAX_MESSAGE_BYTES,
    BacktestRequest,
    BacktestResult,
    ErrorReply,
    Metrics,
    decode_message,
    encode_message,
)
from .store import SqliteStore, StoreOp
from .transport import ConnectionEvent, Network, Requester, SendStatus, ZmqNetwork

__all__ = ["Dispatcher", "open_dispatcher"]

log = logging.getLogger("backtest_queue")

_WAKE_BUFFER: Final = 64
_RECENT_OUTCOMES: Final = 10_000
_FLUSH_CHUNK: Final = 128


@dataclass(frozen=True, slots=True)
class _Kick:
    """A coalescing wake-up for the flusher (a slot freed, a socket became writable)."""


_KICK: Final = _Kick()


@dataclass(frozen=True, slots=True)
class CurveClient:
    """CURVE keys for the requester (see ``docs/reliability.md``).

    Attributes:
        public_key: this requester's public key (Z85, 40 bytes).
        secret_key: this requester's secret key (Z85, 40 bytes).
        server_key: the service's public key, pinned (Z85, 40 bytes).
    """

    public_key: bytes
    secret_key: bytes
    server_key: bytes


class _StoreWriter:
    """Runs a :class:`SqliteStore` in a worker thread, one transaction per batch.

    Writes made while a transaction runs are grouped into the next one (group commit).
    """

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self._batch: list[StoreOp] = []
        self._batch_done = anyio.Event()
        self._wake = anyio.Event()
        self._lock = anyio.Lock()  # one thread touches the connection at a time
        self.commits = 0

    async def cached_results(self, requests: Sequence[BacktestRequest]) -> dict[str, Metrics]:
        """Look all of them up in the result cache in one thread call."""
        async with self._lock:
            return await anyio.to_thread.run_sync(self.store.cached_results, requests)

    def write_nowait(self, op: StoreOp) -> anyio.Event:
        """Queue a write for the next transaction; the event is set once it is committed."""
        self._batch.append(op)
        self._wake.set()
        return self._batch_done

    async def write_many(self, ops: Sequence[StoreOp]) -> None:
        """Queue writes and wait until they are committed (in one transaction)."""
        done = self._batch_done
        self._batch.extend(ops)
        self._wake.set()
        await done.wait()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            batch, done = self._batch, self._batch_done
            self._batch, self._batch_done = [], anyio.Event()
            async with self._lock:  # a thread is never abandoned mid-commit: not cancellable
                await anyio.to_thread.run_sync(self.store.apply, batch)
            self.commits += 1
            done.set()

    def close(self) -> None:
        """Commit what is left (synchronously: at shutdown) and close the database."""
        try:
            if self._batch:
                self.store.apply(self._batch)
                self._batch = []
            self._batch_done.set()
        finally:
            self.store.close()


class Dispatcher:
    """Submit backtest requests and get their outcomes. Made by :func:`open_dispatcher`.

    Attributes:
        outcomes: every outcome (result or failure), one per submitted request, except
            those claimed by :meth:`wait`. Iterate it with ``async for``. When the
            dispatcher closes it ends the stream (``EndOfStream`` after the last outcome,
            including the ``shutdown`` ones); if outcomes are left unread then, the stream
            stays readable after the block and is the caller's to close
            (``with dispatcher.outcomes: ...``), as anyio streams are.
        endpoints: the endpoints it connects to.
    """

    def __init__(
        self,
        queue: BacktestQueue[BacktestRequest],
        sockets: dict[str, Requester],
        *,
        on_full: Literal["wait", "error"],
        outcome_buffer: float,
        max_message_bytes: int,
        writer: _StoreWriter | None = None,
        restored_ids: frozenset[str] = frozenset(),
    ) -> None:
        self._queue = queue
        self._sockets = sockets
        self.endpoints: tuple[str, ...] = tuple(sockets)
        self._on_full = on_full
        self._max_message_bytes = max_message_bytes
        self._outcome_send, self.outcomes = anyio.create_memory_object_stream[Outcome](
            max_buffer_size=outcome_buffer
        )
        self._wake_send, self._wake_receive = anyio.create_memory_object_stream[
            ConnectionEvent | _Kick
        ](max_buffer_size=_WAKE_BUFFER)
        self._kicked = False
        self._room = anyio.Event()
        self._idle = anyio.Event()
        self._connected = anyio.Event()
        self._waiters: dict[str, _Waiter] = {}
        self._up: set[str] = set()  # endpoints whose handshake succeeded
        self._blocked: set[str] = set()  # endpoints whose last send hit EAGAIN
        self._closed = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._outcome_count = 0
        self._invalid_replies = 0
        self._errors_without_id = 0
        self._would_block = 0
        self._refused = 0
        self._flusher_wakes_at = math.inf  # the deadline the flusher is waiting for
        self._overflow: deque[Outcome] = deque()  # outcomes waiting for room in the stream
        self._overflow_ready = anyio.Event()
        self._instant: dict[str, Outcome] = {}  # cache hits, delivered by the flusher
        # The last outcomes put on the stream, for wait() calls that come late.
        self._recent: OrderedDict[str, Outcome] = OrderedDict()
        self._writer = writer
        #: ids of the requests restored from the store when it opened (queued again).
        self.restored_ids = restored_ids

    # -- public API --------------------------------------------------------------

    def __repr__(self) -> str:
        q = self._queue
        cap = "inf" if q.max_pending is None else q.max_pending
        state = "closed" if self._closed else f"up={len(self._up)}/{len(self.endpoints)}"
        return f"<Dispatcher queued={q.queued} pending={q.pending}/{cap} {state}>"

    @property
    def connected(self) -> bool:
        """Whether at least one service has completed a handshake and is up."""
        return bool(self._up)

    @property
    def queue(self) -> BacktestQueue[BacktestRequest]:
        """The policy core (read it; changing it from outside breaks the dispatcher)."""
        return self._queue

    def stats(self) -> DispatcherStats:
        """Return a frozen snapshot of the counters (see :class:`DispatcherStats`)."""
        return DispatcherStats(
            queue=self._queue.stats(),
            endpoints=self.endpoints,
            endpoints_up=tuple(sorted(self._up)),
            outcomes=self._outcome_count,
            invalid_replies=self._invalid_replies,
            error_replies_without_id=self._errors_without_id,
            would_block=self._would_block,
            handshakes_refused=self._refused,
        )

    statistics = stats

    async def submit(self, request: BacktestRequest) -> SubmitState:
        """Queue a request and hand it to a service now if the policy allows.

        The request's outcome arrives later on :attr:`outcomes`, or from :meth:`wait`
        (call it right after ``submit`` returns: no outcome can arrive in between).

        Returns:
            Whether it was sent now or queued, and why (see :class:`SubmitState`).

        Raises:
            QueueFull: the send queue is full and ``on_full="error"``. With
                ``on_full="wait"`` it waits for room instead (bound it with ``fail_after``).
            DuplicateRequest: a request with this id is already queued or pending.
            DispatcherClosed: the dispatcher's block has ended.

        With a ``store``, ``submit`` returns once the request is committed to it (it then
        survives the process being killed), and a request whose content already has a
        cached result is not sent: its outcome (``detail="cached result"``) follows at once.
        """
        return (await self.submit_many([request]))[0]

    async def submit_many(self, requests: Sequence[BacktestRequest]) -> list[SubmitState]:
        """Submit several requests at once: one store transaction, one hand-over.

        Like :meth:`submit` for each request, in order, but with a ``store`` all of them
        are looked up in the result cache and committed together, which is what makes a
        durable queue fast (one commit per batch, not per request). With
        ``on_full="wait"`` it waits until there is room for all the uncached ones.

        Returns:
            One :class:`SubmitState` per request, in order.

        Raises:
            QueueFull: with ``on_full="error"``, the queue has no room for all of them
                (none was accepted); with either setting, more requests than ``capacity``.
            DuplicateRequest: an id is queued or pending already, or given twice (none
                was accepted).
            DispatcherClosed: the dispatcher's block has ended.
        """
        await anyio.lowlevel.checkpoint()  # before, not after: see wait()
        self._check_open()
        q = self._queue
        ids: set[str] = set()
        for request in requests:
            rid = request.request_id
            if rid in ids or q.state_of(rid) is not None or rid in self._instant:
                raise DuplicateRequest(rid)
            ids.add(rid)
        writer = self._writer
        cached = {} if writer is None else await writer.cached_results(requests)
        fresh = [r for r in requests if r.request_id not in cached]
        if len(fresh) > q.capacity:
            raise QueueFull(q.capacity)
        while q.capacity - q.queued < len(fresh):
            if self._on_full == "error":
                raise QueueFull(q.capacity)
            await self._room.wait()
            self._check_open()
        if writer is not None and fresh:
            await writer.write_many([StoreOp("add", r) for r in fresh])  # durable first
            self._check_open()
        for request in fresh:
            while True:
                try:
                    q.enqueue(request)
                    break
                except QueueFull:  # another submit took the room while we were writing
                    await self._room.wait()  # already durable: it must go in, so wait
                    self._check_open()
        for request in requests:
            metrics = cached.get(request.request_id)
            if metrics is not None:
                # Delivered by the flusher, after this returns, so wait() can claim it.
                outcome = Outcome(request, metrics, None, "cached result", 0)
                self._instant[request.request_id] = outcome
        if self._idle.is_set():
            self._idle = anyio.Event()
        now = anyio.current_time()
        self._flush(now, "submit")
        if cached:
            self._kick()
        self._rearm_flusher()
        return [self._state(r.request_id, now, r.request_id in cached) for r in requests]

    def _state(self, rid: str, now: float, cached: bool) -> SubmitState:
        q = self._queue
        if cached:
            return SubmitState(rid, "cached", None, q.queued, q.pending)
        if q.state_of(rid) != "queued":  # handed over (maybe answered already)
            return SubmitState(rid, "sent", None, q.queued, q.pending)
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
        return SubmitState(rid, "queued", reason, q.queued, q.pending)

    def submit_nowait(self, request: BacktestRequest) -> None:
        """Queue a request without waiting; the flusher sends what was queued during
        this scheduler pass in one batch (one wake-up, one send_batch, one re-arm).

        Raises:
            QueueFull: the send queue is full (never waits).
            DuplicateRequest: a request with this id is already queued or pending.
            DispatcherClosed: the dispatcher's block has ended.
            UsageError: the dispatcher has a store (submit must wait for its commit).
        """
        self._check_open()
        if self._writer is not None:  # (so no cache hits either: _instant stays empty)
            raise UsageError(
                "submit_nowait cannot be used with a store (a request must be committed "
                "before it is accepted); use submit or submit_many"
            )
        self._queue.enqueue(request)
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._kick()

    async def wait(self, request_id: str) -> Outcome:
        """Wait for one request's outcome; it is then not put on :attr:`outcomes`.

        If the outcome arrived before anyone waited for it, it went to :attr:`outcomes`;
        ``wait`` still returns it, from a record of the last 10 000 outcomes put there.
        So per request, read it from :attr:`outcomes` or ``wait`` for it, not both.

        Raises:
            UsageError: the id is unknown (never submitted, or its outcome was claimed by
                an earlier ``wait`` or is older than that record), or another task
                already waits for it.
        """
        if request_id in self._waiters:
            raise UsageError(f"another task already waits for request {request_id!r}")
        earlier = self._recent.pop(request_id, None)
        if earlier is not None:
            await anyio.lowlevel.checkpoint()
            return earlier
        if self._queue.state_of(request_id) is None and request_id not in self._instant:
            raise UsageError(
                f"request {request_id!r} is not queued or pending: unknown, or its outcome "
                "was already delivered"
            )
        waiter = _Waiter()
        self._waiters[request_id] = waiter
        try:
            await waiter.event.wait()
        finally:
            if not waiter.event.is_set():
                self._waiters.pop(request_id, None)
        assert waiter.outcome is not None
        return waiter.outcome

    def maybe_flush(self) -> int:
        """The per-cycle hook: flush if ``flush_interval`` has passed since the last one.

        A no-op on an empty queue or before the interval (see
        :meth:`BacktestQueue.maybe_flush`). Never blocks.

        Returns:
            How many requests were handed to services.
        """
        self._check_open()
        sent = self._send(self._queue.maybe_flush(anyio.current_time()), trigger="cycle")
        self._rearm_flusher()
        return sent

    async def wait_connected(self) -> None:
        """Wait until at least one service is up (bound it with ``fail_after``)."""
        while not self._up:
            self._check_open()
            await self._connected.wait()

    async def wait_idle(self) -> None:
        """Wait until nothing is queued or pending (every outcome delivered)."""
        while self._queue.queued or self._queue.pending or self._instant:
            await self._idle.wait()

    # -- internals: sending ------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DispatcherClosed("the dispatcher is closed: its async with block has ended")

    def _send(self, batch: list[BacktestRequest], trigger: str = "submit") -> int:
        """Send what the policy handed over; put back what could not go. Never blocks."""
        if not batch:
            return 0
        queue = self._queue
        by_connection: dict[str, list[BacktestRequest]] = {}
        for request in batch:
            conn = queue.connection_of(request.request_id)
            assert conn is not None  # flush() just made it pending on a connection
            by_connection.setdefault(conn, []).append(request)
        unsent: list[str] = []
        sent = 0
        for conn, requests in by_connection.items():
            count, status = (0, SendStatus.WOULD_BLOCK)
            if conn not in self._blocked:
                count, status = self._sockets[conn].send_batch(
                    [b"", encode_message(r)] for r in requests
                )
            sent += count
            if count < len(requests):
                unsent.extend(r.request_id for r in requests[count:])
                if status is SendStatus.WOULD_BLOCK:
                    self._would_block += 1
                    self._block(conn)
        if unsent:
            queue.send_failed(unsent, anyio.current_time())
        if sent:
            if self._room.statistics().tasks_waiting:  # no Event churn per send
                self._room.set()
                self._room = anyio.Event()
            log.debug("sent %d requests (%s)", sent, trigger)
        return sent

    def _rearm_flusher(self) -> None:
        """Kick the flusher if the policy now needs it earlier than it plans to wake.

        Called after work done outside the flusher (submit, maybe_flush): a request
        handed over there has a deadline, and one queued behind the rate limit a token
        time, that the sleeping flusher does not know about.
        """
        if self._queue.next_deadline_at() < self._flusher_wakes_at:
            self._kick()

    def _flush(self, now: float, trigger: str) -> int:
        """Flush in chunks, so the first request leaves at once; stop at the first
        chunk that could not all go (EAGAIN: the rest stays queued, not re-queued)."""
        total = 0
        while True:
            batch = self._queue.flush(now, limit=_FLUSH_CHUNK)
            if not batch:
                return total
            sent = self._send(batch, trigger)
            total += sent
            if sent < len(batch):
                return total

    def _block(self, endpoint: str) -> None:
        """Stop routing to a socket that hit its high-water mark until it is writable."""
        if endpoint in self._blocked or self._task_group is None:
            return
        self._blocked.add(endpoint)
        self._queue.on_disconnected(anyio.current_time(), endpoint, requeue=False)
        log.info("send to %s would block (high-water mark); waiting until writable", endpoint)
        self._task_group.start_soon(self._unblock_when_writable, endpoint)

    async def _unblock_when_writable(self, endpoint: str) -> None:
        await self._sockets[endpoint].wait_writable()
        self._blocked.discard(endpoint)
        if endpoint in self._up:
            self._queue.on_connected(anyio.current_time(), endpoint)
        self._kick()

    def _kick(self) -> None:
        """Wake the flusher. Kicks coalesce: many kicks before it runs wake it once."""
        if self._kicked:
            return
        try:
            self._wake_send.send_nowait(_KICK)
        except anyio.WouldBlock:
            return  # the channel is full of events: the flusher is about to run anyway
        except anyio.ClosedResourceError:
            return
        self._kicked = True

    # -- internals: outcomes -----------------------------------------------------

    def _deliver(self, outcome: Outcome, *, stored: bool = True) -> None:
        """Hand an outcome to its waiter or the stream (``stored``: it is in the store)."""
        self._outcome_count += 1
        if self._writer is not None and stored and outcome.reason != "shutdown":
            # Final: forget the request (a 'shutdown' one stays, to be re-sent on restart)
            # and cache the result by content.
            if outcome.result is not None:
                self._writer.write_nowait(StoreOp("result", outcome.request, outcome.result))
            self._writer.write_nowait(StoreOp("remove", outcome.request))
        waiter = self._waiters.pop(outcome.request_id, None)
        if waiter is not None:
            waiter.outcome = outcome
            waiter.event.set()
        elif self._overflow:  # keep the order: behind those already waiting for room
            self._remember(outcome)
            self._overflow.append(outcome)
        else:
            self._remember(outcome)
            try:
                self._outcome_send.send_nowait(outcome)
            except anyio.WouldBlock:
                self._overflow.append(outcome)
                self._overflow_ready.set()
            except anyio.BrokenResourceError:
                log.debug("outcome for %s dropped: the caller closed the outcome stream",
                          outcome.request_id)  # fmt: skip
        if not (self._queue.queued or self._queue.pending or self._instant):
            self._idle.set()

    def _remember(self, outcome: Outcome) -> None:
        recent = self._recent
        recent[outcome.request_id] = outcome
        if len(recent) > _RECENT_OUTCOMES:
            recent.popitem(last=False)

    def _deliver_cached(self) -> None:
        instant, self._instant = self._instant, {}
        for outcome in instant.values():
            self._deliver(outcome, stored=False)

    async def _outcome_pump(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver outcomes that did not fit in a bounded outcome stream, in order, as
        the caller reads (backpressure without holding up the flusher or receivers)."""
        task_status.started()
        while True:
            await self._overflow_ready.wait()
            self._overflow_ready = anyio.Event()
            while self._overflow:
                try:
                    await self._outcome_send.send(self._overflow[0])
                except anyio.BrokenResourceError:
                    log.debug("%d outcomes dropped: the caller closed the outcome stream",
                              len(self._overflow))  # fmt: skip
                    self._overflow.clear()
                    break
                self._overflow.popleft()

    def _fail(self, failures: list[FailedRequest[BacktestRequest]]) -> None:
        for f in failures:
            if f.reason == "timeout":
                detail = f"no reply in time on any of {f.attempts} attempt(s)"
            else:
                detail = f"service {f.reason}, {f.attempts} attempt(s)"
            reason: FailureReason = "service_error" if f.reason == "unavailable" else f.reason
            self._deliver(Outcome(f.request, None, reason, detail, f.attempts))

    # -- tasks -------------------------------------------------------------------

    async def _receiver(
        self,
        endpoint: str,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read replies from one socket for as long as the dispatcher lives."""
        sock = self._sockets[endpoint]
        task_status.started()
        while True:
            batch = await sock.receive_batch()
            now = anyio.current_time()
            freed = False
            for frames in batch:
                freed |= self._handle_reply(endpoint, frames, now)
            if freed and self._queue.queued:
                self._kick()

    def _handle_reply(self, endpoint: str, frames: list[bytes], now: float) -> bool:
        """Apply one reply; return whether it resolved a request."""
        if len(frames) != 2 or frames[0]:
            self._invalid_replies += 1
            log.warning("invalid reply from %s: %d frames, expected [b'', body]",
                        endpoint, len(frames))  # fmt: skip
            return False
        try:
            message = decode_message(frames[1], max_bytes=self._max_message_bytes)
        except ProtocolError as exc:
            self._invalid_replies += 1
            log.warning("invalid reply from %s: %s", endpoint, exc.message)
            return False
        queue = self._queue
        if isinstance(message, BacktestResult):
            attempts = self._attempts(message.request_id)
            request = queue.on_result(message.request_id, now)
            if request is None:
                log.debug("dropped result for unknown or resolved id %r", message.request_id)
                return False
            self._deliver(Outcome(request, message.result, None, "", attempts))
            return True
        if isinstance(message, ErrorReply):
            if message.request_id is None:
                self._errors_without_id += 1
                log.warning("service %s could not read a request: %s: %s",
                            endpoint, message.code, message.message)  # fmt: skip
                return False
            if message.code == "unavailable":  # not run: send it again
                failure = queue.retry(message.request_id, now)
                if failure is not None:
                    detail = f"unavailable on all {failure.attempts} attempts: {message.message}"
                    self._deliver(
                        Outcome(failure.request, None, "service_error", detail, failure.attempts)
                    )
                return True
            attempts = self._attempts(message.request_id)
            request = queue.on_error(message.request_id, now)
            if request is None:
                return False
            detail = f"{message.code}: {message.message}"
            self._deliver(Outcome(request, None, "service_error", detail, attempts))
            return True
        self._invalid_replies += 1
        log.warning("unexpected %s message from %s", type(message).__name__, endpoint)
        return False

    def _attempts(self, request_id: str) -> int:
        return self._queue.attempts_of(request_id)

    async def _flusher(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Flush on connect events, kicks, ticks, tokens and deadlines."""
        queue = self._queue
        task_status.started()
        while True:
            now = anyio.current_time()
            self._fail(queue.expire(now))
            wakes: list[ConnectionEvent | _Kick] = []
            self._flusher_wakes_at = queue.next_deadline_at(now)
            with anyio.move_on_at(self._flusher_wakes_at):
                wakes.append(await self._wake_receive.receive())
            self._flusher_wakes_at = -math.inf  # awake: nobody needs to kick it
            while True:
                try:
                    wakes.append(self._wake_receive.receive_nowait())
                except anyio.WouldBlock:
                    break
            now = anyio.current_time()
            self._fail(queue.expire(now))
            connected_to: list[ConnectionEvent] = []
            self._deliver_cached()
            for wake in wakes:
                if isinstance(wake, _Kick):
                    self._kicked = False
                elif self._apply(wake, now):
                    connected_to.append(wake)
            if not wakes:
                sent = self._send(queue.maybe_flush(now), "interval")
                if not sent:
                    self._flush(now, "token")
            elif connected_to:
                count = queue.queued
                sent = self._flush(now, "connect")
                ev = connected_to[-1]
                ms = (anyio.current_time() - ev.at) * 1000
                log.info("flushed %d queued requests %.1f ms after connect to %s "
                         "(%d still queued)", sent, ms, ev.source, count - sent)  # fmt: skip
            else:
                self._flush(now, "kick")

    def _apply(self, event: ConnectionEvent, now: float) -> bool:
        """Apply a connection event to the policy; return whether a service came up."""
        endpoint = event.source
        if event.kind == "up":
            self._up.add(endpoint)
            self._connected.set()
            self._connected = anyio.Event()
            if endpoint not in self._blocked:
                self._queue.on_connected(now, endpoint)
            log.info("connected to %s", endpoint)
            return True
        if event.kind == "down":
            self._up.discard(endpoint)
            before = self._queue.pending
            failures = self._queue.on_disconnected(now, endpoint, requeue=True)
            log.warning("disconnected from %s; %d pending requests re-queued, %d failed",
                        endpoint, before - self._queue.pending - len(failures),
                        len(failures))  # fmt: skip
            self._fail(failures)
            return False
        self._refused += 1
        log.error("handshake with %s refused (check the CURVE keys on both sides)", endpoint)
        return False

    # -- shutdown ----------------------------------------------------------------

    def _shutdown(self) -> None:
        """Report everything still queued or pending as failed with reason ``shutdown``."""
        self._closed = True
        self._deliver_cached()
        left = self._queue.drain()
        if left:
            log.warning("dispatcher closed with %d requests still queued or pending; "
                        "each gets a 'shutdown' outcome", len(left))  # fmt: skip
        reason: FailureReason = "shutdown"
        for request in left:
            self._deliver(Outcome(request, None, reason, "the dispatcher was closed", 0))
        for outcome in self._overflow:
            try:
                self._outcome_send.send_nowait(outcome)
            except (anyio.WouldBlock, anyio.BrokenResourceError):
                log.error("outcome for %s could not be delivered: the outcome stream is "
                          "full or closed", outcome.request_id)  # fmt: skip
        self._overflow.clear()
        self._outcome_send.close()
        if self.outcomes.statistics().current_buffer_used == 0:
            self.outcomes.close()  # nothing left to read: do not leave it to the caller
        self._wake_send.close()
        self._wake_receive.close()
        self._room.set()
        self._idle.set()
        self._connected.set()


class _Waiter:
    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.outcome: Outcome | None = None


def _requester_options(
    *, heartbeat_ivl: float, reconnect_ivl: float, send_hwm: int, max_message_bytes: int,
    curve: CurveClient | None,
) -> dict[int, Any]:  # fmt: skip
    options: dict[int, Any] = {
        zmq.LINGER: 0,  # unsent requests are still pending in the policy: nothing is lost
        zmq.IMMEDIATE: 1,  # queue only to completed connections, never to dead pipes
        zmq.HEARTBEAT_IVL: max(1, int(heartbeat_ivl * 1000)),
        zmq.HEARTBEAT_TIMEOUT: max(1, int(heartbeat_ivl * 3000)),
        zmq.HEARTBEAT_TTL: max(100, int(heartbeat_ivl * 3000)),
        zmq.RECONNECT_IVL: max(1, int(reconnect_ivl * 1000)),
        zmq.RECONNECT_IVL_MAX: max(1, int(max(reconnect_ivl, 2.0) * 1000)),
        zmq.MAXMSGSIZE: max_message_bytes,
        zmq.SNDHWM: send_hwm,
    }
    if curve is not None:
        options[zmq.CURVE_PUBLICKEY] = curve.public_key
        options[zmq.CURVE_SECRETKEY] = curve.secret_key
        options[zmq.CURVE_SERVERKEY] = curve.server_key
    return options


@asynccontextmanager
async def open_dispatcher(
    endpoints: Sequence[str] | None = None,
    *,
    flush_interval: float = 1.0,
    max_pending: int | None = 64,
    rate: float | None = None,
    burst: float | None = None,
    capacity: int = 5000,
    result_timeout: float = 60.0,
    max_attempts: int = 3,
    retry_backoff: float = 2.0,
    on_full: Literal["wait", "error"] = "wait",
    outcome_buffer: float = math.inf,
    drain_timeout: float = 0.0,
    heartbeat_ivl: float = 1.0,
    reconnect_ivl: float = 0.1,
    send_hwm: int = 1000,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    curve: CurveClient | None = None,
    store: str | os.PathLike[str] | None = None,
    context: zmq.Context[Any] | None = None,
    network: Network | None = None,
) -> AsyncIterator[Dispatcher]:
    """Open a dispatcher: requester sockets, connector, flusher and receivers.

    Opening does not wait for any service to exist: requests queue until one is up.

    Args:
        endpoints: ZeroMQ endpoints of backtest services (default
            ``["tcp://127.0.0.1:5580"]``; a single string is one endpoint); one DEALER
            socket each.
        flush_interval: seconds between periodic flushes.
        max_pending: most requests in flight at once (``None``: no cap).
        rate: most requests handed to services per second (``None``: no limit).
        burst: token-bucket size in requests (default ``max(1, rate)``).
        capacity: send-queue size limit in requests.
        result_timeout: seconds to wait for a reply before retrying.
        max_attempts: hand-overs per request, counting the first.
        retry_backoff: each retry waits this many times longer for its reply than the
            attempt before it.
        on_full: what :meth:`Dispatcher.submit` does on a full queue: ``"wait"`` for
            room (backpressure) or ``"error"`` (raise :class:`~backtest_queue.QueueFull`).
        outcome_buffer: outcomes :attr:`Dispatcher.outcomes` holds before the receivers
            wait for the caller to read (default unbounded).
        drain_timeout: seconds to keep flushing and receiving after the block ends
            normally, for outstanding requests to finish; 0 stops at once.
        heartbeat_ivl: ZMTP heartbeat interval in seconds (a silent peer is dropped after
            three intervals).
        reconnect_ivl: seconds between reconnect attempts (backs off to 2 s).
        send_hwm: ZeroMQ send high-water mark per socket, in messages; a send beyond it
            would block, and the request waits at the front of the send queue instead.
        max_message_bytes: largest reply accepted (``ZMQ_MAXMSGSIZE``), in bytes.
        curve: CURVE keys to encrypt and authenticate (``None``: plain TCP).
        store: a SQLite file that keeps the send queue and pending requests durable and
            caches results by content (see :mod:`backtest_queue.store`). Requests left
            in it by an earlier run (killed, or closed with requests outstanding) are
            queued again first and their outcomes delivered on :attr:`Dispatcher.outcomes`.
        context: a pyzmq context to use (default: a private one, destroyed on exit).
        network: what opens the requester connections (default: ZeroMQ DEALER sockets,
            :class:`~backtest_queue.transport.ZmqNetwork`); tests pass the in-memory
            :class:`~backtest_queue.testing.MemoryNetwork`. The socket settings above
            apply to ZeroMQ only.

    Yields:
        The :class:`Dispatcher`.

    Raises:
        UsageError: a setting is out of range, or no endpoints were given.
        TransportError: an endpoint is malformed.

    On exit everything still queued or pending gets an outcome with reason ``shutdown``
    and the outcome stream is closed (readers see ``EndOfStream`` after the last one).
    An exception from the block propagates unchanged.
    """
    if isinstance(endpoints, str):
        endpoints = [endpoints]  # one endpoint given as a string, not a list of its letters
    endpoint_list = list(endpoints) if endpoints is not None else [DEFAULT_ENDPOINT]
    if not endpoint_list:
        raise UsageError("open_dispatcher needs at least one endpoint")
    if len(set(endpoint_list)) != len(endpoint_list):
        raise UsageError(f"endpoints must be distinct, got {endpoint_list!r}")
    if on_full not in ("wait", "error"):
        raise UsageError(f"on_full must be 'wait' or 'error', got {on_full!r}")
    if drain_timeout < 0:
        raise UsageError(f"drain_timeout must be >= 0 seconds, got {drain_timeout!r}")
    queue: BacktestQueue[BacktestRequest] = BacktestQueue(
        capacity=capacity,
        max_pending=max_pending,
        rate=rate,
        burst=burst,
        flush_interval=flush_interval,
        result_timeout=result_timeout,
        max_attempts=max_attempts,
        retry_backoff=retry_backoff,
        clock=anyio.current_time,
    )
    options = _requester_options(
        heartbeat_ivl=heartbeat_ivl, reconnect_ivl=reconnect_ivl, send_hwm=send_hwm,
        max_message_bytes=max_message_bytes, curve=curve,
    )  # fmt: skip
    writer: _StoreWriter | None = None
    restored: list[BacktestRequest] = []
    if store is not None:
        writer = _StoreWriter(SqliteStore(store))
        restored = writer.store.pending_requests()
        for request in restored:
            queue.enqueue_restored(request)
        if restored:
            log.info("restored %d undelivered requests from %s", len(restored), store)
    own_context = context is None and network is None
    ctx: zmq.Context[Any] | None = None
    if network is None:
        ctx = zmq.Context() if context is None else context
        network = ZmqNetwork(ctx, options)
    body_error: BaseException | None = None
    unwrapped: BaseException | None = None
    try:
        async with AsyncExitStack() as stack:
            sockets: dict[str, Requester] = {}
            for endpoint in endpoint_list:
                sockets[endpoint] = await stack.enter_async_context(
                    network.open_requester(endpoint)
                )
            dispatcher = Dispatcher(
                queue, sockets, on_full=on_full, outcome_buffer=outcome_buffer,
                max_message_bytes=max_message_bytes, writer=writer,
                restored_ids=frozenset(r.request_id for r in restored),
            )  # fmt: skip
            try:
                async with anyio.create_task_group() as tg:
                    dispatcher._task_group = tg
                    if writer is not None:
                        await tg.start(writer.run)
                    await tg.start(dispatcher._flusher)
                    await tg.start(dispatcher._outcome_pump)
                    for endpoint, sock in sockets.items():
                        await tg.start(dispatcher._receiver, endpoint)
                        await tg.start(network.watch, sock, dispatcher._wake_send.clone())
                        network.connect(sock, endpoint)  # after watch: no handshake missed
                    try:
                        yield dispatcher
                    except BaseException as exc:
                        body_error = exc
                        raise
                    else:
                        if drain_timeout > 0:
                            with anyio.move_on_after(drain_timeout):
                                await dispatcher.wait_idle()
                    finally:
                        tg.cancel_scope.cancel()
            finally:
                dispatcher._task_group = None
                dispatcher._shutdown()
                if writer is not None:
                    writer.close()
    except BaseExceptionGroup as group:
        # Task groups (ours and zmq-anyio's) wrap the block's own exception in groups;
        # when nothing else went wrong, the caller gets their exception back as it was.
        if body_error is not None and _only(group, body_error):
            unwrapped = body_error
        else:
            ours = _sole_error(group)
            if ours is None:
                raise
            unwrapped = ours
    finally:
        if own_context and ctx is not None:
            ctx.destroy(linger=0)
    if unwrapped is not None:
        raise unwrapped


def _only(group: BaseExceptionGroup[BaseException], error: BaseException) -> bool:
    """Whether ``group`` holds ``error`` and nothing else but cancellations."""
    cancelled = anyio.get_cancelled_exc_class()
    leaves = _leaves(group)
    return error in leaves and all(e is error or isinstance(e, cancelled) for e in leaves)


def _sole_error(group: BaseExceptionGroup[BaseException]) -> BacktestQueueError | None:
    """The group's only error if it is one of ours (and the rest cancellations)."""
    cancelled = anyio.get_cancelled_exc_class()
    errors = [e for e in _leaves(group) if not isinstance(e, cancelled)]
    if len(errors) == 1 and isinstance(errors[0], BacktestQueueError):
        return errors[0]
    return None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
