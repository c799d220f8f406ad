"""The backtest service: a ROUTER socket speaking wire protocol v1, running real backtests.

Start it from Python::

    async with open_service(bind="tcp://127.0.0.1:5580", workers=2, data_dir="data") as service:
        ...  # service.endpoint, service.statistics(), await service.wait_statistics(...)

(in a script, under ``if __name__ == "__main__":`` - the workers are spawned processes),
or from the shell: ``backtest-queue service --bind tcp://127.0.0.1:5580 --workers 2``.
A PING answered with a PONG is the readiness check. ``docs/protocol.md`` describes the
wire protocol for people writing their own client or service.

Modules: :mod:`.server` (the service and its tasks), :mod:`.engine` (the engine
interface and the backtesting.py engine), :mod:`.strategies` (strategy kinds and their
validation), :mod:`.datasets` (built-in and CSV datasets), :mod:`.pool` (the process
pool), :mod:`.worker` (what runs in a worker), :mod:`.outbox` (held replies, sans-IO),
:mod:`.statistics` (the counters), :mod:`.monitor` (connection events),
:mod:`.executor` (where backtests run), :mod:`.dask_executor` and :mod:`.dask_worker`
(a Dask cluster as the executor),
:mod:`.command` (the CLI subcommand).
"""

from __future__ import annotations

from .dask_executor import DaskExecutor as DaskExecutor
from .datasets import BUILTIN_DATASETS as BUILTIN_DATASETS
from .datasets import Catalog as Catalog
from .datasets import Dataset as Dataset
from .datasets import DatasetError as DatasetError
from .datasets import load_catalog as load_catalog
from .datasets import load_csv as load_csv
from .engine import BacktestingPyEngine as BacktestingPyEngine
from .engine import Engine as Engine
from .engine import EngineError as EngineError
from .engine import ServiceUnavailable as ServiceUnavailable
from .executor import BacktestExecutor as BacktestExecutor
from .executor import Executor as Executor
from .executor import LocalPool as LocalPool
from .server import Service as Service
from .server import open_service as open_service
from .server import service_socket_options as service_socket_options
from .statistics import ServiceStatistics as ServiceStatistics
from .strategies import KINDS as KINDS
from .strategies import CheckedStrategy as CheckedStrategy
from .strategies import check_strategy as check_strategy

__all__ = [
    "BUILTIN_DATASETS",
    "KINDS",
    "BacktestExecutor",
    "BacktestingPyEngine",
    "Catalog",
    "CheckedStrategy",
    "DaskExecutor",
    "Dataset",
    "DatasetError",
    "Engine",
    "EngineError",
    "Executor",
    "LocalPool",
    "Service",
    "ServiceStatistics",
    "ServiceUnavailable",
    "check_strategy",
    "load_catalog",
    "load_csv",
    "open_service",
    "service_socket_options",
]
