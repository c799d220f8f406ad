"""Real backtest service processes for fault tests: start, wait until ready, kill."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import zmq

from lifelines import tied

PROCS = Path(__file__).parent / "procs"
READY_TIMEOUT = 30.0


def wait_ready(
    endpoint: str, process: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT
) -> None:
    """Block until the service at ``endpoint`` answers a PING (or raise)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        probe = ctx.socket(zmq.DEALER)
        probe.linger = 0
        probe.connect(endpoint)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"service exited with {process.returncode} before ready")
            probe.send_multipart([b"", b'{"type": "PING", "v": 1}'])
            if probe.poll(250):  # an answer, not a sleep: the wait ends when it comes
                probe.recv_multipart()
                return
        raise TimeoutError(f"service on {endpoint} not ready after {timeout} s")
    finally:
        ctx.destroy(linger=0)


class ServiceProcess:
    """A backtest service child process (the real ``backtest-queue service``)."""

    def __init__(self, endpoint: str, *, workers: int = 1) -> None:
        self.endpoint = endpoint
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "backtest_queue", "-q", "service",
               "--bind", self.endpoint, "--workers", str(self.workers)]  # fmt: skip
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **tied()
        )
        wait_ready(self.endpoint, self.process)
        self.starts += 1

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=20)
        self.process = None


@contextmanager
def service_process(endpoint: str, *, workers: int = 1) -> Iterator[ServiceProcess]:
    """A started service process, killed at the end whatever happens."""
    service = ServiceProcess(endpoint, workers=workers)
    try:
        service.start()
        yield service
    finally:
        service.kill()


@contextmanager
def echo_process(endpoint: str, delay: float = 0.0) -> Iterator[subprocess.Popen[bytes]]:
    """The stub echo service (no backtest work) as a real process."""
    cmd = [sys.executable, str(PROCS / "echo_service.py"), endpoint, str(delay)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, **tied())
    try:
        wait_ready(endpoint, process)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=20)  # reaped before the next one binds the endpoint
