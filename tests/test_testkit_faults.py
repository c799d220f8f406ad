"""The test kit's fault-injecting fake services, each fault seen through a real dispatcher.

On trio under ``MockClock(autojump_threshold=0)`` times are exact; on asyncio the story is
scaled down onto the real clock (as in ``test_wiring.py``).
"""

from __future__ import annotations

import anyio
import pytest

from backtest_queue import Outcome, UsageError, open_dispatcher
from backtest_queue.protocol import encode_message
from backtest_queue.testing import (
    Faults,
    Limits,
    MemoryNetwork,
    TraceRecorder,
    check_trace,
    uniform,
)
from backtest_queue.testing.network import _MemoryRequester
from story_time import Time, request, story_time

# The kit's marker: trio under MockClock(autojump_threshold=0), asyncio on the real clock.
pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]
EP = "svc"


@pytest.fixture
def t(anyio_backend: object) -> Time:
    return story_time(anyio_backend, asyncio_slack=0.05)


async def run(
    net: MemoryNetwork, n: int, t: Time, **settings: object
) -> tuple[list[Outcome], list[float], object]:
    """Submit n requests at once; return their outcomes (in arrival order), when each
    arrived (seconds after the submit), and the dispatcher's stats at the end."""
    options: dict[str, object] = {"result_timeout": t(5), "max_attempts": 2,
                                  "flush_interval": t(1000), **settings}  # fmt: skip
    outcomes: list[Outcome] = []
    times: list[float] = []
    async with open_dispatcher([EP], network=net, **options) as d:  # type: ignore[arg-type]
        with anyio.fail_after(t(200) + 30):
            start = anyio.current_time()
            for i in range(n):
                await d.submit(request(i))
            async for outcome in d.outcomes:
                outcomes.append(outcome)
                times.append(anyio.current_time() - start)
                if len(outcomes) == n:
                    break
        stats = d.stats()
    return outcomes, times, stats


async def test_a_fixed_latency_delays_each_reply_exactly(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, faults=Faults(latency=t(2)))
    outcomes, times, _ = await run(net, 3, t)
    assert all(o.ok for o in outcomes)
    for at in times:
        assert t(2) - 1e-9 <= at <= t(2) + t.slack


async def test_a_latency_distribution_is_seeded(t: Time) -> None:
    async def arrival_order(seed: int) -> list[str]:
        net = MemoryNetwork()
        net.bind(EP, faults=Faults(latency=uniform(0, t(3)), seed=seed))
        outcomes, _, _ = await run(net, 8, t)
        return [o.request_id for o in outcomes]

    first = await arrival_order(1)
    assert sorted(first) == [f"req-{i}" for i in range(8)]
    assert first != sorted(first)  # out of order: the latencies differ
    if t.scale == 1.0:  # in virtual time a seed replays exactly
        assert await arrival_order(1) == first


async def test_a_dropped_reply_times_out_after_every_attempt(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, faults=Faults(drop_reply=1.0))
    outcomes, times, _ = await run(net, 1, t, retry_backoff=1.0)
    assert [o.reason for o in outcomes] == ["timeout"]
    assert [r.request_id for r in net.received] == ["req-0", "req-0"]
    assert t(10) - 1e-9 <= times[0] <= t(10) + t.slack


async def test_a_dropped_request_never_reaches_the_service(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, faults=Faults(drop_request=1.0))
    outcomes, _, _ = await run(net, 1, t)
    assert [o.reason for o in outcomes] == ["timeout"]
    assert net.received == []
    assert [r.request_id for r in net.lost] == ["req-0", "req-0"]


async def test_a_duplicated_reply_gives_one_outcome(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, faults=Faults(duplicate_reply=1.0))
    outcomes, _, stats = await run(net, 3, t)
    assert sorted(o.request_id for o in outcomes) == ["req-0", "req-1", "req-2"]
    assert stats.queue.duplicate_results == 3  # type: ignore[attr-defined]


async def test_a_reordered_reply_comes_after_the_next_one(t: Time) -> None:
    net = MemoryNetwork()
    # seed 0: the draws hold back some replies and not others
    net.bind(EP, faults=Faults(reorder=0.5, latency=t(1), seed=0))
    outcomes, _, _ = await run(net, 8, t)
    order = [o.request_id for o in outcomes]
    assert sorted(order) == sorted(f"req-{i}" for i in range(8))
    assert order != sorted(order, key=lambda rid: int(rid.split("-")[1]))


