"""The service's ROUTER: bound, and waiting on its ZeroMQ FD itself.

The service reads with one task and sends without blocking, the way the requester's
DEALER does, so it uses the same socket (:class:`~backtest_queue.fd_socket.FdSocket`,
which works for any socket type) instead of a zmq-anyio socket: zmq-anyio runs a task
that wakes on every edge of the ZeroMQ FD and spawns tasks then and per awaited call. In
the service that was about a fifth of its event loop's CPU per backtest (issue 14,
target 1), CPU taken from the backtest workers on a machine with as many CPUs as workers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import zmq

from ..fd_socket import FdSocket, open_fd_socket

__all__ = ["open_router_socket"]


@asynccontextmanager
async def open_router_socket(
    context: zmq.Context[Any], *, name: str, options: dict[int, Any], bind: str
) -> AsyncIterator[FdSocket]:
    """Open a ROUTER bound to ``bind`` for the block; closed with its ``ZMQ_LINGER``.

    Binds as :func:`~backtest_queue.transport.open_socket` does: the endpoint's options
    first (``ZMQ_IPV6`` for ``tcp://[::1]:5580``), then ``options``.

    Args:
        context: the pyzmq context.
        name: a label for logs and ``repr``.
        options: socket options set before binding (``{zmq.LINGER: 0, ...}``).
        bind: the endpoint to bind, e.g. ``"tcp://127.0.0.1:5580"``.

    Raises:
        TransportError: the endpoint is malformed or cannot be bound (address in use, an
            ``ipc://`` path a live process listens on), or an option is refused.
    """
    async with open_fd_socket(context, zmq.ROUTER, name=name, options=options, bind=bind) as sock:
        yield sock
