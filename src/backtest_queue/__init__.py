"""backtest-queue: a structured-concurrency send queue for backtest requests over ZeroMQ.

Public API (see the README and ``docs/``):

* :class:`BacktestQueue` - the sans-IO policy core (send queue, pending table, rate limit).
* :func:`open_dispatcher` - the async I/O shell around it (anyio: trio or asyncio).
* the wire protocol v1 messages: :class:`BacktestRequest`, :class:`Strategy`,
  :class:`BacktestResult`, :class:`ErrorReply`, ...
* the error family rooted at :class:`BacktestQueueError`.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .errors import (
    BacktestQueueError as BacktestQueueError,
)
from .errors import (
    DispatcherClosed as DispatcherClosed,
)
from .errors import (
    DuplicateRequest as DuplicateRequest,
)
from .errors import (
    HandshakeRefused as HandshakeRefused,
)
from .errors import (
    InvalidMessage as InvalidMessage,
)
from .errors import (
    InvalidRequest as InvalidRequest,
)
from .errors import (
    NoAnswer as NoAnswer,
)
from .errors import (
    ProtocolError as ProtocolError,
)
from .errors import (
    QueueFull as QueueFull,
)
from .errors import (
    StoreBusy as StoreBusy,
)
from .errors import (
    StoreError as StoreError,
)
from .errors import (
    StoreLocked as StoreLocked,
)
from .errors import (
    TransportError as TransportError,
)
from .errors import (
    UsageError as UsageError,
)
from .policy import (
    BacktestQueue as BacktestQueue,
)
from .policy import (
    FailedRequest as FailedRequest,
)
from .policy import (
    QueueStats as QueueStats,
)
from .policy import (
    Throttle as Throttle,
)
from .protocol import (
    BacktestRequest as BacktestRequest,
)
from .protocol import (
    BacktestResult as BacktestResult,
)
from .protocol import (
    ErrorReply as ErrorReply,
)
from .protocol import (
    Metrics as Metrics,
)
from .protocol import (
    Ping as Ping,
)
from .protocol import (
    Pong as Pong,
)
from .protocol import (
    Strategy as Strategy,
)
from .protocol import (
    validate_request as validate_request,
)

if TYPE_CHECKING:
    from .dispatcher import Dispatcher as Dispatcher
    from .lifecycle import open_dispatcher as open_dispatcher
    from .outcome import DispatcherStats as DispatcherStats
    from .outcome import Outcome as Outcome
    from .outcome import SubmitState as SubmitState
    from .transport import CurveClient as CurveClient

# The I/O layer (anyio, pyzmq) is imported on first use, so that importing the sans-IO
# core (``backtest_queue.policy``) loads neither.
_LAZY = {
    "CurveClient": "transport",
    "Dispatcher": "dispatcher",
    "open_dispatcher": "lifecycle",
    "DispatcherStats": "outcome",
    "Outcome": "outcome",
    "SubmitState": "outcome",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'backtest_queue' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


try:
    __version__ = version("backtest-queue")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BacktestQueue",
    "BacktestQueueError",
    "BacktestRequest",
    "BacktestResult",
    "CurveClient",
    "Dispatcher",
    "DispatcherClosed",
    "DispatcherStats",
    "DuplicateRequest",
    "ErrorReply",
    "FailedRequest",
    "HandshakeRefused",
    "InvalidMessage",
    "InvalidRequest",
    "Metrics",
    "NoAnswer",
    "Outcome",
    "Ping",
    "Pong",
    "ProtocolError",
    "QueueFull",
    "QueueStats",
    "StoreBusy",
    "StoreError",
    "StoreLocked",
    "Strategy",
    "SubmitState",
    "Throttle",
    "TransportError",
    "UsageError",
    "__version__",
    "open_dispatcher",
    "validate_request",
]
