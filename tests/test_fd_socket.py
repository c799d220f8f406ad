"""The requester's DEALER waits on its ZeroMQ FD itself: no reply may be slept through.

:class:`FdSocket` waits on the FD once per batch and hands replies that our own
sends find to ``on_readable``; the FD is edge-triggered and our calls can consume its
signal, so these check that every reply still arrives exactly once. Real ZeroMQ sockets
over TCP on 127.0.0.1; the peer is a plain blocking pyzmq ROUTER in a thread (an echo:
it answers each message with the same frames). Each wait is bounded with
``fail_after``: a missed wake-up shows as a timeout, never as a hang.
"""

from __future__ import annotations

import contextlib
import select
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import zmq

from backtest_queue import BacktestRequest, Strategy, fd_socket, open_dispatcher
from backtest_queue.errors import TransportError
from backtest_queue.fd_socket import FdSocket, open_fd_socket
from backtest_queue.transport import SendStatus

from stubs import echo, free_tcp_endpoint, stub_service

pytestmark = pytest.mark.anyio

_DEALER_OPTIONS = {zmq.LINGER: 0, zmq.IMMEDIATE: 1}


class _Echo:
    """A blocking ROUTER in a thread that sends every message back to its sender."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self._router = ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.RCVTIMEO, 50)
        self._router.bind("tcp://127.0.0.1:*")
        self.endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self.hold = threading.Event()  # set: read nothing (replies wait for it)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self.hold.is_set():
                self._stop.wait(0.01)
                continue
            try:
                frames = self._router.recv_multipart()
            except zmq.Again:
                continue
            self._router.send_multipart(frames)

    def __enter__(self) -> _Echo:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._router.close(linger=0)


@pytest.fixture(autouse=True, params=[True, False], ids=["epoll-waker", "cancel-scope"])
def wake_by(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test runs with each way of waking the task that waits on the FD: through
    the epoll set with an eventfd (Linux), and by cancelling its scope (elsewhere)."""
    if request.param and not fd_socket._USE_FD_WAKER:
        pytest.skip("no epoll/eventfd on this platform")
    monkeypatch.setattr(fd_socket, "_USE_FD_WAKER", request.param)
    return bool(request.param)


