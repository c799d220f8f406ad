"""The Dask executor: a service that runs its backtests on an existing Dask cluster.

``open_service(executor=DaskExecutor("tcp://scheduler:8786"))``, or from the shell
``backtest-queue service --executor dask --scheduler tcp://scheduler:8786``. Needs the
``dask`` extra (``pip install 'backtest-queue[dask]'``) here and
``backtest-queue[service]`` plus ``distributed`` on every Dask worker.

How it works:

* **Datasets once per worker.** The engine and the OHLCV datasets travel in a Dask
  ``WorkerPlugin`` (:class:`~.dask_worker.ServicePlugin`) that the scheduler attaches to
  every worker, also to workers that join or restart later; tasks carry only the
  request. The plugin is removed when the service stops.
* **Threads, not the service's event loop.** distributed's client runs on its own
  asyncio/tornado loop thread (the synchronous ``Client``); each backtest is submitted
  and awaited in a worker thread of anyio's (like the local pool), so the service runs
  the same on trio and on asyncio and its loop never blocks on Dask.
* **Failures.** A Dask worker that dies mid-backtest is the scheduler's business: it
  runs the task again on another worker, and the request gets its result. A backtest
  that killed ``distributed.scheduler.allowed-failures`` + 1 workers
  (``KilledWorker``) is answered with ``engine_error``, like a backtest whose local
  pool worker died. A backtest that the cluster cancelled (scheduler connection lost,
  ``client.restart()``), or that could not be submitted, is answered with
  ``unavailable``: the requester sends it again. When the service stops or abandons a
  backtest, its Dask future is cancelled.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import pickle
import uuid
from asyncio import CancelledError as AsyncioCancelledError
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Final

import anyio
import pandas as pd

from ..errors import UsageError
from ..protocol import BacktestRequest, Metrics
from .engine import Engine, EngineError, ServiceUnavailable
from .executor import BacktestExecutor

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = ["DASK_MISSING", "DaskExecutor", "DaskPool"]

log = logging.getLogger("backtest_queue.service")

#: The message of the error raised when distributed is not installed.
DASK_MISSING: Final = (
    "the Dask executor needs dask.distributed, which is not installed: "
    "pip install 'backtest-queue[dask]'"
)
#: Seconds given to cancelling futures, removing the plugin and closing the client.
_CLOSE_TIMEOUT: Final = 5.0


@dataclass(frozen=True, slots=True)
class DaskExecutor:
    """Run a service's backtests on the Dask cluster whose scheduler is at ``scheduler``.

    Args:
        scheduler: the scheduler's address, e.g. ``"tcp://10.0.0.5:8786"``.
        connect_timeout: seconds to reach the scheduler, and (when ``workers`` is not
            given, or ``warm_up``) for at least one Dask worker to be there.

    Raises:
        UsageError: distributed is not installed (:data:`DASK_MISSING`), or a bad
            setting.
    """

    scheduler: str
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if find_spec("distributed") is None:
            raise UsageError(DASK_MISSING)
        if not self.scheduler or "://" not in self.scheduler:
            raise UsageError(
                f"scheduler must be a Dask scheduler address like 'tcp://HOST:8786', "
                f"got {self.scheduler!r}"
            )
        if not (self.connect_timeout > 0 and math.isfinite(self.connect_timeout)):
            raise UsageError(
                f"connect_timeout must be a positive number of seconds, got {self.connect_timeout}"
            )

    def open(
        self,
        engine: Engine,
        bars: Mapping[str, pd.DataFrame],
        *,
        workers: int | None,
        warm_up: bool,
    ) -> AbstractAsyncContextManager[BacktestExecutor]:
        """Connect, ship the engine and datasets to the workers; see :meth:`.Executor.open`.

        ``workers=None`` runs as many backtests at once as the cluster has worker
        threads when the service starts (it waits up to ``connect_timeout`` for one).

        Raises:
            UsageError: the engine or the datasets cannot be pickled.
            EngineError: the scheduler cannot be reached within ``connect_timeout``, no
                worker came, or the workers could not set up the engine and datasets.
        """
        return open_dask_pool(self, engine, bars, workers=workers, warm_up=warm_up)


class _Job:
    """One submission: the thread fills in ``future`` so a cancelled caller can cancel it."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: Future[Metrics] | None = None


