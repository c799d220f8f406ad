"""No datasets file outlives its service for long: a killed service's file is removed by
the next one that starts (issue 10, section 5)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import zmq

from backtest_queue.service.datasets_file import sweep_stale_files, write_datasets_file

from service_helpers import start_service_process, wait_until_ready

pytestmark = pytest.mark.skipif(os.name != "posix", reason="locks files with flock (POSIX)")

BARS = {"X": pd.DataFrame({"Close": [1.0, 2.0]})}


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("backtest-queue-datasets-*.pickle"))


def test_a_live_file_is_kept_a_dead_ones_is_swept(tmp_path: Path) -> None:
    live = write_datasets_file(BARS, str(tmp_path))
    assert Path(live.path).name.startswith(f"backtest-queue-datasets-{os.getpid()}-")
    assert pd.read_pickle(live.path)["X"].equals(BARS["X"])
    dead = tmp_path / "backtest-queue-datasets-999999-abc_1.pickle"  # nobody locks it
    dead.write_bytes(b"left by a killed service")
    older = tmp_path / "backtest-queue-datasets-k3j4h5.pickle"  # the name before locks
    older.write_bytes(b"cannot tell")
    assert sweep_stale_files(str(tmp_path)) == [str(dead)]
    assert _files(tmp_path) == sorted([Path(live.path), older])
    live.close()
    live.close()  # idempotent
    assert _files(tmp_path) == [older]


def test_writing_a_file_sweeps_first(tmp_path: Path) -> None:
    dead = tmp_path / "backtest-queue-datasets-999999-zz.pickle"
    dead.write_bytes(b"")
    new = write_datasets_file(BARS, str(tmp_path))
    try:
        assert _files(tmp_path) == [Path(new.path)]
    finally:
        new.close()


@pytest.mark.slow
def test_kill_9_of_a_service_leaves_a_file_the_next_start_removes(
    zmq_context: zmq.Context[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the services' temporary directory
    first = start_service_process(zmq_context, tmp_path / "first.log", "--workers", "1")
    try:
        wait_until_ready(zmq_context, first)
        assert len(_files(scratch)) == 1
        first.stop(signal.SIGKILL)
    finally:
        first.stop(signal.SIGKILL)
    assert len(_files(scratch)) == 1  # nothing can remove it at the moment of the kill
    second = start_service_process(zmq_context, tmp_path / "second.log", "--workers", "1")
    try:
        wait_until_ready(zmq_context, second)
        [left] = _files(scratch)
        assert f"-{second.process.pid}-" in left.name  # the first one's is gone
        assert "removed 1 datasets file(s) left by services that were killed" in second.log()
        assert second.stop(signal.SIGTERM) == 0
    finally:
        second.stop(signal.SIGKILL)
    assert _files(scratch) == []


def test_a_file_system_without_locks_still_works_and_sweeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    other = tmp_path / "backtest-queue-datasets-999999-zz.pickle"  # cannot tell: kept
    other.write_bytes(b"")
    new = write_datasets_file(BARS, str(tmp_path))
    try:
        assert _files(tmp_path) == sorted([Path(new.path), other])
    finally:
        new.close()
    assert _files(tmp_path) == [other]