@pytest.fixture(params=[None, 0], ids=["looks-default", "drain-always"])
def looks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``receive_nowait`` reads ZMQ_EVENTS after its first messages, then reads on to
    EAGAIN; ``drain-always`` takes the second way from the first message, so the
    interleaving tests run through the failed recv that ends a burst too."""
    if request.param is not None:
        monkeypatch.setattr(fd_socket, "_LOOKS", request.param)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


async def _connected(sock: FdSocket, endpoint: str) -> None:
    """Connect and wait for the handshake: a ping comes back."""
    sock.connect(endpoint)
    with anyio.fail_after(10):
        while sock.try_send([b"", b"ping"]) is not SendStatus.SENT:
            await sock.wait_writable()
        assert await sock.receive_batch() == [[b"", b"ping"]]


@pytest.mark.usefixtures("looks")
async def test_a_parked_receiver_gets_replies_to_sends_made_while_it_waits(
    ctx: zmq.Context[Any],
) -> None:
    """Sends from another task read the FD's signal; the receiver must still wake.

    Sends and replies interleave while the receiver is parked on the FD, with no
    ``on_readable``: every reply must reach the receiver."""
    n = 400
    got: list[bytes] = []
    with _Echo(ctx) as echo:
        async with open_fd_socket(ctx, zmq.DEALER, name="t", options=_DEALER_OPTIONS) as s:
            await _connected(s, echo.endpoint)

            async def receive() -> None:
                while len(got) < n:
                    got.extend(frames[1] for frames in await s.receive_batch())

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive)
                    for i in range(n):
                        assert s.try_send([b"", b"%d" % i]) is SendStatus.SENT
                        if i % 7 == 0:  # let the receiver park now and then
                            await anyio.lowlevel.checkpoint()
    assert sorted(got, key=int) == [b"%d" % i for i in range(n)]


@pytest.mark.usefixtures("looks")
async def test_a_send_between_a_read_and_the_next_wait_cannot_hide_a_reply(
    ctx: zmq.Context[Any],
) -> None:
    """The receiver reuses ZMQ_EVENTS as its last read found them only if no call came
    since: a send in between may have handled the command that announced a reply (the
    FD's signal), and a wait on the FD would then sleep through that reply."""
    with _Echo(ctx) as echo:
        async with open_fd_socket(ctx, zmq.DEALER, name="t", options=_DEALER_OPTIONS) as s:
            await _connected(s, echo.endpoint)
            with anyio.fail_after(10):
                assert s.try_send([b"", b"a"]) is SendStatus.SENT
                await s.wait_readable()
                assert s.receive_nowait() == [[b"", b"a"]]  # and found no more
                assert s.try_send([b"", b"b"]) is SendStatus.SENT
                # b's reply announces itself on the FD; then nobody reads what we send.
                assert select.select([s._fd], [], [], 5)[0], "no reply to b"
                echo.hold.set()
                # libzmq handles pending commands in a send at most every ~1 ms: send
                # until one has (the FD's signal is gone).
                sent = 0
                while select.select([s._fd], [], [], 0)[0]:
                    assert s.try_send([b"", b"c%d" % sent]) is SendStatus.SENT
                    sent += 1
                    await anyio.lowlevel.checkpoint()
                await s.wait_readable()  # b's reply is there: no wait on the FD
                # (the echo may have answered a "c" before it held)
                assert s.receive_nowait()[0] == [b"", b"b"]


@pytest.mark.usefixtures("looks")
async def test_replies_found_by_a_send_go_to_on_readable_and_the_rest_to_the_receiver(
    ctx: zmq.Context[Any],
) -> None:
    """With ``on_readable``, replies a send finds are read in the sender's turn; what
    it leaves (it takes at most one here) still wakes the receiver. None is lost or
    read twice."""
    n = 300
    by_hook: list[bytes] = []
    by_receiver: list[bytes] = []
    all_in = anyio.Event()

    def count(into: list[bytes], batch: list[list[bytes]]) -> None:
        into.extend(frames[1] for frames in batch)
        if len(by_hook) + len(by_receiver) >= n:
            all_in.set()

    with _Echo(ctx) as echo:
        async with open_fd_socket(ctx, zmq.DEALER, name="t", options=_DEALER_OPTIONS) as s:
            await _connected(s, echo.endpoint)
            s.on_readable = lambda: count(by_hook, s.receive_nowait(1))

            async def receive() -> None:
                while True:  # the hook may take the last ones while this one waits
                    count(by_receiver, await s.receive_batch())

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive)
                    for i in range(n):
                        assert s.try_send([b"", b"%d" % i]) is SendStatus.SENT
                        await anyio.lowlevel.checkpoint()
                    await all_in.wait()
                    tg.cancel_scope.cancel()
    assert sorted(by_hook + by_receiver, key=int) == [b"%d" % i for i in range(n)]


async def test_a_cancelled_receive_loses_no_message(ctx: zmq.Context[Any]) -> None:
    with _Echo(ctx) as echo:
        async with open_fd_socket(ctx, zmq.DEALER, name="t", options=_DEALER_OPTIONS) as s:
            await _connected(s, echo.endpoint)
            echo.hold.set()
            with anyio.move_on_after(0.2) as scope:
                await s.receive_batch()
            assert scope.cancelled_caught
            assert s.try_send([b"", b"after"]) is SendStatus.SENT
            echo.hold.clear()
            with anyio.fail_after(10):
                assert await s.receive_batch() == [[b"", b"after"]]


async def test_a_writer_and_a_receiver_wait_at_once(ctx: zmq.Context[Any]) -> None:
    """Only one task may wait on an FD: the second waits for the first and looks again.

    The writer waits for POLLOUT (``ZMQ_IMMEDIATE``: no peer yet), the receiver for a
    message; connecting lets the writer send, whose echo wakes the receiver."""
    with _Echo(ctx) as echo:
        async with open_fd_socket(ctx, zmq.DEALER, name="t", options=_DEALER_OPTIONS) as s:
            assert s.try_send([b"", b"early"]) is SendStatus.WOULD_BLOCK
            received: list[list[bytes]] = []

            async def receive() -> None:
                received.extend(await s.receive_batch())

            async def write() -> None:
                await s.wait_writable()
                assert s.try_send([b"", b"late"]) is SendStatus.SENT

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive)
                    tg.start_soon(write)
                    await anyio.wait_all_tasks_blocked()  # both are waiting
                    s.connect(echo.endpoint)
            assert received == [[b"", b"late"]]


