"""The concurrency contract (issue 16): every public ``async def`` of the dispatcher is a
checkpoint on every path, and every error comes out unwrapped and in our root.

On trio, ``trio.testing.assert_checkpoints`` checks the schedule point and the cancel
point; on both backends a call made inside an already-cancelled scope must raise there
and change nothing. On :class:`~backtest_queue.testing.MemoryNetwork`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from backtest_queue import (
    BacktestRequest,
    DispatcherClosed,
    DuplicateRequest,
    QueueFull,
    Strategy,
    UsageError,
    errors,
    open_dispatcher,
)
from backtest_queue.testing import MemoryNetwork, echo_result
from backtest_queue.transport import Requester

pytestmark = pytest.mark.anyio
EP = "tcp://fake:5580"


def request(i: int | str, *, rid: str | None = None) -> BacktestRequest:
    n = i if isinstance(i, int) else 0
    strategy = Strategy(name=f"s{n}", kind="sma_cross", params={"fast": 5, "slow": 20 + n})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=rid or f"req-{i}")


# -- checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_every_public_async_call_is_a_checkpoint_on_every_path() -> None:
    from trio.testing import assert_checkpoints

    net = MemoryNetwork()
    net.bind(EP, echo_result)
    async with open_dispatcher([EP], network=net, capacity=3, on_full="error") as d:
        with anyio.fail_after(5):
            await d.wait_connected()
        with assert_checkpoints():
            await d.wait_connected()  # already connected
        with assert_checkpoints():
            await d.wait_idle()  # already idle
        with assert_checkpoints():
            await d.submit(request(0))
        with assert_checkpoints():
            await d.submit_many([request(1), request(2)])
        with assert_checkpoints():
            await d.submit_many([])
        with anyio.fail_after(5):
            await d.wait_idle()
        with assert_checkpoints():
            await d.wait("req-0")  # its outcome already arrived
        with assert_checkpoints():
            await d.outcomes.receive()  # an outcome is ready
        # the error paths
        with assert_checkpoints(), pytest.raises(DuplicateRequest):
            await d.submit(request(2))  # its outcome is unread
        with assert_checkpoints(), pytest.raises(UsageError):
            await d.wait("never-submitted")
        with assert_checkpoints(), pytest.raises(UsageError):
            await d.submit("not a request")  # type: ignore[arg-type]
        net.unbind(EP)  # nothing drains the queue now
        await d.submit_many([request(i) for i in range(3, 6)])
        with assert_checkpoints(), pytest.raises(QueueFull):
            await d.submit(request(6))
    # after the block
    with assert_checkpoints():
        await d.outcomes.receive()  # the unread one, or a 'shutdown' one
    with assert_checkpoints(), pytest.raises(DispatcherClosed):
        await d.submit(request(7))
    with assert_checkpoints(), pytest.raises(DispatcherClosed):
        await d.submit_many([request(7)])
    with assert_checkpoints(), pytest.raises(DispatcherClosed):
        await d.wait_connected()
    with assert_checkpoints():
        await d.wait_idle()
    with d.outcomes:
        [o async for o in d.outcomes]
        with assert_checkpoints(), pytest.raises(anyio.EndOfStream):
            await d.outcomes.receive()


async def raises_at_the_call(call: Callable[[], Awaitable[object]]) -> None:
    """``call()`` inside an already-cancelled scope raises the cancellation there."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await call()
        pytest.fail("a call in a cancelled scope returned")
    assert scope.cancelled_caught


async def test_in_a_cancelled_scope_every_call_raises_and_changes_nothing() -> None:
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    async with open_dispatcher([EP], network=net) as d:
        with anyio.fail_after(5):
            await d.wait_connected()
            await d.submit(request(0))
            await d.wait_idle()
        await raises_at_the_call(d.wait_connected)
        await raises_at_the_call(d.wait_idle)
        await raises_at_the_call(lambda: d.submit(request(1)))
        await raises_at_the_call(lambda: d.submit_many([request(2), request(3)]))
        await raises_at_the_call(lambda: d.submit_many([]))
        await raises_at_the_call(lambda: d.submit(request(0)))  # a duplicate
        await raises_at_the_call(lambda: d.wait("never-submitted"))
        assert [d.queue.state_of(f"req-{i}") for i in (1, 2, 3)] == [None] * 3
        assert d.stats().queue.sent == 1
        await raises_at_the_call(lambda: d.wait("req-0"))
        await raises_at_the_call(d.outcomes.receive)
        assert d.stats().unread_outcomes == 1  # neither consumed it
        with anyio.fail_after(5):
            assert (await d.outcomes.receive()).request_id == "req-0"
    await raises_at_the_call(d.outcomes.receive)  # at the end of the stream
    await raises_at_the_call(lambda: d.submit(request(4)))  # closed
    await raises_at_the_call(d.wait_idle)


# -- errors ----------------------------------------------------------------------------


