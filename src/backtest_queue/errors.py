"""The one rooted error family of backtest-queue.

Errors are split by blame:

* :class:`UsageError` and its children: the caller misused the API (our user's bug).
* :class:`ProtocolError`: a peer sent bad input over the wire (the peer's bug).
* :class:`TransportError`: the network layer failed; ``zmq.ZMQError`` is translated into
  it in :mod:`backtest_queue.transport` only.

Everything raised on purpose by this package is a :class:`BacktestQueueError`.
"""

from __future__ import annotations

__all__ = [
    "BacktestQueueError",
    "DispatcherClosed",
    "DuplicateRequest",
    "ProtocolError",
    "QueueFull",
    "TransportError",
    "UsageError",
]


class BacktestQueueError(Exception):
    """Base class of every error this package raises on purpose."""


class UsageError(BacktestQueueError):
    """The caller used the API wrongly: bad settings, bad arguments, wrong state."""


class QueueFull(BacktestQueueError):
    """The send queue already holds ``capacity`` requests; the request was not accepted.

    Nothing is dropped: the request that raised this was never enqueued, and the
    caller still owns it.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(f"send queue is full ({capacity} requests queued); request not accepted")
        self.capacity = capacity


class DuplicateRequest(UsageError):
    """A request with this ``request_id`` is already queued or pending."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request_id {request_id!r} is already queued or pending")
        self.request_id = request_id


class DispatcherClosed(UsageError):
    """The dispatcher was used after its ``async with`` block ended."""


class ProtocolError(BacktestQueueError):
    """A peer sent a message that breaks wire protocol v1.

    Attributes:
        code: the protocol error code to answer with (``invalid_request``,
            ``unsupported_version``, ``too_large``, ...).
        request_id: the ``request_id`` of the offending message when it could be read,
            else ``None``.
    """

    def __init__(self, code: str, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class TransportError(BacktestQueueError):
    """The ZeroMQ layer failed (translated from ``zmq.ZMQError``)."""


class StoreError(BacktestQueueError):
    """The durable store cannot be opened or used (names the path and the cause)."""


class StoreBusy(StoreError):
    """Another connection held the store's write lock for too long; nothing was written.

    Attributes:
        path: the store file.
        waited: seconds waited for the lock.
    """

    def __init__(self, message: str, *, path: str, waited: float) -> None:
        super().__init__(message)
        self.path = path
        self.waited = waited
