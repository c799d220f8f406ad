"""One owner per store (real second processes, SIGKILL), and contention for its lock."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import backtest_queue
from backtest_queue import BacktestRequest, Metrics, Strategy, UsageError
from backtest_queue.errors import StoreBusy, StoreLocked
from backtest_queue.store import SqliteStore, StoreOp

SRC = str(Path(backtest_queue.__file__).resolve().parents[1])
FP = "ab" * 32
ENV = {**os.environ, "PYTHONPATH": SRC}

#: Opens the store (argv: path, "shared"|"exclusive", tag, n), adds n requests and one
#: cached result, says "ready", and keeps the store open until its stdin closes.
HOLDER = """if True:
    import sys
    from backtest_queue import BacktestRequest, Metrics, Strategy
    from backtest_queue.store import SqliteStore, StoreOp
    path, mode, tag, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = SqliteStore(path, shared=mode == "shared")
    restored = store.restore()
    reqs = [BacktestRequest(strategy=Strategy(name="s", kind="k", params={"i": i}),
                            data_id="EURUSD-H1", request_id=f"{tag}-{i}") for i in range(n)]
    store.apply([StoreOp("add", r) for r in reqs])
    cached = Metrics(strategy_name=tag)
    store.apply([StoreOp("result", reqs[0], result=cached, fingerprint="ab" * 32)])
    print("ready", *sorted(r.request_id for r in restored.requests), flush=True)
    sys.stdin.read()
    store.close()
"""


def make_request(i: int, tag: str = "req") -> BacktestRequest:
    return BacktestRequest(strategy=Strategy(name="s", kind="k", params={"i": i}),
                           data_id="EURUSD-H1", request_id=f"{tag}-{i}")  # fmt: skip


@contextmanager
def holder(db: Path, mode: str, tag: str, n: int = 3) -> Iterator[subprocess.Popen[str]]:
    """A second process holding the store open; killed (SIGKILL) if still alive at exit."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), mode, tag, str(n)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("ready"), proc.stderr.read() if proc.stderr else ""
            proc.restored = line.split()[1:]  # type: ignore[attr-defined]
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


# -- one owner ---------------------------------------------------------------------


def test_a_second_opener_is_refused_naming_the_holder(tmp_path: Path) -> None:
    """Issue 10 §3: on 2ccd574 a second process opened the store and restored (then ran)
    the first one's live requests."""
    db = tmp_path / "q.db"
    with holder(db, "exclusive", "first") as first:
        started = time.time()
        with pytest.raises(StoreLocked) as caught:
            SqliteStore(db)
        error = caught.value
        assert isinstance(error, UsageError)
        assert error.path == str(db)
        (who,) = error.holders
        assert who.pid == first.pid
        assert who.host == os.uname().nodename
        assert who.mode == "exclusive"
        assert who.argv[0] == "-c"
        assert "first" in who.argv
        assert started - 60 < who.since <= time.time()
        assert f"pid {first.pid}" in str(error)
        assert "shared=True" in str(error)
        # A shared opener is refused as well: the holder asked for the store alone.
        with pytest.raises(StoreLocked, match="exclusively"):
            SqliteStore(db, shared=True)


