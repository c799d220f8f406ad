"""The durable send queue, its undelivered outcomes and the result cache: one SQLite file.

:class:`SqliteStore` is synchronous and knows nothing of the event loop; the dispatcher
runs it in a worker thread, one batch of operations per transaction (group commit), so
durability costs one commit per batch rather than one per request.

What it keeps (tables of ``q.db``, schema version 1 in ``PRAGMA user_version``):

* ``requests``: every request accepted by ``submit``, in submit order, tagged with the
  opener that owns it, from its ``"add"`` until its ``"ack"``. While its ``outcome`` is
  empty it is to be sent: :meth:`SqliteStore.restore` returns it to be queued again.
  Once decided (``"outcome"``: a result or a final failure, never ``shutdown``) it is
  not sent again; ``restore`` returns the outcome to be delivered again, until the
  caller has actually read it and the dispatcher writes ``"ack"``, which deletes the row.
* ``results``: results by request *content* (strategy, dataset, bar range, cash,
  commission; not the ``request_id`` nor the strategy's name) **and** the fingerprint
  of the dataset it ran on, so a restarted evolution does not re-run finished
  backtests, and a dataset whose content changed is never answered from the cache.
* ``quarantine``: rows that could not be decoded or validated (written by an older
  version, corrupted), moved aside with the error so that one bad row never makes the
  store unopenable.

Ownership: by default one opener at a time (a second one gets
:class:`~backtest_queue.errors.StoreLocked` naming the holder). With ``shared=True``
several openers share the result cache; each restores only its own requests and those
of openers that are gone (see :mod:`backtest_queue.store_owner`). Request ids must then
be unique across openers (the default UUID ids are): adding an id that another opener
already stored is ignored like a re-add.

Durability: WAL with ``synchronous=NORMAL`` survives the process being killed (SIGKILL)
at any moment; a power loss may lose the last commits (SQLite's documented trade-off for
WAL + NORMAL; use ``synchronous="FULL"`` for that).

The windows that remain (what a kill -9 at the worst moment can do):

* **Outcome decided, not yet committed** (between a reply's arrival and the next group
  commit of its ``"outcome"``): the request is restored as *to send* and runs again
  (at-least-once execution; its outcome is delivered once to the next run).
* **Outcome read, ack not yet committed** (between the caller reading it and the next
  group commit of its ``"ack"``): the outcome is delivered again after a restart
  (at-least-once delivery). Nothing the caller has not read is ever lost.
* A result whose ``"result"`` op was not committed is not cached: the next run with the
  same content runs the backtest again.

These hold if batches are applied in the order they were made: a batch refused with
:class:`~backtest_queue.errors.StoreBusy` (nothing of it applied) must be applied again
before any later one. Within a batch, ops apply in order (``"ack"`` then ``"add"`` of
the same id leaves the new request).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec

from .errors import StoreBusy, StoreError, UsageError
from .outcome import FailureReason, Outcome
from .protocol import BacktestRequest, Metrics
from .store_owner import OwnerLock

__all__ = [
    "SCHEMA_VERSION",
    "QuarantinedRow",
    "Restored",
    "SqliteStore",
    "StoreOp",
    "StoredOutcome",
    "content_key",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Columns of each table of schema 1 (checked at open: a foreign database is refused).
_COLUMNS = {
    "requests": ["seq", "request_id", "body", "owner", "outcome"],
    "results": ["content_key", "fingerprint", "body"],
    "quarantine": ["id", "source", "row_key", "request_id", "body", "error", "at"],
}
_TABLES = (
    """CREATE TABLE results (
        content_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (content_key, fingerprint)
    ) WITHOUT ROWID""",
    """CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        row_key TEXT NOT NULL,
        request_id TEXT,
        body BLOB,
        error TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_NEW_REQUESTS = (
    """CREATE TABLE requests (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL UNIQUE,
        body BLOB NOT NULL,
        owner TEXT,
        outcome BLOB
    )""",
)
#: Version 0.1's tables (no ``user_version``): requests are kept, results dropped
#: (they carry no dataset fingerprint: nothing proves what data they ran on).
_FROM_0_1 = (
    "ALTER TABLE requests ADD COLUMN owner TEXT",
    "ALTER TABLE requests ADD COLUMN outcome BLOB",
    "DROP TABLE results",
)
_COLUMNS_0_1 = {"requests": ["seq", "request_id", "body"], "results": ["content_key", "body"]}

