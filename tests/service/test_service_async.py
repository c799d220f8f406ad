"""``open_service`` on the test's own event loop (trio and asyncio): held and dropped
replies, worker crashes, graceful stop, settings. Clients use the transport adapter."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import zmq

from backtest_queue.errors import TransportError, UsageError
from backtest_queue.service import EngineError, Service, open_service
from backtest_queue.service.executor import LocalPool
from backtest_queue.service.server import is_loopback

from service_helpers import (
    BrokenEngine,
    ScriptedEngine,
    backtest,
    free_tcp_endpoint,
    open_async_client,
    scripted,
    started_fifo,
    wait_started,
)

pytestmark = pytest.mark.anyio

LOCAL = "tcp://127.0.0.1:*"


@pytest.fixture
async def context() -> AsyncIterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    with anyio.move_on_after(10):  # bounded: a test failure must not hang the run
        await anyio.to_thread.run_sync(context.destroy, 0, abandon_on_cancel=True)


async def test_results_failures_and_a_worker_crash(
    tmp_path: Path, context: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backtest_queue.service")
    with anyio.fail_after(40):
        async with (
            open_service(bind=LOCAL, workers=1, engine=ScriptedEngine(tmp_path)) as service,
            open_async_client(context, service.endpoint) as client,
        ):
            assert isinstance(service, Service)
            assert "service ready on tcp://127.0.0.1:" in caplog.text
            pong = await client.request({"type": "PING", "v": 1, "request_id": "p"})
            assert pong["workers"] == 1
            reply = await client.request(scripted("ok", "fine"))
            assert reply["type"] == "BACKTEST_RESULT"
            assert reply["result"]["strategy_name"] == "fine"
            reply = await client.request(scripted("f", "fail"))
            assert (reply["code"], reply["request_id"]) == ("engine_error", "f")
            assert "ValueError: boom" in reply["message"]

            reply = await client.request(scripted("c", "crash"))
            assert (reply["code"], reply["request_id"]) == ("engine_error", "c")
            assert "died" in reply["message"]
            assert service.statistics().pool_restarts == 1
            reply = await client.request(scripted("after", "fine"))
            assert reply["type"] == "BACKTEST_RESULT"  # a new pool took over

            stats = service.statistics()
            assert (stats.backtests_completed, stats.engine_errors) == (2, 2)
            assert stats.running == stats.queued == stats.replies_waiting == 0
            assert "restarting the worker pool" in caplog.text
    assert "service stopped: 2 backtest(s) completed, 2 engine error(s)" in caplog.text


async def test_a_requester_that_stops_reading(
    context: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Replies to a requester whose pipe stays full are held, then dropped and counted;
    every PING ends up answered or counted as dropped, none vanishes."""
    pings = 2000
    small = {zmq.SNDHWM: 1, zmq.SNDBUF: 2048}
    with anyio.fail_after(40):
        async with (
            open_service(
                bind=LOCAL, workers=1, warm_up=False, reply_timeout=0.3, socket_options=small
            ) as service,
            open_async_client(context, service.endpoint, RCVHWM=1, RCVBUF=2048) as client,
        ):
            for i in range(pings):
                await client.send({"type": "PING", "v": 1, "request_id": f"p{i}"})
            # Until a drop of replies held at a full pipe. On a loaded machine the service
            # may first drop replies it had not yet tried within reply_timeout (logged as
            # as the service falling behind): the wait is for the drop this test is about.
            stats = await service.wait_statistics(
                lambda s: s.replies_dropped > 0 and "its pipe stayed full" in caplog.text
            )
            assert stats.reply_retries > 0

            # The requester reads again: what was held goes out, nothing else is lost. A
            # marker PING queued behind a still-full pipe may itself be dropped after
            # reply_timeout (counted: seen on asyncio), so markers go until one answers.
            await service.wait_statistics(lambda s: s.pings == pings)
            received = markers = 0
            answered = False
            while not answered:
                markers += 1
                await client.send({"type": "PING", "v": 1, "request_id": f"last-{markers}"})
                with anyio.move_on_after(2):
                    while True:
                        reply = await client.receive()
                        if reply["request_id"].startswith("last-"):
                            answered = reply["request_id"] == f"last-{markers}"
                            if answered:
                                break
                        else:
                            received += 1
            stats = service.statistics()
            assert stats.pings == pings + markers
            assert stats.replies_sent + stats.replies_dropped == pings + markers
            assert 0 < received < pings


