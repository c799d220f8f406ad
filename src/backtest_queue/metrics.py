"""Prometheus metrics: the settings, the HTTP exposition, and the requester's metrics.

Optional: the ``metrics`` extra installs prometheus-client
(``pip install 'backtest-queue[metrics]'``). Nothing here imports it until metrics are
asked for; asking without it raises :class:`~backtest_queue.UsageError` naming the extra.

* :class:`MetricsSettings` - where to expose: an HTTP port (``/metrics``, bound to
  127.0.0.1 by default) and/or a :class:`prometheus_client.CollectorRegistry` of the
  caller's. ``open_dispatcher(metrics=...)`` and ``open_service(metrics=...)`` take one,
  a port number, or a registry.
* :class:`RequesterMetrics` - the dispatcher's metrics (``backtest_queue_*``). Most are
  read at scrape time from the counters the dispatcher and its policy core keep anyway
  (a custom collector: the hot path pays nothing for them); only the outcome counts by
  reason and the reply latency histogram are fed by the dispatcher, through one
  ``if self.metrics is not None`` where it hands requests over and delivers outcomes.

Latencies are real seconds (:func:`time.monotonic`, not the event loop's clock, which a
test may mock; it is also far cheaper to read than ``anyio.current_time()``). Every
instance gets its own registry unless the caller passes one (metrics of two dispatchers
or of successive tests never mix). Scrapes run in the HTTP server's thread; the
collector only reads integers and set membership there (atomic under the GIL) and never
iterates the dispatcher's containers. The metric table is in ``docs/metrics.md``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Final

import anyio

from .cli_types import integer
from .errors import TransportError, UsageError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from .dispatcher import Dispatcher
    from .outcome import Outcome
    from .protocol import BacktestRequest

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "MetricsSettings",
    "RequesterMetrics",
    "add_metrics_arguments",
    "metrics_from_args",
    "metrics_settings",
    "require_prometheus",
]

log = logging.getLogger("backtest_queue")

#: Reply latency histogram bounds, in seconds: from a cached-data millisecond run to
#: a five-minute backtest.
DEFAULT_LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_INSTALL: Final = "pip install 'backtest-queue[metrics]'"
#: Outcome reasons on the requester: a result (``result``; ``cached`` when a store
#: answered without a backtest) or a :data:`~backtest_queue.FailureReason`.
OUTCOME_REASONS: Final = ("result", "cached", "timeout", "disconnected", "service_error",
                          "shutdown")  # fmt: skip
_REPLY_REASONS: Final = frozenset({"result", "service_error"})  # decided by a service's reply


def require_prometheus() -> ModuleType:
    """Import prometheus-client.

    Raises:
        UsageError: it is not installed (names the ``metrics`` extra to install).
    """
    try:
        import prometheus_client
    except ImportError:
        raise UsageError(
            f"metrics need prometheus-client, which is not installed: {_INSTALL}"
        ) from None
    return prometheus_client


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSettings:
    """Where to expose Prometheus metrics.

    Attributes:
        port: TCP port of an HTTP server answering ``GET /metrics`` (0: a free port, read
            it back from ``.metrics.port``); ``None``: no server (give ``registry``).
        addr: the address the server binds; loopback by default. Anything else lets
            every host that reaches it read the metrics (endpoints, counts): an explicit
            choice.
        registry: a :class:`prometheus_client.CollectorRegistry` to register in, for
            callers who expose their own; ``None``: a fresh registry per dispatcher or
            service (with the process collector: ``process_*`` metrics). One dispatcher
            or service per registry at a time (their metric names are the same).
        latency_buckets: upper bounds of the reply latency histogram, in seconds,
            increasing (``+Inf`` is added).

    Raises:
        UsageError: a setting is out of range, or neither ``port`` nor ``registry`` is
            given (the metrics would be visible nowhere).
    """

    port: int | None = 0
    addr: str = "127.0.0.1"
    registry: CollectorRegistry | None = None
    latency_buckets: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS

    def __post_init__(self) -> None:
        port = self.port
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
        ):
            raise UsageError(
                f"metrics port must be an int from 0 (a free port) to 65535, or None "
                f"(no HTTP server); got {port!r}"
            )
        if not isinstance(self.addr, str) or not self.addr:
            raise UsageError(f"metrics addr must be a host address such as '127.0.0.1'; "
                             f"got {self.addr!r}")  # fmt: skip
        if port is None and self.registry is None:
            raise UsageError(
                "metrics with port=None need a registry: give port (an HTTP server) or "
                "registry (your own CollectorRegistry), or leave metrics out"
            )
        buckets = self.latency_buckets
        if not (
            isinstance(buckets, tuple)
            and buckets
            and all(isinstance(b, int | float) and not isinstance(b, bool) for b in buckets)
            and all(0 < b < math.inf for b in buckets)
            and all(a < b for a, b in itertools.pairwise(buckets))
        ):
            raise UsageError(
                "metrics latency_buckets must be a non-empty tuple of increasing, finite, "
                f"positive seconds; got {buckets!r}"
            )


def metrics_settings(value: object, *, name: str = "metrics") -> MetricsSettings | None:
    """Turn what a caller gave as ``metrics=`` into settings (checked before anything opens).

    Args:
        value: ``None`` (no metrics), a port number (an HTTP server on 127.0.0.1; 0 picks
            a free port), a :class:`prometheus_client.CollectorRegistry` (register there,
            no server), or :class:`MetricsSettings`.
        name: the parameter's name, for messages.

    Returns:
        The settings, or ``None`` for no metrics.

    Raises:
        UsageError: prometheus-client is not installed, or ``value`` is none of the above.
    """
    if value is None:
        return None
    prometheus_client = require_prometheus()
    if isinstance(value, MetricsSettings):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return MetricsSettings(port=value)
    if isinstance(value, prometheus_client.CollectorRegistry):
        return MetricsSettings(port=None, registry=value)
    raise UsageError(
        f"{name} must be None, a port number, a prometheus_client.CollectorRegistry or "
        f"MetricsSettings; got {value!r}"
    )


class LatencyHistogram:
    """A histogram of seconds, observed on the event loop and collected by a scrape.

    Not ``prometheus_client.Histogram``: that one takes a lock and walks its buckets in
    Python on every observation (about 4 us); this one does a bisect and two additions
    (under 1 us), and the collector builds the family from a snapshot. A snapshot is one
    C-level list copy (atomic under the GIL), so ``_count`` always equals the ``+Inf``
    bucket; ``_sum`` may lag one observation behind.

    Args:
        name: the metric name (ends in ``_seconds``).
        documentation: its help string.
        bounds: increasing upper bounds in seconds (``+Inf`` is added).
    """

    def __init__(self, name: str, documentation: str, bounds: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one: above every bound
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation (a negative one counts as 0)."""
        if seconds < 0.0:
            seconds = 0.0
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    def collect(self) -> Metric:
        """The histogram family, from a snapshot of the counts."""
        from prometheus_client.core import HistogramMetricFamily

        counts = list(self._counts)
        total = self._sum
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip((*self._bounds, math.inf), counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        return HistogramMetricFamily(self.name, self.documentation, buckets=buckets,
                                     sum_value=total)  # fmt: skip


class Exposed:
    """What both sides' metrics share: their registry and HTTP server, once opened.

    Attributes:
        registry: the registry the metrics are in (``None`` until opened).
        addr: the address the HTTP server is bound to.
        port: the port it is bound to (``None``: no server).
    """

    def __init__(self) -> None:
        self.registry: CollectorRegistry | None = None
        self.addr = ""
        self.port: int | None = None

    @property
    def url(self) -> str | None:
        """``http://ADDR:PORT/metrics`` (``None`` without a server)."""
        if self.port is None:
            return None
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def collect(self) -> Iterable[Metric]:
        raise NotImplementedError


@asynccontextmanager
async def exposing(
    metrics: Exposed, settings: MetricsSettings, *, what: str
) -> AsyncIterator[None]:
    """Register ``metrics`` and serve its registry over HTTP for the ``async with`` block.

    On exit the server is shut down (waited for in a worker thread, shielded from
    cancellation: up to half a second, the server's poll interval), ``metrics.port`` set
    back to ``None`` and ``metrics`` unregistered.

    Raises:
        TransportError: the HTTP server cannot bind ``settings.addr:settings.port``.
    """
    prometheus_client = require_prometheus()
    registry = settings.registry
    if registry is None:
        registry = prometheus_client.CollectorRegistry()
        prometheus_client.ProcessCollector(registry=registry)
    registry.register(metrics)
    try:
        metrics.registry = registry
        if settings.port is None:
            yield
            return
        try:
            server, thread = prometheus_client.start_http_server(
                settings.port, addr=settings.addr, registry=registry
            )
        except OSError as exc:
            raise TransportError(
                f"cannot serve {what} metrics on {settings.addr} port {settings.port}: {exc}"
            ) from exc
        try:
            metrics.addr = settings.addr
            metrics.port = int(server.server_address[1])
            log.info("%s metrics on %s", what, metrics.url)
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.shutdown)  # waits <= 0.5 s
            server.server_close()
            thread.join()
            metrics.port = None  # served no more: url is None
    finally:
        registry.unregister(metrics)