def test_the_holder_killed_with_sigkill_is_taken_over(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with holder(db, "exclusive", "first", n=5) as first:
        kill9(first)
    with SqliteStore(db) as store:  # the kernel dropped the dead holder's locks
        restored = store.restore()
        assert [r.request_id for r in restored.requests] == [f"first-{i}" for i in range(5)]
        assert store.cached_results([make_request(0, "first")], {"EURUSD-H1": FP}) == {
            "first-0": Metrics(strategy_name="first")
        }
    assert sorted(os.listdir(f"{db}.owners")) == ["lock"]  # the dead one's file is gone


def test_a_holder_that_closed_leaves_the_store_free(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with holder(db, "exclusive", "first") as first:
        assert first.stdin is not None
        first.stdin.close()
        assert first.wait(timeout=30) == 0
    with holder(db, "exclusive", "second") as second:  # restores what the first left
        assert second.restored == ["first-0", "first-1", "first-2"]  # type: ignore[attr-defined]


def test_the_same_process_opening_twice_is_refused(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "q.db") as store:
        with pytest.raises(StoreLocked) as caught:
            SqliteStore(tmp_path / "q.db")
        assert caught.value.holders[0].pid == os.getpid()
        store.apply([StoreOp("add", make_request(1))])  # the holder is unaffected
    with SqliteStore(tmp_path / "q.db") as store:
        assert store.restore().requests == [make_request(1)]


def test_a_symlink_to_a_store_in_use_is_refused_too(tmp_path: Path) -> None:
    """A fresh-eyes trial: the lock was found by the path as given, so a symlink to a
    store in use opened it a second time, exclusively."""
    (tmp_path / "alias").mkdir()
    link = tmp_path / "alias" / "link.db"
    link.symlink_to(tmp_path / "q.db")
    with SqliteStore(tmp_path / "q.db"), pytest.raises(StoreLocked):
        SqliteStore(link)
    with SqliteStore(link), pytest.raises(StoreLocked):  # and the other way round
        SqliteStore(tmp_path / "q.db")


def test_shared_openers_share_the_cache_but_never_a_live_owners_requests(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with holder(db, "shared", "first", n=4) as first, SqliteStore(db, shared=True) as second:
        assert second.restore().requests == []  # first is alive: its requests are its own
        assert second.cached_results([make_request(0, "x")], {"EURUSD-H1": FP}) == {
            "x-0": Metrics(strategy_name="first")
        }
        second.apply([StoreOp("add", make_request(0, "second"))])
        # ack/outcome only touch the opener's own rows
        second.apply([StoreOp("ack", make_request(1, "first"))])
        # An exclusive opener is refused while shared ones are alive.
        with pytest.raises(StoreLocked) as caught:
            SqliteStore(db)
        assert {h.pid for h in caught.value.holders} == {first.pid, os.getpid()}
        assert {h.mode for h in caught.value.holders} == {"shared"}
        kill9(first)
        # The first is gone: its requests are adopted by the next restore.
        taken = second.restore().requests
        assert [r.request_id for r in taken] == [
            "first-0", "first-1", "first-2", "first-3", "second-0",
        ]  # fmt: skip


def test_dead_owners_requests_are_adopted_by_exactly_one_of_two_shared_openers(
    tmp_path: Path,
) -> None:
    db = tmp_path / "q.db"
    with holder(db, "shared", "dead", n=200) as dead:
        kill9(dead)
    go = [sys.executable, "-c", HOLDER, str(db), "shared"]
    started = [
        subprocess.Popen([*go, tag, "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=ENV)
        for tag in "ab"
    ]  # fmt: skip
    try:  # both restore at the same time, and both are alive when they read "ready"
        out_a, out_b = (p.stdout.readline() for p in started if p.stdout is not None)
    finally:
        for p in started:
            p.communicate("", timeout=60)
    got_a, got_b = set(out_a.split()[1:]), set(out_b.split()[1:])
    assert not got_a & got_b
    assert got_a | got_b == {f"dead-{i}" for i in range(200)}


# -- contention ----------------------------------------------------------------------


@contextmanager
def write_locked(db: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the database's write lock (BEGIN IMMEDIATE)."""
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_apply_waits_busy_timeout_then_raises_store_busy_having_applied_nothing(
    tmp_path: Path,
) -> None:
    """Issue 10 §3: on 2ccd574 apply raised sqlite3.OperationalError 'database is locked'."""
    db = tmp_path / "q.db"
    batch = [StoreOp("add", make_request(i)) for i in range(10)]
    with SqliteStore(db, busy_timeout=0.5) as store:
        with write_locked(db):
            started = time.monotonic()
            with pytest.raises(StoreBusy) as caught:
                store.apply(batch)
            assert time.monotonic() - started >= 0.45  # it waited (bounded) first
        assert caught.value.path == str(db)
        assert caught.value.waited >= 0.45
        assert "0.5 s" in str(caught.value)
        assert store.restore().requests == []  # nothing of the batch was applied
        assert store.apply(batch) == 10  # the caller kept it and retries: all in
        assert len(store.restore().requests) == 10


def test_apply_succeeds_when_the_lock_is_released_within_busy_timeout(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with SqliteStore(db, busy_timeout=30) as store:
        other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        applied: list[int] = []
        worker = threading.Thread(target=lambda: applied.append(store.apply(
            [StoreOp("add", make_request(1))])))  # fmt: skip
        worker.start()
        worker.join(0.3)  # still waiting for the lock: not failed, not done
        assert worker.is_alive()
        other.execute("COMMIT")
        other.close()
        worker.join(30)
        assert applied == [1]


def test_restore_and_open_raise_store_busy_too(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with SqliteStore(db, busy_timeout=0.2) as store:
        store.apply([StoreOp("add", make_request(1))])
        with write_locked(db):
            with pytest.raises(StoreBusy):
                store.restore()
            # Reads do not wait for a writer in WAL mode.
            assert store.cached_results([make_request(1)], {"EURUSD-H1": FP}) == {}
    with write_locked(db), pytest.raises(StoreBusy):
        SqliteStore(db, busy_timeout=0.2)
    with SqliteStore(db) as store:  # the failed opener left no lock behind
        assert store.restore().requests == [make_request(1)]


def test_shared_openers_racing_to_create_a_store_all_succeed(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    code = (
        "import sys; from backtest_queue.store import SqliteStore; "
        "SqliteStore(sys.argv[1], shared=True).restore()"
    )
    racers = [
        subprocess.Popen([sys.executable, "-c", code, str(db)], stderr=subprocess.PIPE,
                         text=True, env=ENV)
        for _ in range(4)
    ]  # fmt: skip
    for racer in racers:
        _, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw.close()
