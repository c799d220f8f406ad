"""What runs inside a backtest worker process (the functions the pool sends there).

Kept free of heavy imports: a spawned worker imports this module first, so
:func:`initialize` can silence warnings and progress bars before the engine (and
backtesting.py, and tqdm) is imported.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import warnings
from collections.abc import Mapping

import pandas as pd

from ..protocol import BacktestRequest, Metrics
from .engine import Engine, EngineError

__all__ = ["initialize", "ready", "run_backtest", "run_engine"]

_engine: Engine | None = None
_bars: Mapping[str, pd.DataFrame] = {}


def initialize(engine_pickle: bytes, datasets_path: str) -> None:
    """Prepare this worker process once: quiet output, datasets, engine.

    Args:
        engine_pickle: the engine, pickled, so it is unpickled (and its modules imported)
            only after ``TQDM_DISABLE`` is set.
        datasets_path: a pickle file of data_id -> OHLCV frame that the service process
            wrote after loading and checking the datasets once.
    """
    global _engine, _bars
    _exit_with_parent()
    # tqdm reads its settings from the environment when it is imported.
    os.environ["TQDM_DISABLE"] = "1"
    warnings.simplefilter("ignore")
    # Ctrl-C reaches the whole process group; the service decides when work stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(datasets_path, "rb") as stream:
        _bars = pickle.load(stream)
    engine = pickle.loads(engine_pickle)
    engine.prepare()
    _engine = engine


def _exit_with_parent() -> None:
    """Exit this worker as soon as the service process is gone, even mid-backtest.

    A ``ProcessPoolExecutor`` worker whose parent was killed (SIGKILL, out of memory)
    would otherwise wait forever for work: it holds both ends of its call queue.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - always set in a spawned worker
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(70)  # EX_SOFTWARE; nothing to clean up that the OS does not

    threading.Thread(target=watch, name="exit-with-service", daemon=True).start()


def ready() -> int:
    """Return this worker's process id (used to warm the pool up)."""
    return os.getpid()


def run_backtest(request: BacktestRequest, first: int, stop: int) -> Metrics:
    """Run ``request`` on bars ``[first, stop)`` of its dataset.

    Raises:
        EngineError: with a one-line message; every failure of the engine is turned into
            one, so that what crosses the process boundary always pickles.
    """
    if _engine is None:
        raise EngineError("worker process was not initialised")
    return run_engine(_engine, _bars, request, first, stop)


def run_engine(
    engine: Engine,
    datasets: Mapping[str, pd.DataFrame],
    request: BacktestRequest,
    first: int,
    stop: int,
) -> Metrics:
    """Run ``request`` with ``engine`` on bars ``[first, stop)`` of ``datasets[data_id]``,
    wherever the worker is (a pool process, a Dask worker).

    Raises:
        EngineError: with a one-line message; every failure of the engine, and a result
            that is not :class:`Metrics`, is turned into one, so that what crosses a
            process boundary always pickles.
    """
    try:
        bars = datasets[request.data_id].iloc[first:stop]
        metrics = engine.run(request, bars)
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(metrics, Metrics):
        raise EngineError(f"the engine returned {type(metrics).__name__}, not Metrics")
    return metrics
