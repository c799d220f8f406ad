"""Task wiring of the dispatcher on an in-memory network, in virtual time.

On trio the tests run under ``MockClock(autojump_threshold=0)``: time jumps whenever every
task is blocked, so the rate limit, deadlines and retry backoff are checked to the exact
virtual instant in milliseconds of real time. On asyncio (no mock clock) the same tests
run on the real clock with the times scaled down and a small tolerance. Real ZeroMQ
sockets are tested elsewhere (``test_dispatcher.py``); never autojump with real sockets.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import pytest
from trio.testing import MockClock

from backtest_queue import BacktestRequest, Strategy, open_dispatcher
from backtest_queue.testing import MemoryNetwork, echo_result

pytestmark = pytest.mark.anyio
EP = "tcp://fake:5580"


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> object:
    if request.param == "trio":
        return ("trio", {"clock": MockClock(autojump_threshold=0)})
    return "asyncio"


@dataclass(frozen=True)
class Time:
    """Seconds of the test's story, scaled to the clock in use, and how exact it is."""

    scale: float
    slack: float

    def __call__(self, seconds: float) -> float:
        return seconds * self.scale


@pytest.fixture
def t(anyio_backend: object) -> Time:
    if anyio_backend == "asyncio":  # the real clock: shorter story, some tolerance
        return Time(scale=0.05, slack=0.02)
    return Time(scale=1.0, slack=1e-9)


def request(i: int) -> BacktestRequest:
    strategy = Strategy(name=f"s{i}", kind="sma_cross", params={"fast": 5, "slow": 20 + i})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=f"req-{i}")


def assert_times(got: list[float], expected: list[float], t: Time) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert e - 1e-9 <= g <= e + t.slack, (got, expected)


async def test_sends_follow_the_token_bucket_to_the_instant(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, echo_result)
    async with open_dispatcher([EP], network=net, rate=2 / t.scale, burst=1,
                               flush_interval=t(1000)) as d:  # fmt: skip
        await d.wait_connected()
        start = anyio.current_time()
        states = [await d.submit(request(i)) for i in range(5)]
        assert [s.state for s in states] == ["sent", *["queued"] * 4]
        assert {s.reason for s in states[1:]} == {"rate"}
        outcomes = [await d.outcomes.receive() for _ in range(5)]
    assert all(o.ok for o in outcomes)
    assert_times([r.at - start for r in net.received], [t(x) for x in (0, 0.5, 1, 1.5, 2)], t)


async def test_retries_back_off_then_fail_at_the_last_deadline(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, lambda r: [])  # a service that never answers
    async with open_dispatcher([EP], network=net, result_timeout=t(1), retry_backoff=2.0,
                               max_attempts=3, flush_interval=t(1000)) as d:  # fmt: skip
        await d.wait_connected()
        start = anyio.current_time()
        state = await d.submit(request(0))
        outcome = await d.wait(state.request_id)
        failed_at = anyio.current_time() - start
        assert d.stats().queue.pending == 0
    assert (outcome.reason, outcome.attempts) == ("timeout", 3)
    # Sent at 0, again at 1 (first deadline), again at 1 + 2; failed at 1 + 2 + 4.
    assert_times([r.at - start for r in net.received], [t(0), t(1), t(3)], t)
    assert_times([failed_at], [t(7)], t)


async def test_the_connect_event_flushes_at_that_instant(t: Time) -> None:
    net = MemoryNetwork()
    async with open_dispatcher([EP], network=net, flush_interval=t(3600)) as d:
        for i in range(3):
            assert (await d.submit(request(i))).reason == "not_connected"
        await anyio.sleep(t(5))
        bound_at = anyio.current_time()
        net.bind(EP, echo_result)
        outcomes = [await d.outcomes.receive() for _ in range(3)]
    assert [o.request_id for o in outcomes] == ["req-0", "req-1", "req-2"]
    assert_times([r.at - bound_at for r in net.received], [0.0, 0.0, 0.0], t)


async def test_a_disconnect_requeues_at_once_not_at_the_deadline(t: Time) -> None:
    net = MemoryNetwork()
    net.bind(EP, lambda r: [])
    async with open_dispatcher([EP], network=net, result_timeout=t(100),
                               flush_interval=t(3600)) as d:  # fmt: skip
        await d.wait_connected()
        await d.submit(request(0))
        await anyio.sleep(t(2))
        net.unbind(EP)
        await anyio.sleep(t(3))
        back_at = anyio.current_time()
        net.bind(EP, echo_result)
        outcome = await d.outcomes.receive()
    assert outcome.ok
    assert outcome.attempts == 2
    assert_times([net.received[-1].at - back_at], [0.0], t)  # re-sent on reconnect
