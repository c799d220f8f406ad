"""The backtest process pool: a ``ProcessPoolExecutor`` the event loop can await.

Workers are *spawned* (never forked: the service process has event-loop and ZeroMQ
threads), each initialised once with the engine and the datasets. The datasets travel
through a temporary file written once per pool (:mod:`.datasets_file`), not through
the spawn pipe: a spawn writes its arguments into a pipe and blocks until the child
reads them, and nothing that can block is done on the event loop. For the same reason
a job whose ``submit`` may spawn a worker (warm-up, and an executor that replaced a
broken one, until all its workers run) is submitted from a thread, which then waits for
the result. Once all the workers run, ``submit`` only queues the job and writes a byte
to the executor's wake-up pipe, so jobs are submitted from the event loop and the
executor's thread wakes the loop when the result is in (no thread hand-off per backtest:
on two CPUs shared with the workers, the hand-off's thread switches cost the workers
CPU time).

**Prefetch.** The pool takes ``workers * (1 + prefetch)`` backtests at once
(:attr:`WorkerPool.slots`; ``prefetch`` 1 by default): besides the one each worker runs,
``prefetch`` more per worker wait inside the ``ProcessPoolExecutor``, normally already in
its call queue, so a worker that finishes a backtest starts the next one at once instead
of idling while the result travels back through the executor's thread, the waiting
thread and the event loop and the next backtest travels the other way. A prefetched
backtest that the executor has not moved to its call queue yet can be withdrawn
(:meth:`WorkerPool.withdraw_unstarted`, at a graceful stop); one in the call queue
cannot: it runs like a running one.

A worker that dies (segfault, ``os._exit``, out of memory) breaks a
``ProcessPoolExecutor`` for good; the pool then answers the affected backtests with
:class:`EngineError` and replaces the executor, so the service lives on. Workers exit by
themselves when the service process dies (see :mod:`.worker`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any, TypeVar

import anyio
import pandas as pd
import trio.lowlevel

from ..errors import UsageError
from ..protocol import BacktestRequest, Metrics
from . import worker
from .datasets_file import write_datasets_file
from .engine import Engine, EngineError, ServiceUnavailable

__all__ = ["WorkerPool", "open_pool"]

log = logging.getLogger("backtest_queue.service")

T = TypeVar("T")

_NOT_RUN = "the service is stopping; the backtest was not run"


class _Job:
    """One submission: the thread fills in ``future`` so a cancelled caller can withdraw it."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: Future[Any] | None = None


