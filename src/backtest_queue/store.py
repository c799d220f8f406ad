"""The durable send queue and result cache: one SQLite file (WAL mode).

:class:`SqliteStore` is synchronous and knows nothing of the event loop; the dispatcher
runs it in a worker thread, one batch of operations per transaction (group commit), so
durability costs one commit per batch rather than one per request.

What it keeps:

* ``requests``: every request accepted by ``submit`` whose outcome has not been
  delivered yet, in submit order. On restart they are queued again and re-sent.
* ``results``: results by request *content* (strategy, dataset, bar range, cash,
  commission; not the ``request_id``), so a restarted evolution does not re-run
  finished backtests.

Durability: WAL with ``synchronous=NORMAL`` survives the process being killed (SIGKILL)
at any moment; a power loss may lose the last commits (SQLite's documented trade-off for
WAL + NORMAL; use ``synchronous="FULL"`` for that).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from .protocol import BacktestRequest, Metrics

__all__ = ["Restored", "SqliteStore", "StoreOp", "StoredOutcome", "content_key"]

_SCHEMA = """
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

_request_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(BacktestRequest)
_metrics_decoder = msgspec.json.Decoder(Metrics)


def content_key(request: BacktestRequest) -> str:
    """Return a hash of what determines a backtest's result (everything but the id).

    The strategy's ``name`` is a label and is left out too: two requests that differ only
    in names run the same backtest.
    """
    s = request.strategy
    identity = (
        s.kind, sorted(s.params.items()), s.sl, s.tp, request.data_id, request.start,
        request.end, request.cash, request.commission, request.v,
    )  # fmt: skip
    return hashlib.sha256(_request_encoder.encode(identity)).hexdigest()


class StoredOutcome(msgspec.Struct, frozen=True):
    """An outcome decided but not yet received by a caller (placeholder)."""

    result: Metrics | None
    reason: str | None
    detail: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Restored:
    """What a store gives back when it opens (placeholder)."""

    requests: list[BacktestRequest]
    outcomes: list[tuple[BacktestRequest, StoredOutcome]]
    quarantined: list[object]


@dataclass(frozen=True, slots=True)
class StoreOp:
    """One write for the store's next transaction.

    Attributes:
        kind: ``"add"`` (a request was accepted), ``"remove"`` (its outcome was
            delivered) or ``"result"`` (cache a result under the request's content).
        request: the request concerned.
        result: the metrics, with ``"result"``.
    """

    kind: Literal["add", "outcome", "ack", "result"]
    request: BacktestRequest
    outcome: StoredOutcome | None = None
    result: Metrics | None = None
    fingerprint: str | None = None


class SqliteStore:
    """A SQLite file holding undelivered requests and cached results.

    Args:
        path: the database file; created with its tables if missing.
        synchronous: SQLite's ``synchronous`` pragma: ``"NORMAL"`` (survives process
            crashes; default) or ``"FULL"`` (survives power loss, slower).

    Raises:
        sqlite3.Error: the file cannot be opened or is not a database of this schema.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        shared: bool = False,
    ) -> None:
        self.path = Path(path)
        # One connection, used by one thread at a time (the dispatcher serialises calls).
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"<SqliteStore {str(self.path)!r}>"

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._db.close()

    def pending_requests(self) -> list[BacktestRequest]:
        """Return the requests accepted but not yet answered, in submit order."""
        rows = self._db.execute("SELECT body FROM requests ORDER BY seq").fetchall()
        return [_request_decoder.decode(body) for (body,) in rows]

    def cached_result(self, request: BacktestRequest) -> Metrics | None:
        """Return the cached result for a request with the same content, if any."""
        row = self._db.execute(
            "SELECT body FROM results WHERE content_key = ?", (content_key(request),)
        ).fetchone()
        return None if row is None else _metrics_decoder.decode(row[0])

    def restore(self) -> Restored:
        """Placeholder."""
        return Restored(self.pending_requests(), [], [])

    def cached_results(
        self, requests: Iterable[BacktestRequest], fingerprints: object = None
    ) -> dict[str, Metrics]:
        """Return the cached results of those requests that have one, by request id."""
        out: dict[str, Metrics] = {}
        for request in requests:
            metrics = self.cached_result(request)
            if metrics is not None:
                out[request.request_id] = metrics
        return out

    def apply(self, ops: Iterable[StoreOp]) -> int:
        """Apply a batch of writes in one transaction; return how many were applied.

        Adding a request id that is already stored keeps the first one (a restart
        re-submitting what it restored is not an error).
        """
        adds: list[tuple[str, bytes]] = []
        removes: list[tuple[str]] = []
        results: list[tuple[str, bytes]] = []
        for op in ops:
            rid = op.request.request_id
            if op.kind == "add":
                adds.append((rid, _request_encoder.encode(op.request)))
            elif op.kind in ("outcome", "ack"):
                removes.append((rid,))
            elif op.result is not None:
                results.append((content_key(op.request), _request_encoder.encode(op.result)))
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR IGNORE INTO requests (request_id, body) VALUES (?, ?)", adds)
            db.executemany("DELETE FROM requests WHERE request_id = ?", removes)
            db.executemany(
                "INSERT OR REPLACE INTO results (content_key, body) VALUES (?, ?)", results
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return len(adds) + len(removes) + len(results)
