"""The dispatcher over real ZeroMQ sockets (TCP on loopback), on trio and asyncio."""

from __future__ import annotations

import logging
from collections import Counter
from functools import partial

import anyio
import pytest
import zmq

from backtest_queue import (
    BacktestRequest,
    DispatcherClosed,
    DuplicateRequest,
    QueueFull,
    Strategy,
    TransportError,
    UsageError,
)
from backtest_queue.dispatcher import Dispatcher, open_dispatcher
from backtest_queue.outcome import Outcome
from backtest_queue.protocol import ErrorReply, encode_message

from stubs import echo, free_tcp_endpoint, result_for, silent, stub_service

pytestmark = pytest.mark.anyio


def make_request(i: int) -> BacktestRequest:
    strategy = Strategy(name=f"sma-{i}", kind="sma_cross", params={"fast": 5, "slow": 20 + i})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=f"req-{i:05d}")


async def collect(dispatcher: Dispatcher, n: int) -> list[Outcome]:
    """Read exactly ``n`` outcomes."""
    out: list[Outcome] = []
    async for outcome in dispatcher.outcomes:
        out.append(outcome)
        if len(out) == n:
            break
    return out


async def test_flush_right_after_connect(caplog: pytest.LogCaptureFixture) -> None:
    """200 requests queued with no service reach it well under a second after connect,
    with flush_interval=3600: the flush is driven by the connect event (one request
    at the connect, the rest when the PONG says the service takes them: issue 13)."""
    caplog.set_level(logging.INFO, logger="backtest_queue")
    endpoint = free_tcp_endpoint()
    async with open_dispatcher([endpoint], flush_interval=3600, max_pending=None) as d:
        states = [await d.submit(make_request(i)) for i in range(200)]
        assert {(s.state, s.reason) for s in states} == {("queued", "not_connected")}
        assert d.stats().queue.queued == 200
        async with stub_service(endpoint, silent) as stub:
            await stub.up.wait()
            with anyio.fail_after(0.5):  # opened at the connect event
                await stub.wait_received(200)
            assert stub.ids == [f"req-{i:05d}" for i in range(200)]  # FIFO
    assert any("flushed 1 queued requests" in r.getMessage() for r in caplog.records)
    # The stub never answered: closing reports each one, readable after the block.
    with d.outcomes:
        left = [o async for o in d.outcomes]
    assert Counter(o.reason for o in left) == {"shutdown": 200}


@pytest.mark.parametrize(
    ("limits", "reason"),
    [({"rate": 40.0, "burst": 4}, "rate"), ({"max_pending": 3}, "pending")],
    ids=["rate", "pending"],
)
async def test_queue_keeps_draining_without_new_events(
    limits: dict[str, float], reason: str
) -> None:
    """After a flush stops on the rate or pending limit, the queue drains by itself:
    no new submit, no connect event."""
    endpoint = free_tcp_endpoint()
    n = 24
    async with stub_service(endpoint, echo) as stub:
        settings = {"max_pending": None, **limits}
        async with open_dispatcher([endpoint], flush_interval=3600, **settings) as d:  # type: ignore[arg-type]
            with anyio.fail_after(5):
                await d.wait_connected()
            # One batch: no reply can free a slot between two of these submits.
            states = await d.submit_many([make_request(i) for i in range(n)])
            assert states[-1].state == "queued"
            assert states[-1].reason == reason
            with anyio.fail_after(5):
                outcomes = await collect(d, n)
    assert sorted(o.request_id for o in outcomes) == [f"req-{i:05d}" for i in range(n)]
    assert all(o.ok for o in outcomes)
    if reason == "rate":
        times = [t for t, _ in stub.received]
        for i, start in enumerate(times):  # token bucket: at most burst + rate*T in any window
            for j in range(i, len(times)):
                assert j - i + 1 <= 4 + 40.0 * (times[j] - start) + 1.0


