"""The requester side of the multi-host tests: a dispatcher in a namespace of its own.

Usage: python driver.py CONFIG_JSON  (run with ``ip netns exec REQUESTER_NS``)

CONFIG_JSON keys: ``endpoints`` (every endpoint the dispatcher connects to), ``initial``
(those to wait for before submitting), ``backend`` (``trio`` or ``asyncio``), ``window``
(requests kept outstanding: submitted, no outcome yet), ``max_requests``, ``time_limit``
(seconds for the whole run), ``dispatcher`` (keyword arguments of ``open_dispatcher``).

It keeps ``window`` requests outstanding (one new submit per outcome) until it reads
``stop`` on stdin (or reaches ``max_requests``), then waits for the outstanding ones and
exits. It prints one JSON object per line on stdout, with ``t`` from ``time.monotonic()``
(the same clock as the test process's: CLOCK_MONOTONIC is system-wide):

* ``{"event": "up" | "down", "endpoint": ...}``: the dispatcher saw a handshake succeed
  / a connection close (taken from its log records, written at the moment it acts);
* ``{"event": "ready"}``: every ``initial`` endpoint is up; submitting starts;
* ``{"event": "outcome", "id", "ok", "reason", "attempts", "endpoint"}``: ``endpoint``
  is where the first result for it came from (``null`` for a failure);
* ``{"event": "done", "submitted", "outcomes", "distinct", "duplicates", "lost",
  "results_from", "queue"}``: the counts; ``queue`` holds the policy core's counters.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from typing import Any

import anyio

from backtest_queue import BacktestRequest, Outcome, Strategy, open_dispatcher
from backtest_queue.lifeline import watch_parent_from_environment
from backtest_queue.protocol import BacktestResult, decode_message

QUEUE_COUNTERS = ("sent", "results", "retries", "failed", "duplicate_results", "late_results",
                  "late_replies")  # fmt: skip


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


class ConnectionLog(logging.Handler):
    """Turns the dispatcher's "connected to" / "disconnected from" records into events."""

    def emit(self, record: logging.LogRecord) -> None:
        if not isinstance(record.msg, str) or not record.args:
            return
        if record.msg.startswith("connected to "):
            emit("up", endpoint=record.args[0])  # type: ignore[index]
        elif record.msg.startswith("disconnected from "):
            emit("down", endpoint=record.args[0])  # type: ignore[index]


def make_request(i: int) -> BacktestRequest:
    params = {"fast": 5 + i % 7, "slow": 30 + i % 40}
    strategy = Strategy(name=f"r{i}", kind="sma_cross", params=params)
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=f"r{i}")


async def read_commands(stop: anyio.Event) -> None:
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if line.strip() == "stop" or not line:
            stop.set()
            return


async def main(cfg: dict[str, Any]) -> None:
    logger = logging.getLogger("backtest_queue")
    logger.setLevel(logging.INFO)
    logger.addHandler(ConnectionLog())
    window, max_requests = cfg["window"], cfg["max_requests"]
    results_from: Counter[str] = Counter()
    first_from: dict[str, str] = {}
    seen: Counter[str] = Counter()
    submitted = 0
    async with open_dispatcher(cfg["endpoints"], **cfg["dispatcher"]) as d:
        handle = d._handle_reply  # see which connection each result comes in on

        def observed(endpoint: str, frames: list[bytes], now: float) -> bool:
            try:
                message = decode_message(frames[1])
            except Exception:
                message = None
            if isinstance(message, BacktestResult):
                results_from[endpoint] += 1
                first_from.setdefault(message.request_id, endpoint)
            return handle(endpoint, frames, now)

        d._handle_reply = observed  # type: ignore[method-assign]
        with anyio.fail_after(cfg["connect_timeout"]):
            for endpoint in cfg["initial"]:
                await d.wait_connected(endpoint)
        emit("ready")
        stop = anyio.Event()
        outstanding = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_commands, stop)
            with anyio.move_on_after(cfg["time_limit"]):
                while not (stop.is_set() or submitted >= max_requests) or outstanding:
                    while not stop.is_set() and outstanding < window and submitted < max_requests:
                        await d.submit(make_request(submitted))
                        submitted += 1
                        outstanding += 1
                    if not outstanding:
                        await stop.wait()
                        continue
                    outcome: Outcome = await d.outcomes.receive()
                    outstanding -= 1
                    seen[outcome.request_id] += 1
                    emit("outcome", id=outcome.request_id, ok=outcome.ok, reason=outcome.reason,
                         attempts=outcome.attempts,
                         endpoint=first_from.get(outcome.request_id))  # fmt: skip
            tg.cancel_scope.cancel()
        stats = d.stats().queue
    emit(
        "done",
        submitted=submitted,
        outcomes=sum(seen.values()),
        distinct=len(seen),
        duplicates=sum(n - 1 for n in seen.values()),
        lost=submitted - len(seen),
        results_from=dict(results_from),
        queue={k: getattr(stats, k) for k in QUEUE_COUNTERS},
    )


if __name__ == "__main__":
    watch_parent_from_environment()  # stop when the test that started us is gone
    config = json.loads(sys.argv[1])
    anyio.run(main, config, backend=config["backend"])
