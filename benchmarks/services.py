"""Benchmark services: plain blocking pyzmq ROUTERs run in their own process.

Run as ``python -m benchmarks.services echo`` or ``... flush-probe``; the harness starts
them (:class:`EchoService`, :func:`flush_probe_command`). They live in a separate process so
the requester side under test never shares a GIL with them.

* ``echo``: answers every ``[b"", request body]`` with ``[b"", result body]`` for the same
  ``request_id`` (see :class:`~benchmarks.payloads.ResultTemplate`; a PING gets a PONG
  that sets no credit), draining its socket until ``EAGAIN`` on each wake-up. A REP
  control socket reports its CPU time (to tell whether the service was the bottleneck)
  and stops it. It reads and writes frame by frame through pyzmq's Cython calls
  (``zmq.backend.Socket.recv``/``send``), not ``recv_multipart``/``send_multipart``:
  on a 2-core machine its CPU is taken from the requester under test, and the
  multipart wrappers cost about 4.5 us of the 9.5 us it spent per message (issue 14:
  raw pyzmq, row 1, was bound by this service before, 92-99k against 131-135k msg/s).
* ``flush-probe``: binds, watches its own monitor for ``HANDSHAKE_SUCCEEDED`` (the
  connect event), never answers a request (a PING gets a PONG), and records
  ``time.monotonic()`` at the connect event and at each request read; prints one JSON
  line and exits. ``CLOCK_MONOTONIC`` is system-wide on Linux, so the harness can
  compare these times with its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import zmq
from zmq.utils.monitor import recv_monitor_message

from backtest_queue.lifeline import Lifeline, watch_parent_from_environment

from .payloads import ResultTemplate

__all__ = ["EchoService", "ServiceStats", "flush_probe_command", "main"]

_DRAIN_CAP: Final = 4096
_NOBLOCK: Final = int(zmq.NOBLOCK)
_SNDMORE: Final = int(zmq.SNDMORE)
# A dispatcher PINGs every service at connect and keeps one request in flight there until
# the PONG says how many it takes (issue 13); these services answer with a PONG that sets
# no limit, as a service before per-service credit did.
_PING: Final = b'"type":"PING"'
_PONG: Final = b'{"type":"PONG","v":1}'
_SERVICE_HWM: Final = 10_000  # the echo service never drops or blocks at window <= 1000


@dataclass(frozen=True, slots=True)
class ServiceStats:
    """Cumulative counters of the echo service.

    Attributes:
        cpu_s: the service process's CPU time, seconds (all threads, libzmq's included).
        messages: requests answered since start.
        at: the service's ``time.monotonic()`` when it answered, seconds.
    """

    cpu_s: float
    messages: int
    at: float


def _serve_echo(hwm: int) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.SNDHWM, hwm)
    router.setsockopt(zmq.RCVHWM, hwm)
    router.bind("tcp://127.0.0.1:*")
    control = ctx.socket(zmq.REP)
    control.setsockopt(zmq.LINGER, 0)
    control.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    control_endpoint = control.getsockopt_string(zmq.LAST_ENDPOINT)
    print(f"READY {endpoint} {control_endpoint}", flush=True)
    template = ResultTemplate()
    reply_to = template.reply_to
    # pyzmq's own calls without the Python wrappers (see the module docstring); the
    # identity frame goes back as the Frame it came in (copy=False: no bytes made).
    recv, send = zmq.backend.Socket.recv, zmq.backend.Socket.send
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(control, zmq.POLLIN)
    answered = 0
    while True:
        for sock, _ in poller.poll():
            if sock is router:
                for _ in range(_DRAIN_CAP):
                    try:
                        frame = ident = recv(router, _NOBLOCK, False)
                    except zmq.Again:
                        break
                    while frame.more:
                        frame = recv(router, _NOBLOCK, False)
                    body = frame.bytes
                    send(router, ident, _SNDMORE, False)
                    send(router, b"", _SNDMORE, True)
                    if _PING in body[:24]:
                        send(router, _PONG, 0, True)
                        continue
                    send(router, reply_to(body), 0, True)
                    answered += 1
            else:
                command = control.recv()
                if command == b"stop":
                    control.send(b"ok")
                    ctx.destroy(linger=0)
                    return
                stats = {"cpu_s": time.process_time(), "messages": answered, "at": time.monotonic()}
                control.send(json.dumps(stats).encode())


class EchoService:
    """The echo service in a child process, for the duration of a ``with`` block.

    Attributes:
        endpoint: where its ROUTER is bound (``tcp://127.0.0.1:PORT``).
    """

    def __init__(self, *, hwm: int = _SERVICE_HWM, start_timeout: float = 20.0) -> None:
        self._hwm = hwm
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[str] | None = None
        self._lifeline = Lifeline()
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._control: zmq.Socket[bytes] | None = None
        self.endpoint = ""

    def __enter__(self) -> Self:
        cmd = [sys.executable, "-m", "benchmarks.services", "echo", "--hwm", str(self._hwm)]
        # The lifeline stops the echo service if the benchmark is killed (kill -9 too).
        self._proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **self._lifeline.env},
            pass_fds=self._lifeline.pass_fds,
        )
        self._lifeline.child_started()
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().split()
        if len(line) != 3 or line[0] != "READY":
            self._proc.kill()
            raise RuntimeError(f"echo service did not start: {line!r}")
        self.endpoint, control_endpoint = line[1], line[2]
        self._ctx = zmq.Context()
        self._control = self._ctx.socket(zmq.REQ)
        self._control.setsockopt(zmq.LINGER, 0)
        self._control.setsockopt(zmq.RCVTIMEO, int(self._start_timeout * 1000))
        self._control.connect(control_endpoint)
        self.stats()
        return self

    def stats(self) -> ServiceStats:
        """Ask the service for its counters (blocks for a round trip)."""
        assert self._control is not None
        self._control.send(b"stats")
        data: dict[str, Any] = json.loads(self._control.recv())
        return ServiceStats(float(data["cpu_s"]), int(data["messages"]), float(data["at"]))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._control is not None:
                try:
                    self._control.send(b"stop")
                    self._control.recv()
                except zmq.ZMQError:
                    pass
        finally:
            if self._ctx is not None:
                self._ctx.destroy(linger=0)
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                if self._proc.stdout is not None:
                    self._proc.stdout.close()
            self._lifeline.close()


def _flush_probe(endpoint: str, expect: int, timeout: float, hwm: int) -> dict[str, Any]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVHWM, hwm)
    monitor = router.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    bind_at = time.monotonic()
    router.bind(endpoint)
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    connect_at: float | None = None
    times: list[float] = []
    bodies: list[bytes] = []
    recv, now = router.recv_multipart, time.monotonic
    give_up_at = now() + timeout
    while len(times) < expect and now() < give_up_at:
        ready = dict(poller.poll(100))
        if monitor in ready:  # before the requests: one wake-up may bring both
            recv_monitor_message(monitor)
            if connect_at is None:
                connect_at = now()
        if router in ready:
            for _ in range(256):  # then poll again, so the monitor is read promptly
                try:
                    frames = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if _PING in frames[-1][:24]:  # the dispatcher's, at connect: not a request
                    router.send_multipart([frames[0], b"", _PONG])
                    continue
                times.append(now())
                bodies.append(frames[-1])
    template = ResultTemplate()
    ids = [template.request_id_of(b) for b in bodies]
    # Drain-rate profile: when each tenth of the requests had arrived.
    marks = (
        [times[min(len(times) - 1, (len(times) * k) // 10)] for k in range(1, 11)] if times else []
    )
    router.disable_monitor()
    ctx.destroy(linger=0)
    return {
        "bind_at": bind_at,
        "connect_at": connect_at,
        "first_at": times[0] if times else None,
        "last_at": times[-1] if times else None,
        "received": len(times),
        "fifo": ids == sorted(ids),
        "decile_at": marks,
    }


def flush_probe_command(endpoint: str, expect: int, timeout: float, hwm: int) -> list[str]:
    """The command line that runs the flush probe in a child process."""
    return [
        sys.executable,
        "-m",
        "benchmarks.services",
        "flush-probe",
        "--bind",
        endpoint,
        "--expect",
        str(expect),
        "--timeout",
        str(timeout),
        "--hwm",
        str(hwm),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point of a benchmark service process."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.services")
    sub = parser.add_subparsers(dest="command", required=True)
    echo = sub.add_parser("echo", help="answer every request with a result")
    echo.add_argument("--hwm", type=int, default=_SERVICE_HWM)
    probe = sub.add_parser("flush-probe", help="time a connect-event flush")
    probe.add_argument("--bind", required=True)
    probe.add_argument("--expect", type=int, required=True)
    probe.add_argument("--timeout", type=float, default=10.0)
    probe.add_argument("--hwm", type=int, default=1000)
    args = parser.parse_args(argv)
    watch_parent_from_environment()  # stop when the benchmark that started us is gone
    if args.command == "echo":
        _serve_echo(args.hwm)
    else:
        report = _flush_probe(args.bind, args.expect, args.timeout, args.hwm)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
