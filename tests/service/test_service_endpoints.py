"""Endpoints (issue 10, section 5): a live ipc path is refused, a stale one replaced, a
busy port named, IPv6 works on both sides, and a requester that cannot connect says so."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import zmq

from backtest_queue import BacktestRequest, Strategy, open_dispatcher
from backtest_queue.endpoints import check_ipc_path_free, endpoint_options
from backtest_queue.errors import TransportError
from backtest_queue.evolution import service_process
from backtest_queue.service import open_service
from backtest_queue.transport import CONNECT_LOG_INTERVAL, _ConnectTrouble

from service_helpers import (
    ScriptedEngine,
    free_tcp_endpoint,
    open_async_client,
    start_service_process,
    wait_until_ready,
)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="IPv6 loopback ::1 is not configured on this machine"
)
needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")


def _free_ipv6_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def context() -> AsyncIterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    with anyio.move_on_after(10):
        await anyio.to_thread.run_sync(context.destroy, 0, abandon_on_cancel=True)


def _request(name: str) -> BacktestRequest:
    strategy = Strategy(name=name, kind="sma_cross", params={"fast": 5, "slow": 20})
    return BacktestRequest(strategy=strategy, data_id="GOOG-D1")


# -- ipc paths ---------------------------------------------------------------------------


@needs_unix
@pytest.mark.anyio
async def test_a_live_ipc_path_is_refused_and_its_service_keeps_serving(
    tmp_path: Path, context: zmq.Context[Any]
) -> None:
    endpoint = f"ipc://{tmp_path / 'service.sock'}"
    engine = ScriptedEngine(tmp_path)
    with anyio.fail_after(60):
        async with (
            open_service(bind=endpoint, workers=1, engine=engine, warm_up=False) as first,
            open_async_client(context, endpoint) as client,
        ):
            assert (await client.request({"type": "PING", "request_id": "a"}))["type"] == "PONG"
            with pytest.raises(TransportError, match="another process is listening") as info:
                async with open_service(bind=endpoint, workers=1, engine=engine, warm_up=False):
                    pass
            assert endpoint in str(info.value)
            # The first service still has its path: its requester is answered.
            assert (await client.request({"type": "PING", "request_id": "b"}))["type"] == "PONG"
            async with open_async_client(context, endpoint) as newcomer:
                pong = await newcomer.request({"type": "PING", "request_id": "c"})
                assert pong["type"] == "PONG"
            assert first.statistics().pings == 3


@needs_unix
@pytest.mark.anyio
async def test_a_stale_ipc_socket_file_is_replaced(
    tmp_path: Path, context: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backtest_queue.transport")
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # a socket file nobody listens on, as a killed service leaves
    assert path.exists()
    endpoint = f"ipc://{path}"
    with anyio.fail_after(60):
        async with (
            open_service(bind=endpoint, workers=1, engine=ScriptedEngine(tmp_path), warm_up=False),
            open_async_client(context, endpoint) as client,
        ):
            assert (await client.request({"type": "PING"}))["type"] == "PONG"
    assert f"replacing the stale socket file {path}" in caplog.text


@needs_unix
def test_a_file_that_is_not_a_socket_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("precious")
    with pytest.raises(TransportError, match="exists and is not a socket"):
        check_ipc_path_free(f"ipc://{path}")
    assert path.read_text() == "precious"
    check_ipc_path_free(f"ipc://{tmp_path / 'absent.sock'}")  # nothing there: fine
    check_ipc_path_free("ipc://@abstract-name")  # not a file
    check_ipc_path_free("tcp://127.0.0.1:5580")  # not ipc


@needs_unix
@pytest.mark.slow
def test_a_second_service_process_on_a_live_ipc_path_exits_with_a_clear_error(
    zmq_context: zmq.Context[Any], tmp_path: Path
) -> None:
    """The CLI: exit status 1 and a line naming the path; the first one keeps serving."""
    endpoint = f"ipc://{tmp_path / 'cli.sock'}"
    first = start_service_process(
        zmq_context, tmp_path / "first.log", "--workers", "1", endpoint=endpoint
    )
    try:
        wait_until_ready(zmq_context, first)
        second = start_service_process(
            zmq_context, tmp_path / "second.log", "--workers", "1", endpoint=endpoint
        )
        assert second.stop(0, timeout=60) == 1  # signal 0: just wait for its exit
        assert "another process is listening on" in " ".join(second.log().split())
        wait_until_ready(zmq_context, first, timeout=10)  # still answers on its path
    finally:
        first.stop()


# -- tcp ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_busy_tcp_port_names_the_endpoint(
    tmp_path: Path, context: zmq.Context[Any]
) -> None:
    endpoint = free_tcp_endpoint(context)
    engine = ScriptedEngine(tmp_path)
    with anyio.fail_after(60):
        async with open_service(bind=endpoint, workers=1, engine=engine, warm_up=False):
            with pytest.raises(TransportError) as info:
                async with open_service(bind=endpoint, workers=1, engine=engine, warm_up=False):
                    pass
    message = str(info.value)
    assert endpoint in message
    assert "Address already in use: another process is bound to" in message
    assert "choose another port" in message


# -- IPv6 --------------------------------------------------------------------------------


def test_ipv6_endpoints_turn_zmq_ipv6_on() -> None:
    for endpoint in ("tcp://[::1]:5580", "tcp://[fe80::1%lo]:1", "tcp://127.0.0.1:1;[::1]:2"):
        assert endpoint_options(endpoint) == {zmq.IPV6: 1}, endpoint
    for endpoint in ("tcp://127.0.0.1:5580", "tcp://localhost:5580", "tcp://*:1", "ipc://x"):
        assert endpoint_options(endpoint) == {}, endpoint


@needs_ipv6
@pytest.mark.anyio
async def test_a_dispatcher_gets_results_from_a_service_on_ipv6(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with open_service(
            bind="tcp://[::1]:*", workers=1, engine=ScriptedEngine(tmp_path)
        ) as service:
            assert service.endpoint.startswith("tcp://[::1]:")
            async with open_dispatcher([service.endpoint], flush_interval=0.2) as dispatcher:
                state = await dispatcher.submit(_request("v6"))
                outcome = await dispatcher.wait(state.request_id)
    assert outcome.ok, outcome
    assert outcome.result is not None
    assert outcome.result.strategy_name == "v6"


@needs_ipv6
@pytest.mark.slow
def test_the_service_command_binds_an_ipv6_endpoint(
    zmq_context: zmq.Context[Any], tmp_path: Path
) -> None:
    endpoint = service_process.free_tcp_endpoint("::1")
    assert endpoint.startswith("tcp://[::1]:")
    service = start_service_process(
        zmq_context, tmp_path / "v6.log", "--workers", "1", endpoint=endpoint
    )
    try:
        wait_until_ready(zmq_context, service, client_options={zmq.IPV6: 1})
        assert f"service ready on {endpoint}" in " ".join(service.log().split())
    finally:
        assert service.stop() == 0


# -- a requester that cannot connect -------------------------------------------------


class _Waiter(logging.Handler):
    """Collects matching log records and sets an event at the first (same thread)."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.records: list[logging.LogRecord] = []
        self.seen = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.records.append(record)
            self.seen.set()


