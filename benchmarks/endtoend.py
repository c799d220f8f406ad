"""End to end (issue #14, target 1): the queue against a plain process pool.

The same backtests - a demo-sized set of in-sample candidates (288 by default) on the
first 70 % of EURUSD-H1 - run two ways, alternately, on a warm pool of the same size:

* **plain pool**: a ``ProcessPoolExecutor(workers)`` running the service's own worker code
  (spawned processes, :func:`backtest_queue.service.worker.initialize` with the engine
  and the datasets file, then :func:`~backtest_queue.service.worker.run_backtest`), so
  both sides do the same work per backtest (progress bars off, same data); the parent
  selects each request's bars as the service does and submits every backtest at once
  (``submit`` of all, then their results);
* **queue**: ``backtest-queue service --workers N`` in its own process and a dispatcher
  in this one; every request is submitted at once (``submit_many``) and the outcomes read
  from ``outcomes``.

Each run is timed from the first submit to the last result; the ratio is the pool's
time over the queue's, per round (>= 0.95 is the target). Worker utilisation per run is
the workers' CPU time over ``workers x`` the run's wall time: the idle time between two
backtests shows there (on a loaded machine, time waiting for a CPU lowers both sides);
so does worker idle time, the share of 10 ms samples of each worker's scheduler state in
``/proc`` that were not ``R`` (running or runnable), which a loaded machine does not
lower: it is the time a worker waited for its next backtest. Run alone:
``python -m benchmarks.endtoend [--rounds 3] [--n 288] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import pickle
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import anyio

from backtest_queue import BacktestRequest, open_dispatcher
from backtest_queue.evolution.records import RunSettings
from backtest_queue.evolution.search_space import SearchSpace
from backtest_queue.evolution.service_process import free_tcp_endpoint, open_service_process
from backtest_queue.evolution.split import load_bars, split_bars

from .utilisation import _children as _workers_of
from .utilisation import _state

__all__ = ["EndToEnd", "candidates_requests", "main", "run_end_to_end"]

DATA_ID: Final = "EURUSD-H1"


class _SeededTrial:
    """A ``TrialLike`` drawing uniformly from a seeded generator (a random search)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return self._rng.randint(low, high)

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None
    ) -> float:
        if step is None:
            return self._rng.uniform(low, high)
        return low + step * self._rng.randint(0, round((high - low) / step))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._rng.choice(list(choices))


def candidates_requests(n: int, seed: int = 14) -> list[BacktestRequest]:
    """``n`` in-sample requests of distinct random candidates (the demo's search space)."""
    bars = load_bars(DATA_ID)
    split = split_bars(bars.index, DATA_ID)
    settings = RunSettings(data_id=DATA_ID, start=split.in_sample[0], end=split.in_sample[1])
    trial = _SeededTrial(random.Random(seed))
    space = SearchSpace()
    seen: dict[object, BacktestRequest] = {}
    while len(seen) < n:
        candidate = space.suggest(trial)
        if candidate not in seen:
            seen[candidate] = settings.request_for(candidate)
    return list(seen.values())


# -- the plain pool -------------------------------------------------------------------


def _ready() -> bool:
    return True


@contextlib.contextmanager
def _plain_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A plain ``ProcessPoolExecutor`` running the service's worker code (see the module doc)."""
    from backtest_queue.service import worker
    from backtest_queue.service.datasets import load_catalog
    from backtest_queue.service.datasets_file import write_datasets_file
    from backtest_queue.service.engine import BacktestingPyEngine

    datasets_file = write_datasets_file(load_catalog(None).bars())
    try:
        with ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=worker.initialize,
            initargs=(pickle.dumps(BacktestingPyEngine()), datasets_file.path),
        ) as pool:
            yield pool
    finally:
        datasets_file.close()


def _bounds(requests: Sequence[BacktestRequest]) -> list[tuple[int, int]]:
    from backtest_queue.service.datasets import load_catalog
    from backtest_queue.service.engine import BacktestingPyEngine

    catalog, engine = load_catalog(None), BacktestingPyEngine()
    return [
        catalog.select(r.data_id, r.start, r.end, min_bars=engine.validate(r.strategy))
        for r in requests
    ]


def _pool_run(
    pool: ProcessPoolExecutor, requests: Sequence[BacktestRequest], bounds: list[tuple[int, int]]
) -> float:
    from backtest_queue.service import worker

    started = time.perf_counter()
    futures = [
        pool.submit(worker.run_backtest, r, *b) for r, b in zip(requests, bounds, strict=True)
    ]
    for f in futures:
        f.result()
    return time.perf_counter() - started


# -- the queue ----------------------------------------------------------------------------


async def _queue_run(endpoint: str, requests: Sequence[BacktestRequest]) -> float:
    async with open_dispatcher(
        [endpoint], max_pending=None, rate=None, result_timeout=600.0, max_attempts=1
    ) as d:
        with anyio.fail_after(60):
            await d.wait_connected()
        started = time.perf_counter()
        await d.submit_many(list(requests))
        failed = 0
        for _ in requests:
            outcome = await d.outcomes.receive()
            failed += not outcome.ok
        elapsed = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"{failed} of {len(requests)} backtests failed")
    return elapsed


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a live process; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    return out


