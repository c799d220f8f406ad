"""The sending side of the dispatcher: the flusher task and every hand-over to sockets.

A base class of :class:`~backtest_queue.Dispatcher` (its state is the dispatcher's):

* the **flusher** waits on a memory channel of connection events and kicks inside a
  cancel scope whose deadline comes from the policy core (next periodic flush, next
  rate-limit token, next pending deadline). A connect event flushes at once; an expired
  interval runs ``maybe_flush``; a freed pending slot or a writable socket kicks it
  (kicks coalesce: many kicks before it runs wake it once); expired deadlines are
  retried or reported as failures. While unread outcomes fill the outcome book it hands
  nothing over and lets no deadline expire (backpressure);
* sends are non-blocking (``send_batch``); what could not go is put back at the front of
  the send queue, and a socket at its high-water mark is routed around until writable;
* **credit**: at every connect the dispatcher sends a PING and keeps the service at
  ``_CREDIT_BEFORE_PONG`` (1) request in flight until the PONG says its ``credit``
  (none in the PONG: no per-service limit). One request, not zero, so a new service
  starts working at once and nothing stalls; not more, so a service that turns out to be
  small is not handed a backlog (the whole queue, up to ``max_pending``, at the connect
  flush) before it could say so. The PONG is one round trip away. A service that does
  not answer within ``_PONG_WAIT`` seconds gets no per-service limit (as before credit).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .delivery import OutcomeBook
from .policy import BacktestQueue, FailedRequest
from .protocol import BacktestRequest, Ping, encode_message, new_request_id
from .transport import ConnectionEvent, Requester, SendStatus

if TYPE_CHECKING:
    from .metrics import RequesterMetrics

__all__: list[str] = []

log = logging.getLogger("backtest_queue")

_FLUSH_CHUNK: Final = 128
_PONG_WAIT: Final = 1.0  # seconds to wait for a PONG before a service counts as up without one
#: In flight at a service between its connect and its PONG (see the module docstring).
_CREDIT_BEFORE_PONG: Final = 1
#: Handshakes refused in a row (no success between) after which an endpoint counts as
#: refusing: one without detail can be a service dying mid-handshake, two in a row are
#: keys that do not fit. One definitive refusal (ConnectionEvent.definitive) is enough.
REFUSALS_TO_GIVE_UP: Final = 2


@dataclass(frozen=True, slots=True)
class _Kick:
    """A coalescing wake-up for the flusher (a slot freed, a socket became writable)."""


_KICK: Final = _Kick()


class _Sending:
    """The flusher and the hand-over to sockets (mixed into the dispatcher)."""

    _queue: BacktestQueue[BacktestRequest]
    _sockets: dict[str, Requester]
    #: The endpoint, when there is one: every request handed over is pending on it
    #: (the policy's connections are the endpoints), so no lookup per request.
    _sole: str | None
    _book: OutcomeBook
    _wake_send: MemoryObjectSendStream[ConnectionEvent | _Kick]
    _wake_receive: MemoryObjectReceiveStream[ConnectionEvent | _Kick]
    _kicked: bool
    _room: anyio.Event
    _room_waiters: int
    _connected: anyio.Event
    _up: set[str]
    _ready: set[str]
    _blocked: set[str]
    _would_block: int
    _refused: int
    _refusals: dict[str, int]  # endpoint -> handshakes refused in a row (since it was up)
    _flusher_wakes_at: float
    _task_group: anyio.abc.TaskGroup | None
    _cache: bool
    metrics: RequesterMetrics | None
    _connects: dict[str, int]  # endpoint -> connect events seen (which PING is current)
    _pong_in: set[str]  # endpoints up whose PONG since their last connect is in
    _bodies: dict[str, bytes]
    _clock: Callable[[], float]  # the backend's clock (backend_clock)

    def _fail(self, failures: list[FailedRequest[BacktestRequest]]) -> None:
        raise NotImplementedError

    def _deliver_cached(self) -> None:
        raise NotImplementedError

    def _read_burst(self) -> None:
        raise NotImplementedError

    def _drain_all(self) -> None:
        raise NotImplementedError

    def _send(self, batch: list[BacktestRequest], trigger: str = "submit") -> int:
        """Send what the policy handed over; put back what could not go. Never blocks."""
        if not batch:
            return 0
        if len(batch) == 1 and self.metrics is None:
            return self._send_one(batch[0], trigger)
        queue = self._queue
        by_connection: dict[str, list[BacktestRequest]] = {}
        if self._sole is not None:
            by_connection[self._sole] = batch
        else:
            for request in batch:
                conn = queue.connection_of(request.request_id)
                assert conn is not None  # flush() just made it pending on a connection
                by_connection.setdefault(conn, []).append(request)
        unsent: list[str] = []
        sent = 0
        for index, (conn, requests) in enumerate(by_connection.items()):
            if index:  # a send before may have applied replies that resolved some of these
                requests = self._still_pending(requests, conn)
            count, status = (0, SendStatus.WOULD_BLOCK)
            if conn not in self._blocked:
                bodies = self._bodies  # kept from validation: no second encoding
                stamps = None
                if self.metrics is not None:  # before: the send may read their replies
                    stamps = self.metrics.sent(requests)
                count, status = self._sockets[conn].send_batch(
                    [b"", bodies.pop(r.request_id, b"") or encode_message(r)] for r in requests
                )
                if count < len(requests) and self.metrics is not None:
                    self.metrics.not_sent(requests[count:], stamps or {})
            sent += count
            if count < len(requests):
                unsent.extend(r.request_id for r in requests[count:])
                if status is SendStatus.WOULD_BLOCK:
                    self._would_block += 1
                    self._block(conn)
        if unsent:
            queue.send_failed(unsent, self._clock())
        if sent:
            self._room_freed()
            log.debug("sent %d requests (%s)", sent, trigger)
        return sent

    def _send_one(self, request: BacktestRequest, trigger: str) -> int:
        """:meth:`_send` of one request without metrics (one ``await submit`` hands over
        one): the same steps, without grouping by connection or a generator."""
        rid = request.request_id
        conn = self._sole
        if conn is None:
            conn = self._queue.connection_of(rid)
            assert conn is not None  # flush() just made it pending on a connection
        if conn in self._blocked:
            status = SendStatus.WOULD_BLOCK
        else:
            body = self._bodies.pop(rid, b"") or encode_message(request)
            count, status = self._sockets[conn].send_batch(([b"", body],))
            if count:
                if self._room_waiters:
                    self._room_freed()
                log.debug("sent %d requests (%s)", 1, trigger)
                return 1
        if status is SendStatus.WOULD_BLOCK:
            self._would_block += 1
            self._block(conn)
        self._queue.send_failed([rid], self._clock())
        return 0

    def _still_pending(self, requests: list[BacktestRequest], conn: str) -> list[BacktestRequest]:
        """The requests still pending on ``conn``; the others' kept bodies are dropped."""
        queue = self._queue
        kept: list[BacktestRequest] = []
        for request in requests:
            if queue.connection_of(request.request_id) == conn:
                kept.append(request)
            else:
                self._bodies.pop(request.request_id, None)
        return kept

    def _room_freed(self) -> None:
        if self._room_waiters:  # no Event churn per send
            self._room.set()
            self._room = anyio.Event()

    def _rearm_flusher(self, now: float) -> None:
        """Kick the flusher if the policy now needs it earlier than it plans to wake.

        Called after work done outside the flusher (submit, maybe_flush) at ``now``: a
        request handed over there has a deadline, and one queued behind the rate limit a
        token time, that the sleeping flusher does not know about.

        Without asking the policy when nothing is queued (no tick, no token) and the
        flusher wakes within ``result_timeout`` of ``now``: a hand-over at ``now`` has
        its deadline ``result_timeout`` (or more, on a retry) after it, and every earlier
        one since the flusher planned was checked here at its own time (or kicked it).
        """
        queue = self._queue
        wakes_at = self._flusher_wakes_at
        if not queue.queued and wakes_at <= now + queue.result_timeout:
            return
        if queue.next_deadline_at(now) < wakes_at:
            self._kick()

    def _flush(self, now: float, trigger: str) -> int:
        """Flush in chunks, so the first request leaves at once; stop at the first
        chunk that could not all go (EAGAIN: the rest stays queued, not re-queued).
        Nothing is handed over while unread outcomes hold the dispatcher back."""
        total = 0
        while not self._book.full:
            batch = self._queue.flush(now, limit=_FLUSH_CHUNK)
            if not batch:
                break
            sent = self._send(batch, trigger)
            total += sent
            if sent < len(batch) or len(batch) < _FLUSH_CHUNK:
                # A short chunk: the policy gave all it could. A slot freed since (a reply
                # read during the send) kicked the flusher, which sends what it allows.
                break
        if self._book.deferring:
            if self._queue.queued:
                self._book.read_soon()  # what is left may wait for a slot a reply frees
            elif total and trigger != "submit":
                # A batch the flusher sent (submit_nowait's): read the replies waiting
                # in this turn, once a batch, as a send does while a receiver waits on
                # the FD; the caller gets them without a receiver's wake-up. None
                # there: the receivers wait on their sockets for them.
                self._read_burst()
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

    def _set_ready(self, endpoint: str) -> None:
        self._ready.add(endpoint)
        self._connected.set()
        self._connected = anyio.Event()

    def _ping(self, endpoint: str) -> None:
        """Ask a service that came up for its credit and its datasets' fingerprints.

        Until its PONG is in, the service gets ``_CREDIT_BEFORE_PONG`` requests. One that
        does not answer within ``_PONG_WAIT`` seconds gets no per-service limit, and
        (with the result cache) counts as ready all the same (its results still teach
        the fingerprints)."""
        self._connects[endpoint] = connect = self._connects.get(endpoint, 0) + 1
        self._pong_in.discard(endpoint)
        self._queue.set_credit(endpoint, _CREDIT_BEFORE_PONG)
        if self._task_group is None:
            return
        if endpoint not in self._blocked:
            ping = Ping(request_id=f"ping-{new_request_id()}")
            self._sockets[endpoint].send_batch([[b"", encode_message(ping)]])
        self._task_group.start_soon(self._ready_anyway, endpoint, connect)

    def _on_pong(self, endpoint: str, credit: int | None) -> None:
        """Apply a PONG's credit (``None``: no per-service limit) and flush more."""
        if endpoint not in self._up:
            return  # it went down since: the next connect pings again
        self._pong_in.add(endpoint)
        if credit != self._queue.credit_of(endpoint):
            log.info("%s takes %s requests in flight", endpoint,
                     "any number of" if credit is None else credit)  # fmt: skip
        self._queue.set_credit(endpoint, credit)
        self._flush_now("credit")

    def _flush_now(self, trigger: str) -> None:
        """Hand over what a new credit allows at once, so that a caller woken by
        ``wait_connected`` finds the connect flush done; then let the flusher re-plan."""
        self._flush(self._clock(), trigger)
        self._kick()

    async def _ready_anyway(self, endpoint: str, connect: int) -> None:
        await anyio.sleep(_PONG_WAIT)
        if endpoint not in self._up or self._connects.get(endpoint) != connect:
            return  # down, or connected again since: that connect's own wait decides
        if endpoint not in self._pong_in:
            log.info("%s did not answer the PING sent at connect within %g s: no limit on "
                     "its requests in flight; its data fingerprints are learned from its "
                     "results", endpoint, _PONG_WAIT)  # fmt: skip
            self._queue.set_credit(endpoint, None)
            self._flush_now("no PONG")
        if endpoint not in self._ready:
            self._set_ready(endpoint)

    async def _flusher(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Flush on connect events, kicks, ticks, tokens and deadlines.

        While unread outcomes fill the book it hands nothing over and lets no deadline
        expire (the replies may be waiting, unread, behind the caller): it applies
        connection events and waits for a kick (room in the book, a submit).
        """
        queue = self._queue
        task_status.started()
        while True:
            now = self._clock()
            if not self._book.full:
                self._expire(now)
            wakes: list[ConnectionEvent | _Kick] = []
            wakes_at = math.inf if self._book.full else queue.next_deadline_at(now)
            self._flusher_wakes_at = wakes_at
            with anyio.move_on_at(wakes_at):
                wakes.append(await self._wake_receive.receive())
            self._flusher_wakes_at = -math.inf  # awake: nobody needs to kick it
            while True:
                try:
                    wakes.append(self._wake_receive.receive_nowait())
                except anyio.WouldBlock:
                    break
            now = self._clock()
            held = self._book.full
            if not held:
                self._expire(now)
            connected_to: list[ConnectionEvent] = []
            self._deliver_cached()
            for wake in wakes:
                if isinstance(wake, _Kick):
                    self._kicked = False
                elif self._apply(wake, now):
                    connected_to.append(wake)
            if held:
                continue
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

    def _expire(self, now: float) -> None:
        """Fail or retry what passed its deadline; first, when one has, apply the
        replies receivers left unread (a reply that came in time is not a timeout)."""
        queue = self._queue
        if self._book.deferring and queue.next_deadline_at(now) <= now:
            self._drain_all()
        self._fail(queue.expire(now))

    def _apply(self, event: ConnectionEvent, now: float) -> bool:
        """Apply a connection event to the policy; return whether a service came up."""
        endpoint = event.source
        if event.kind == "up":
            self._up.add(endpoint)
            self._refusals.pop(endpoint, None)
            if endpoint not in self._blocked:
                self._queue.on_connected(now, endpoint)
            log.info("connected to %s", endpoint)
            self._ping(endpoint)
            self._book.read_soon()  # its PONG is to be read at once
            return True
        if event.kind == "down":
            if self._book.deferring:  # replies that came before it are results
                self._drain_all()
            self._up.discard(endpoint)
            self._ready.discard(endpoint)
            before = self._queue.pending
            failures = self._queue.on_disconnected(now, endpoint, requeue=True)
            log.warning("disconnected from %s; %d pending requests re-queued, %d failed",
                        endpoint, before - self._queue.pending - len(failures),
                        len(failures))  # fmt: skip
            self._fail(failures)
            return False
        self._refused += 1
        before = self._refusals.get(endpoint, 0)
        refusals = REFUSALS_TO_GIVE_UP if event.definitive else before + 1
        self._refusals[endpoint] = max(before, refusals)
        if before == 0:  # once per run of refusals: libzmq may retry every reconnect_ivl
            log.error("handshake with %s refused (check the CURVE keys on both sides)", endpoint)
        if before < REFUSALS_TO_GIVE_UP <= refusals:
            self._connected.set()  # wait_connected raises HandshakeRefused now
            self._connected = anyio.Event()
        return False
