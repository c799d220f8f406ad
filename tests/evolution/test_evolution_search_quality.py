"""The search-quality harness (benchmarks/search_quality.py) still runs end to end, with
tiny sizes (the numbers are not checked, only their shape)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_harness_runs_every_sampler_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    cmd = [sys.executable, "-m", "benchmarks.search_quality", "--seeds", "1",
           "--generations", "2", "--population", "2", "--walk-forward", "2",
           "--workers", "1", "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=55)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [row["sampler"] for row in report["summary"]] == ["tpe", "nsga2", "random"]
    for run in report["runs"]:
        assert run["distinct"] == 4
        assert run["real_generations"] == 2
    assert "| sampler |" in done.stdout
