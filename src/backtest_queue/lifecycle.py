"""Opening and closing a dispatcher: settings, sockets, the task group, shutdown, errors.

:func:`open_dispatcher` is the one way to make a :class:`~backtest_queue.Dispatcher`. It
checks every setting before anything opens, opens the store (restoring what an earlier
run left), one requester per endpoint, and a task group running the dispatcher's tasks;
on exit it cancels them, gives every request still queued or pending a ``shutdown``
outcome, commits the store's last writes and closes everything. Exceptions come out
unwrapped: the block's own exception as it was raised, one failure of an internal task
(ours, a bug, ``KeyboardInterrupt``) as itself, never a group holding only it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import anyio
import zmq

from .dispatcher import Dispatcher
from .errors import UsageError
from .exception_groups import only, sole_error
from .metrics import MetricsSettings, metrics_settings, open_requester_metrics
from .policy import BacktestQueue
from .protocol import DEFAULT_ENDPOINT, DEFAULT_MAX_MESSAGE_BYTES, BacktestRequest
from .settings import (
    INT32_MAX,
    MAX_HEARTBEAT_IVL,
    MAX_RECONNECT_IVL,
    check_choice,
    check_count,
    check_number,
)
from .store import SqliteStore
from .store_writer import StoreWriter
from .transport import CurveClient, Network, Requester, ZmqNetwork, requester_options
from .unconnected import warn_while_unconnected

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["open_dispatcher"]

log = logging.getLogger("backtest_queue")


def open_dispatcher(
    endpoints: Sequence[str] | str | None = None,
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
    outcome_buffer: float = 10_000,
    drain_timeout: float = 0.0,
    heartbeat_ivl: float = 1.0,
    reconnect_ivl: float = 0.1,
    send_hwm: int = 1000,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    curve: CurveClient | None = None,
    store: str | os.PathLike[str] | None = None,
    store_shared: bool = False,
    store_timeout: float = 30.0,
    cache: bool = True,
    unconnected_warning: float | None = 10.0,
    fingerprints: Mapping[str, str] | None = None,
    context: zmq.Context[Any] | None = None,
    network: Network | None = None,
    metrics: MetricsSettings | int | CollectorRegistry | None = None,
) -> AbstractAsyncContextManager[Dispatcher]:
    """Open a dispatcher: requester sockets, connector, flusher and receivers.

    Use it as ``async with open_dispatcher(...) as d:`` (once: a second ``async with``
    on the same object raises :class:`~backtest_queue.UsageError`). Opening does not wait
    for any service to exist: requests queue until one is up.

    Args:
        endpoints: ZeroMQ endpoints of backtest services (default
            ``["tcp://127.0.0.1:5580"]``; a single string is one endpoint); one DEALER
            socket each. IPv6 addresses go in brackets: ``tcp://[::1]:5580``.
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
        outcome_buffer: unread outcomes (on :attr:`Dispatcher.outcomes`) at which the
            dispatcher stops reading replies and handing requests over until the caller
            reads (backpressure; ``math.inf``: no bound, memory grows with what is unread).
        drain_timeout: seconds to keep flushing and receiving after the block ends
            normally, for outstanding requests to finish; 0 stops at once.
        heartbeat_ivl: ZMTP heartbeat interval in seconds (a silent peer is dropped after
            three intervals).
        reconnect_ivl: seconds between reconnect attempts (backs off to 2 s).
        send_hwm: ZeroMQ send high-water mark per socket, in messages; a send beyond it
            would block, and the request waits at the front of the send queue instead.
        max_message_bytes: largest reply accepted (``ZMQ_MAXMSGSIZE``), in bytes.
        curve: CURVE keys to encrypt and authenticate (``None``: plain TCP).
        store: a SQLite file that keeps the send queue, pending requests and unread
            outcomes durable and caches results by content and data fingerprint (see
            :mod:`backtest_queue.store`). What an earlier run left in it is queued again
            first, and its unread outcomes delivered again on :attr:`Dispatcher.outcomes`.
        store_shared: let other processes open the same store at the same time (they
            share the result cache; each restores only what a dead opener left). By
            default a second opener gets :class:`~backtest_queue.errors.StoreLocked`.
        store_timeout: seconds ``submit`` waits for the store's write lock (held by
            another connection) before raising :class:`~backtest_queue.errors.StoreBusy`.
        cache: serve results from the store's cache (``False``: always run the backtest).
        unconnected_warning: seconds requests may wait queued with no service connected
            before a WARNING says so, once until a service connects (``None``: never);
            see :mod:`backtest_queue.unconnected`.
        fingerprints: ``data_id -> fingerprint`` of the data the services will hold
            (:mod:`backtest_queue.service.fingerprint`), when the caller knows it: the
            store's cache then answers before any service has answered a PING, so a
            caller that starts its own service on data it loaded itself need not start
            it when every result is cached. A service's PONG or result replaces them.
        context: a pyzmq context to use (default: a private one, destroyed on exit).
        network: what opens the requester connections (default: ZeroMQ DEALER sockets,
            :class:`~backtest_queue.transport.ZmqNetwork`); tests pass the in-memory
            :class:`~backtest_queue.testing.MemoryNetwork`. The socket settings above
            apply to ZeroMQ only.
        metrics: Prometheus metrics (the ``metrics`` extra; see ``docs/metrics.md``): a
            port for an HTTP server on 127.0.0.1 answering ``/metrics`` (0: a free port,
            read :attr:`Dispatcher.metrics` ``.port``), a
            ``prometheus_client.CollectorRegistry`` of yours to register in (no server),
            or :class:`~backtest_queue.metrics.MetricsSettings`; ``None``: no metrics.

    Returns:
        An async context manager yielding the :class:`Dispatcher`.

    Raises:
        UsageError: a setting has the wrong type or is out of range (raised here, before
            anything opens), or no endpoints were given, or ``metrics`` is asked for
            without prometheus-client installed.
        StoreError: the store cannot be opened (``StoreLocked``: another live process
            holds it).
        TransportError: an endpoint is malformed, or the metrics server cannot bind its
            port (on entering the block).

    On exit everything still queued or pending gets an outcome with reason ``shutdown``
    and the outcome stream is ended (readers see ``EndOfStream`` after the last one).
    An exception from the block propagates unchanged.
    """
    if isinstance(endpoints, str):
        endpoints = [endpoints]  # one endpoint given as a string, not a list of its letters
    endpoint_list = list(endpoints) if endpoints is not None else [DEFAULT_ENDPOINT]
    if not endpoint_list:
        raise UsageError("open_dispatcher needs at least one endpoint")
    for endpoint in endpoint_list:
        if not isinstance(endpoint, str):
            raise UsageError(f"endpoints must be strings, got {endpoint!r}")
    if len(set(endpoint_list)) != len(endpoint_list):
        raise UsageError(f"endpoints must be distinct, got {endpoint_list!r}")
    check_choice("on_full", on_full, ("wait", "error"))
    # outcome_buffer >= 1: with 0 the book would be full before the first outcome.
    check_count("outcome_buffer", outcome_buffer, minimum=1, allow_inf=True)
    check_number("drain_timeout", drain_timeout, unit="seconds", minimum=0.0, allow_inf=True)
    check_number("store_timeout", store_timeout, unit="seconds", minimum=0.0, allow_inf=True)
    check_number("unconnected_warning", unconnected_warning, unit="seconds", minimum=0.0,
                 exclusive=True, allow_inf=True, allow_none=True)  # fmt: skip
    check_number("heartbeat_ivl", heartbeat_ivl, unit="seconds", minimum=0.0,
                 exclusive=True, maximum=MAX_HEARTBEAT_IVL)  # fmt: skip
    check_number("reconnect_ivl", reconnect_ivl, unit="seconds", minimum=0.0,
                 exclusive=True, maximum=MAX_RECONNECT_IVL)  # fmt: skip
    check_count("send_hwm", send_hwm, minimum=0, maximum=INT32_MAX)
    check_count("max_message_bytes", max_message_bytes, minimum=1, maximum=INT32_MAX)
    known = dict(fingerprints or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in known.items()):
        raise UsageError(f"fingerprints must map data ids to fingerprints (str), got {known!r}")
    for name, flag in (("store_shared", store_shared), ("cache", cache)):
        if not isinstance(flag, bool):
            raise UsageError(f"{name} must be True or False, got {flag!r}")
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
    settings = _Settings(
        endpoints=endpoint_list, queue=queue, on_full=on_full, outcome_buffer=outcome_buffer,
        drain_timeout=drain_timeout, max_message_bytes=max_message_bytes, store=store,
        store_shared=store_shared, store_timeout=store_timeout, cache=cache, fingerprints=known,
        context=context, network=network, unconnected_warning=unconnected_warning,
        metrics=metrics_settings(metrics),
        options=requester_options(
            heartbeat_ivl=heartbeat_ivl, reconnect_ivl=reconnect_ivl, send_hwm=send_hwm,
            max_message_bytes=max_message_bytes, curve=curve,
        ),
    )  # fmt: skip
    return _DispatcherContext(settings)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Settings:
    """Everything :func:`open_dispatcher` checked, for the context to open."""

    endpoints: list[str]
    queue: BacktestQueue[BacktestRequest]
    on_full: Literal["wait", "error"]
    outcome_buffer: float
    drain_timeout: float
    max_message_bytes: int
    store: str | os.PathLike[str] | None
    store_shared: bool
    store_timeout: float
    cache: bool
    fingerprints: dict[str, str]
    context: zmq.Context[Any] | None
    network: Network | None
    unconnected_warning: float | None
    options: dict[int, Any]
    metrics: MetricsSettings | None = None


class _DispatcherContext(AbstractAsyncContextManager[Dispatcher]):
    """The object :func:`open_dispatcher` returns: entered once."""

    def __init__(self, settings: _Settings) -> None:
        self._settings = settings
        self._cm: AbstractAsyncContextManager[Dispatcher] | None = None

    async def __aenter__(self) -> Dispatcher:
        if self._cm is not None:
            raise UsageError(
                "this open_dispatcher(...) was already entered; call open_dispatcher again "
                "for a new dispatcher"
            )
        self._cm = _run(self._settings)
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._cm is not None
        return await self._cm.__aexit__(exc_type, exc, tb)


@asynccontextmanager
async def _run(s: _Settings) -> AsyncIterator[Dispatcher]:
    writer: StoreWriter | None = None
    restored_requests: list[BacktestRequest] = []
    restored = None
    if s.store is not None:
        store = SqliteStore(s.store, shared=s.store_shared)
        try:
            restored = store.restore()
        except BaseException:
            store.close()
            raise
        # The writer waits out another connection's lock itself, in short steps (visible
        # in stats() at once); one SQLite call never blocks longer than this.
        store.set_busy_timeout(min(0.1, s.store_timeout))
        writer = StoreWriter(store)
        restored_requests = restored.requests
        for request in restored_requests:
            s.queue.enqueue_restored(request)
        if restored_requests or restored.outcomes:
            log.info("restored %d undelivered requests and %d unread outcomes from %s",
                     len(restored_requests), len(restored.outcomes), s.store)  # fmt: skip
        if restored.quarantined:
            log.warning("%d rows of %s could not be read back and were quarantined: %s",
                        len(restored.quarantined), s.store,
                        "; ".join(map(str, restored.quarantined[:3])))  # fmt: skip
    network = s.network
    own_context = s.context is None and network is None
    ctx: zmq.Context[Any] | None = None
    if network is None:
        ctx = zmq.Context() if s.context is None else s.context
        network = ZmqNetwork(ctx, s.options)
    body_error: BaseException | None = None
    unwrapped: BaseException | None = None
    try:
        async with AsyncExitStack() as stack:
            sockets: dict[str, Requester] = {}
            for endpoint in s.endpoints:
                sockets[endpoint] = await stack.enter_async_context(
                    network.open_requester(endpoint)
                )
            ids = [r.request_id for r in restored_requests]
            if restored is not None:
                ids += [r.request_id for r, _ in restored.outcomes]
            dispatcher = Dispatcher(
                s.queue, sockets, on_full=s.on_full, outcome_buffer=s.outcome_buffer,
                max_message_bytes=s.max_message_bytes, writer=writer, cache=s.cache,
                store_timeout=s.store_timeout, restored_ids=frozenset(ids),
                fingerprints=s.fingerprints,
            )  # fmt: skip
            if restored is not None:
                dispatcher.quarantined = tuple(restored.quarantined)
                dispatcher._restore(restored.outcomes)
            try:
                if s.metrics is not None:  # served until after the shutdown outcomes
                    await stack.enter_async_context(open_requester_metrics(dispatcher, s.metrics))
                async with anyio.create_task_group() as tg:
                    dispatcher._task_group = tg
                    if writer is not None:
                        await tg.start(writer.run)
                    await tg.start(dispatcher._flusher)
                    if s.unconnected_warning is not None and s.unconnected_warning < math.inf:
                        await tg.start(warn_while_unconnected, dispatcher, s.unconnected_warning)
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
                        if s.drain_timeout > 0:
                            with anyio.move_on_after(s.drain_timeout):
                                await dispatcher.wait_idle()
                    finally:
                        tg.cancel_scope.cancel()
            finally:
                dispatcher._task_group = None
                dispatcher._shutdown()
    except BaseExceptionGroup as group:
        # Task groups (ours and zmq-anyio's) wrap exceptions in groups; when there is
        # one real error (the block's, or one task's) the caller gets it as it was.
        if body_error is not None and only(group, body_error):
            unwrapped = body_error
        else:
            sole = sole_error(group)
            if sole is None:
                raise
            unwrapped = sole
    finally:
        try:
            if writer is not None:
                writer.close()
        finally:
            if own_context and ctx is not None:
                ctx.destroy(linger=0)
    if unwrapped is not None:
        raise unwrapped
