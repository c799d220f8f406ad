"""Prototype (issue 14, row 8): what the service's process pool costs its main process.

``python benchmarks/prototypes/pool_pipes.py ppe|pipe [N] [SLEEP_MS]``

Two ways for a trio event loop to keep 2 spawned worker processes busy with 4 jobs in
flight (each worker runs one and has one waiting, as :mod:`backtest_queue.service.pool`
does with ``prefetch=1``); each job sleeps ``SLEEP_MS`` in the worker and returns a
small dict, so only the parent's cost per job is measured (its CPU time, all threads,
``getrusage``):

* ``ppe``: ``ProcessPoolExecutor`` as the pool does it: ``submit`` from the event loop,
  a done-callback wakes the waiting task through ``run_sync_soon``. Per job the executor
  runs its manager thread twice (the submit's wake-up pipe, the result) and its call
  queue's feeder thread once.
* ``pipe``: one ``multiprocessing.Pipe`` per worker; the event loop writes the pickled
  job and waits for the result with ``trio.lowlevel.wait_readable`` on the pipe: no
  helper thread, no thread hand-off.

Measured on the 2-vCPU development machine (10 ms jobs, 400 per run, 3 runs each):
``ppe`` 0.48-0.63 ms CPU per job, ``pipe`` 0.18-0.21 ms. The service's main process
used ~1.25 ms per backtest in all (sleeping workers), of which its executor threads
~0.48 ms (``/proc/<pid>/task/*/stat``): a pool on pipes would save it about 0.3-0.4 ms
per backtest. Not done here: worker deaths and restarts, withdrawing prefetched jobs at
a graceful stop (a job already written to a worker's pipe cannot be), jobs larger than
the pipe buffer (a write would block the loop), and the least-loaded routing.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import trio

_RESULTS: list[float] = []


def job(i: int, ms: float) -> dict[str, Any]:
    time.sleep(ms / 1000)
    return {"i": i, "sharpe": 1.2, "sortino": 1.3, "trades": 12, "name": f"sma-{i}"}


def worker_main(conn: Connection, ms: float) -> None:
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(pickle.dumps(job(pickle.loads(data), ms)))


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_slots(one: Callable[[int], Awaitable[object]], n: int) -> None:
    """Run jobs ``0 .. n-1`` with 4 in flight."""
    send, receive = trio.open_memory_channel[int](n)
    for i in range(n):
        send.send_nowait(i)
    send.close()

    async def slot() -> None:
        async for i in receive.clone():
            await one(i)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(slot)


async def measure(one: Callable[[int], Awaitable[object]], n: int) -> None:
    await run_slots(one, 8)  # warm
    started = cpu()
    await run_slots(one, n)
    _RESULTS.append(cpu() - started)


async def ppe(n: int, ms: float) -> None:
    executor = ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"))
    for future in [executor.submit(job, -1, 0) for _ in range(2)]:
        future.result()
    token = trio.lowlevel.current_trio_token()

    async def one(i: int) -> object:
        future = executor.submit(job, i, ms)
        done = trio.Event()
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        await done.wait()
        return future.result()

    await measure(one, n)
    executor.shutdown()


async def pipe(n: int, ms: float) -> None:
    context = mp.get_context("spawn")
    conns: list[Connection] = []
    processes = []
    for _ in range(2):
        ours, theirs = context.Pipe()
        process = context.Process(target=worker_main, args=(theirs, ms))
        process.start()
        processes.append(process)
        conns.append(ours)
    locks = [trio.Lock() for _ in conns]  # results come back in order per worker

    async def one(i: int) -> object:
        conn, lock = conns[i % 2], locks[i % 2]
        conn.send_bytes(pickle.dumps(i))  # small: fits the pipe buffer, does not block
        async with lock:
            await trio.lowlevel.wait_readable(conn.fileno())
            return pickle.loads(conn.recv_bytes())

    await measure(one, n)
    for conn in conns:
        conn.close()
    for process in processes:
        process.join()


if __name__ == "__main__":
    kind = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    ms = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    trio.run({"ppe": ppe, "pipe": pipe}[kind], n, ms)
    print(f"{kind}: {_RESULTS[0] / n * 1000:.3f} ms CPU per job in the parent (all threads)")
