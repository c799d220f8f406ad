"""The service's counters, as a frozen record (:class:`ServiceStatistics`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServiceStatistics"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceStatistics:
    """A snapshot of a service's counters (totals since start) and gauges (now).

    Messages in:
        messages_received: multipart messages read from the socket.
        pings: PINGs answered with a PONG.
        backtests_accepted: requests that passed validation and were queued.
        duplicates_ignored: requests ignored because one with the same ``request_id``
            from the same requester was still queued or running.
        bad_frames: messages without the ``[routing id, b"", body]`` framing (also
            counted in ``invalid_requests``).

    Error replies, by code (one each; a dropped reply is counted here too):
        invalid_requests, unknown_data, unsupported_versions, too_large, engine_errors,
        unavailable (not run because the service is stopping: send again).

    Work:
        backtests_completed: backtests that produced a result.
        queued: accepted requests waiting for a worker (gauge): in the service's queue,
            or already handed to the pool and waiting there for a worker (prefetched:
            up to ``prefetch`` per worker, see :mod:`.pool`). Unlike the others, a
            prefetched one that the pool's executor has moved to its call queue cannot be
            withdrawn: a graceful stop lets it run like a running one.
        prefetched: of ``queued``, those handed to the pool (gauge).
        running: backtests in the workers (gauge): those handed to the pool, at most
            ``workers`` (the service cannot see the moment a worker takes its prefetched
            backtest; it is counted running from when the previous one's outcome is in).
        workers: size of the process pool.
        busy_seconds: worker-seconds busy, the time integral of ``running`` up to its
            last change (a backtest handed to the pool, or an outcome); utilisation over
            a span of ``wall`` seconds is the difference of two snapshots over
            ``workers * wall``.
        pool_restarts: times the pool was replaced after a worker died.

    Replies:
        replies_sent: replies handed to ZeroMQ.
        replies_waiting: replies not handed to ZeroMQ yet (gauge), including held ones.
        reply_retries: sends refused (requester's pipe full, or requester gone) and
            retried later.
        replies_dropped: replies given up on (held past ``reply_timeout``, outbox full,
            or the service stopped); each is logged.

    Connections (from the socket monitor):
        connections: requester connections that completed the ZMTP handshake.
        disconnects: connections closed: requester left, heartbeat timed out, or it
            sent a frame over the hard size cap (libzmq drops such a connection).
        handshakes_refused: handshakes that failed (a CURVE key not allowed, a requester
            without CURVE or with the wrong service key).

    Decoding:
        decode_errors: message bodies that could not be decoded (bad JSON, wrong types,
            unknown version, too large); each is also counted under its error code.
    """

    messages_received: int = 0
    pings: int = 0
    backtests_accepted: int = 0
    duplicates_ignored: int = 0
    bad_frames: int = 0
    invalid_requests: int = 0
    unknown_data: int = 0
    unsupported_versions: int = 0
    too_large: int = 0
    engine_errors: int = 0
    unavailable: int = 0
    backtests_completed: int = 0
    queued: int = 0
    prefetched: int = 0
    running: int = 0
    workers: int = 0
    busy_seconds: float = 0.0
    pool_restarts: int = 0
    replies_sent: int = 0
    replies_waiting: int = 0
    reply_retries: int = 0
    replies_dropped: int = 0
    connections: int = 0
    disconnects: int = 0
    decode_errors: int = 0
    handshakes_refused: int = 0
