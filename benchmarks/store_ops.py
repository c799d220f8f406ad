"""Time the durable store alone: ``apply`` of 1000-op batches, ``cached_results`` of 1000.

Run: ``python -m benchmarks.store_ops`` (prints the median and best of 15 rounds, in ms).
Each round adds 1000 requests, caches 1000 results, decides and acks 1000 outcomes
(2000 ops), then looks up 1000 cached requests (hits) and 1000 new ones (misses).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from backtest_queue import BacktestRequest, Metrics, Strategy
from backtest_queue.store import SqliteStore, StoredOutcome, StoreOp

N, ROUNDS = 1000, 15
FP = "ab" * 32
METRICS = Metrics(strategy_name="s", sharpe=1.2, sortino=1.5, return_pct=12.0,
                  max_drawdown_pct=-5.0, trades=30, bars=5000)  # fmt: skip
TIMES: dict[str, list[float]] = {}


def requests(tag: str, slow: int = 40) -> list[BacktestRequest]:
    return [
        BacktestRequest(
            strategy=Strategy(name="s", kind="sma_cross", params={"fast": i, "slow": slow}),
            data_id="EURUSD-H1",
            request_id=f"{tag}-{i}",
        )
        for i in range(N)
    ]


@contextmanager
def timed(name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    TIMES.setdefault(name, []).append(time.perf_counter() - started)


def main() -> None:
    fps = {"EURUSD-H1": FP}
    done = StoredOutcome(result=METRICS, reason=None, detail="", attempts=1)
    with tempfile.TemporaryDirectory() as tmp, SqliteStore(f"{tmp}/q.db") as store:
        for k in range(ROUNDS):
            rs, misses = requests(f"r{k}"), requests(f"m{k}", slow=41)
            adds = [StoreOp("add", r) for r in rs]
            results = [StoreOp("result", r, result=METRICS, fingerprint=FP) for r in rs]
            decided = [StoreOp("outcome", r, outcome=done) for r in rs]
            acks = [StoreOp("ack", r) for r in rs]
            with timed("apply 1000 add"):
                store.apply(adds)
            with timed("apply 1000 result"):
                store.apply(results)
            with timed("apply 1000 outcome + 1000 ack"):
                store.apply(decided + acks)
            with timed("cached_results 1000 hits"):
                hits = store.cached_results(rs, fps)
            with timed("cached_results 1000 misses"):
                none = store.cached_results(misses, fps)
            assert len(hits) == N
            assert not none
    for name, ts in TIMES.items():
        print(f"{name:32s} median {statistics.median(ts) * 1e3:7.2f} ms  "
              f"best {min(ts) * 1e3:7.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
