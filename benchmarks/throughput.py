"""Pipelined request/reply throughput: baselines and the dispatcher, one function each.

Every variant runs the same loop against the same echo service (in its own process):
put ``window`` requests in flight, then send one more each time a reply arrives, until
``n`` replies are back; only that loop is timed (connection set-up and a warm-up round
trip are not). Baselines send pre-encoded bodies and do not decode the replies; the
dispatcher variants encode each request and decode each reply, as the library does.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
import zmq
import zmq.asyncio
import zmq_anyio

from backtest_queue.dispatcher import Dispatcher, open_dispatcher
from backtest_queue.policy import BacktestQueue
from backtest_queue.protocol import BacktestRequest, decode_message, encode_message

from .services import ServiceStats

__all__ = [
    "NOWAIT_VARIANTS",
    "STORE_VARIANTS",
    "VARIANTS",
    "Target",
    "Timing",
    "Variant",
    "nowait_available",
    "store_available",
    "variants",
]

Backend = Literal["trio", "asyncio"]
_BACKENDS: tuple[Backend, ...] = ("trio", "asyncio")


@dataclass(frozen=True, slots=True)
class Target:
    """What a variant sends, and where.

    Attributes:
        endpoint: the echo service's endpoint.
        requests: the requests (dispatcher variants submit these); the last one is
            not timed (the warm-up round trip).
        bodies: the same requests encoded (baselines send these).
        replies: one result body per request (for the no-I/O rows).
        window: requests kept in flight.
        service_stats: asks the echo service for its counters (blocking round trip).
    """

    endpoint: str
    requests: list[BacktestRequest]
    bodies: list[bytes]
    replies: list[bytes]
    window: int
    service_stats: Callable[[], ServiceStats] | None


@dataclass(frozen=True, slots=True)
class Timing:
    """One timed run.

    Attributes:
        messages: request/reply round trips in the timed loop.
        seconds: wall time of the timed loop.
        cpu_s: this process's CPU time over the loop (all threads, libzmq's included).
        service_cpu_s: the echo service's CPU time over the loop (``None``: no service).
        loop_cpu_s: the CPU time of the thread that ran the loop (``time.thread_time``):
            the event loop's, all the Python work; the rest of ``cpu_s`` is libzmq's I/O
            thread. Close to ``seconds``, the loop thread is what bounds the rate.
    """

    messages: int
    seconds: float
    cpu_s: float
    service_cpu_s: float | None
    loop_cpu_s: float

    @property
    def rate(self) -> float:
        """Round trips per second."""
        return self.messages / self.seconds


class _Clock:
    """Times one loop: wall, our CPU (and the loop thread's), the service's CPU.

    Start and stop it in the thread that runs the loop (every variant does).
    """

    def __init__(self, target: Target) -> None:
        self._stats = target.service_stats
        self._service0: ServiceStats | None = None
        self._t0 = self._c0 = self._l0 = 0.0

    def start(self) -> None:
        self._service0 = self._stats() if self._stats is not None else None
        self._c0 = time.process_time()
        self._l0 = time.thread_time()
        self._t0 = time.perf_counter()

    def stop(self, messages: int) -> Timing:
        seconds = time.perf_counter() - self._t0
        loop = time.thread_time() - self._l0
        cpu = time.process_time() - self._c0
        service = None
        if self._stats is not None and self._service0 is not None:
            service = self._stats().cpu_s - self._service0.cpu_s
        return Timing(messages, seconds, cpu, service, loop)


# -- 1. raw blocking pyzmq ----------------------------------------------------------


def raw_pyzmq(target: Target) -> Timing:
    """Blocking pyzmq DEALER, one ``send_multipart``/``recv_multipart`` per message."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(target.endpoint)
        send, recv = sock.send_multipart, sock.recv_multipart
        bodies, window = target.bodies, target.window
        for body in bodies[:window]:  # warm-up round trips
            send([b"", body])
        for _ in bodies[:window]:
            recv()
        clock = _Clock(target)
        clock.start()
        n = len(bodies)
        sent = min(window, n)
        for body in bodies[:sent]:
            send([b"", body])
        got = 0
        while got < n:
            recv()
            got += 1
            if sent < n:
                send([b"", bodies[sent]])
                sent += 1
        return clock.stop(n)
    finally:
        ctx.destroy(linger=0)


# -- 2. zmq.asyncio -------------------------------------------------------------------


async def _zmq_asyncio(target: Target) -> Timing:
    ctx = zmq.asyncio.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(target.endpoint)
        bodies, window = target.bodies, target.window
        for body in bodies[:window]:
            await sock.send_multipart([b"", body])
        for _ in bodies[:window]:
            await sock.recv_multipart()
        clock = _Clock(target)
        clock.start()
        n = len(bodies)
        sent = min(window, n)
        for body in bodies[:sent]:
            await sock.send_multipart([b"", body])
        got = 0
        while got < n:
            await sock.recv_multipart()
            got += 1
            if sent < n:
                await sock.send_multipart([b"", bodies[sent]])
                sent += 1
        return clock.stop(n)
    finally:
        ctx.destroy(linger=0)


def zmq_asyncio_echo(target: Target) -> Timing:
    """``zmq.asyncio`` DEALER, one awaited send and receive per message (asyncio loop)."""
    return asyncio.run(_zmq_asyncio(target))


# -- 3. naive zmq-anyio ----------------------------------------------------------------


async def _zmq_anyio_naive(target: Target) -> Timing:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(target.endpoint)
        async with zmq_anyio.Socket(raw) as sock:
            bodies, window = target.bodies, target.window
            for body in bodies[:window]:
                await sock.asend_multipart([b"", body])
            for _ in bodies[:window]:
                await sock.arecv_multipart()
            clock = _Clock(target)
            clock.start()
            n = len(bodies)
            sent = min(window, n)
            for body in bodies[:sent]:
                await sock.asend_multipart([b"", body])
            got = 0
            while got < n:
                await sock.arecv_multipart()
                got += 1
                if sent < n:
                    await sock.asend_multipart([b"", bodies[sent]])
                    sent += 1
            return clock.stop(n)
    finally:
        ctx.destroy(linger=0)


# -- 4. the dispatcher -----------------------------------------------------------------


def _settings(n: int) -> dict[str, Any]:
    return {
        "flush_interval": 3600.0,
        "rate": None,
        "capacity": n + 16,
        "result_timeout": 600.0,
        "max_attempts": 1,
    }


async def _warm_up(d: Dispatcher, request: BacktestRequest) -> None:
    with anyio.fail_after(20):
        await d.wait_connected()
        state = await d.submit(request)
        outcome = await d.wait(state.request_id)
    if not outcome.ok:
        raise RuntimeError(f"warm-up request failed: {outcome.reason} {outcome.detail}")


async def _dispatcher_window(target: Target, *, store: bool = False) -> Timing:
    """The caller keeps ``window`` requests in flight (``max_pending=None``).

    With ``store``, the dispatcher keeps its queue in a fresh SQLite file (``store=``)
    and the run sends a tenth of the messages.
    """
    if store:  # a commit per submit: a tenth of the messages is plenty
        k = max(2, len(target.requests) // 10)
        requests = [*target.requests[: k - 1], target.requests[-1]]
        target = Target(target.endpoint, requests, [], [], target.window, target.service_stats)
    with tempfile.TemporaryDirectory(prefix="bq-bench-") as tmp:
        extra: dict[str, Any] = {"store": Path(tmp) / "queue.sqlite"} if store else {}
        return await _dispatcher_window_in(target, extra)


async def _dispatcher_window_in(target: Target, extra: dict[str, Any]) -> Timing:
    requests, window = target.requests, target.window
    n = len(requests) - 1  # requests[-1] is the warm-up
    settings = {**_settings(n), **extra}
    async with open_dispatcher([target.endpoint], max_pending=None, **settings) as d:
        await _warm_up(d, requests[-1])
        clock = _Clock(target)
        clock.start()
        sent = min(window, n)
        for request in requests[:sent]:
            await d.submit(request)
        got = failed = 0
        async for outcome in d.outcomes:
            got += 1
            failed += not outcome.ok
            if sent < n:
                await d.submit(requests[sent])
                sent += 1
            if got == n:
                break
        timing = clock.stop(n)
    if failed:
        raise RuntimeError(f"{failed} of {n} requests failed")
    return timing


async def _dispatcher_window_many(target: Target) -> Timing:
    """Like the caller window with a store, but the caller hands over whole batches with
    ``submit_many`` (one commit per batch): each wake-up it takes every outcome that is
    ready and submits their replacements together."""
    with tempfile.TemporaryDirectory(prefix="bq-bench-") as tmp:
        requests, window = target.requests, target.window
        n = len(requests) - 1  # requests[-1] is the warm-up
        settings = {**_settings(n), "store": Path(tmp) / "queue.sqlite"}
        async with open_dispatcher([target.endpoint], max_pending=None, **settings) as d:
            await _warm_up(d, requests[-1])
            clock = _Clock(target)
            clock.start()
            sent = min(window, n)
            await d.submit_many(requests[:sent])
            got = failed = 0
            while got < n:
                ready = [await d.outcomes.receive()]
                while True:
                    try:
                        ready.append(d.outcomes.receive_nowait())
                    except anyio.WouldBlock:
                        break
                got += len(ready)
                failed += sum(not o.ok for o in ready)
                refill = requests[sent : min(n, sent + len(ready))]
                if refill:
                    await d.submit_many(refill)
                    sent += len(refill)
            timing = clock.stop(n)
    if failed:
        raise RuntimeError(f"{failed} of {n} requests failed")
    return timing


async def _dispatcher_bulk(target: Target, *, paced: bool) -> Timing:
    """The caller submits all ``n`` from one task while another reads the outcomes.

    ``paced``: ``max_pending=window``, the policy paces the sends (the flusher is kicked
    when a slot frees). Otherwise ``max_pending=None`` and only the socket's high-water
    mark does (``EAGAIN``, blocked socket, ``wait_writable``).
    """
    requests = target.requests
    n = len(requests) - 1
    max_pending = target.window if paced else None
    async with open_dispatcher([target.endpoint], max_pending=max_pending, **_settings(n)) as d:
        await _warm_up(d, requests[-1])
        clock = _Clock(target)
        clock.start()
        got = failed = 0

        async def read() -> None:
            nonlocal got, failed
            async for outcome in d.outcomes:
                got += 1
                failed += not outcome.ok
                if got == n:
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            for request in requests[:n]:
                await d.submit(request)
        timing = clock.stop(n)
    if failed:
        raise RuntimeError(f"{failed} of {n} requests failed")
    return timing


def nowait_available() -> bool:
    """Whether the dispatcher has ``submit_nowait`` (proposed in benchmarks/README.md)."""
    return hasattr(Dispatcher, "submit_nowait")


async def _dispatcher_window_nowait(target: Target) -> Timing:
    """The row 4 loop, batched per wake-up: each wake-up drains every outcome ready
    (``receive_nowait``) and hands over their replacements with ``submit_nowait``."""
    requests, window = target.requests, target.window
    n = len(requests) - 1
    async with open_dispatcher([target.endpoint], max_pending=None, **_settings(n)) as d:
        await _warm_up(d, requests[-1])
        submit_nowait: Callable[[BacktestRequest], object] = d.submit_nowait  # type: ignore[attr-defined]
        receive, receive_nowait = d.outcomes.receive, d.outcomes.receive_nowait
        clock = _Clock(target)
        clock.start()
        sent = min(window, n)
        for request in requests[:sent]:
            submit_nowait(request)
        got = failed = 0
        while got < n:
            outcome = await receive()
            while True:
                got += 1
                failed += not outcome.ok
                if sent < n:
                    submit_nowait(requests[sent])
                    sent += 1
                try:
                    outcome = receive_nowait()
                except anyio.WouldBlock:
                    break
        timing = clock.stop(n)
    if failed:
        raise RuntimeError(f"{failed} of {n} requests failed")
    return timing


def _on(backend: Backend, fn: Callable[[Target], Coroutine[Any, Any, Timing]]) -> Runner:
    def run(target: Target) -> Timing:
        return anyio.run(fn, target, backend=backend)

    return run


def store_available() -> bool:
    """Whether ``backtest_queue.store`` exists and ``open_dispatcher`` takes ``store=``."""
    if importlib.util.find_spec("backtest_queue.store") is None:
        return False
    return "store" in inspect.signature(open_dispatcher).parameters


# -- no-I/O reference rows ---------------------------------------------------------------


def codec_only(target: Target) -> Timing:
    """``encode_message(request)`` + ``decode_message(reply)`` per message, no I/O."""
    replies = target.replies
    requests = target.requests[: len(replies)]
    clock = _Clock(Target("", [], [], [], 0, None))
    clock.start()
    for request, reply in zip(requests, replies, strict=True):
        encode_message(request)
        decode_message(reply)
    return clock.stop(len(requests))


def policy_only(target: Target) -> Timing:
    """``BacktestQueue``: ``enqueue`` + ``flush`` + ``on_result`` per message, no I/O."""
    requests = target.requests
    queue: BacktestQueue[BacktestRequest] = BacktestQueue(
        capacity=len(requests) + 1, max_pending=None, clock=time.monotonic
    )
    queue.on_connected(0.0)
    clock = _Clock(Target("", [], [], [], 0, None))
    clock.start()
    t = 0.0
    for request in requests:
        queue.enqueue(request)
        for sent in queue.flush(t):
            queue.on_result(sent.request_id, t)
        t += 1e-6
    return clock.stop(len(requests))


Runner = Callable[[Target], Timing]


@dataclass(frozen=True, slots=True)
class Variant:
    """One row of the throughput table.

    Attributes:
        key: a stable identifier (JSON key).
        label: what the table shows.
        run: runs one timed loop.
        needs_service: whether it talks to the echo service.
        section: the table section it belongs to.
    """

    key: str
    label: str
    run: Runner
    needs_service: bool = True
    section: str = "throughput"


VARIANTS: tuple[Variant, ...] = (
    Variant("raw_pyzmq", "1. raw blocking pyzmq echo", raw_pyzmq),
    Variant("zmq_asyncio", "2. zmq.asyncio echo (asyncio)", zmq_asyncio_echo),
    *(
        Variant(f"zmq_anyio_{b}", f"3. naive zmq-anyio echo ({b})", _on(b, _zmq_anyio_naive))
        for b in _BACKENDS
    ),
    *(
        Variant(
            f"dispatcher_{b}", f"4. dispatcher, caller window ({b})", _on(b, _dispatcher_window)
        )
        for b in _BACKENDS
    ),
    *(
        Variant(
            f"dispatcher_bulk_{b}",
            f"4b. dispatcher, bulk, max_pending=window ({b})",
            _on(b, partial(_dispatcher_bulk, paced=True)),
        )
        for b in _BACKENDS
    ),
    *(
        Variant(
            f"dispatcher_bulk_hwm_{b}",
            f"4c. dispatcher, bulk, max_pending=None ({b})",
            _on(b, partial(_dispatcher_bulk, paced=False)),
        )
        for b in _BACKENDS
    ),
    Variant("codec_only", "ref: encode+decode only, no I/O", codec_only, needs_service=False),
    Variant("policy_only", "ref: policy core only, no I/O", policy_only, needs_service=False),
)

NOWAIT_VARIANTS: tuple[Variant, ...] = tuple(
    Variant(
        f"dispatcher_nowait_{b}",
        f"4d. dispatcher, caller window, submit_nowait ({b})",
        _on(b, _dispatcher_window_nowait),
    )
    for b in _BACKENDS
)

STORE_VARIANTS: tuple[Variant, ...] = tuple(
    Variant(
        f"dispatcher_store_{b}",
        f"7. dispatcher + SQLite store, caller window ({b})",
        _on(b, partial(_dispatcher_window, store=True)),
        section="durable",
    )
    for b in _BACKENDS
) + tuple(
    Variant(
        f"dispatcher_store_many_{b}",
        f"7b. dispatcher + SQLite store, submit_many batches ({b})",
        _on(b, _dispatcher_window_many),
        section="durable",
    )
    for b in _BACKENDS
)


def variants() -> tuple[Variant, ...]:
    """The variants to run: :data:`VARIANTS`, plus those whose feature exists."""
    return (
        VARIANTS
        + (NOWAIT_VARIANTS if nowait_available() else ())
        + (STORE_VARIANTS if store_available() else ())
    )
