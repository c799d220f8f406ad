"""Memory per queued request: ``BacktestQueue`` alone, no sockets, in a fresh process.

Run by the harness as ``python -m benchmarks.memory --n N [--tracemalloc]``; prints one
JSON object. Phases, each measured as resident set size (``/proc/self/statm``, so no
psutil) or, with ``--tracemalloc``, as traced Python allocations:

1. ``requests``: build ``n`` realistic requests (unique id, name, params dict and stop
   loss / take profit floats each, as an optimizer would make them) into a
   pre-sized list;
2. ``queue``: enqueue them all in a ``BacktestQueue`` (capacity ``n``, no service);
3. ``total``: drop the list, so only the queue holds them.

It also reports the ``sys.getsizeof`` of each object one queued request owns, to say
which structure costs what.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

from backtest_queue.policy import BacktestQueue
from backtest_queue.protocol import BacktestRequest, Strategy, encode_message

__all__ = ["main", "make_realistic_request"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    """Resident set size in bytes, from ``/proc/self/statm``."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def make_realistic_request(i: int) -> BacktestRequest:
    """A request as an evolution loop builds it: fresh objects, UUID4 request id."""
    fast = 5 + i % 20
    slow = 20 + (i * 7) % 180
    strategy = Strategy(
        name=f"sma-{fast}-{slow}",
        kind="sma_cross",
        params={"fast": fast, "slow": slow},
        sl=0.005 + (i % 97) * 1e-4,
        tp=0.01 + (i % 89) * 1e-4,
    )
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1")


def _deep_sizes(request: BacktestRequest, entry: object | None) -> dict[str, float]:
    """``sys.getsizeof`` of what one queued request owns (shared constants excluded)."""
    s = request.strategy
    floats = [x for x in (s.sl, s.tp) if x is not None]
    return {
        "BacktestRequest struct": sys.getsizeof(request),
        "Strategy struct": sys.getsizeof(s),
        "params dict": sys.getsizeof(s.params),
        "request_id str": sys.getsizeof(request.request_id),
        "strategy name str": sys.getsizeof(s.name),
        "sl/tp floats": sum(sys.getsizeof(x) for x in floats),
        "policy _Entry": sys.getsizeof(entry) if entry is not None else math.nan,
    }


def _measure(n: int, use_tracemalloc: bool) -> dict[str, Any]:
    def now() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if use_tracemalloc else _rss()

    encoded = [len(encode_message(make_realistic_request(i))) for i in range(1000)]
    sample = make_realistic_request(0)
    queue: BacktestQueue[BacktestRequest] = BacktestQueue(
        capacity=n, max_pending=None, clock=time.monotonic
    )
    if use_tracemalloc:
        tracemalloc.start(1)
    m0 = now()
    requests: list[BacktestRequest | None] = [None] * n
    m_list = now()
    for i in range(n):
        requests[i] = make_realistic_request(i)
    m1 = now()
    for r in requests:
        assert r is not None
        queue.enqueue(r)
    m2 = now()
    del requests
    m3 = now()
    out: dict[str, Any] = {
        "n": n,
        "method": "tracemalloc" if use_tracemalloc else "rss",
        "encoded_bytes_mean": sum(encoded) / len(encoded),
        "requests_per_request": (m1 - m_list) / n,
        "queue_per_request": (m2 - m1) / n,
        "total_per_request": (m3 - m0) / n,
        "queued": queue.queued,
    }
    # The policy's internals, read defensively: a renamed attribute gives NaN, not a crash.
    live: dict[str, Any] = getattr(queue, "_live", {})
    send_queue: Any = getattr(queue, "_queue", None)
    entry = next(iter(live.values()), None)
    sizes = _deep_sizes(getattr(entry, "request", sample), entry)
    sizes["_live dict slot"] = round(sys.getsizeof(live) / n, 1) if live else math.nan
    sizes["send-queue deque slot"] = (
        round(sys.getsizeof(send_queue) / n, 1) if send_queue is not None else math.nan
    )
    out["getsizeof"] = sizes
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Measure and print one JSON object (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(_measure(args.n, args.tracemalloc)), flush=True)


if __name__ == "__main__":
    main()
