"""A pyzmq socket that waits on its ZeroMQ FD through anyio: the requester's DEALER, and
the service's ROUTER (:mod:`.service.router_socket`).

The other sockets of the package (monitors, ``status``) are zmq-anyio sockets
(:mod:`.transport`). zmq-anyio runs a task per socket that waits on the ZeroMQ FD and,
on every wake-up of that FD, opens a task group and spawns a task, and spawns tasks per
awaited call; on the
requester, which sends and receives one small message per backtest, its FD task woke
0.6 times per message and cost about a third of the requester's CPU (issue 14, row 4 of
the benchmarks on a quiet machine: 3 700-3 800 messages/s through zmq-anyio, 4 850-5 350
with this socket, the dispatcher otherwise the same). Here the receiving task waits on
the FD itself, once per batch (:func:`anyio.wait_readable`), and nothing is spawned.
zmq-anyio is not forked or copied; the shared sending and connecting code is
:class:`~backtest_queue.transport.SocketBase`.

The ZeroMQ FD is not a plain readable socket (`zmq_getsockopt(3)`, ``ZMQ_FD``): it
signals that the socket's state *may* have changed, edge-triggered, and any call on the
socket (a send included) may consume that signal. So:

* before it waits on the FD, a task reads ``ZMQ_EVENTS`` (which also re-arms the FD) and
  waits only if what it waits for is not ready;
* after a call of its own while a task waits on the FD (a send, a non-blocking read), the
  socket reads ``ZMQ_EVENTS`` and wakes that task if what it waits for is ready: the
  call may have consumed the edge that would have woken it;
* one task at a time waits on the FD (anyio allows one reader per FD); another task that
  needs to wait (a receiver and a writer waiting for ``POLLOUT``) waits for that one to
  wake and looks again. Its look reads ``ZMQ_EVENTS`` too, and so may clear the signal
  the first one waits for: when it finds what that one waits for, it wakes it.

Before it wakes a receiver for messages a call of its own found waiting, the socket
offers them to :attr:`FdSocket.on_readable` (the dispatcher reads them in the
same turn: no wake-up, no scheduler pass per message); the receiver is woken only for
what is left.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, cast

import anyio
import anyio.lowlevel
import trio
import trio.lowlevel
import zmq
import zmq.backend

from .endpoints import check_ipc_path_free, endpoint_options
from .errors import TransportError
from .fd_waker import AVAILABLE as _FD_WAKER_AVAILABLE
from .fd_waker import make_waker
from .transport import SocketBase, apply_options, bind_error

__all__ = ["FdSocket", "open_fd_socket"]

Frames = list[bytes]

_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_POLLOUT: Final = int(zmq.POLLOUT)
_NOBLOCK: Final = int(zmq.NOBLOCK)
_RCVMORE: Final = int(zmq.RCVMORE)
#: receive_nowait reads ZMQ_EVENTS after each of the first _LOOKS messages of a call
#: (to stop when none is left), then reads on until EAGAIN: one failed recv a burst
#: instead of one events read a message.
_LOOKS: Final = 2
#: pyzmq's Cython backend sets ``Frame.more`` in ``recv(copy=False)``; its CFFI backend
#: (``PYZMQ_BACKEND=cffi``) leaves it False, so there ``ZMQ_RCVMORE`` is read per frame.
_FRAME_MORE: Final = zmq.backend.Socket.__module__.startswith("zmq.backend.cython")
#: Wake the task waiting on the FD through an epoll set (:mod:`.fd_waker`) where the
#: platform has one; tests set it False to run the cancel-scope way too.
_USE_FD_WAKER = _FD_WAKER_AVAILABLE
# pyzmq's own getsockopt, without the Python wrapper that makes ZMQ_EVENTS a PollEvent
# enum (and every ``&`` on it enum arithmetic): read on every send while a task waits.
# Typed for the int options read here (typing.cast would be a call per read).
_getsockopt: Final[Callable[[zmq.Socket[bytes], int], int]] = zmq.backend.Socket.get  # type: ignore[assignment]


class FdSocket(SocketBase):
    """A DEALER (or any pyzmq socket) used by one receiving task and non-blocking senders.

    Create it with :func:`open_fd_socket`. The same methods as
    :class:`~backtest_queue.transport.ZmqSocket`, with the same guarantees: sends never
    block; :meth:`receive_batch` waits for one message and returns all that are ready;
    a cancelled wait loses no message; ``zmq.ZMQError`` becomes
    :class:`~backtest_queue.errors.TransportError`.

    Attributes:
        name: a label for logs and ``repr`` (the dispatcher uses the endpoint).
        on_readable: called (synchronously) when a call of this socket's own finds
            messages waiting while a task waits on the FD, to read them in this turn;
            what it leaves wakes the waiting task. ``None``: the task is woken.
    """

    def __init__(self, raw: zmq.Socket[bytes], *, name: str) -> None:
        self._raw = raw
        self._fd = cast(int, raw.getsockopt(zmq.FD))
        self.name = name
        self.on_readable: Callable[[], object] | None = None
        self._wanted = 0  # POLLIN | POLLOUT: what the tasks that wait are waiting for
        # How the task waiting on the FD (one at a time) is woken: through an epoll set
        # with an eventfd (Linux, .fd_waker), else by cancelling the scope it waits in.
        self._fd_waker = make_waker(self._fd) if _USE_FD_WAKER else None
        self._wait_fd = self._fd if self._fd_waker is None else self._fd_waker.fd
        self._scope: anyio.CancelScope | trio.CancelScope | None = None
        self._holding = False  # a task waits on the FD
        self._fd_free: anyio.Event | None = None  # made by a task waiting for that one
        self._holder_wants = 0  # what the task waiting on the FD waits for
        self._offering = False  # inside on_readable (its reads must not call it again)
        # ZMQ_EVENTS as receive_nowait read it after its last recv, if no call came since
        # (-1: unknown; 0 also after a recv that found none while no task waits to
        # write: POLLIN clear, POLLOUT not read); spares _after_own_call and
        # wait_readable a second read.
        self._last_events = -1
        self._frame_more = _FRAME_MORE  # (per socket: tests read both ways)

    def __repr__(self) -> str:
        return f"<FdSocket {self.name} {self._raw.socket_type!r}>"

    @property
    def raw(self) -> zmq.Socket[bytes]:
        """The underlying pyzmq socket, for setting options and monitors.

        A call on it that handles ZeroMQ's pending commands (a send, a receive, a
        ``ZMQ_EVENTS`` read) consumes the FD's signal, which a task waiting on this
        socket would then sleep through: make those through this class. Monitors and
        other options are fine.
        """
        self._last_events = -1
        return self._raw

    def connect(self, endpoint: str) -> None:
        try:
            super().connect(endpoint)
        finally:  # libzmq handles pending commands in zmq_connect: as after a send
            self._after_send()

    def _after_send(self) -> None:
        self._last_events = -1
        if self._wanted:
            self._after_own_call()

    def receive_nowait(self, max_messages: int = 1024) -> list[Frames]:
        """Return the messages already waiting (up to ``max_messages``), maybe none.

        Raises:
            TransportError: the socket failed or was closed, and no message was read
                (messages read before a failure are returned; it repeats next call).
        """
        batch: list[Frames] = []
        raw = self._raw
        recv = raw.recv
        events = -1  # ZMQ_EVENTS as read after the last message; -1: not read since
        drained = False  # a recv found no message (EAGAIN)
        try:
            while len(batch) < max_messages:
                if self._frame_more:
                    # As frames: libzmq's "more" flag comes with each (a ZMQ_RCVMORE
                    # read through pyzmq costs more than the frame).
                    frame = recv(_NOBLOCK, copy=False)
                    frames = [frame.bytes]
                    while frame.more:
                        frame = recv(_NOBLOCK, copy=False)
                        frames.append(frame.bytes)
                else:
                    frames = [recv(_NOBLOCK)]
                    while _getsockopt(raw, _RCVMORE):
                        frames.append(recv(_NOBLOCK))
                batch.append(frames)
                if len(batch) > _LOOKS:  # a burst: read on until EAGAIN
                    continue
                # A message or two at a time (the common case at low rates): look
                # whether one is left rather than pay the recv that would raise
                # zmq.Again (about 1.1 against 2.4 us); the events read also tells
                # whether to wake a waiting task.
                events = _getsockopt(raw, _EVENTS)
                if not events & _POLLIN:
                    break
                events = -1
        except zmq.Again:
            drained = True
        except zmq.ZMQError as exc:
            if not batch:
                raise TransportError(f"receive on {self.name} failed: {exc}") from exc
        if drained:
            # The failed recv handled libzmq's pending commands, as a ZMQ_EVENTS read
            # does, and found no message: POLLIN is clear and the FD re-armed. Read
            # the events only for a task that waits to write (0: POLLOUT not read,
            # which only wait_writable needs, and it reads the events itself).
            events = 0
            if self._wanted & _POLLOUT:
                try:
                    events = _getsockopt(raw, _EVENTS)
                except zmq.ZMQError:
                    events = -1  # (the look below fails the same way, as before)
        self._last_events = events
        if self._wanted and not self._offering:
            if events < 0:
                self._after_own_call()
            elif events & self._wanted and self._holding:
                self._wake_holder()  # (no POLLIN: nothing to offer to on_readable)
        return batch

    def _after_own_call(self) -> None:
        """A call of ours may have consumed the FD's signal: give what is ready to
        :attr:`on_readable`, then wake the task waiting on the FD if it is ready for it."""
        if self._raw.closed:
            return
        self._last_events = events = _getsockopt(self._raw, _EVENTS)
        if (events & _POLLIN and self._wanted & _POLLIN and self.on_readable is not None
                and not self._offering):  # fmt: skip
            self._offering = True
            self._last_events = -1
            try:
                self.on_readable()
            finally:
                self._offering = False
            # Its last read may have read the events after its last call: not again.
            events = self._last_events
            if events < 0:
                self._last_events = events = _getsockopt(self._raw, _EVENTS)
        if events & self._wanted and self._holding:
            self._wake_holder()

    def _events(self) -> int:
        """Read ``ZMQ_EVENTS`` for a task that is not waiting on the FD.

        The read handles libzmq's pending commands and so clears the FD's signal: if it
        finds what the task waiting on the FD waits for, that task is woken (it would
        sleep through it). Only then: two waiters waking each other for nothing would
        never sleep.
        """
        self._last_events = events = _getsockopt(self._raw, _EVENTS)
        if events & self._holder_wants and self._holding:
            self._wake_holder()
        return events

    async def _wait(self, wanted: int, events: int = -1) -> None:
        """Wait until ``ZMQ_EVENTS`` has ``wanted`` (``POLLIN`` or ``POLLOUT``).

        ``events``: ``ZMQ_EVENTS`` as the caller read it just now, with no call on the
        socket since (-1: not read); spares a second read before the first wait.
        """
        try:
            if events < 0:
                events = self._events()
            while not events & wanted:
                self._wanted |= wanted
                if self._holding:  # another task waits on the FD: wait for it to stop
                    if self._fd_free is None:
                        self._fd_free = anyio.Event()
                    await self._fd_free.wait()
                else:
                    await self._hold_fd(wanted)
                events = self._events()
        except zmq.ZMQError as exc:
            raise TransportError(f"{self.name} failed: {exc}") from exc
        except (anyio.ClosedResourceError, trio.ClosedResourceError):
            raise TransportError(f"{self.name} was closed while a task waited on it") from None

    async def _hold_fd(self, wanted: int) -> None:
        """Wait on the FD once, as the one task that does; :meth:`_wake_holder` wakes it.

        On trio, trio's own ``wait_readable`` (and cancel scope): anyio's wrappers look
        the backend up on every call.
        """
        self._holding = True
        self._holder_wants = wanted
        waker = self._fd_waker
        try:
            if waker is not None:
                if trio.lowlevel.in_trio_run():
                    await trio.lowlevel.wait_readable(waker.fd)
                else:
                    await anyio.wait_readable(waker.fd)
            elif trio.lowlevel.in_trio_run():
                with trio.CancelScope() as self._scope:
                    await trio.lowlevel.wait_readable(self._fd)
            else:
                with anyio.CancelScope() as self._scope:
                    await anyio.wait_readable(self._fd)
        finally:
            self._scope = None
            self._holding = False
            self._wanted = self._holder_wants = 0  # who still waits says so again
            free, self._fd_free = self._fd_free, None
            if free is not None:
                free.set()
            if waker is not None:
                waker.reset()

    def _wake_holder(self) -> None:
        """Wake the task waiting on the FD (it reads ``ZMQ_EVENTS`` again)."""
        if self._fd_waker is not None:
            self._fd_waker.wake()
        elif self._scope is not None:
            self._scope.cancel()

    def _close_waker(self) -> None:
        """Wake a task still waiting on the FD with ``ClosedResourceError``, then close
        the waker's FDs (the ZeroMQ socket is closed by its owner). From now on every
        wait reads ``ZMQ_EVENTS`` first, which fails: ``TransportError``."""
        self._last_events = -1
        with contextlib.suppress(Exception):
            anyio.notify_closing(self._wait_fd)
        if self._fd_waker is not None:
            self._fd_waker.close()

    async def receive_batch(self, max_messages: int = 1024) -> list[Frames]:
        """Wait for at least one message, then return all that are ready (up to a cap).

        A checkpoint. Cancel-safe: messages are only read when returned.

        Raises:
            TransportError: the socket failed or was closed.
        """
        while True:
            await self.wait_readable()
            batch = self.receive_nowait(max_messages)
            if batch:
                return batch

    async def wait_readable(self) -> None:
        """Wait until a message can be read, without reading it (so that the caller can
        decide how many to read once it is awake). A checkpoint.

        Another task may read the message first: :meth:`receive_nowait` may then return
        nothing.

        Raises:
            TransportError: the socket failed or was closed.
        """
        # ZMQ_EVENTS as last read, if no call on the socket came since (the receiver's
        # read that found no more messages, just before): nothing since can have
        # consumed the FD's signal, so the FD wakes us for whatever comes.
        events = self._last_events
        if events < 0:
            try:
                events = self._events()
            except zmq.ZMQError as exc:
                raise TransportError(f"receive on {self.name} failed: {exc}") from exc
        if events & _POLLIN:
            await anyio.lowlevel.checkpoint()
        else:
            await self._wait(_POLLIN, events)

    async def wait_writable(self) -> None:
        """Wait until a send could succeed (a peer is up and below its high-water mark).

        Raises:
            TransportError: the socket failed or was closed.
        """
        await self._wait(_POLLOUT)


@asynccontextmanager
async def open_fd_socket(
    context: zmq.Context[Any],
    socket_type: int,
    *,
    name: str,
    options: dict[int, Any],
    bind: str | None = None,
) -> AsyncIterator[FdSocket]:
    """Open a :class:`FdSocket` for the duration of the block.

    Args:
        context: the pyzmq context.
        socket_type: ``zmq.DEALER`` (any type works; the service binds a ``zmq.ROUTER``).
        name: a label for logs and ``repr``.
        options: socket options, set before anything else but the endpoint's own
            (``{zmq.LINGER: 0, ...}``); closed with its ``ZMQ_LINGER``.
        bind: an endpoint to bind, as :func:`~backtest_queue.transport.open_socket` binds
            (its options first: ``ZMQ_IPV6`` for ``tcp://[::1]:5580``); ``None``: neither
            bound nor connected.

    Raises:
        TransportError: an option is refused, or ``bind`` is malformed or cannot be bound
            (address in use, an ``ipc://`` path a live process listens on).
    """
    if bind is not None:
        check_ipc_path_free(bind)
    raw: zmq.Socket[bytes] = context.socket(socket_type)
    try:
        if bind is not None:
            apply_options(raw, endpoint_options(bind))
        apply_options(raw, options)
        if bind is not None:
            raw.bind(bind)
    except zmq.ZMQError as exc:
        raw.close(linger=0)
        if bind is None:
            raise TransportError(f"cannot open {name}: {exc}") from exc
        raise TransportError(f"cannot open {name} on {bind!r}: {bind_error(bind, exc)}") from exc
    try:
        sock = FdSocket(raw, name=name)
    except OSError as exc:  # no FD left for the waker (EMFILE), ...
        raw.close(linger=0)
        raise TransportError(f"cannot open {name}: {exc}") from exc
    except BaseException:
        raw.close(linger=0)
        raise
    try:
        yield sock
    finally:
        # A task still waiting on the FD gets ClosedResourceError, never a closed FD.
        sock._close_waker()
        raw.close()
