"""Reading replies in bursts over real ZeroMQ sockets (see ``test_burst_reading.py``).

The receivers stop waiting on the socket's FD while they leave replies unread, and wait
on it again when the caller catches up: the FD's edge-triggered signal must not be lost
in between, however the caller's reads and the replies interleave.
"""

from __future__ import annotations

import random

import anyio
import pytest

import backtest_queue.receiving as receiving_module
from backtest_queue.dispatcher import open_dispatcher
from backtest_queue.sending import _PONG_WAIT
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


async def test_a_service_back_up_is_ready_at_its_pong_not_at_the_pong_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service restarts while an outcome is unread (the receiver leaves replies in
    the socket, here for up to 1000 s). Its PONG comes 0.1 s after the connect: the
    receiver must be back on the FD by then (a service up without its PONG ends the
    deferral), or the dispatcher would call it ready only when ``_PONG_WAIT`` runs out."""
    monkeypatch.setattr(receiving_module, "_DEFER_READ_MAX", 1000.0)
    endpoint = free_tcp_endpoint()
    with anyio.fail_after(20):
        async with open_dispatcher([endpoint], flush_interval=3600) as d:
            async with stub_service(endpoint, echo):
                await d.wait_connected()
                await d.submit(request(0))
                await d.submit(request(1))
                # No event says a reply was applied (a wait would stop the deferral
                # under test): look, a few ms apart. The receiver that applied it
                # defers in the same turn (req-0's outcome is unread).
                while not d.stats().unread_outcomes:  # noqa: ASYNC110
                    await anyio.sleep(0.005)
            # Nor that the dispatcher saw the disconnect.
            while d.stats().queue.connections:  # noqa: ASYNC110
                await anyio.sleep(0.005)
            async with stub_service(endpoint, echo, pong_delay=0.1) as stub:
                await stub.up.wait()
                start = anyio.current_time()
                await d.wait_connected()
                assert anyio.current_time() - start < _PONG_WAIT / 2
            outcomes = [await d.outcomes.receive() for _ in range(2)]
    assert [o.request_id for o in outcomes] == ["req-0", "req-1"]
