"""An interrupt keeps the work done, and a ``--store`` rerun resumes (issue 11, §3 and §7).

Real processes: the installed ``backtest-queue demo`` with its own service child, on
the real EURUSD bars. A run is interrupted once the log says a generation finished; it
must exit 130 (SIGINT) / 143 (SIGTERM) with a partial report in ``--out``; rerunning the
same command with the same ``--store`` must give the leaderboard of an uninterrupted
run, say how many results came from the cache, and a rerun with everything cached must
not start a service.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lifelines import tied

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

SCRIPT = shutil.which("backtest-queue") or str(Path(sys.executable).with_name("backtest-queue"))
GENERATIONS = 4
POPULATION = 4
DEMO = ["demo", "--json", "--generations", str(GENERATIONS), "--population", str(POPULATION),
        "--top", "3", "--seed", "5", "--workers", "1", "--service-delay", "0"]  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "80"}


def run_demo(*argv: str) -> tuple[dict[str, Any], str]:
    """Run the demo to its end; return its JSON document and its log."""
    done = subprocess.run([SCRIPT, *DEMO, *argv], capture_output=True, text=True, timeout=300,
                          **tied(environment()))  # fmt: skip
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document, done.stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same search run to its end without a store."""
    document, _ = run_demo("--out", str(tmp_path_factory.mktemp("whole") / "out"))
    assert document["complete"] is True
    assert document["counts"]["cached"] == 0
    return document


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_writes_a_partial_report_and_the_store_resumes(
    signum: signal.Signals, status: int, tmp_path: Path, uninterrupted: dict[str, Any]
) -> None:
    store = str(tmp_path / "store.sqlite")
    out = tmp_path / "partial"
    demo = subprocess.Popen(
        [SCRIPT, *DEMO, "--store", store, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        **tied(environment()),
    )  # fmt: skip
    assert demo.stderr is not None
    deadline = time.monotonic() + 180
    log: list[str] = []
    for line in demo.stderr:  # bounded by the deadline and the test's timeout
        log.append(line)
        if f"in-sample generation 2/{GENERATIONS}" in line:
            break
        assert time.monotonic() < deadline, "".join(log)
    else:
        raise AssertionError(f"the demo ended early:\n{''.join(log)}")
    if signum == signal.SIGINT:
        os.killpg(demo.pid, signum)  # Ctrl-C: the whole group, the service child too
    else:
        demo.send_signal(signum)
    stdout, rest = demo.communicate(timeout=120)
    log.append(rest)
    assert demo.returncode == status, "".join(log)

    # The partial report: on stdout, in results.json and README.txt, where it says.
    printed = json.loads(stdout)
    written = json.loads((out / "results.json").read_text())
    for document in (printed, written):
        assert document["complete"] is False
        partial = document["partial"]
        assert partial["stopped"] == f"interrupted by {signum.name}"
        assert 2 <= partial["generations_done"] < GENERATIONS
        assert partial["out_of_sample"] == "not run"
    done = written["partial"]["generations_done"]
    assert len(written["leaderboard"]) == 3
    assert written["counts"]["evaluations"] == done * POPULATION
    assert "PARTIAL" in (out / "README.txt").read_text()
    assert f"partial report in {out}" in "".join(log)
    # Generations are 1-based in results.csv, as in the log line we waited for.
    with (out / "results.csv").open() as f:
        generations = {int(row["generation"]) for row in csv.DictReader(f)}
    assert generations == set(range(1, done + 1))

    # Rerun with the same store: the finished backtests come from the cache, and the
    # leaderboard is the uninterrupted run's.
    resumed, _ = run_demo("--store", store, "--out", str(tmp_path / "resumed"))
    assert resumed["complete"] is True
    assert resumed["counts"]["cached"] >= done * POPULATION
    assert resumed["counts"]["ok"] + resumed["counts"]["cached"] + resumed["counts"]["clone"] == (
        GENERATIONS * POPULATION
    )
    assert resumed["leaderboard"] == uninterrupted["leaderboard"]
    assert f"{resumed['counts']['cached']} from the store's cache" in resumed["summary"]

    if signum != signal.SIGINT:
        return
    # Once more: everything is cached, so no backtest runs and no service starts.
    cached, log_text = run_demo("--store", store, "--out", str(tmp_path / "cached"))
    assert cached["counts"]["ok"] == 0
    assert cached["counts"]["cached"] + cached["counts"]["clone"] == GENERATIONS * POPULATION
    assert "(0 run, 3 from the store's cache)" in cached["summary"]
    assert cached["leaderboard"] == uninterrupted["leaderboard"]
    assert "starting a backtest service" not in log_text
