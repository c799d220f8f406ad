"""A row that cannot be decoded never makes the store unopenable: it is quarantined."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest_queue import BacktestRequest, Strategy
from backtest_queue.store import SqliteStore, StoredOutcome, StoreOp
from test_store import write_0_1_store


def make_request(i: int) -> BacktestRequest:
    strategy = Strategy(name=f"s{i}", kind="sma_cross", params={"fast": 5, "slow": 20 + i})
    return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=f"req-{i}")


def good_body(i: int, **changes: object) -> bytes:
    """A request row body as the store writes it, with fields changed (invalidly)."""
    raw = msgspec.json.decode(msgspec.json.encode(make_request(i)))
    return msgspec.json.encode({**raw, **changes})


BAD_BODIES = {
    "cash": good_body(1, cash=-5),  # accepted by an older version's submit
    "commission": good_body(2, commission=1.5),
    "corrupt": b'{"type":"BACKTEST","v":1,"request_id":"x',
    "not-utf8": b"\xff\xfe{}",
    "not-an-object": b"[1, 2, 3]",
    "nested": b"[" * 5000 + b"]" * 5000,
    "not-bytes": 42,
}


def insert_raw(db: Path, rows: list[tuple[str, object, object]]) -> None:
    """Rows (request_id, body, outcome) written straight by sqlite3, owner unknown."""
    with sqlite3.connect(db) as raw:
        raw.executemany("INSERT INTO requests (request_id, body, outcome) VALUES (?, ?, ?)", rows)
    raw.close()


def test_bad_request_rows_are_quarantined_and_the_rest_restored(tmp_path: Path) -> None:
    """Issue 10 §2: on 2ccd574 one row with cash=-5 made the whole store unopenable."""
    db = tmp_path / "q.db"
    with SqliteStore(db) as store:
        store.apply([StoreOp("add", make_request(0))])
    insert_raw(db, [(f"bad-{name}", body, None) for name, body in BAD_BODIES.items()])
    with SqliteStore(db) as store:
        store.apply([StoreOp("add", make_request(9))])
        restored = store.restore()
    assert restored.requests == [make_request(0), make_request(9)]
    assert [(q.source, q.request_id) for q in restored.quarantined] == [
        ("request", f"bad-{name}") for name in BAD_BODIES
    ]
    by_id = {q.request_id: q.error for q in restored.quarantined}
    assert "cash" in by_id["bad-cash"]
    assert "commission" in by_id["bad-commission"]
    with sqlite3.connect(db) as raw:  # moved, with the error and the original bytes
        kept = raw.execute("SELECT request_id, body, error FROM quarantine ORDER BY id").fetchall()
        assert raw.execute("SELECT count(*) FROM requests").fetchone() == (2,)
    raw.close()
    assert [(rid, body) for rid, body, _ in kept] == [
        (f"bad-{name}", body) for name, body in BAD_BODIES.items()
    ]
    with SqliteStore(db) as store:  # quarantined once, not reported again
        again = store.restore()
    assert again.quarantined == []
    assert again.requests == [make_request(0), make_request(9)]


def test_a_bad_stored_outcome_sends_its_request_again(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    good = StoredOutcome(result=None, reason="timeout", detail="late", attempts=2)
    with SqliteStore(db) as store:
        store.apply([StoreOp("add", make_request(i)) for i in range(4)])
        store.apply([StoreOp("outcome", make_request(3), outcome=good)])
    with sqlite3.connect(db) as raw:
        raw.executemany("UPDATE requests SET outcome = ? WHERE request_id = ?", [
            (b'{"result":null,"reason":"bogus","detail":"","attempts":1}', "req-0"),
            (b'{"result":{"strategy_name":"s","sharpe":"high"},"reason":null', "req-1"),
        ])  # fmt: skip
    raw.close()
    with SqliteStore(db) as store:
        restored = store.restore()
    assert restored.requests == [make_request(0), make_request(1), make_request(2)]
    assert restored.outcomes == [(make_request(3), good)]
    assert [(q.source, q.request_id) for q in restored.quarantined] == [
        ("outcome", "req-0"),
        ("outcome", "req-1"),
    ]
    with SqliteStore(db) as store:  # the request is to be sent again, and stays so
        assert store.restore().requests == [make_request(i) for i in range(3)]


def test_a_0_1_store_with_a_bad_row_opens(tmp_path: Path) -> None:
    """The issue's own input: cash=-5 stored by 0.1's submit, then the store reopened."""
    db = tmp_path / "q.db"
    write_0_1_store(db, [good_body(0), good_body(1, cash=-5), good_body(2)])
    with SqliteStore(db) as store:
        restored = store.restore()
    assert [r.request_id for r in restored.requests] == ["req-0", "req-2"]
    assert [q.request_id for q in restored.quarantined] == ["old-1"]


_FIELDS = ["cash", "commission", "start", "strategy", "v", "data_id", "request_id"]
_VALUES = st.one_of(
    st.none(), st.integers(), st.floats(), st.text(max_size=5), st.lists(st.integers(), max_size=3)
)
#: Arbitrary bytes, valid bodies with bytes spliced in, valid bodies with fields changed.
_BODIES = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda base, at, junk: base[:at] + junk + base[at:],
        st.sampled_from([good_body(i) for i in range(3)]),
        st.integers(0, 200),
        st.binary(min_size=1, max_size=8),
    ),
    st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=3).map(
        lambda changes: good_body(7, **changes)
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_BODIES, outcome=st.one_of(st.none(), st.binary(max_size=80)))
def test_any_stored_bytes_are_restored_or_quarantined(body: bytes, outcome: bytes | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "q.db"
        with SqliteStore(db) as store:
            store.apply([StoreOp("add", make_request(0))])
        insert_raw(db, [("fuzz", body, outcome)])
        with SqliteStore(db) as store:
            restored = store.restore()
        assert restored.requests[0] == make_request(0)
        dropped = [q for q in restored.quarantined if q.source == "request"]
        fates = len(restored.requests[1:]) + len(restored.outcomes) + len(dropped)
        assert fates == 1  # exactly one fate for the row: sent, delivered or quarantined
        with SqliteStore(db) as store:  # the store stays openable, with nothing new
            assert store.restore().quarantined == []
