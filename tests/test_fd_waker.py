"""The epoll set that lets one task wait on a ZeroMQ FD or a wake-up (Linux)."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from backtest_queue.fd_waker import AVAILABLE, FdWaker

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="no epoll/eventfd on this platform")


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    ctx: zmq.Context[Any] = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://waker")
    b.connect("inproc://waker")
    yield a, b
    ctx.destroy(linger=0)


@pytest.fixture
def quiet_waker(pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> Iterator[FdWaker]:
    """A waker on the first socket of ``pair``, its ZeroMQ FD quiet to begin with."""
    a, _ = pair
    a.getsockopt(zmq.EVENTS)  # handle pending commands: the ZeroMQ FD is quiet
    waker = FdWaker(a.getsockopt(zmq.FD))
    yield waker
    waker.close()


def test_a_wake_makes_the_fd_readable_until_reset(quiet_waker: FdWaker) -> None:
    waker = quiet_waker
    assert not _readable(waker.fd)
    waker.wake()
    waker.wake()  # once is enough: one reset takes both back
    assert _readable(waker.fd)
    waker.reset()
    assert not _readable(waker.fd)
    waker.reset()  # nothing to take back: does not block or raise
    assert not _readable(waker.fd)


def test_the_zeromq_fd_signal_reaches_the_waker(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]], quiet_waker: FdWaker
) -> None:
    a, b = pair
    waker = quiet_waker
    assert not _readable(waker.fd)
    b.send(b"x")  # a's pipe becomes readable: libzmq signals a's FD
    assert select.select([waker.fd], [], [], 5)[0]
    assert a.getsockopt(zmq.EVENTS) & zmq.POLLIN
    assert not _readable(waker.fd)  # the EVENTS read handled the signal
    assert a.recv() == b"x"


def test_close_closes_both_fds_once_and_ends_wake_and_reset(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    a, _ = pair
    waker = FdWaker(a.getsockopt(zmq.FD))
    fds = (waker.fd, waker._event)
    waker.wake()
    waker.close()
    waker.close()
    waker.reset()  # a task woken before the close: its FD numbers may be reused now
    waker.wake()
    for fd in fds:
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)
