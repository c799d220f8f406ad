"""Helpers for the backtest service tests (importable by spawned worker processes too).

* :class:`RawClient` - a plain blocking pyzmq DEALER, the way a client in another
  language would talk to the service (poll timeouts, no sleeps).
* :class:`PortalService` - an in-process service running in a blocking portal's thread.
* :func:`run_service_process` - the real thing: ``python -m backtest_queue service``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import anyio
import pandas as pd
import zmq
from anyio.from_thread import BlockingPortal

from backtest_queue.protocol import BacktestRequest, Metrics, Strategy, decode_message
from backtest_queue.service import Service, ServiceStatistics
from backtest_queue.transport import SendStatus, ZmqSocket, open_socket

from lifelines import tied

#: Generous bound for one reply; real replies take milliseconds.
REPLY_TIMEOUT = 15.0
#: The shared service's max_message_bytes (conftest.shared_service); ZMQ_MAXMSGSIZE is
#: twice this.
SHARED_MAX_MESSAGE_BYTES = 16 * 1024


def eurusd_lines() -> list[str]:
    """The lines of backtesting.py's real EURUSD hourly CSV (header first)."""
    spec = find_spec("backtesting")
    assert spec is not None
    assert spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "EURUSD.csv"
    return path.read_text().splitlines()


def write_csv(directory: Path, name: str, lines: list[str]) -> Path:
    """Write ``lines`` as ``directory/name`` and return the path."""
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


def backtest(
    request_id: str,
    *,
    kind: str = "sma_cross",
    params: dict[str, Any] | None = None,
    data_id: str = "GOOG-D1",
    **fields: Any,
) -> dict[str, Any]:
    """A BACKTEST message as a JSON-ready dict; ``fields`` go to the top level."""
    strategy: dict[str, Any] = {
        "name": f"{kind}-{request_id}",
        "kind": kind,
        "params": {"fast": 10, "slow": 40} if params is None else params,
    }
    for key in ("sl", "tp"):
        if key in fields:
            strategy[key] = fields.pop(key)
    return {
        "type": "BACKTEST",
        "v": 1,
        "request_id": request_id,
        "strategy": strategy,
        "data_id": data_id,
        **fields,
    }


class RawClient:
    """A blocking DEALER client: ``send`` ``[b"", body]``, ``receive`` JSON replies."""

    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        *,
        options: dict[int, Any] | None = None,
    ) -> None:
        self.socket: zmq.Socket[bytes] = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        for option, value in (options or {}).items():
            self.socket.setsockopt(option, value)
        self.socket.connect(endpoint)
        self._ping_ids = iter(range(1 << 62))

    def close(self) -> None:
        self.socket.close(linger=0)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: dict[str, Any] | bytes) -> None:
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.socket.send_multipart([b"", body])

    def receive(self, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """The next reply, checked to be a valid protocol v1 message."""
        if not self.socket.poll(int(timeout * 1000)):
            raise TimeoutError(f"no reply within {timeout} s")
        frames = self.socket.recv_multipart()
        assert len(frames) == 2, frames
        assert frames[0] == b""
        decode_message(frames[1])  # a service only sends valid messages
        reply: dict[str, Any] = json.loads(frames[1])
        return reply

    def request(
        self, message: dict[str, Any] | bytes, timeout: float = REPLY_TIMEOUT
    ) -> dict[str, Any]:
        """Send and return the next reply (use one request at a time)."""
        self.send(message)
        return self.receive(timeout)

    def ping(self, timeout: float = REPLY_TIMEOUT) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """PING with a fresh id; return its PONG and the replies that came before it."""
        request_id = f"ping-{next(self._ping_ids)}"
        self.send({"type": "PING", "v": 1, "request_id": request_id})
        deadline = time.monotonic() + timeout
        before: list[dict[str, Any]] = []
        while True:
            reply = self.receive(max(0.0, deadline - time.monotonic()))
            if reply["type"] == "PONG" and reply.get("request_id") == request_id:
                return reply, before
            before.append(reply)


def free_tcp_endpoint(context: zmq.Context[Any]) -> str:
    """A loopback TCP endpoint on a port that was free a moment ago."""
    probe = context.socket(zmq.ROUTER)
    try:
        port = probe.bind_to_random_port("tcp://127.0.0.1")
    finally:
        probe.close(linger=0)
    return f"tcp://127.0.0.1:{port}"


@dataclass
class PortalService:
    """A service running in a blocking portal's event loop thread."""

    portal: BlockingPortal
    service: Service
    backend: str

    @property
    def endpoint(self) -> str:
        return self.service.endpoint

    def statistics(self) -> ServiceStatistics:
        return self.portal.call(self.service.statistics)

    def wait_statistics(
        self, predicate: Callable[[ServiceStatistics], bool], timeout: float = REPLY_TIMEOUT
    ) -> ServiceStatistics:
        async def wait() -> ServiceStatistics:
            with anyio.fail_after(timeout):
                return await self.service.wait_statistics(predicate)

        return self.portal.call(wait)


# -- service process -------------------------------------------------------------------


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    endpoint: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``signum`` and wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"service did not stop within {timeout} s:\n{self.log()}"
            ) from None


def start_service_process(
    context: zmq.Context[Any], log_path: Path, *args: str, endpoint: str | None = None
) -> ServiceProcess:
    """Start ``python -m backtest_queue service`` without waiting for it."""
    endpoint = endpoint or free_tcp_endpoint(context)
    env = {**os.environ, "COLUMNS": "400"}  # one log record per line
    command = [sys.executable, "-m", "backtest_queue", "service", "--bind", endpoint, *args]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, **tied(env))
    return ServiceProcess(process, endpoint, log_path)