class _IdleSampler:
    """Samples the workers' scheduler state in ``/proc`` every ``interval`` seconds in a
    thread: ``R`` (computing, or runnable and waiting for a CPU) is busy, anything else
    (waiting for work) idle. Unlike CPU time, it is not lowered by a loaded machine."""

    def __init__(self, pids: Sequence[int], *, on: bool = True, interval: float = 0.01) -> None:
        self._on = on
        self._pids = list(pids)
        self._interval = interval
        self._stop = threading.Event()
        self._busy = 0
        self._samples = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._busy += sum(_state(p) == "R" for p in self._pids)
            self._samples += len(self._pids)

    def __enter__(self) -> _IdleSampler:
        if self._on:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._on:
            self._thread.join()

    @property
    def idle(self) -> float:
        """The share of worker samples that were not ``R``."""
        return 1.0 - self._busy / self._samples if self._samples else float("nan")


@dataclass
class _Cpu:
    """CPU seconds spent during a run: the coordinating processes and the workers."""

    here: float = 0.0  # this process (the pool's parent, or the requester)
    service: float = 0.0  # the service's main process (queue only)
    workers: float = 0.0

    @classmethod
    def sample(cls, service_pid: int | None, workers: Sequence[int]) -> _Cpu:
        return cls(
            time.process_time(),
            0.0 if service_pid is None else _cpu_s(service_pid),
            sum(_cpu_s(w) for w in workers),
        )

    def __sub__(self, other: _Cpu) -> _Cpu:
        return _Cpu(
            self.here - other.here, self.service - other.service, self.workers - other.workers
        )


@dataclass
class EndToEnd:
    """What :func:`run_end_to_end` measured (seconds per run, per round; CPU seconds)."""

    n: int
    workers: int
    pool_s: list[float]
    queue_s: list[float]
    pool_cpu: list[dict[str, float]]
    queue_cpu: list[dict[str, float]]
    pool_idle: list[float] = field(default_factory=list)
    queue_idle: list[float] = field(default_factory=list)

    @property
    def pool_busy(self) -> list[float]:
        """Per round: the plain pool's workers' CPU time over ``workers x`` wall time."""
        return [
            c["workers"] / (self.workers * t)
            for c, t in zip(self.pool_cpu, self.pool_s, strict=True)
        ]

    @property
    def queue_busy(self) -> list[float]:
        """Per round: the service's workers' CPU time over ``workers x`` wall time."""
        return [
            c["workers"] / (self.workers * t)
            for c, t in zip(self.queue_cpu, self.queue_s, strict=True)
        ]

    @property
    def ratios(self) -> list[float]:
        """Per round: the queue's rate over the pool's (pool time / queue time)."""
        return [p / q for p, q in zip(self.pool_s, self.queue_s, strict=True)]

    def summary(self) -> dict[str, Any]:
        """Medians and ratios, for JSON."""
        return {
            **asdict(self),
            "pool_per_s": self.n / statistics.median(self.pool_s),
            "queue_per_s": self.n / statistics.median(self.queue_s),
            "ratios": self.ratios,
            "pool_busy": self.pool_busy,
            "queue_busy": self.queue_busy,
            "ratio": statistics.median(self.ratios),
        }


def run_end_to_end(
    n: int = 288,
    workers: int = 2,
    rounds: int = 3,
    service_args: Sequence[str] = (),
    idle: bool = False,
) -> EndToEnd:
    """Run both ways ``rounds`` times, alternating, each on a warm pool; see the module doc.

    ``service_args``: more ``backtest-queue service`` arguments (e.g. ``--credit 6``).
    ``idle``: also sample the workers' idle time (a thread in this process, which then
    spends a little more CPU: keep it off for the rates).
    """
    requests = candidates_requests(n)
    warm = candidates_requests(2 * workers, seed=1)
    bounds = _bounds(requests)
    result = EndToEnd(n, workers, [], [], [], [])
    endpoint = free_tcp_endpoint()

    async def queue_rounds() -> None:
        async with open_service_process(
            endpoint, workers=workers, extra_args=service_args
        ) as service:
            await _queue_run(endpoint, warm)
            service_workers = _children(service.pid)
            pool_workers = _workers_of(service.pid)
            for _ in range(rounds):
                with _plain_pool(workers) as pool:
                    for f in [pool.submit(_ready) for _ in range(2 * workers)]:
                        f.result()
                    _pool_run(pool, warm, _bounds(warm))
                    pids = list(getattr(pool, "_processes", {}) or {})
                    before = _Cpu.sample(None, pids)
                    with _IdleSampler(pids, on=idle) as sampler:
                        result.pool_s.append(_pool_run(pool, requests, bounds))
                    result.pool_cpu.append(asdict(_Cpu.sample(None, pids) - before))
                    if idle:
                        result.pool_idle.append(sampler.idle)
                before = _Cpu.sample(service.pid, service_workers)
                with _IdleSampler(pool_workers, on=idle) as sampler:
                    result.queue_s.append(await _queue_run(endpoint, requests))
                result.queue_cpu.append(asdict(_Cpu.sample(service.pid, service_workers) - before))
                if idle:
                    result.queue_idle.append(sampler.idle)

    anyio.run(queue_rounds)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run and print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.endtoend")
    parser.add_argument("--n", type=int, default=288)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--service-args", default="", help="more service arguments, e.g. '--credit 6'"
    )
    parser.add_argument(
        "--idle", action="store_true", help="also sample the workers' idle time (/proc state)"
    )
    args = parser.parse_args(argv)
    result = run_end_to_end(
        args.n, args.workers, args.rounds, args.service_args.split(), idle=args.idle
    )
    json.dump(result.summary(), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