class FailingNetwork(MemoryNetwork):
    """A MemoryNetwork whose requesters raise ``error`` from ``wait_readable`` once a
    reply has arrived: an internal task (a receiver) fails."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def open_requester(self, endpoint: str) -> AbstractAsyncContextManager[Requester]:
        return self._failing(super().open_requester(endpoint))

    @asynccontextmanager
    async def _failing(
        self, opened: AbstractAsyncContextManager[Requester]
    ) -> AsyncIterator[Requester]:
        async with opened as requester:
            wait_readable = requester.wait_readable

            async def failing_wait_readable() -> None:
                await wait_readable()
                raise self.error

            requester.wait_readable = failing_wait_readable  # type: ignore[method-assign]
            yield requester


async def run_until_a_receiver_fails(net: FailingNetwork) -> None:
    net.bind(EP, echo_result)
    async with open_dispatcher([EP], network=net) as d:
        await d.submit(request(0))
        with anyio.fail_after(5):
            await anyio.sleep_forever()


async def test_a_bug_in_an_internal_task_surfaces_unwrapped() -> None:
    with pytest.raises(RuntimeError, match="a bug in a receiver") as caught:
        await run_until_a_receiver_fails(FailingNetwork(RuntimeError("a bug in a receiver")))
    assert type(caught.value) is RuntimeError


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_keyboard_interrupt_in_an_internal_task_surfaces_unwrapped() -> None:
    # trio only: asyncio re-raises a task's KeyboardInterrupt out of the event loop
    # itself (it would stop this test run), whatever the library does.
    with pytest.raises(KeyboardInterrupt) as caught:
        await run_until_a_receiver_fails(FailingNetwork(KeyboardInterrupt()))
    assert type(caught.value) is KeyboardInterrupt


def test_keyboard_interrupt_in_an_internal_task_on_asyncio_is_not_wrapped() -> None:
    """asyncio lets a task's KeyboardInterrupt out of the event loop, so the check runs in
    a child process: the process ends with a bare KeyboardInterrupt, not a group."""
    script = (
        "import anyio\n"
        "from test_contract_checkpoints import FailingNetwork, run_until_a_receiver_fails\n"
        "anyio.run(run_until_a_receiver_fails, FailingNetwork(KeyboardInterrupt()),\n"
        "          backend='asyncio')\n"
    )
    tests = str(Path(__file__).parent)
    path = os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last == "KeyboardInterrupt", done.stderr[-3000:]
    assert "ExceptionGroup" not in done.stderr, done.stderr[-3000:]


async def test_a_negative_outcome_buffer_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="outcome_buffer"):
        open_dispatcher([EP], network=MemoryNetwork(), outcome_buffer=-1)


@pytest.mark.parametrize("where", ["a directory", "a missing directory"])
async def test_a_bad_store_path_is_a_store_error(tmp_path: Path, where: str) -> None:
    path = tmp_path if where == "a directory" else tmp_path / "missing" / "q.db"
    with pytest.raises(errors.StoreError) as caught:
        async with open_dispatcher([EP], network=MemoryNetwork(), store=path):
            pytest.fail("opened a store at a bad path")
    assert str(path) in str(caught.value)


async def test_entering_one_open_dispatcher_twice_is_a_usage_error() -> None:
    opened = open_dispatcher([EP], network=MemoryNetwork())
    async with opened:
        with pytest.raises(UsageError, match="open_dispatcher"):
            async with opened:
                pytest.fail("entered twice at once")
    with pytest.raises(UsageError, match="open_dispatcher"):
        async with opened:
            pytest.fail("entered again after it ended")


async def test_a_request_id_over_the_protocol_cap_is_refused_at_submit() -> None:
    long_id = "x" * 101  # the protocol allows 64 characters
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    async with open_dispatcher([EP], network=net) as d:
        with anyio.fail_after(5):
            await d.wait_connected()
        with pytest.raises(UsageError, match="request_id"):
            await d.submit(request(0, rid=long_id))
        with pytest.raises(UsageError, match="request_id"):
            await d.submit_many([request(1), request(0, rid=long_id)])
        with pytest.raises(UsageError, match="request_id"):
            d.submit_nowait(request(0, rid=long_id))
        assert d.queue.state_of(long_id) is None
        assert d.queue.state_of("req-1") is None
        assert d.stats().queue.sent == 0
        assert net.received == []


async def test_after_exit_nothing_reports_an_endpoint_up() -> None:
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    async with open_dispatcher([EP], network=net) as d:
        with anyio.fail_after(5):
            await d.wait_connected()
        assert d.connected
        assert d.stats().endpoints_up == (EP,)
    assert d.connected is False
    assert d.stats().endpoints_up == ()
    assert d.stats().closed


async def test_a_call_from_a_foreign_thread_is_refused_and_changes_nothing() -> None:
    net = MemoryNetwork()  # no service: a request accepted would stay queued
    async with open_dispatcher([EP], network=net) as d:
        before = d.stats()
        with pytest.raises(UsageError, match="thread"):
            await anyio.to_thread.run_sync(d.submit_nowait, request(0))
        with pytest.raises(UsageError, match="thread"):
            await anyio.to_thread.run_sync(d.maybe_flush)
        assert d.queue.state_of("req-0") is None
        assert d.stats() == before
        d.submit_nowait(request(0))  # from the event loop's thread: accepted
        assert d.queue.state_of("req-0") == "queued"
