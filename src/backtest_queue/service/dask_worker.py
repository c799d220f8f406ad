"""What runs on the Dask workers of the Dask executor (see :mod:`.dask_executor`).

A service registers one :class:`ServicePlugin` (a Dask ``WorkerPlugin``) per run. The
scheduler keeps it and attaches it to every worker, the ones up now and the ones that
join or restart later, so the engine and the OHLCV datasets reach each worker **once**,
not with every task. Each task (:func:`run_backtest`) names the plugin it needs and
finds the engine and the bars there.

The workers need ``backtest-queue[service]`` installed (the same version as the
service): the plugin and the task are pickled by reference to this module.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Mapping

import pandas as pd
from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.worker import Worker

from .. import __version__
from ..protocol import BacktestRequest, Metrics
from .engine import Engine, EngineError, ServiceUnavailable
from .worker import run_engine

__all__ = ["ServicePlugin", "run_backtest"]


class ServicePlugin(WorkerPlugin):
    """Holds one service's engine and datasets on a Dask worker.

    Built in the service process from the engine and the datasets, pickled once
    (``pickle`` bytes, so the scheduler and the workers only copy bytes); the worker
    unpickles them in :meth:`setup`, in a thread, and calls ``engine.prepare()``.

    Args:
        name: the plugin's name on the cluster (unique per service run).
        engine_pickle: the engine, pickled.
        datasets_pickle: data_id -> OHLCV frame, pickled.
        version: the service's backtest-queue version; a worker with another one
            refuses the plugin (requests and metrics must mean the same on both sides).
    """

    idempotent = False

    def __init__(
        self, name: str, engine_pickle: bytes, datasets_pickle: bytes, *, version: str = __version__
    ) -> None:
        self.name = name
        self.version = version
        self._engine_pickle = engine_pickle
        self._datasets_pickle = datasets_pickle
        self._lock = threading.Lock()
        self._loaded: tuple[Engine, Mapping[str, pd.DataFrame]] | None = None
        #: How many times this worker loaded the engine and datasets (1, or 0 if unused).
        self.loads = 0

    def __getstate__(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "_engine_pickle": self._engine_pickle,
            "_datasets_pickle": self._datasets_pickle,
        }

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._loaded = None
        self.loads = 0

    def __repr__(self) -> str:
        state = "loaded" if self._loaded is not None else "not loaded"
        return f"<ServicePlugin {self.name} {state}>"

    async def setup(self, worker: Worker) -> None:
        """Load the datasets and prepare the engine, off the worker's event loop.

        Raises:
            Exception: unpickling or ``engine.prepare()`` failed; the service that is
                registering the plugin refuses to start.
        """
        import asyncio

        await asyncio.to_thread(self.loaded)

    def teardown(self, worker: Worker) -> None:
        """Drop the engine and the datasets (the service closed, or the worker stops)."""
        with self._lock:
            self._loaded = None

    def loaded(self) -> tuple[Engine, Mapping[str, pd.DataFrame]]:
        """The engine and the datasets, loaded on first use (thread-safe).

        Raises:
            EngineError: this worker has another backtest-queue version than the service.
            Exception: unpickling or ``engine.prepare()`` failed.
        """
        with self._lock:
            if self._loaded is None:
                if self.version != __version__:
                    raise EngineError(
                        f"this Dask worker has backtest-queue {__version__}, the service "
                        f"{self.version}: install the same version on both"
                    )
                # tqdm (used by backtesting.py) reads this when it is imported.
                os.environ.setdefault("TQDM_DISABLE", "1")
                bars: Mapping[str, pd.DataFrame] = pickle.loads(self._datasets_pickle)
                engine: Engine = pickle.loads(self._engine_pickle)
                engine.prepare()
                self._loaded = (engine, bars)
                self.loads += 1
            return self._loaded


def run_backtest(plugin_name: str, request: BacktestRequest, first: int, stop: int) -> Metrics:
    """The Dask task: run ``request`` on bars ``[first, stop)`` of its dataset.

    Raises:
        ServiceUnavailable: this worker does not hold the service's plugin (the service
            has closed, or the worker is not set up yet); the request can be sent again.
        EngineError: with a one-line message; every failure of the engine is turned into
            one, so that what travels back to the service always unpickles.
    """
    plugin = get_worker().plugins.get(plugin_name)
    if not isinstance(plugin, ServicePlugin):
        raise ServiceUnavailable(
            f"the Dask worker does not hold the service's datasets (plugin {plugin_name})"
        )
    try:
        engine, datasets = plugin.loaded()
    except EngineError:
        raise
    except Exception as exc:  # the engine's prepare(), or the unpickling, failed
        raise EngineError(f"{type(exc).__name__}: {exc}") from None
    return run_engine(engine, datasets, request, first, stop)
