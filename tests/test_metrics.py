"""The requester's Prometheus metrics, scraped over real HTTP (``open_dispatcher(metrics=...)``).

The dispatcher runs on the in-memory network (real clock: the HTTP server is a real
thread and a real socket); ``tests/service/test_service_metrics.py`` scrapes a real
service process and a dispatcher talking to it over ZeroMQ.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from backtest_queue import (
    BacktestRequest,
    Strategy,
    TransportError,
    UsageError,
    open_dispatcher,
)
from backtest_queue.metrics import LatencyHistogram, MetricsSettings, RequesterMetrics
from backtest_queue.outcome import Outcome
from backtest_queue.protocol import ErrorReply, Metrics, encode_message
from backtest_queue.testing import MemoryNetwork, echo_result
from metrics_helpers import Scrape, scrape

A = "tcp://service-a:5580"
B = "tcp://service-b:5580"
LIMIT = 30.0  # seconds: only catches hangs


def request(rid: str) -> BacktestRequest:
    strategy = Strategy(name=rid, kind="sma_cross", params={"fast": 5, "slow": 20})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=rid)


def service_a(r: BacktestRequest) -> list[bytes]:
    """Results, an engine error for ``bad-*``, silence for ``hold-*``."""
    if r.request_id.startswith("bad"):
        error = ErrorReply(request_id=r.request_id, code="engine_error", message="boom")
        return [encode_message(error)]
    if r.request_id.startswith("hold"):
        return []
    return echo_result(r)


@pytest.mark.anyio
async def test_requester_metrics_follow_real_traffic_over_http() -> None:
    network = MemoryNetwork()
    with anyio.fail_after(LIMIT):
        async with open_dispatcher(
            [A, B], network=network, metrics=0, max_attempts=3, result_timeout=600.0
        ) as d:
            m = d.metrics
            assert isinstance(m, RequesterMetrics)
            assert m.addr == "127.0.0.1"
            assert m.url == f"http://127.0.0.1:{m.port}/metrics"
            # Nothing is up: everything waits in the send queue.
            await d.submit_many([request(f"ok-{i}") for i in range(3)])
            s = await scrape(m.url)
            assert s.value("backtest_queue_queued") == 3
            assert s.value("backtest_queue_connected", service=A) == 0
            assert s.value("backtest_queue_pending", service=B) == 0
            assert s.value("backtest_queue_submitted_total") == 3
            assert s.value("backtest_queue_sent_total") == 0
            assert s.labels("backtest_queue_outcomes", "reason") == {
                "result", "cached", "timeout", "disconnected", "service_error", "shutdown"
            }  # fmt: skip
            assert s.value("backtest_queue_reply_latency_seconds_count") == 0

            # B comes up and never answers: the three go there and stay pending.
            network.bind(B, lambda r: [])
            await d.wait_connected(B)  # the connect flush has run by now
            assert d.queue.pending == 3
            network.bind(A, service_a)
            await d.wait_connected(A)
            ids = [f"ok-{i}" for i in range(3, 6)]
            await d.submit_many([request(rid) for rid in ids])
            for rid in ids:
                assert (await d.wait(rid)).ok
            on_b = [r.request_id for r in network.received if r.endpoint == B]
            assert on_b == ["ok-0", "ok-1", "ok-2"]
            s = await scrape(m.url)
            assert s.value("backtest_queue_queued") == 0
            assert s.value("backtest_queue_pending", service=B) == 3
            assert s.value("backtest_queue_pending", service=A) == 0
            assert s.value("backtest_queue_connected", service=A) == 1
            assert s.value("backtest_queue_connected", service=B) == 1
            assert s.value("backtest_queue_sent_total") == 6
            assert s.value("backtest_queue_outcomes_total", reason="result") == 3
            assert s.value("backtest_queue_reply_latency_seconds_count") == 3
            assert s.value("backtest_queue_reply_latency_seconds_bucket", le="+Inf") == 3
            assert s.value("backtest_queue_retries_total") == 0

            # B goes away: its three are re-sent to A (retries) and answered there.
            network.unbind(B)
            for rid in on_b:
                assert (await d.wait(rid)).ok
            s = await scrape(m.url)
            assert s.value("backtest_queue_connected", service=B) == 0
            assert s.value("backtest_queue_pending", service=B) == 0
            assert s.value("backtest_queue_retries_total") == 3
            assert s.value("backtest_queue_sent_total") == 9
            assert s.value("backtest_queue_outcomes_total", reason="result") == 6
            assert s.value("backtest_queue_reply_latency_seconds_count") == 6

            # An error reply is an outcome decided by a reply; a silent one stays pending.
            await d.submit(request("bad-1"))
            assert (await d.wait("bad-1")).reason == "service_error"
            await d.submit(request("hold-1"))
            s = await scrape(m.url)
            assert s.value("backtest_queue_outcomes_total", reason="service_error") == 1
            assert s.value("backtest_queue_reply_latency_seconds_count") == 7
            assert s.value("backtest_queue_pending", service=A) == 1
            assert s.value("backtest_queue_outcomes_total", reason="shutdown") == 0
            assert s.value("backtest_queue_handshakes_refused_total") == 0
            assert s.value("backtest_queue_invalid_replies_total") == 0
            url = m.url
    # The block ended: 'hold-1' got its shutdown outcome; the server is gone.
    assert m.url is None  # the server is gone; the counts can still be read
    last = Scrape.of(m.collect())
    assert last.value("backtest_queue_outcomes_total", reason="shutdown") == 1
    assert last.value("backtest_queue_outcomes_total", reason="timeout") == 0
    with pytest.raises(urllib.error.URLError):
        await scrape(url)


@pytest.mark.anyio
async def test_a_callers_registry_is_used_without_a_server_and_released_at_exit() -> None:
    registry = CollectorRegistry()
    network = MemoryNetwork()
    network.bind(A)
    for _ in range(2):  # a second dispatcher can use the registry after the first
        with anyio.fail_after(LIMIT):
            async with open_dispatcher(A, network=network, metrics=registry) as d:
                assert d.metrics is not None
                assert d.metrics.port is None
                assert d.metrics.url is None
                assert d.metrics.registry is registry
                await d.submit(request("r"))
                assert (await d.wait("r")).ok
                text = generate_latest(registry).decode()
                assert 'backtest_queue_outcomes_total{reason="result"} 1.0' in text
                assert "process_" not in text  # the caller's registry gets only ours
        assert b"backtest_queue_" not in generate_latest(registry)


@pytest.mark.anyio
async def test_each_dispatcher_has_its_own_registry() -> None:
    network = MemoryNetwork()
    network.bind(A)
    with anyio.fail_after(LIMIT):
        async with (
            open_dispatcher(A, network=network, metrics=0) as one,
            open_dispatcher(A, network=network, metrics=MetricsSettings(port=0)) as two,
        ):
            assert one.metrics is not None
            assert two.metrics is not None
            assert one.metrics.port != two.metrics.port
            await one.submit(request("r"))
            assert (await one.wait("r")).ok
            first, second = await scrape(one.metrics.url), await scrape(two.metrics.url)
            assert first.value("backtest_queue_outcomes_total", reason="result") == 1
            assert second.value("backtest_queue_outcomes_total", reason="result") == 0
            assert "process_cpu_seconds" in first.families  # a fresh registry's extras


@pytest.mark.parametrize(
    ("metrics", "words"),
    [
        (-1, "from 0"),
        (65536, "to 65535"),
        (True, "None, a port number"),
        ("9100", "None, a port number"),
        (9.5, "None, a port number"),
    ],
)
def test_bad_metrics_settings_are_refused_before_anything_opens(
    metrics: object, words: str
) -> None:
    with pytest.raises(UsageError, match=words):
        open_dispatcher(A, network=MemoryNetwork(), metrics=metrics)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"port": None}, "need a registry"),
        ({"port": 0, "addr": ""}, "addr"),
        ({"latency_buckets": ()}, "latency_buckets"),
        ({"latency_buckets": (1.0, 0.5)}, "increasing"),
        ({"latency_buckets": (0.0, 1.0)}, "positive"),
        ({"latency_buckets": (1.0, float("inf"))}, "finite"),
        ({"latency_buckets": [0.1, 1.0]}, "tuple"),
    ],
)
def test_bad_metrics_settings_name_the_field(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        MetricsSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_busy_metrics_port_is_a_transport_error_on_entering() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with anyio.fail_after(LIMIT), pytest.raises(TransportError, match=f"port {port}"):
            async with open_dispatcher(A, network=MemoryNetwork(), metrics=port):
                pytest.fail("entered with a busy metrics port")


def test_metrics_without_prometheus_client_name_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises
    with pytest.raises(UsageError, match=r"backtest-queue\[metrics\]"):
        open_dispatcher(A, network=MemoryNetwork(), metrics=0)
    open_dispatcher(A, network=MemoryNetwork())  # without metrics nothing needs it


def test_the_library_imports_without_prometheus_client() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import backtest_queue, backtest_queue.lifecycle, backtest_queue.metrics\n"
        "import backtest_queue.service.server, backtest_queue.service.command\n"
        "import backtest_queue.cli\n"
        "assert sys.modules['prometheus_client'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@given(
    st.lists(st.floats(min_value=0.0, max_value=1000.0), max_size=50),
    st.lists(st.floats(min_value=1e-3, max_value=500.0), min_size=1, max_size=8, unique=True),
)
def test_the_latency_histogram_counts_like_prometheus_clients(
    seconds: list[float], bounds: list[float]
) -> None:
    buckets = tuple(sorted(bounds))
    ours = LatencyHistogram("x_seconds", "x", buckets)
    theirs = Histogram("x_seconds", "x", buckets=buckets, registry=None)
    for value in [*seconds, *buckets]:  # a value on a bound counts in that bucket (le)
        ours.observe(value)
        theirs.observe(value)
    [reference] = theirs.collect()
    expected = {(s.name, tuple(s.labels.items())): s.value for s in reference.samples
                if not s.name.endswith("_created")}  # fmt: skip
    got = {(s.name, tuple(s.labels.items())): s.value for s in ours.collect().samples}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


@pytest.mark.anyio
async def test_a_retry_that_cannot_go_keeps_its_earlier_hand_overs_latency_stamp() -> None:
    """A retry's send that fails (EAGAIN) puts the request back in the queue; a late
    result of the attempt before must still time its reply from that attempt's send."""
    registry = CollectorRegistry()
    with anyio.fail_after(LIMIT):
        async with open_dispatcher([A], network=MemoryNetwork(), metrics=registry) as d:
            m = d.metrics
            assert isinstance(m, RequesterMetrics)
            retried, fresh = request("retried"), request("fresh")
            m.sent([retried])  # the first attempt goes
            stamps = m.sent([retried, fresh])  # the retry (and a first send) ...
            m.not_sent([retried, fresh], stamps)  # ... could not go
            result = Metrics(strategy_name="x")
            m.delivered(Outcome(retried, result, None, "", 2))
            m.delivered(Outcome(fresh, result, None, "", 1))
            s = Scrape.of(registry.collect())
    assert s.value("backtest_queue_reply_latency_seconds_count") == 1  # the retried one
    assert s.value("backtest_queue_outcomes_total", reason="result") == 2


@pytest.mark.anyio
async def test_a_retry_delivered_during_its_failed_send_leaves_no_stamp() -> None:
    """The earlier attempt's result is read during the retry's send (which then fails):
    the request is resolved, and not_sent must not stamp it again (a stamp for ever)."""
    registry = CollectorRegistry()
    with anyio.fail_after(LIMIT):
        async with open_dispatcher([A], network=MemoryNetwork(), metrics=registry) as d:
            m = d.metrics
            assert isinstance(m, RequesterMetrics)
            r = request("retried")
            m.sent([r])
            stamps = m.sent([r])  # the retry's send ...
            m.delivered(Outcome(r, Metrics(strategy_name="x"), None, "", 2))  # ... reads it
            m.not_sent([r], stamps)  # ... and then fails
            assert m._sent_at == {}