async def test_service_restart_mid_run_gives_exactly_one_outcome_each() -> None:
    """The service goes away after some results and comes back on the same endpoint:
    every request gets exactly one outcome, and the lost in-flight ones are re-sent."""
    endpoint = free_tcp_endpoint()
    n = 60
    async with open_dispatcher([endpoint], max_pending=10, result_timeout=5.0) as d:
        async with stub_service(endpoint, echo) as first:
            for i in range(n):
                await d.submit(make_request(i))
            with anyio.fail_after(5):
                got = await collect(d, 20)
        # The first service is gone: with it, whatever it had not answered yet.
        async with stub_service(endpoint, echo):
            with anyio.fail_after(10):
                got += await collect(d, n - 20)
        stats = d.stats()
    counts = Counter(o.request_id for o in got)
    assert len(counts) == n
    assert max(counts.values()) == 1
    assert all(o.ok for o in got)
    assert len(first.received) >= 20
    assert stats.queue.pending == 0
    assert stats.queue.queued == 0


async def test_service_that_never_answers_times_out_and_frees_every_slot() -> None:
    endpoint = free_tcp_endpoint()
    n = 6
    async with (
        stub_service(endpoint, silent) as stub,
        open_dispatcher([endpoint], max_pending=4, result_timeout=0.2, max_attempts=2) as d,
    ):
        for i in range(n):
            await d.submit(make_request(i))
        with anyio.fail_after(5):
            outcomes = await collect(d, n)
        stats = d.stats()
    assert sorted(o.request_id for o in outcomes) == [f"req-{i:05d}" for i in range(n)]
    assert {(o.reason, o.attempts) for o in outcomes} == {("timeout", 2)}
    assert Counter(stub.ids) == {f"req-{i:05d}": 2 for i in range(n)}
    assert stats.queue.pending == 0
    assert stats.queue.failed == n
    assert stats.queue.retries == n


def _garbage(request: BacktestRequest) -> list[bytes]:
    """A hostile service: junk, an unknown id, wrong types, then the result twice."""
    if request.request_id == "sentinel":
        return [result_for(request)]
    return [
        b"not json",
        b'{"type": "BACKTEST_RESULT", "v": 1, "request_id": 7, "result": {}}',
        result_for(make_request(99_999)),  # an id nobody asked for
        b'{"type": "PONG", "v": 1}',
        b'{"type": "ERROR", "v": 1, "request_id": null, "code": "invalid_request",'
        b' "message": "could not read"}',
        result_for(request),
        result_for(request, sharpe=-5.0),  # duplicate: must be dropped
    ]


async def test_garbage_from_the_service_is_counted_and_never_duplicates() -> None:
    endpoint = free_tcp_endpoint()
    n = 10
    async with (
        stub_service(endpoint, _garbage),
        open_dispatcher([endpoint], max_pending=None) as d,
    ):
        for i in range(n):
            await d.submit(make_request(i))
        with anyio.fail_after(5):
            outcomes = await collect(d, n)
            # Replies on one connection keep their order: once the sentinel's outcome is
            # in, every reply sent before it (the duplicates too) has been read.
            await d.submit(
                BacktestRequest(
                    strategy=make_request(0).strategy, data_id="EURUSD-H1", request_id="sentinel"
                )
            )
            assert (await collect(d, 1))[0].request_id == "sentinel"
        stats = d.stats()
    assert sorted(o.request_id for o in outcomes) == [f"req-{i:05d}" for i in range(n)]
    assert all(o.ok and o.result is not None and o.result.sharpe == 1.0 for o in outcomes)
    assert stats.invalid_replies == 2 * n  # junk, wrong type (a PONG is read: fingerprints)
    assert stats.error_replies_without_id == n
    assert stats.queue.unknown_results == n
    assert stats.queue.duplicate_results == n
    assert stats.outcomes == n + 1


