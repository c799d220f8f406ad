"""The one rooted error family of backtest-queue.

Errors are split by blame:

* :class:`UsageError` and its children: the caller misused the API (our user's bug).
* :class:`ProtocolError`: a peer sent bad input over the wire (the peer's bug).
* :class:`TransportError`: the network layer failed; ``zmq.ZMQError`` is translated into
  it in :mod:`backtest_queue.transport` only.

Everything raised on purpose by this package is a :class:`BacktestQueueError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BacktestQueueError",
    "DispatcherClosed",
    "DuplicateRequest",
    "HandshakeRefused",
    "InvalidMessage",
    "InvalidRequest",
    "NoAnswer",
    "ProtocolError",
    "QueueFull",
    "StoreBusy",
    "StoreError",
    "StoreHolder",
    "StoreLocked",
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


class InvalidMessage(UsageError, ValueError):
    """A protocol message was built in Python with a value the protocol refuses.

    Raised by the message structs of :mod:`backtest_queue.protocol` when they are
    constructed (``__post_init__``). The message starts with the field's path, e.g.
    ``"result.win_rate: must be a finite fraction in [0, 1], got 1.5"``. A ``ValueError``
    too, so code that catches ``ValueError`` around construction keeps working.

    Attributes:
        field: the dotted path of the offending field (``"strategy.sl"``, ``"cash"``),
            or ``""`` when the whole object is wrong (not a request at all).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidRequest(InvalidMessage):
    """A backtest request (or its strategy) holds a value the protocol refuses.

    Raised when a :class:`~backtest_queue.protocol.Strategy` or
    :class:`~backtest_queue.protocol.BacktestRequest` is built with a bad value, and by
    :func:`~backtest_queue.protocol.validate_request` (what ``submit`` calls) for anything
    that is not a valid, encodable request, e.g.
    ``InvalidRequest("strategy.sl: must be a finite fraction in (0, 1), got nan")``.
    A service answers the same values from the wire with ``ERROR invalid_request`` and
    the same message.
    """


class ProtocolError(BacktestQueueError):
    """A peer sent a message that breaks wire protocol v1.

    Attributes:
        code: the protocol error code to answer with (``invalid_request``,
            ``unsupported_version``, ``too_large``, ...).
        request_id: the ``request_id`` of the offending message when it could be read,
            else ``None``.
        field: the dotted path of the offending field when one is to blame
            (``"strategy.sl"``), else ``None``.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.field = field


class TransportError(BacktestQueueError):
    """The ZeroMQ layer failed (translated from ``zmq.ZMQError``)."""


class HandshakeRefused(TransportError):
    """A service refused this requester's ZMTP handshake: the CURVE keys do not fit (a
    wrong pinned service key, a requester key the service does not admit, or CURVE on
    one side only). Retrying does not help; the message names the fix.

    Attributes:
        endpoint: the service's endpoint.
    """

    def __init__(self, endpoint: str, *, keys_given: bool | None = None) -> None:
        """``keys_given``: whether this requester used CURVE keys (``False``: it gave
        none, so the service must want them; ``None``: not known)."""
        if keys_given is False:
            why = (
                "it encrypts with CURVE and this requester gave no keys. Give --curve-keys "
                "DIR (this requester's requester.key_secret and the service's public "
                "service.key, from 'backtest-queue keys DIR'), or --curve-secret FILE "
                "--curve-server-key FILE; the service must admit the requester's public "
                "key (its --allowed-keys DIR)"
            )
        else:
            why = (
                "the CURVE keys do not fit. Give the requester its own *.key_secret and the "
                "service's public *.key (--curve-keys DIR, or --curve-secret FILE "
                "--curve-server-key FILE); the service must admit the requester's public key "
                "(its --allowed-keys DIR). A service without --curve-secret refuses CURVE: "
                "then give no keys"
            )
        super().__init__(f"the service at {endpoint} refused the handshake: {why}")
        self.endpoint = endpoint


class NoAnswer(TransportError):
    """A service did not answer within the time allowed.

    Attributes:
        endpoint: the service's endpoint.
        timeout: the seconds waited.
        connected: whether a connection (a ZMTP handshake) was made at all.
    """

    def __init__(self, endpoint: str, timeout: float, *, connected: bool) -> None:
        if connected:
            why = "it accepted the connection but sent no PONG (is it a backtest-queue service?)"
        else:
            why = (
                "nothing there completed a ZeroMQ handshake (is the service running on that "
                "address and port?)"
            )
        super().__init__(f"no answer from {endpoint} within {timeout:g} s: {why}")
        self.endpoint = endpoint
        self.timeout = timeout
        self.connected = connected


class StoreError(BacktestQueueError):
    """The durable store cannot be used: the file cannot be opened, is not a store of
    this version, or SQLite failed (disk full, I/O error).

    Attributes:
        path: the store's database file, as given.
        cause: what went wrong, one line (SQLite's or the OS's own message).
    """

    def __init__(self, path: str, cause: str) -> None:
        super().__init__(f"store {path!r}: {cause}")
        self.path = path
        self.cause = cause


class StoreBusy(BacktestQueueError):
    """Another connection held the store's lock for too long (a ``SqliteStore``'s
    ``busy_timeout``, a dispatcher's ``store_timeout``).

    Nothing of the operation that raised this was applied: the caller still owns its
    batch and may retry it later.

    Attributes:
        path: the store's database file.
        waited: how long the operation waited for the lock, in seconds.
    """

    def __init__(self, path: str, waited: float) -> None:
        super().__init__(
            f"store {path!r} stayed locked by another connection for {waited:.1f} s; "
            "nothing was written. Retry later, or wait longer (open_dispatcher's "
            "store_timeout, SqliteStore's busy_timeout)"
        )
        self.path = path
        self.waited = waited


@dataclass(frozen=True, slots=True)
class StoreHolder:
    """A live process that has a store open (see :class:`StoreLocked`).

    Attributes:
        pid: its process id (on ``host``).
        host: the host name it runs on.
        argv: its command line.
        since: when it opened the store (Unix time, seconds).
        mode: ``"exclusive"`` (the default) or ``"shared"``.
    """

    pid: int
    host: str
    argv: tuple[str, ...]
    since: float
    mode: Literal["exclusive", "shared"]

    def __str__(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host} ({self.mode}, since {since}): {' '.join(self.argv)}"


class StoreLocked(UsageError):
    """Another live process (or another store object) already has the store open.

    Attributes:
        path: the store's database file.
        holders: what is known of the processes holding it (empty when a holder has
            just opened it and not yet described itself).
    """

    def __init__(self, path: str, holders: tuple[StoreHolder, ...], *, shared: bool) -> None:
        who = "; ".join(str(h) for h in holders) or "a process that is just opening it"
        hint = (
            "a store opened with shared=False allows one opener at a time"
            if not shared
            else "it is open exclusively (shared=False) by its holder"
        )
        super().__init__(
            f"store {path!r} is already open by {who}: {hint}. Stop that process, use "
            "another store file, or open every user of it with shared=True "
            "(they then share the result cache, each restoring only its own requests)"
        )
        self.path = path
        self.holders = holders
