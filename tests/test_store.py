"""The durable store alone: what it keeps, its fingerprinted cache, errors, migration.

Ownership and contention (real second processes, a second sqlite3 connection) are in
test_store_owner.py; undecodable rows in test_store_quarantine.py; the store under a
dispatcher in test_store_dispatcher.py.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

import backtest_queue
from backtest_queue import BacktestQueueError, BacktestRequest, Metrics, Strategy, UsageError
from backtest_queue.errors import StoreError
from backtest_queue.outcome import Outcome
from backtest_queue.store import (
    SCHEMA_VERSION,
    Restored,
    SqliteStore,
    StoredOutcome,
    StoreOp,
    content_key,
)

SRC = str(Path(backtest_queue.__file__).resolve().parents[1])
FP = "ab" * 32  # a dataset fingerprint
METRICS = Metrics(strategy_name="s1", sharpe=0.5, trades=7)


def make_request(i: int, *, rid: str | None = None, name: str | None = None) -> BacktestRequest:
    strategy = Strategy(name=name or f"s{i}", kind="sma_cross", params={"fast": 5, "slow": 20 + i})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=rid or f"req-{i}")


def failed(reason: str = "timeout") -> StoredOutcome:
    return StoredOutcome(result=None, reason=reason, detail="no reply within 5 s", attempts=3)  # type: ignore[arg-type]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60
    )


# -- what it keeps ---------------------------------------------------------------


def test_requests_are_restored_in_submit_order_until_decided(tmp_path: Path) -> None:
    reqs = [make_request(i) for i in range(5)]
    with SqliteStore(tmp_path / "q.db") as store:
        assert store.apply([StoreOp("add", r) for r in reqs]) == 5
        store.apply([StoreOp("outcome", reqs[1], outcome=failed()), StoreOp("add", reqs[0])])
    with SqliteStore(tmp_path / "q.db") as store:
        restored = store.restore()
    assert restored.requests == [reqs[0], reqs[2], reqs[3], reqs[4]]  # re-add ignored
    assert restored.outcomes == [(reqs[1], failed())]
    assert restored.quarantined == []


def test_unread_outcomes_survive_a_kill_and_are_delivered_again(tmp_path: Path) -> None:
    """Issue 10 §3: a requester killed with 120 outcomes received but 20 read loses none
    of the 100 it never read (on 2ccd574 the row went with the delivery: all 100 lost)."""
    db = tmp_path / "q.db"
    code = """if True:
        import os, signal, sys
        from backtest_queue import BacktestRequest, Metrics, Strategy
        from backtest_queue.store import SqliteStore, StoredOutcome, StoreOp
        reqs = [BacktestRequest(strategy=Strategy(name=f"s{i}", kind="k", params={"p": i}),
                                data_id="EURUSD-H1", request_id=f"req-{i}") for i in range(130)]
        store = SqliteStore(sys.argv[1])
        store.apply([StoreOp("add", r) for r in reqs])
        outcomes = [StoreOp("outcome", r, outcome=StoredOutcome(
            result=Metrics(strategy_name=r.strategy.name, trades=i) if i % 2 else None,
            reason=None if i % 2 else "service_error", detail=f"d{i}", attempts=1))
            for i, r in enumerate(reqs[:120])]
        store.apply(outcomes[:60])          # group commits as outcomes arrive
        store.apply(outcomes[60:])
        store.apply([StoreOp("ack", r) for r in reqs[:20]])  # the caller read 20 of them
        os.kill(os.getpid(), signal.SIGKILL)
    """
    done = run_python(code, str(db))
    assert done.returncode == -signal.SIGKILL, done.stderr
    with SqliteStore(db) as store:
        restored = store.restore()
        assert [r.request_id for r in restored.requests] == [f"req-{i}" for i in range(120, 130)]
        assert [r.request_id for r, _ in restored.outcomes] == [f"req-{i}" for i in range(20, 120)]
        for request, outcome in restored.outcomes:
            i = int(request.request_id.removeprefix("req-"))
            assert outcome.detail == f"d{i}"
            assert outcome.attempts == 1
            if i % 2:
                assert outcome.result == Metrics(strategy_name=f"s{i}", trades=i)
                assert outcome.reason is None
            else:
                assert outcome.result is None
                assert outcome.reason == "service_error"
        # The restarted caller reads them: acked, they are gone for good.
        store.apply([StoreOp("ack", r) for r, _ in restored.outcomes])
    with SqliteStore(db) as store:
        assert store.restore().outcomes == []


def test_a_shutdown_outcome_is_never_stored_and_ops_are_checked_when_made() -> None:
    request = make_request(1)
    with pytest.raises(UsageError, match="shutdown"):
        StoreOp("outcome", request, outcome=failed("shutdown"))
    with pytest.raises(UsageError, match="outcome="):
        StoreOp("outcome", request)
    with pytest.raises(UsageError, match="result="):
        StoreOp("result", request)
    with pytest.raises(UsageError, match="kind"):
        StoreOp("remove", request)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="BacktestRequest"):
        StoreOp("add", {"request_id": "x"})  # type: ignore[arg-type]


def test_what_cannot_be_stored_is_refused_when_the_op_is_made(tmp_path: Path) -> None:
    """Issue 10 §2: a lone surrogate in a name killed the dispatcher at commit time on
    2ccd574 (UnicodeEncodeError out of apply, the whole batch lost)."""
    bad = make_request(0, rid="bad")  # then changed behind the validation's back
    msgspec.structs.force_setattr(bad.strategy, "name", "bad\udc80")
    with pytest.raises(UsageError, match="'bad' cannot be stored"):
        StoreOp("add", bad)
    odd = StoredOutcome(result=None, reason="service_error", detail="\udc80", attempts=1)
    with pytest.raises(UsageError, match="cannot be stored"):
        StoreOp("outcome", make_request(1), outcome=odd)
    with SqliteStore(tmp_path / "q.db") as store:  # the rest of the batch is unaffected
        assert store.apply([StoreOp("add", make_request(1))]) == 1


def test_stored_outcomes_convert_from_and_to_outcomes() -> None:
    request = make_request(1)
    ok = Outcome(request, METRICS, None, "", 1)
    bad = Outcome(request, None, "service_error", "engine_error: boom", 2)
    for outcome in (ok, bad):
        assert StoredOutcome.of(outcome).to_outcome(request) == outcome
    with pytest.raises(UsageError, match="shutdown"):
        StoredOutcome.of(Outcome(request, reason="shutdown"))


def test_a_batch_is_applied_in_order(tmp_path: Path) -> None:
    """ack then add of the same id in one batch: the new request stays (order kept)."""
    first, again = make_request(1), make_request(1, name="second-life")
    with SqliteStore(tmp_path / "q.db") as store:
        store.apply([StoreOp("add", first), StoreOp("outcome", first, outcome=failed())])
        assert store.apply([StoreOp("ack", first), StoreOp("add", again)]) == 2
        assert store.restore() == Restored(requests=[again], outcomes=[], quarantined=[])


def test_ack_and_outcome_of_unknown_requests_change_nothing(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "q.db") as store:
        store.apply([StoreOp("add", make_request(1))])
        store.apply([StoreOp("ack", make_request(2)),
                     StoreOp("outcome", make_request(3), outcome=failed())])  # fmt: skip
        assert store.restore().requests == [make_request(1)]


# -- a cache that cannot lie -------------------------------------------------------


def test_results_are_cached_by_content_and_dataset_fingerprint(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "q.db") as store:
        assert (
            store.apply([StoreOp("result", make_request(1), result=METRICS, fingerprint=FP)]) == 1
        )
        same = make_request(1, rid="other", name="renamed")
        assert store.cached_results([same], {"EURUSD-H1": FP}) == {"other": METRICS}
        assert store.cached_results([make_request(2)], {"EURUSD-H1": FP}) == {}
        # The dataset's content changed: its fingerprint differs, the cache misses.
        assert store.cached_results([same], {"EURUSD-H1": "cd" * 32}) == {}
        # Nothing says what data the service has now: a miss.
        assert store.cached_results([same], {}) == {}
        assert store.cached_results([same], {"GBPUSD-H1": FP}) == {}
    assert content_key(make_request(1)) != content_key(make_request(2))


def test_a_result_without_fingerprint_is_not_cached(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "q.db") as store:
        assert store.apply([StoreOp("result", make_request(1), result=METRICS)]) == 0
        assert store.cached_results([make_request(1)], {"EURUSD-H1": FP}) == {}


def test_results_on_two_versions_of_a_dataset_are_both_kept(tmp_path: Path) -> None:
    newer = Metrics(strategy_name="s1", sharpe=0.9)
    with SqliteStore(tmp_path / "q.db") as store:
        store.apply([
            StoreOp("result", make_request(1), result=METRICS, fingerprint=FP),
            StoreOp("result", make_request(1), result=newer, fingerprint="cd"),
        ])  # fmt: skip
        assert store.cached_results([make_request(1)], {"EURUSD-H1": FP}) == {"req-1": METRICS}
        assert store.cached_results([make_request(1)], {"EURUSD-H1": "cd"}) == {"req-1": newer}


def test_cached_results_of_many_requests_in_one_call(tmp_path: Path) -> None:
    reqs = [make_request(i) for i in range(1200)]  # more than one chunk of parameters
    with SqliteStore(tmp_path / "q.db") as store:
        store.apply([StoreOp("result", r, result=METRICS, fingerprint=FP) for r in reqs[::2]])
        hits = store.cached_results(reqs, {"EURUSD-H1": FP})
    assert set(hits) == {r.request_id for r in reqs[::2]}


def test_a_corrupt_cached_result_is_a_miss_then_replaced(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with SqliteStore(db) as store:
        store.apply([StoreOp("result", make_request(1), result=METRICS, fingerprint=FP)])
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE results SET body = ?", (b'{"strategy_name": 5',))
    raw.close()
    with SqliteStore(db) as store:
        assert store.cached_results([make_request(1)], {"EURUSD-H1": FP}) == {}
        store.apply([StoreOp("result", make_request(1), result=METRICS, fingerprint=FP)])
        assert store.cached_results([make_request(1)], {"EURUSD-H1": FP}) == {"req-1": METRICS}


# -- errors in the root ------------------------------------------------------------


def _foreign_schema(path: Path) -> None:
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    raw.close()


def test_a_foreign_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _foreign_schema(path)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a backtest-queue store"):
        SqliteStore(path)
    assert path.read_bytes() == before  # still in its own journal mode, no tables added
    assert sorted(os.listdir(tmp_path)) == ["app.db"]


def _newer_version(path: Path) -> None:
    with SqliteStore(path):
        pass
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()


def _missing_column(path: Path) -> None:
    with SqliteStore(path):
        pass
    with sqlite3.connect(path) as raw:
        raw.execute("ALTER TABLE quarantine DROP COLUMN at")
    raw.close()


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (lambda p: p.mkdir(), "unable to open|directory"),
        (lambda p: None, "directory .*missing does not exist"),  # its parent is missing
        (lambda p: p.write_text("name,price\nEURUSD,1.08\n" * 50), "not a database"),
        (_foreign_schema, "not a backtest-queue store"),
        (_newer_version, "newer backtest-queue"),
        (_missing_column, "not a backtest-queue store"),
    ],
    ids=["directory", "missing-parent", "text-file", "foreign-schema", "newer", "missing-column"],
)
def test_a_path_that_is_not_a_store_raises_store_error(
    tmp_path: Path, make: object, cause: str
) -> None:
    """Issue 16: a bad store path raised sqlite3.* (outside the root) on 2ccd574."""
    path = tmp_path / ("missing" if "missing" in cause else "") / "q.db"
    make(path)  # type: ignore[operator]
    owners = Path(f"{path}.owners")
    had_owners = owners.exists()  # from a store made then damaged by the test
    with pytest.raises(StoreError, match=cause) as caught:
        SqliteStore(path)
    assert isinstance(caught.value, BacktestQueueError)
    assert not isinstance(caught.value, sqlite3.Error)
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    # A failed open leaves nothing behind: no lock directory next to a path that is not
    # a store, no owner file in a store's (a retry is not locked out).
    if had_owners:
        assert os.listdir(owners) == ["lock"]
    else:
        assert not owners.exists()


def test_a_closed_store_raises_store_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.apply([StoreOp("add", make_request(1))])
    assert "closed" in repr(store)


@pytest.mark.parametrize(
    "settings",
    [{"synchronous": "OFF"}, {"busy_timeout": float("nan")}, {"busy_timeout": -1},
     {"busy_timeout": "5"}, {"busy_timeout": float("inf")}],
)  # fmt: skip
def test_bad_settings_raise_usage_error(tmp_path: Path, settings: dict[str, object]) -> None:
    (name,) = settings
    with pytest.raises(UsageError, match=name):
        SqliteStore(tmp_path / "q.db", **settings)  # type: ignore[arg-type]
    assert not (tmp_path / "q.db").exists()  # refused before touching anything


# -- stores written by version 0.1 -------------------------------------------------

_SCHEMA_0_1 = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    content_key TEXT PRIMARY KEY,
    body BLOB NOT NULL
);
"""


