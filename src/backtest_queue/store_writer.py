"""Runs a :class:`~backtest_queue.store.SqliteStore` beside the event loop: group commit.

Every write goes into one list of operations; a writer task takes everything in it,
applies it in one transaction in a worker thread, and only then removes what it
committed. So an operation is either committed or still in the list, whatever
cancellation does and wherever it lands (a write made before the dispatcher's block ends
is committed by :meth:`StoreWriter.close`, synchronously, at exit).

Writes come in two kinds:

* bookkeeping (an outcome decided, an outcome received, a result cached):
  :meth:`StoreWriter.write_nowait`, retried until committed;
* a ``submit``'s requests: :meth:`StoreWriter.add` returns a :class:`Ticket`, and
  :meth:`StoreWriter.committed` waits for it. If the wait ends without a commit
  (cancelled, or the store stayed locked past ``timeout``) the ticket is withdrawn: its
  operations leave the list, or, if a transaction already committed them, the caller is
  told so (:attr:`Ticket.state` ``"committed"``) and must undo them. Either way the
  ``submit`` accepted nothing.

A store locked by another connection (:class:`~backtest_queue.errors.StoreBusy`) is
waited out: the batch stays, the writer retries every ``retry_interval`` seconds, logs
the wait (rate-limited) and counts it in :attr:`StoreWriter.busy_waits`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal

import anyio
import anyio.abc
import anyio.to_thread

from .errors import StoreBusy
from .protocol import BacktestRequest, Metrics
from .store import SqliteStore, StoreOp

__all__ = ["StoreWriter", "Ticket"]

log = logging.getLogger("backtest_queue")

_LOG_EVERY: Final = 10.0  # seconds between "store is locked" lines
_CLOSE_BUSY_TIMEOUT: Final = 5.0  # seconds the last commit at shutdown waits for a lock


class Ticket:
    """A batch of a ``submit``'s writes. ``state``: ``"waiting"`` (in the list, not in a
    transaction), ``"writing"`` (in a running transaction), ``"committed"``,
    ``"withdrawn"``."""

    __slots__ = ("done", "ops", "state")

    def __init__(self, ops: list[StoreOp]) -> None:
        self.ops = ops
        self.state: Literal["waiting", "writing", "committed", "withdrawn"] = "waiting"
        self.done = anyio.Event()


class StoreWriter:
    """Group commit for one store, from one event loop.

    Args:
        store: the open store (this writer closes it).
        retry_interval: seconds between attempts while the store is locked.
    """

    def __init__(self, store: SqliteStore, *, retry_interval: float = 0.25) -> None:
        self.store = store
        self._retry_interval = retry_interval
        self._ops: list[tuple[StoreOp, Ticket | None]] = []
        self._wake = anyio.Event()
        self._txn_done = anyio.Event()
        self._writing: list[Ticket] = []
        self._lock = anyio.Lock()  # one thread touches the connection at a time
        self.commits = 0
        self.busy_waits = 0
        self.busy_since: float | None = None
        self._last_busy_log = -math.inf
        self._closed = False

    def __repr__(self) -> str:
        return f"<StoreWriter {self.store!r} waiting={len(self._ops)} commits={self.commits}>"

    async def cached_results(
        self, requests: Sequence[BacktestRequest], fingerprints: Mapping[str, str]
    ) -> dict[str, Metrics]:
        """Look requests up in the result cache, in one thread call.

        Results queued by :meth:`write_nowait` and not committed yet are committed first
        (unless the store is locked), so a result already delivered is a hit.

        Cancellable until the thread starts; once it runs it is waited for (a thread is
        never abandoned holding the connection).
        """
        async with self._lock:
            if any(op.kind == "result" for op, _ in self._ops):
                await self._commit_some()
            return await anyio.to_thread.run_sync(self.store.cached_results, requests, fingerprints)

    def write_nowait(self, ops: Iterable[StoreOp]) -> None:
        """Queue bookkeeping writes for the next transaction (retried until committed)."""
        self._ops.extend((op, None) for op in ops)
        self._wake.set()

    def add(self, ops: Iterable[StoreOp]) -> Ticket:
        """Queue a submit's writes; wait for them with :meth:`committed`."""
        ticket = Ticket(list(ops))
        self._ops.extend((op, ticket) for op in ticket.ops)
        self._wake.set()
        return ticket

    async def committed(self, ticket: Ticket, *, lock_wait: float) -> bool:
        """Wait until the ticket's writes are committed.

        Returns:
            ``True`` when committed; ``False`` when the writer closed first (the ticket
            was withdrawn: nothing of it is written).

        Raises:
            StoreBusy: still not committed after ``lock_wait`` seconds (the store is locked
                by another connection); the ticket was withdrawn.
            BaseException: a cancellation, after withdrawing the ticket; if a transaction
                had already committed it, :attr:`Ticket.state` is ``"committed"`` and the
                caller must undo it.
        """
        try:
            with anyio.move_on_after(lock_wait):
                await ticket.done.wait()
        except BaseException:
            await self._withdraw(ticket)
            raise
        if ticket.state != "committed":
            await self._withdraw(ticket)
        if ticket.state == "committed":  # (maybe while we withdrew: then keep it)
            return True
        if self._closed:
            return False
        raise StoreBusy(str(self.store.path), lock_wait)

    async def _withdraw(self, ticket: Ticket) -> None:
        if ticket.state == "writing":  # a transaction holds it: wait for its end
            with anyio.CancelScope(shield=True):
                while ticket.state == "writing":
                    await self._txn_done.wait()
        if ticket.state == "waiting":
            ticket.state = "withdrawn"
            self._ops = [(op, t) for op, t in self._ops if t is not ticket]
            ticket.done.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Commit what is queued, batch after batch, until cancelled."""
        task_status.started()
        while True:
            if not self._ops:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            async with self._lock:
                ok = await self._commit_some()
            if not ok:
                with anyio.move_on_after(self._retry_interval):
                    await anyio.sleep_forever()

    async def _commit_some(self) -> bool:
        """One transaction over everything queued; ``False`` if the store was busy."""
        taken = len(self._ops)
        batch = [op for op, _ in self._ops[:taken]]
        tickets = {id(t): t for _, t in self._ops[:taken] if t is not None}
        for ticket in tickets.values():
            ticket.state = "writing"
        self._txn_done = anyio.Event()
        try:
            # Not abandoned on cancel: the thread's outcome decides what is committed.
            await anyio.to_thread.run_sync(self.store.apply, batch)
        except StoreBusy as exc:
            self._busy(exc)
            return False
        finally:
            for ticket in tickets.values():
                if ticket.state == "writing":
                    ticket.state = "waiting"
            self._txn_done.set()
        del self._ops[:taken]  # synchronously after the commit: never lost, never twice
        for ticket in tickets.values():
            ticket.state = "committed"
            ticket.done.set()
        self.commits += 1
        if self.busy_since is not None:
            log.info("the store %s is writable again after %.1f s", self.store.path,
                     anyio.current_time() - self.busy_since)  # fmt: skip
            self.busy_since = None
        return True

    def _busy(self, exc: StoreBusy) -> None:
        now = anyio.current_time()
        self.busy_waits += 1
        if self.busy_since is None:
            self.busy_since = now
        if now - self._last_busy_log >= _LOG_EVERY:
            self._last_busy_log = now
            log.warning("%s; %d writes wait, retrying every %g s", exc, len(self._ops),
                        self._retry_interval)  # fmt: skip

    def close(self) -> None:
        """Commit what is left (synchronously: at shutdown) and close the database.

        Tickets still waiting are withdrawn first: their ``submit`` did not return, so
        it accepted nothing. A store still locked after its own busy timeout loses the
        remaining bookkeeping writes, and says so in the log.
        """
        if self._closed:
            return
        self._closed = True
        try:
            for _, ticket in self._ops:
                if ticket is not None and ticket.state == "waiting":
                    ticket.state = "withdrawn"
                    ticket.done.set()
            ops = [op for op, t in self._ops if t is None or t.state != "withdrawn"]
            self._ops = []
            if ops:
                try:
                    self.store.set_busy_timeout(_CLOSE_BUSY_TIMEOUT)
                    self.store.apply(ops)
                except StoreBusy as exc:
                    log.error("%s: %d writes made at shutdown were not committed (requests "
                              "may be re-sent, outcomes delivered again, by the next run)",
                              exc, len(ops))  # fmt: skip
        finally:
            self.store.close()
