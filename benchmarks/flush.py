"""Flush after connect: requests queued with no service, then a service binds.

The service is the ``flush-probe`` process (:mod:`benchmarks.services`): a blocking
pyzmq ROUTER that records ``time.monotonic()`` at its monitor's
``HANDSHAKE_SUCCEEDED`` (the connect event) and at every request it reads, never
answering. ``CLOCK_MONOTONIC`` is system-wide on Linux, so those times are comparable
with the ones this process takes: a logging handler stamps ``time.monotonic()`` when the
dispatcher logs ``connected to ...`` and ``flushed N queued requests ...``, and the
last ``sent N requests`` record, as a cross-check of where the time goes.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import zmq
from zmq.utils.monitor import recv_monitor_message

from backtest_queue.dispatcher import open_dispatcher

from .payloads import make_requests, request_bodies
from .services import flush_probe_command

__all__ = ["FlushRun", "run_flush", "run_raw_flush"]

_FLUSHED = re.compile(r"flushed (\d+) queued requests ([\d.]+) ms after connect")


@dataclass(frozen=True, slots=True)
class FlushRun:
    """One flush-after-connect run; times in seconds from the service's connect event.

    Attributes:
        n: requests queued before the service bound.
        received: requests the service read before it stopped waiting.
        fifo: whether they arrived in submit order.
        first_s: connect event -> first request read by the service.
        last_s: connect event -> last request read by the service.
        dispatcher_connect_s: connect event -> the dispatcher logged ``connected to``.
        first_flush_s: connect event -> the dispatcher's connect flush returned.
        first_flush_count: requests that connect flush handed to ZeroMQ (the rest went
            in later flushes, once the high-water mark let them).
        flush_log_ms: the dispatcher's own figure from its ``flushed ... ms after
            connect`` log line (its connect event read -> flush returned).
        last_send_s: connect event -> the dispatcher's last ``sent`` log record.
        decile_s: connect event -> each tenth of the requests read.

    ``dispatcher_*`` and ``*flush*`` fields are ``None`` for the raw pyzmq baseline,
    whose ``dispatcher_connect_s`` is its own monitor's connect event.
    """

    n: int
    received: int
    fifo: bool
    first_s: float
    last_s: float
    dispatcher_connect_s: float | None
    first_flush_s: float | None
    first_flush_count: int | None
    flush_log_ms: float | None
    last_send_s: float | None
    decile_s: list[float]

    @property
    def first_after_requester_s(self) -> float | None:
        """The requester's own connect event -> first request read by the service."""
        if self.dispatcher_connect_s is None:
            return None
        return self.first_s - self.dispatcher_connect_s

    @property
    def drain_rate(self) -> float:
        """Requests read per second, connect event to last request."""
        return self.received / self.last_s if self.last_s > 0 else float("nan")


class _Stamps(logging.Handler):
    """Stamps the dispatcher's log records with ``time.monotonic()`` as they are emitted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.connected_at: float | None = None
        self.flushed_at: float | None = None
        self.flushed_count: int | None = None
        self.flushed_ms: float | None = None
        self.last_sent_at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        message = record.getMessage()
        if message.startswith("connected to") and self.connected_at is None:
            self.connected_at = now
        elif (m := _FLUSHED.search(message)) and self.flushed_at is None:
            self.flushed_at = now
            self.flushed_count = int(m.group(1))
            self.flushed_ms = float(m.group(2))
        elif message.startswith("sent "):
            self.last_sent_at = now


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


async def _flush_once(n: int, probe_timeout: float) -> FlushRun:
    endpoint = _free_endpoint()
    requests = make_requests(n, tag="flush")
    stamps = _Stamps()
    log = logging.getLogger("backtest_queue")
    level, propagate = log.level, log.propagate
    log.addHandler(stamps)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        async with open_dispatcher(
            [endpoint],
            max_pending=None,
            capacity=n,
            flush_interval=3600.0,
            result_timeout=3600.0,
        ) as d:
            for request in requests:
                state = await d.submit(request)
                assert state.reason == "not_connected"
            done = await anyio.run_process(flush_probe_command(endpoint, n, probe_timeout, 1000))
    finally:
        log.removeHandler(stamps)
        log.setLevel(level)
        log.propagate = propagate
    report: dict[str, Any] = json.loads(done.stdout)
    return _report_to_run(n, report, stamps, stamps.connected_at)


def run_flush(n: int, backend: Literal["trio", "asyncio"], timeout: float = 10.0) -> FlushRun:
    """Queue ``n`` requests with no service, start the probe, and time the flush."""
    return anyio.run(_flush_once, n, timeout, backend=backend)


def _report_to_run(
    n: int, report: dict[str, Any], stamps: _Stamps, requester_connect_at: float | None
) -> FlushRun:
    connect_at = report["connect_at"]
    if connect_at is None or report["first_at"] is None:
        raise RuntimeError(f"the flush probe saw no connection or no request: {report}")

    def since(at: float | None) -> float | None:
        return None if at is None else at - connect_at

    return FlushRun(
        n=n,
        received=int(report["received"]),
        fifo=bool(report["fifo"]),
        first_s=report["first_at"] - connect_at,
        last_s=report["last_at"] - connect_at,
        dispatcher_connect_s=since(requester_connect_at),
        first_flush_s=since(stamps.flushed_at),
        first_flush_count=stamps.flushed_count,
        flush_log_ms=stamps.flushed_ms,
        last_send_s=since(stamps.last_sent_at),
        decile_s=[at - connect_at for at in report["decile_at"]],
    )


def run_raw_flush(n: int, timeout: float = 10.0) -> FlushRun:
    """The baseline: a blocking pyzmq DEALER (``IMMEDIATE=1``, ``SNDHWM=1000``) that
    waits for its own monitor's connect event, then sends ``n`` pre-encoded bodies."""
    endpoint = _free_endpoint()
    bodies = request_bodies(make_requests(n, tag="flush"))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    stamps = _Stamps()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, 1000)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        sock.connect(endpoint)
        with subprocess.Popen(
            flush_probe_command(endpoint, n, timeout, 1000), stdout=subprocess.PIPE, text=True
        ) as probe:
            if not monitor.poll(int(timeout * 1000)):
                probe.kill()
                raise RuntimeError("the raw requester saw no connect event")
            recv_monitor_message(monitor)
            connected_at = time.monotonic()
            send = sock.send_multipart
            for body in bodies:
                send([b"", body])
            stamps.last_sent_at = time.monotonic()
            out, _ = probe.communicate(timeout=timeout + 5)
        sock.disable_monitor()
    finally:
        ctx.destroy(linger=0)
    return _report_to_run(n, json.loads(out), stamps, connected_at)
