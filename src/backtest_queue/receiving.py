"""The receiving side of the dispatcher: one receiver task per socket, and every reply
applied to the policy core.

A base class of :class:`~backtest_queue.Dispatcher` (its state is the dispatcher's), as
:mod:`backtest_queue.sending` is:

* each **receiver** reads the replies of one socket for as long as the dispatcher lives
  (a receive is never timed out, so it can never swallow a message) and pauses while
  unread outcomes fill the book (backpressure, :mod:`backtest_queue.delivery`);
* replies a send of ours finds waiting are read in the sender's turn
  (:meth:`_Receiving._read_now` as the socket's ``on_readable``);
* **reading in bursts**: while the caller has unread outcomes to go on with and nothing
  waits on a reply (:meth:`_Receiving._may_defer_reading`), the receivers leave replies
  in the socket, for ``_DEFER_READ_MAX`` seconds at most, and read them in one burst
  when the caller takes its last unread outcome. Meanwhile nobody waits on the FD, so a
  send needs no ``ZMQ_EVENTS`` read after it and libzmq's I/O thread need not signal
  the FD for each reply (issue 14: row 4's requester CPU per message down by about a
  third). What needs a reply sooner ends a burst (:meth:`OutcomeBook.read_soon`): a
  ``wait`` or ``wait_idle`` that starts, a request left queued, a service coming up (its
  PONG). Every reply waiting is read before a deadline expires, a disconnect is applied
  and at the close; when the bound runs out; and in a burst when the caller takes its
  last unread outcome (:meth:`_Receiving._read_on_drain`, in that caller's turn) or the
  flusher sends a ``submit_nowait`` batch. ``docs/concurrency.md`` ("When replies are
  read") says it for users;
* :mod:`backtest_queue.replies` decides what each reply means.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Final

import anyio
import anyio.abc

from ._ratelog import RateLimitedLog
from .errors import TransportError
from .outcome import Outcome
from .replies import apply_reply
from .sending import _Sending
from .transport import ReadsInTurn

__all__: list[str] = []

log = logging.getLogger("backtest_queue")

#: Most replies applied in one turn. Small enough that, under load, the caller and the
#: flusher run between turns and hand replacements to the service while the rest of a
#: burst waits in the socket (the two sides then work at once instead of in turns; row
#: 4d: +10 % on trio), large enough that the turn's own cost (a scheduler pass) is
#: shared by many replies.
_RECEIVE_BATCH: Final = 32
#: Longest a receiver leaves replies unread (seconds) while the caller has unread
#: outcomes to go on with (see _Receiving._receiver): a bound, not a wait; the caller
#: taking its last outcome ends it sooner.
_DEFER_READ_MAX: Final = 0.005


class _Receiving(_Sending):
    """The receivers and the reply path (mixed into the dispatcher)."""

    _closed: bool
    _applying: bool  # inside _read_now (replies are applied one batch at a time)
    _idle_waiters: int
    _max_message_bytes: int
    _invalid_replies: int
    _errors_without_id: int
    _bad_reply_log: RateLimitedLog
    _fingerprints: dict[str, str]  # data_id -> the services' data fingerprint

    def _deliver(
        self, outcome: Outcome, *, stored: bool = True, fingerprint: str | None = None
    ) -> None:
        raise NotImplementedError

    async def _receiver(
        self,
        endpoint: str,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read replies from one socket for as long as the dispatcher lives; pause while
        unread outcomes fill the book (backpressure).

        Replies are read as they come, except while :meth:`_may_defer_reading`: then
        they wait in the socket, for ``_DEFER_READ_MAX`` seconds at most, until the
        caller takes its last unread outcome (or :meth:`OutcomeBook.read_soon`), and
        are read in one burst (``docs/concurrency.md``, "When replies are read")."""
        sock = self._sockets[endpoint]
        book = self._book
        if isinstance(sock, ReadsInTurn):  # replies our own sends find: read in turn
            sock.on_readable = partial(self._read_now, endpoint)
        task_status.started()
        defer = True  # False: a deferral ran out with nothing to read
        try:
            while True:
                await book.wait_for_room()
                if defer and self._may_defer_reading():
                    # Read in bursts: the caller has outcomes to go on with, so the
                    # replies wait in the socket until it takes the last one (or a
                    # moment passes), then come in one read. Nobody waits on the FD
                    # meanwhile, so a send needs no ZMQ_EVENTS read after it, and
                    # libzmq need not signal the FD for each reply.
                    with anyio.move_on_after(_DEFER_READ_MAX) as waited:
                        await book.wait_drained()
                    if not waited.cancelled_caught:
                        self._read_now(endpoint)
                        continue
                    # The bound ran out: read all that waited, not one batch a bound.
                    # Nothing there: no burst is building up; wait on the FD until a
                    # reply comes, not on a timer every few ms (a caller sitting on
                    # outcomes for an hour would cost 720 000 wake-ups, under a
                    # virtual clock as much as a real one).
                    defer = self._drain(endpoint) > 0
                    continue
                defer = True
                # Replies may be read in other tasks' turns while this one waits
                # (_read_now), so the room is counted once it is awake.
                await sock.wait_readable()
                self._read_now(endpoint)
        finally:
            if isinstance(sock, ReadsInTurn):
                sock.on_readable = None

    def _may_defer_reading(self) -> bool:
        """Whether the receivers may leave replies unread for up to
        ``_DEFER_READ_MAX`` seconds: outcomes are unread (the caller has work in hand)
        and nothing waits on a reply: no request is queued (it may wait for a slot or
        credit a reply frees), no task is in ``wait`` or ``wait_idle``, every service
        up has answered its PING (its PONG is a round trip after the connect), and no
        metrics time the replies. What changes one of these while they wait wakes them
        (:meth:`OutcomeBook.read_soon`)."""
        return bool(
            self._book.unread
            and not self._queue.queued
            and not self._book.awaited
            and not self._idle_waiters
            and self._up <= self._ready
            and self.metrics is None
            and not self._closed
        )

    def _read_on_drain(self) -> None:
        """The caller took the last unread outcome while replies were left unread: read
        them in its turn (no receiver's wake-up per burst), and wake the receivers to
        wait on their sockets if none was there. Unless requests are queued
        (``submit_nowait``'s): the flusher, which they kicked, sends them and then reads
        (:meth:`_Sending._flush`), and the caller yields to it with what it has rather
        than run on alone through the next burst while nothing is sent."""
        if self._queue.queued:
            return
        try:
            self._read_burst()
        except TransportError:
            # In the caller's take: the outcome it takes must reach it. The socket's
            # receiver meets the failure too and reports it, as it always has.
            self._book.read_soon()

    def _read_burst(self) -> None:
        """Apply a batch of the replies waiting on each socket, in this task's turn; if
        none was there, wake the receivers to wait on their sockets for the next."""
        for endpoint in self._sockets:
            self._read_now(endpoint)
        if not self._book.unread:
            self._book.read_soon()

    def _drain_all(self) -> None:
        """Apply every reply waiting on every socket (as many as the book takes)."""
        for endpoint in self._sockets:
            self._drain(endpoint)

    def _drain(self, endpoint: str) -> int:
        """Apply every reply waiting on one socket (as many as the book takes)."""
        total = read = self._read_now(endpoint)
        while read == _RECEIVE_BATCH:
            read = self._read_now(endpoint)
            total += read
        return total

    def _read_now(self, endpoint: str) -> int:
        """Apply the replies already waiting on one socket, as many as the outcome
        buffer has room for. The receiver calls it once awake; the socket calls it
        (:attr:`FdSocket.on_readable`) when a send of ours finds replies while the
        receiver waits, so they are applied in the sender's turn: a wake-up of the
        receiver per reply would cost a scheduler pass each. Returns how many it read."""
        room = self._book.room()
        if room <= 0 or self._closed or self._applying:
            # No room: the receiver reads them once there is. Applying: a reply being
            # applied sent something (a PONG's flush) that found these; read now, they
            # would be counted against a room the replies still being applied will
            # take. The socket wakes the receiver for them.
            return 0
        limit = _RECEIVE_BATCH if room > _RECEIVE_BATCH else int(room)
        self._applying = True
        try:
            batch = self._sockets[endpoint].receive_nowait(limit)
            self._apply_replies(endpoint, batch)
        finally:
            self._applying = False
        return len(batch)

    def _apply_replies(self, endpoint: str, batch: list[list[bytes]]) -> None:
        if not batch:
            return
        now = self._clock()
        freed = False
        for frames in batch:
            freed |= self._handle_reply(endpoint, frames, now)
        if freed and self._queue.queued:
            self._kick()

    def _handle_reply(self, endpoint: str, frames: list[bytes], now: float) -> bool:
        """Apply one reply; return whether it released a pending slot."""
        effect = apply_reply(self._queue, endpoint, frames, now, max_bytes=self._max_message_bytes)
        if effect.invalid is not None:
            self._invalid_replies += 1
            self._bad_reply_log.log("invalid_reply", logging.WARNING, "invalid reply from %s: %s",
                                    endpoint, effect.invalid)  # fmt: skip
        elif effect.unreadable is not None:
            self._errors_without_id += 1
            self._bad_reply_log.log("error_without_id", logging.WARNING,
                                    "service %s could not read a request: %s",
                                    endpoint, effect.unreadable)  # fmt: skip
        elif effect.fingerprints is not None:  # a PONG
            self._fingerprints.update(effect.fingerprints)
            self._on_pong(endpoint, effect.credit)
            if endpoint in self._up:
                self._set_ready(endpoint)
        if effect.outcome is not None:
            if effect.fingerprint is not None:
                self._fingerprints[effect.outcome.request.data_id] = effect.fingerprint
            self._deliver(effect.outcome, fingerprint=effect.fingerprint)
        return effect.freed
