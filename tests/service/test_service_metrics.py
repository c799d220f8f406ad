"""The service's Prometheus metrics over real HTTP: in-process (both backends, with a
dispatcher's metrics over real ZeroMQ next to it), CURVE refusals on both sides, and
``backtest-queue service --metrics-port 0`` as a real process."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import zmq

from backtest_queue import BacktestRequest, Strategy, open_dispatcher
from backtest_queue.errors import HandshakeRefused
from backtest_queue.security import (
    AllowedKeys,
    generate_keys,
    load_client,
    server_options,
    start_authenticator,
)
from backtest_queue.service import Service, ServiceStatistics, open_service
from backtest_queue.service.metrics import ServiceMetrics
from metrics_helpers import Scrape, scrape, scrape_blocking

from service_helpers import (
    RawClient,
    ScriptedEngine,
    backtest,
    open_async_client,
    run_service_process,
    scripted,
)

LOCAL = "tcp://127.0.0.1:*"
P = "backtest_queue_service_"
COUNTERS = [
    ("messages_received", "messages_received"),
    ("pings", "pings"),
    ("backtests_accepted", "backtests_accepted"),
    ("decode_errors", "decode_errors"),
    ("replies_sent", "replies_sent"),
    ("connections", "connections"),
    ("handshakes_refused", "handshakes_refused"),
]


@pytest.fixture
async def context() -> AsyncIterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    with anyio.move_on_after(10):  # bounded: a test failure must not hang the run
        await anyio.to_thread.run_sync(context.destroy, 0, abandon_on_cancel=True)


def assert_matches(s: Scrape, stats: ServiceStatistics) -> None:
    """Every exported counter equals the service's own statistics."""
    for name, field in COUNTERS:
        assert s.value(f"{P}{name}_total") == getattr(stats, field), name
    assert s.value(f"{P}outcomes_total", reason="result") == stats.backtests_completed
    assert s.value(f"{P}outcomes_total", reason="engine_error") == stats.engine_errors
    assert s.value(f"{P}outcomes_total", reason="unknown_data") == stats.unknown_data
    assert s.value(f"{P}outcomes_total", reason="invalid_request") == stats.invalid_requests
    assert s.value(f"{P}queued") == stats.queued
    assert s.value(f"{P}busy_workers") == stats.running
    assert s.value(f"{P}workers") == stats.workers


def request(rid: str, name: str) -> BacktestRequest:
    strategy = Strategy(name=name, kind="sma_cross", params={"fast": 5, "slow": 20})
    return BacktestRequest(strategy=strategy, data_id="GOOG-D1", request_id=rid)


@pytest.mark.anyio
async def test_service_metrics_follow_real_traffic(
    tmp_path: Path, context: zmq.Context[Any]
) -> None:
    with anyio.fail_after(60):
        async with (
            open_service(
                bind=LOCAL, workers=1, engine=ScriptedEngine(tmp_path), metrics=0
            ) as service,  # fmt: skip
            open_async_client(context, service.endpoint) as client,
        ):
            assert isinstance(service, Service)
            m = service.metrics
            assert isinstance(m, ServiceMetrics)
            assert m.url == f"http://127.0.0.1:{m.port}/metrics"
            s = await scrape(m.url)
            assert s.value(f"{P}workers") == 1
            assert s.value(f"{P}busy_workers") == 0
            assert s.value(f"{P}reply_latency_seconds_count") == 0

            # One backtest runs (held at a gate), one waits for the worker.
            await client.send(scripted("g1", "gate:one"))
            await client.send(scripted("g2", "gate:two"))
            # (connections: the monitor counts the client's handshake on its own task,
            # which may run after the two messages were read)
            stats = await service.wait_statistics(
                lambda s: s.running == 1 and s.queued == 1 and s.connections == 1
            )
            s = await scrape(m.url)
            assert s.value(f"{P}busy_workers") == 1
            assert s.value(f"{P}queued") == 1
            assert s.value(f"{P}backtests_accepted_total") == 2
            assert_matches(s, stats)
            (tmp_path / "one").touch()
            (tmp_path / "two").touch()
            assert {(await client.receive())["request_id"] for _ in range(2)} == {"g1", "g2"}

            # An engine error, an unknown dataset, a body that does not decode.
            assert (await client.request(scripted("f", "fail")))["code"] == "engine_error"
            unknown = backtest("u", data_id="NOPE")
            assert (await client.request(unknown))["code"] == "unknown_data"
            assert (await client.request(b'{"type": "BACKTEST", '))["code"] == "invalid_request"
            assert (await client.request({"type": "PING", "v": 1}))["type"] == "PONG"
            stats = await service.wait_statistics(
                lambda s: s.replies_sent == 6 and s.connections == 1
            )
            s = await scrape(m.url)
            assert_matches(s, stats)
            assert s.value(f"{P}outcomes_total", reason="result") == 2
            assert s.value(f"{P}outcomes_total", reason="engine_error") == 1
            assert s.value(f"{P}outcomes_total", reason="unknown_data") == 1
            assert s.value(f"{P}outcomes_total", reason="invalid_request") == 1
            assert s.value(f"{P}decode_errors_total") == 1
            # Accepted ones only: 2 results and the engine error.
            assert s.value(f"{P}reply_latency_seconds_count") == 3
            assert s.value(f"{P}reply_latency_seconds_sum") > 0

            # A dispatcher with metrics, over real ZeroMQ, next to the service's.
            async with open_dispatcher(service.endpoint, metrics=0) as d:
                assert d.metrics is not None
                await d.submit_many([request("d1", "fine"), request("d2", "fail")])
                assert (await d.wait("d1")).ok
                assert (await d.wait("d2")).reason == "service_error"
                r = await scrape(d.metrics.url)
                assert r.value("backtest_queue_connected", service=service.endpoint) == 1
                assert r.value("backtest_queue_pending", service=service.endpoint) == 0
                assert r.value("backtest_queue_sent_total") == 2
                assert r.value("backtest_queue_outcomes_total", reason="result") == 1
                assert r.value("backtest_queue_outcomes_total", reason="service_error") == 1
                assert r.value("backtest_queue_reply_latency_seconds_count") == 2
                assert r.value("backtest_queue_reply_latency_seconds_sum") > 0
            s = await scrape(m.url)
            assert s.value(f"{P}outcomes_total", reason="result") == 3
            assert s.value(f"{P}outcomes_total", reason="engine_error") == 2


