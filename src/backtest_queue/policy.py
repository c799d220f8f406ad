"""The sans-IO policy core: :class:`BacktestQueue`.

It decides what is sent when, and nothing else: no sockets, no awaits, no hidden clock.
The I/O shell (:mod:`backtest_queue.dispatcher`) feeds it events and does the I/O it asks
for, in the manner of h11's protocol state machine:

* the shell reports connections (:meth:`~BacktestQueue.on_connected`,
  :meth:`~BacktestQueue.on_disconnected`) and what each may hold
  (:meth:`~BacktestQueue.set_credit`), replies (:meth:`~BacktestQueue.on_result`,
  :meth:`~BacktestQueue.on_error`) and failed sends (:meth:`~BacktestQueue.send_failed`);
* the core answers with the requests to send (:meth:`~BacktestQueue.flush`,
  :meth:`~BacktestQueue.maybe_flush`), the requests that failed for good
  (:meth:`~BacktestQueue.expire`) and when it next needs attention
  (:meth:`~BacktestQueue.next_deadline_at`).

Every time-dependent method takes ``now`` (seconds on a monotonic clock); ``None`` reads
the clock injected at construction (:func:`time.monotonic` by default).

A request is in exactly one place at a time: the send queue (FIFO, not yet handed to a
service), the pending table (handed to a service, awaiting its reply, with a deadline),
or done (a result arrived) / failed (error reply, retries exhausted, or drained at
shutdown). ``stats().enqueued == queued + pending + results + failed`` always holds.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from heapq import heapify, heappop, heappush
from typing import Final, Generic, Literal

from .errors import DuplicateRequest, QueueFull, UsageError
from .policy_types import FailedRequest, HasRequestId, QueueStats, R, Throttle
from .ratelimit import TokenBucket
from .settings import check_count, check_number

__all__ = [
    "DEFAULT_CONNECTION",
    "BacktestQueue",
    "FailedRequest",
    "HasRequestId",
    "QueueStats",
    "Throttle",
]

#: The connection name used when the shell has only one connection.
DEFAULT_CONNECTION: Final = "default"
# How many resolved ids are remembered to tell a duplicate reply from an unknown one.
_RESOLVED_MEMORY: Final = 100_000

_QUEUED: Final = 0
_PENDING: Final = 1
_DONE: Final = 2


class _Entry(Generic[R]):
    __slots__ = (
        "attempts", "connection", "deadline_at", "request", "request_id", "send_seq", "state"
    )  # fmt: skip

    def __init__(self, request: R) -> None:
        self.request = request
        self.request_id = request.request_id
        self.attempts = 0
        self.state = _QUEUED
        self.deadline_at = math.inf
        self.send_seq = 0  # which hand-over the live deadline belongs to (0: none)
        self.connection = DEFAULT_CONNECTION


class BacktestQueue(Generic[R]):
    """The send queue, pending table and rate limiter, as a pure synchronous object.

    Args:
        capacity: most requests the send queue holds; :meth:`enqueue` raises
            :class:`~backtest_queue.QueueFull` beyond it. Requests put back after a
            deadline or a disconnect are never refused. An int >= 1; default 5000.
        max_pending: most requests in flight at once, an int >= 1 (``None``: no cap).
            Default 64.
        rate: most requests handed to services per second, finite and > 0 (``None``: no
            limit).
        burst: token-bucket size in requests (how many may go at once after a pause);
            finite and >= 1; default ``max(1, rate)``. Only with ``rate``.
        flush_interval: seconds between periodic flushes (:meth:`maybe_flush`), >= 0.
            Default 1.0. With 0, every :meth:`maybe_flush` call flushes and
            :meth:`next_deadline_at` names no periodic tick (after the first), so a shell
            flushes on its events (connects, freed slots, tokens) only.
        result_timeout: seconds a handed-over request may wait for its reply before it is
            retried or fails, on its first attempt; finite and > 0. Default 60.0.
        retry_backoff: each later attempt waits this many times longer than the one
            before (attempt ``n`` waits ``result_timeout * retry_backoff ** (n - 1)``), so a
            slow service gets more time instead of the same timeout again. Finite and
            >= 1; default 2.0.
        max_attempts: how many times a request may be handed to a service, counting the
            first; an int >= 1. Default 3.
        clock: the monotonic clock, in seconds, read when a method gets ``now=None``.

    Raises:
        UsageError: a setting has the wrong type (``bool`` is not a count, ``"8"`` is not
            a number), is NaN or infinite, or is out of range; or ``burst`` is given
            without ``rate``. The message names the setting, the value given and what is
            accepted.
    """

    def __init__(
        self,
        *,
        capacity: int = 5000,
        max_pending: int | None = 64,
        rate: float | None = None,
        burst: float | None = None,
        flush_interval: float = 1.0,
        result_timeout: float = 60.0,
        max_attempts: int = 3,
        retry_backoff: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_count("capacity", capacity)
        check_count("max_pending", max_pending, allow_none=True)
        check_number("rate", rate, unit="requests per second", minimum=0.0, exclusive=True,
                     allow_none=True)  # fmt: skip
        check_number("burst", burst, unit="requests", minimum=1.0, allow_none=True)
        check_number("flush_interval", flush_interval, unit="seconds", minimum=0.0)
        check_number("result_timeout", result_timeout, unit="seconds", minimum=0.0,
                     exclusive=True)  # fmt: skip
        check_count("max_attempts", max_attempts)
        check_number("retry_backoff", retry_backoff, unit="times (a factor)", minimum=1.0)
        if not callable(clock):
            raise UsageError(f"clock must be a callable returning seconds; got {clock!r}")
        if burst is not None and rate is None:
            raise UsageError(
                f"burst={burst!r} needs a rate (requests per second); give rate= too, "
                "or leave burst out"
            )
        # Stored as plain int/float (an accepted numpy or Fraction value is converted).
        self.capacity = int(capacity)
        self.max_pending = None if max_pending is None else int(max_pending)
        self.rate = None if rate is None else float(rate)
        self.flush_interval = float(flush_interval)
        self.result_timeout = float(result_timeout)
        self.max_attempts = int(max_attempts)
        self.retry_backoff = float(retry_backoff)
        self._clock = clock
        self.last_flush = -math.inf
        # When maybe_flush may next flush: stored as an absolute time and compared with
        # ``now >= _flush_due_at``, never recomputed as ``now - last_flush``, so that the
        # instant next_deadline_at() names is one at which the check passes (issue 16).
        self._flush_due_at = -math.inf
        # The periodic tick next_deadline_at() hands out: _flush_due_at, except that a
        # zero flush_interval has no tick after the first (it would be "now" forever).
        self._tick_at = -math.inf
        self._latest_now = -math.inf
        # The bucket starts full, at the first time it is given (no clock read here).
        self._bucket = (
            None
            if rate is None
            else TokenBucket(
                rate=rate, burst=max(1.0, rate) if burst is None else burst, now=-math.inf
            )
        )
        self.burst = None if self._bucket is None else self._bucket.burst
        self._live: dict[str, _Entry[R]] = {}
        self._queue: deque[_Entry[R]] = deque()  # may hold resolved entries; skipped lazily
        self._queued = 0
        self._pending: dict[str, dict[str, _Entry[R]]] = {}  # connection -> id -> entry
        self._pending_count = 0
        # The deadlines, one (deadline_at, send_seq, entry) item per hand-over, in two
        # stores ordered by (deadline_at, send_seq): a FIFO for every hand-over whose
        # deadline is not earlier than the last one there (first attempts: time only
        # moves on, so nearly all), and a heap for the rest (retries' longer waits). An
        # item is live while its entry is pending under that very hand-over
        # (entry.send_seq); stale ones (resolved, put back, re-sent) are skipped lazily
        # and compacted away. Results mostly come in send order, so the stale items are
        # at the FIFO's front: dropping one is a popleft, not a heappop.
        self._deadline_fifo: deque[tuple[float, int, _Entry[R]]] = deque()
        self._deadlines: list[tuple[float, int, _Entry[R]]] = []
        self._seq = 0
        self._up: set[str] = set()
        # connection -> its credit (most requests in flight there); absent: no limit.
        self._credit: dict[str, int] = {}
        self._resolved: set[str] = set()
        self._resolved_order: deque[str] = deque()
        self._enqueued = self._sent = self._send_failures = self._results = 0
        self._errors = self._retries = self._failed = self._unknown = self._duplicates = 0
        self._flushes = self._late_replies = self._late_results = 0

    # -- time ------------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        """Return ``now`` (or the clock), never earlier than a time already seen."""
        t = self._clock() if now is None else now
        if t < self._latest_now:
            return self._latest_now
        self._latest_now = t
        return t

    # -- state -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether at least one connection is up (a service completed a handshake)."""
        return bool(self._up)

    @property
    def queued(self) -> int:
        """Requests in the send queue."""
        return self._queued

    @property
    def pending(self) -> int:
        """Requests in flight."""
        return self._pending_count

    def state_of(self, request_id: str) -> Literal["queued", "pending"] | None:
        """Return where a live request is, or ``None`` if it is unknown or resolved."""
        entry = self._live.get(request_id)
        if entry is None:
            return None
        return "queued" if entry.state == _QUEUED else "pending"

    def attempts_of(self, request_id: str) -> int:
        """Return how many times a live request was handed to a service (0 if not live)."""
        entry = self._live.get(request_id)
        return 0 if entry is None else entry.attempts

    def connection_of(self, request_id: str) -> str | None:
        """Return the connection a pending request was handed to (``None`` if not pending)."""
        entry = self._live.get(request_id)
        if entry is None or entry.state != _PENDING:
            return None
        return entry.connection

    def credit_of(self, connection: str) -> int | None:
        """Return the credit set for ``connection`` (``None``: no per-connection limit)."""
        return self._credit.get(connection)

    def pending_on(self, connection: str) -> int:
        """Return how many requests are in flight on ``connection`` (0 if unknown)."""
        on_conn = self._pending.get(connection)
        return 0 if on_conn is None else len(on_conn)

    def __repr__(self) -> str:
        cap = "inf" if self.max_pending is None else str(self.max_pending)
        link = "connected" if self._up else "disconnected"
        return f"<BacktestQueue queued={self._queued} pending={self._pending_count}/{cap} {link}>"

    def stats(self) -> QueueStats:
        """Return a frozen snapshot of the counters (see :class:`QueueStats`)."""
        return QueueStats(
            queued=self._queued,
            pending=self._pending_count,
            max_pending=self.max_pending,
            capacity=self.capacity,
            connected=bool(self._up),
            connections=len(self._up),
            enqueued=self._enqueued,
            sent=self._sent,
            send_failures=self._send_failures,
            results=self._results,
            errors=self._errors,
            retries=self._retries,
            failed=self._failed,
            unknown_results=self._unknown,
            duplicate_results=self._duplicates,
            late_replies=self._late_replies,
            late_results=self._late_results,
            flushes=self._flushes,
            last_flush=self.last_flush,
        )

    statistics = stats

    # -- intake ----------------------------------------------------------------------

    def enqueue(self, request: R) -> None:
        """Append a request to the back of the send queue.

        Raises:
            QueueFull: the queue already holds ``capacity`` requests; nothing changed.
            DuplicateRequest: a request with this ``request_id`` is queued or pending.

        An id whose request was already resolved may be used again; a late reply to the
        old one then resolves the new one, so prefer fresh ids (the default ones are).
        """
        if self._queued >= self.capacity and request.request_id not in self._live:
            raise QueueFull(self.capacity)
        self._append(request)

    def enqueue_restored(self, request: R) -> None:
        """Append a request restored from a durable store, ignoring ``capacity``.

        Raises:
            DuplicateRequest: a request with this ``request_id`` is queued or pending.
        """
        self._append(request)

    def _append(self, request: R) -> None:
        rid = request.request_id
        if rid in self._live:
            raise DuplicateRequest(rid)
        entry = _Entry(request)
        self._live[rid] = entry
        self._queue.append(entry)
        self._queued += 1
        self._enqueued += 1

    # -- connections -----------------------------------------------------------------

    def on_connected(self, now: float | None = None, connection: str = DEFAULT_CONNECTION) -> None:
        """Record that ``connection`` is up (its ZMTP handshake succeeded).

        The shell should :meth:`flush` right after: that is the connect-event flush.
        """
        self._now(now)
        self._up.add(connection)
        self._pending.setdefault(connection, {})

    def set_credit(self, connection: str, credit: int | None) -> None:
        """Set how many requests may be in flight on ``connection`` at once (its credit).

        :meth:`flush` hands a connection a request only while its in-flight count is below
        its credit (and the total below ``max_pending``), and picks, among the
        connections that are up, the one with the most free credit (``credit - in
        flight``; a connection without a credit has unlimited free credit); ties go to
        the least loaded. A credit below what is in flight there now takes nothing back:
        those requests stay pending, and the connection gets nothing new until enough of
        them are answered. The credit is kept across :meth:`on_disconnected` /
        :meth:`on_connected` until set again (a shell whose peer may have restarted sets
        it again at reconnect). The shell should :meth:`flush` after raising a credit.

        Args:
            connection: the connection's name, up or not.
            credit: requests in flight there at most, an int >= 1; ``None``: no
                per-connection limit (the default for every connection), only
                ``max_pending`` applies.

        Raises:
            UsageError: ``credit`` is not ``None`` nor an int >= 1; nothing changed.
        """
        check_count("credit", credit, allow_none=True)
        if credit is None:
            self._credit.pop(connection, None)
        else:
            self._credit[connection] = int(credit)

    def on_disconnected(
        self,
        now: float | None = None,
        connection: str = DEFAULT_CONNECTION,
        *,
        requeue: bool = True,
    ) -> list[FailedRequest[R]]:
        """Record that ``connection`` went down.

        Args:
            now: seconds, monotonic.
            connection: the connection's name, as given to :meth:`on_connected`.
            requeue: put the requests pending on that connection back at the front of the
                send queue now (their service may have died with them), each counting
                as an attempt; ``False`` leaves them to their deadlines.

        Returns:
            The requests that had used their last attempt, failed with reason
            ``"disconnected"``.
        """
        self._now(now)
        self._up.discard(connection)
        if not requeue:
            return []
        on_conn = self._pending.get(connection)
        if not on_conn:
            return []
        entries = list(on_conn.values())  # insertion order = send order
        on_conn.clear()
        self._pending_count -= len(entries)
        return self._retry_or_fail(entries, "disconnected")

    # -- flushing --------------------------------------------------------------------

    def flush(self, now: float | None = None, limit: int | None = None) -> list[R]:
        """Hand over requests: pop them FIFO while connected and not throttled.

        Each returned request is recorded as pending on a connection (the one that is up
        with the most free credit, ties to the least loaded; a retry never goes back to
        its last connection while another is up, since the one that did not answer may
        be a half-open peer: it waits for room on the others; see :meth:`set_credit` and
        :meth:`connection_of`) with the deadline
        ``now + result_timeout`` (times ``retry_backoff ** (attempt - 1)`` on a retry).
        The shell must send each one, and report any it could not send with
        :meth:`send_failed`.

        Args:
            now: seconds, monotonic.
            limit: hand over at most this many (``None``: as many as allowed), so a
                shell can send a first chunk before handing over the rest.

        Returns:
            The requests to send, oldest first; empty when disconnected or throttled
            (``max_pending`` reached, every connection up used its credit, or no token).
        """
        t = self._now(now)
        if not self._up or not self._queued:
            return []
        out: list[R] = []
        bucket, max_pending, pending = self._bucket, self.max_pending, self._pending
        timeout = self.result_timeout
        credited = bool(self._credit)
        single = next(iter(self._up)) if len(self._up) == 1 and not credited else None
        queue, fifo, heap, seq = self._queue, self._deadline_fifo, self._deadlines, self._seq
        fifo_last = fifo[-1][0] if fifo else -math.inf
        # Counted in locals, stored once at the end: nothing called in the loop reads them.
        queued, pending_count = self._queued, self._pending_count
        todo = queued if limit is None else min(limit, queued)  # one pop per hand-over
        try:
            while todo > 0:
                if max_pending is not None and pending_count >= max_pending:
                    break
                avoid = None if single else self._avoid()
                if credited:
                    picked = self._pick(avoid)
                    if picked is None:
                        break  # every connection it may go to has used its credit
                    conn = picked
                elif single:
                    conn = single
                else:
                    conn = min((c for c in self._up if c != avoid), key=lambda c: len(pending[c]))
                if bucket is not None and not bucket.try_take(t):
                    break
                todo -= 1
                entry = queue.popleft()
                while entry.state != _QUEUED:  # resolved while queued: dropped lazily
                    entry = queue.popleft()
                queued -= 1
                entry.state = _PENDING
                attempts = entry.attempts = entry.attempts + 1
                deadline = t + timeout if attempts == 1 else self._deadline_at(t, attempts)
                entry.deadline_at = deadline
                entry.connection = conn
                pending[conn][entry.request_id] = entry
                pending_count += 1
                seq += 1
                entry.send_seq = seq
                if deadline >= fifo_last:
                    fifo.append((deadline, seq, entry))
                    fifo_last = deadline
                else:
                    heappush(heap, (deadline, seq, entry))
                out.append(entry.request)
        finally:
            self._queued, self._pending_count, self._seq = queued, pending_count, seq
        if out:
            self._sent += len(out)
            self._flushes += 1
        return out

    def maybe_flush(self, now: float | None = None) -> list[R]:
        """The periodic flush, gated by ``flush_interval`` (the original per-cycle contract).

        Returns ``[]`` at once, leaving ``last_flush`` alone, when the send queue is empty
        or before the next tick (``last_flush + flush_interval``, computed once when
        ``last_flush`` is set and compared as stored: so at the very instant
        :meth:`next_deadline_at` names for the tick, the tick is due). Otherwise sets
        ``last_flush = now`` and returns :meth:`flush` (which is empty while disconnected).
        """
        t = self._now(now)
        if not self._queued or t < self._flush_due_at:
            return []
        self.last_flush = t
        interval = self.flush_interval
        if interval > 0:
            due = t + interval
            # An interval below the clock's resolution at t would name t itself again.
            self._flush_due_at = self._tick_at = due if due > t else math.nextafter(t, math.inf)
        else:  # every call flushes; a tick at "now" forever would spin the flusher
            self._flush_due_at, self._tick_at = t, math.inf
        return self.flush(t)

    def send_failed(self, request_ids: Iterable[str], now: float | None = None) -> None:
        """Put back requests the shell could not send (``EAGAIN``, cancelled mid-send).

        They return to the **front** of the send queue in the given order, their attempt
        not counted. Ids that are not pending are ignored.
        """
        self._now(now)
        back: list[_Entry[R]] = []
        for rid in request_ids:
            entry = self._live.get(rid)
            if entry is None or entry.state != _PENDING:
                continue
            del self._pending[entry.connection][rid]
            self._pending_count -= 1
            entry.attempts -= 1
            entry.state = _QUEUED  # now, so an id given twice is not put back twice
            back.append(entry)
        self._send_failures += len(back)
        self._sent -= len(back)
        self._push_front(back)

    # -- replies ---------------------------------------------------------------------

    # Which attempt does a reply answer? The wire carries only the request_id, so the
    # core tells attempts apart by the connection a reply came in on: a reply from the
    # connection the request is pending on answers the current attempt; any other reply
    # (the request is queued for a re-send, or pending on another connection) answers an
    # earlier one. A result is a result whichever attempt produced it: the first wins.
    # An error or "unavailable" decides only the attempt it answers, so a late one is
    # ignored and counted (late_replies). The limit: two attempts on the SAME connection
    # (a re-send after a deadline to the same service) cannot be told apart without an
    # attempt field on the wire; a late error then decides the current attempt.

    def on_result(
        self, request_id: str, now: float | None = None, *, connection: str | None = None
    ) -> R | None:
        """Resolve a request by its result and free its pending slot.

        A result from any attempt resolves it, also a late one for a request already put
        back in the send queue (its deadline passed, or its service disconnected) or
        pending on another connection since; that is counted in ``late_results``.

        Args:
            request_id: the reply's ``request_id``.
            now: seconds, monotonic.
            connection: the connection the reply came in on (``None``: unknown, taken to
                be the one the request is pending on); used for counting only.

        Returns:
            The request, or ``None`` for an unknown or already-resolved id (counted in
            ``unknown_results`` / ``duplicate_results``; never raises).
        """
        resolved = self.on_result_with_attempts(request_id, now, connection=connection)
        return None if resolved is None else resolved[0]

    def on_result_with_attempts(
        self, request_id: str, now: float | None = None, *, connection: str | None = None
    ) -> tuple[R, int] | None:
        """:meth:`on_result`, also returning how many times the request was handed to a
        service (what :meth:`attempts_of` said just before): one call per result for a
        shell that reports both.

        Returns:
            ``(request, attempts)``, or ``None`` as :meth:`on_result`. Never raises.
        """
        self._now(now)
        entry = self._live.get(request_id)
        if entry is None:
            self._count_unknown(request_id)
            return None
        if entry.state != _PENDING or (connection is not None and connection != entry.connection):
            self._late_results += 1
        self._resolve(entry)
        self._results += 1
        return entry.request, entry.attempts

    def on_error(
        self, request_id: str, now: float | None = None, *, connection: str | None = None
    ) -> R | None:
        """Resolve a pending request by an error reply (it failed for good), free its slot.

        Only a reply to the current attempt decides it: an error for a request that is
        queued for a re-send, or that came in on another connection than the one it is
        pending on, answers an earlier attempt. It is ignored and counted in
        ``late_replies``; the request carries on.

        Limit: the wire carries no attempt number, so two attempts on the *same*
        connection (a re-send after a deadline to the same service) cannot be told
        apart: a late error from the first then decides the second.

        Args:
            request_id: the reply's ``request_id``.
            now: seconds, monotonic.
            connection: the connection the reply came in on (``None``: unknown, taken to
                be the one the request is pending on).

        Returns:
            The request, or ``None`` for an unknown, already-resolved (counted in
            ``unknown_results`` / ``duplicate_results``) or late id (``late_replies``).
            Never raises.
        """
        self._now(now)
        entry = self._live.get(request_id)
        if entry is None:
            self._count_unknown(request_id)
            return None
        if not self._answers_current(entry, connection):
            self._late_replies += 1
            return None
        self._resolve(entry)
        self._errors += 1
        self._failed += 1
        return entry.request

    def retry(
        self, request_id: str, now: float | None = None, *, connection: str | None = None
    ) -> FailedRequest[R] | None:
        """Put a pending request back because its service said it could not run it.

        Like a missed deadline, without the wait: it goes back to the **front** of the
        send queue with its attempt counted, or fails with reason ``"unavailable"`` after
        ``max_attempts``. An unknown or already-resolved id is counted (as an unknown or
        duplicate reply) and ignored. A late reply (the request is queued, or pending on
        another connection than ``connection``) is counted in ``late_replies`` and
        ignored: it answers an earlier attempt, not the current one. (The limit of
        :meth:`on_error` applies: attempts on one connection cannot be told apart.)

        Args:
            request_id: the reply's ``request_id``.
            now: seconds, monotonic.
            connection: the connection the reply came in on (``None``: unknown, taken to
                be the one the request is pending on).

        Returns:
            The failure when that was its last attempt, else ``None``.
        """
        self._now(now)
        entry = self._live.get(request_id)
        if entry is None:
            self._count_unknown(request_id)
            return None
        if not self._answers_current(entry, connection):
            self._late_replies += 1
            return None
        del self._pending[entry.connection][request_id]
        self._pending_count -= 1
        failed = self._retry_or_fail([entry], "unavailable")
        return failed[0] if failed else None

    @staticmethod
    def _answers_current(entry: _Entry[R], connection: str | None) -> bool:
        """Whether a reply from ``connection`` answers the entry's current attempt."""
        return entry.state == _PENDING and connection in (None, entry.connection)

    def expire(self, now: float | None = None) -> list[FailedRequest[R]]:
        """Release pending requests whose deadline is at or before ``now``.

        Each goes back to the **front** of the send queue (in deadline order) with its
        attempt counted, or, after ``max_attempts``, fails with reason ``"timeout"``.

        Returns:
            The requests that failed for good.
        """
        t = self._now(now)
        expired: list[_Entry[R]] = []
        fifo, heap = self._deadline_fifo, self._deadlines
        while True:  # both stores merged, in (deadline_at, send_seq) order
            if fifo and fifo[0][0] <= t and not (heap and heap[0] < fifo[0]):
                _, seq, entry = fifo.popleft()
            elif heap and heap[0][0] <= t:
                _, seq, entry = heappop(heap)
            else:
                break
            if entry.state != _PENDING or entry.send_seq != seq:
                continue  # resolved, put back or re-sent since: a stale deadline
            del self._pending[entry.connection][entry.request_id]
            self._pending_count -= 1
            expired.append(entry)
        return self._retry_or_fail(expired, "timeout") if expired else []

    def drain(self) -> list[R]:
        """Remove every queued and pending request and return them: queued ones first
        (FIFO), then pending ones in the order they were handed over.

        For shutdown: each counts as failed; the shell reports them to their callers.
        """
        out: list[R] = []
        while self._queued:
            entry = self._pop_front()
            out.append(entry.request)
            self._finish(entry)
        pending = sorted(
            (e for on_conn in self._pending.values() for e in on_conn.values()),
            key=lambda e: e.send_seq,
        )
        for entry in pending:  # in the order they were handed over
            out.append(entry.request)
            self._finish(entry)
        for on_conn in self._pending.values():
            on_conn.clear()
        self._pending_count = 0
        self._queue.clear()
        self._deadline_fifo.clear()
        self._deadlines.clear()
        self._failed += len(out)
        return out

    # -- throttling and deadlines ----------------------------------------------------

    def throttle(self, now: float | None = None) -> Throttle:
        """Say whether, and why, a flush would stop now (see :class:`Throttle`)."""
        t = self._now(now)
        pending_full = not self._has_room()
        rate_wait = 0.0 if self._bucket is None else self._bucket.seconds_until_token(t)
        reason: Literal["pending", "rate"] | None
        if pending_full:
            reason = "pending"
            retry_after = max(rate_wait, max(0.0, self._earliest_deadline() - t))
        elif rate_wait > 0:
            reason, retry_after = "rate", rate_wait
        else:
            reason, retry_after = None, 0.0
        return Throttle(reason, self._pending_count, self.max_pending, self.rate, retry_after)

    def next_deadline_at(self, now: float | None = None) -> float:
        """Return when the shell should next call in, absent new events.

        ``inf``: never; ``-inf``: now (the queue is not empty and :meth:`maybe_flush` has
        never run).

        The earliest of: the next periodic flush (``last_flush + flush_interval``, when
        the queue is not empty; none after the first with ``flush_interval=0``), the next
        rate-limit token (when connected and only the rate limit holds the queue back)
        and the earliest pending deadline.

        Each is a stored absolute time, and the check that acts on it compares
        ``now >= that time``: a shell that calls :meth:`expire`, :meth:`maybe_flush` and
        :meth:`flush` at the instant returned always makes progress there (something is
        sent or expires, or the next deadline is later than that instant). It never has
        to wake twice at one instant for nothing, which under a virtual clock that only
        moves when every task sleeps (trio's ``MockClock(autojump_threshold=0)``) would
        spin forever.
        """
        t = self._now(now)
        at = self._earliest_deadline()
        if self._queued:
            at = min(at, self._tick_at)
            if self._up and self._bucket is not None and self._has_room():
                at = min(at, self._bucket.next_token_at(t))
        return at

    # -- internals -------------------------------------------------------------------

    def _avoid(self) -> str | None:
        """The connection the front request must not go back to: the last one of a
        retry, while another connection is up (the one whose reply did not come may be
        a half-open peer the heartbeat has not caught yet; the retry waits for room on
        the others rather than go back). ``None``: any will do."""
        if len(self._up) < 2:
            return None
        front = self._front()
        return front.connection if front.attempts and front.connection in self._up else None

    def _pick(self, avoid: str | None = None) -> str | None:
        """The connection that is up, other than ``avoid``, with the most free credit
        (ties: the least loaded, then the set's order, as without credits); ``None`` if
        none has any."""
        credit, pending = self._credit, self._pending
        best: str | None = None
        best_key = (0.0, 0)
        for conn in self._up:
            if conn == avoid:
                continue
            limit = credit.get(conn)
            load = len(pending[conn])
            free = math.inf if limit is None else float(limit - load)
            if free <= 0:
                continue
            key = (-free, load)
            if best is None or key < best_key:
                best, best_key = conn, key
        return best

    def _has_room(self) -> bool:
        """Whether ``max_pending`` and the credits leave room for one more hand-over
        (no connection up counts as room: the reason to wait is then not "pending")."""
        if self.max_pending is not None and self._pending_count >= self.max_pending:
            return False
        if not (self._credit and self._up):
            return True
        return self._pick(self._avoid() if self._queued else None) is not None

    def _deadline_at(self, t: float, attempt: int) -> float:
        """The reply deadline of an attempt handed over at ``t`` (stored, compared as is)."""
        try:
            return t + self.result_timeout * self.retry_backoff ** (attempt - 1)
        except OverflowError:  # a backoff beyond any float: no deadline at all
            return math.inf

    def _earliest_deadline(self) -> float:
        fifo, heap = self._deadline_fifo, self._deadlines
        while fifo:
            _, seq, entry = fifo[0]
            if entry.state == _PENDING and entry.send_seq == seq:
                break
            fifo.popleft()
        while heap and (heap[0][2].state != _PENDING or heap[0][2].send_seq != heap[0][1]):
            heappop(heap)
        if fifo:
            return min(fifo[0][0], heap[0][0]) if heap else fifo[0][0]
        return heap[0][0] if heap else math.inf

    def _front(self) -> _Entry[R]:
        """The first queued entry, left in place (stale ones before it are dropped)."""
        queue = self._queue
        while queue[0].state != _QUEUED:
            queue.popleft()
        return queue[0]

    def _pop_front(self) -> _Entry[R]:
        queue = self._queue
        while True:
            entry = queue.popleft()
            if entry.state == _QUEUED:
                self._queued -= 1
                return entry

    def _push_front(self, entries: list[_Entry[R]]) -> None:
        for entry in entries:
            entry.state = _QUEUED
            entry.deadline_at = math.inf
            entry.send_seq = 0
        self._queue.extendleft(reversed(entries))
        self._queued += len(entries)

    def _retry_or_fail(
        self, entries: list[_Entry[R]], reason: Literal["timeout", "disconnected", "unavailable"]
    ) -> list[FailedRequest[R]]:
        failed: list[FailedRequest[R]] = []
        retry: list[_Entry[R]] = []
        for entry in entries:
            if entry.attempts >= self.max_attempts:
                failed.append(FailedRequest(entry.request, reason, entry.attempts))
                self._finish(entry)
            else:
                retry.append(entry)
        self._failed += len(failed)
        self._retries += len(retry)
        self._push_front(retry)
        self._compact_deadlines()
        return failed

    def _resolve(self, entry: _Entry[R]) -> None:
        """Take a live entry out of the queue or the pending table, for good."""
        if entry.state == _PENDING:
            del self._pending[entry.connection][entry.request_id]
            self._pending_count -= 1
        else:  # queued again after a deadline or disconnect: a late result still counts
            self._queued -= 1
        self._finish(entry)
        if len(self._deadline_fifo) + len(self._deadlines) > 2 * self._pending_count + 1024:
            self._compact_deadlines()

    def _count_unknown(self, request_id: str) -> None:
        if request_id in self._resolved:
            self._duplicates += 1
        else:
            self._unknown += 1

    def _finish(self, entry: _Entry[R]) -> None:
        entry.state = _DONE
        rid = entry.request_id
        del self._live[rid]
        self._resolved.add(rid)
        self._resolved_order.append(rid)
        if len(self._resolved_order) > _RESOLVED_MEMORY:
            old = self._resolved_order.popleft()
            if old not in self._live:
                self._resolved.discard(old)

    def _compact_deadlines(self) -> None:
        """Drop stale deadline entries so memory stays O(pending), not O(sent)."""
        if len(self._deadline_fifo) + len(self._deadlines) > 2 * self._pending_count + 1024:
            self._deadline_fifo = deque(
                item
                for item in self._deadline_fifo
                if item[2].state == _PENDING and item[2].send_seq == item[1]
            )
            self._deadlines = [
                item
                for item in self._deadlines
                if item[2].state == _PENDING and item[2].send_seq == item[1]
            ]
            heapify(self._deadlines)
