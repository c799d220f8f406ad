"""``backtest-queue demo`` end to end: a real service process on real EURUSD bars."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backtest_queue.evolution import command_demo

from lifelines import tied

pytestmark = pytest.mark.slow

FLUSHED = re.compile(r"flushed (\d+) queued requests ([\d.]+) ms after connect to (\S+)")
STARTED = re.compile(r"backtest service started \(pid (\d+)\)")


def demo_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command_demo.add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.command = "demo"
    return args


def gone(pid: int) -> bool:
    """Whether the process has exited and been reaped (not even a zombie is left)."""
    return not Path(f"/proc/{pid}").exists()


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="checks processes through /proc")
def test_demo_end_to_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """On trio (the default); the Ctrl-C test below runs the demo on asyncio."""
    caplog.set_level(logging.INFO, logger="backtest_queue")
    out = tmp_path / "out"
    args = demo_args(
        "--generations", "3", "--population", "6", "--workers", "1", "--seed", "3",
        "--service-delay", "0.2", "--out", str(out),
    )  # fmt: skip
    assert command_demo.run(args) == 0
    messages = [r.getMessage() for r in caplog.records]

    # The requests queued, the service connected, and the flush came right after.
    flushes = [m for m in map(FLUSHED.search, messages) if m]
    assert flushes, messages
    assert int(flushes[0].group(1)) >= 1
    assert float(flushes[0].group(2)) < 1000.0
    # The service was stopped and reaped.
    pids = [int(m.group(1)) for m in map(STARTED.search, messages) if m]
    assert len(pids) == 1
    assert gone(pids[0])
    assert "service stopped" in (out / "service.log").read_text()
    # Every candidate got an outcome - a result, since the real service ran them all.
    document = json.loads((out / "results.json").read_text())
    in_sample = [e for e in document["evaluations"] if e["phase"] == "in-sample"]
    out_of_sample = [e for e in document["evaluations"] if e["phase"] == "out-of-sample"]
    assert len(in_sample) == 18
    assert {e["status"] for e in in_sample} <= {"ok", "clone"}
    assert all(e["request_id"] for e in document["evaluations"])
    assert {e["bars"] for e in in_sample} == {3500}  # the first 70 % of 5000 bars
    assert {e["bars"] for e in out_of_sample} == {1500}
    assert len(out_of_sample) == len(document["leaderboard"]) >= 1
    # Evolution keeps the best: the best Sharpe is at least the first generation's.
    sharpes = [e["sharpe"] for e in in_sample if e["sharpe"] is not None]
    first = [e["sharpe"] for e in in_sample if e["generation"] == 1 and e["sharpe"] is not None]
    assert max(sharpes) >= max(first)
    ranked = [e["sharpe"] for e in in_sample if e["sharpe"] is not None and e["trades"] >= 20]
    assert document["leaderboard"][0]["in_sample_sharpe"] == max(ranked or sharpes)
    assert all(row["in_sample_trades"] >= 20 for row in document["leaderboard"]) or not ranked
    # Overfitting is measured: a DSR per leaderboard row, a PBO for the run.
    overfitting = document["overfitting"]
    assert 0.0 <= overfitting["pbo"] <= 1.0
    assert overfitting["trials"] >= len(document["leaderboard"])
    assert all(0.0 <= row["deflated_sharpe_ratio"] <= 1.0 for row in document["leaderboard"])
    assert document["real_generations"] == 3
    # The files exist and parse.
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(document["evaluations"])
    with (out / "leaderboard.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(document["leaderboard"])
    for name in ("sharpe_by_generation.png", "equity_curve.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    # The locally recomputed equity curve agrees with the service's numbers.
    assert not any("disagrees" in m for m in messages)


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="checks processes through /proc")
def test_ctrl_c_leaves_no_service_behind(tmp_path: Path) -> None:
    """SIGINT to the demo (only to it, as if the service had ignored the terminal's)
    while it runs, on asyncio: it exits with 130 and its service process is gone."""
    command = [sys.executable, "-m", "backtest_queue", "demo", "--workers", "1",
               "--service-delay", "0", "--generations", "50", "--out", str(tmp_path),
               "--backend", "asyncio"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    with subprocess.Popen(command, stderr=subprocess.STDOUT, stdout=subprocess.PIPE,
                          text=True, **tied(env)) as demo:  # fmt: skip
        assert demo.stdout is not None
        pid = None
        deadline = time.monotonic() + 30
        for line in demo.stdout:  # bounded by the deadline check and the test timeout
            if match := STARTED.search(line):
                pid = int(match.group(1))
            if pid is not None and "generation 1/50" in line:
                break
            assert time.monotonic() < deadline, "the demo did not get going"
        assert pid is not None
        assert not gone(pid)
        demo.send_signal(signal.SIGINT)
        rest = demo.stdout.read()
        assert demo.wait(timeout=20) == 130, rest
    assert gone(pid)
