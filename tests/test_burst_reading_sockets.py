"""Reading replies in bursts over real ZeroMQ sockets (see ``test_burst_reading.py``).

The receivers stop waiting on the socket's FD while they leave replies unread, and wait
on it again when the caller catches up: the FD's edge-triggered signal must not be lost
in between, however the caller's reads and the replies interleave.
"""

from __future__ import annotations

import random

import anyio
import pytest

from backtest_queue.dispatcher import open_dispatcher
from story_time import request

from stubs import echo, free_tcp_endpoint, stub_service

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_a_reader_in_irregular_bursts_gets_every_outcome_once(seed: int) -> None:
    """A caller keeps up to 100 requests in flight over TCP and takes outcomes in runs
    of 1-40 (a checkpoint between runs), submitting one for each outcome it took."""
    rng = random.Random(seed)
    total, window = 1500, 100
    endpoint = free_tcp_endpoint()
    got: list[str] = []
    with anyio.fail_after(60):
        async with (
            stub_service(endpoint, echo),
            open_dispatcher([endpoint], flush_interval=3600, max_pending=None) as d,
        ):
            await d.wait_connected()
            sent = 0
            for _ in range(window):
                await d.submit(request(sent))
                sent += 1
            while len(got) < total:
                for _ in range(rng.randint(1, 40)):
                    outcome = await d.outcomes.receive()
                    assert outcome.ok, outcome
                    got.append(outcome.request_id)
                    if sent < total:
                        await d.submit(request(sent))
                        sent += 1
                    if len(got) == total:
                        break
                await anyio.sleep(rng.choice([0, 0, 0.001]))
    assert sorted(got) == sorted(f"req-{i}" for i in range(total))
