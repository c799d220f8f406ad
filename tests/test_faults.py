"""Fault tests: real service processes killed, flapping, slow, and a flood.

Each prints and asserts the counts: submitted, outcomes delivered, duplicates, lost.
Every test is bounded in time and stops by itself.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterable

import anyio
import pytest

from backtest_queue import BacktestRequest, Outcome, QueueFull, Strategy, open_dispatcher

from service_process import echo_process, service_process
from stubs import free_tcp_endpoint

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def make_request(i: int) -> BacktestRequest:
    fast = 5 + i % 7
    strategy = Strategy(
        name=f"sma-{i}", kind="sma_cross", params={"fast": fast, "slow": fast + 10 + i % 13}
    )
    return BacktestRequest(strategy=strategy, data_id="GOOG-D1", request_id=f"req-{i:06d}")


def tally(submitted: Iterable[str], outcomes: list[Outcome], label: str) -> Counter[str]:
    """Print and return the counts; assert exactly one outcome per request."""
    ids = set(submitted)
    counts = Counter(o.request_id for o in outcomes)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    lost = len(ids - set(counts))
    print(f"{label}: submitted={len(ids)} outcomes={len(outcomes)} duplicates={duplicates} "
          f"lost={lost} reasons={dict(Counter(o.reason or 'ok' for o in outcomes))}")  # fmt: skip
    assert duplicates == 0
    assert lost == 0
    assert set(counts) == ids
    return counts


async def test_service_killed_after_a_third_and_restarted() -> None:
    endpoint = free_tcp_endpoint()
    n = 90
    outcomes: list[Outcome] = []
    with service_process(endpoint) as service:
        async with open_dispatcher([endpoint], max_pending=6, result_timeout=10.0) as d:
            for i in range(n):
                await d.submit(make_request(i))
            with anyio.fail_after(60):
                async for outcome in d.outcomes:
                    outcomes.append(outcome)
                    if len(outcomes) == n // 3:
                        service.kill(signal.SIGKILL)
                        await anyio.to_thread.run_sync(service.start)
                    if len(outcomes) == n:
                        break
    tally((f"req-{i:06d}" for i in range(n)), outcomes, "kill -9 and restart")
    assert all(o.ok for o in outcomes)


async def test_service_flaps_ten_times() -> None:
    """Stopped (SIGTERM or SIGKILL) and started again ten times during a run.

    The stub echo service (a real process and socket, no backtest work) stands in for
    the backtest service here: a real service takes seconds to start, ten of those would
    make this test take minutes; the kill tests around it use the real service.
    """
    endpoint = free_tcp_endpoint()
    n = 300
    outcomes: list[Outcome] = []
    flaps = 0
    async with open_dispatcher(
        [endpoint], max_pending=8, result_timeout=10.0, max_attempts=20
    ) as d:
        for i in range(n):
            await d.submit(make_request(i))
        with anyio.fail_after(60):
            while len(outcomes) < n:
                with echo_process(endpoint, delay=0.002) as service:
                    async for outcome in d.outcomes:
                        outcomes.append(outcome)
                        if len(outcomes) == n or (len(outcomes) % 25 == 0 and flaps < 10):
                            break
                    if len(outcomes) < n:
                        flaps += 1
                        service.send_signal(signal.SIGTERM if flaps % 2 else signal.SIGKILL)
        stats = d.stats()
    tally((f"req-{i:06d}" for i in range(n)), outcomes, f"{flaps} flaps")
    assert flaps == 10
    assert all(o.ok for o in outcomes)
    assert stats.queue.pending == 0


async def test_slow_service_times_out_with_backoff_then_the_queue_drains() -> None:
    endpoint = free_tcp_endpoint()
    n = 4
    async with open_dispatcher(
        [endpoint], max_pending=2, result_timeout=0.1, retry_backoff=2.0, max_attempts=3
    ) as d:
        # Slower than all three deadlines together (0.1 + 0.2 + 0.4 s): no answer in time.
        with echo_process(endpoint, delay=1.0):
            for i in range(n):
                await d.submit(make_request(i))
            with anyio.fail_after(30):
                failed = [await d.outcomes.receive() for _ in range(n)]
            slow_stats = d.stats()
        tally((f"req-{i:06d}" for i in range(n)), failed, "slow service")
        assert {(o.reason, o.attempts) for o in failed} == {("timeout", 3)}
        assert slow_stats.queue.pending == 0  # every slot came back
        assert slow_stats.queue.retries == 2 * n
        with echo_process(endpoint):  # a fast service on the same endpoint: it drains
            for i in range(n, 2 * n):
                await d.submit(make_request(i))
            with anyio.fail_after(30):
                fine = [await d.outcomes.receive() for _ in range(n)]
    tally((f"req-{i:06d}" for i in range(n, 2 * n)), fine, "after the slow service")
    assert all(o.ok for o in fine)


async def test_two_services_one_killed_the_other_finishes() -> None:
    a, b = free_tcp_endpoint(), free_tcp_endpoint()
    n = 60
    outcomes: list[Outcome] = []
    with service_process(a) as first, service_process(b):
        async with open_dispatcher([a, b], max_pending=6, result_timeout=10.0) as d:
            with anyio.fail_after(10):
                while len(d.stats().endpoints_up) < 2:
                    await d.wait_connected()
                    await anyio.lowlevel.checkpoint()
            for i in range(n):
                await d.submit(make_request(i))
            with anyio.fail_after(60):
                async for outcome in d.outcomes:
                    outcomes.append(outcome)
                    if len(outcomes) == 10:
                        first.kill(signal.SIGKILL)
                    if len(outcomes) == n:
                        break
    tally((f"req-{i:06d}" for i in range(n)), outcomes, "two services, one killed")
    assert all(o.ok for o in outcomes)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.timeout(240)  # 100 000 real round trips: a minute on a busy 2-core machine
@pytest.mark.parametrize("on_full", ["wait", "error"])
async def test_flood_of_submits_stays_bounded_and_loses_nothing(on_full: str) -> None:
    """100 000 submits against capacity=1000: backpressure or explicit errors, bounded
    memory, and every accepted request gets exactly one outcome."""
    endpoint = free_tcp_endpoint()
    n, capacity = 100_000, 1000
    # The test's own bookkeeping is two bytes per request, so RSS shows the dispatcher's.
    accepted = bytearray(n)
    seen = bytearray(n)
    counts = {"accepted": 0, "outcomes": 0, "failed": 0, "rejected": 0}
    max_queued = 0
    rss_warm = 0
    with echo_process(endpoint):
        async with open_dispatcher(
            [endpoint], capacity=capacity, on_full=on_full, max_pending=256,  # type: ignore[arg-type]
            outcome_buffer=capacity,
        ) as d:  # fmt: skip
            done = anyio.Event()

            async def read() -> None:
                async for outcome in d.outcomes:
                    i = int(outcome.request_id[4:])
                    seen[i] = min(255, seen[i] + 1)
                    counts["outcomes"] += 1
                    counts["failed"] += not outcome.ok
                    if done.is_set() and counts["outcomes"] == counts["accepted"]:
                        return

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read)
                    for i in range(n):
                        try:
                            await d.submit(make_request(i))
                        except QueueFull:
                            counts["rejected"] += 1
                            if counts["rejected"] % 100 == 0:
                                await d.wait_connected()  # let the flusher run a little
                            continue
                        accepted[i] = 1
                        counts["accepted"] += 1
                        max_queued = max(max_queued, d.queue.queued)
                        if i == n // 10:  # warmed up: imports, buffers and caches are in
                            rss_warm = _rss_bytes()
                    done.set()
                    if counts["outcomes"] == counts["accepted"]:
                        tg.cancel_scope.cancel()
    growth = _rss_bytes() - rss_warm
    duplicates = sum(1 for c in seen if c > 1)
    lost = sum(1 for a, c in zip(accepted, seen, strict=True) if a and not c)
    print(f"flood on_full={on_full}: submitted={n} accepted={counts['accepted']} "
          f"rejected={counts['rejected']} outcomes={counts['outcomes']} "
          f"failed={counts['failed']} duplicates={duplicates} lost={lost} "
          f"max_queued={max_queued} rss_growth_after_warmup={growth / 2**20:.1f} MiB")  # fmt: skip
    assert duplicates == 0
    assert lost == 0
    assert counts["outcomes"] == counts["accepted"]
    assert counts["failed"] == 0
    assert max_queued <= capacity
    assert counts["accepted"] + counts["rejected"] == n
    if on_full == "wait":
        assert counts["rejected"] == 0
    # Bounded: the last 90 % of the flood adds a few MiB at most (the policy remembers
    # the last 100 000 resolved ids to tell duplicates from unknown replies), not a
    # queue of 90 000 requests.
    assert growth < 32 << 20
