"""The test kit's real-service helper: a crash and a restart on the same endpoint."""

from __future__ import annotations

import os

import anyio
import pytest

from backtest_queue import BacktestRequest, Strategy, open_dispatcher
from backtest_queue.testing import ServiceProcess

from proc_watch import descendants, wait_gone

pytestmark = pytest.mark.slow


def request(i: int) -> BacktestRequest:
    strategy = Strategy(name=f"s{i}", kind="sma_cross", params={"fast": 5, "slow": 20})
    return BacktestRequest(strategy=strategy, data_id="GOOG-D1", request_id=f"svc-{i}")


@pytest.mark.anyio
async def test_a_killed_service_restarts_on_its_endpoint_and_serves_again() -> None:
    service = ServiceProcess(workers=1)
    await anyio.to_thread.run_sync(service.start)
    try:
        async with open_dispatcher([service.endpoint], result_timeout=60.0) as d:
            with anyio.fail_after(120):
                await d.submit(request(0))
                assert (await d.wait("svc-0")).ok
                assert service.process is not None
                old = service.process.pid
                await anyio.to_thread.run_sync(service.restart)
                assert service.starts == 2
                assert service.process is not None
                assert service.process.pid != old
                await d.submit(request(1))
                assert (await d.wait("svc-1")).ok
    finally:
        await anyio.to_thread.run_sync(service.stop)
    assert not service.running


def test_stop_ends_the_service_and_its_workers() -> None:
    service = ServiceProcess(workers=2)
    service.start()
    try:
        assert service.process is not None
        pid = service.process.pid
        assert os.getpgid(pid) == pid  # its own process group
        below = descendants(pid)
        assert len(below) >= 2, below
    finally:
        status = service.stop()
    assert status is not None  # it was running
    for child in below:
        assert wait_gone(child, 30), f"worker {child} outlived the stop"
