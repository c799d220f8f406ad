"""The benchmark harness still runs end to end (tiny sizes; the numbers are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert report["throughput"]["dispatcher_trio"]["median_per_s"] > 0
    assert report["flush"]["trio"]["all_received"]
    assert report["flush"]["asyncio"]["all_fifo"]
    assert report["memory"]["rss"]["queued"] == 1000
    assert report["targets"]
    assert all(isinstance(t["met"], bool) for t in report["targets"].values())
