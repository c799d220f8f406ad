"""What the policy core reports: :class:`Throttle`, :class:`FailedRequest`, :class:`QueueStats`.

Frozen records (sans-IO, no dependencies), re-exported by :mod:`backtest_queue.policy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

__all__ = ["FailedRequest", "HasRequestId", "QueueStats", "Throttle"]


class HasRequestId(Protocol):
    """Anything with a string ``request_id``; :class:`~backtest_queue.BacktestRequest` is one."""

    @property
    def request_id(self) -> str: ...


R = TypeVar("R", bound=HasRequestId)


@dataclass(frozen=True, slots=True)
class Throttle:
    """Why a flush would stop now.

    Attributes:
        reason: ``"pending"`` when ``max_pending`` requests are in flight or every
            connection that is up has used its credit (see
            :meth:`BacktestQueue.set_credit`; it takes precedence), ``"rate"`` when the
            token bucket is empty, else ``None``.
        pending: requests in flight now.
        max_pending: the cap on in-flight requests (``None``: no cap).
        rate: the rate limit in requests per second (``None``: no limit).
        retry_after: seconds until a send may be allowed without a reply arriving: for
            ``"rate"`` the time to the next token; for ``"pending"`` the later of the time
            to the earliest pending deadline (the latest a slot frees) and the time to the
            next token; ``0.0`` when not throttled. For people and logs: to wait,
            sleep until :meth:`BacktestQueue.next_deadline_at` (an absolute time at
            which the policy's own checks pass; ``now + retry_after`` may round below it).
    """

    reason: Literal["pending", "rate"] | None
    pending: int
    max_pending: int | None
    rate: float | None
    retry_after: float


@dataclass(frozen=True, slots=True)
class FailedRequest(Generic[R]):
    """A request that failed for good.

    Attributes:
        request: the request as enqueued.
        reason: ``"timeout"`` (no reply by its deadline, ``max_attempts`` times),
            ``"disconnected"`` (its service disconnected on its last attempt),
            ``"unavailable"`` (its service declined to run it on its last attempt).
        attempts: how many times it was handed to a service.
    """

    request: R
    reason: Literal["timeout", "disconnected", "unavailable"]
    attempts: int


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot of a :class:`BacktestQueue` (counts are totals since construction).

    Attributes:
        queued: requests in the send queue now.
        pending: requests in flight now.
        max_pending: the cap on in-flight requests (``None``: no cap).
        capacity: the send queue's size limit.
        connected: whether at least one connection is up.
        connections: how many connections are up.
        enqueued: requests accepted by :meth:`BacktestQueue.enqueue`.
        sent: hand-overs to a service (a retry counts again; failed sends do not).
        send_failures: requests put back by :meth:`BacktestQueue.send_failed`.
        results: requests resolved by a result.
        errors: requests resolved by an error reply.
        retries: requests put back in the queue after a deadline or a disconnect.
        failed: requests that ended without a result (errors, exhausted retries, drained).
        unknown_results: replies for ids this queue never had.
        duplicate_results: replies for ids already resolved.
        late_replies: error and ``unavailable`` replies ignored because they answered an
            earlier attempt (the request was queued for a re-send, or pending on another
            connection): they decide nothing.
        late_results: results accepted from an earlier attempt (the request was queued
            for a re-send, or pending on another connection); also in ``results``.
        flushes: flushes that returned at least one request.
        last_flush: when :meth:`BacktestQueue.maybe_flush` last ran, seconds (``-inf``: never).
    """

    queued: int
    pending: int
    max_pending: int | None
    capacity: int
    connected: bool
    connections: int
    enqueued: int
    sent: int
    send_failures: int
    results: int
    errors: int
    retries: int
    failed: int
    unknown_results: int
    duplicate_results: int
    late_replies: int
    late_results: int
    flushes: int
    last_flush: float