@pytest.mark.parametrize("frame_more", [True, False], ids=["Frame.more", "ZMQ_RCVMORE"])
async def test_multipart_replies_keep_their_frames(ctx: zmq.Context[Any], frame_more: bool) -> None:
    """Both ways of finding a message's frames: ``Frame.more`` (pyzmq's Cython backend)
    and a ``ZMQ_RCVMORE`` read per frame (its CFFI backend leaves ``Frame.more`` False)."""
    with _Echo(ctx) as echo:
        async with open_fd_socket(ctx, zmq.DEALER, name="t", options=_DEALER_OPTIONS) as s:
            s._frame_more = frame_more
            await _connected(s, echo.endpoint)
            sent = [[b"", b"a", b"b"], [b"c"], [b"", b""], [b"x" * 100_000, b"", b"y"]]
            assert s.send_batch(sent) == (4, SendStatus.SENT)
            got: list[list[bytes]] = []
            with anyio.fail_after(10):
                while len(got) < 4:
                    got.extend(await s.receive_batch())
            assert got == sent


async def test_a_closed_socket_raises_transport_error(ctx: zmq.Context[Any]) -> None:
    async with open_fd_socket(ctx, zmq.DEALER, name="t", options=_DEALER_OPTIONS) as s:
        pass
    with pytest.raises(TransportError, match="t"):
        s.receive_nowait()
    with pytest.raises(TransportError, match="t"):
        await s.receive_batch()
    with pytest.raises(TransportError, match="t"):
        s.try_send([b"", b"x"])


async def test_a_task_waiting_when_the_socket_closes_gets_transport_error(
    ctx: zmq.Context[Any],
) -> None:
    """Closing wakes the task waiting on the FD (its wait FD is told first, then closed):
    it gets TransportError, not a hang or an error about a closed FD."""
    errors: list[BaseException] = []

    async def receive(s: FdSocket) -> None:
        try:
            await s.receive_batch()
        except TransportError as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        async with (
            anyio.create_task_group() as tg,
            open_fd_socket(ctx, zmq.DEALER, name="t", options=_DEALER_OPTIONS) as s,
        ):
            tg.start_soon(receive, s)
            while not s._holding:  # the receiver waits on the FD
                await anyio.lowlevel.checkpoint()
    assert len(errors) == 1
    assert "closed while a task waited" in str(errors[0])


async def test_a_socket_closed_after_a_read_raises_transport_error_on_wait(
    ctx: zmq.Context[Any],
) -> None:
    """A wait on a closed socket says TransportError, even when the last read left
    ZMQ_EVENTS remembered: it must not wait on a closed (or reused) FD."""
    with _Echo(ctx) as echo:
        async with open_fd_socket(ctx, zmq.DEALER, name="old", options=_DEALER_OPTIONS) as s:
            await _connected(s, echo.endpoint)  # ends with a read that found no more
        with anyio.fail_after(10), pytest.raises(TransportError, match="old"):
            await s.receive_batch()
        with anyio.fail_after(10), pytest.raises(TransportError, match="old"):
            await s.wait_writable()