class DaskPool:
    """Runs backtests on a Dask cluster; get one from :meth:`DaskExecutor.open`.

    Attributes:
        scheduler: the scheduler's address.
        cancelled_by_cluster: backtests the cluster cancelled (answered ``unavailable``).
    """

    def __init__(self, client: Client, plugin_name: str, *, scheduler: str, workers: int) -> None:
        self.scheduler = scheduler
        self._client = client
        self._plugin_name = plugin_name
        self._workers = workers
        self._closed = False
        self._unfinished: set[Future[Metrics]] = set()
        self._limiter = anyio.CapacityLimiter(workers)
        self.cancelled_by_cluster = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"client={self._client.status}"
        return f"<DaskPool {self.scheduler} workers={self._workers} running={self.running} {state}>"

    @property
    def workers(self) -> int:
        """Backtests run at once (the service's runner tasks)."""
        return self._workers

    @property
    def slots(self) -> int:
        """Backtests handed to the cluster at once: ``workers`` (no prefetch here: the
        scheduler already queues tasks next to its workers)."""
        return self._workers

    @property
    def restarts(self) -> int:
        """Always 0: the Dask scheduler replaces lost workers' work itself."""
        return 0

    def withdraw_unstarted(self) -> int:
        """Withdraw nothing (returns 0): every backtest handed over may be running, as
        :attr:`slots` is ``workers``; the service hands over no more once stopping."""
        return 0

    @property
    def running(self) -> int:
        """Backtests submitted to the cluster and not finished."""
        return len(self._unfinished)

    async def run(self, request: BacktestRequest, first: int, stop: int) -> Metrics:
        """Run one backtest on the cluster; see :meth:`.BacktestExecutor.run`.

        Raises:
            ServiceUnavailable: the service is stopping, the client is not connected to
                the scheduler, or the cluster cancelled the backtest.
            EngineError: the engine failed, or the backtest killed too many workers.
        """
        if self._closed:
            raise ServiceUnavailable("the service is stopping; the backtest was not run")
        job = _Job()
        try:
            outcome = await anyio.to_thread.run_sync(
                self._submit_and_wait,
                job,
                request,
                first,
                stop,
                abandon_on_cancel=True,
                limiter=self._limiter,
            )
        except BaseException:
            if job.future is not None:
                self._cancel_soon(job.future, "the service abandoned the backtest")
            raise
        if isinstance(outcome, Metrics):
            return outcome
        raise outcome

    def _submit_and_wait(
        self, job: _Job, request: BacktestRequest, first: int, stop: int
    ) -> Metrics | EngineError:
        """In a thread: submit and wait; failures are *returned*, translated.

        (Returned, not raised: distributed's ``CancelledError`` is asyncio's, which must
        not cross into an asyncio event loop as if the service's task were cancelled.)
        """
        from distributed.scheduler import KilledWorker

        from .dask_worker import run_backtest

        status = self._client.status
        if status != "running":
            return ServiceUnavailable(
                f"the Dask client is not connected to the scheduler at {self.scheduler} "
                f"(status {status}); the backtest was not run; send it again"
            )
        try:
            future: Future[Metrics] = self._client.submit(
                run_backtest,
                self._plugin_name,
                request,
                first,
                stop,
                key=f"backtest-queue-{uuid.uuid4().hex}",
                pure=False,
            )
        except Exception as exc:
            return ServiceUnavailable(
                f"the backtest could not be submitted to the Dask cluster "
                f"({type(exc).__name__}: {exc}); send it again"
            )
        job.future = future
        self._unfinished.add(future)
        try:
            metrics: object = future.result()
        except EngineError as exc:  # ServiceUnavailable included
            return exc
        except KilledWorker as exc:
            return EngineError(
                f"the Dask workers running this backtest died (crash, signal or out of "
                f"memory) too often; the scheduler gave up: {exc}"
            )
        except (AsyncioCancelledError, concurrent.futures.CancelledError) as exc:
            if self._closed:
                why = "the service is stopping"
            else:
                self.cancelled_by_cluster += 1
                why = f"by the Dask cluster: {exc}"
            return ServiceUnavailable(f"the backtest was cancelled ({why}); send it again")
        except Exception as exc:
            if self._closed:
                return ServiceUnavailable("the service stopped before the backtest finished")
            return EngineError(f"{type(exc).__name__}: {exc}")
        finally:
            self._unfinished.discard(future)
        if not isinstance(metrics, Metrics):
            return EngineError(f"the Dask task returned {type(metrics).__name__}, not Metrics")
        return metrics

    def _cancel_soon(self, future: Future[Metrics], reason: str) -> None:
        """Cancel ``future`` on the client's loop thread, without waiting (thread-safe).

        Its waiting thread then ends: ``result()`` raises ``CancelledError``.
        """
        cancel = partial(self._client.cancel, [future], asynchronous=True, reason=reason)
        loop = self._client.loop
        try:
            if loop is not None:
                loop.add_callback(cancel)
        except Exception:  # pragma: no cover - the client's loop is already gone
            log.debug("could not cancel Dask future %s", future.key, exc_info=True)

    async def aclose(self) -> None:
        """Cancel what still runs, remove the plugin from the workers, close the client.

        Each step is bounded (a few seconds); a failure is logged, not raised.
        """
        if self._closed:
            return
        self._closed = True
        client = self._client
        unfinished = list(self._unfinished)
        if unfinished:
            log.warning("cancelling %d backtest(s) running on the Dask cluster", len(unfinished))
            for future in unfinished:
                self._cancel_soon(future, "the service is stopping")
        steps = (
            ("remove the service's plugin from the Dask workers",
             partial(client.unregister_worker_plugin, self._plugin_name)),
            ("close the Dask client", partial(client.close, timeout=_CLOSE_TIMEOUT)),
        )  # fmt: skip
        for what, step in steps:
            try:
                with anyio.fail_after(_CLOSE_TIMEOUT + 1.0):
                    await anyio.to_thread.run_sync(step, abandon_on_cancel=True)
            except Exception as exc:
                log.warning("could not %s: %s: %s", what, type(exc).__name__, exc)


