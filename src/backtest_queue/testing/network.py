"""An in-memory network for deterministic tests of code built on the dispatcher.

``open_dispatcher(endpoints, network=MemoryNetwork())`` runs the real dispatcher (policy,
flusher, receivers, outcomes) with no sockets: services are plain functions bound to
endpoint names, replies arrive at once (or after a :class:`~.faults.Faults` latency), and
connect/disconnect events come when a test binds or unbinds a service (or a fault drops
the connection). Combined with trio's ``MockClock(autojump_threshold=0)``,
time-dependent behaviour (periodic flushes, the rate limit, deadlines and retry backoff)
can be asserted to the exact virtual second, in milliseconds of real time.

Like a ROUTER bound to a real endpoint, one fake service serves any number of requesters
(several dispatchers may connect to one endpoint): each requester gets the replies to its
own requests, and all of them see the service come and go.

It is a fake for *wiring* tests; it does not replace tests over real ZeroMQ sockets
(high-water marks and heartbeats are not modelled).

``MemoryNetwork(read_during_send=True)`` also models what the requester's own socket
(:class:`~backtest_queue.fd_socket.FdSocket`) does when a send finds replies
waiting while the receiving task waits: it offers them to the requester's ``on_readable``
hook before that task runs (see :attr:`MemoryNetwork.read_during_send`).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import UsageError
from ..protocol import (
    BacktestRequest,
    BacktestResult,
    ErrorReply,
    Metrics,
    Ping,
    Pong,
    decode_message,
    encode_message,
)
from ..transport import ConnectionEvent, Requester, SendStatus
from .faults import Answer, Faults

__all__ = [
    "ECHO_FINGERPRINT",
    "MemoryNetwork",
    "NetworkObserver",
    "Received",
    "Reply",
    "echo_result",
    "silent",
]

#: The data fingerprint :func:`echo_result` reports (for a dispatcher's result cache).
ECHO_FINGERPRINT = "memory-echo-v1"

#: A fake service: given a request, the reply bodies to send back (none: stay silent).
Reply = Callable[[BacktestRequest], list[bytes]]

EventKind = Literal["up", "down", "refused"]


def echo_result(request: BacktestRequest) -> list[bytes]:
    """A fake service that answers every request with one result (Sharpe 1.0)."""
    metrics = Metrics(strategy_name=request.strategy.name, sharpe=1.0, trades=1)
    result = BacktestResult(
        request_id=request.request_id, result=metrics, data_fingerprint=ECHO_FINGERPRINT
    )
    return [encode_message(result)]


def silent(request: BacktestRequest) -> list[bytes]:
    """A fake service that never answers."""
    return []


@dataclass(frozen=True, slots=True)
class Received:
    """A request a fake service received: when (``anyio.current_time()``), where, which."""

    at: float
    endpoint: str
    request_id: str


class NetworkObserver(Protocol):
    """Told about every hand-over and connection event (what the test kit's checks read).

    Both are called synchronously inside the dispatcher's call, at the virtual instant it
    happens; they must not block or raise.
    """

    def on_send(
        self, requester: Requester, endpoint: str, requests: list[BacktestRequest], now: float
    ) -> None:
        """``requests`` were handed to the service on ``endpoint`` (a batch call; empty
        when the send would block: no service, or it is down)."""

    def on_event(self, requester: Requester, endpoint: str, kind: EventKind, now: float) -> None:
        """``requester`` is told its connection to ``endpoint`` changed."""


@dataclass(eq=False)
class _Scheduled:
    """A reply (``frames``) or a reconnect (``frames is None``) due at ``due``."""

    due: float
    seq: int
    frames: list[bytes] | None
    service: _Service | None = None  # for a reconnect: the incarnation that went down
    cancelled: bool = False

    def __lt__(self, other: _Scheduled) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


@dataclass(eq=False)
class _Service:
    """A bound fake service and its fault state."""

    reply: Reply
    faults: Faults | None
    rng: random.Random
    count: int = 0  # requests since the connection last dropped
    down_until: float | None = None  # a fault dropped the connection (inf: until rebound)
    # replies held back (reorder): who gets each, its entry, when it was due itself
    held: list[tuple[_MemoryRequester, _Scheduled, float]] = field(default_factory=list)

    @property
    def refuses(self) -> bool:
        return self.faults is not None and self.faults.refuse

    def is_up(self, now: float) -> bool:
        return not self.refuses and (self.down_until is None or now >= self.down_until)


@dataclass(eq=False)
class _MemoryRequester:
    name: str
    network: MemoryNetwork
    inbox_send: MemoryObjectSendStream[list[bytes]]
    inbox: MemoryObjectReceiveStream[list[bytes]]
    events: MemoryObjectSendStream[ConnectionEvent] | None = None
    connected: bool = False
    writable: anyio.Event = field(default_factory=anyio.Event)
    schedule: list[_Scheduled] = field(default_factory=list)
    woken: anyio.Event = field(default_factory=anyio.Event)
    stash: list[list[bytes]] = field(default_factory=list)  # received, not yet read
    # read_during_send only: like FdSocket.on_readable (set by whoever reads it)
    on_readable: Callable[[], object] | None = None
    readers: int = 0  # tasks inside wait_readable that have not resumed yet
    offered: int = 0  # times a send found replies and offered them to on_readable
    arrived: anyio.Event = field(default_factory=anyio.Event)  # a reply reached the stash
    _offering: bool = False  # inside on_readable: its own sends do not offer again

    def deliver(self, frames: list[bytes]) -> None:
        """A reply reaches this requester's socket."""
        if self.network.read_during_send:
            self.stash.append(frames)  # readable now, by whoever reads first
            self.arrived.set()
        else:
            self.inbox_send.send_nowait(frames)

    def send_batch(self, messages: Iterable[Sequence[bytes]]) -> tuple[int, SendStatus]:
        network = self.network
        service = network._bound.get(self.name)
        now = anyio.current_time()
        if service is None or not self.connected or not service.is_up(now):
            network._observe_send(self, [], now)
            return 0, SendStatus.WOULD_BLOCK  # like ZMQ_IMMEDIATE=1 with no peer
        sent = 0
        handed: list[BacktestRequest] = []
        batch = list(messages)
        for frames in batch:
            if not service.is_up(now):  # a fault dropped the connection mid-batch
                break
            request = decode_message(frames[-1])
            sent += 1
            if isinstance(request, Ping):  # a dispatcher with a result cache asks at connect
                pong = Pong(request_id=request.request_id, fingerprints=network.fingerprints,
                            credit=network.credits.get(self.name))  # fmt: skip
                self.deliver([b"", encode_message(pong)])
                continue
            assert isinstance(request, BacktestRequest)
            handed.append(request)
            network._serve(self, service, request, now)
        network._observe_send(self, handed, now)
        if network.read_during_send:
            self._offer()
        return sent, (SendStatus.SENT if sent == len(batch) else SendStatus.WOULD_BLOCK)

    def _offer(self) -> None:
        """After a send (read_during_send): replies waiting while a task waits to read go
        to :attr:`on_readable` in this turn, as FdSocket offers them; the waiting
        task, already woken by their arrival, finds what is left."""
        if not (self.stash and self.readers and self.on_readable is not None):
            return
        if self._offering:
            return
        self._offering = True
        self.offered += 1
        try:
            self.on_readable()
        finally:
            self._offering = False

    def receive_nowait(self, max_messages: int = 1024) -> list[list[bytes]]:
        batch = self.stash[:max_messages]
        del self.stash[:max_messages]
        while len(batch) < max_messages:
            try:
                batch.append(self.inbox.receive_nowait())
            except anyio.WouldBlock:
                break
        return batch

    async def wait_readable(self) -> None:
        if self.stash:
            await anyio.lowlevel.checkpoint()
            return
        if not self.network.read_during_send:
            self.stash.append(await self.inbox.receive())  # a checkpoint, cancel-safe
            return
        self.readers += 1  # until this task runs again, as FdSocket's _wanted
        try:
            while not self.stash:  # another task may take what woke this one
                self.arrived = anyio.Event()
                await self.arrived.wait()
        finally:
            self.readers -= 1

    def can_send(self) -> bool:
        service = self.network._bound.get(self.name)
        return self.connected and service is not None and service.is_up(anyio.current_time())

    async def wait_writable(self) -> None:
        while not self.can_send():
            await self.writable.wait()

    def block_writes(self) -> None:
        """Sends would block from now on; waiters wake, see it, and wait again (an event
        replaced under them would never be set)."""
        old, self.writable = self.writable, anyio.Event()
        old.set()

    def emit(self, kind: EventKind) -> None:
        now = anyio.current_time()
        if self.events is None:
            return  # not watched (any more): its dispatcher is closing
        try:
            self.events.send_nowait(ConnectionEvent(kind, self.name, self.name, now))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.events = None  # the dispatcher closed while its requester is still open
            return
        self.network._observe_event(self, kind, now)

    def later(
        self, due: float, frames: list[bytes] | None, service: _Service | None = None
    ) -> _Scheduled:
        entry = _Scheduled(due, next(self.network._seq), frames, service)
        heapq.heappush(self.schedule, entry)
        self.woken.set()
        return entry

    def drop_scheduled(self) -> None:
        """Lose every reply not yet delivered (the connection carrying them closed)."""
        for entry in self.schedule:
            entry.cancelled = True
        self.schedule.clear()

    async def run_schedule(self) -> None:
        """Deliver delayed replies and reconnects when due (the ``watch`` task's work)."""
        while True:
            now = anyio.current_time()
            while self.schedule and self.schedule[0].due <= now:
                entry = heapq.heappop(self.schedule)
                if entry.cancelled:
                    continue
                if entry.frames is not None:
                    self.deliver(entry.frames)
                else:
                    self.network._reconnect(self, entry.service)
            self.woken = anyio.Event()
            with anyio.move_on_at(self.schedule[0].due if self.schedule else math.inf):
                await self.woken.wait()


class MemoryNetwork:
    """Fake services by endpoint name, and the requesters connected to them.

    Attributes:
        services: endpoint -> the bound fake service's reply function.
        received: every request any fake service received, in order.
        lost: every request a ``drop_request`` fault lost on the way (handed over, never
            seen by the service).
        observers: told of every hand-over and connection event (see
            :class:`NetworkObserver`).
        read_during_send: whether sends offer waiting replies to the requester's
            ``on_readable`` hook (see the constructor).
    """

    def __init__(self, *, read_during_send: bool = False) -> None:
        """
        Args:
            read_during_send: model the requester socket's read during a send (default
                off: a reply wakes the receiving task, as before). On: a reply stays in
                the requester until read (by any task); a send that finds replies
                waiting while a task waits in ``wait_readable`` calls the requester's
                ``on_readable`` hook in the sending task's turn, before the waiting task
                runs; the hook's own sends do not offer again. The hook is an attribute
                of each requester, ``None`` until set: set it as the dispatcher sets
                :attr:`FdSocket.on_readable
                <backtest_queue.fd_socket.FdSocket.on_readable>`.
                Replies are instant (or after a fault's latency), so a send finds the
                replies to its own batch: the extreme of a real socket, where the first
                messages of a batch may be answered before the batch has been sent.
        """
        self.read_during_send = read_during_send
        self.services: dict[str, Reply] = {}
        self.received: list[Received] = []
        self.lost: list[Received] = []
        self.observers: list[NetworkObserver] = []
        #: What the fake services' PONG says: data_id -> data fingerprint (set it, e.g. to
        #: ``{"EURUSD-H1": ECHO_FINGERPRINT}``, for a dispatcher's result cache to serve
        #: hits before the first result of a run has taught it the fingerprint).
        self.fingerprints: dict[str, str] = {}
        #: endpoint -> the credit its fake service advertises in PONG (requests one
        #: requester may keep in flight there; the dispatcher keeps to it, as to a real
        #: service's ``--credit``). Endpoints not named advertise none: no per-service limit.
        self.credits: dict[str, int] = {}
        self._bound: dict[str, _Service] = {}
        # endpoint -> the requesters open on it, in opening order (a ROUTER serves many).
        self._requesters: dict[str, list[_MemoryRequester]] = {}
        self._seq = itertools.count()

    def bind(
        self, endpoint: str, reply: Reply = echo_result, *, faults: Faults | None = None
    ) -> None:
        """Bind a fake service; every requester connected to ``endpoint`` sees it come up.

        Args:
            endpoint: any name (the dispatcher's endpoint string).
            reply: what the service answers (default: one result per request).
            faults: how it misbehaves (default: never), seeded per endpoint.

        Raises:
            UsageError: a service is bound to ``endpoint`` already (as binding a real
                endpoint twice fails with ``EADDRINUSE``).
        """
        if endpoint in self.services:
            raise UsageError(f"a fake service is already bound to {endpoint!r}; unbind it first")
        rng = faults.rng(endpoint) if faults is not None else random.Random(0)
        service = _Service(reply, faults, rng)
        self.services[endpoint] = reply
        self._bound[endpoint] = service
        for requester in self._requesters.get(endpoint, ()):
            if requester.connected:
                self._come_up(requester, service)

    def unbind(self, endpoint: str) -> None:
        """Stop the fake service: each requester on it sees a disconnect; replies not yet
        delivered are lost.

        Raises:
            UsageError: no service is bound to ``endpoint``.
        """
        if self.services.pop(endpoint, None) is None:
            raise UsageError(f"no fake service is bound to {endpoint!r}")
        service = self._bound.pop(endpoint)
        for requester in self._requesters.get(endpoint, ()):
            requester.drop_scheduled()
            if requester.connected and service.is_up(anyio.current_time()):
                requester.block_writes()
                requester.emit("down")

    def is_up(self, endpoint: str) -> bool:
        """Whether a service is bound to ``endpoint`` and reachable now (not refusing, no
        fault holding its connection down)."""
        service = self._bound.get(endpoint)
        return service is not None and service.is_up(anyio.current_time())

    # -- the Network protocol (what open_dispatcher calls) ---------------------------

    @asynccontextmanager
    async def _open(self, endpoint: str) -> AsyncIterator[Requester]:
        send, receive = anyio.create_memory_object_stream[list[bytes]](1 << 20)
        with send, receive:
            requester = _MemoryRequester(endpoint, self, send, receive)
            self._requesters.setdefault(endpoint, []).append(requester)
            try:
                yield requester
            finally:
                requester.drop_scheduled()
                others = self._requesters[endpoint]
                others.remove(requester)
                if not others:
                    del self._requesters[endpoint]

    def open_requester(self, endpoint: str) -> AbstractAsyncContextManager[Requester]:
        """Open a requester for ``endpoint`` (a service need not be bound yet)."""
        return self._open(endpoint)

    async def watch(
        self,
        requester: Requester,
        events_out: MemoryObjectSendStream[ConnectionEvent],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Publish ``requester``'s connection events on ``events_out``, and deliver its
        delayed replies, until cancelled."""
        assert isinstance(requester, _MemoryRequester)
        with events_out:
            requester.events = events_out
            task_status.started()
            try:
                await requester.run_schedule()
            finally:
                requester.events = None

    def connect(self, requester: Requester, endpoint: str) -> None:
        """Start connecting ``requester``: it sees the service (if bound) come up."""
        assert isinstance(requester, _MemoryRequester)
        requester.connected = True
        service = self._bound.get(endpoint)
        if service is not None:
            self._come_up(requester, service)

    # -- internals --------------------------------------------------------------------

    def _come_up(self, requester: _MemoryRequester, service: _Service) -> None:
        if service.refuses:
            requester.emit("refused")
        elif service.is_up(anyio.current_time()):
            requester.emit("up")
            requester.writable.set()

    def _reconnect(self, requester: _MemoryRequester, went_down: _Service | None) -> None:
        service = self._bound.get(requester.name)
        now = anyio.current_time()
        if service is not went_down or service is None or not requester.connected:
            return  # unbound or rebound since: the new binding announced itself
        if not service.is_up(now):
            return  # down again since (its own reconnect is scheduled)
        requester.emit("up")
        requester.writable.set()

    def _serve(
        self, requester: _MemoryRequester, service: _Service, request: BacktestRequest, now: float
    ) -> None:
        faults = service.faults
        seen = Received(now, requester.name, request.request_id)
        if faults is None:
            self.received.append(seen)
            for body in service.reply(request):
                requester.deliver([b"", body])
            return
        rng = service.rng
        if faults.chance(rng, faults.drop_request):
            self.lost.append(seen)
        else:
            self.received.append(seen)
            for answer in _answers(faults, rng, service.reply, request):
                self._answer(requester, service, answer, now)
        service.count += 1
        if faults.disconnect_after is not None and service.count >= faults.disconnect_after:
            self._drop_connection(requester.name, service, faults, now)

    def _answer(
        self, requester: _MemoryRequester, service: _Service, answer: Answer, now: float
    ) -> None:
        frames = [b"", answer.body]
        due = now + answer.delay
        if answer.held:
            window = service.faults.reorder_window if service.faults is not None else 0.0
            entry = requester.later(due + window, frames)
            service.held.append((requester, entry, due))
            return
        if answer.delay <= 0.0 and not service.held:
            requester.deliver(frames)
        else:
            requester.later(due, frames)
        for holder, entry, own_due in service.held:  # held back: sent right after this one
            if not entry.cancelled:
                entry.cancelled = True
                holder.later(max(due, own_due), entry.frames)
        service.held.clear()

    def _drop_connection(
        self, endpoint: str, service: _Service, faults: Faults, now: float
    ) -> None:
        back = faults.reconnect_after
        service.down_until = math.inf if back is None else now + back
        service.count = 0
        service.held.clear()
        for requester in self._requesters.get(endpoint, ()):
            requester.drop_scheduled()
            if requester.connected:
                requester.block_writes()
                requester.emit("down")
                if back is not None:
                    requester.later(now + back, None, service)

    def _observe_send(
        self, requester: _MemoryRequester, handed: list[BacktestRequest], now: float
    ) -> None:
        for observer in self.observers:
            observer.on_send(requester, requester.name, handed, now)

    def _observe_event(self, requester: _MemoryRequester, kind: EventKind, now: float) -> None:
        for observer in self.observers:
            observer.on_event(requester, requester.name, kind, now)


def _answers(
    faults: Faults, rng: random.Random, reply: Reply, request: BacktestRequest
) -> list[Answer]:
    """What a faulty service sends back for one request, drawn in a fixed order:
    replacement, latency, then per body drop, duplicate, reorder."""
    replacement = faults.replacement(rng)
    rid = request.request_id
    bodies: list[bytes]
    if replacement == "error":
        bodies = [encode_message(ErrorReply(request_id=rid, code="engine_error",
                                            message="injected fault"))]  # fmt: skip
    elif replacement == "unavailable":
        bodies = [encode_message(ErrorReply(request_id=rid, code="unavailable",
                                            message="injected fault"))]  # fmt: skip
    elif replacement == "garbage":
        bodies = [b"\xffgarbage " + rng.randbytes(6)]
    elif replacement == "unknown_id":
        other = f"unknown-{rng.getrandbits(32):08x}"
        metrics = Metrics(strategy_name=request.strategy.name, sharpe=0.0)
        bodies = [encode_message(BacktestResult(request_id=other, result=metrics))]
    else:
        bodies = reply(request)
    delay = faults.draw_latency(rng)
    answers: list[Answer] = []
    for body in bodies:
        if faults.chance(rng, faults.drop_reply):
            continue
        copies = 2 if faults.chance(rng, faults.duplicate_reply) else 1
        held = faults.chance(rng, faults.reorder)
        answers.extend(Answer(body, delay, held) for _ in range(copies))
    return answers
