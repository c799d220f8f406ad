"""Ask one backtest service what it is and has: one PING, one PONG, a bounded wait.

:func:`ping_service` is what ``backtest-queue status`` and ``evolve`` use before they
rely on a service: it opens its own DEALER (not a dispatcher's), watches the socket
monitor, sends a ``PING`` once the ZMTP handshake succeeds (again after a reconnect) and
returns the first ``PONG`` that answers it. It tells apart the three ways of getting
none: a **refused handshake** (CURVE keys that do not fit; seen by the monitor at once,
or after a second refusal when libzmq gives no detail - not after the timeout),
**nothing listening** and **something listening that does not answer**.
"""

from __future__ import annotations

from typing import Any

import anyio
import zmq

from .errors import HandshakeRefused, NoAnswer, ProtocolError, TransportError
from .protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Ping,
    Pong,
    decode_message,
    encode_message,
    new_request_id,
)
from .sending import REFUSALS_TO_GIVE_UP
from .settings import check_number
from .transport import ConnectionEvent, CurveClient, open_socket, requester_options, run_monitor

__all__ = ["ping_service"]


async def ping_service(
    endpoint: str,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 - NoAnswer names it; fail_after could not
    curve: CurveClient | None = None,
    context: zmq.Context[Any] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Pong:
    """PING the service at ``endpoint`` and return its PONG.

    Args:
        endpoint: the service's ZeroMQ endpoint, e.g. ``"tcp://127.0.0.1:5580"``.
        timeout: seconds to wait for the answer, connecting included (> 0).
        curve: CURVE keys, for a service started with ``--curve-secret``.
        context: a pyzmq context to use (default: a private one, destroyed on return).
        max_message_bytes: largest PONG accepted, in bytes.

    Returns:
        The PONG (its optional fields are defaults when the service does not send them).

    Raises:
        HandshakeRefused: the service refused the handshake (keys that do not fit);
            raised as soon as the monitor sees it.
        NoAnswer: no PONG within ``timeout`` (``connected`` says whether a handshake
            succeeded at all).
        TransportError: the endpoint is malformed.
        UsageError: ``timeout`` is not a finite number > 0.
    """
    check_number("timeout", timeout, unit="seconds", minimum=0.0, exclusive=True)
    ctx: zmq.Context[Any] = zmq.Context() if context is None else context
    options = requester_options(
        heartbeat_ivl=1.0, reconnect_ivl=0.1, send_hwm=16, max_message_bytes=max_message_bytes,
        curve=curve,
    )  # fmt: skip
    ping_id = f"status-{new_request_id()}"
    body = encode_message(Ping(request_id=ping_id))
    answer: list[Pong] = []
    refused: list[ConnectionEvent] = []
    malformed: list[TransportError] = []
    connected = False
    try:
        async with open_socket(ctx, zmq.DEALER, name=endpoint, options=options) as sock:
            events_send, events = anyio.create_memory_object_stream[ConnectionEvent](64)
            with events, anyio.move_on_after(timeout):
                async with anyio.create_task_group() as tg:

                    async def watch() -> None:
                        nonlocal connected
                        async for event in events:
                            if event.kind == "up":
                                connected = True
                                sock.try_send([b"", body])  # after each (re)connect
                            elif event.kind == "refused":
                                refused.append(event)
                                if event.definitive or len(refused) >= REFUSALS_TO_GIVE_UP:
                                    tg.cancel_scope.cancel()
                                    return

                    async def read() -> None:
                        while True:
                            for frames in await sock.receive_batch():
                                pong = _pong(frames, ping_id, max_message_bytes)
                                if pong is not None:
                                    answer.append(pong)
                                    tg.cancel_scope.cancel()
                                    return

                    await tg.start(run_monitor, ctx, sock, events_send)
                    tg.start_soon(watch)
                    tg.start_soon(read)
                    try:
                        sock.connect(endpoint)  # after the monitor: no handshake missed
                    except TransportError as exc:  # malformed: not worth a group
                        malformed.append(exc)
                        tg.cancel_scope.cancel()
    finally:
        if context is None:
            ctx.destroy(linger=0)
    if malformed:
        raise malformed[0]
    if answer:
        return answer[0]
    if refused:
        raise HandshakeRefused(endpoint, keys_given=curve is not None)
    raise NoAnswer(endpoint, timeout, connected=connected)


def _pong(frames: list[bytes], ping_id: str, max_bytes: int) -> Pong | None:
    """The PONG answering ``ping_id`` in ``frames``, or ``None`` (anything else is ignored)."""
    if len(frames) != 2 or frames[0]:
        return None
    try:
        message = decode_message(frames[1], max_bytes=max_bytes)
    except ProtocolError:
        return None
    if isinstance(message, Pong) and message.request_id in (ping_id, None):
        return message
    return None
