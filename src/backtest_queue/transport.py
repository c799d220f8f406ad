"""The adapter over zmq-anyio, and the connection events and options of every socket.

Every ZeroMQ call of the package goes through here or through
:mod:`backtest_queue.fd_socket` (the requester's DEALER and the service's ROUTER,
which wait on their FDs themselves: zmq-anyio's task spawns per call and per FD wake-up
were most of their cost per message) and its errors are translated here and there only.

What it adds to a plain ``zmq_anyio.Socket``:

* **Batches.** :meth:`ZmqSocket.receive_batch` waits (through zmq-anyio) for one
  message and then drains the socket without blocking until ``EAGAIN`` or a cap, so one
  wake-up handles many messages; :meth:`ZmqSocket.try_send` never blocks.
* **Cancellation safety.** A receive abandoned by a cancel scope does not swallow a
  message: the future is cancelled, and a message that did arrive is kept for the next
  call. (zmq-anyio leaves an abandoned ``arecv`` future queued, where it would later take
  a message nobody reads.)
* **Error translation.** ``zmq.ZMQError`` becomes
  :class:`~backtest_queue.errors.TransportError`; ``EAGAIN`` and ``EHOSTUNREACH`` become
  :class:`SendStatus` values.
* **Connection events.** :func:`run_monitor` turns a socket monitor into
  :class:`ConnectionEvent` values; "up" means the ZMTP handshake succeeded, not that a TCP
  connection exists. A connect that keeps failing is logged (the first failure, then at
  most every :data:`CONNECT_LOG_INTERVAL` seconds), saying whether the address could not
  be used at all or nothing accepted the connection.
* **Endpoints.** Every socket gets the options its endpoint needs (``ZMQ_IPV6`` for
  ``tcp://[::1]:5580``), and an ``ipc://`` path a live process listens on is refused
  instead of taken over (see :mod:`backtest_queue.endpoints`).

zmq-anyio is pinned to its 0.4 minor version (``await sock.arecv_multipart()``).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, cast, runtime_checkable

import anyio
import anyio.abc
import anyio.lowlevel
import zmq
import zmq.backend
import zmq_anyio
from anyio.streams.memory import MemoryObjectSendStream
from zmq.utils.monitor import parse_monitor_message

from .endpoints import check_ipc_path_free, endpoint_options
from .errors import TransportError

__all__ = [
    "CONNECT_LOG_INTERVAL",
    "ConnectionEvent",
    "CurveClient",
    "Network",
    "ReadsInTurn",
    "Requester",
    "SendStatus",
    "SocketBase",
    "ZmqNetwork",
    "ZmqSocket",
    "apply_options",
    "bind_error",
    "open_socket",
    "requester_options",
    "run_monitor",
]

log = logging.getLogger("backtest_queue.transport")

Frames = list[bytes]
_UP_EVENTS: Final = zmq.EVENT_HANDSHAKE_SUCCEEDED
_DOWN_EVENTS: Final = zmq.EVENT_DISCONNECTED
_RETRY_EVENTS: Final = zmq.EVENT_CONNECT_RETRIED
_ATTEMPT_EVENTS: Final = zmq.EVENT_CONNECT_DELAYED | zmq.EVENT_CONNECTED
#: Seconds between two log lines about the same requester failing to connect.
CONNECT_LOG_INTERVAL: Final = 30.0
_REFUSED_EVENTS: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)

#: A ZMTP protocol error that means "CURVE on one side only", not a broken peer.
_MECHANISM_MISMATCH: Final = int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)


_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_NOBLOCK: Final = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK: Final = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
#: pyzmq's own send of one frame, without the Python wrapper around it (which only adds
#: the draft routing_id and group arguments): about 1 us less per two-frame message.
#: Called with ``copy=True`` (the CFFI backend's default is False).
_send_frame: Final[Callable[[zmq.Socket[bytes], bytes, int, bool], object]] = (
    zmq.backend.Socket.send  # type: ignore[assignment]
)
#: Empty looks (one per scheduler pass) before a receive arms a zmq-anyio future.
_POLLS_BEFORE_PARKING: Final = 2


class SendStatus(enum.Enum):
    """What :meth:`ZmqSocket.try_send` did."""

    SENT = "sent"
    #: ``EAGAIN``: the high-water mark is reached, or (``ZMQ_IMMEDIATE=1``) no peer has
    #: completed a handshake. Nothing was sent; try again later.
    WOULD_BLOCK = "would_block"
    #: ``EHOSTUNREACH`` on a ROUTER with ``ZMQ_ROUTER_MANDATORY``: no peer has that
    #: identity (it disconnected). Nothing was sent.
    UNREACHABLE = "unreachable"


class SocketBase:
    """What every socket of the package does alike: connect, non-blocking sends, errors.

    Subclasses set ``_raw`` (the pyzmq socket) and ``name``, and say in
    :meth:`_after_send` how a waiting receiver learns of what a send may have hidden.
    """

    _raw: zmq.Socket[bytes]
    name: str

    @property
    def raw(self) -> zmq.Socket[bytes]:
        """The underlying pyzmq socket, for setting options and monitors."""
        return self._raw

    def connect(self, endpoint: str) -> None:
        """Connect to ``endpoint`` (libzmq connects and reconnects in the background).

        Attach a monitor first (:func:`run_monitor`) or the first handshake may be missed.

        Raises:
            TransportError: the endpoint is malformed or its transport unsupported.
        """
        try:
            apply_options(self._raw, endpoint_options(endpoint))
            self._raw.connect(endpoint)
        except zmq.ZMQError as exc:
            who = "" if self.name == endpoint else f" {self.name}"  # no "connect X to X"
            raise TransportError(f"cannot connect{who} to {endpoint!r}: {exc}") from exc

    def try_send(self, frames: Sequence[bytes]) -> SendStatus:
        """Send one multipart message now, or say why not. Never blocks, never waits.

        Raises:
            TransportError: any other ZeroMQ failure (socket closed, message too big, ...).
        """
        return self.send_batch((frames,))[1]

    def send_batch(self, messages: Iterable[Sequence[bytes]]) -> tuple[int, SendStatus]:
        """Send multipart messages in order until one cannot go. Never blocks.

        Returns:
            How many were sent, and :attr:`SendStatus.SENT` if all were, else why the
            next one was not (it and the rest were not sent).

        Raises:
            TransportError: any other ZeroMQ failure (socket closed, message too big, ...).
        """
        raw, send = self._raw, _send_frame
        sent = 0
        status = SendStatus.SENT
        try:
            for frames in messages:
                # Frame by frame with int flags: pyzmq's send_multipart does enum
                # arithmetic and type checks per frame. A multipart message is atomic:
                # EAGAIN can only come on its first frame.
                *head, last = frames
                for frame in head:
                    send(raw, frame, _SNDMORE_NOBLOCK, True)
                send(raw, last, _NOBLOCK, True)
                sent += 1
        except zmq.Again:
            status = SendStatus.WOULD_BLOCK
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise TransportError(f"send on {self.name} failed: {exc}") from exc
            status = SendStatus.UNREACHABLE
        finally:
            self._after_send()
        return sent, status

    def _after_send(self) -> None:
        """Called after every send: the send may have consumed the FD's signal."""