async def test_cancelling_while_sends_block_shuts_down_promptly() -> None:
    """A service that stops reading fills the pipes until sends would block (EAGAIN);
    cancelling the outer scope then ends everything within a bound."""
    endpoint = free_tcp_endpoint()
    n = 4000
    async with stub_service(endpoint, read=False, options={zmq.RCVHWM: 1}) as stub:
        with anyio.CancelScope() as outer:
            async with open_dispatcher([endpoint], max_pending=None, capacity=n, send_hwm=1) as d:
                with anyio.fail_after(5):
                    await d.wait_connected()
                for i in range(n):
                    await d.submit(make_request(i))
                stats = d.stats()
                assert stats.would_block >= 1  # the pipes are full: sends were refused
                assert stats.queue.queued > 0
                with anyio.fail_after(2):  # cancelling must not hang on the blocked socket
                    outer.cancel()
                    await anyio.sleep_forever()
        assert outer.cancelled_caught
        assert not stub.received
    with d.outcomes:
        reasons = Counter([o.reason async for o in d.outcomes])
    assert reasons == {"shutdown": n}


async def test_full_queue_raises_or_waits() -> None:
    endpoint = free_tcp_endpoint()
    async with open_dispatcher([endpoint], capacity=2, on_full="error") as d:
        await d.submit(make_request(0))
        await d.submit(make_request(1))
        with pytest.raises(QueueFull):
            await d.submit(make_request(2))
        assert d.stats().queue.queued == 2  # nothing dropped, nothing added
        with pytest.raises(DuplicateRequest):
            await d.submit(make_request(0))
    with d.outcomes:
        assert [o.request_id async for o in d.outcomes] == ["req-00000", "req-00001"]
    async with open_dispatcher([endpoint], capacity=2, on_full="wait", max_pending=None) as d:
        await d.submit(make_request(0))
        await d.submit(make_request(1))
        with anyio.move_on_after(0.1) as scope:
            await d.submit(make_request(2))  # waits for room: no service yet
        assert scope.cancelled_caught
        async with stub_service(endpoint, echo):
            with anyio.fail_after(5):
                state = await d.submit(make_request(2))  # room comes with the connect flush
                assert state.request_id == "req-00002"
                outcomes = await collect(d, 3)
    assert sorted(o.request_id for o in outcomes) == ["req-00000", "req-00001", "req-00002"]


async def test_wait_returns_that_requests_outcome() -> None:
    endpoint = free_tcp_endpoint()
    async with stub_service(endpoint, echo), open_dispatcher([endpoint]) as d:
        with anyio.fail_after(5):
            state = await d.submit(make_request(1))
            outcome = await d.wait(state.request_id)
        assert outcome.ok
        assert outcome.request_id == "req-00001"
        assert outcome.attempts == 1
        with pytest.raises(UsageError):
            await d.wait("req-00001")  # already delivered
        assert d.outcomes.statistics().current_buffer_used == 0  # claimed by wait()


async def test_errors_in_the_block_propagate_unchanged_and_close_the_dispatcher() -> None:
    endpoint = free_tcp_endpoint()
    with pytest.raises(KeyError, match="boom"):  # noqa: PT012 - the block is the subject
        async with open_dispatcher([endpoint]) as d:
            await d.submit(make_request(0))
            raise KeyError("boom")
    with pytest.raises(DispatcherClosed):
        await d.submit(make_request(1))
    with d.outcomes:
        assert [o.reason async for o in d.outcomes] == ["shutdown"]


async def test_two_services_one_dies_the_other_finishes_the_work() -> None:
    a, b = free_tcp_endpoint(), free_tcp_endpoint()
    n = 40
    async with (
        stub_service(b, echo) as survivor,
        open_dispatcher([a, b], max_pending=4, result_timeout=5.0) as d,
    ):
        async with stub_service(a, silent):
            with anyio.fail_after(5):
                while len(d.stats().endpoints_up) < 2:
                    await d.wait_connected()
                    await anyio.lowlevel.checkpoint()
            for i in range(n):
                await d.submit(make_request(i))
        # The silent service is gone: its pending requests are re-sent to the survivor.
        with anyio.fail_after(10):
            outcomes = await collect(d, n)
    assert sorted(o.request_id for o in outcomes) == [f"req-{i:05d}" for i in range(n)]
    assert all(o.ok for o in outcomes)
    assert len(set(survivor.ids)) == n


