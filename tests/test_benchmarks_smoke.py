"""The benchmark harness still runs end to end (tiny sizes; the numbers are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backtest_queue.protocol import BacktestResult, Pong, decode_message

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_harness_runs_every_section_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, "-m", "benchmarks", "--messages", "100", "--rounds", "1",
        "--flush-n", "100", "--flush-runs", "1", "--memory-n", "1000",
        "--tracemalloc-n", "500", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    row4 = report["throughput"]["dispatcher_trio"]
    assert row4["median_per_s"] > 0
    # The loop thread's CPU is part of the process's (libzmq's I/O thread is the rest).
    assert 0 < row4["loop_cpu_us_per_msg"] <= row4["client_cpu_us_per_msg"] * 1.01
    assert report["flush"]["trio"]["all_received"]
    assert report["flush"]["asyncio"]["all_fifo"]
    assert report["memory"]["rss"]["queued"] == 1000
    assert report["targets"]
    assert all(isinstance(t["met"], bool) for t in report["targets"].values())


@pytest.mark.slow
@pytest.mark.timeout(180)  # four worker processes start; minutes only on a loaded machine
def test_credit_benchmark_runs_and_splits_by_workers(tmp_path: Path) -> None:
    """``benchmarks/credit.py`` end to end with the sleep engine and a tiny batch."""
    out = tmp_path / "credit.json"
    cmd = [sys.executable, "-m", "benchmarks.credit", "--engine", "sleep", "--sleep-ms", "20",
           "--n", "16", "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"1w alone", "3w alone", "both, credit", "both, no credit"}
    assert all(row["failed"] == 0 for row in rows.values())
    together = rows["both, credit"]["completed"]
    assert together["1w"] + together["3w"] == 16
    assert together["3w"] > together["1w"]
    assert report["summary"]["sum_of_rates_alone"] > 0


# Run with the repository as the working directory: ``benchmarks`` is not an installed
# package (as the harness tests above, which start it with ``-m``).
_ECHO_EXCHANGE = """
import json, zmq
from benchmarks.payloads import make_requests, request_bodies
from benchmarks.services import EchoService
from backtest_queue.protocol import Ping, encode_message
bodies = request_bodies(make_requests(50, tag="echo"))
with EchoService() as service:
    ctx = zmq.Context()
    try:
        dealers = [ctx.socket(zmq.DEALER) for _ in range(2)]  # two peers: two identities
        for dealer in dealers:
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.RCVTIMEO, 10_000)
            dealer.connect(service.endpoint)
        before = service.stats().messages
        dealers[0].send_multipart([b"", encode_message(Ping())])
        for i, body in enumerate(bodies):  # interleaved: even ids on one, odd on the other
            dealers[i % 2].send_multipart([b"", body])
        replies = [dealers[0].recv_multipart() for _ in range(26)]
        replies += [dealers[1].recv_multipart() for _ in range(25)]
        counted = service.stats().messages - before
    finally:
        ctx.destroy(linger=0)
print(json.dumps({"replies": [[f.decode() for f in r] for r in replies], "counted": counted}))
"""


@pytest.mark.slow
def test_echo_service_answers_every_request_and_ping_in_order() -> None:
    """The benchmark's echo service (frame-by-frame pyzmq calls) answers each request
    with a result for its id, to the peer that sent it, a PING with a PONG, and counts
    only the requests."""
    done = subprocess.run([sys.executable, "-c", _ECHO_EXCHANGE], cwd=ROOT,
                          capture_output=True, text=True, timeout=50)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    replies = [[frame.encode() for frame in r] for r in report["replies"]]
    assert all(len(frames) == 2 and frames[0] == b"" for frames in replies)
    assert isinstance(decode_message(replies[0][1]), Pong)
    results = [decode_message(frames[1]) for frames in replies[1:]]
    assert all(isinstance(r, BacktestResult) for r in results)
    ids = [f"echo-{i:024d}" for i in range(50)]
    assert [r.request_id for r in results] == ids[0::2] + ids[1::2]
    assert report["counted"] == 50