class ZmqSocket(SocketBase):
    """One ZeroMQ socket, driven by zmq-anyio, with batch receive and non-blocking send.

    Create it with :func:`open_socket`. Use it from one task per direction: one receiver
    (:meth:`receive_batch`) and any number of non-blocking senders (:meth:`try_send`).
    """

    def __init__(self, sock: zmq_anyio.Socket, *, name: str) -> None:
        self._sock = sock
        # A plain pyzmq shadow of the same libzmq socket, for calls that must not go
        # through zmq-anyio's futures (its send() schedules a task and cannot fail).
        self._raw: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        self._stash: list[Frames] = []
        self._writer_waiting = False
        # A receive parked on a zmq-anyio future, and whether it was re-armed since:
        # only a parked waiter needs a re-arm, and one re-arm per park wakes it.
        self._parked = False
        self._rearmed = False
        self.name = name

    def __repr__(self) -> str:
        return f"<ZmqSocket {self.name} {self._raw.socket_type!r}>"

    def _after_send(self) -> None:
        self._rearm()

    def _rearm(self) -> None:
        """Let zmq-anyio see events our own calls consumed.

        The ZeroMQ FD is edge-triggered: any call on the socket (our non-blocking sends
        and receives included) may consume the edge that announced an incoming message,
        and a waiter on the FD would then sleep through it. Reading ``EVENTS`` through
        the zmq-anyio socket makes it dispatch whatever is ready to its waiters.
        """
        # Only a parked waiter needs zmq-anyio's dispatch: a receiver that is not parked
        # drains the socket before it parks again, and zmq-anyio looks at EVENTS itself
        # when a receive is armed. One dispatch per park is enough (it wakes the waiter);
        # with no message waiting, the next message re-arms the FD by itself (libzmq
        # re-activates a pipe it found empty). Reading EVENTS raw is cheap; the
        # zmq-anyio path spawns tasks.
        if self._writer_waiting:
            if not self._raw.closed:
                self._sock.get(zmq.EVENTS)  # type: ignore[no-untyped-call]
            return
        if not self._parked or self._rearmed or self._raw.closed:
            return
        if cast(int, self._raw.getsockopt(_EVENTS)) & _POLLIN:
            self._rearmed = True
            self._sock.get(zmq.EVENTS)  # type: ignore[no-untyped-call]

    def receive_nowait(self, max_messages: int = 1024) -> list[Frames]:
        """Return the messages already waiting (up to ``max_messages``), maybe none."""
        batch, self._stash = self._stash, []
        self._rearmed = False  # a drain may consume the edge a re-arm dispatched
        recv = self._raw.recv_multipart
        try:
            while len(batch) < max_messages:
                batch.append(recv(_NOBLOCK))
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            if not batch:
                raise TransportError(f"receive on {self.name} failed: {exc}") from exc
            # Hand over what we have; the error repeats on the next call.
        self._rearm()
        return batch

    async def receive_batch(self, max_messages: int = 1024) -> list[Frames]:
        """Wait for at least one message, then return all that are ready (up to a cap).

        Cancel-safe: when cancelled, no message is lost; one that arrived during the
        cancellation is returned by the next call.

        Raises:
            TransportError: the socket failed or was closed.
        """
        batch = self.receive_nowait(max_messages)
        if batch:
            await anyio.lowlevel.checkpoint()
            return batch
        # Yield and look again a few times before arming a zmq-anyio future (which
        # costs task spawns): under load the next replies arrive meanwhile.
        for _ in range(_POLLS_BEFORE_PARKING):
            await anyio.lowlevel.checkpoint()
            batch = self.receive_nowait(max_messages)
            if batch:
                return batch
        future = self._sock.arecv_multipart()
        self._parked, self._rearmed = True, False
        try:
            first = await future
        except BaseException:
            if future.status is anyio.Future.Status.FINISHED:
                self._stash.append(cast(Frames, future.return_value))
            else:
                future.cancel()
            raise
        finally:
            self._parked = False
        self._stash.append(cast(Frames, first))
        return self.receive_nowait(max_messages)

    async def wait_writable(self) -> None:
        """Wait until a send could succeed (a peer is up and below its high-water mark)."""
        future = self._sock.apoll(flags=zmq.POLLOUT)
        self._writer_waiting = True
        try:
            await future
        except BaseException:
            future.cancel()
            raise
        finally:
            self._writer_waiting = False