#: SQLite's default cap on ``?`` parameters per statement is 32766 (999 before 3.32).
_CHUNK = 500
_DECODE_ERRORS = (msgspec.DecodeError, ValueError, TypeError, RecursionError)

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(BacktestRequest)
_metrics_decoder = msgspec.json.Decoder(Metrics)


class StoredOutcome(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The final outcome of a request, kept until the caller has read it.

    Attributes:
        result: the metrics when it succeeded, else ``None``.
        reason: why it failed (never ``"shutdown"``), ``None`` when it succeeded.
        detail: the outcome's one line for people.
        attempts: how many times it was handed to a service.
    """

    result: Metrics | None
    reason: FailureReason | None
    detail: str
    attempts: Annotated[int, msgspec.Meta(ge=0)]

    @classmethod
    def of(cls, outcome: Outcome) -> StoredOutcome:
        """Return what the store keeps of a final outcome (everything but the request).

        Raises:
            UsageError: the outcome is ``shutdown`` (not final: never stored).
        """
        if outcome.reason == "shutdown":
            raise UsageError(_SHUTDOWN)
        return cls(result=outcome.result, reason=outcome.reason, detail=outcome.detail,
                   attempts=outcome.attempts)  # fmt: skip

    def to_outcome(self, request: BacktestRequest) -> Outcome:
        """Return the :class:`~backtest_queue.outcome.Outcome` to deliver again."""
        return Outcome(request, self.result, self.reason, self.detail, self.attempts)


_SHUTDOWN = (
    "a 'shutdown' outcome is not final and is never stored: the request stays in the "
    "store to be sent again"
)
_T = TypeVar("_T")


def content_key(request: BacktestRequest) -> str:
    """Return a hash of what determines a backtest's result (everything but the id).

    The strategy's ``name`` is a label and is left out too: two requests that differ only
    in names run the same backtest. The dataset's content is not in it: results are
    cached under this key *and* the dataset's fingerprint.
    """
    s = request.strategy
    identity = (
        s.kind, sorted(s.params.items()), s.sl, s.tp, request.data_id, request.start,
        request.end, request.cash, request.commission, request.v,
    )  # fmt: skip
    return hashlib.sha256(_encoder.encode(identity)).hexdigest()


@dataclass(frozen=True, slots=True)
class StoreOp:
    """One write for the store's next transaction (``outcome``, ``result`` and
    ``fingerprint`` are keyword-only).

    Attributes:
        kind: ``"add"`` (a request was accepted: to be sent), ``"outcome"`` (its final
            outcome was decided: to be delivered, no longer sent), ``"ack"`` (the caller
            has read its outcome: forget it) or ``"result"`` (cache a result under the
            request's content and ``fingerprint``).
        request: the request concerned.
        outcome: the final outcome, with ``"outcome"``.
        result: the metrics, with ``"result"``.
        fingerprint: with ``"result"``, the content fingerprint of the dataset the result
            was computed on (as the service reported it). Without one the result is not
            cached: nothing would prove what data it ran on.

    The op is encoded when it is made, so that anything that cannot be stored is
    refused here, in the caller's hands, and never fails a whole batch in ``apply``.

    Raises:
        UsageError: ``"outcome"`` without an outcome or with reason ``"shutdown"`` (a
            request the dispatcher did not finish stays to be sent again),
            ``"result"`` without a result, a ``request`` that is not a
            :class:`~backtest_queue.protocol.BacktestRequest`, or one that cannot be
            encoded (e.g. text with a lone surrogate).
    """

    kind: Literal["add", "outcome", "ack", "result"]
    request: BacktestRequest
    _: KW_ONLY
    outcome: StoredOutcome | None = None
    result: Metrics | None = None
    fingerprint: str | None = None
    #: the row's values, encoded (None: nothing to write)
    _row: tuple[object, ...] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.request, BacktestRequest):
            raise UsageError(f"StoreOp needs a BacktestRequest, got {type(self.request).__name__}")
        rid = self.request.request_id
        try:
            if self.kind == "add":
                row: tuple[object, ...] | None = (rid, _encoder.encode(self.request))
            elif self.kind == "outcome":
                if self.outcome is None:
                    raise UsageError("StoreOp('outcome') needs outcome=StoredOutcome(...)")
                if self.outcome.reason == "shutdown":
                    raise UsageError(_SHUTDOWN)
                row = (_encoder.encode(self.outcome), rid)
            elif self.kind == "ack":
                row = (rid,)
            elif self.kind == "result":
                if self.result is None:
                    raise UsageError("StoreOp('result') needs result=Metrics(...)")
                row = None
                if self.fingerprint is not None:
                    body = _encoder.encode(self.result)
                    row = (content_key(self.request), self.fingerprint, body)
            else:
                raise UsageError(
                    f"StoreOp kind must be add, outcome, ack or result, not {self.kind!r}"
                )
        except (msgspec.EncodeError, UnicodeEncodeError, TypeError, OverflowError) as exc:
            raise UsageError(f"request {rid!r} cannot be stored ({self.kind}): {exc}") from exc
        object.__setattr__(self, "_row", row)


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    """A stored row that could not be decoded or validated, moved to ``quarantine``.

    Attributes:
        source: ``"request"`` (the request row was moved: it is not restored) or
            ``"outcome"`` (only its stored outcome was unreadable: the request itself is
            restored to be sent again).
        key: the row's ``seq`` in ``requests``.
        request_id: the row's request id as stored.
        error: why it could not be decoded.
    """

    source: Literal["request", "outcome"]
    key: int
    request_id: str
    error: str


@dataclass(frozen=True, slots=True)
class Restored:
    """What :meth:`SqliteStore.restore` found for this opener.

    Attributes:
        requests: requests to queue and send again, in submit order.
        outcomes: requests whose outcome was decided but not yet read by the caller
            (no ``"ack"``), with that outcome, in submit order: deliver them again.
        quarantined: rows that could not be decoded, now in the ``quarantine`` table.
    """

    requests: list[BacktestRequest]
    outcomes: list[tuple[BacktestRequest, StoredOutcome]]
    quarantined: list[QuarantinedRow]


class SqliteStore:
    """A SQLite file holding the send queue, undelivered outcomes and cached results.

    Not thread-safe: use one store from one thread at a time (the dispatcher runs every
    call in a worker thread, one at a time).

    Args:
        path: the database file; created with its tables if missing. Next to it the
            store keeps ``<path>.owners/`` (its ownership locks) and SQLite keeps
            ``<path>-wal`` and ``<path>-shm``. It must be on a local file system.
        synchronous: SQLite's ``synchronous`` pragma: ``"NORMAL"`` (survives process
            crashes; default) or ``"FULL"`` (survives power loss, slower).
        shared: allow other openers with ``shared=True`` at the same time: they share
            the result cache and each restores only its own requests (and those of
            openers that are gone). Default: one opener only.
        busy_timeout: how long a call waits for another connection's lock before it
            raises :class:`~backtest_queue.errors.StoreBusy`, in seconds.

    Raises:
        StoreLocked: another live opener has the store (exclusively, or any opener when
            ``shared`` is false); it names the holder.
        StoreBusy: another connection held the database locked for ``busy_timeout``.
        StoreError: the path cannot be opened (a directory, a missing parent directory,
            not a database, a database of another schema or a newer version).
        UsageError: a bad ``synchronous`` or ``busy_timeout``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        shared: bool = False,
        busy_timeout: float = 5.0,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise UsageError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, int | float)
            or not 0 <= busy_timeout < math.inf
        ):
            raise UsageError(f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}")
        self.path = Path(path)
        self.shared = shared
        self.busy_timeout = float(busy_timeout)
        self._name = str(path)
        self._owner = OwnerLock(self.path, shared=shared)
        self._db: sqlite3.Connection | None = None
        try:
            # One connection, used by one thread at a time (the dispatcher serialises calls).
            try:
                self._db = sqlite3.connect(
                    self.path, timeout=self.busy_timeout, isolation_level=None,
                    check_same_thread=False,
                )  # fmt: skip
            except sqlite3.Error as exc:
                raise StoreError(self._name, f"cannot open the database file: {exc}") from exc
            self._call(self._open, synchronous)
        except StoreError:
            self.close()
            self._owner.remove_if_created()  # not a store: leave nothing next to it
            raise
        except BaseException:
            self.close()
            raise

    def set_busy_timeout(self, seconds: float) -> None:
        """Change how long a call waits for another connection's lock, in seconds.

        The dispatcher's writer uses a short one and retries (so a lock is visible in its
        statistics at once), and a long one for its last commit at shutdown.
        """
        if self._db is None:
            raise StoreError(self._name, "the store is closed")
        self.busy_timeout = float(seconds)
        self._db.execute(f"PRAGMA busy_timeout = {max(0, int(seconds * 1000))}")

    def __repr__(self) -> str:
        mode = "shared" if self.shared else "exclusive"
        state = "closed" if self._db is None else mode
        return f"<SqliteStore {self._name!r} {state}>"

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database and give up ownership (idempotent)."""
        try:
            if self._db is not None:
                self._db.close()
        finally:
            self._db = None
            self._owner.release()

    # -- the public calls --------------------------------------------------------

    def restore(self) -> Restored:
        """Take over what this opener should resume, and return it.

        Adopts the requests of openers that are gone (all of them without ``shared``),
        moves undecodable rows to ``quarantine``, and returns the requests to send again
        and the outcomes to deliver again. Calling it again returns what this opener
        owns at that time.

        Raises:
            StoreBusy: the database stayed locked for ``busy_timeout``; nothing changed.
            StoreError: SQLite failed (I/O error, disk full).
        """
        return self._call(self._restore)

    def cached_results(
        self, requests: Iterable[BacktestRequest], fingerprints: Mapping[str, str]
    ) -> dict[str, Metrics]:
        """Return the cached results of those requests that have one, by request id.

        Args:
            requests: the requests to look up (by content, not id).
            fingerprints: the current content fingerprint of each dataset, by
                ``data_id``. A result is returned only if it was computed on data with
                the same fingerprint; a request whose ``data_id`` is missing here misses.

        Raises:
            StoreBusy: the database stayed locked for ``busy_timeout``.
            StoreError: SQLite failed.
        """
        return self._call(self._cached_results, requests, fingerprints)

    def apply(self, ops: Iterable[StoreOp]) -> int:
        """Apply a batch of writes in one transaction, in order; return how many were written.

        Adding a request id that is already stored keeps the first one (a restart
        re-submitting what it restored is not an error). ``"outcome"`` and ``"ack"``
        touch only this opener's rows. A ``"result"`` without fingerprint is skipped
        (not counted).

        Raises:
            StoreBusy: another connection held the write lock for ``busy_timeout``;
                nothing of the batch was applied (keep it and retry).
            StoreError: SQLite failed; nothing of the batch was applied.
        """
        return self._call(self._apply, list(ops))

    # -- internals -----------------------------------------------------------------

    def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run one public call, translating SQLite's errors into ours."""
        if self._db is None:
            raise StoreError(self._name, "the store is closed")
        started = time.monotonic()
        try:
            return fn(self._db, *args)
        except sqlite3.OperationalError as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise StoreBusy(self._name, time.monotonic() - started) from exc
            raise StoreError(self._name, str(exc)) from exc
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreError(self._name, str(exc)) from exc
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _open(self, db: sqlite3.Connection, synchronous: str) -> None:
        db.execute(f"PRAGMA synchronous={synchronous}")  # this connection's only
        with _transaction(db):  # DDL is transactional: a migration is all or nothing
            (version,) = db.execute("PRAGMA user_version").fetchone()
            tables = _tables(db)
            if version == 0 and not tables:
                for statement in (*_NEW_REQUESTS, *_TABLES):
                    db.execute(statement)
            elif version == 0 and tables == _COLUMNS_0_1:
                (dropped,) = db.execute("SELECT count(*) FROM results").fetchone()
                for statement in (*_FROM_0_1, *_TABLES):
                    db.execute(statement)
                log.info("store %s: migrated from version 0.1, dropped %d cached results "
                         "that had no dataset fingerprint", self._name, dropped)  # fmt: skip
            elif version > SCHEMA_VERSION:
                raise StoreError(self._name, (
                    f"schema version {version} was written by a newer backtest-queue; "
                    f"this version reads {SCHEMA_VERSION}"
                ))  # fmt: skip
            elif version != SCHEMA_VERSION or tables != _COLUMNS:
                raise StoreError(self._name, (
                    f"not a backtest-queue store (schema version {version}, tables "
                    f"{sorted(tables)}); give a new file or a store made by backtest-queue"
                ))  # fmt: skip
        # Only now that it is known to be ours: WAL is a property of the file.
        db.execute("PRAGMA journal_mode=WAL")

    def _restore(self, db: sqlite3.Connection) -> Restored:
        me = self._owner.token
        requests: list[BacktestRequest] = []
        outcomes: list[tuple[BacktestRequest, StoredOutcome]] = []
        quarantined: list[QuarantinedRow] = []
        with _transaction(db):
            owners = {o for (o,) in db.execute("SELECT DISTINCT owner FROM requests")}
            dead = self._owner.dead(owners)
            if None in dead:
                db.execute("UPDATE requests SET owner = ? WHERE owner IS NULL", (me,))
            db.executemany(
                "UPDATE requests SET owner = ? WHERE owner = ?", [(me, o) for o in dead if o]
            )
            rows = db.execute(
                "SELECT seq, request_id, body, outcome FROM requests WHERE owner = ? ORDER BY seq",
                (me,),
            ).fetchall()
            for seq, rid, body, stored in rows:
                try:
                    request = _request_decoder.decode(body)
                except _DECODE_ERRORS as exc:
                    quarantined.append(self._quarantine(db, "request", seq, rid, body, exc))
                    db.execute("DELETE FROM requests WHERE seq = ?", (seq,))
                    continue
                if stored is None:
                    requests.append(request)
                    continue
                try:
                    outcomes.append((request, _outcome_decoder.decode(stored)))
                except _DECODE_ERRORS as exc:  # the request is good: send it again
                    quarantined.append(self._quarantine(db, "outcome", seq, rid, stored, exc))
                    db.execute("UPDATE requests SET outcome = NULL WHERE seq = ?", (seq,))
                    requests.append(request)
        return Restored(requests, outcomes, quarantined)

    def _quarantine(
        self, db: sqlite3.Connection, source: Literal["request", "outcome"], seq: int,
        rid: object, body: object, exc: BaseException,
    ) -> QuarantinedRow:  # fmt: skip
        error = f"{type(exc).__name__}: {exc}"
        db.execute(
            "INSERT INTO quarantine (source, row_key, request_id, body, error, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (source, str(seq), str(rid), body, error, time.time()),
        )
        log.warning("store %s: row %d (%s %r) could not be decoded and was quarantined: %s",
                    self._name, seq, source, rid, error)  # fmt: skip
        return QuarantinedRow(source, seq, str(rid), error)

    def _cached_results(
        self,
        db: sqlite3.Connection,
        requests: Iterable[BacktestRequest],
        fingerprints: Mapping[str, str],
    ) -> dict[str, Metrics]:
        wanted: dict[tuple[str, str], list[str]] = {}
        for request in requests:
            fingerprint = fingerprints.get(request.data_id)
            if fingerprint is not None:
                key = (content_key(request), fingerprint)
                wanted.setdefault(key, []).append(request.request_id)
        out: dict[str, Metrics] = {}
        keys = list({ck for ck, _ in wanted})
        for i in range(0, len(keys), _CHUNK):  # the primary key's index, not a scan
            chunk = keys[i : i + _CHUNK]
            rows = db.execute(
                "SELECT content_key, fingerprint, body FROM results "
                f"WHERE content_key IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for ck, fp, body in rows:
                if (ck, fp) not in wanted:
                    continue  # computed on other data
                try:
                    metrics = _metrics_decoder.decode(body)
                except _DECODE_ERRORS as exc:  # a miss; the next result replaces it
                    log.warning("store %s: cached result %s could not be decoded, ignored: %s",
                                self._name, ck, exc)  # fmt: skip
                    continue
                for rid in wanted[(ck, fp)]:
                    out[rid] = metrics
        return out

    def _apply(self, db: sqlite3.Connection, ops: list[StoreOp]) -> int:
        me = self._owner.token
        written = 0
        with _transaction(db):
            for kind, run in groupby(ops, key=lambda op: op.kind):  # in order, runs of a kind
                rows = [op._row for op in run if op._row is not None]  # encoded when made
                if kind == "result":
                    db.executemany(_RESULT_SQL, rows)
                else:
                    db.executemany(_SQL[kind], [(*row, me) for row in rows])
                written += len(rows)
        return written


_outcome_decoder = msgspec.json.Decoder(StoredOutcome)
#: What each op writes: its row's values, then (but for results) this opener's token.
_SQL = {
    "add": "INSERT OR IGNORE INTO requests (request_id, body, owner) VALUES (?, ?, ?)",
    "outcome": "UPDATE requests SET outcome = ? WHERE request_id = ? AND owner = ?",
    "ack": "DELETE FROM requests WHERE request_id = ? AND owner = ?",
}
_RESULT_SQL = "INSERT OR REPLACE INTO results (content_key, fingerprint, body) VALUES (?, ?, ?)"


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception.

    ``IMMEDIATE`` takes the write lock first (waiting up to the busy timeout), so a
    transaction never fails half way for want of the lock.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:
            self.db.execute("ROLLBACK")


def _tables(db: sqlite3.Connection) -> dict[str, list[str]]:
    names = [n for (n,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )]  # fmt: skip
    return {n: [row[1] for row in db.execute(f"PRAGMA table_info({n!r})")] for n in names}
