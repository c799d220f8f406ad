"""The backtest process pool: a ``ProcessPoolExecutor`` the event loop can await.

Workers are *spawned* (never forked: the service process has event-loop and ZeroMQ
threads), each initialised once with the engine and the datasets. A worker that dies
(segfault, ``os._exit``, out of memory) breaks a ``ProcessPoolExecutor`` for good; the
pool then answers the affected backtests with :class:`EngineError` and replaces the
executor, so the service lives on.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pandas as pd

from ..errors import UsageError
from ..protocol import BacktestRequest, Metrics
from . import worker
from .engine import Engine, EngineError

__all__ = ["WorkerPool", "open_pool"]

log = logging.getLogger("backtest_queue.service")


class WorkerPool:
    """Runs backtests in worker processes; use :func:`open_pool`.

    At most ``workers`` backtests should be awaited at once (the service has one runner
    task per worker); each waits in a thread of its own.
    """

    def __init__(self, engine: Engine, bars: Mapping[str, pd.DataFrame], *, workers: int) -> None:
        try:
            self._engine_pickle = pickle.dumps(engine)
        except Exception as exc:
            raise UsageError(f"the engine {engine!r} cannot be pickled: {exc}") from exc
        self._bars = dict(bars)
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._executor = self._new_executor()
        self._generation = 0
        self._closed = False
        # Futures submitted and not done yet (a done-callback removes them).
        self._unfinished: set[Future[Metrics]] = set()
        #: How many times a broken executor was replaced.
        self.restarts = 0
        # One waiting thread per running backtest, apart from anyio's default limiter.
        self._limiter = anyio.CapacityLimiter(workers)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"restarts={self.restarts}"
        return f"<WorkerPool workers={self.workers} {state}>"

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=worker.initialize,
            initargs=(self._engine_pickle, self._bars),
        )

    async def warm_up(self) -> None:
        """Start the workers and wait until they are initialised.

        Raises:
            EngineError: a worker failed to start (its initializer or ``engine.prepare``
                raised, or it died).
        """
        futures = [self._executor.submit(worker.ready) for _ in range(self.workers)]
        try:
            pids = [
                await anyio.to_thread.run_sync(f.result, abandon_on_cancel=True) for f in futures
            ]
        except BrokenProcessPool as exc:
            raise EngineError(f"backtest workers failed to start: {exc}") from exc
        log.debug("backtest workers ready: pids %s", sorted(set(pids)))

    async def run(self, request: BacktestRequest, first: int, stop: int) -> Metrics:
        """Run one backtest on bars ``[first, stop)`` of its dataset in a worker.

        Cancel-safe: a cancelled call withdraws the backtest when it has not started; one
        that has started runs to its end in the worker and its result is discarded.

        Raises:
            EngineError: the engine failed, the worker died (the pool is restarted), or
                the pool is closed.
        """
        if self._closed:
            raise EngineError("the service is stopping; the backtest was not run")
        generation = self._generation
        try:
            future = self._executor.submit(worker.run_backtest, request, first, stop)
        except BrokenProcessPool:
            self._restart(generation)
            raise EngineError(
                "the backtest worker pool was broken and has been restarted; resend the request"
            ) from None
        self._unfinished.add(future)
        future.add_done_callback(self._unfinished.discard)
        try:
            result: Metrics = await anyio.to_thread.run_sync(
                future.result, abandon_on_cancel=True, limiter=self._limiter
            )
        except BrokenProcessPool:
            if self._closed:
                raise EngineError("the service stopped before the backtest finished") from None
            self._restart(generation)
            raise EngineError(
                "the worker process running this backtest died (crash, signal or out of "
                "memory); the pool has been restarted"
            ) from None
        except EngineError:
            raise
        except Exception as exc:  # e.g. a result that does not unpickle
            raise EngineError(f"{type(exc).__name__}: {exc}") from None
        except BaseException:  # cancelled: withdraw the job if it has not started
            future.cancel()
            raise
        return result

    def _restart(self, generation: int) -> None:
        if generation != self._generation or self._closed:
            return  # another runner already replaced this executor
        log.warning("a backtest worker process died; restarting the worker pool")
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()
        self._generation += 1
        self.restarts += 1

    @property
    def running(self) -> int:
        """Backtests handed to the workers and not finished (including abandoned ones)."""
        return len(self._unfinished)

    async def aclose(self) -> None:
        """Stop the workers: cancel queued work, terminate running backtests, reap them."""
        if self._closed:
            return
        self._closed = True
        executor = self._executor
        executor.shutdown(wait=False, cancel_futures=True)
        if self._unfinished:
            log.warning("terminating %d running backtest(s)", len(self._unfinished))
            _terminate_workers(executor)
        with anyio.move_on_after(10):
            await anyio.to_thread.run_sync(executor.shutdown, True, abandon_on_cancel=True)


def _terminate_workers(executor: ProcessPoolExecutor) -> None:
    """Terminate the executor's worker processes (``terminate_workers`` on Python 3.14+)."""
    terminate = getattr(executor, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    processes: dict[int, Any] = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        if process.is_alive():
            process.terminate()


@asynccontextmanager
async def open_pool(
    engine: Engine, bars: Mapping[str, pd.DataFrame], *, workers: int, warm_up: bool = True
) -> AsyncIterator[WorkerPool]:
    """Open a :class:`WorkerPool` for the block; its workers are stopped on exit.

    Args:
        engine: the engine (pickled to each worker).
        bars: data_id -> OHLCV frame, handed to each worker once.
        workers: number of worker processes (>= 1).
        warm_up: start every worker and wait for its initialisation before returning.

    Raises:
        UsageError: the engine cannot be pickled.
        EngineError: ``warm_up`` and a worker failed to start.
    """
    pool = WorkerPool(engine, bars, workers=workers)
    try:
        if warm_up:
            await pool.warm_up()
        yield pool
    finally:
        with anyio.CancelScope(shield=True):
            await pool.aclose()
