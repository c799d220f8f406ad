"""Per-service credit (issue 13, section 2): a 1-worker and a 3-worker service, one batch.

``python -m benchmarks.credit [--n 120] [--rounds 1] [--engine real|sleep] [--json PATH]``

Two real services (:func:`~backtest_queue.service.open_service`: process pools, ZeroMQ on
127.0.0.1) run in this process's event loop (trio) next to one dispatcher; the backtests
run in their worker processes. The same batch of ``n`` requests (sma_cross on EURUSD-H1,
distinct parameters) is run four times after a warm-up:

* ``1w alone`` and ``3w alone``: a dispatcher connected to that service only;
* ``both, credit``: connected to both, each service at its advertised credit (2 and 6);
* ``both, no credit``: the same with the credits lifted after connect
  (``queue.set_credit(ep, None)``): the routing before issue 13, least loaded up to
  ``max_pending`` (64) in all.

Each row: wall seconds (first submit to last outcome), rate (requests / wall), and per
service the backtests it completed and its utilisation, ``busy_seconds / (workers *
wall)`` (:class:`~backtest_queue.service.ServiceStatistics`: worker-seconds spent in
backtests). The summary compares the together rate with the sum of the rates alone.
With ``--rounds R`` the four rows run R times interleaved (so a neighbour's load drifts
over all rows alike) and the summary uses each row's median rate.

``--engine sleep`` swaps the backtest for a fixed ``--sleep-ms`` wait in the worker (no
CPU), so the scheduling is measured apart from CPU contention: on a 2-core machine four
busy backtest workers cannot each run as fast as one alone, so with ``real`` the sum of
the rates alone is more than the cores can give at once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import pandas as pd

from backtest_queue import BacktestRequest, Strategy, open_dispatcher
from backtest_queue.protocol import Metrics
from backtest_queue.service import Service, open_service
from backtest_queue.service.engine import BacktestingPyEngine, Engine

__all__ = ["Row", "SleepEngine", "main", "run"]


class SleepEngine:
    """A backtest that takes ``ms`` milliseconds of waiting and no CPU (picklable)."""

    def __init__(self, ms: float) -> None:
        self.ms = ms

    def validate(self, strategy: Strategy) -> int:
        return 2

    def prepare(self) -> None:
        pass

    def run(self, request: BacktestRequest, bars: pd.DataFrame) -> Metrics:
        time.sleep(self.ms / 1000)
        return Metrics(strategy_name=request.strategy.name, bars=len(bars), elapsed_ms=self.ms)


@dataclass(frozen=True)
class Row:
    """One run of the batch: wall seconds, requests per second, per-service figures."""

    name: str
    wall_s: float
    rate: float
    completed: dict[str, int]
    utilisation: dict[str, float]
    failed: int


def batch(n: int, tag: str) -> list[BacktestRequest]:
    out = []
    for i in range(n):
        params: dict[str, int | float] = {"fast": 5 + i % 7, "slow": 30 + i % 97}
        strategy = Strategy(name=f"sma-{i}", kind="sma_cross", params=params)
        out.append(BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=f"{tag}-{i}"))
    return out


async def _run_batch(
    name: str, services: dict[str, Service], n: int, *, credit: bool, tag: str
) -> Row:
    eps = [s.endpoint for s in services.values()]
    before = {k: s.statistics() for k, s in services.items()}
    failed = 0
    async with open_dispatcher(eps, max_pending=64, flush_interval=3600) as d:
        for ep in eps:
            await d.wait_connected(ep)  # its PONG is in: its credit is known
            if not credit:
                d.queue.set_credit(ep, None)  # the routing before issue 13
        start = anyio.current_time()
        await d.submit_many(batch(n, tag))
        got = 0
        async for outcome in d.outcomes:
            got += 1
            failed += not outcome.ok
            if got == n:
                break
        wall = anyio.current_time() - start
    completed: dict[str, int] = {}
    utilisation: dict[str, float] = {}
    for k, s in services.items():
        now = s.statistics()
        completed[k] = now.backtests_completed - before[k].backtests_completed
        busy = now.busy_seconds - before[k].busy_seconds
        utilisation[k] = round(busy / (s.workers * wall), 3)
    return Row(name, round(wall, 3), round(n / wall, 2), completed, utilisation, failed)


async def run(n: int, engine: Engine, log: Any = print, rounds: int = 1) -> list[Row]:
    """Start the two services, warm them up, run the four rows ``rounds`` times
    (interleaved); return every row run."""
    local = "tcp://127.0.0.1:*"
    async with (
        open_service(bind=local, workers=1, engine=engine) as one,
        open_service(bind=local, workers=3, engine=engine) as three,
    ):
        log(f"services up: 1w credit {one.credit}, 3w credit {three.credit}")
        both = {"1w": one, "3w": three}
        await _run_batch("warm-up", both, 12, credit=True, tag="warm")
        rows = []
        plan = [
            ("1w alone", {"1w": one}, True),
            ("3w alone", {"3w": three}, True),
            ("both, credit", both, True),
            ("both, no credit", both, False),
        ]
        for r in range(rounds):
            order = plan if r % 2 == 0 else plan[::-1]  # no row always first or last
            for i, (name, services, credit) in enumerate(order):
                row = await _run_batch(name, services, n, credit=credit, tag=f"r{r}b{i}")
                log(f"{row.name:16} wall {row.wall_s:7.2f} s  rate {row.rate:6.2f}/s  "
                    f"done {row.completed}  utilisation {row.utilisation}")  # fmt: skip
                rows.append(row)
        return rows


def summary(rows: list[Row]) -> dict[str, Any]:
    """Median rate per row name, and the together rates against the sum alone."""
    rate = {
        name: statistics.median(r.rate for r in rows if r.name == name)
        for name in dict.fromkeys(r.name for r in rows)
    }
    alone = rate["1w alone"] + rate["3w alone"]
    return {
        "median_rates": rate,
        "sum_of_rates_alone": round(alone, 2),
        "both_credit_vs_sum": round(rate["both, credit"] / alone, 3),
        "both_no_credit_vs_sum": round(rate["both, no credit"] / alone, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.credit", description=__doc__)
    parser.add_argument("--n", type=int, default=120, help="requests per batch (120)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats (1)")
    parser.add_argument("--engine", choices=("real", "sleep"), default="real")
    parser.add_argument("--sleep-ms", type=float, default=50.0, help="with --engine sleep")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    engine: Engine = SleepEngine(args.sleep_ms) if args.engine == "sleep" else BacktestingPyEngine()
    load = os.getloadavg()
    rows = anyio.run(run, args.n, engine, print, args.rounds, backend="trio")
    result = {
        "engine": args.engine,
        "n": args.n,
        "rounds": args.rounds,
        "nproc": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "rows": [asdict(r) for r in rows],
        "summary": summary(rows),
    }
    print(json.dumps(result["summary"]))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
