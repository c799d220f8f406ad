"""Two services restarted one after the other while requests are in flight (issue 10).

Real processes on 127.0.0.1 (``tests/procs/late_service.py``): each holds a request for
a moment and answers it with a result. A stopping one (SIGTERM) answers what it still
holds with ``unavailable`` and exits, as the real service does; its requester sees those
replies and then a disconnect, in either order, and re-sends elsewhere. Whatever the
order, each request ends in exactly one outcome, a result.
"""

from __future__ import annotations

import anyio
import pytest

from backtest_queue import Outcome, open_dispatcher
from late_stub import LateService, exactly_one_result_each, make_request, wait_until_up

from stubs import free_tcp_endpoint

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

HOLD = 0.3  # seconds each stub holds a request before its result


async def test_rolling_restarts_of_two_services_give_one_result_per_request() -> None:
    a_ep, b_ep = free_tcp_endpoint(), free_tcp_endpoint()
    a = LateService(a_ep, "result", HOLD, "result", HOLD)
    b = LateService(b_ep, "result", HOLD, "result", HOLD)
    rounds, per_round = 3, 16
    n = rounds * per_round
    ids = [make_request(i, "roll").request_id for i in range(n)]
    outcomes: list[Outcome] = []
    try:
        with anyio.fail_after(120):
            await a.start()
            await b.start()
            async with (
                open_dispatcher(
                    [a_ep, b_ep], result_timeout=30.0, max_attempts=8, flush_interval=0.2
                ) as d,  # fmt: skip
                anyio.create_task_group() as tg,
            ):

                async def collect() -> None:
                    for _ in range(n):
                        outcomes.append(await d.outcomes.receive())

                tg.start_soon(collect)
                for r in range(rounds):
                    await wait_until_up(d, {a_ep, b_ep})
                    batch = range(r * per_round, (r + 1) * per_round)
                    await d.submit_many([make_request(i, "roll") for i in batch])
                    service = a if r % 2 == 0 else b
                    await service.stop()  # while it holds some of them
                    await service.start()
                await d.wait_idle()
                stats = d.stats()
    finally:
        await a.stop()
        await b.stop()
    exactly_one_result_each(ids, outcomes)
    assert (a.starts, b.starts) == (3, 2)
    q = stats.queue
    assert q.results == n
    assert q.retries >= 1, "no request was in flight on a restarted service"
    print(f"rolling restarts: outcomes={len(outcomes)} retries={q.retries} "
          f"late_replies={q.late_replies} late_results={q.late_results} "
          f"duplicates={q.duplicate_results}")  # fmt: skip