def test_settings_are_validated() -> None:
    async def open_with(**kwargs: object) -> None:
        async with open_dispatcher(**kwargs):  # type: ignore[arg-type]
            pass

    for bad in ({"endpoints": []}, {"on_full": "drop"}, {"max_pending": 0},
                {"drain_timeout": -1.0}):  # fmt: skip
        with pytest.raises(UsageError):
            anyio.run(partial(open_with, **bad))


async def test_drain_timeout_lets_outstanding_requests_finish() -> None:
    endpoint = free_tcp_endpoint()
    async with stub_service(endpoint, echo):
        async with open_dispatcher([endpoint], drain_timeout=5.0) as d:
            for i in range(5):
                await d.submit(make_request(i))
        with d.outcomes:
            outcomes = [o async for o in d.outcomes]
    assert [o.ok for o in outcomes] == [True] * 5


async def test_unavailable_replies_are_sent_again_until_attempts_run_out() -> None:
    """A service that declines a request ('unavailable': stopping, overloaded) did not
    run it: the request goes out again, and fails only after max_attempts."""
    endpoint = free_tcp_endpoint()
    seen: Counter[str] = Counter()

    def decline_first(request: BacktestRequest) -> list[bytes]:
        seen[request.request_id] += 1
        if request.request_id == "req-00000" and seen[request.request_id] == 1:
            reply = ErrorReply(request_id=request.request_id, code="unavailable", message="busy")
            return [encode_message(reply)]
        if request.request_id == "req-00001":  # always declined
            reply = ErrorReply(request_id=request.request_id, code="unavailable", message="busy")
            return [encode_message(reply)]
        return [result_for(request)]

    async with (
        stub_service(endpoint, decline_first),
        open_dispatcher([endpoint], max_attempts=3) as d,
    ):
        await d.submit(make_request(0))
        await d.submit(make_request(1))
        with anyio.fail_after(5):
            outcomes = {o.request_id: o for o in await collect(d, 2)}
    assert outcomes["req-00000"].ok
    assert outcomes["req-00000"].attempts == 2
    assert outcomes["req-00001"].reason == "service_error"
    assert "unavailable" in outcomes["req-00001"].detail
    assert seen == {"req-00000": 2, "req-00001": 3}


async def test_deadline_of_a_request_sent_inside_submit_wakes_the_flusher() -> None:
    """Sent by submit() itself while the flusher sleeps with nothing to wait for: its
    deadline must still be kept (the flusher is re-armed), or the slot is held forever."""
    endpoint = free_tcp_endpoint()
    async with (
        stub_service(endpoint, silent),
        open_dispatcher([endpoint], result_timeout=0.2, max_attempts=1, flush_interval=3600) as d,
    ):
        with anyio.fail_after(5):
            await d.wait_connected()
            state = await d.submit(make_request(0))
            assert state.state == "sent"
            outcome = await d.wait(state.request_id)
        assert outcome.reason == "timeout"
        assert d.stats().queue.pending == 0


async def test_request_queued_behind_the_rate_limit_goes_at_its_token_time() -> None:
    endpoint = free_tcp_endpoint()
    async with (
        stub_service(endpoint, echo),
        open_dispatcher([endpoint], rate=5.0, burst=1, flush_interval=3600) as d,
    ):
        with anyio.fail_after(5):
            await d.wait_connected()
            first = await d.submit(make_request(0))
            second = await d.submit(make_request(1))
            assert (first.state, second.state, second.reason) == ("sent", "queued", "rate")
            outcome = await d.wait(second.request_id)  # at ~0.2 s, not the 3600 s tick
            assert (await d.outcomes.receive()).request_id == first.request_id
        assert outcome.ok


