"""backtest-queue: a structured-concurrency send queue for backtest requests over ZeroMQ.

Public API (see the README and ``docs/``):

* :class:`BacktestQueue` - the sans-IO policy core (send queue, pending table, rate limit).
* :func:`open_dispatcher` - the async I/O shell around it (anyio: trio or asyncio).
* the wire protocol v1 messages: :class:`BacktestRequest`, :class:`Strategy`,
  :class:`BacktestResult`, :class:`ErrorReply`, ...
* the error family rooted at :class:`BacktestQueueError`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

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
    ProtocolError as ProtocolError,
)
from .errors import (
    QueueFull as QueueFull,
)
from .errors import (
    TransportError as TransportError,
)
from .errors import (
    UsageError as UsageError,
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

try:
    __version__ = version("backtest-queue")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BacktestQueueError",
    "BacktestRequest",
    "BacktestResult",
    "DispatcherClosed",
    "DuplicateRequest",
    "ErrorReply",
    "Metrics",
    "Ping",
    "Pong",
    "ProtocolError",
    "QueueFull",
    "Strategy",
    "TransportError",
    "UsageError",
    "__version__",
]
