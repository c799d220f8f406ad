"""Submit one backtest and wait for its outcome: the README's example, runnable as is.

Starts a backtest service as a child process on a free local port (or uses the
endpoint given as the first argument), submits one SMA-crossover backtest on the
bundled EURUSD hourly bars, prints the submit state and the result, and stops.

    python examples/submit_and_wait.py [tcp://HOST:PORT]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import anyio

from backtest_queue import BacktestRequest, Strategy, open_dispatcher
from backtest_queue.lifeline import Lifeline


async def main(endpoint: str) -> None:
    async with open_dispatcher([endpoint], max_pending=8, rate=50.0) as d:
        strategy = Strategy(name="sma-10-40", kind="sma_cross", params={"fast": 10, "slow": 40})
        state = await d.submit(BacktestRequest(strategy=strategy, data_id="EURUSD-H1"))
        print(state)  # queued (not_connected) until the service is up
        with anyio.fail_after(60):
            outcome = await d.wait(state.request_id)
        print(outcome.result if outcome.ok else f"{outcome.reason}: {outcome.detail}")


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


if __name__ == "__main__":
    if len(sys.argv) > 1:
        anyio.run(main, sys.argv[1], backend="trio")
        sys.exit(0)
    endpoint = free_endpoint()
    cmd = [sys.executable, "-m", "backtest_queue", "-q", "service", "--bind", endpoint,
           "--workers", "1"]  # fmt: skip
    # The lifeline stops the service even if this script is killed (kill -9 included).
    lifeline = Lifeline()
    with subprocess.Popen(
        cmd, env={**os.environ, **lifeline.env}, pass_fds=lifeline.pass_fds
    ) as service:
        lifeline.child_started()
        try:
            anyio.run(main, endpoint, backend="trio")
        finally:
            service.terminate()