def add_metrics_arguments(parser: argparse.ArgumentParser, *, what: str) -> None:
    """Add ``--metrics-port`` and ``--metrics-addr`` to a command's options."""
    parser.add_argument(
        "--metrics-port",
        type=integer(0, 65535),
        default=None,
        metavar="PORT",
        help=f"serve the {what}'s Prometheus metrics at http://ADDR:PORT/metrics (0: a free "
        "port, logged; needs the 'metrics' extra; default: no metrics)",
    )
    parser.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="address the metrics server binds (default: %(default)s; another address "
        "lets every host that reaches it read the metrics)",
    )


def metrics_from_args(args: argparse.Namespace) -> MetricsSettings | None:
    """The settings ``--metrics-port`` / ``--metrics-addr`` ask for (``None``: no metrics).

    Raises:
        UsageError: a bad port or address, or prometheus-client is not installed.
    """
    port = getattr(args, "metrics_port", None)
    if port is None:
        return None
    require_prometheus()
    return MetricsSettings(port=port, addr=args.metrics_addr)


# -- the requester's metrics -----------------------------------------------------------


class RequesterMetrics(Exposed):
    """A dispatcher's Prometheus metrics: ``Dispatcher.metrics`` when opened with ``metrics=``.

    A collector (see ``docs/metrics.md`` for the table): gauges and most counters are
    read from the dispatcher at scrape time. The dispatcher feeds :meth:`sent` and
    :meth:`delivered`, from which come ``backtest_queue_outcomes_total`` and
    ``backtest_queue_reply_latency_seconds`` (from the last hand-over of a request to the
    reply that decided it).

    Attributes:
        registry, addr, port, url: where the metrics are exposed (see :class:`Exposed`).
    """

    def __init__(self, dispatcher: Dispatcher, *, latency_buckets: Iterable[float]) -> None:
        super().__init__()
        require_prometheus()
        self._dispatcher = dispatcher
        self._sent_at: dict[str, float] = {}
        self._outcomes = dict.fromkeys(OUTCOME_REASONS, 0)  # fixed keys: safe to read
        self._latency = LatencyHistogram(
            "backtest_queue_reply_latency_seconds",
            "Seconds from a request's last hand-over to a service to the reply that "
            "decided its outcome (a result or an error reply).",
            latency_buckets,
        )

    def __repr__(self) -> str:
        return f"<RequesterMetrics {self.url or 'registry only'}>"

    # -- fed by the dispatcher (event-loop thread) ------------------------------------

    def sent(self, requests: Iterable[BacktestRequest]) -> dict[str, float]:
        """Requests are being handed to a service now (a retry restarts its clock).

        Returns:
            The stamps this replaced (retries' earlier hand-overs, ``time.monotonic()``
            seconds by request id), for :meth:`not_sent`.
        """
        now = time.monotonic()
        sent_at = self._sent_at
        replaced: dict[str, float] = {}
        for request in requests:
            rid = request.request_id
            before = sent_at.get(rid)
            if before is not None:
                replaced[rid] = before
            sent_at[rid] = now
        return replaced

    def not_sent(self, requests: Iterable[BacktestRequest], replaced: Mapping[str, float]) -> None:
        """Requests :meth:`sent` announced could not go after all (they stay queued): a
        retry gets back its earlier hand-over's stamp (``replaced``, as :meth:`sent`
        returned it), so that attempt's late result still times its reply. One that was
        delivered meanwhile (a reply read during the send) is not stamped again."""
        sent_at = self._sent_at
        for request in requests:
            rid = request.request_id
            before = replaced.get(rid)
            if before is None:
                sent_at.pop(rid, None)
            elif rid in sent_at:
                sent_at[rid] = before

    def delivered(self, outcome: Outcome) -> None:
        """An outcome was decided: count it by reason, and time it if a reply decided it."""
        sent_at = self._sent_at.pop(outcome.request_id, None)
        if outcome.reason is not None:
            reason: str = outcome.reason
        elif outcome.attempts == 0:  # a result no service was asked for: the store's
            reason = "cached"
        else:
            reason = "result"
        self._outcomes[reason] += 1
        if sent_at is not None and reason in _REPLY_REASONS:
            self._latency.observe(time.monotonic() - sent_at)

    # -- read at scrape time (the HTTP server's thread) --------------------------------

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families (called by the registry at each scrape)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        d = self._dispatcher
        q = d.queue.stats()  # plain counters: no container is iterated
        yield GaugeMetricFamily("backtest_queue_queued",
                                "Requests in the send queue, not yet handed to a service.",
                                value=q.queued)  # fmt: skip
        pending = GaugeMetricFamily(
            "backtest_queue_pending",
            "Requests handed to a service and awaiting its reply, by service endpoint.",
            labels=["service"],
        )
        connected = GaugeMetricFamily(
            "backtest_queue_connected",
            "1 while the service's ZMTP handshake has succeeded and it is up, else 0.",
            labels=["service"],
        )
        for endpoint in d.endpoints:
            pending.add_metric([endpoint], _pending_on(d, endpoint))
            connected.add_metric([endpoint], 1.0 if endpoint in d._up else 0.0)
        yield pending
        yield connected
        if q.max_pending is not None:
            yield GaugeMetricFamily("backtest_queue_max_pending",
                                    "The cap on requests in flight at once (max_pending).",
                                    value=q.max_pending)  # fmt: skip
        yield GaugeMetricFamily("backtest_queue_unread_outcomes",
                                "Outcomes delivered that no caller has received yet.",
                                value=d._book.unread)  # fmt: skip
        yield CounterMetricFamily("backtest_queue_submitted",
                                  "Requests accepted into the send queue (restored ones too).",
                                  value=q.enqueued)  # fmt: skip
        yield CounterMetricFamily("backtest_queue_sent",
                                  "Hand-overs of requests to services (a retry counts again).",
                                  value=q.sent)  # fmt: skip
        yield CounterMetricFamily(
            "backtest_queue_retries",
            "Requests put back in the send queue after a deadline, a disconnect or an "
            "'unavailable' reply, to be sent again.",
            value=q.retries,
        )
        outcomes = CounterMetricFamily(
            "backtest_queue_outcomes",
            "Outcomes delivered, by reason: result, cached (from the store, no backtest), "
            "timeout, disconnected, service_error, shutdown.",
            labels=["reason"],
        )
        for reason in OUTCOME_REASONS:
            outcomes.add_metric([reason], self._outcomes[reason])
        yield outcomes
        yield self._latency.collect()
        yield CounterMetricFamily(
            "backtest_queue_handshakes_refused",
            "Handshakes with a service that failed (CURVE key refused, mechanism mismatch).",
            value=d._refused,
        )
        yield CounterMetricFamily("backtest_queue_invalid_replies",
                                  "Replies that broke the protocol (bad frames, JSON, types).",
                                  value=d._invalid_replies)  # fmt: skip
        yield CounterMetricFamily(
            "backtest_queue_send_would_block",
            "Sends refused at the ZeroMQ high-water mark and put back in the send queue.",
            value=d._would_block,
        )


def _pending_on(dispatcher: Dispatcher, endpoint: str) -> int:
    """Requests pending on one connection (the policy's ``pending_on``: one dict lookup
    and a ``len``, safe from the scrape thread)."""
    return dispatcher.queue.pending_on(endpoint)


@asynccontextmanager
async def open_requester_metrics(
    dispatcher: Dispatcher, settings: MetricsSettings
) -> AsyncIterator[RequesterMetrics]:
    """Expose ``dispatcher``'s metrics for the block (used by :func:`open_dispatcher`).

    Sets ``dispatcher.metrics`` (left set afterwards, to read the last counts).

    Raises:
        TransportError: the HTTP server cannot bind.
    """
    metrics = RequesterMetrics(dispatcher, latency_buckets=settings.latency_buckets)
    async with exposing(metrics, settings, what="requester"):
        dispatcher.metrics = metrics
        yield metrics