@asynccontextmanager
async def open_dask_pool(
    executor: DaskExecutor,
    engine: Engine,
    bars: Mapping[str, pd.DataFrame],
    *,
    workers: int | None,
    warm_up: bool,
) -> AsyncIterator[DaskPool]:
    """Open a :class:`DaskPool` for the block; see :meth:`DaskExecutor.open`."""
    try:
        engine_pickle = pickle.dumps(engine)
    except Exception as exc:
        raise UsageError(f"the engine {engine!r} cannot be pickled: {exc}") from exc
    datasets_pickle = await anyio.to_thread.run_sync(
        partial(pickle.dumps, dict(bars), protocol=pickle.HIGHEST_PROTOCOL)
    )
    client = await _connect(executor)
    try:
        count, threads = await _worker_count(client, executor, workers=workers, warm_up=warm_up)
        plugin_name = await _register(client, executor, engine_pickle, datasets_pickle)
    except BaseException:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT + 1.0):
            await anyio.to_thread.run_sync(
                partial(client.close, timeout=_CLOSE_TIMEOUT), abandon_on_cancel=True
            )
        raise
    pool = DaskPool(client, plugin_name, scheduler=executor.scheduler, workers=count)
    log.info(
        "Dask executor: scheduler %s, %d worker thread(s) now; up to %d backtest(s) at once",
        executor.scheduler,
        threads,
        count,
    )
    try:
        yield pool
    finally:
        with anyio.CancelScope(shield=True):
            await pool.aclose()