@pytest.mark.parametrize(
    ("fault", "reason", "received"),
    [("error", "service_error", 1), ("unavailable", "service_error", 2),
     ("garbage", "timeout", 2), ("unknown_id", "timeout", 2)],
)  # fmt: skip
async def test_a_replaced_answer(t: Time, fault: str, reason: str, received: int) -> None:
    net = MemoryNetwork()
    net.bind(EP, faults=Faults(**{fault: 1.0}))  # type: ignore[arg-type]
    outcomes, _, stats = await run(net, 1, t)
    assert [o.reason for o in outcomes] == [reason]
    assert len(net.received) == received  # "unavailable" is retried; "error" is final
    if fault == "garbage":
        assert stats.invalid_replies == 2  # type: ignore[attr-defined]
    if fault == "unknown_id":
        assert stats.queue.unknown_results == 2  # type: ignore[attr-defined]


async def test_a_connection_drops_after_n_requests_and_comes_back(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, faults=Faults(disconnect_after=2, reconnect_after=t(1)))
    outcomes, times, _ = await run(net, 4, t, max_pending=2)
    assert sorted(o.request_id for o in outcomes) == [f"req-{i}" for i in range(4)]
    assert all(o.ok for o in outcomes)
    # two answered at once, then the connection drops; the other two go when it is back
    assert sorted(times)[1] <= t.slack
    assert t(1) - 1e-9 <= sorted(times)[2] <= t(1) + t.slack


async def test_a_refused_handshake_sends_nothing(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, faults=Faults(refuse=True))
    refused = anyio.Event()

    class Watch:
        def on_send(self, *args: object) -> None:
            pass

        def on_event(self, requester: object, endpoint: str, kind: str, now: float) -> None:
            if kind == "refused":
                refused.set()

    net.observers.append(Watch())  # type: ignore[arg-type]
    async with open_dispatcher([EP], network=net) as d:
        await d.submit(request(0))
        with anyio.fail_after(10):
            await refused.wait()
        assert not d.connected
        assert d.queue.state_of("req-0") == "queued"
    assert d.stats().handshakes_refused == 1
    assert net.received == []


async def test_a_blocked_sender_is_released_by_a_rebind_after_an_outage(t: Time) -> None:
    """Found by the kit's own state machine: a sender waiting for a dropped connection
    to come back, whose service was then unbound and bound again, waited forever."""
    net = MemoryNetwork()
    net.bind(EP, faults=Faults(disconnect_after=1, reconnect_after=t(1)))
    async with net.open_requester(EP) as requester:
        assert isinstance(requester, _MemoryRequester)
        net.connect(requester, EP)
        assert requester.send_batch([[b"", encode_message(request(0))]])[0] == 1  # then drops
        released = anyio.Event()

        async def writer() -> None:
            await requester.wait_writable()
            released.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            await anyio.sleep(t(1))  # the connection may come back now, and the reconnect
            net.unbind(EP)  # (no watch task runs here) has not happened: unbind first
            net.bind(EP)
            with anyio.fail_after(t(1) + 5):
                await released.wait()


def test_faults_refuse_bad_settings_naming_the_field() -> None:
    with pytest.raises(UsageError, match=r"Faults\.drop_reply"):
        Faults(drop_reply=1.5)
    with pytest.raises(UsageError, match=r"Faults\.latency"):
        Faults(latency=-1.0)
    with pytest.raises(UsageError, match=r"at most 1"):
        Faults(error=0.6, unavailable=0.6)
    with pytest.raises(UsageError, match=r"Faults\.disconnect_after"):
        Faults(disconnect_after=0)
    assert Faults().healthy
    assert not Faults(drop_reply=0.1).healthy


async def test_a_fake_service_advertises_the_credit_it_is_given(t: Time) -> None:
    """``net.credits`` goes out in the fake service's PONG, and the dispatcher keeps to it
    (a user's loop can be checked against services with credit, as real ones have)."""
    net = MemoryNetwork()
    net.credits[EP] = 2
    net.bind(EP, faults=Faults(latency=t(1)))
    recorder = TraceRecorder(anyio.current_time)
    net.observers.append(recorder)
    async with open_dispatcher([EP], network=net, max_pending=8, rate=None,
                               result_timeout=t(60), flush_interval=t(1000)) as d:  # fmt: skip
        recorder.register(d)
        batch = [request(i) for i in range(6)]
        recorder.asked(batch)
        for r in batch:
            await d.submit(r)
        d.maybe_flush()
        with anyio.fail_after(t(60) + 10):
            for r in batch:
                outcome = await d.wait(r.request_id)
                assert outcome.ok, outcome
                recorder.told(outcome)
        recorder.closing(d)
    limits = Limits(max_pending=8, per_service={EP: 2}, clock_slack=t.slack)
    assert check_trace(recorder.trace, limits) == []