class WorkerPool:
    """Runs backtests in worker processes; use :func:`open_pool`.

    At most :attr:`slots` backtests should be awaited at once (the service has one runner
    task per slot): ``workers`` running and ``workers * prefetch`` waiting in the
    executor, next in line. Each submits and waits in a thread of its own.

    Attributes:
        workers: worker processes.
        prefetch: backtests per worker handed to the executor beyond the one it runs.
        slots: ``workers * (1 + prefetch)``, backtests awaited at once.
    """

    def __init__(
        self, engine: Engine, datasets_path: str, *, workers: int, prefetch: int = 1
    ) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise UsageError(
                f"prefetch must be an int >= 0 (backtests per worker), got {prefetch!r}"
            )
        try:
            self._engine_pickle = pickle.dumps(engine)
        except Exception as exc:
            raise UsageError(f"the engine {engine!r} cannot be pickled: {exc}") from exc
        self._datasets_path = datasets_path
        self.workers = workers
        self.prefetch = prefetch
        self.slots = workers * (1 + prefetch)
        self._context = multiprocessing.get_context("spawn")
        self._executor = self._new_executor()
        self._generation = 0
        self._closed = False
        # Futures submitted and not done yet (a done-callback removes them).
        self._unfinished: set[Future[Any]] = set()
        # Set by withdraw_unstarted(): no more submits. The lock makes "check, submit,
        # record" in a thread atomic against "set, withdraw" on the event loop.
        self._withdrawn = False
        self._submit_lock = threading.Lock()
        #: How many times a broken executor was replaced.
        self.restarts = 0
        # The threads that submit and wait, apart from anyio's default limiter.
        self._limiter = anyio.CapacityLimiter(self.slots)
        # The event loop's thread-safe call_soon, looked up on the first _call (the pool
        # lives in one event loop): not once per backtest.
        self._call_soon: Callable[[Callable[[], object]], object] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"restarts={self.restarts}"
        return f"<WorkerPool workers={self.workers} running={self.running} {state}>"

    @property
    def running(self) -> int:
        """Backtests handed to the executor and not finished (including abandoned ones and
        prefetched ones that wait for a worker)."""
        return len(self._unfinished)

    def withdraw_unstarted(self) -> int:
        """Withdraw the backtests the executor has not moved to its call queue; submit no more.

        For a graceful stop: each withdrawn backtest's :meth:`run` raises
        :class:`ServiceUnavailable` (not run), as does every later :meth:`run`. A
        prefetched backtest already in the call queue cannot be withdrawn (the executor
        has marked its future running); it runs to its end like a running one.

        Returns:
            How many backtests were withdrawn.
        """
        with self._submit_lock:
            self._withdrawn = True
            return sum(future.cancel() for future in list(self._unfinished))

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=worker.initialize,
            initargs=(self._engine_pickle, self._datasets_path),
        )

    def _submit_and_wait(
        self, executor: ProcessPoolExecutor, job: _Job, fn: Callable[..., T], *args: Any
    ) -> T:
        """In a thread: submit (which may spawn a worker) and wait for the result.

        Raises:
            ServiceUnavailable: withdrawn (:meth:`withdraw_unstarted`) before it started.
        """
        with self._submit_lock:
            if self._withdrawn:
                raise ServiceUnavailable(_NOT_RUN)
            future = executor.submit(fn, *args)
            job.future = future
            self._unfinished.add(future)
        future.add_done_callback(self._unfinished.discard)
        try:
            return future.result()
        except CancelledError:
            raise ServiceUnavailable(_NOT_RUN) from None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a worker; a cancelled call withdraws it if not started.

        Submitted from the event loop when every worker of the executor runs (``submit``
        cannot spawn one then), else from a thread.
        """
        executor = self._executor
        if not _all_workers_started(executor, self.workers):
            return await self._call_in_thread(executor, fn, *args)
        call_soon = self._call_soon
        if call_soon is None:
            call_soon = self._call_soon = _loop_caller()
        with self._submit_lock:
            if self._withdrawn:
                raise ServiceUnavailable(_NOT_RUN)
            future = executor.submit(fn, *args)
            self._unfinished.add(future)
        done = anyio.Event()
        unfinished = self._unfinished

        def wake(_: Future[Any]) -> None:
            # In the executor's thread (or here, if already done): never blocks. One
            # callback does both jobs (one call less per backtest in that thread).
            unfinished.discard(future)
            with suppress(RuntimeError):  # the event loop has ended: nobody waits
                call_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()  # no effect once it runs: the result is discarded
            raise
        try:
            return future.result()
        except CancelledError:
            raise ServiceUnavailable(_NOT_RUN) from None

    async def _call_in_thread(
        self, executor: ProcessPoolExecutor, fn: Callable[..., T], *args: Any
    ) -> T:
        """:meth:`_call` through a thread that submits (which may spawn a worker) and waits."""
        job = _Job()
        try:
            return await anyio.to_thread.run_sync(
                self._submit_and_wait,
                executor,
                job,
                fn,
                *args,
                abandon_on_cancel=True,
                limiter=self._limiter,
            )
        except BaseException:
            if job.future is not None:
                job.future.cancel()  # no effect once it runs: the result is discarded
            raise

    async def warm_up(self) -> None:
        """Start the workers and wait until they are initialised.

        Raises:
            EngineError: a worker failed to start (its initializer or ``engine.prepare``
                raised, or it died).
        """
        pids: list[int] = []

        async def ready() -> None:
            pids.append(await self._call(worker.ready))

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self.workers):
                    tg.start_soon(ready)
        except* BrokenProcessPool as group:
            raise EngineError(f"backtest workers failed to start: {group.exceptions[0]}") from None
        log.debug("backtest workers ready: pids %s", sorted(set(pids)))

    async def run(self, request: BacktestRequest, first: int, stop: int) -> Metrics:
        """Run one backtest on bars ``[first, stop)`` of its dataset in a worker.

        Cancel-safe: a cancelled call withdraws the backtest when the executor has not
        moved it to its call queue; otherwise it runs to its end in a worker and its result
        is discarded.

        Raises:
            ServiceUnavailable: the pool is closed, or the backtest was withdrawn
                (:meth:`withdraw_unstarted`): the service is stopping.
            EngineError: the engine failed, or a worker died: every backtest the broken
                executor held fails so, prefetched ones that had not started included
                (the pool is restarted).
        """
        if self._closed:
            raise ServiceUnavailable(_NOT_RUN)
        generation = self._generation
        try:
            return await self._call(worker.run_backtest, request, first, stop)
        except BrokenProcessPool:
            if self._closed:
                raise ServiceUnavailable(
                    "the service stopped before the backtest finished; send it again"
                ) from None
            self._restart(generation)
            raise EngineError(
                "the worker process running this backtest died (crash, signal or out of "
                "memory); the pool has been restarted"
            ) from None
        except EngineError:
            raise
        except RuntimeError as exc:  # submit() after shutdown: stopping
            raise ServiceUnavailable(f"the backtest was not run: {exc}") from None
        except Exception as exc:  # e.g. a result that does not unpickle
            raise EngineError(f"{type(exc).__name__}: {exc}") from None

    def _restart(self, generation: int) -> None:
        if generation != self._generation or self._closed:
            return  # another runner already replaced this executor
        log.warning("a backtest worker process died; restarting the worker pool")
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()
        self._generation += 1
        self.restarts += 1

    async def aclose(self) -> None:
        """Stop the workers: cancel queued work, terminate running backtests, reap them."""
        if self._closed:
            return
        self._closed = True
        executor = self._executor
        if self._unfinished:
            log.warning("terminating %d running backtest(s)", len(self._unfinished))
            _terminate_workers(executor)  # before shutdown(), which forgets the processes
        # One shutdown that waits (a first one without waiting would forget the manager
        # thread, and the workers would be left unreaped).
        shutdown = partial(executor.shutdown, wait=True, cancel_futures=True)
        with anyio.move_on_after(10):
            await anyio.to_thread.run_sync(shutdown, abandon_on_cancel=True)


def _all_workers_started(executor: ProcessPoolExecutor, workers: int) -> bool:
    """Whether all ``workers`` worker processes of ``executor`` are started, so ``submit`` spawns
    none (and does not block). ``False`` when that cannot be told (the private
    ``_processes`` of CPython's executor is missing): then every job goes through a thread.
    """
    processes = getattr(executor, "_processes", None)
    return processes is not None and len(processes) >= workers


def _loop_caller() -> Callable[[Callable[[], object]], object]:
    """The running event loop's way to run a callback on it from any thread, without
    waiting: trio's ``run_sync_soon``, asyncio's ``call_soon_threadsafe``. Both raise a
    ``RuntimeError`` once the loop has ended."""
    if trio.lowlevel.in_trio_run():
        return trio.lowlevel.current_trio_token().run_sync_soon
    return asyncio.get_running_loop().call_soon_threadsafe


def _terminate_workers(executor: ProcessPoolExecutor) -> None:
    """Terminate the executor's worker processes (``terminate_workers`` on Python 3.14+).

    Call it before ``shutdown()``: that drops the executor's list of processes.
    """
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
    engine: Engine,
    bars: Mapping[str, pd.DataFrame],
    *,
    workers: int,
    warm_up: bool = True,
    prefetch: int = 1,
) -> AsyncIterator[WorkerPool]:
    """Open a :class:`WorkerPool` for the block; its workers are stopped on exit.

    Args:
        engine: the engine (pickled to each worker).
        bars: data_id -> OHLCV frame, handed to each worker once (through a temporary
            file that is removed on exit, or by the next service if this one is killed:
            see :mod:`.datasets_file`).
        workers: number of worker processes (>= 1).
        warm_up: start every worker and wait for its initialisation before returning.
        prefetch: backtests per worker handed to the executor beyond the one it runs
            (>= 0; see the module doc).

    Raises:
        UsageError: the engine cannot be pickled, or ``prefetch`` is not an int >= 0.
        EngineError: ``warm_up`` and a worker failed to start.
    """
    datasets_file = await anyio.to_thread.run_sync(write_datasets_file, bars)
    try:
        pool = WorkerPool(engine, datasets_file.path, workers=workers, prefetch=prefetch)
        try:
            if warm_up:
                await pool.warm_up()
            yield pool
        finally:
            with anyio.CancelScope(shield=True):
                await pool.aclose()
    finally:
        datasets_file.close()