@needs_ipv6
@pytest.mark.anyio
async def test_a_requester_that_cannot_connect_says_so() -> None:
    endpoint = f"tcp://[::1]:{_free_ipv6_port()}"  # nothing listens there
    waiter = _Waiter(f"cannot connect to {endpoint}")
    logger = logging.getLogger("backtest_queue.transport")
    logger.addHandler(waiter)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with anyio.fail_after(30):
            # No request: one queued at exit leaks memory streams in the dispatcher (seen
            # on main too; reported), which filterwarnings=error would blame on this test.
            async with open_dispatcher([endpoint], reconnect_ivl=0.05):
                await waiter.seen.wait()
    finally:
        logger.removeHandler(waiter)
        logger.setLevel(old_level)
    [record] = waiter.records  # once, however many retries came meanwhile
    assert record.levelno == logging.INFO
    assert "refused or dropped (is the service up?)" in record.getMessage()


def test_connect_failures_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="backtest_queue.transport")
    trouble = _ConnectTrouble("req")
    trouble.retried("tcp://nowhere.invalid:1", now=100.0)  # no attempt: failed at once
    for i in range(1, 50):
        trouble.attempted("tcp://nowhere.invalid:1")
        trouble.retried("tcp://nowhere.invalid:1", now=100.0 + i * 0.1)
    trouble.retried("tcp://nowhere.invalid:1", now=100.0 + CONNECT_LOG_INTERVAL + 1)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(lines) == 2
    assert lines[0][0] == logging.INFO
    assert "failed at once" in lines[0][1]
    assert "1 failed attempt(s) in 0 s" in lines[0][1]
    assert lines[1][0] == logging.WARNING
    assert "51 failed attempt(s) in 31 s" in lines[1][1]
    trouble.connected("tcp://nowhere.invalid:1")
    assert "connected to tcp://nowhere.invalid:1 after 51 failed attempt(s)" in caplog.text
