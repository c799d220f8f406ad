"""The Dask executor on a real ``distributed.LocalCluster`` (worker processes).

One cluster per module (two single-threaded worker processes); the test that kills a
worker gets a cluster of its own.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pickle
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import dask
import msgspec
import pytest
import zmq

pytest.importorskip("distributed")

from distributed import Client, Future, LocalCluster

import backtest_queue
from backtest_queue import BacktestRequest, Outcome, open_dispatcher
from backtest_queue.errors import UsageError
from backtest_queue.protocol import decode_message
from backtest_queue.service import (
    BacktestingPyEngine,
    DaskExecutor,
    EngineError,
    dask_executor,
    load_catalog,
    open_service,
)
from backtest_queue.service.dask_worker import ServicePlugin

from service_helpers import (
    BrokenEngine,
    ScriptedEngine,
    backtest,
    free_tcp_endpoint,
    open_async_client,
    run_service_process,
    scripted,
    start_service_process,
)

#: Real clusters and processes on a busy 2-core machine: minutes, not the default 60 s.
pytestmark = pytest.mark.timeout(240)

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


def _local_cluster() -> LocalCluster:
    """Two single-threaded Dask worker processes on loopback, no dashboard.

    The scheduler's HTTP server (health, metrics) still starts: on a free port, not
    8787, which may be taken (a warning, and an error under ``filterwarnings=error``).
    """
    return LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Two single-threaded Dask worker processes, no dashboard."""
    with _local_cluster() as local:
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


@pytest.mark.slow
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


# -- outcomes of a scripted engine: failures, cancellation, stopping ------------------


