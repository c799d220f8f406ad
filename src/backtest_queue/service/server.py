"""The backtest service: a ROUTER socket speaking wire protocol v1, a process pool behind it.

Tasks, all in one task group owned by :func:`open_service`:

* **receiver** - reads batches of messages, answers PINGs and bad input at once,
  validates backtest requests and queues them (a bounded queue: when it is full the
  receiver stops reading, and ZeroMQ's high-water marks push back on requesters);
* **runners** - one per slot of the pool (``workers`` plus the backtests it keeps ready
  for its workers, ``prefetch`` per worker: see :mod:`.pool`); each takes a queued
  request, runs it in the pool and turns the outcome into a reply;
* **outbox** - hands replies to ZeroMQ without blocking; a reply the ROUTER refuses
  (requester's pipe full, requester gone: ``ZMQ_ROUTER_MANDATORY``) is held and retried
  until ``reply_timeout``, then dropped, counted and logged (see :mod:`.outbox`);
* **monitor** - counts requester connections and disconnections.

Every request gets exactly one reply (a result or an ``ERROR``) unless the reply has to
be dropped, which is counted and logged - never silent. The exception is a duplicate: a
request whose ``request_id`` is still queued or running for the same requester is
ignored (counted, logged), because the original's reply answers it.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Literal, cast, get_args

import anyio
import anyio.abc
import msgspec
import zmq
from anyio.streams.memory import MemoryObjectReceiveStream

from .. import __version__
from .._ratelog import RateLimitedLog
from ..errors import InvalidMessage, ProtocolError, TransportError, UsageError
from ..exception_groups import sole_error
from ..fd_socket import FdSocket
from ..metrics import MetricsSettings, metrics_settings
from ..pong_fields import DatasetRange
from ..protocol import (
    DEFAULT_ENDPOINT,
    DEFAULT_MAX_MESSAGE_BYTES,
    ERROR_CODES,
    BacktestRequest,
    BacktestResult,
    ErrorCode,
    ErrorReply,
    Message,
    Metrics,
    Ping,
    Pong,
    decode_message,
    encode_message,
    peek_request_id,
)
from ..transport import SendStatus
from .datasets import Catalog, load_catalog
from .engine import BacktestingPyEngine, Engine, EngineError, ServiceUnavailable
from .executor import BacktestExecutor, Executor, LocalPool
from .fingerprint import fingerprint_datasets
from .metrics import ServiceMetrics, open_service_metrics
from .monitor import run_connection_monitor
from .outbox import Dropped, Outbox
from .router_socket import open_router_socket
from .statistics import ServiceStatistics

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Service", "default_credit", "open_service", "service_socket_options"]

log = logging.getLogger("backtest_queue.service")

#: Socket close linger, in seconds: how long libzmq keeps sending queued replies.
LINGER: Final = 1.0
#: ZMTP heartbeat interval and timeout, in seconds: a silent requester is disconnected
#: after the timeout, and replies to it then fail fast instead of waiting on a dead pipe.
HEARTBEAT_INTERVAL: Final = 2.0
HEARTBEAT_TIMEOUT: Final = 6.0
#: Per-requester high-water marks, in messages.
SEND_HWM: Final = 1000
RECEIVE_HWM: Final = 1000
#: The hard cap on one frame, as a multiple of ``max_message_bytes`` (``ZMQ_MAXMSGSIZE``).
HARD_CAP_FACTOR: Final = 2
#: Replies handed to ZeroMQ per outbox round before it yields to other tasks.
_SEND_BUDGET: Final = 1000
#: Error messages are cut to this many characters (they may quote the peer's input).
_MAX_ERROR_TEXT: Final = 300
#: Lines logged per error code per interval (seconds) for bad input; the rest are counted
#: and summarised ("suppressed K similar ... lines").
ERROR_LOG_BURST: Final = 20
ERROR_LOG_INTERVAL: Final = 60.0
#: Control characters (C0, DEL, C1): never in a reply or a log line.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NOT_RUN: Final = "the service is stopping; the backtest was not run; send it again"
_CUT_SHORT: Final = "the service stopped before the backtest finished; send it again"

CounterName = Literal[
    "messages_received",
    "pings",
    "backtests_accepted",
    "duplicates_ignored",
    "bad_frames",
    "invalid_requests",
    "unknown_data",
    "unsupported_versions",
    "too_large",
    "engine_errors",
    "unavailable",
    "backtests_completed",
    "replies_sent",
    "reply_retries",
    "replies_dropped",
    "connections",
    "disconnects",
    "decode_errors",
    "handshakes_refused",
]
_ERROR_COUNTERS: Final[Mapping[str, CounterName]] = {
    "invalid_request": "invalid_requests",
    "unknown_data": "unknown_data",
    "unsupported_version": "unsupported_versions",
    "too_large": "too_large",
    "engine_error": "engine_errors",
    "unavailable": "unavailable",
}
_REPLY_TYPES: Final = {BacktestResult: "BACKTEST_RESULT", ErrorReply: "ERROR", Pong: "PONG"}


def service_socket_options(*, max_message_bytes: int) -> dict[int, Any]:
    """The ROUTER socket options a service uses (before the caller's overrides).

    ``LINGER`` 1 s, ``ROUTER_MANDATORY`` 1, ``MAXMSGSIZE`` = 2 x ``max_message_bytes``,
    ``SNDHWM`` / ``RCVHWM`` 1000 messages, ZMTP heartbeats every 2 s with a 6 s timeout.
    """
    return {
        zmq.LINGER: int(LINGER * 1000),
        zmq.ROUTER_MANDATORY: 1,
        zmq.MAXMSGSIZE: HARD_CAP_FACTOR * max_message_bytes,
        zmq.SNDHWM: SEND_HWM,
        zmq.RCVHWM: RECEIVE_HWM,
        zmq.HEARTBEAT_IVL: int(HEARTBEAT_INTERVAL * 1000),
        zmq.HEARTBEAT_TIMEOUT: int(HEARTBEAT_TIMEOUT * 1000),
        zmq.HEARTBEAT_TTL: int(HEARTBEAT_TIMEOUT * 1000),
    }


def is_loopback(endpoint: str) -> bool:
    """Whether ``endpoint`` is reachable from this host only (loopback TCP, ipc, inproc)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a host name
        return False


def _one_line(text: str) -> str:
    """One line of valid, printable UTF-8 text, at most ``_MAX_ERROR_TEXT`` characters."""
    line = " ".join(text.split())
    line = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line)
    line = line.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    return line if len(line) <= _MAX_ERROR_TEXT else line[: _MAX_ERROR_TEXT - 3] + "..."


