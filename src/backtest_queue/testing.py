"""An in-memory network for deterministic tests of code built on the dispatcher.

``open_dispatcher(endpoints, network=MemoryNetwork())`` runs the real dispatcher (policy,
flusher, receivers, outcomes) with no sockets: services are plain functions bound to
endpoint names, replies arrive at once, and connect/disconnect events come when a test
binds or unbinds a service. Combined with trio's ``MockClock(autojump_threshold=0)``,
time-dependent behaviour (periodic flushes, the rate limit, deadlines and retry backoff)
can be asserted to the exact virtual second, in milliseconds of real time.

Like a ROUTER bound to a real endpoint, one fake service serves any number of requesters
(several dispatchers may connect to one endpoint): each requester gets the replies to its
own requests, and all of them see the service come and go.

It is a fake for *wiring* tests; it does not replace tests over real ZeroMQ sockets
(message loss on disconnect, high-water marks, heartbeats are not modelled).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .errors import UsageError
from .protocol import (
    BacktestRequest,
    BacktestResult,
    Metrics,
    Ping,
    Pong,
    decode_message,
    encode_message,
)
from .transport import ConnectionEvent, Requester, SendStatus

__all__ = ["ECHO_FINGERPRINT", "MemoryNetwork", "Received", "Reply", "echo_result"]

#: The data fingerprint :func:`echo_result` reports (for a dispatcher's result cache).
ECHO_FINGERPRINT = "memory-echo-v1"

#: A fake service: given a request, the reply bodies to send back (none: stay silent).
Reply = Callable[[BacktestRequest], list[bytes]]


def echo_result(request: BacktestRequest) -> list[bytes]:
    """A fake service that answers every request with one result (Sharpe 1.0)."""
    metrics = Metrics(strategy_name=request.strategy.name, sharpe=1.0, trades=1)
    result = BacktestResult(
        request_id=request.request_id, result=metrics, data_fingerprint=ECHO_FINGERPRINT
    )
    return [encode_message(result)]


@dataclass(frozen=True, slots=True)
class Received:
    """A request a fake service received: when (``anyio.current_time()``), where, which."""

    at: float
    endpoint: str
    request_id: str


@dataclass(eq=False)
class _MemoryRequester:
    name: str
    network: MemoryNetwork
    inbox_send: MemoryObjectSendStream[list[bytes]]
    inbox: MemoryObjectReceiveStream[list[bytes]]
    events: MemoryObjectSendStream[ConnectionEvent] | None = None
    connected: bool = False
    writable: anyio.Event = field(default_factory=anyio.Event)

    def send_batch(self, messages: Iterable[Sequence[bytes]]) -> tuple[int, SendStatus]:
        reply = self.network.services.get(self.name)
        if reply is None or not self.connected:
            return 0, SendStatus.WOULD_BLOCK  # like ZMQ_IMMEDIATE=1 with no peer
        sent = 0
        for frames in messages:
            request = decode_message(frames[-1])
            if isinstance(request, Ping):  # a dispatcher with a result cache asks at connect
                pong = Pong(request_id=request.request_id, fingerprints=self.network.fingerprints)
                self.inbox_send.send_nowait([b"", encode_message(pong)])
                sent += 1
                continue
            assert isinstance(request, BacktestRequest)
            self.network.received.append(
                Received(anyio.current_time(), self.name, request.request_id)
            )
            for body in reply(request):
                self.inbox_send.send_nowait([b"", body])
            sent += 1
        return sent, SendStatus.SENT

    async def receive_batch(self, max_messages: int = 1024) -> list[list[bytes]]:
        batch = [await self.inbox.receive()]
        while len(batch) < max_messages:
            try:
                batch.append(self.inbox.receive_nowait())
            except anyio.WouldBlock:
                break
        return batch

    async def wait_writable(self) -> None:
        await self.writable.wait()

    def emit(self, kind: Literal["up", "down"]) -> None:
        if self.events is not None:
            event = ConnectionEvent(kind, self.name, self.name, anyio.current_time())
            self.events.send_nowait(event)


class MemoryNetwork:
    """Fake services by endpoint name, and the requesters connected to them.

    Attributes:
        services: endpoint -> the bound fake service's reply function.
        received: every request any fake service received, in order.
    """

    def __init__(self) -> None:
        self.services: dict[str, Reply] = {}
        self.received: list[Received] = []
        #: What the fake services' PONG says: data_id -> data fingerprint (set it, e.g. to
        #: ``{"EURUSD-H1": ECHO_FINGERPRINT}``, for a dispatcher's result cache to serve
        #: hits before the first result of a run has taught it the fingerprint).
        self.fingerprints: dict[str, str] = {}
        # endpoint -> the requesters open on it, in opening order (a ROUTER serves many).
        self._requesters: dict[str, list[_MemoryRequester]] = {}

    def bind(self, endpoint: str, reply: Reply = echo_result) -> None:
        """Bind a fake service; every requester connected to ``endpoint`` sees it come up.

        Raises:
            UsageError: a service is bound to ``endpoint`` already (as binding a real
                endpoint twice fails with ``EADDRINUSE``).
        """
        if endpoint in self.services:
            raise UsageError(f"a fake service is already bound to {endpoint!r}; unbind it first")
        self.services[endpoint] = reply
        for requester in self._requesters.get(endpoint, ()):
            if requester.connected:
                requester.emit("up")
                requester.writable.set()

    def unbind(self, endpoint: str) -> None:
        """Stop the fake service: each requester on it sees a disconnect; unread replies
        are lost.

        Raises:
            UsageError: no service is bound to ``endpoint``.
        """
        if self.services.pop(endpoint, None) is None:
            raise UsageError(f"no fake service is bound to {endpoint!r}")
        for requester in self._requesters.get(endpoint, ()):
            if requester.connected:
                requester.writable = anyio.Event()
                requester.emit("down")

    @asynccontextmanager
    async def _open(self, endpoint: str) -> AsyncIterator[Requester]:
        send, receive = anyio.create_memory_object_stream[list[bytes]](1 << 20)
        with send, receive:
            requester = _MemoryRequester(endpoint, self, send, receive)
            self._requesters.setdefault(endpoint, []).append(requester)
            try:
                yield requester
            finally:
                others = self._requesters[endpoint]
                others.remove(requester)
                if not others:
                    del self._requesters[endpoint]

    def open_requester(self, endpoint: str) -> AbstractAsyncContextManager[Requester]:
        return self._open(endpoint)

    async def watch(
        self,
        requester: Requester,
        events_out: MemoryObjectSendStream[ConnectionEvent],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        assert isinstance(requester, _MemoryRequester)
        with events_out:
            requester.events = events_out
            task_status.started()
            await anyio.sleep_forever()

    def connect(self, requester: Requester, endpoint: str) -> None:
        assert isinstance(requester, _MemoryRequester)
        requester.connected = True
        if endpoint in self.services:
            requester.emit("up")
            requester.writable.set()