async def _connect(executor: DaskExecutor) -> Client:
    """Reach the scheduler: ask who it is first (bounded), then connect a client.

    (distributed's ``Client(timeout=...)`` waits forever for a peer that accepts the TCP
    connection and never answers; an abandoned attempt would leave its threads behind.)
    """
    from distributed import Client

    address, timeout = executor.scheduler, executor.connect_timeout
    fix = "check --scheduler (scheduler=) and that the Dask scheduler runs and is reachable"
    try:
        identity = await anyio.to_thread.run_sync(_identify, address, timeout)
    except ValueError as exc:
        raise UsageError(f"scheduler: {exc}") from None
    except (OSError, TimeoutError) as exc:
        why = f": {exc}" if str(exc) else " (no answer)"
        raise EngineError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s{why}; {fix}"
        ) from None
    if identity.get("type") != "Scheduler":
        raise EngineError(
            f"{address} is not a Dask scheduler (it is a {identity.get('type')!r}); {fix}"
        )
    connect = partial(Client, address, timeout=timeout, set_as_default=False)
    try:
        with anyio.fail_after(timeout + 5.0):
            return await anyio.to_thread.run_sync(connect, abandon_on_cancel=True)
    except Exception as exc:
        raise EngineError(
            f"cannot connect to the Dask scheduler at {address} within {timeout:g} s: "
            f"{type(exc).__name__}: {exc}; {fix}"
        ) from None


def _identify(address: str, timeout: float) -> dict[str, Any]:
    """In a thread: the peer's ``identity()``, on an event loop of its own, in ``timeout`` s.

    Raises:
        ValueError: a malformed address.
        OSError: the peer refused or dropped the connection.
        TimeoutError: no answer in time.
    """
    import asyncio

    from distributed.core import rpc

    async def ask() -> dict[str, Any]:
        async with rpc(address, timeout=timeout) as peer:  # type: ignore[no-untyped-call]
            identity: dict[str, Any] = await peer.identity()
            return identity

    return asyncio.run(asyncio.wait_for(ask(), timeout))


async def _worker_count(
    client: Client, executor: DaskExecutor, *, workers: int | None, warm_up: bool
) -> tuple[int, int]:
    """``workers`` (or the cluster's worker threads), and those threads now.

    Waits for a first worker when ``workers`` is not given, or ``warm_up``.
    """
    if workers is None or warm_up:
        wait = partial(client.wait_for_workers, 1, timeout=executor.connect_timeout)
        try:
            await anyio.to_thread.run_sync(wait)
        except Exception as exc:
            raise EngineError(
                f"the Dask cluster at {executor.scheduler} has no worker after "
                f"{executor.connect_timeout:g} s ({type(exc).__name__}); start workers with "
                f"'dask worker {executor.scheduler}'"
            ) from None
    nthreads: dict[str, int] = await anyio.to_thread.run_sync(client.nthreads)
    threads = sum(nthreads.values())
    return (max(1, threads) if workers is None else workers), threads


async def _register(
    client: Client, executor: DaskExecutor, engine_pickle: bytes, datasets_pickle: bytes
) -> str:
    """Register the service's plugin (its setup runs on every worker); return its name."""
    from .dask_worker import ServicePlugin

    name = f"backtest-queue-{uuid.uuid4().hex[:12]}"
    plugin = ServicePlugin(name, engine_pickle, datasets_pickle)
    try:
        await anyio.to_thread.run_sync(partial(client.register_plugin, plugin, name=name))
    except Exception as exc:
        with anyio.move_on_after(_CLOSE_TIMEOUT):  # it stays registered for new workers
            unregister = partial(client.unregister_worker_plugin, name)
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(unregister, abandon_on_cancel=True)
        raise EngineError(
            f"the Dask workers at {executor.scheduler} could not set up the engine and "
            f"datasets: {type(exc).__name__}: {exc} (the workers need backtest-queue[service] "
            "installed, the same version as the service)"
        ) from None
    return name