def _range_of(catalog: Catalog, data_id: str) -> DatasetRange:
    """The bar count and first/last stamps of a dataset, for ``PONG.ranges``."""
    index = catalog.get(data_id).bars.index
    return DatasetRange(bars=len(index), first=index[0].isoformat(), last=index[-1].isoformat())


def _peer_name(peer: bytes) -> str:
    return peer.hex() or "<empty>"


@dataclass(frozen=True, slots=True)
class _Job:
    peer: bytes
    request: BacktestRequest
    first: int
    stop: int


class Service:
    """A running backtest service; get one from :func:`open_service`.

    Attributes:
        endpoint: the endpoint actually bound (a ``*`` port resolved).
        workers: size of the process pool.
        credit: requests one requester may keep in flight here (running plus queued),
            advertised in every PONG; a credit-aware dispatcher stays within it.
        datasets: the dataset ids it serves, sorted.
        fingerprints: data_id -> content fingerprint of its OHLCV data (see
            :mod:`.fingerprint`), reported in every PONG and result.
        skipped: one message per data file that was not loaded.
        metrics: its Prometheus metrics (:class:`.metrics.ServiceMetrics`: ``.url``,
            ``.port``, ``.registry``) when opened with ``metrics=``, else ``None``.
    """

    def __init__(
        self,
        *,
        sock: FdSocket,
        context: zmq.Context[Any],
        pool: BacktestExecutor,
        catalog: Catalog,
        fingerprints: Mapping[str, str],
        engine: Engine,
        endpoint: str,
        max_message_bytes: int,
        reply_timeout: float,
        shutdown_grace: float,
        max_queued: int,
        credit: int,
    ) -> None:
        self.endpoint = endpoint
        self.workers = pool.workers
        self.credit = credit
        self.datasets = tuple(catalog.ids)
        self.fingerprints: Mapping[str, str] = dict(fingerprints)
        self.skipped = catalog.skipped
        self.metrics: ServiceMetrics | None = None  # set by open_service(metrics=...)
        self._sock = sock
        self._context = context
        self._pool = pool
        self._catalog = catalog
        self._engine = engine
        self._max_message_bytes = max_message_bytes
        self._shutdown_grace = shutdown_grace
        self._counts: dict[CounterName, int] = dict.fromkeys(get_args(CounterName), 0)
        self._handed = 0  # backtests handed to the pool: running, or prefetched there
        self._busy = 0.0  # worker-seconds busy up to _busy_at
        self._busy_at = anyio.current_time()
        self._stopping = False
        self._changed_event: anyio.Event | None = None
        self._outbox = Outbox(reply_timeout=reply_timeout)
        self._error_log = RateLimitedLog(
            log, burst=ERROR_LOG_BURST, interval=ERROR_LOG_INTERVAL, clock=anyio.current_time
        )
        self._in_flight: set[tuple[bytes, str]] = set()
        self._jobs_send, self._jobs_receive = anyio.create_memory_object_stream[_Job](max_queued)
        # Kept by the service to answer what is still queued when it stops.
        self._jobs_leftover = self._jobs_receive.clone()
        self._kick_send, self._kick_receive = anyio.create_memory_object_stream[None](1)
        self._receiver_scope = anyio.CancelScope()
        self._receiver_done = anyio.Event()
        self._runners_scope = anyio.CancelScope()
        self._runners_done = anyio.Event()
        self._outbox_done = anyio.Event()
        self._pong = Pong(
            version=__version__,
            datasets=list(self.datasets),
            workers=self.workers,
            fingerprints={data_id: self.fingerprints[data_id] for data_id in self.datasets},
            ranges={data_id: _range_of(catalog, data_id) for data_id in self.datasets},
            credit=credit,
        )
        self._ready_at = anyio.current_time()  # built once the workers are up

    def __repr__(self) -> str:
        s = self.statistics()
        state = "stopping" if self._stopping else "serving"
        return (
            f"<Service {self.endpoint} {state} workers={s.workers} running={s.running} "
            f"queued={s.queued} waiting_replies={s.replies_waiting} "
            f"datasets={len(self.datasets)}>"
        )

    # -- statistics -------------------------------------------------------------------

    def statistics(self) -> ServiceStatistics:
        """Return a snapshot of the counters (see :class:`ServiceStatistics`)."""
        running, queued = self._running_and_queued()
        return ServiceStatistics(
            **self._counts,
            queued=queued,
            prefetched=self._handed - running,
            running=running,
            workers=self.workers,
            busy_seconds=self._busy,  # no clock read: the metrics thread calls this too
            pool_restarts=self._pool.restarts,
            replies_waiting=len(self._outbox),
        )

    def _running_and_queued(self) -> tuple[int, int]:
        """``running`` and ``queued`` as reported (statistics, PONG, metrics).

        Of the backtests handed to the pool, at most ``workers`` run; the others
        (prefetched) wait there for a worker and are counted as queued, with those
        waiting in the service's own queue.
        """
        jobs = self._jobs_send.statistics()
        running = min(self._handed, self.workers)
        waiting = jobs.current_buffer_used + jobs.tasks_waiting_send
        return running, waiting + self._handed - running

    def _hand_over(self, change: int) -> None:
        """Count ``change`` (+1/-1) backtests handed to the pool, integrating busy time."""
        now = anyio.current_time()
        self._busy += min(self._handed, self.workers) * (now - self._busy_at)
        self._busy_at = now
        self._handed += change
        self._changed()

    async def wait_statistics(
        self, predicate: Callable[[ServiceStatistics], bool]
    ) -> ServiceStatistics:
        """Wait until ``predicate(self.statistics())`` holds; return that snapshot.

        Re-checked whenever a counter or gauge changes; bound it with ``anyio.fail_after``.
        """
        while True:
            snapshot = self.statistics()
            if predicate(snapshot):
                return snapshot
            await self._next_change()

    async def _next_change(self) -> None:
        if self._changed_event is None:
            self._changed_event = anyio.Event()
        await self._changed_event.wait()

    def _changed(self) -> None:
        if self._changed_event is not None:
            self._changed_event.set()
            self._changed_event = None

    def _count(self, name: CounterName, n: int = 1) -> None:
        self._counts[name] += n
        self._changed()

    # -- replies ----------------------------------------------------------------------

    def _reply(self, peer: bytes, message: Message) -> None:
        """Send a reply now if nothing to ``peer`` is held, else (or when it cannot go
        now) put it in the outbox and wake the outbox task. Never blocks."""
        body = encode_message(message)
        if self._outbox.head(peer) is None and self._send_now(peer, body):
            return
        if not self._outbox.put(peer, body, now=anyio.current_time()):
            self._count("replies_dropped")
            log.warning(
                "dropped a reply to requester %s: %d replies are already waiting",
                _peer_name(peer),
                self._outbox.max_held,
            )
        try:
            self._kick_send.send_nowait(None)
        except anyio.WouldBlock:
            pass  # a kick is already pending: kicks coalesce
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the outbox task has ended; the shutdown drops what is held
        self._changed()

    def _send_now(self, peer: bytes, body: bytes) -> bool:
        """Hand one reply to ZeroMQ without going through the outbox (no outbox task
        wake-up per reply); ``False`` when it did not go (held, the outbox then tries it
        again and counts, logs or drops it)."""
        try:
            status = self._sock.try_send([peer, b"", body])
        except TransportError:
            return False
        if status is not SendStatus.SENT:
            return False
        self._count("replies_sent")
        return True

    def _error(self, peer: bytes, code: str, message: str, request_id: str | None) -> None:
        """Count, log and answer with an ``ERROR``."""
        if code not in ERROR_CODES:
            code = "invalid_request"
        text = _one_line(message)
        self._count(_ERROR_COUNTERS[code])
        level = logging.WARNING if code in ("engine_error", "unavailable") else logging.INFO
        self._error_log.log(
            code,
            level,
            "answering requester %s with %s (request %r): %s",
            _peer_name(peer),
            code,
            request_id,
            text,
        )
        reply = ErrorReply(request_id=request_id, code=cast(ErrorCode, code), message=text)
        self._reply(peer, reply)

    def _finish(self, job: _Job, outcome: Metrics | str, code: ErrorCode = "engine_error") -> None:
        """Answer a job that was accepted: its metrics, or an error ``code`` and message."""
        request_id = job.request.request_id
        self._in_flight.discard((job.peer, request_id))
        if self.metrics is not None:
            self.metrics.answered(job.peer, request_id)
        if isinstance(outcome, str):
            self._error(job.peer, code, outcome, request_id)
            return
        try:
            fingerprint = self.fingerprints.get(job.request.data_id)
            reply = BacktestResult(
                request_id=request_id, result=outcome, data_fingerprint=fingerprint
            )
        except InvalidMessage as exc:  # a plugged-in engine returned something else
            self._error(job.peer, "engine_error", f"the engine's result is invalid: {exc}",
                        request_id)  # fmt: skip
            return
        self._count("backtests_completed")
        self._reply(job.peer, reply)

    def _flush(self) -> None:
        """Hand due replies to ZeroMQ without blocking; expire the ones held too long."""
        now = anyio.current_time()
        for dropped in self._outbox.expire(now):
            self._log_drop(dropped, f"after waiting {self._outbox.reply_timeout:g} s")
        budget = _SEND_BUDGET
        for peer in self._outbox.due(now):
            while budget > 0 and (body := self._outbox.head(peer)) is not None:
                budget -= 1
                try:
                    status = self._sock.try_send([peer, b"", body])
                except TransportError as exc:
                    self._outbox.failed(peer)
                    self._count("replies_dropped")
                    log.error("dropped a reply to requester %s: %s", _peer_name(peer), exc)
                    continue
                if status is SendStatus.SENT:
                    self._outbox.sent(peer)
                    self._count("replies_sent")
                    continue
                gone = status is SendStatus.UNREACHABLE
                if self._outbox.blocked(peer, gone=gone, now=now):
                    log.debug(
                        "holding replies to requester %s: %s",
                        _peer_name(peer),
                        "it is not connected" if gone else "its pipe is full (high-water mark)",
                    )
                self._count("reply_retries")
                break
        self._changed()

    def _log_drop(self, dropped: Dropped, why: str) -> None:
        self._count("replies_dropped", dropped.count)
        log.warning(
            "dropped %d reply(ies) to requester %s %s: %s",
            dropped.count,
            _peer_name(dropped.peer),
            why,
            dropped.describe(),
        )

    # -- tasks ------------------------------------------------------------------------

    async def _run_outbox(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with self._kick_receive:
                task_status.started()
                while True:
                    self._flush()
                    with anyio.move_on_at(self._outbox.next_deadline_at()):
                        await self._kick_receive.receive()
        except anyio.EndOfStream:
            pass  # the service has stopped
        finally:
            self._outbox_done.set()

    async def _run_monitor(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        await run_connection_monitor(
            self._context, self._sock, self._on_connection, task_status=task_status
        )

    def _on_connection(self, kind: Literal["up", "down", "refused"], endpoint: str) -> None:
        if kind == "up":
            self._count("connections")
            log.debug("requester connected: %s", endpoint)
        elif kind == "refused":
            self._count("handshakes_refused")
            # Counted, not logged above debug: a requester with the wrong keys retries
            # every reconnect interval (the ZAP authenticator names refused keys).
            log.debug("refused a requester's handshake: %s", endpoint)
        else:
            self._count("disconnects")
            log.debug("requester disconnected: %s", endpoint)

    async def _run_receiver(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with self._receiver_scope:
                task_status.started()
                while True:
                    batch = await self._sock.receive_batch()
                    for position, frames in enumerate(batch):
                        job = self._handle(frames)
                        if job is None:
                            continue
                        try:
                            await self._queue(job)
                        except BaseException:
                            # Stopping: answer the rest of the batch, it is not read again.
                            self._stopping = True
                            for rest in batch[position + 1 :]:
                                self._handle(rest)  # returns no job while stopping
                            raise
        finally:
            self._receiver_done.set()

    async def _run_runners(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with self._runners_scope, self._jobs_receive:
                async with anyio.create_task_group() as tg:
                    # getattr: an executor written before slots existed runs one per worker
                    slots: int = getattr(self._pool, "slots", self.workers)
                    for _ in range(slots):
                        tg.start_soon(self._run_jobs, self._jobs_receive.clone())
                    task_status.started()
        finally:
            self._runners_done.set()

    async def _run_jobs(self, jobs: MemoryObjectReceiveStream[_Job]) -> None:
        async with jobs:
            async for job in jobs:
                if self._stopping:
                    self._finish(job, _NOT_RUN, "unavailable")
                    continue
                self._hand_over(+1)
                try:
                    metrics = await self._pool.run(job.request, job.first, job.stop)
                except ServiceUnavailable as exc:
                    self._finish(job, str(exc), "unavailable")
                except EngineError as exc:
                    self._finish(job, f"backtest failed: {exc}")
                except BaseException:
                    self._finish(job, _CUT_SHORT, "unavailable")
                    raise
                else:
                    self._finish(job, metrics)
                finally:
                    self._hand_over(-1)

    # -- messages ---------------------------------------------------------------------

    def _handle(self, frames: list[bytes]) -> _Job | None:
        """Answer one multipart message ``[routing id, b"", body]``, or return its job.

        Returns:
            The validated backtest to queue, or ``None`` when the message was answered
            (PING, bad input, stopping) or ignored (duplicate).
        """
        self._count("messages_received")
        peer = frames[0]
        if len(frames) != 3 or frames[1] != b"":
            self._count("bad_frames")
            body = frames[-1] if len(frames) > 1 else b""
            self._error(
                peer,
                "invalid_request",
                f"framing: expected 2 frames after the routing id, an empty delimiter and "
                f"the body; got {len(frames) - 1} frame(s) of {[len(f) for f in frames[1:6]]} "
                "bytes (a DEALER must send [b'', body])",
                peek_request_id(body) if len(body) <= 4096 else None,
            )
            return None
        try:
            message = decode_message(frames[2], max_bytes=self._max_message_bytes)
        except ProtocolError as exc:
            self._count("decode_errors")
            self._error(peer, exc.code, exc.message, exc.request_id)
            return None
        if isinstance(message, BacktestRequest):
            if peek_request_id(frames[2]) != message.request_id:
                # decode_message looks for the text '"request_id"' anywhere in the body, so
                # a request without the field but with that key elsewhere (in params, say)
                # got a generated id the requester could not correlate.
                self._error(peer, "invalid_request", "request_id: missing required field", None)
                return None
            return self._accept(peer, message)
        if isinstance(message, Ping):
            self._count("pings")
            self._reply(peer, self._pong_for(message))
        else:
            self._error(
                peer,
                "invalid_request",
                f"type: {_REPLY_TYPES[type(message)]} is a reply that services send; "
                "send BACKTEST or PING",
                message.request_id,
            )
        return None

    def _pong_for(self, ping: Ping) -> Pong:
        running, queued = self._running_and_queued()
        return msgspec.structs.replace(
            self._pong,
            request_id=ping.request_id,
            running=running,
            queued=queued,
            uptime_s=round(max(0.0, anyio.current_time() - self._ready_at), 3),
        )

    def _accept(self, peer: bytes, request: BacktestRequest) -> _Job | None:
        """Validate a request; return its job, or ``None`` when answered or ignored."""
        request_id = request.request_id
        if self._stopping:
            self._error(peer, "unavailable", _NOT_RUN, request_id)
            return None
        if (peer, request_id) in self._in_flight:
            self._count("duplicates_ignored")
            log.info(
                "ignoring a duplicate of request %s from requester %s: it is still in flight",
                request_id,
                _peer_name(peer),
            )
            return None
        try:
            self._catalog.get(request.data_id)
            min_bars = self._engine.validate(request.strategy)
            first, stop = self._catalog.select(
                request.data_id, request.start, request.end, min_bars=min_bars
            )
        except ProtocolError as exc:
            self._error(peer, exc.code, exc.message, request_id)
            return None
        except Exception as exc:  # a plugged-in engine's validate() failed
            log.exception("the engine failed to validate request %s", request_id)
            self._error(
                peer, "engine_error", f"validation failed: {type(exc).__name__}: {exc}", request_id
            )
            return None
        self._in_flight.add((peer, request_id))
        self._count("backtests_accepted")
        if self.metrics is not None:
            self.metrics.accepted(peer, request_id)
        return _Job(peer, request, first, stop)

    async def _queue(self, job: _Job) -> None:
        """Queue an accepted job; waits while the queue is full (backpressure)."""
        try:
            await self._jobs_send.send(job)
        except BaseException:
            self._finish(job, _NOT_RUN, "unavailable")
            raise
        finally:
            self._changed()

    # -- start and stop ---------------------------------------------------------------

    async def _start(self, tg: anyio.abc.TaskGroup, announce: Callable[[], None]) -> None:
        """Start the tasks; ``announce`` (the "service ready" lines) runs just before the
        receiver starts, so that no reply (a PONG) can go out before it is logged."""
        await tg.start(self._run_monitor)
        await tg.start(self._run_outbox)
        await tg.start(self._run_runners)
        announce()
        await tg.start(self._run_receiver)

    async def _stop(self) -> None:
        """Stop gracefully, within ``shutdown_grace`` seconds (plus a short final flush).

        Reading stops (messages already received are answered, backtests with
        ``unavailable``); queued requests are answered with ``unavailable``, and so are
        prefetched ones the pool can still withdraw (not yet in its executor's call
        queue); running backtests, and prefetched ones that could not be withdrawn, may
        finish until the grace period ends, then they are answered with
        ``unavailable``; replies get until then (at least 0.5 s) to be handed to
        ZeroMQ, except those to requesters that are gone; what is still held is dropped
        (counted, logged). ``unavailable`` tells a requester to send the request again.
        """
        stats = self.statistics()
        log.info(
            "stopping: %d backtest(s) running, %d queued, %d reply(ies) waiting",
            stats.running,
            stats.queued,
            stats.replies_waiting,
        )
        deadline = anyio.current_time() + self._shutdown_grace
        self._stopping = True
        self._receiver_scope.cancel()
        await self._receiver_done.wait()
        self._answer_unread()
        self._jobs_send.close()
        while True:  # answer the queued requests now; the runners finish what they run
            try:
                job = self._jobs_leftover.receive_nowait()
            except (anyio.EndOfStream, anyio.WouldBlock):
                break
            self._finish(job, _NOT_RUN, "unavailable")
        withdraw = getattr(self._pool, "withdraw_unstarted", None)  # an older executor: none
        withdrawn = withdraw() if withdraw is not None else 0  # runners answer unavailable
        if withdrawn:
            log.info("withdrew %d prefetched backtest(s) that had not started", withdrawn)
        with anyio.move_on_at(deadline):
            await self._runners_done.wait()
        if not self._runners_done.is_set():
            log.warning(
                "%d backtest(s) still running after the %g s grace period (prefetched ones "
                "waiting for a worker included); answering them with unavailable",
                self._handed,
                self._shutdown_grace,
            )
            self._runners_scope.cancel()
            await self._runners_done.wait()
        if self._outbox_done.is_set():
            self._flush()  # the outbox task was cancelled: one last non-blocking try
        else:
            with anyio.move_on_at(max(deadline, anyio.current_time() + 0.5)):
                while True:
                    # A requester that is gone will not come back in time: do not wait.
                    for dropped in self._outbox.drop_gone():
                        self._log_drop(dropped, "at shutdown")
                    if not len(self._outbox):
                        break
                    await self._next_change()
        for dropped in self._outbox.drop_all():
            self._log_drop(dropped, "at shutdown")

    def _close_streams(self) -> None:
        """Close the internal channels once the tasks have ended (idempotent)."""
        self._jobs_send.close()
        self._jobs_receive.close()
        self._jobs_leftover.close()
        self._kick_send.close()
        self._kick_receive.close()

    def _answer_unread(self) -> None:
        """Answer the messages that arrived but were not read (the receiver has stopped)."""
        try:
            batch = self._sock.receive_nowait()
        except TransportError as exc:
            log.warning("could not read the last messages: %s", exc)
            return
        for frames in batch:
            self._handle(frames)  # while stopping, backtests are answered with unavailable


@asynccontextmanager
async def open_service(
    *,
    bind: str = DEFAULT_ENDPOINT,
    workers: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    engine: Engine | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    reply_timeout: float = 10.0,
    shutdown_grace: float = 10.0,
    max_queued: int = 1000,
    credit: int | None = None,
    warm_up: bool = True,
    socket_options: Mapping[int, Any] | None = None,
    context: zmq.Context[Any] | None = None,
    metrics: MetricsSettings | int | CollectorRegistry | None = None,
    executor: Executor | None = None,
) -> AsyncIterator[Service]:
    """Run a backtest service for the duration of the ``async with`` block.

    ``async with open_service(bind="tcp://127.0.0.1:5580", workers=2) as service:``
    enters once the datasets are loaded, the socket is bound, the workers are up
    (``warm_up``) and every task runs; it logs ``service ready on <endpoint> with <n> workers,
    datasets: ...``. Leaving the block stops the service gracefully (see
    ``shutdown_grace``); cancelling the surrounding scope stops it at once, answering
    running backtests with ``unavailable`` as far as the socket takes replies without
    waiting.

    The workers are *spawned* processes, which import the ``__main__`` module of the
    program: a script that opens a service must keep its entry point under
    ``if __name__ == "__main__":``.

    Args:
        bind: the endpoint to bind, e.g. ``"tcp://127.0.0.1:5580"`` (``:*`` picks a free
            port: read :attr:`Service.endpoint`). Beyond loopback a warning is logged:
            there is no encryption or authentication yet (CURVE is issue #6; until then
            pass the CURVE options in ``socket_options``).
        workers: worker processes (default ``os.cpu_count()``).
        data_dir: a directory of ``<data_id>.csv`` files to serve besides the built-in
            datasets; bad files are logged and skipped (see :mod:`.datasets`).
        engine: the backtesting engine (default :class:`BacktestingPyEngine`).
        max_message_bytes: largest body accepted, in bytes; larger ones are answered
            with ``too_large``. Frames over twice this (``ZMQ_MAXMSGSIZE``) make libzmq
            drop the sender's connection without a reply.
        reply_timeout: seconds a reply may wait for a requester whose pipe is full or
            who is gone before it is dropped (counted, logged).
        shutdown_grace: seconds a graceful stop waits for running backtests and for
            replies to leave.
        max_queued: validated requests waiting for a worker; when full, the service stops
            reading until one is free (PINGs then wait too).
        credit: requests one requester may keep in flight here, advertised in PONG
            (``credit``), between 1 and ``workers + max_queued``. Default
            :func:`default_credit`: every worker busy plus one request waiting per
            worker (at most ``max_queued``), so no worker idles while its next request
            is on the wire and a slow service holds no backlog a faster one could run.
        warm_up: start the workers before binding, so the first backtests are fast and a
            broken engine stops the start instead of failing every request.
        socket_options: extra ROUTER options ``{zmq.OPTION: value}``, applied over
            :func:`service_socket_options` (``ROUTER_MANDATORY`` cannot be turned off).
        context: the pyzmq context (default: a new one, terminated on exit).
        metrics: Prometheus metrics (the ``metrics`` extra; see ``docs/metrics.md``): a
            port for an HTTP server on 127.0.0.1 answering ``/metrics`` (0: a free port,
            read :attr:`Service.metrics` ``.port``), a ``prometheus_client.CollectorRegistry``
            to register in (no server), or :class:`~backtest_queue.metrics.MetricsSettings`.
        executor: where the backtests run: :class:`~.executor.LocalPool` (the default:
            ``workers`` processes on this machine) or
            :class:`~.dask_executor.DaskExecutor` (an existing Dask cluster; ``workers``
            then counts backtests at once, by default the cluster's worker threads).

    Raises:
        UsageError: a bad setting, a data directory that does not exist, an engine that
            does not implement :class:`Engine` or cannot be pickled, ``metrics`` without
            prometheus-client installed.
        TransportError: the endpoint (or the metrics port) cannot be bound.
        EngineError: the workers failed to start (``warm_up``), or the Dask scheduler
            cannot be reached.
    """
    executor = LocalPool() if executor is None else executor
    engine = BacktestingPyEngine() if engine is None else engine
    options = service_socket_options(max_message_bytes=max_message_bytes)
    options.update(socket_options or {})
    _check_settings(
        workers=workers,
        engine=engine,
        max_message_bytes=max_message_bytes,
        reply_timeout=reply_timeout,
        shutdown_grace=shutdown_grace,
        max_queued=max_queued,
        options=options,
    )
    metrics_wanted = metrics_settings(metrics)
    if workers is not None:  # else (a Dask cluster) checked once the cluster is known
        credit = _checked_credit(credit, workers=workers, max_queued=max_queued)
    if not is_loopback(bind) and zmq.CURVE_SERVER not in options:
        log.warning(
            "binding %s beyond loopback without encryption or authentication: anyone who "
            "can reach it can run backtests (CURVE support is issue #6; until then bind to "
            "127.0.0.1 and tunnel, or pass CURVE options in socket_options)",
            bind,
        )
    try:
        catalog = await anyio.to_thread.run_sync(load_catalog, data_dir)
    except NotADirectoryError as exc:
        raise UsageError(str(exc)) from None
    own_context = context is None
    zmq_context: zmq.Context[Any] = zmq.Context() if context is None else context
    unwrapped: BaseException | None = None
    try:
        try:
            async with (
                _serve(
                    zmq_context,
                    bind=bind,
                    options=options,
                    engine=engine,
                    catalog=catalog,
                    workers=workers,
                    warm_up=warm_up,
                    max_message_bytes=max_message_bytes,
                    reply_timeout=reply_timeout,
                    shutdown_grace=shutdown_grace,
                    max_queued=max_queued,
                    executor=executor,
                    credit=credit,
                ) as service,
                open_service_metrics(service, metrics_wanted),
            ):
                yield service
        except BaseExceptionGroup as group:
            # Task groups (the service's, an executor's, a monitor's zmq-anyio socket)
            # wrap what is raised inside them (a failed warm-up, the caller's own error):
            # one real error comes out as itself, raised below, after this block, so it
            # is not chained to the group (docs/concurrency.md).
            unwrapped = sole_error(group)
            if unwrapped is None:
                raise
        if unwrapped is not None:
            raise unwrapped
    finally:
        if own_context:
            with anyio.CancelScope(shield=True), anyio.move_on_after(LINGER + 2.0):
                await anyio.to_thread.run_sync(zmq_context.term, abandon_on_cancel=True)


@asynccontextmanager
async def _serve(
    zmq_context: zmq.Context[Any],
    *,
    bind: str,
    options: dict[int, Any],
    engine: Engine,
    catalog: Catalog,
    workers: int | None,
    warm_up: bool,
    max_message_bytes: int,
    reply_timeout: float,
    shutdown_grace: float,
    max_queued: int,
    executor: Executor,
    credit: int | None,
) -> AsyncIterator[Service]:
    """The socket, the pool and the tasks of :func:`open_service`."""
    bars = catalog.bars()
    fingerprints = await anyio.to_thread.run_sync(fingerprint_datasets, bars)
    # Bind first, so a busy port fails in a blink; messages wait in ZeroMQ's queues
    # until the tasks start, after the workers are up.
    async with (
        open_router_socket(zmq_context, name="service", options=options, bind=bind) as sock,
        executor.open(engine, bars, workers=workers, warm_up=warm_up) as pool,
    ):
        endpoint = sock.raw.getsockopt(zmq.LAST_ENDPOINT)
        service = Service(
            sock=sock,
            context=zmq_context,
            pool=pool,
            catalog=catalog,
            fingerprints=fingerprints,
            engine=engine,
            endpoint=endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint),
            max_message_bytes=max_message_bytes,
            reply_timeout=reply_timeout,
            shutdown_grace=shutdown_grace,
            max_queued=max_queued,
            credit=_checked_credit(credit, workers=pool.workers, max_queued=max_queued),
        )
        try:
            async with anyio.create_task_group() as tg:
                await service._start(tg, announce=partial(_log_ready, service))
                try:
                    yield service
                finally:
                    with anyio.CancelScope(shield=True):
                        await service._stop()
                    tg.cancel_scope.cancel()
        finally:
            service._close_streams()
            service._error_log.flush()
        stats = service.statistics()
        log.info(
            "service stopped: %d backtest(s) completed, %d engine error(s), %d reply(ies) dropped",
            stats.backtests_completed,
            stats.engine_errors,
            stats.replies_dropped,
        )


def _log_ready(service: Service) -> None:
    log.info(
        "service ready on %s with %d workers, datasets: %s",
        service.endpoint,
        service.workers,
        ", ".join(service.datasets) or "none",
    )
    log.info(
        "credit %d: requests one requester may keep in flight here (advertised in PONG)",
        service.credit,
    )
    log.info(
        "dataset fingerprints: %s",
        ", ".join(f"{k}={v}" for k, v in sorted(service.fingerprints.items())) or "none",
    )


def default_credit(workers: int, max_queued: int) -> int:
    """The credit a service advertises unless told otherwise: ``workers`` running plus
    one waiting per worker, the waiting ones at most ``max_queued``.

    With the local pool's default ``prefetch`` of 1, the waiting one is the backtest the
    pool keeps ready for each worker: a requester that stays within this credit has
    every worker busy and its next backtest already in the pool, while its result and
    the request that replaces it are on the wire.
    """
    return workers + min(workers, max_queued)


def _checked_credit(credit: int | None, *, workers: int, max_queued: int) -> int:
    """``credit`` checked against what the service can hold, or the default."""
    if credit is None:
        return default_credit(workers, max_queued)
    most = workers + max_queued
    if isinstance(credit, bool) or not isinstance(credit, int) or not 1 <= credit <= most:
        raise UsageError(
            f"credit must be an int from 1 to workers + max_queued = {most} (requests it "
            f"holds at once: running plus queued), got {credit!r}; raise max_queued for more"
        )
    return credit


def _check_settings(
    *,
    workers: int | None,
    engine: Engine,
    max_message_bytes: int,
    reply_timeout: float,
    shutdown_grace: float,
    max_queued: int,
    options: Mapping[int, Any],
) -> None:
    if workers is not None and workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    if not isinstance(engine, Engine):
        raise UsageError(f"engine {engine!r} does not implement validate, prepare and run")
    if max_message_bytes < 1024:
        raise UsageError(f"max_message_bytes must be at least 1024, got {max_message_bytes}")
    if not (reply_timeout > 0 and math.isfinite(reply_timeout)):
        raise UsageError(f"reply_timeout must be a positive number of seconds, got {reply_timeout}")
    if not (shutdown_grace >= 0 and math.isfinite(shutdown_grace)):
        raise UsageError(f"shutdown_grace must be >= 0 seconds, got {shutdown_grace}")
    if max_queued < 1:
        raise UsageError(f"max_queued must be at least 1, got {max_queued}")
    if options.get(zmq.ROUTER_MANDATORY) != 1:
        raise UsageError("ROUTER_MANDATORY must stay 1: without it replies vanish silently")
