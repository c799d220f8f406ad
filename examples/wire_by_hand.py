"""Wire an evolution loop to the dispatcher by hand, with the public API only.

Three kinds of sibling tasks, each in a task group owned by an ``async with``:

* the dispatcher's own tasks (connector, flusher, receivers), opened by
  ``open_dispatcher``;
* a **collector** that moves outcomes from ``dispatcher.outcomes`` into a memory channel;
* the **evolution cycle**: submit a generation, call ``dispatcher.maybe_flush()`` once per
  cycle, take the outcomes that arrived, and breed the next generation from the best.

The "optimizer" here is a ten-line genetic algorithm over ``sma_cross`` periods, so the
wiring is what you read; ``backtest_queue.evolution.run_evolution`` is the packaged
version (Optuna's NSGA-II, clones, a generation barrier, progress).

Run it as ``python examples/wire_by_hand.py``: it starts a backtest service as a child
process on a free loopback port (and stops it at the end), or pass ``--connect ENDPOINT``
to use one you run (``backtest-queue service --bind ENDPOINT``). About 10 seconds.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from backtest_queue import BacktestRequest, Outcome, Strategy, open_dispatcher
from backtest_queue.dispatcher import Dispatcher
from backtest_queue.evolution.service_process import free_tcp_endpoint, open_service_process

Genome = tuple[int, int]  # (fast, slow) periods of an SMA crossover, in bars


def request_for(genome: Genome) -> BacktestRequest:
    fast, slow = genome
    strategy = Strategy(
        name=f"sma-{fast}-{slow}", kind="sma_cross", params={"fast": fast, "slow": slow}
    )
    # The first 3500 hourly bars: the same in-sample range as the demo.
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", end="2017-11-09T03:00:00")


def breed(parents: list[Genome], size: int, rng: random.Random) -> list[Genome]:
    """Mutate the parents' periods by up to +-30 %; keep 1 <= fast < slow."""
    children: list[Genome] = []
    while len(children) < size:
        fast, slow = rng.choice(parents)
        fast = max(1, round(fast * rng.uniform(0.7, 1.3)))
        slow = max(fast + 2, round(slow * rng.uniform(0.7, 1.3)))
        children.append((fast, slow))
    return children


async def collector(dispatcher: Dispatcher, inbox: MemoryObjectSendStream[Outcome]) -> None:
    """Sibling task 2: outcomes from the dispatcher into the cycle's inbox, as they arrive."""
    with inbox:
        async for outcome in dispatcher.outcomes:
            await inbox.send(outcome)


async def evolution_cycle(
    dispatcher: Dispatcher,
    inbox: MemoryObjectReceiveStream[Outcome],
    done: anyio.CancelScope,
    *,
    generations: int,
    population: int,
    seed: int,
) -> None:
    """Sibling task 3: the loop. Cancels ``done`` (the task group) when finished."""
    rng = random.Random(seed)
    genomes = [(f, f + rng.randint(2, 150)) for f in rng.choices(range(2, 50), k=population)]
    best: list[tuple[float, Genome]] = []
    with inbox:
        await cycles(dispatcher, inbox, genomes, best, generations, population, rng)
    done.cancel()


async def cycles(
    dispatcher: Dispatcher,
    inbox: MemoryObjectReceiveStream[Outcome],
    genomes: list[Genome],
    best: list[tuple[float, Genome]],
    generations: int,
    population: int,
    rng: random.Random,
) -> None:
    for generation in range(1, generations + 1):
        waiting: dict[str, Genome] = {}
        for genome in genomes:
            request = request_for(genome)
            state = await dispatcher.submit(request)
            waiting[state.request_id] = genome
        scored: list[tuple[float, Genome]] = []
        while waiting:  # one cycle per turn
            dispatcher.maybe_flush()  # the per-cycle hook: a no-op unless the interval passed
            with anyio.move_on_after(0.25):  # take what arrives, for at most 0.25 s
                outcome = await inbox.receive()
                genome = waiting.pop(outcome.request_id)
                if outcome.result is not None and outcome.result.sharpe is not None:
                    scored.append((outcome.result.sharpe, genome))
                elif not outcome.ok:
                    print(f"  {genome} failed: {outcome.reason} {outcome.detail}")
        best = sorted(best + scored, reverse=True)[:3]
        line = ", ".join(f"{g[0]}/{g[1]} Sharpe {s:.2f}" for s, g in best)
        stats = dispatcher.stats().queue
        print(f"generation {generation}: best so far {line} (sent {stats.sent} requests)")
        genomes = breed([g for _, g in best] or genomes, population, rng)


async def main(connect: str | None, generations: int, population: int, seed: int) -> None:
    endpoint = connect or free_tcp_endpoint()
    async with AsyncExitStack() as stack:
        if connect is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            await stack.enter_async_context(
                open_service_process(endpoint, workers=1, log_path=log_dir / "service.log")
            )
            print(f"started a backtest service on {endpoint}")
        async with (
            open_dispatcher([endpoint], flush_interval=0.5, max_pending=8) as dispatcher,
            anyio.create_task_group() as tg,  # sibling of the dispatcher's own task group
        ):
            send, receive = anyio.create_memory_object_stream[Outcome](math.inf)
            tg.start_soon(collector, dispatcher, send)
            cycle = partial(evolution_cycle, generations=generations, population=population,
                            seed=seed)  # fmt: skip
            tg.start_soon(cycle, dispatcher, receive, tg.cancel_scope)
            # The task group ends when the cycle cancels it; the dispatcher then closes.


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", metavar="ENDPOINT", help="use a service you run")
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    a = parser.parse_args()
    anyio.run(main, a.connect, a.generations, a.population, a.seed, backend=a.backend)
