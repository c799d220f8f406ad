"""A property test of a small evolution loop with the backtest-queue test kit.

Copy this file next to your own loop and replace ``my_loop`` with it. Run it with pytest
(``pytest examples/test_my_loop.py``) or as a script (``python examples/test_my_loop.py``,
which is what ``nox -s examples`` does). No service or socket is needed: the kit's fake
services misbehave on purpose (latency, lost and duplicated replies, errors, outages,
dropped connections), hypothesis picks the schedules, and every failing one shrinks to a
short list of steps. See docs/testing.md for the walk-through.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from backtest_queue import BacktestRequest, Dispatcher
from backtest_queue.testing import LoopEnv, dispatcher_machine


async def run_cycle(d: Dispatcher, batch: list[BacktestRequest], env: LoopEnv) -> None:
    """One evolution cycle: submit the candidates, flush, and tell every outcome back."""
    for request in batch:
        await d.submit(request)
    d.maybe_flush()  # the per-cycle hook of the design
    for request in batch:
        outcome = await d.wait(request.request_id)
        env.tell(outcome)  # failures too: the optimizer must hear about every candidate


async def my_loop(env: LoopEnv) -> None:
    """The loop under test: ``env.ask()`` stands in for the optimizer's ask."""
    async with env.open_dispatcher() as d:
        while batch := env.ask():
            await run_cycle(d, batch, env)


# One test case per event loop: trio in virtual time, asyncio on the real clock.
TestMyLoopTrio = dispatcher_machine(my_loop, backend="trio", max_examples=100).TestCase
TestMyLoopAsyncio = dispatcher_machine(my_loop, backend="asyncio", max_examples=15).TestCase


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("backtest_queue").setLevel(logging.CRITICAL)


if __name__ == "__main__":  # pytest in a fresh interpreter (this one imported too much)
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", __file__, "-q", "-p",
                              "no:cacheprovider"]))  # fmt: skip