@pytest.mark.anyio
@pytest.mark.parametrize("who", ["stranger", "no-key"])
async def test_refused_handshakes_are_counted_on_both_sides(
    tmp_path: Path, context: zmq.Context[Any], who: str
) -> None:
    generate_keys(tmp_path / "service", "service")
    generate_keys(tmp_path / "allowed", "requester")
    generate_keys(tmp_path / "stranger", "requester")
    auth = start_authenticator(context, AllowedKeys(tmp_path / "allowed"))
    stranger = None  # no CURVE at all: a mechanism mismatch
    if who == "stranger":  # a key the service does not allow
        stranger = load_client(tmp_path / "stranger" / "requester.key_secret",
                               tmp_path / "service" / "service.key")  # fmt: skip
    try:
        with anyio.fail_after(60):
            async with (
                open_service(
                    bind=LOCAL, workers=1, engine=ScriptedEngine(tmp_path), context=context,
                    socket_options=server_options(tmp_path / "service" / "service.key_secret"),
                    metrics=0,
                ) as service,
                open_dispatcher(service.endpoint, curve=stranger, metrics=0) as d,
            ):  # fmt: skip
                assert service.metrics is not None
                assert d.metrics is not None
                await service.wait_statistics(lambda s: s.handshakes_refused >= 1)
                s = await scrape(service.metrics.url)  # the requester keeps retrying: >=
                assert s.value(f"{P}handshakes_refused_total") >= 1
                assert s.value(f"{P}connections_total") == 0
                with pytest.raises(HandshakeRefused):  # once its monitor has told it too
                    await d.wait_connected()
                assert d.stats().handshakes_refused >= 1
                r = await scrape(d.metrics.url)
                assert r.value("backtest_queue_handshakes_refused_total") >= 1
                assert r.value("backtest_queue_connected", service=service.endpoint) == 0
    finally:
        auth.stop()


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_service_process_serves_metrics_on_loopback(
    zmq_context: zmq.Context[Any], tmp_path: Path, backend: str
) -> None:
    with run_service_process(
        zmq_context, tmp_path / "service.log",
        "--workers", "1", "--metrics-port", "0", "--backend", backend,
    ) as service:  # fmt: skip
        deadline = time.monotonic() + 30
        while (found := re.search(r"service metrics on (http://\S+/metrics)", service.log())) \
                is None:  # fmt: skip
            assert time.monotonic() < deadline, service.log()
            assert service.process.poll() is None, service.log()
            time.sleep(0.05)  # polling another process's log for a line, bounded
        url = found.group(1)
        assert url.startswith("http://127.0.0.1:")
        with RawClient(zmq_context, service.endpoint) as client:
            assert client.request(backtest("p1"))["type"] == "BACKTEST_RESULT"
            assert client.request(backtest("p2", data_id="NOPE"))["code"] == "unknown_data"
        s = scrape_blocking(url)
        assert s.value(f"{P}outcomes_total", reason="result") == 1
        assert s.value(f"{P}outcomes_total", reason="unknown_data") == 1
        assert s.value(f"{P}backtests_accepted_total") == 1
        assert s.value(f"{P}reply_latency_seconds_count") == 1
        assert s.value(f"{P}workers") == 1
        assert s.value(f"{P}messages_received_total") >= 3  # readiness PINGs too
        assert "process_resident_memory_bytes" in s.families
        assert service.stop(signal.SIGTERM) == 0


def test_service_metrics_without_prometheus_client_exit_with_2() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from backtest_queue.cli import main\n"
        "sys.exit(main(['service', '--bind', 'tcp://127.0.0.1:*', '--metrics-port', '0']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done
    assert "pip install 'backtest-queue[metrics]'" in done.stderr + done.stdout
