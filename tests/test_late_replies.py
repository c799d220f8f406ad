"""Each reply decides only the attempt it answers (issue 10 section 4), over real processes.

Two stub services on 127.0.0.1 (``tests/procs/late_service.py``), each a real process
with a real ROUTER socket:

* A holds each request it sees first and answers it late (after 4T/3) with
  ``unavailable`` or an ``engine_error``; a re-send to A gets a result at once;
* B answers each request it sees first with a result after 2T/3; a re-send at once.

With ``result_timeout`` T, times from the submit (the requests go half to A, half to B,
or all to A if B is not up yet):

  2T/3   B's results for its requests: resolved before their deadline
  T      the requests on A miss their deadline and are re-sent, alternately to A and
         B (both have nothing pending then): the ones re-sent to A get a result at once
  4T/3   A's late replies to the first attempts: for the requests now pending on B
         these answer an attempt the request has left, and must decide nothing
  5T/3   B's results for the requests re-sent to it
  5T     the second attempts' deadlines (retry_backoff=4), never reached

Before the fix A's late ``unavailable`` retried the request away from B (on its last
attempt, ``max_attempts=2``: a failure) and a late ``engine_error`` failed it; now every
request ends in exactly one outcome, a result, and ``late_replies`` counts the rest.

NEEDS DISPATCHER WIRING: the dispatcher's receiver must pass the endpoint a reply came
from to the policy (``queue.on_result/on_error/retry(..., connection=endpoint)``).
Remove the module-level skip below once that is wired.
"""

from __future__ import annotations

import anyio
import pytest

from backtest_queue import open_dispatcher
from late_stub import exactly_one_result_each, late_service, make_request, wait_until_up

from stubs import free_tcp_endpoint

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

T = 3.0  # result_timeout, seconds: the steps above are T/3 = 1 s apart (for a busy box)


@pytest.mark.parametrize("late_reply", ["unavailable", "engine_error"])
async def test_a_late_reply_from_a_service_the_request_left_decides_nothing(
    late_reply: str,
) -> None:
    a_ep, b_ep = free_tcp_endpoint(), free_tcp_endpoint()
    n = 12
    ids = [make_request(i).request_id for i in range(n)]
    with anyio.fail_after(60):
        async with (
            late_service(a_ep, late_reply, 4 * T / 3, "result", 0.0) as a,
            late_service(b_ep, "result", 2 * T / 3, "result", 0.0) as b,
            open_dispatcher(
                [a_ep, b_ep],
                result_timeout=T,
                retry_backoff=4.0,
                max_attempts=2,
                flush_interval=3600.0,
            ) as d,  # fmt: skip
        ):
            await a.wait_line("handshake")
            await b.wait_line("handshake")
            await wait_until_up(d, {a_ep, b_ep})  # else all may go to B, and no scenario
            await d.submit_many([make_request(i) for i in range(n)])
            outcomes = [await d.outcomes.receive() for _ in range(n)]
            stats = d.stats().queue
    exactly_one_result_each(ids, outcomes)
    assert stats.late_replies >= 1, "the scenario did not happen: no reply came in late"
    assert stats.results == n
    print(f"{late_reply}: late_replies={stats.late_replies} late_results={stats.late_results} "
          f"duplicates={stats.duplicate_results} retries={stats.retries}")  # fmt: skip
