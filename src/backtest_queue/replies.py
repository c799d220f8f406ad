"""What one reply from a service means: decoded, checked, and applied to the policy core.

:func:`apply_reply` is the receivers' whole decision, kept apart from the tasks that read
sockets: it decodes the frames (anything a peer sends becomes a counted, explained
invalid reply, never an exception), applies the reply to the
:class:`~backtest_queue.BacktestQueue` and returns a :class:`ReplyEffect` saying what the
dispatcher must do (deliver an outcome, learn fingerprints, count, log). No I/O, no clock.

Each reply decides only the attempt it answers: an error or ``unavailable`` from a
connection the request is no longer pending on is a late reply of an earlier attempt and
changes nothing; a result resolves its request whichever attempt produced it (the first
wins; later ones are counted as duplicates by the policy).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from .errors import ProtocolError
from .outcome import Outcome, result_outcome
from .policy import BacktestQueue
from .protocol import BacktestRequest, BacktestResult, ErrorReply, Pong, decode_message

__all__ = ["ReplyEffect", "apply_reply"]


class ReplyEffect(msgspec.Struct, frozen=True, gc=False):
    """What the dispatcher does with one reply: a frozen ``msgspec`` struct, built in C
    (one per reply; a slotted dataclass's ``__init__`` costs three times as much, a
    frozen one's nine). ``gc=False``: nothing it holds refers back to it.

    Attributes:
        freed: a pending slot was released (the flusher may send more).
        outcome: the outcome to deliver, if the reply decided one.
        fingerprint: the data fingerprint the result was computed on, if it says.
        fingerprints: data_id -> fingerprint from a PONG (not ``None``: it was a PONG).
        credit: the requests in flight the service takes, from a PONG (``None``: it did
            not say).
        invalid: why the reply broke the protocol (count and log it), if it did.
        unreadable: the service's explanation when it could not read a request
            (an ``ERROR`` without ``request_id``).
    """

    freed: bool = False
    outcome: Outcome | None = None
    fingerprint: str | None = None
    fingerprints: Mapping[str, str] | None = None
    credit: int | None = None
    invalid: str | None = None
    unreadable: str | None = None


_NOTHING = ReplyEffect()


def apply_reply(
    queue: BacktestQueue[BacktestRequest],
    endpoint: str,
    frames: list[bytes],
    now: float,
    *,
    max_bytes: int,
) -> ReplyEffect:
    """Decode one reply received on ``endpoint`` at ``now`` (seconds) and apply it.

    Args:
        queue: the policy core.
        endpoint: the connection the reply came from.
        frames: the multipart message as received by the DEALER (``[b"", body]``).
        now: the current monotonic time in seconds.
        max_bytes: the largest body accepted.

    Returns:
        What to do (see :class:`ReplyEffect`). Never raises for anything a peer sends.
    """
    if len(frames) != 2 or frames[0]:
        return ReplyEffect(invalid=f"{len(frames)} frames, expected [b'', body]")
    try:
        message = decode_message(frames[1], max_bytes=max_bytes)
    except ProtocolError as exc:
        return ReplyEffect(invalid=exc.message)
    if type(message) is BacktestResult:  # exact: decoded structs are never subclasses
        resolved = queue.on_result_with_attempts(message.request_id, now, connection=endpoint)
        if resolved is None:
            return _NOTHING  # unknown, or resolved already: the policy counted it
        request, attempts = resolved
        # Positional (freed, outcome, fingerprint): one of these per result.
        return ReplyEffect(
            True, result_outcome(request, message.result, attempts), message.data_fingerprint
        )
    if isinstance(message, ErrorReply):
        return _apply_error(queue, endpoint, message, now)
    if isinstance(message, Pong):
        return ReplyEffect(fingerprints=message.fingerprints, credit=message.credit)
    return ReplyEffect(invalid=f"unexpected {type(message).__name__} message")


def _apply_error(
    queue: BacktestQueue[BacktestRequest], endpoint: str, message: ErrorReply, now: float
) -> ReplyEffect:
    rid = message.request_id
    if rid is None:
        return ReplyEffect(unreadable=f"{message.code}: {message.message}")
    if message.code == "unavailable":  # not run: send it again
        pending_here = queue.connection_of(rid) == endpoint
        failure = queue.retry(rid, now, connection=endpoint)
        if failure is None:  # re-queued (or a late reply: nothing changed)
            return ReplyEffect(freed=pending_here)
        detail = f"unavailable on all {failure.attempts} attempts: {message.message}"
        outcome = Outcome(failure.request, None, "service_error", detail, failure.attempts)
        return ReplyEffect(freed=True, outcome=outcome)
    attempts = queue.attempts_of(rid)
    request = queue.on_error(rid, now, connection=endpoint)
    if request is None:
        return _NOTHING
    detail = f"{message.code}: {message.message}"
    return ReplyEffect(
        freed=True, outcome=Outcome(request, None, "service_error", detail, attempts)
    )