async def test_a_reply_to_a_gone_requester_is_dropped_and_counted(
    tmp_path: Path, context: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(40):
        async with open_service(
            bind=LOCAL, workers=1, engine=ScriptedEngine(tmp_path), reply_timeout=0.3
        ) as service:
            async with open_async_client(context, service.endpoint) as client:
                await client.send(scripted("g", "gate:gone"))
                await service.wait_statistics(lambda s: s.running == 1)
            await service.wait_statistics(lambda s: s.disconnects == 1)
            (tmp_path / "gone").touch()  # the backtest finishes after its requester left
            stats = await service.wait_statistics(lambda s: s.replies_dropped == 1)
            assert stats.reply_retries >= 1
            assert stats.backtests_completed == 1
            assert "dropped 1 reply(ies) to requester" in caplog.text
            assert "it is not connected" in caplog.text
            async with open_async_client(context, service.endpoint) as client:
                assert (await client.request({"type": "PING"}))["type"] == "PONG"


async def test_stopping_does_not_wait_for_a_gone_requester(
    tmp_path: Path, context: zmq.Context[Any]
) -> None:
    with anyio.fail_after(40):
        async with open_service(
            bind=LOCAL,
            workers=1,
            engine=ScriptedEngine(tmp_path),
            reply_timeout=60.0,
            shutdown_grace=60.0,
        ) as service:
            async with open_async_client(context, service.endpoint) as client:
                await client.send(scripted("g", "gate:left"))
                await service.wait_statistics(lambda s: s.running == 1)
            await service.wait_statistics(lambda s: s.disconnects == 1)
            (tmp_path / "left").touch()
            await service.wait_statistics(lambda s: s.reply_retries >= 1)  # held
            stopping_at = anyio.current_time()
        assert anyio.current_time() - stopping_at < 10.0  # not the 60 s grace
    assert service.statistics().replies_dropped == 1


async def test_stopping_answers_running_and_queued_backtests(
    tmp_path: Path, context: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """One worker, the pool's default prefetch of 1: a running backtest, a prefetched one
    (handed to the pool, waiting for the worker) and a queued one. The queued one is not
    run; the running one is cut short at the end of the grace period; the prefetched one
    is withdrawn if it had not reached the executor's call queue (not run), else it is
    cut short too. Every request gets exactly one reply, all ``unavailable``."""
    endpoint = free_tcp_endpoint(context)
    others = set(multiprocessing.active_children())
    with anyio.fail_after(40):
        async with open_async_client(context, endpoint) as client:  # outlives the service
            async with open_service(
                bind=endpoint, workers=1, engine=ScriptedEngine(tmp_path), shutdown_grace=0.3
            ) as service:
                # The two runners submit to the executor in either order: the worker runs
                # whichever came first (it says so through the FIFO), the other waits.
                started = started_fifo(tmp_path, "never")
                await client.send(scripted("a", "gate:never"))
                await client.send(scripted("b", "gate:never"))
                await client.send(scripted("queued", "fine"))
                await wait_started(started)  # the worker runs "a" or "b"
                await service.wait_statistics(
                    lambda s: s.running == 1 and s.queued == 2 and s.prefetched == 1
                )
                workers = set(multiprocessing.active_children()) - others
            assert workers
            assert not any(worker.is_alive() for worker in workers)  # terminated, reaped
            # Stopped; all replies were handed over before the socket closed (linger).
            replies = [await client.receive() for _ in range(3)]
    by_id = {r["request_id"]: r for r in replies}
    assert sorted(by_id) == ["a", "b", "queued"]  # one reply each
    # unavailable: not run (or cut short), send it again - unlike a final engine_error
    assert {r["code"] for r in replies} == {"unavailable"}
    assert "not run" in by_id["queued"]["message"]
    cut_short = [i for i in "ab" if "stopped before the backtest finished" in by_id[i]["message"]]
    not_run = [i for i in "ab" if "not run" in by_id[i]["message"]]
    assert cut_short  # the running one, at the end of the grace period
    assert sorted(cut_short + not_run) == ["a", "b"]
    assert "still running after the 0.3 s grace period" in caplog.text
    stats = service.statistics()
    assert (stats.unavailable, stats.engine_errors, stats.replies_dropped) == (3, 0, 0)
    assert stats.running == stats.queued == stats.prefetched == 0


async def test_stopping_withdraws_prefetched_backtests_that_have_not_started(
    tmp_path: Path, context: zmq.Context[Any]
) -> None:
    """One worker with 3 prefetched: of the 4 backtests handed to the pool, at most 3 are
    in the worker or the executor's call queue (it holds workers + 1), so at least one
    can be withdrawn at a graceful stop and is answered "not run" at once, like a queued
    one; the others are cut short at the end of the grace period."""
    endpoint = free_tcp_endpoint(context)
    handed = [f"g{i}" for i in range(4)]
    with anyio.fail_after(40):
        async with open_async_client(context, endpoint) as client:
            async with open_service(
                bind=endpoint,
                workers=1,
                engine=ScriptedEngine(tmp_path),
                executor=LocalPool(prefetch=3),
                shutdown_grace=0.3,
            ) as service:
                assert service.credit == 2  # the default credit does not follow prefetch
                for request_id in handed:
                    await client.send(scripted(request_id, "gate:never"))
                await client.send(scripted("queued", "fine"))
                await service.wait_statistics(
                    lambda s: s.running == 1 and s.prefetched == 3 and s.queued == 4
                )
            replies = [await client.receive() for _ in range(5)]
    by_id = {r["request_id"]: r for r in replies}
    assert sorted(by_id) == [*handed, "queued"]  # one reply each
    assert {r["code"] for r in replies} == {"unavailable"}
    assert "not run" in by_id["queued"]["message"]
    not_run = [i for i in handed if "not run" in by_id[i]["message"]]
    cut_short = [i for i in handed if "stopped before the backtest finished" in by_id[i]["message"]]
    assert len(not_run) >= 1
    assert len(not_run) + len(cut_short) == 4
    stats = service.statistics()
    assert (stats.unavailable, stats.engine_errors, stats.replies_dropped) == (5, 0, 0)


async def test_a_worker_crash_answers_the_prefetched_backtests_too(
    tmp_path: Path, context: zmq.Context[Any]
) -> None:
    """A crash breaks the executor with a prefetched backtest in it: every request still
    gets exactly one reply (the crash and what the broken executor held: engine_error;
    the rest: results), the pool is restarted once, and serves on."""
    with anyio.fail_after(40):
        async with (
            open_service(bind=LOCAL, workers=1, engine=ScriptedEngine(tmp_path)) as service,
            open_async_client(context, service.endpoint) as client,
        ):
            ids = ["crash", "next", "third", "fourth"]
            await client.send(scripted("crash", "crash"))
            for request_id in ids[1:]:
                await client.send(scripted(request_id, "fine"))
            replies = [await client.receive() for _ in ids]
            by_id = {r["request_id"]: r for r in replies}
            assert sorted(by_id) == sorted(ids)  # one reply each
            assert by_id["crash"]["code"] == "engine_error"
            assert "died" in by_id["crash"]["message"]
            for request_id in ids[1:]:
                reply = by_id[request_id]
                assert reply["type"] == "BACKTEST_RESULT" or "died" in reply["message"]
            reply = await client.request(scripted("after", "fine"))
            assert reply["type"] == "BACKTEST_RESULT"
            stats = await service.wait_statistics(lambda s: s.replies_waiting == 0)
            assert stats.pool_restarts == 1
            assert stats.running == stats.queued == stats.prefetched == 0
            assert stats.backtests_completed + stats.engine_errors == 5


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"workers": 0}, "workers must be at least 1"),
        ({"engine": object()}, "does not implement"),
        ({"reply_timeout": 0}, "reply_timeout"),
        ({"max_message_bytes": 10}, "max_message_bytes"),
        ({"socket_options": {zmq.ROUTER_MANDATORY: 0}}, "ROUTER_MANDATORY"),
        ({"data_dir": "/nonexistent/data"}, "not a directory"),
        ({"executor": LocalPool(prefetch=-1)}, "prefetch must be an int >= 0"),
    ],
)
async def test_bad_settings_are_usage_errors(settings: dict[str, Any], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        async with open_service(bind=LOCAL, warm_up=False, **settings):
            pass  # pragma: no cover


async def test_an_engine_that_cannot_start_stops_the_start(tmp_path: Path) -> None:
    with anyio.fail_after(40), pytest.raises(EngineError, match="failed to start"):
        async with open_service(bind=LOCAL, workers=1, engine=BrokenEngine(tmp_path)):
            pass  # pragma: no cover


async def test_an_error_in_the_body_comes_out_as_itself() -> None:
    with pytest.raises(KeyError, match="mine"):  # not wrapped in an ExceptionGroup
        async with open_service(bind=LOCAL, workers=1, warm_up=False):
            raise KeyError("mine")


async def _fail_with_a_context() -> None:
    async with open_service(bind=LOCAL, workers=1, warm_up=False):
        try:
            raise ValueError("the context")
        except ValueError:
            raise KeyError("mine") from None


async def test_an_error_in_the_body_keeps_its_own_context() -> None:
    # Raised after the except block that caught the task group's exception group, not
    # inside it: inside, the error would be chained to the group, its context lost.
    with pytest.raises(KeyError, match="mine") as caught:
        await _fail_with_a_context()
    context = caught.value.__context__
    assert isinstance(context, ValueError), repr(context)
    assert str(context) == "the context"


async def _fail_as_the_surrounding_scope_is_cancelled() -> None:
    with anyio.CancelScope() as outer:
        async with open_service(bind=LOCAL, workers=1, warm_up=False):
            outer.cancel()
            raise UsageError("mine")


async def test_an_error_with_cancellations_beside_it_comes_out_as_itself() -> None:
    # The surrounding scope is cancelled as the body fails: the service's tasks end
    # with that scope's cancellation beside the body's error. One real error is raised
    # as itself (the package's rule, exception_groups.sole_error), not as a group.
    with anyio.fail_after(40), pytest.raises(UsageError, match="mine") as caught:
        await _fail_as_the_surrounding_scope_is_cancelled()
    assert not isinstance(caught.value.__context__, BaseExceptionGroup)


async def test_a_busy_endpoint_is_a_transport_error(context: zmq.Context[Any]) -> None:
    async with open_service(bind=LOCAL, workers=1, warm_up=False) as service:
        with pytest.raises(TransportError, match="cannot open service"):
            async with open_service(bind=service.endpoint, workers=1, warm_up=False):
                pass  # pragma: no cover


async def test_binding_beyond_loopback_warns(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(TransportError):  # TEST-NET-1: not an address of this host
        async with open_service(bind="tcp://192.0.2.1:5580", warm_up=False):
            pass  # pragma: no cover
    assert "beyond loopback without encryption" in caplog.text
    assert "issue #6" in caplog.text


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:5580", True),
        ("tcp://127.0.0.2:*", True),
        ("tcp://localhost:5580", True),
        ("tcp://[::1]:5580", True),
        ("ipc:///tmp/x.sock", True),
        ("inproc://x", True),
        ("tcp://*:5580", False),
        ("tcp://0.0.0.0:5580", False),
        ("tcp://10.1.2.3:5580", False),
        ("tcp://eth0:5580", False),
        ("ws://127.0.0.1:5580", False),
    ],
)
async def test_is_loopback(endpoint: str, local: bool) -> None:
    assert is_loopback(endpoint) is local


async def test_backtests_on_real_data_in_process(context: zmq.Context[Any]) -> None:
    with anyio.fail_after(40):
        async with (
            open_service(bind=LOCAL, workers=1) as service,
            open_async_client(context, service.endpoint) as client,
        ):
            reply = await client.request(backtest("real", data_id="EURUSD-H1", sl=0.01))
            assert reply["type"] == "BACKTEST_RESULT"
            assert reply["result"]["bars"] == 5000
            assert repr(service).startswith(f"<Service {service.endpoint} serving workers=1")
