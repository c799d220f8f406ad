"""The Dask executor on a real ``distributed.LocalCluster`` (worker processes).

One cluster per module (two single-threaded worker processes); the test that kills a
worker gets a cluster of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import zmq

pytest.importorskip("distributed")

from distributed import Client, LocalCluster

from backtest_queue import BacktestRequest, Outcome, Strategy, open_dispatcher
from backtest_queue.protocol import Metrics
from backtest_queue.errors import UsageError
from backtest_queue.service import (
    BacktestingPyEngine,
    DaskExecutor,
    EngineError,
    load_catalog,
    open_service,
)
from backtest_queue.service import dask_executor
from backtest_queue.service.dask_worker import ServicePlugin

from lifelines import tied
from service_helpers import backtest, open_async_client, run_service_process

pytestmark = pytest.mark.slow

LOCAL = "tcp://127.0.0.1:*"
#: Requests of several kinds, datasets and ranges; each id is the request_id.
REQUESTS: list[dict[str, Any]] = [
    backtest("sma-goog", data_id="GOOG-D1"),
    backtest("ema-eurusd", kind="ema_cross", params={"fast": 12, "slow": 30}, data_id="EURUSD-H1"),
    backtest(
        "rsi-eurusd",
        kind="rsi_reversion",
        params={"period": 14, "lower": 30, "upper": 70},
        data_id="EURUSD-H1",
        start="2017-06-01",
        end="2017-10-31",
    ),
    backtest("sma-btc", params={"fast": 3, "slow": 12}, data_id="BTCUSD-MN1", cash=1_000_000),
    backtest("sma-goog-sl", data_id="GOOG-D1", sl=0.05, tp=0.2, commission=0.002),
]


def _comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the wall time, which differs run to run."""
    return {k: v for k, v in metrics.items() if k != "elapsed_ms"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Two single-threaded Dask worker processes, no dashboard."""
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as local:
        yield local


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    """A client of the test's own, to look into the cluster."""
    with Client(cluster.scheduler_address, set_as_default=False) as own:
        yield own


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _plugins(client: Client) -> dict[str, list[tuple[str, bool, int]]]:
    """Per worker address: the service plugins it holds (name, loaded, times loaded)."""

    def look(dask_worker: Any) -> list[tuple[str, bool, int]]:
        return [
            (name, plugin._loaded is not None, plugin.loads)
            for name, plugin in dask_worker.plugins.items()
            if isinstance(plugin, ServicePlugin)
        ]

    result: dict[str, list[tuple[str, bool, int]]] = client.run(look)
    return result


async def _ask_all(endpoint: str, context: zmq.Context[Any]) -> dict[str, dict[str, Any]]:
    async with open_async_client(context, endpoint) as requester:
        for message in REQUESTS:
            await requester.send(message)
        replies = [await requester.receive() for _ in REQUESTS]
    return {reply["request_id"]: reply for reply in replies}


@pytest.mark.anyio
async def test_the_same_requests_give_the_same_metrics_as_the_process_pool(
    cluster: LocalCluster, client: Client, context: zmq.Context[Any]
) -> None:
    executor = DaskExecutor(cluster.scheduler_address)
    with anyio.fail_after(90):
        async with open_service(bind=LOCAL, workers=1) as service:
            expected = await _ask_all(service.endpoint, context)
        async with open_service(bind=LOCAL, executor=executor) as service:
            assert service.workers == 2  # the cluster's worker threads
            async with open_async_client(context, service.endpoint) as requester:
                pong = await requester.request({"type": "PING", "v": 1})
            assert pong["workers"] == 2
            got = await _ask_all(service.endpoint, context)
            # The datasets went to each worker once, with the service's plugin.
            plugins = await anyio.to_thread.run_sync(_plugins, client)
            [name] = {name for held in plugins.values() for name, _, _ in held}
            assert plugins == {address: [(name, True, 1)] for address in client.nthreads()}
            stats = service.statistics()
            assert (stats.backtests_completed, stats.engine_errors) == (len(REQUESTS), 0)
    assert set(got) == set(expected) == {m["request_id"] for m in REQUESTS}
    for request_id, reply in expected.items():
        assert reply["type"] == "BACKTEST_RESULT", reply
        assert got[request_id]["type"] == "BACKTEST_RESULT", got[request_id]
        assert _comparable(got[request_id]["result"]) == _comparable(reply["result"])
        assert got[request_id]["data_fingerprint"] == reply["data_fingerprint"]
    # Stopping the service removed its plugin (and the datasets) from the workers.
    assert await anyio.to_thread.run_sync(_plugins, client) == {
        address: [] for address in client.nthreads()
    }
