"""Worker utilisation over a demo (issue #14, target 2).

Starts ``backtest-queue service --workers N`` and runs ``backtest-queue demo --connect``
against it (default settings otherwise: 12 generations x 24, TPE, seed 7), while a thread
samples each worker process's scheduler state in ``/proc`` every ``--interval`` seconds:
``R`` (running or runnable: computing a backtest) counts as busy, anything else (sleeping
on the pool's call queue) as idle. Sampling the state rather than CPU time keeps the
figure right on a loaded machine, where a busy worker gets less than a core. The demo
starts once no worker has been running for ``--settle`` seconds: a worker still finishing
its start-up when the sampling began once opened the window with a second of idle time
that had nothing to do with the demo.

Prints one JSON line: per worker ``busy`` (busy samples / samples over the demo's
search phase, from the first busy sample to the last), the share of samples where both
workers were idle and where exactly one was, and the demo's wall time. Idle time with
both workers idle between two busy stretches is where the generation barrier (tell,
ask, submit) stops the pool; one idle worker is the barrier's tail (the last backtests
of a generation) or an uneven split.

``python -m benchmarks.utilisation [--workers 2] [--interval 0.01] [--settle 0.3] [-- demo
args]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main", "measure"]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def _children(pid: int) -> list[int]:
    """The pool's worker processes among ``pid``'s children (not the resource tracker)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    workers = []
    for child in out:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            workers.append(child)
    return workers


def _wait_ready(endpoint: str, timeout: float) -> None:
    import zmq

    from backtest_queue.protocol import Ping, encode_message

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sock.send_multipart([b"", encode_message(Ping(request_id="ready"))])
            if sock.poll(500):
                return
            sock.close(0)
        raise RuntimeError(f"the service at {endpoint} did not answer within {timeout} s")
    finally:
        ctx.destroy(0)


def _settle(pids: Sequence[int], interval: float, quiet: float, timeout: float) -> float:
    """Wait until no worker in ``pids`` has been running for ``quiet`` seconds (bounded by
    ``timeout``); return how long it took, in seconds."""
    started = quiet_since = time.monotonic()
    while (now := time.monotonic()) - started < timeout:
        if any(_state(p) == "R" for p in pids):
            quiet_since = now
        elif now - quiet_since >= quiet:
            break
        time.sleep(interval)
    return time.monotonic() - started


def measure(
    workers: int, interval: float, demo_args: Sequence[str], settle: float = 0.3
) -> dict[str, Any]:
    """Run one demo against a fresh service and sample its workers (see the module doc)."""
    from backtest_queue.evolution.service_process import free_tcp_endpoint, service_command

    endpoint = free_tcp_endpoint()
    env = {**os.environ, "TQDM_DISABLE": "1"}
    service = subprocess.Popen(
        service_command(endpoint, workers=workers),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        _wait_ready(endpoint, 120.0)
        pids: list[int] = []
        deadline = time.monotonic() + 60
        while len(pids) < workers and time.monotonic() < deadline:
            pids = [p for p in _children(service.pid) if _state(p) != "X"]
            time.sleep(0.05)
        pids = pids[:workers]
        settled_s = _settle(pids, interval, settle, 30.0)
        samples: list[tuple[float, tuple[bool, ...]]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), tuple(_state(p) == "R" for p in pids)))
                time.sleep(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        with tempfile.TemporaryDirectory(prefix="bq-util-") as out:
            command = [sys.executable, "-m", "backtest_queue", "demo", "--connect", endpoint,
                       "--out", out, *demo_args]  # fmt: skip
            started = time.monotonic()
            sampler.start()
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=env, check=True)  # fmt: skip
            wall = time.monotonic() - started
            stop.set()
            sampler.join()
    finally:
        service.terminate()
        service.wait(30)
    busy_at = [i for i, (_, b) in enumerate(samples) if any(b)]
    window = samples[busy_at[0] : busy_at[-1] + 1] if busy_at else []
    n = max(1, len(window))
    gaps: list[tuple[float, float]] = []  # (start offset, seconds) with both workers idle
    gap_start: float | None = None
    for at, busy in window:
        if not any(busy):
            gap_start = at if gap_start is None else gap_start
        elif gap_start is not None:
            gaps.append((gap_start - window[0][0], at - gap_start))
            gap_start = None
    long_gaps = [(round(a, 2), round(d, 3)) for a, d in gaps if d >= 0.1]
    return {
        "workers": workers,
        "demo_args": list(demo_args),
        "demo_wall_s": wall,
        "settled_s": settled_s,
        "window_s": window[-1][0] - window[0][0] if window else 0.0,
        "samples": len(window),
        "busy": [sum(b[i] for _, b in window) / n for i in range(len(pids))],
        "both_idle": sum(not any(b) for _, b in window) / n,
        "one_idle": sum(0 < sum(b) < len(b) for _, b in window) / n,
        "both_idle_gaps_over_0.1s": long_gaps,
        "both_idle_in_those_gaps_s": sum(d for _, d in long_gaps),
    }


#: Issue 14, target 2: each worker busy at least this fraction of the demo.
UTILISATION_TARGET = 0.90


def run_section(rounds: int, report: Any, log: Callable[[str], None]) -> None:
    """The harness's ``utilisation`` section: ``rounds`` default demos, one row.

    ``report`` is the harness's :class:`~benchmarks.harness.Report`; the row gives the
    median over rounds of the least busy worker's share, and the target is met when
    that median is at least :data:`UTILISATION_TARGET`.
    """
    from .harness import Row

    runs = []
    for r in range(rounds):
        result = measure(2, 0.01, [])
        log(f"utilisation round {r + 1}/{rounds}: busy {[f'{b:.1%}' for b in result['busy']]}")
        runs.append(result)
    least = sorted(min(run["busy"]) for run in runs)
    median = statistics.median(least)
    met = median >= UTILISATION_TARGET
    report.utilisation = {"runs": runs, "least_busy_median": median}
    report.targets["worker_utilisation"] = {
        "target": f"least busy worker / demo window >= {UTILISATION_TARGET}",
        "value": median,
        "met": met,
    }
    both = statistics.median(run["both_idle"] for run in runs)
    one = statistics.median(run["one_idle"] for run in runs)
    wall = statistics.median(run["demo_wall_s"] for run in runs)
    report.rows.append(
        Row(
            "utilisation",
            "9. worker utilisation over a default demo (2 workers; least busy worker)",
            f"{median:.1%} busy",
            f"{least[0]:.1%}-{least[-1]:.1%}",
            f"both idle {both:.1%}, one idle {one:.1%}; demo {wall:.1f} s ({rounds} runs)",
            f">= {UTILISATION_TARGET:.0%} busy",
            met,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.utilisation")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between samples")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="start the demo once no worker ran for this many seconds")  # fmt: skip
    parser.add_argument("demo_args", nargs="*", help="more arguments for backtest-queue demo")
    args = parser.parse_args(argv)
    json.dump(measure(args.workers, args.interval, args.demo_args, args.settle), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
