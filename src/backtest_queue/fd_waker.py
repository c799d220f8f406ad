"""One FD to wait on for a ZeroMQ socket's FD *or* a wake-up from another task (Linux).

:class:`~backtest_queue.fd_socket.FdSocket` has one task wait on the ZeroMQ FD, and
other tasks must be able to wake it (a call of theirs may have consumed the FD's signal;
see that module). A cancel scope around each wait does that, but entering and leaving
one costs more than the wait itself: on trio a ``CancelScope`` is about 13 us, a bare
``wait_readable`` about 10 us, and on row 4 of the benchmarks (issue 14) the requester's
receiver waits about once per three messages.

Here the task waits instead on an epoll set (``epoll(7)``) holding the ZeroMQ FD and an
``eventfd(2)`` of our own. An epoll FD is itself pollable, so trio's and asyncio's event
loops wait on it like any other FD; it is readable when either member is. A wake-up
writes the eventfd; the woken task reads it back. So a wait costs one plain
``wait_readable``, and only a wake-up costs a write and a read.

Where ``select.epoll`` or ``os.eventfd`` is missing (not Linux), :func:`make_waker`
returns ``None`` and the socket uses a cancel scope per wait.
"""

from __future__ import annotations

import os
import select
from typing import Final

__all__ = ["FdWaker", "make_waker"]

#: Whether this platform has what :class:`FdWaker` needs.
AVAILABLE: Final = hasattr(select, "epoll") and hasattr(os, "eventfd")


class FdWaker:
    """An epoll set of a ZeroMQ socket's FD and an eventfd; wait on :attr:`fd`.

    Attributes:
        fd: the epoll FD: readable when the ZeroMQ FD is, or after :meth:`wake`.
    """

    def __init__(self, zmq_fd: int) -> None:
        self._epoll = select.epoll(2)  # close-on-exec, as Python opens it
        try:
            self._event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            self._epoll.close()
            raise
        try:
            # Level-triggered: readable for as long as a member is (the ZeroMQ FD stays
            # readable until a ZMQ_EVENTS read or another call handles its commands).
            self._epoll.register(zmq_fd, select.EPOLLIN)
            self._epoll.register(self._event, select.EPOLLIN)
        except BaseException:
            self.close()
            raise
        self.fd: int = self._epoll.fileno()
        self._signalled = False

    def wake(self) -> None:
        """Make :attr:`fd` readable until :meth:`reset` (once: further calls do nothing;
        after :meth:`close`, nothing)."""
        if not self._signalled and not self._epoll.closed:
            self._signalled = True
            os.eventfd_write(self._event, 1)

    def reset(self) -> None:
        """Take back a :meth:`wake`, if there was one (call once the waiting task runs;
        after :meth:`close`, nothing: the FD number may belong to another file by then)."""
        if self._signalled:
            self._signalled = False
            os.eventfd_read(self._event)

    def close(self) -> None:
        """Close both FDs (after waking whoever waits on :attr:`fd` with
        ``notify_closing``). Idempotent."""
        self._signalled = False  # a task woken before the close must not read the FD
        if not self._epoll.closed:
            self._epoll.close()
            os.close(self._event)


def make_waker(zmq_fd: int) -> FdWaker | None:
    """An :class:`FdWaker` for ``zmq_fd``, or ``None`` where the platform has none."""
    return FdWaker(zmq_fd) if AVAILABLE else None
