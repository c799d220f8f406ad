"""How a backtest travels through the service's event loop (issue 14, target 1): once the
workers run, no thread hand-off and no task spawned per backtest, on both backends. On a
machine with as many CPUs as workers, each of those costs the workers CPU time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import pytest
import trio
import trio.abc
import trio.lowlevel
import zmq

from backtest_queue.service import Service, open_service

from service_helpers import RawClient, ScriptedEngine, scripted

pytestmark = pytest.mark.anyio

BACKTESTS = 12
T = TypeVar("T")


@contextmanager
def counting_spawned_tasks() -> Iterator[list[int]]:
    """Count the tasks the running event loop starts inside the block (``[count]``)."""
    count = [0]
    if trio.lowlevel.in_trio_run():

        class Spawns(trio.abc.Instrument):
            def task_spawned(self, task: trio.lowlevel.Task) -> None:
                count[0] += 1

        instrument = Spawns()
        trio.lowlevel.add_instrument(instrument)
        try:
            yield count
        finally:
            trio.lowlevel.remove_instrument(instrument)
        return
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        count[0] += 1
        if previous is not None:
            return previous(loop, coro, **kwargs)  # type: ignore[return-value]
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        yield count
    finally:
        loop.set_task_factory(previous)


def run_backtests(client: RawClient, n: int) -> list[dict[str, Any]]:
    """Blocking: ``n`` backtests through ``client``, two in flight at a time."""
    replies = []
    client.send(scripted("b0", "fine"))
    for i in range(1, n):
        client.send(scripted(f"b{i}", "fine"))
        replies.append(client.receive())
    replies.append(client.receive())
    return replies


@asynccontextmanager
async def connected_client(service: Service) -> AsyncIterator[RawClient]:
    """A :class:`RawClient` whose connection the service has counted (its monitor's
    events are behind it), driven in threads that are not anyio's (see
    :func:`in_plain_thread`)."""
    context: zmq.Context[Any] = zmq.Context()
    try:
        with RawClient(context, service.endpoint) as client:
            await in_plain_thread(client.ping)
            await service.wait_statistics(lambda s: s.connections >= 1)
            yield client
    finally:
        context.destroy(linger=0)


@asynccontextmanager
async def warm_service_client(tmp_path: Path) -> AsyncIterator[RawClient]:
    """A two-worker service (warmed up, as ``open_service`` does) and a client whose
    connection it has counted."""
    async with (
        open_service(
            bind="tcp://127.0.0.1:*", workers=2, engine=ScriptedEngine(tmp_path)
        ) as service,
        connected_client(service) as client,
    ):
        yield client


def assert_every_backtest_answered(replies: list[dict[str, Any]]) -> None:
    """One result for each of :func:`run_backtests`' backtests."""
    assert sorted(r["request_id"] for r in replies) == sorted(f"b{i}" for i in range(BACKTESTS))
    assert all(r["type"] == "BACKTEST_RESULT" for r in replies)


async def in_plain_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a ``threading.Thread`` and wait for it with one ``to_thread`` call."""
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    await anyio.to_thread.run_sync(thread.join, abandon_on_cancel=True)
    assert out, "the client thread failed (see its traceback above)"
    return out[0]


async def test_warm_workers_get_backtests_without_a_thread_hand_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After warm-up, the service submits to its process pool from the event loop: no
    ``to_thread`` call per backtest (the only one here is the test's own wait)."""
    calls: list[str] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(func, "__qualname__", repr(func)))
        return await real(func, *args, **kwargs)

    with anyio.fail_after(60):
        async with warm_service_client(tmp_path) as client:
            monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
            replies = await in_plain_thread(partial(run_backtests, client, BACKTESTS))
            monkeypatch.undo()
    assert_every_backtest_answered(replies)
    assert calls == ["Thread.join"]


async def test_the_service_spawns_no_task_per_backtest(tmp_path: Path) -> None:
    """The service's ROUTER waits on its FD itself (no zmq-anyio task spawns per FD
    wake-up or per receive) and the pool's results wake the loop without a task."""
    with anyio.fail_after(60):
        async with warm_service_client(tmp_path) as client:
            with counting_spawned_tasks() as spawned:
                replies = await in_plain_thread(partial(run_backtests, client, BACKTESTS))
    assert_every_backtest_answered(replies)
    # At most the connection monitor (a zmq-anyio socket) re-arming its receive after
    # the "up" event it has just reported (up to 3 spawns, at any time); a zmq-anyio
    # ROUTER spawns at least one task per message received (18-21 here on 9ca1aee).
    assert spawned[0] <= 3, spawned[0]