def apply_options(sock: zmq.Socket[Any], options: dict[int, Any]) -> None:
    """Set socket options in order (``{zmq.LINGER: 0, ...}``)."""
    for option, value in options.items():
        sock.setsockopt(option, value)


def bind_error(endpoint: str, exc: zmq.ZMQError) -> str:
    """Why binding ``endpoint`` failed, for a person (the address in use: what to do)."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{os.strerror(exc.errno)}: another process is bound to {endpoint!r} (a service "
            "already running there?); stop it or choose another port ('tcp://127.0.0.1:*' picks a "
            "free one)"
        )
    return str(exc)


@asynccontextmanager
async def open_socket(
    context: zmq.Context[Any],
    socket_type: int,
    *,
    name: str,
    options: dict[int, Any] | None = None,
    bind: str | None = None,
    connect: str | None = None,
) -> AsyncIterator[ZmqSocket]:
    """Open a zmq-anyio socket for the duration of the block, closed with its linger.

    Args:
        context: the pyzmq context.
        socket_type: ``zmq.DEALER``, ``zmq.ROUTER``, ...
        name: a label for logs and ``repr``.
        options: socket options set before bind/connect (``{zmq.LINGER: 0, ...}``).
        bind: endpoint to bind, e.g. ``"tcp://127.0.0.1:5580"``.
        connect: endpoint to connect to.

    :func:`endpoint_options` are applied first (``options`` may override them).

    Raises:
        TransportError: the endpoint is malformed or cannot be bound (address in use, an
            ``ipc://`` path a live process listens on: see :func:`check_ipc_path_free`).
    """
    if bind is not None:
        check_ipc_path_free(bind)
    raw = context.socket(socket_type)
    try:
        for endpoint in (bind, connect):
            if endpoint is not None:
                apply_options(raw, endpoint_options(endpoint))
        apply_options(raw, options or {})
        if bind is not None:
            raw.bind(bind)
        if connect is not None:
            raw.connect(connect)
    except zmq.ZMQError as exc:
        raw.close(linger=0)
        where = bind or connect
        detail = bind_error(bind, exc) if bind is not None else str(exc)
        raise TransportError(f"cannot open {name} on {where!r}: {detail}") from exc
    async with zmq_anyio.Socket(raw) as sock:
        yield ZmqSocket(sock, name=name)


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A peer's connection changed.

    Attributes:
        kind: ``"up"`` (ZMTP handshake succeeded: sends are now safe), ``"down"`` (the
            connection closed) or ``"refused"`` (the handshake failed, e.g. CURVE auth).
        source: the name of the socket whose monitor saw it (the dispatcher names each
            requester socket after the endpoint it connects to).
        endpoint: the endpoint the event is about, as libzmq reports it.
        at: ``anyio.current_time()`` when the event was read, in seconds.
        definitive: for ``"refused"``: the peer said why (a ZAP authentication failure,
            after which libzmq does not reconnect, or a security mechanism mismatch such
            as CURVE on one side only), so retrying will not help. ``False`` for a
            handshake that failed without detail (a wrong pinned server key, or a peer
            that died mid-handshake).
    """

    kind: Literal["up", "down", "refused"]
    source: str
    endpoint: str
    at: float
    definitive: bool = False


async def run_monitor(
    context: zmq.Context[Any],
    sock: SocketBase,
    events_out: MemoryObjectSendStream[ConnectionEvent],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Send the socket's connection events into ``events_out`` until cancelled.

    Meant to run as a task (``await task_group.start(run_monitor, ...)``); ``started()``
    is called once the monitor is attached, so no event after that point is missed.
    The monitor socket is drained continuously (an undrained monitor can stall
    reconnection in libzmq); events other than up/down/refused are read and dropped.
    ``events_out`` is closed when the task ends.
    """
    wanted = _UP_EVENTS | _DOWN_EVENTS | _REFUSED_EVENTS | _RETRY_EVENTS | _ATTEMPT_EVENTS
    endpoint = f"inproc://monitor-{sock.name}-{id(sock):x}"
    with events_out:
        sock.raw.monitor(endpoint, wanted)
        try:
            async with open_socket(
                context, zmq.PAIR, name=f"{sock.name}-monitor", connect=endpoint,
                options={zmq.LINGER: 0},
            ) as pair:  # fmt: skip
                try:
                    task_status.started()
                    await _forward_events(sock.name, pair, events_out)
                finally:
                    # While the reading end is still open: libzmq sends monitor events
                    # under a lock that disable_monitor() takes too, and a send to a
                    # closed reader could hold it forever.
                    with contextlib.suppress(zmq.ZMQError):
                        sock.raw.disable_monitor()
        except BaseException:
            with contextlib.suppress(zmq.ZMQError):
                sock.raw.disable_monitor()  # the reader never opened; idempotent
            raise


class _ConnectTrouble:
    """Logs a requester's failing connects: the first failure, then at most every
    :data:`CONNECT_LOG_INTERVAL` seconds, and the recovery. Counts per endpoint."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._failures: dict[str, int] = {}
        self._attempted: dict[str, bool] = {}
        self._first_at: dict[str, float] = {}
        self._logged_at: dict[str, float] = {}

    def attempted(self, endpoint: str) -> None:
        """A TCP connect was under way (so the address itself could be used)."""
        self._attempted[endpoint] = True

    def retried(self, endpoint: str, now: float) -> None:
        failures = self._failures.get(endpoint, 0) + 1
        self._failures[endpoint] = failures
        first_at = self._first_at.setdefault(endpoint, now)
        attempted = self._attempted.pop(endpoint, False)
        logged_at = self._logged_at.get(endpoint)
        if logged_at is not None and now - logged_at < CONNECT_LOG_INTERVAL:
            return
        self._logged_at[endpoint] = now
        if attempted:
            why = "the connection was refused or dropped (is the service up?)"
        else:
            why = (
                "the connect failed at once (an ipc path nobody listens on, a host name "
                "that does not resolve, an address this host has no route to?)"
            )
        # The first failure is often a requester started before its service; a line
        # every CONNECT_LOG_INTERVAL seconds after that is a problem to look at.
        level = logging.INFO if logged_at is None else logging.WARNING
        log.log(
            level,
            "requester %s cannot connect to %s: %s; %d failed attempt(s) in %.0f s, retrying",
            self.name,
            endpoint,
            why,
            failures,
            now - first_at,
        )

    def connected(self, endpoint: str) -> None:
        failures = self._failures.pop(endpoint, 0)
        self._first_at.pop(endpoint, None)
        self._attempted.pop(endpoint, None)
        if self._logged_at.pop(endpoint, None) is not None:
            log.info(
                "requester %s connected to %s after %d failed attempt(s)",
                self.name,
                endpoint,
                failures,
            )


async def _forward_events(
    name: str, pair: ZmqSocket, events_out: MemoryObjectSendStream[ConnectionEvent]
) -> None:
    trouble = _ConnectTrouble(name)
    while True:
        for frames in await pair.receive_batch():
            info = parse_monitor_message(frames)
            event = info["event"]
            where = info["endpoint"].decode(errors="replace")
            now = anyio.current_time()
            if event & _ATTEMPT_EVENTS:
                trouble.attempted(where)
                continue
            if event & _RETRY_EVENTS:
                trouble.retried(where, now)
                continue
            kind: Literal["up", "down", "refused"]
            definitive = bool(event & zmq.EVENT_HANDSHAKE_FAILED_AUTH) or (
                bool(event & zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
                and info["value"] == _MECHANISM_MISMATCH
            )
            if event & _UP_EVENTS:
                trouble.connected(where)
                kind = "up"
            elif event & _DOWN_EVENTS:
                kind = "down"
            elif event & _REFUSED_EVENTS:
                kind = "refused"
            else:
                continue
            await events_out.send(ConnectionEvent(kind, name, where, now, definitive))


class Requester(Protocol):
    """What the dispatcher needs of one requester connection; :class:`ZmqSocket` is one."""

    name: str

    def send_batch(self, messages: Iterable[Sequence[bytes]]) -> tuple[int, SendStatus]: ...

    def receive_nowait(self, max_messages: int = 1024) -> list[Frames]: ...

    async def wait_readable(self) -> None: ...

    async def wait_writable(self) -> None: ...


@runtime_checkable
class ReadsInTurn(Protocol):
    """A requester whose own sends offer the replies they find waiting to a hook, read
    in the sending task's turn (:class:`~backtest_queue.fd_socket.FdSocket`;
    ``MemoryNetwork(read_during_send=True)``'s). The dispatcher sets the hook."""

    on_readable: Callable[[], object] | None


class Network(Protocol):
    """Opens requester connections and reports their connection events.

    :class:`ZmqNetwork` is the real one (DEALER sockets over zmq-anyio);
    :class:`backtest_queue.testing.MemoryNetwork` is an in-memory fake for deterministic
    wiring tests (with trio's ``MockClock``).
    """

    def open_requester(self, endpoint: str) -> AbstractAsyncContextManager[Requester]:
        """Open a requester for ``endpoint`` (not connected yet)."""
        ...

    async def watch(
        self,
        requester: Requester,
        events_out: MemoryObjectSendStream[ConnectionEvent],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send the requester's connection events into ``events_out`` until cancelled."""
        ...

    def connect(self, requester: Requester, endpoint: str) -> None:
        """Start connecting (and reconnecting) in the background; after :meth:`watch`."""
        ...


class ZmqNetwork:
    """The real network: a DEALER per endpoint with these options, monitored.

    Args:
        context: the pyzmq context that owns the sockets.
        options: socket options set before connecting.
    """

    def __init__(self, context: zmq.Context[Any], options: dict[int, Any]) -> None:
        self.context = context
        self.options = options

    def open_requester(self, endpoint: str) -> AbstractAsyncContextManager[Requester]:
        from .fd_socket import open_fd_socket  # it imports this module

        options = {**endpoint_options(endpoint), **self.options}
        return open_fd_socket(self.context, zmq.DEALER, name=endpoint, options=options)

    async def watch(
        self,
        requester: Requester,
        events_out: MemoryObjectSendStream[ConnectionEvent],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        assert isinstance(requester, SocketBase)
        await run_monitor(self.context, requester, events_out, task_status=task_status)

    def connect(self, requester: Requester, endpoint: str) -> None:
        assert isinstance(requester, SocketBase)
        requester.connect(endpoint)


@dataclass(frozen=True, slots=True)
class CurveClient:
    """CURVE keys for the requester (see ``docs/reliability.md``).

    Attributes:
        public_key: this requester's public key (Z85, 40 bytes).
        secret_key: this requester's secret key (Z85, 40 bytes).
        server_key: the service's public key, pinned (Z85, 40 bytes).
    """

    public_key: bytes
    secret_key: bytes
    server_key: bytes


def requester_options(
    *, heartbeat_ivl: float, reconnect_ivl: float, send_hwm: int, max_message_bytes: int,
    curve: CurveClient | None,
) -> dict[int, Any]:  # fmt: skip
    """The socket options of a requester DEALER (durations in seconds, HWM in messages)."""
    options: dict[int, Any] = {
        zmq.LINGER: 0,  # unsent requests are still pending in the policy: nothing is lost
        zmq.IMMEDIATE: 1,  # queue only to completed connections, never to dead pipes
        zmq.HEARTBEAT_IVL: max(1, int(heartbeat_ivl * 1000)),
        zmq.HEARTBEAT_TIMEOUT: max(1, int(heartbeat_ivl * 3000)),
        zmq.HEARTBEAT_TTL: max(100, int(heartbeat_ivl * 3000)),
        zmq.RECONNECT_IVL: max(1, int(reconnect_ivl * 1000)),
        zmq.RECONNECT_IVL_MAX: max(1, int(max(reconnect_ivl, 2.0) * 1000)),
        zmq.MAXMSGSIZE: max_message_bytes,
        zmq.SNDHWM: send_hwm,
    }
    if curve is not None:
        options[zmq.CURVE_PUBLICKEY] = curve.public_key
        options[zmq.CURVE_SECRETKEY] = curve.secret_key
        options[zmq.CURVE_SERVERKEY] = curve.server_key
    return options