def wait_until_ready(
    context: zmq.Context[Any],
    service: ServiceProcess,
    timeout: float = 40.0,
    client_options: dict[int, Any] | None = None,
) -> None:
    """PING until a PONG comes back; fail early if the process exits.

    Each probe is a fresh DEALER with one PING, given up to 2 s and then closed, so a
    PING lost on a connection made before the service was bound (seen once in CI, on a
    loaded machine) cannot make the whole wait fail, and a late PONG cannot reach a
    socket the test goes on to use.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with RawClient(context, service.endpoint, options=client_options) as client:
            client.send({"type": "PING", "v": 1, "request_id": "ready?"})
            probe_ends = min(deadline, time.monotonic() + 2.0)
            while time.monotonic() < probe_ends:
                if service.process.poll() is not None:
                    raise AssertionError(
                        f"service exited with {service.process.returncode}:\n{service.log()}"
                    )
                if client.socket.poll(100):
                    assert client.receive()["type"] == "PONG"
                    return
    raise AssertionError(f"service not ready within {timeout} s:\n{service.log()}")


@contextmanager
def run_service_process(
    context: zmq.Context[Any],
    log_path: Path,
    *args: str,
    client_options: dict[int, Any] | None = None,
) -> Iterator[ServiceProcess]:
    """A ready service process, stopped with SIGTERM afterwards if still running."""
    service = start_service_process(context, log_path, *args)
    try:
        wait_until_ready(context, service, client_options=client_options)
        yield service
    finally:
        if service.process.poll() is None:
            service.stop()


# -- async clients and a scripted engine -----------------------------------------------


class AsyncClient:
    """A DEALER through the package's transport adapter, for tests on the event loop."""

    def __init__(self, sock: ZmqSocket) -> None:
        self.sock = sock
        self._ready: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any] | bytes) -> None:
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        while self.sock.try_send([b"", body]) is SendStatus.WOULD_BLOCK:
            await self.sock.wait_writable()

    async def receive(self) -> dict[str, Any]:
        while not self._ready:
            for frames in await self.sock.receive_batch():
                assert frames[0] == b""
                decode_message(frames[1])
                self._ready.append(json.loads(frames[1]))
        return self._ready.pop(0)

    async def request(self, message: dict[str, Any] | bytes) -> dict[str, Any]:
        await self.send(message)
        return await self.receive()


@asynccontextmanager
async def open_async_client(
    context: zmq.Context[Any], endpoint: str, **options: Any
) -> AsyncIterator[AsyncClient]:
    """An :class:`AsyncClient` connected to ``endpoint`` (``options``: ``{zmq.X: value}``)."""
    socket_options = {zmq.LINGER: 0, **{getattr(zmq, k): v for k, v in options.items()}}
    async with open_socket(
        context, zmq.DEALER, name="test-client", options=socket_options, connect=endpoint
    ) as sock:
        yield AsyncClient(sock)


class ScriptedEngine:
    """A test engine whose behaviour the strategy name picks.

    ``"crash"`` kills the worker process, ``"fail"`` raises ``ValueError("boom")``,
    ``"gate:<name>"`` waits (up to 30 s) until the file ``<gate_dir>/<name>`` exists,
    after writing a byte to ``<gate_dir>/<name>.started`` if that is there (a FIFO the
    test reads: see :func:`wait_started`); anything else returns at once. Every strategy
    is valid and needs 2 bars.
    """

    def __init__(self, gate_dir: Path) -> None:
        self.gate_dir = gate_dir

    def validate(self, strategy: Strategy) -> int:
        return 2

    def prepare(self) -> None:
        pass

    def run(self, request: BacktestRequest, bars: pd.DataFrame) -> Metrics:
        name = request.strategy.name
        if name == "crash":
            os._exit(3)
        if name == "fail":
            raise ValueError("boom")
        if name.startswith("gate:"):
            gate = self.gate_dir / name.removeprefix("gate:")
            started = gate.with_name(gate.name + ".started")
            if started.exists():
                with open(started, "wb") as fifo:  # waits for the test's reader
                    fifo.write(b"s")
            deadline = time.monotonic() + 30.0
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.005)  # a worker process waiting on the test, not a settle-sleep
        return Metrics(strategy_name=name, bars=len(bars), trades=0, elapsed_ms=1.0)


def started_fifo(gate_dir: Path, name: str) -> Path:
    """Make the FIFO through which :class:`ScriptedEngine` says ``"gate:<name>"`` started."""
    path = gate_dir / f"{name}.started"
    os.mkfifo(path)
    return path


async def wait_started(fifo: Path) -> None:
    """Wait until a worker started the backtest of ``fifo`` (:func:`started_fifo`); bound
    it with ``anyio.fail_after``."""

    def read() -> None:
        with open(fifo, "rb") as stream:  # blocks until the worker opens it for writing
            stream.read(1)

    await anyio.to_thread.run_sync(read, abandon_on_cancel=True)


def scripted(request_id: str, name: str) -> dict[str, Any]:
    """A BACKTEST for :class:`ScriptedEngine` on GOOG-D1."""
    message = backtest(request_id)
    message["strategy"]["name"] = name
    return message


class BrokenEngine(ScriptedEngine):
    """A test engine whose ``prepare`` fails in every worker."""

    def prepare(self) -> None:
        raise RuntimeError("no licence for the compiled engine")
