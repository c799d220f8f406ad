"""A stub backtest service on a real ROUTER socket, for dispatcher tests.

It speaks the real wire protocol over real ZeroMQ sockets but does no backtest work:
each test decides what it answers (a result, nothing, garbage, duplicates).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import zmq

from backtest_queue.protocol import (
    BacktestRequest,
    BacktestResult,
    Metrics,
    Ping,
    Pong,
    decode_message,
    encode_message,
)
from backtest_queue.testing import free_tcp_endpoint
from backtest_queue.transport import ConnectionEvent, open_socket, run_monitor

__all__ = ["STUB_FINGERPRINT", "StubService", "echo", "free_tcp_endpoint", "result_for",
           "silent", "stub_service"]  # fmt: skip

Reply = Callable[[BacktestRequest], list[bytes]]


#: The content fingerprint the stub services report for every dataset.
STUB_FINGERPRINT = "stub-data-v1"


def result_for(request: BacktestRequest, sharpe: float = 1.0) -> bytes:
    """Encode a plausible result body for ``request``."""
    metrics = Metrics(strategy_name=request.strategy.name, sharpe=sharpe, trades=3, bars=100)
    result = BacktestResult(
        request_id=request.request_id, result=metrics, data_fingerprint=STUB_FINGERPRINT
    )
    return encode_message(result)


def echo(request: BacktestRequest) -> list[bytes]:
    """Answer every request with one result."""
    return [result_for(request)]


def silent(request: BacktestRequest) -> list[bytes]:
    """Never answer."""
    return []


@dataclass
class StubService:
    """What the stub saw. ``received`` holds (anyio time, request_id) per request read."""

    endpoint: str
    received: list[tuple[float, str]] = field(default_factory=list)
    up: anyio.Event = field(default_factory=anyio.Event)
    up_at: float | None = None
    _changed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def ids(self) -> list[str]:
        return [rid for _, rid in self.received]

    def record(self, now: float, request_id: str) -> None:
        self.received.append((now, request_id))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_received(self, n: int) -> None:
        """Wait until at least ``n`` requests were read (bound it with ``fail_after``)."""
        while len(self.received) < n:
            await self._changed.wait()


@asynccontextmanager
async def stub_service(
    endpoint: str,
    reply: Reply = echo,
    *,
    options: dict[int, Any] | None = None,
    read: bool = True,
    context: zmq.Context[Any] | None = None,
    pong_delay: float = 0.0,
) -> AsyncIterator[StubService]:
    """Bind a ROUTER on ``endpoint`` and answer requests with ``reply`` until the block ends.

    With ``read=False`` it binds but never reads (a service whose pipes fill up).
    ``pong_delay``: seconds it takes to answer a PING (a slow link or a busy service).
    Closing the block closes the socket: requesters see a disconnect. ``context``: use
    this pyzmq context (e.g. one with a ZAP authenticator) instead of a private one.
    """
    stub = StubService(endpoint)
    ctx: zmq.Context[Any] = zmq.Context() if context is None else context
    opts = {zmq.LINGER: 0, zmq.ROUTER_MANDATORY: 1, **(options or {})}
    events_send, events = anyio.create_memory_object_stream[ConnectionEvent](16)

    async def watch() -> None:
        async for event in events:
            if event.kind == "up" and not stub.up.is_set():
                stub.up_at = event.at
                stub.up.set()

    try:
        with events:
            async with (
                open_socket(ctx, zmq.ROUTER, name="stub", options=opts, bind=endpoint) as router,
                anyio.create_task_group() as tg,
            ):

                async def send_later(frames: list[bytes]) -> None:
                    await anyio.sleep(pong_delay)
                    router.try_send(frames)

                async def serve() -> None:
                    while True:
                        for frames in await router.receive_batch():
                            now = anyio.current_time()
                            identity, body = frames[0], frames[-1]
                            message = decode_message(body)
                            if isinstance(message, Ping):  # the dispatcher asks for fingerprints
                                fps = {"EURUSD-H1": STUB_FINGERPRINT}
                                pong = Pong(request_id=message.request_id, fingerprints=fps)
                                answer = [identity, b"", encode_message(pong)]
                                if pong_delay:
                                    tg.start_soon(send_later, answer)
                                else:
                                    router.try_send(answer)
                                continue
                            assert isinstance(message, BacktestRequest)
                            stub.record(now, message.request_id)
                            for out in reply(message):
                                router.try_send([identity, b"", out])

                await tg.start(run_monitor, ctx, router, events_send)
                tg.start_soon(watch)
                if read:
                    tg.start_soon(serve)
                try:
                    yield stub
                finally:
                    tg.cancel_scope.cancel()
    finally:
        if context is None:
            ctx.destroy(linger=0)
