"""Where a service runs its backtests: the interface, and the default local process pool.

:func:`~backtest_queue.service.open_service` takes an ``executor``: ``None`` or
:class:`LocalPool` (worker processes on this machine, :mod:`.pool`), or
:class:`~backtest_queue.service.dask_executor.DaskExecutor` (an existing Dask
distributed cluster). An executor is opened once per service run and gives a
:class:`BacktestExecutor`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from ..protocol import BacktestRequest, Metrics
from .engine import Engine
from .pool import open_pool

__all__ = ["BacktestExecutor", "Executor", "LocalPool"]


class BacktestExecutor(Protocol):
    """An opened executor, as the service's runner tasks use it."""

    @property
    def workers(self) -> int:
        """How many backtests the service runs at once (one runner task each)."""
        ...

    @property
    def slots(self) -> int:
        """How many backtests the service hands over at once (one runner task each):
        ``workers``, plus the ones the executor keeps ready for a worker (prefetch). An
        executor without it gets ``workers``."""
        ...

    @property
    def restarts(self) -> int:
        """How many times the executor replaced broken workers (``pool_restarts``)."""
        ...

    async def run(self, request: BacktestRequest, first: int, stop: int) -> Metrics:
        """Run one backtest on bars ``[first, stop)`` of its dataset.

        Cancel-safe: a cancelled call withdraws the backtest (or discards its result).

        Raises:
            ServiceUnavailable: it was not run, or was cut short, and can be sent again
                (answered with ``unavailable``).
            EngineError: it failed (answered with ``engine_error``).
        """
        ...

    def withdraw_unstarted(self) -> int:
        """At a graceful stop: withdraw the handed-over backtests that can still be
        withdrawn (not started), whose :meth:`run` then raises ``ServiceUnavailable``;
        submit no more. Returns how many were withdrawn. An executor without it
        withdraws nothing."""
        ...


class Executor(Protocol):
    """What :func:`~backtest_queue.service.open_service` takes as ``executor``."""

    def open(
        self,
        engine: Engine,
        bars: Mapping[str, pd.DataFrame],
        *,
        workers: int | None,
        warm_up: bool,
    ) -> AbstractAsyncContextManager[BacktestExecutor]:
        """Open the executor for one service run; closed when the service stops.

        Args:
            engine: the engine to run (picklable).
            bars: data_id -> OHLCV frame, handed to each worker once.
            workers: backtests at once (``None``: the executor's default).
            warm_up: get every worker ready before returning.

        Raises:
            UsageError: a bad setting, or an engine that cannot be pickled.
            EngineError: the workers cannot be started or reached.
        """
        ...


@dataclass(frozen=True, slots=True)
class LocalPool:
    """The default executor: spawned worker processes on this machine (:mod:`.pool`);
    ``workers=None`` means one per CPU.

    Args:
        prefetch: backtests per worker handed to the process pool beyond the one it
            runs, so a worker that finishes one starts the next at once (>= 0; default
            1; see :mod:`.pool`).
    """

    prefetch: int = 1

    def open(
        self,
        engine: Engine,
        bars: Mapping[str, pd.DataFrame],
        *,
        workers: int | None,
        warm_up: bool,
    ) -> AbstractAsyncContextManager[BacktestExecutor]:
        """See :meth:`Executor.open`."""
        count = (os.cpu_count() or 1) if workers is None else workers
        return open_pool(engine, bars, workers=count, warm_up=warm_up, prefetch=self.prefetch)
