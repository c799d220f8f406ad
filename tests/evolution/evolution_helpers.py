"""A fake backtest service for the evolution tests: real ROUTER socket, invented metrics.

The metrics are a deterministic function of the strategy (a smooth landscape with an
optimum), so a search against it is reproducible; the *order* of the replies is not:
each batch of requests read is answered in an order shuffled by ``reply_seed``. Some
candidates can be made to fail with an ``engine_error`` reply, or never be answered.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import zmq

from backtest_queue.protocol import (
    BacktestRequest,
    BacktestResult,
    ErrorReply,
    Metrics,
    Ping,
    Pong,
    Strategy,
    decode_message,
    encode_message,
)
from backtest_queue.transport import ConnectionEvent, open_socket, run_monitor

Rule = Callable[[Strategy], bool]


def fake_metrics(request: BacktestRequest) -> Metrics:
    """Invented but deterministic metrics: best near fast=12, slow=60, tp=0.02, no sl.

    ``rsi_reversion`` with ``period > 40`` never trades: Sharpe and drawdown undefined.
    A moving-average cross with ``slow >= 200`` is a lucky few-trade strategy: 5 trades,
    Sharpe 3 above the landscape.
    """
    s = request.strategy
    p = s.params
    trades = 20
    if s.kind == "rsi_reversion":
        if p["period"] > 40:
            return Metrics(strategy_name=s.name, trades=0, bars=100)
        sharpe = 0.5 - abs(p["period"] - 14) / 20 - abs(p["lower"] - 30) / 50
    else:
        sharpe = 1.0 - abs(p["fast"] - 12) / 30 - abs(p["slow"] - 60) / 120
        if s.kind == "ema_cross":
            sharpe += 0.1
        if p["slow"] >= 200:
            sharpe, trades = sharpe + 3.0, 5
    sharpe += 0.3 - abs((s.tp or 0.0) - 0.02) * 10 - (s.sl or 0.0) * 2
    drawdown = -(2.0 + abs(sharpe) * 3 + (s.sl or 0.05) * 20)
    return Metrics(
        strategy_name=s.name,
        sharpe=round(sharpe, 6),
        max_drawdown_pct=round(drawdown, 6),
        return_pct=round(sharpe * 4, 6),
        trades=trades,
        bars=100,
    )


@dataclass
class FakeService:
    """What the fake saw: every request read, and when it first connected."""

    endpoint: str
    requests: list[BacktestRequest] = field(default_factory=list)
    up: anyio.Event = field(default_factory=anyio.Event)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def names(self) -> Counter[str]:
        """How many times each strategy name was requested."""
        return Counter(r.strategy.name for r in self.requests)

    async def wait_received(self, n: int) -> None:
        """Wait until ``n`` requests were read (bound it with ``fail_after``)."""
        while len(self.requests) < n:
            await self._changed.wait()

    def _record(self, request: BacktestRequest) -> None:
        self.requests.append(request)
        self._changed.set()
        self._changed = anyio.Event()


@asynccontextmanager
async def fake_service(
    endpoint: str,
    *,
    reply_seed: int = 0,
    fail: Rule | None = None,
    ignore: Rule | None = None,
) -> AsyncIterator[FakeService]:
    """Bind a ROUTER on ``endpoint`` and answer with :func:`fake_metrics`.

    Args:
        endpoint: where to bind.
        reply_seed: seeds the shuffle of each batch's reply order.
        fail: strategies answered with an ``engine_error`` reply.
        ignore: strategies never answered.
    """
    fake = FakeService(endpoint)
    rng = random.Random(reply_seed)
    ctx: zmq.Context[Any] = zmq.Context()
    options: dict[int, Any] = {zmq.LINGER: 0, zmq.ROUTER_MANDATORY: 1}
    events_send, events = anyio.create_memory_object_stream[ConnectionEvent](16)

    async def watch() -> None:
        async for event in events:
            if event.kind == "up":
                fake.up.set()

    try:
        with events:
            async with (
                open_socket(ctx, zmq.ROUTER, name="fake", options=options, bind=endpoint) as router,
                anyio.create_task_group() as tg,
            ):

                async def serve() -> None:
                    while True:
                        batch = await router.receive_batch()
                        rng.shuffle(batch)
                        for frames in batch:
                            identity, body = frames[0], frames[-1]
                            request = decode_message(body)
                            if isinstance(request, Ping):  # the dispatcher's, at connect
                                pong = Pong(request_id=request.request_id)
                                router.try_send([identity, b"", encode_message(pong)])
                                continue
                            assert isinstance(request, BacktestRequest)
                            fake._record(request)
                            if ignore is not None and ignore(request.strategy):
                                continue
                            reply: BacktestResult | ErrorReply
                            if fail is not None and fail(request.strategy):
                                reply = ErrorReply(
                                    request_id=request.request_id,
                                    code="engine_error",
                                    message="ValueError: the fake engine refuses this one",
                                )
                            else:
                                reply = BacktestResult(
                                    request_id=request.request_id, result=fake_metrics(request)
                                )
                            router.try_send([identity, b"", encode_message(reply)])

                await tg.start(run_monitor, ctx, router, events_send)
                tg.start_soon(watch)
                tg.start_soon(serve)
                try:
                    yield fake
                finally:
                    tg.cancel_scope.cancel()
    finally:
        ctx.destroy(linger=0)
