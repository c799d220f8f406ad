"""The service's outbox: replies waiting to be sent, held per requester. No I/O.

A ROUTER socket silently drops a reply when the requester's pipe is full (its high-water
mark) or the requester is gone. The service sets ``ZMQ_ROUTER_MANDATORY``, so such a send
fails instead (``EAGAIN`` / ``EHOSTUNREACH``), and the reply comes back here: it is held,
retried on a backoff schedule, and dropped - counted and logged by the caller - once it
has waited ``reply_timeout`` seconds. Replies to one requester leave in order; a stuck
requester does not hold up the others.

Why a schedule and not ``POLLOUT``: on a ROUTER, ``POLLOUT`` means *some* pipe has room,
not the one a held reply needs, so waiting for it would spin whenever another requester
is healthy. Retries start after :attr:`Outbox.retry_first` seconds and double up to
:attr:`Outbox.retry_max`.

The shell (the service's outbox task) calls :meth:`Outbox.put` for new replies,
:meth:`Outbox.due` for the requesters to try now, :meth:`Outbox.sent` /
:meth:`Outbox.blocked` / :meth:`Outbox.failed` with what each send did,
:meth:`Outbox.expire` for the drops, and sleeps until :meth:`Outbox.next_deadline_at`
or a new reply.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Dropped", "Outbox"]


@dataclass(frozen=True, slots=True)
class Dropped:
    """Replies to one requester given up on.

    Attributes:
        peer: the requester's routing id.
        count: how many replies were dropped.
        reason: what the last try to reach ``peer`` found: ``"full"`` (its pipe stayed
            at the high-water mark), ``"gone"`` (it disconnected), ``"behind"`` (the
            reply before these was handed to ZeroMQ: the requester was reachable, the
            service did not get to these in time), ``"new"`` (never tried) or
            ``"overflow"`` (outbox full).
    """

    peer: bytes
    count: int
    reason: str

    def describe(self) -> str:
        """Why the replies were dropped, for a log line."""
        return _REASONS.get(self.reason, "it could not be reached")


_REASONS: dict[str, str] = {
    "full": "its pipe stayed full (it does not read its replies)",
    "gone": "it is not connected",
    "behind": "the service fell behind (the requester was connected and took the reply "
    "before them)",
    "new": "the service never got to send them",
    "overflow": "too many replies were waiting",
}


@dataclass(slots=True)
class _Peer:
    replies: deque[tuple[bytes, float]] = field(default_factory=deque)  # (body, give_up_at)
    retry_at: float = -math.inf
    backoff: float = 0.0
    reason: str = "new"


class Outbox:
    """Replies per requester, each with a deadline; see the module docstring.

    Args:
        reply_timeout: seconds a reply may wait for its requester before it is dropped.
        max_held: most replies held at once; :meth:`put` refuses more.
        retry_first: first retry delay after a failed send, in seconds.
        retry_max: longest retry delay, in seconds.
    """

    def __init__(
        self,
        *,
        reply_timeout: float,
        max_held: int = 10_000,
        retry_first: float = 0.005,
        retry_max: float = 0.2,
    ) -> None:
        self.reply_timeout = reply_timeout
        self.max_held = max_held
        self.retry_first = retry_first
        self.retry_max = retry_max
        self._peers: dict[bytes, _Peer] = {}
        self._held = 0

    def __repr__(self) -> str:
        blocked = sum(1 for p in self._peers.values() if p.backoff)
        return f"<Outbox held={self._held} peers={len(self._peers)} blocked={blocked}>"

    def __len__(self) -> int:
        return self._held

    def put(self, peer: bytes, body: bytes, *, now: float) -> bool:
        """Queue a reply to ``peer``, due at once unless earlier replies to it are held.

        Returns:
            ``False`` (nothing queued) when ``max_held`` replies are already held.
        """
        if self._held >= self.max_held:
            return False
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer(retry_at=now)
        state.replies.append((body, now + self.reply_timeout))
        self._held += 1
        return True

    def due(self, now: float) -> list[bytes]:
        """Requesters whose first reply should be tried now, oldest first."""
        return [peer for peer, state in self._peers.items() if state.retry_at <= now]

    def head(self, peer: bytes) -> bytes | None:
        """The next reply to ``peer``, or ``None``."""
        state = self._peers.get(peer)
        return state.replies[0][0] if state is not None else None

    def sent(self, peer: bytes) -> None:
        """The head reply to ``peer`` was handed to ZeroMQ."""
        self._pop(peer, "behind")

    def failed(self, peer: bytes) -> None:
        """The head reply to ``peer`` can never be sent (the caller counts the drop)."""
        self._pop(peer, "new")

    def _pop(self, peer: bytes, reason: str) -> None:
        state = self._peers[peer]
        state.replies.popleft()
        self._held -= 1
        if state.replies:
            state.backoff = 0.0
            # What the next replies face, if they expire before their own try.
            state.reason = reason
        else:
            del self._peers[peer]

    def blocked(self, peer: bytes, *, gone: bool, now: float) -> bool:
        """The head reply to ``peer`` could not be sent; schedule a retry.

        Args:
            gone: the requester is not connected (``EHOSTUNREACH``), else its pipe is full.

        Returns:
            Whether this starts a new episode (the previous send to it succeeded), so the
            caller can log once per episode, not once per retry.
        """
        state = self._peers[peer]
        first = state.backoff == 0.0
        state.backoff = self.retry_first if first else min(state.backoff * 2, self.retry_max)
        state.retry_at = now + state.backoff
        state.reason = "gone" if gone else "full"
        return first

    def expire(self, now: float) -> list[Dropped]:
        """Drop the replies whose deadline has passed."""
        dropped: list[Dropped] = []
        for peer in list(self._peers):
            state = self._peers[peer]
            count = 0
            while state.replies and state.replies[0][1] <= now:
                state.replies.popleft()
                count += 1
            if count:
                self._held -= count
                dropped.append(Dropped(peer, count, state.reason))
            if not state.replies:
                del self._peers[peer]
        return dropped

    def drop_gone(self) -> list[Dropped]:
        """Drop the replies to requesters that were not connected at the last try."""
        dropped = [
            Dropped(peer, len(state.replies), state.reason)
            for peer, state in self._peers.items()
            if state.reason == "gone"
        ]
        for item in dropped:
            del self._peers[item.peer]
            self._held -= item.count
        return dropped

    def drop_all(self) -> list[Dropped]:
        """Drop everything held (the service is closing)."""
        dropped = [
            Dropped(peer, len(state.replies), state.reason) for peer, state in self._peers.items()
        ]
        self._peers.clear()
        self._held = 0
        return dropped

    def next_deadline_at(self) -> float:
        """When something is next due: a retry or an expiry (``inf`` when empty)."""
        deadline = math.inf
        for state in self._peers.values():
            deadline = min(deadline, state.retry_at, state.replies[0][1])
        return deadline
