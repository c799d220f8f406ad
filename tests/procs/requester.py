"""A requester process with a durable store, for kill-and-restart tests.

Usage: python requester.py ENDPOINT STORE N

Submits requests req-0..req-{N-1} (skipping any the store already holds), then prints
"outcome <request_id> <ok|reason>" for each outcome until nothing is outstanding.
Prints "restored <ids...>" first, then "accepted <request_id> <sent|queued|cached>" once
each submit has returned (the request is durable).
"""

from __future__ import annotations

import sys

import anyio

from backtest_queue import BacktestRequest, Strategy, open_dispatcher
from backtest_queue.lifeline import watch_parent_from_environment


async def main(endpoint: str, store: str, n: int) -> None:
    async with open_dispatcher([endpoint], store=store, max_pending=8) as d:
        outstanding = len(d.restored_ids)
        print(f"restored {' '.join(sorted(d.restored_ids))}", flush=True)
        with anyio.fail_after(20):
            await d.wait_connected()  # with the cache: the service's data fingerprints known
        for i in range(n):
            rid = f"req-{i}"
            if rid in d.restored_ids:
                continue
            strategy = Strategy(name=rid, kind="sma_cross", params={"fast": 5, "slow": 10 + i})
            request = BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=rid)
            state = await d.submit(request)
            outstanding += 1
            print(f"accepted {rid} {state.state}", flush=True)
        async for outcome in d.outcomes:
            status = "ok" if outcome.ok else outcome.reason
            print(f"outcome {outcome.request_id} {status}", flush=True)
            outstanding -= 1
            if not outstanding:
                break
    print("done", flush=True)


if __name__ == "__main__":
    watch_parent_from_environment()  # stop when the test that started us is gone
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), backend="trio")
