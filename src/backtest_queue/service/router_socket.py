"""The service's ROUTER: bound, and waiting on its ZeroMQ FD itself.

The service reads with one task and sends without blocking, the way the requester's
DEALER does, so it uses the same socket (:class:`~backtest_queue.requester_socket.RequesterSocket`,
which works for any socket type) instead of a zmq-anyio socket: zmq-anyio runs a task
that wakes on every edge of the ZeroMQ FD and spawns tasks then and per awaited call. In
the service that was about a fifth of its event loop's CPU per backtest (issue 14,
target 1), CPU taken from the backtest workers on a machine with as many CPUs as workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import zmq

from ..endpoints import check_ipc_path_free, endpoint_options
from ..errors import TransportError
from ..requester_socket import RequesterSocket
from ..transport import apply_options, bind_error

__all__ = ["open_router_socket"]


@asynccontextmanager
async def open_router_socket(
    context: zmq.Context[Any], *, name: str, options: dict[int, Any], bind: str
) -> AsyncIterator[RequesterSocket]:
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
    check_ipc_path_free(bind)
    raw: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
    try:
        apply_options(raw, endpoint_options(bind))
        apply_options(raw, options)
        raw.bind(bind)
    except zmq.ZMQError as exc:
        raw.close(linger=0)
        raise TransportError(f"cannot open {name} on {bind!r}: {bind_error(bind, exc)}") from exc
    sock = RequesterSocket(raw, name=name)
    try:
        yield sock
    finally:
        # A task still waiting on the FD gets ClosedResourceError, never a closed FD.
        with contextlib.suppress(Exception):
            anyio.notify_closing(sock._fd)
        raw.close()