async def test_a_bounded_outcome_stream_gets_every_failure_in_order() -> None:
    """Outcomes that do not fit a bounded stream wait, in order, and are delivered as
    the caller reads, also those raised by the flusher (timeouts), not only replies."""
    endpoint = free_tcp_endpoint()
    async with (
        stub_service(endpoint, silent),
        open_dispatcher([endpoint], result_timeout=0.1, max_attempts=1, outcome_buffer=1) as d,
    ):
        with anyio.fail_after(5):
            await d.wait_connected()
            for i in range(4):
                await d.submit(make_request(i))
            outcomes = await collect(d, 4)
    assert [o.request_id for o in outcomes] == [f"req-{i:05d}" for i in range(4)]
    assert {o.reason for o in outcomes} == {"timeout"}


async def test_submit_nowait_batches_and_every_request_gets_its_outcome() -> None:
    endpoint = free_tcp_endpoint()
    n = 500
    async with stub_service(endpoint, echo), open_dispatcher([endpoint], max_pending=None) as d:
        with anyio.fail_after(5):
            await d.wait_connected()
        for i in range(n):
            d.submit_nowait(make_request(i))
        with pytest.raises(DuplicateRequest):
            d.submit_nowait(make_request(0))
        with anyio.fail_after(10):
            outcomes = await collect(d, n)
        assert d.stats().queue.flushes < n  # batched: fewer flushes than requests
    assert sorted(o.request_id for o in outcomes) == [f"req-{i:05d}" for i in range(n)]


async def test_wait_returns_an_outcome_that_arrived_before_it_was_called() -> None:
    """Submit several, then wait for each in turn: later ones have arrived meanwhile."""
    endpoint = free_tcp_endpoint()
    async with stub_service(endpoint, echo), open_dispatcher(endpoint) as d:  # one str
        assert d.endpoints == (endpoint,)
        with anyio.fail_after(5):
            await d.wait_connected()
            states = [await d.submit(make_request(i)) for i in range(5)]
            await d.wait_idle()  # every outcome is in: nobody was waiting for them
            outcomes = [await d.wait(s.request_id) for s in states]
        assert [o.request_id for o in outcomes] == [s.request_id for s in states]
        assert all(o.ok for o in outcomes)
        with pytest.raises(UsageError):
            await d.wait(states[0].request_id)  # claimed once already
        # wait() took them out of the stream: each outcome is delivered exactly once.
        assert d.outcomes.statistics().current_buffer_used == 0
        with pytest.raises(anyio.WouldBlock):
            d.outcomes.receive_nowait()


@pytest.mark.parametrize("endpoint", ["127.0.0.1:5580", "http://x:1", ""])
async def test_a_malformed_endpoint_raises_transport_error(endpoint: str) -> None:
    with pytest.raises(TransportError, match="cannot connect"):
        async with open_dispatcher([endpoint]):
            pass


async def test_wait_idle_waiters_neither_hang_nor_return_early() -> None:
    """Three tasks in ``wait_idle``; one makes the dispatcher busy again each time it
    returns, before the others run: none may return while a request is queued or
    pending, and none may miss the next idle moment (the idle event is only set while
    a task waits)."""
    endpoint = free_tcp_endpoint()
    async with stub_service(endpoint, echo), open_dispatcher([endpoint], flush_interval=3600) as d:
        with anyio.fail_after(5):
            await d.wait_connected()
        counter = iter(range(1, 10_000))
        early: list[int] = []

        async def waiter(resubmit: bool) -> None:
            for _ in range(20):
                await d.wait_idle()
                q = d.stats().queue
                if q.queued or q.pending:
                    early.append(q.queued + q.pending)
                if resubmit:  # busy again before the other waiters run
                    d.submit_nowait(make_request(next(counter)))

        with anyio.fail_after(10):
            await d.submit(make_request(0))
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter, True)
                tg.start_soon(waiter, False)
                tg.start_soon(waiter, False)
            await d.wait_idle()
        assert early == []
        assert d.stats().queue.queued == d.stats().queue.pending == 0