def write_0_1_store(path: Path, bodies: list[bytes], results: int = 3) -> None:
    """A store as 2ccd574 wrote it (its schema, raw rows)."""
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA journal_mode=WAL")
        raw.executescript(_SCHEMA_0_1)
        raw.executemany("INSERT INTO requests (request_id, body) VALUES (?, ?)",
                        [(f"old-{i}", body) for i, body in enumerate(bodies)])  # fmt: skip
        raw.executemany("INSERT INTO results VALUES (?, ?)", [
            (content_key(make_request(i)), b'{"strategy_name":"s","sharpe":9.9}')
            for i in range(results)
        ])  # fmt: skip
    raw.close()


def test_a_0_1_store_migrates_keeping_requests_dropping_unfingerprinted_results(
    tmp_path: Path,
) -> None:
    db = tmp_path / "q.db"
    old = [make_request(i, rid=f"old-{i}") for i in range(4)]
    write_0_1_store(db, [msgspec.json.encode(r) for r in old])  # as 0.1 encoded them
    with SqliteStore(db) as store:
        assert store.restore() == Restored(requests=old, outcomes=[], quarantined=[])
        assert store.cached_results([make_request(0)], {"EURUSD-H1": FP}) == {}
        store.apply([StoreOp("outcome", old[0], outcome=failed())])
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert raw.execute("SELECT count(*) FROM results").fetchone() == (0,)
    raw.close()
    with SqliteStore(db) as store:  # reopening a migrated store is a plain open
        restored = store.restore()
    assert restored.requests == old[1:]
    assert restored.outcomes == [(old[0], failed())]
