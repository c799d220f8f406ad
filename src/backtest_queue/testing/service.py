"""The real ``backtest-queue service`` as a child process, for tests that crash it.

:class:`ServiceProcess` starts the service on a free loopback port in its own process
group (so the service and its pool workers stop together), waits until it answers a
``PING``, and can be killed and restarted on the same endpoint from the test. It is tied
to the test process with a :class:`~backtest_queue.lifeline.Lifeline`: if the test run
dies, the service stops too. The methods block (start takes a few seconds: the worker
pool imports pandas); from an async test call them through ``anyio.to_thread.run_sync``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

import zmq

from ..errors import UsageError
from ..lifeline import Lifeline

__all__ = ["READY_TIMEOUT", "ServiceProcess", "free_tcp_endpoint", "service_process", "wait_ready"]

#: Seconds a service may take to answer its first PING (a loaded 2-core machine is slow).
READY_TIMEOUT = 60.0
#: Seconds a stopped service may take to exit after ``SIGTERM`` before it is killed.
STOP_TIMEOUT = 20.0


def free_tcp_endpoint() -> str:
    """Return a loopback TCP endpoint whose port was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def wait_ready(
    endpoint: str, process: subprocess.Popen[bytes] | None = None, timeout: float = READY_TIMEOUT
) -> None:
    """Block until the service at ``endpoint`` answers a PING.

    Each probe is a fresh DEALER sending one PING (a probe that retried on one socket
    would queue PINGs the service answers all at once).

    Args:
        endpoint: the service's endpoint.
        process: the service's process, to fail at once if it exits first.
        timeout: seconds to wait in all.

    Raises:
        RuntimeError: ``process`` exited before the service answered.
        TimeoutError: no answer within ``timeout`` seconds.
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"the service on {endpoint} exited with {process.returncode} before it "
                    "answered a PING"
                )
            probe = ctx.socket(zmq.DEALER)
            probe.linger = 0
            try:
                probe.connect(endpoint)
                probe.send_multipart([b"", b'{"type": "PING", "v": 1}'])
                if probe.poll(250):  # an answer, not a sleep: the wait ends when it comes
                    probe.recv_multipart()
                    return
            finally:
                probe.close(linger=0)
        raise TimeoutError(f"the service on {endpoint} did not answer a PING in {timeout} s")
    finally:
        ctx.destroy(linger=0)


class ServiceProcess:
    """A ``backtest-queue service`` child process on one endpoint, restartable.

    Args:
        endpoint: where it binds (default: a free loopback TCP port, kept across restarts).
        workers: backtest worker processes.
        args: more ``backtest-queue service`` options, e.g. ``["--data", "csvdir"]``.
        ready_timeout: seconds :meth:`start` waits for the first PING answer.

    Attributes:
        endpoint: the endpoint to hand to ``open_dispatcher``.
        process: the running child, or ``None``.
        starts: how many times it was started.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        workers: int = 1,
        args: Sequence[str] = (),
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint if endpoint is not None else free_tcp_endpoint()
        self.workers = workers
        self.args = list(args)
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._line: Lifeline | None = None

    def __repr__(self) -> str:
        state = "stopped" if self.process is None else f"pid={self.process.pid}"
        return f"<ServiceProcess {self.endpoint} {state}>"

    @property
    def running(self) -> bool:
        """Whether the service process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the service and wait until it answers a PING.

        Raises:
            UsageError: it is running already.
            RuntimeError: it exited before answering (e.g. the port was taken).
            TimeoutError: no answer within ``ready_timeout`` seconds (it is then killed).
        """
        if self.running:
            raise UsageError(f"the service on {self.endpoint} is running; stop() or kill() it")
        cmd = [sys.executable, "-m", "backtest_queue", "-q", "service", "--bind", self.endpoint,
               "--workers", str(self.workers), *self.args]  # fmt: skip
        line = Lifeline()  # cut in _end: while it is open the service may run
        try:
            self.process = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, **line.env},
                pass_fds=line.pass_fds,
                start_new_session=True,  # its own process group: workers stop with it
            )
        except BaseException:
            line.close()
            raise
        line.child_started()
        self._line = line
        try:
            wait_ready(self.endpoint, self.process, self.ready_timeout)
        except BaseException:
            self.kill()
            raise
        self.starts += 1

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop it as ``kill`` does (``SIGTERM``: running backtests answer ``unavailable``),
        its workers with it; ``SIGKILL`` the group after ``timeout`` seconds.

        Returns:
            Its exit status (``None``: it was not running).
        """
        return self._end(signal.SIGTERM, timeout)

    def kill(self, sig: int = signal.SIGKILL, *, group: bool = True) -> int | None:
        """Send ``sig`` (default ``SIGKILL``: a crash) to the service's whole process group
        and wait until the service has exited.

        Args:
            sig: the signal.
            group: ``False``: signal the service process alone (its workers must then
                notice by themselves that it is gone).

        Returns:
            Its exit status (``None``: it was not running).
        """
        return self._end(sig, STOP_TIMEOUT, group=group)

    def restart(self, *, crash: bool = True) -> None:
        """Kill (``crash=True``) or stop it, then start it again on the same endpoint."""
        if crash:
            self.kill()
        else:
            self.stop()
        self.start()

    def _end(self, sig: int, timeout: float, *, group: bool = True) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        try:
            if process.poll() is None:
                if group:
                    _signal_group(process.pid, sig)
                else:
                    process.send_signal(sig)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait(timeout=STOP_TIMEOUT)
            if group:
                _signal_group(process.pid, signal.SIGKILL)  # workers left behind, if any
            return process.returncode
        finally:
            if self._line is not None:
                self._line.close()
                self._line = None


def _signal_group(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@contextmanager
def service_process(
    endpoint: str | None = None, *, workers: int = 1, args: Sequence[str] = ()
) -> Iterator[ServiceProcess]:
    """A started :class:`ServiceProcess`, stopped (with its workers) at the end whatever
    happens."""
    service = ServiceProcess(endpoint, workers=workers, args=args)
    try:
        service.start()
        yield service
    finally:
        service.stop()