async def test_a_socket_closed_right_after_it_woke_its_waiters_fails_them_both(
    ctx: zmq.Context[Any],
) -> None:
    """A send wakes the task waiting on the FD, and the socket closes before that task
    runs: it and a task waiting for it to stop get TransportError; none hangs or sees
    an error about a closed FD."""
    errors: dict[str, BaseException] = {}

    async def waiting(s: FdSocket, name: str, wait: Callable[[], Awaitable[object]]) -> None:
        try:
            await wait()
        except TransportError as exc:
            errors[name] = exc

    with _Echo(ctx) as echo, anyio.fail_after(10):
        async with (
            anyio.create_task_group() as outer,
            open_fd_socket(ctx, zmq.DEALER, name="t", options=_DEALER_OPTIONS) as s,
        ):
            outer.start_soon(waiting, s, "receiver", s.receive_batch)
            while not s._holding:
                await anyio.lowlevel.checkpoint()
            outer.start_soon(waiting, s, "writer", s.wait_writable)
            await anyio.wait_all_tasks_blocked()  # the writer waits for the receiver
            s.connect(echo.endpoint)
            # Wait for the handshake without running the event loop (zmq_poll), then
            # send: the send's look finds POLLOUT and wakes the receiver, if connect's
            # own look has not already.
            assert s.raw.poll(5000, zmq.POLLOUT), "no handshake"
            assert s.try_send([b"", b"x"]) is SendStatus.SENT
    assert set(errors) == {"receiver", "writer"}


async def test_replies_read_in_the_submitters_turn_respect_outcome_buffer() -> None:
    """Replies a submit finds are applied at once, and the receiver reads the rest: both
    stop at ``outcome_buffer`` unread outcomes, then everything arrives exactly once."""
    n, bound = 400, 20
    endpoint = free_tcp_endpoint()
    strategy = Strategy(name="s", kind="sma_cross", params={"fast": 5, "slow": 20})
    requests = [
        BacktestRequest(request_id=f"req-{i}", data_id="EURUSD-H1", strategy=strategy)
        for i in range(n)
    ]
    most_unread = 0
    async with (
        stub_service(endpoint, echo),
        open_dispatcher([endpoint], outcome_buffer=bound, max_pending=None, rate=None) as d,
    ):
        with anyio.fail_after(30):
            await d.wait_connected()
            for r in requests:
                await d.submit(r)
                most_unread = max(most_unread, d.stats().unread_outcomes)
            # Nobody reads: the dispatcher holds at the bound (the replies wait unread).
            await anyio.wait_all_tasks_blocked()
            most_unread = max(most_unread, d.stats().unread_outcomes)
            got = []
            async for outcome in d.outcomes:
                got.append(outcome.request_id)
                most_unread = max(most_unread, d.stats().unread_outcomes)
                if len(got) == n:
                    break
    assert most_unread <= bound
    assert sorted(got) == sorted(r.request_id for r in requests)


def _fill(sock: FdSocket) -> int:
    """Send until the high-water mark stops it; return how many went."""
    n = 0
    while sock.send_batch([[b"", b"x"]])[0]:
        n += 1
    return n


def _drain(router: zmq.Socket[bytes]) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    with contextlib.suppress(zmq.Again):
        while True:
            got.append(router.recv_multipart(zmq.NOBLOCK))
    return got


@pytest.fixture
def tight_pair(ctx: zmq.Context[Any]) -> Iterator[tuple[zmq.Socket[bytes], str]]:
    """A ROUTER on inproc that holds one message: a DEALER with SNDHWM=1 fills at once."""
    router: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVHWM, 1)
    endpoint = f"inproc://tight-{id(router):x}"
    router.bind(endpoint)
    yield router, endpoint
    router.close(linger=0)


_TIGHT = {zmq.LINGER: 0, zmq.SNDHWM: 1}


async def _wakes_the_parked_task(
    wait: Callable[[], Awaitable[None]], act: Callable[[], Awaitable[object]]
) -> None:
    """Park a task in ``wait`` (the socket's ``wait_readable`` or ``wait_writable``),
    run ``act`` in this task once it waits on the FD, and fail unless the parked task
    wakes (both bounded: 5 s)."""
    woken = anyio.Event()

    async def park() -> None:
        await wait()
        woken.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(park)
        await anyio.wait_all_tasks_blocked()  # it waits on the FD
        with anyio.fail_after(5):
            await act()
            await woken.wait()