def _on_scheduler(client: Client, look: Callable[[Any], Any], timeout: float = 20.0) -> Any:
    """Wait (on the scheduler's loop, up to ``timeout`` s) until ``look(scheduler)`` is
    truthy; return it."""

    async def wait(dask_scheduler: Any) -> Any:
        deadline = time.monotonic() + timeout
        while not (found := look(dask_scheduler)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{look.__name__} still false after {timeout} s")
            await asyncio.sleep(0.02)  # the scheduler's state changes on its own loop
        return found

    return client.run_on_scheduler(wait)


def _running_backtests(dask_scheduler: Any) -> list[str]:
    return [
        str(key)
        for key, task in dask_scheduler.tasks.items()
        if str(key).startswith("backtest-queue-") and task.state == "processing"
    ]


def _workers_running_backtests(dask_scheduler: Any) -> list[str]:
    """The addresses of the workers processing a backtest, as the scheduler sees them."""
    return [
        task.processing_on.address
        for key, task in dask_scheduler.tasks.items()
        if str(key).startswith("backtest-queue-")
        and task.state == "processing"
        and task.processing_on is not None
    ]


@pytest.mark.slow
@pytest.mark.anyio
async def test_failures_and_cancellations_are_answered_like_the_pool_does(
    cluster: LocalCluster, client: Client, context: zmq.Context[Any], tmp_path: Path
) -> None:
    executor = DaskExecutor(cluster.scheduler_address)
    endpoint = free_tcp_endpoint(context)
    try:
        with anyio.fail_after(60):
            async with open_async_client(context, endpoint) as requester:
                async with open_service(
                    bind=endpoint,
                    executor=executor,
                    engine=ScriptedEngine(tmp_path),
                    shutdown_grace=0.5,
                ) as service:
                    reply = await requester.request(scripted("ok", "fine"))
                    assert reply["type"] == "BACKTEST_RESULT"
                    assert reply["result"]["strategy_name"] == "fine"
                    reply = await requester.request(scripted("f", "fail"))
                    assert (reply["code"], reply["request_id"]) == ("engine_error", "f")
                    assert "ValueError: boom" in reply["message"]

                    # Cancelled by the cluster (here by another client): sent again.
                    await requester.send(scripted("g", "gate:g"))
                    [key] = await anyio.to_thread.run_sync(
                        _on_scheduler, client, _running_backtests
                    )
                    await anyio.to_thread.run_sync(
                        lambda: client.cancel([Future(key, client)], force=True)
                    )
                    reply = await requester.receive()
                    assert (reply["code"], reply["request_id"]) == ("unavailable", "g")
                    assert "cancelled" in reply["message"]
                    (tmp_path / "g").touch()  # free the worker's thread
                    reply = await requester.request(scripted("after", "fine"))
                    assert reply["type"] == "BACKTEST_RESULT"

                    # Still running when the service stops: unavailable, future cancelled.
                    await requester.send(scripted("h", "gate:h"))
                    await anyio.to_thread.run_sync(_on_scheduler, client, _running_backtests)
                    stats = service.statistics()
                reply = await requester.receive()
                assert (reply["code"], reply["request_id"]) == ("unavailable", "h")
        assert (stats.backtests_completed, stats.engine_errors, stats.unavailable) == (2, 1, 1)

        own = client.id

        def service_cancelled(dask_scheduler: Any) -> bool:
            return any(
                isinstance(event, dict) and event.get("action") == "cancel"
                for topic, events in dask_scheduler.get_events().items()
                if topic != own
                for _, event in events
            )

        assert await anyio.to_thread.run_sync(_on_scheduler, client, service_cancelled)
    finally:
        for gate in "gh":
            (tmp_path / gate).touch()


@pytest.mark.slow
@pytest.mark.anyio
async def test_an_engine_that_cannot_prepare_stops_the_start(
    cluster: LocalCluster, client: Client, tmp_path: Path
) -> None:
    executor = DaskExecutor(cluster.scheduler_address)
    with anyio.fail_after(30), pytest.raises(EngineError, match="no licence"):
        async with open_service(bind=LOCAL, executor=executor, engine=BrokenEngine(tmp_path)):
            pass
    # Nothing of it stays on the workers.
    assert await anyio.to_thread.run_sync(_plugins, client) == {
        address: [] for address in client.nthreads()
    }


# -- a real service process, a dispatcher, a Dask worker killed mid-run ---------------


def _request(message: dict[str, Any]) -> BacktestRequest:
    decoded = decode_message(json.dumps(message).encode())
    assert isinstance(decoded, BacktestRequest)
    return decoded


def _expected(requests: list[BacktestRequest]) -> dict[str, dict[str, Any]]:
    """Each request's metrics (without the wall time), run here with the same engine."""
    catalog, engine = load_catalog(), BacktestingPyEngine()
    expected = {}
    for request in requests:
        min_bars = engine.validate(request.strategy)
        first, stop = catalog.select(request.data_id, request.start, request.end, min_bars=min_bars)
        metrics = engine.run(request, catalog.bars()[request.data_id].iloc[first:stop])
        expected[request.request_id] = _comparable(msgspec.structs.asdict(metrics))
    return expected


async def _dispatch(
    endpoint: str,
    requests: list[BacktestRequest],
    submitted: Callable[[], Awaitable[None]] | None = None,
) -> list[Outcome]:
    """Submit ``requests`` through a dispatcher; every outcome it delivers."""
    outcomes: list[Outcome] = []
    async with open_dispatcher([endpoint], flush_interval=0.05) as dispatcher:
        await dispatcher.submit_many(requests)
        if submitted is not None:
            await submitted()
        while len(outcomes) < len(requests):
            outcomes.append(await dispatcher.outcomes.receive())
        assert dispatcher.stats().outcomes == len(requests)
    return outcomes


def _check(outcomes: list[Outcome], expected: dict[str, dict[str, Any]]) -> None:
    """Exactly one outcome per request, each a result with the right metrics."""
    assert sorted(o.request_id for o in outcomes) == sorted(expected)
    for outcome in outcomes:
        assert outcome.ok, outcome
        assert outcome.result is not None
        got = _comparable(msgspec.structs.asdict(outcome.result))
        assert got == expected[outcome.request_id], outcome.request_id


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_service_command_runs_on_a_dask_cluster(
    cluster: LocalCluster, context: zmq.Context[Any], tmp_path: Path, anyio_backend: str
) -> None:
    requests = [_request(message) for message in REQUESTS]
    expected = await anyio.to_thread.run_sync(_expected, requests)
    args = ("--executor", "dask", "--scheduler", cluster.scheduler_address)
    args += ("--backend", anyio_backend)  # the service's event loop, too
    with anyio.fail_after(90):
        with run_service_process(context, tmp_path / "service.log", *args) as service:
            outcomes = await _dispatch(service.endpoint, requests)
            assert service.stop() == 0, service.log()
    _check(outcomes, expected)
    log = " ".join(service.log().split())
    assert f"Dask executor: scheduler {cluster.scheduler_address}, 2 worker thread(s)" in log
    assert "with 2 workers" in log


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_dask_worker_killed_mid_run_loses_nothing(
    context: zmq.Context[Any],
) -> None:
    """SIGKILL a Dask worker process while it runs a backtest: the scheduler runs the
    task again elsewhere, and every request still ends in exactly one right result."""
    kinds = [("sma_cross", {"fast": 10, "slow": 40}), ("ema_cross", {"fast": 8, "slow": 21})]
    requests = [
        _request(backtest(f"r{i}", kind=kind, params=params, data_id="EURUSD-H1"))
        for i in range(6)
        for kind, params in [kinds[i % 2]]
    ]
    # Requests of one kind have the same metrics but for the strategy's name.
    first_two = await anyio.to_thread.run_sync(_expected, requests[:2])
    expected = {
        r.request_id: first_two[requests[i % 2].request_id] | {"strategy_name": r.strategy.name}
        for i, r in enumerate(requests)
    }
    with (
        _local_cluster() as own_cluster,
        Client(own_cluster.scheduler_address, set_as_default=False) as own_client,
    ):
        killed: list[int] = []

        def kill_a_busy_worker() -> None:
            # The key and its worker in one look: two queries let a short backtest end
            # in between (seen in CI: no worker held the key any more).
            [address, *_] = _on_scheduler(own_client, _workers_running_backtests)
            pid = own_client.run(os.getpid, workers=[address])[address]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        executor = DaskExecutor(own_cluster.scheduler_address)
        with anyio.fail_after(120):
            async with open_service(bind=LOCAL, executor=executor) as service:
                outcomes = await _dispatch(
                    service.endpoint,
                    requests,
                    partial(anyio.to_thread.run_sync, kill_a_busy_worker),
                )
                stats = service.statistics()
                # The nanny restarted the worker; the service's datasets reached it too.
                wait = partial(own_client.wait_for_workers, 2, timeout=60)
                await anyio.to_thread.run_sync(wait)
                plugins = await anyio.to_thread.run_sync(_plugins, own_client)
    assert killed
    assert len(plugins) == 2  # a new worker, with the service's datasets, loaded once
    assert all(len(held) == 1 and held[0][1:] == (True, 1) for held in plugins.values()), plugins
    _check(outcomes, expected)
    counts = (stats.backtests_completed, stats.engine_errors, stats.unavailable)
    assert counts == (len(requests), 0, 0)


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_lost_scheduler_makes_the_service_answer_unavailable(
    context: zmq.Context[Any], tmp_path: Path
) -> None:
    """The scheduler goes away mid-backtest: that backtest and the next ones are answered
    with unavailable (sent again, elsewhere), none with a final error."""
    try:
        with anyio.fail_after(120):
            own_cluster = await anyio.to_thread.run_sync(_local_cluster)
            try:
                executor = DaskExecutor(own_cluster.scheduler_address, connect_timeout=2)
                async with (
                    open_service(
                        bind=LOCAL, executor=executor, engine=ScriptedEngine(tmp_path)
                    ) as service,
                    open_async_client(context, service.endpoint) as requester,
                ):
                    await requester.send(scripted("g", "gate:g"))
                    await service.wait_statistics(lambda s: s.running == 1)
                    await anyio.to_thread.run_sync(own_cluster.close)
                    reply = await requester.receive()
                    assert (reply["code"], reply["request_id"]) == ("unavailable", "g")
                    reply = await requester.request(scripted("next", "fine"))
                    assert (reply["code"], reply["request_id"]) == ("unavailable", "next")
                    assert "send it again" in reply["message"]
                    assert service.statistics().engine_errors == 0
            finally:
                await anyio.to_thread.run_sync(own_cluster.close)
    finally:
        (tmp_path / "g").touch()


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_backtest_that_kills_its_workers_is_an_engine_error(
    context: zmq.Context[Any], tmp_path: Path
) -> None:
    """Like a crash in the local pool: a backtest whose Dask worker dies more often than
    ``allowed-failures`` (here 0) is answered with engine_error, not sent round again."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        own_cluster = await anyio.to_thread.run_sync(_local_cluster)
    try:
        with anyio.fail_after(120):
            executor = DaskExecutor(own_cluster.scheduler_address)
            async with (
                open_service(
                    bind=LOCAL, executor=executor, engine=ScriptedEngine(tmp_path)
                ) as service,
                open_async_client(context, service.endpoint) as requester,
            ):
                reply = await requester.request(scripted("c", "crash"))
                assert (reply["code"], reply["request_id"]) == ("engine_error", "c")
                assert "died" in reply["message"]
                reply = await requester.request(scripted("after", "fine"))
                assert reply["type"] == "BACKTEST_RESULT"  # the cluster lives on
    finally:
        await anyio.to_thread.run_sync(own_cluster.close)


# -- clear errors: no dask, no scheduler -----------------------------------------------


def _closed_port() -> int:
    """A loopback TCP port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def silent_peer() -> Iterator[str]:
    """A loopback TCP address that accepts connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.anyio
@pytest.mark.parametrize("peer", ["nobody", "silent"])
async def test_an_unreachable_scheduler_is_a_clear_error_within_the_timeout(
    peer: str, silent_peer: str
) -> None:
    """Refused, or accepted and never answered (distributed's own client would wait
    forever for that one): an EngineError naming the address, in about the timeout."""
    address = f"tcp://127.0.0.1:{_closed_port()}" if peer == "nobody" else silent_peer
    started = anyio.current_time()
    with anyio.fail_after(30), pytest.raises(EngineError) as raised:
        async with open_service(bind=LOCAL, executor=DaskExecutor(address, connect_timeout=2)):
            pass
    assert anyio.current_time() - started < 20
    assert f"cannot reach the Dask scheduler at {address} within 2 s" in str(raised.value)


def test_without_distributed_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dask_executor, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=re.escape("pip install 'backtest-queue[dask]'")):
        DaskExecutor("tcp://127.0.0.1:8786")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"scheduler": "127.0.0.1:8786"}, "scheduler must be a Dask scheduler address"),
        ({"scheduler": "tcp://h:1", "connect_timeout": 0}, "connect_timeout must be"),
        ({"scheduler": "tcp://h:1", "connect_timeout": math.inf}, "connect_timeout must be"),
    ],
)
def test_bad_dask_settings_are_usage_errors(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        DaskExecutor(**settings)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--executor", "dask"], 2, "--executor dask needs --scheduler"),
        (["--scheduler", "tcp://127.0.0.1:8786"], 2, "--scheduler needs --executor dask"),
        (
            ["--executor", "dask", "--scheduler", "tcp://127.0.0.1:{port}",
             "--scheduler-timeout", "2"],
            1,
            "cannot reach the Dask scheduler at tcp://127.0.0.1:{port} within 2 s",
        ),
    ],
)  # fmt: skip
def test_the_service_command_refuses_bad_dask_settings(
    args: list[str], status: int, message: str, tmp_path: Path, zmq_context: zmq.Context[Any]
) -> None:
    port = _closed_port()
    args = [arg.format(port=port) for arg in args]
    service = start_service_process(zmq_context, tmp_path / "service.log", *args)
    assert service.process.wait(timeout=60) == status
    assert message.format(port=port) in " ".join(service.log().split())


def test_a_worker_with_another_version_refuses_the_plugin() -> None:
    plugin = ServicePlugin(
        "p", pickle.dumps(BacktestingPyEngine()), pickle.dumps({}), version="0.0.0"
    )
    with pytest.raises(
        EngineError, match=r"this Dask worker has backtest-queue .*, the service 0\.0\.0"
    ):
        plugin.loaded()
    same = pickle.loads(pickle.dumps(ServicePlugin("p", pickle.dumps(None), pickle.dumps({}))))
    assert same.version == backtest_queue.__version__
    assert repr(same) == "<ServicePlugin p not loaded>"
