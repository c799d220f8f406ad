"""Requester connections of the service's ROUTER, from a ZeroMQ socket monitor.

Not :func:`backtest_queue.transport.run_monitor`: that one disables the monitor after it
has closed the socket reading the events. libzmq emits events from its I/O thread with a
blocking send while holding the socket's monitor lock; with the reader closed, an event
at that moment (a requester disconnecting as the service stops) blocks that send for
good, and ``disable_monitor()`` then waits for the lock forever. Here the monitor is
disabled while its reader is still open.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Final, Literal

import anyio
import anyio.abc
import zmq
from zmq.utils.monitor import parse_monitor_message

from ..transport import SocketBase, open_socket

__all__ = ["run_connection_monitor"]

_REFUSED: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_EVENTS: Final = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _REFUSED


async def run_connection_monitor(
    context: zmq.Context[Any],
    sock: SocketBase,
    on_event: Callable[[Literal["up", "down", "refused"], str], None],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``on_event(kind, endpoint)`` for each connection change, until cancelled.

    ``"up"``: a requester completed the ZMTP handshake; ``"down"``: a connection closed;
    ``"refused"``: a handshake failed (CURVE authentication or mechanism).
    ``started()`` is called once events can no longer be missed.
    """
    endpoint = f"inproc://service-monitor-{id(sock):x}"
    sock.raw.monitor(endpoint, _EVENTS)
    try:
        async with open_socket(
            context, zmq.PAIR, name=f"{sock.name}-monitor", options={zmq.LINGER: 0},
            connect=endpoint,
        ) as pair:  # fmt: skip
            try:
                task_status.started()
                while True:
                    for frames in await pair.receive_batch():
                        info = parse_monitor_message(frames)
                        where = info["endpoint"].decode(errors="replace")
                        event = info["event"]
                        kind: Literal["up", "down", "refused"] = (
                            "up" if event & zmq.EVENT_HANDSHAKE_SUCCEEDED
                            else "refused" if event & _REFUSED
                            else "down"
                        )  # fmt: skip
                        on_event(kind, where)
            finally:
                # While the reader is open (see the module docstring).
                with contextlib.suppress(zmq.ZMQError):
                    sock.raw.disable_monitor()
    finally:
        with contextlib.suppress(zmq.ZMQError):
            sock.raw.disable_monitor()  # a no-op when already disabled