async def test_a_receivers_look_does_not_hide_room_from_the_waiting_writer(
    ctx: zmq.Context[Any], tight_pair: tuple[zmq.Socket[bytes], str]
) -> None:
    """The writer waits on the FD for room; the peer makes room (libzmq signals the FD);
    the receiver then looks for messages, and that ZMQ_EVENTS read clears the signal:
    the writer must be woken all the same (it was not: found in review)."""
    router, endpoint = tight_pair
    async with open_fd_socket(ctx, zmq.DEALER, name="t", options=_TIGHT) as s:
        s.connect(endpoint)
        assert _fill(s) >= 1

        async def make_room_then_look() -> None:
            assert _drain(router)  # room again: the DEALER's FD is signalled
            with anyio.move_on_after(0.2):
                await s.wait_readable()  # no reply comes: it only looks, then waits

        await _wakes_the_parked_task(s.wait_writable, make_room_then_look)


async def test_a_writers_look_does_not_hide_a_reply_from_the_waiting_receiver(
    ctx: zmq.Context[Any], tight_pair: tuple[zmq.Socket[bytes], str]
) -> None:
    """The receiver waits on the FD; a reply arrives (libzmq signals the FD); a writer
    then looks for room, and that ZMQ_EVENTS read clears the signal: the receiver must be
    woken all the same (it was not: found in review)."""
    router, endpoint = tight_pair
    async with open_fd_socket(ctx, zmq.DEALER, name="t", options=_TIGHT) as s:
        s.connect(endpoint)
        _fill(s)
        identity = _drain(router)[0][0]

        async def reply_then_look_for_room() -> None:
            router.send_multipart([identity, b"", b"reply"])
            await s.wait_writable()  # room is there: it looks and returns

        await _wakes_the_parked_task(s.wait_readable, reply_then_look_for_room)
        assert s.receive_nowait() == [[b"", b"reply"]]


async def test_a_burst_read_to_eagain_leaves_the_fd_armed_for_the_next_reply(
    ctx: zmq.Context[Any], tight_pair: tuple[zmq.Socket[bytes], str]
) -> None:
    """A burst is read until a recv finds none (EAGAIN), without a ZMQ_EVENTS read at
    the end: that failed recv handled libzmq's pending commands, so a receiver that
    then waits on the FD without looking again must still wake for the next reply.
    A cap on the batch stops the burst early and leaves the rest for the next read."""
    router, endpoint = tight_pair
    async with open_fd_socket(ctx, zmq.DEALER, name="t", options=_TIGHT) as s:
        s.connect(endpoint)
        _fill(s)
        identity = _drain(router)[0][0]
        burst = fd_socket._LOOKS + 4
        for i in range(burst):  # inproc: in the DEALER's pipe once sent
            router.send_multipart([identity, b"", b"%d" % i])
        with anyio.fail_after(5):
            await s.wait_readable()
        first = s.receive_nowait(burst - 1)
        assert [f[1] for f in first] == [b"%d" % i for i in range(burst - 1)]
        assert s.receive_nowait() == [[b"", b"%d" % (burst - 1)]]
        assert s.receive_nowait() == []  # and the next finds none (EAGAIN again)

        async def reply() -> None:
            router.send_multipart([identity, b"", b"next"])

        await _wakes_the_parked_task(s.wait_readable, reply)
        assert s.receive_nowait() == [[b"", b"next"]]


async def test_a_burst_read_to_eagain_does_not_hide_room_from_the_waiting_writer(
    ctx: zmq.Context[Any], tight_pair: tuple[zmq.Socket[bytes], str]
) -> None:
    """The writer waits on the FD for room; the peer takes a message (room: the FD is
    signalled) and sends a burst; the read of that burst ends in a failed recv that
    clears the signal: with a task waiting to write it reads ZMQ_EVENTS and wakes it."""
    router, endpoint = tight_pair
    async with open_fd_socket(ctx, zmq.DEALER, name="t", options=_TIGHT) as s:
        s.connect(endpoint)
        _fill(s)

        async def make_room_then_read_a_burst() -> None:
            identity = _drain(router)[0][0]  # room again: the DEALER's FD is signalled
            burst = fd_socket._LOOKS + 4
            for i in range(burst):
                router.send_multipart([identity, b"", b"%d" % i])
            assert len(s.receive_nowait()) == burst  # read in this task, to EAGAIN

        await _wakes_the_parked_task(s.wait_writable, make_room_then_read_a_burst)
