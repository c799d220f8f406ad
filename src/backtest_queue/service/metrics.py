"""The backtest service's Prometheus metrics (``backtest_queue_service_*``).

``open_service(metrics=...)`` or ``backtest-queue service --metrics-port PORT`` (the
``metrics`` extra). Counters and gauges are read from :meth:`Service.statistics` at
scrape time (a custom collector: the service pays nothing for them); the reply latency
histogram is fed by the service when it accepts a backtest and when it answers it (one
``if self.metrics is not None`` each). See ``docs/metrics.md`` for the table, and
:mod:`backtest_queue.metrics` for the settings and the HTTP exposition.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

from ..metrics import Exposed, LatencyHistogram, MetricsSettings, exposing, require_prometheus

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .server import Service

__all__ = ["ServiceMetrics", "open_service_metrics"]

_PREFIX: Final = "backtest_queue_service_"
#: ``outcomes_total`` reasons: ``result``, or the code of the ``ERROR`` reply, with the
#: :class:`ServiceStatistics` counter each is read from.
_OUTCOMES: Final = (
    ("result", "backtests_completed"),
    ("invalid_request", "invalid_requests"),
    ("unknown_data", "unknown_data"),
    ("unsupported_version", "unsupported_versions"),
    ("too_large", "too_large"),
    ("engine_error", "engine_errors"),
    ("unavailable", "unavailable"),
)
#: Plain counters: (name without the prefix and ``_total``, statistics field, help).
_COUNTERS: Final = (
    ("messages_received", "messages_received", "Multipart messages read from the socket."),
    ("pings", "pings", "PINGs answered with a PONG."),
    ("backtests_accepted", "backtests_accepted",
     "Backtest requests that passed validation and were queued for a worker."),
    ("duplicates_ignored", "duplicates_ignored",
     "Requests ignored because the same request_id from the same requester was in flight."),
    ("decode_errors", "decode_errors",
     "Message bodies that could not be decoded (bad JSON, wrong types, unknown version, "
     "too large); each is also an outcome with its error code."),
    ("bad_frames", "bad_frames",
     "Messages without the [routing id, empty delimiter, body] framing."),
    ("replies_sent", "replies_sent", "Replies handed to ZeroMQ."),
    ("reply_retries", "reply_retries",
     "Reply sends refused (requester's pipe full or requester gone) and retried later."),
    ("replies_dropped", "replies_dropped",
     "Replies given up on (held past reply_timeout, outbox full, or stopping)."),
    ("pool_restarts", "pool_restarts", "Times the worker pool was replaced after a worker died."),
    ("connections", "connections", "Requester connections whose ZMTP handshake succeeded."),
    ("disconnects", "disconnects", "Requester connections closed."),
    ("handshakes_refused", "handshakes_refused",
     "Requester handshakes that failed (CURVE key not allowed, mechanism mismatch)."),
)  # fmt: skip


class ServiceMetrics(Exposed):
    """A service's Prometheus metrics: ``Service.metrics`` when opened with ``metrics=``.

    Attributes:
        registry, addr, port, url: where the metrics are exposed
            (see :class:`backtest_queue.metrics.Exposed`).
    """

    def __init__(self, service: Service, *, latency_buckets: Iterable[float]) -> None:
        super().__init__()
        require_prometheus()
        self._service = service
        self._accepted_at: dict[tuple[bytes, str], float] = {}
        self._latency = LatencyHistogram(
            _PREFIX + "reply_latency_seconds",
            "Seconds from accepting a backtest request to queueing its reply (a result or "
            "an error), waiting for a worker included.",
            latency_buckets,
        )

    def __repr__(self) -> str:
        return f"<ServiceMetrics {self.url or 'registry only'}>"

    # -- fed by the service (event-loop thread) ----------------------------------------

    def accepted(self, peer: bytes, request_id: str) -> None:
        """A backtest request from ``peer`` was accepted now."""
        self._accepted_at[(peer, request_id)] = time.monotonic()

    def answered(self, peer: bytes, request_id: str) -> None:
        """The accepted request's reply was queued now."""
        accepted_at = self._accepted_at.pop((peer, request_id), None)
        if accepted_at is not None:
            self._latency.observe(time.monotonic() - accepted_at)

    # -- read at scrape time (the HTTP server's thread) --------------------------------

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families (called by the registry at each scrape)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._service.statistics()  # ints only: safe from this thread
        for name, field, text in _COUNTERS:
            yield CounterMetricFamily(_PREFIX + name, text, value=getattr(stats, field))
        outcomes = CounterMetricFamily(
            _PREFIX + "outcomes",
            "Answers by outcome: result, or the ERROR reply's code (invalid_request, "
            "unknown_data, unsupported_version, too_large, engine_error, unavailable).",
            labels=["reason"],
        )
        for reason, field in _OUTCOMES:
            outcomes.add_metric([reason], getattr(stats, field))
        yield outcomes
        yield GaugeMetricFamily(_PREFIX + "queued",
                                "Accepted backtest requests waiting for a worker.",
                                value=stats.queued)  # fmt: skip
        yield GaugeMetricFamily(_PREFIX + "busy_workers",
                                "Workers running a backtest now.", value=stats.running)  # fmt: skip
        yield GaugeMetricFamily(_PREFIX + "workers",
                                "Worker processes in the pool.", value=stats.workers)  # fmt: skip
        yield GaugeMetricFamily(_PREFIX + "replies_waiting",
                                "Replies not handed to ZeroMQ yet (held ones included).",
                                value=stats.replies_waiting)  # fmt: skip
        yield self._latency.collect()


@asynccontextmanager
async def open_service_metrics(
    service: Service, settings: MetricsSettings | None
) -> AsyncIterator[None]:
    """Expose ``service``'s metrics for the block (nothing when ``settings`` is ``None``).

    Sets ``service.metrics`` (left set afterwards, to read the last counts).

    Raises:
        TransportError: the HTTP server cannot bind.
    """
    if settings is None:
        yield
        return
    metrics = ServiceMetrics(service, latency_buckets=settings.latency_buckets)
    async with exposing(metrics, settings, what="service"):
        service.metrics = metrics
        yield
