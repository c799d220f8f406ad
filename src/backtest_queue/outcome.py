"""What the dispatcher tells its caller: submit states, outcomes and statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .policy import QueueStats
from .protocol import BacktestRequest, Metrics

__all__ = [
    "DispatcherStats",
    "FailureReason",
    "Outcome",
    "SubmitState",
    "result_outcome",
    "submit_state",
]

#: Why a request ended without a result:
#:
#: * ``timeout``: no reply by its deadline on its last attempt;
#: * ``disconnected``: its service disconnected while it was on its last attempt;
#: * ``service_error``: the service answered with an ``ERROR`` reply (see ``detail``),
#:   or declined every attempt as ``unavailable``;
#: * ``shutdown``: the dispatcher closed while it was still queued or pending.
FailureReason = Literal["timeout", "disconnected", "service_error", "shutdown"]

# The per-message builders (result_outcome, submit_state) make an instance of a frozen
# slotted dataclass for about half of what its __init__ costs: object.__new__ of a draft
# class with the same __slots__ and no frozen __setattr__, plain attribute stores (no
# call each), then ``draft.__class__ = TheDataclass`` (Python refuses that unless the two
# layouts are the same). What they return is an ordinary instance of the dataclass.
_new_draft = object.__new__


def _draft_of(cls: type) -> Any:
    """A class with ``cls``'s slots and none of its methods (see ``_new_draft``)."""
    return type(f"_{cls.__name__}Draft", (), {"__slots__": vars(cls)["__slots__"]})


@dataclass(frozen=True, slots=True)
class SubmitState:
    """What :meth:`Dispatcher.submit` did with a request. A frozen dataclass.

    Attributes:
        request_id: the request's id (generated if the request had none).
        state: ``"sent"`` (handed to a service now), ``"queued"``, or ``"cached"`` (a
            durable store already held a result for the same content; its outcome
            follows without a backtest).
        reason: why it is queued: ``"not_connected"`` (no service is up),
            ``"pending"`` (``max_pending`` requests in flight), ``"rate"`` (rate limit),
            ``"backlog"`` (older requests go first, or the socket would block);
            ``None`` when sent.
        queued: requests in the send queue after this submit.
        pending: requests in flight after this submit.
    """

    request_id: str
    state: Literal["sent", "queued", "cached"]
    reason: Literal["not_connected", "pending", "rate", "backlog"] | None
    queued: int
    pending: int


_SubmitStateDraft = _draft_of(SubmitState)


def submit_state(
    request_id: str,
    state: Literal["sent", "queued", "cached"],
    reason: Literal["not_connected", "pending", "rate", "backlog"] | None,
    queued: int,
    pending: int,
) -> SubmitState:
    """``SubmitState(request_id, state, reason, queued, pending)`` built from a draft (see
    ``_new_draft``): one per submit."""
    draft = _new_draft(_SubmitStateDraft)
    draft.request_id = request_id
    draft.state = state
    draft.reason = reason
    draft.queued = queued
    draft.pending = pending
    draft.__class__ = SubmitState
    return draft  # type: ignore[no-any-return]  # (cast() would be a call per submit)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final word on one submitted request: a result or an explicit failure.

    Every submitted request gets exactly one outcome. A frozen dataclass (equality,
    hashing, ``repr``, :func:`dataclasses.replace` as usual).

    Attributes:
        request: the request as submitted.
        result: the backtest's metrics when it succeeded, else ``None``.
        reason: why it failed (see :data:`FailureReason`), ``None`` when it succeeded.
        detail: one line for people: the service's error code and message, or what
            happened ("no reply within 5 s, 3 attempts").
        attempts: how many times it was handed to a service.
    """

    request: BacktestRequest
    result: Metrics | None = None
    reason: FailureReason | None = None
    detail: str = ""
    attempts: int = 0

    @property
    def request_id(self) -> str:
        """The request's id."""
        return self.request.request_id

    @property
    def ok(self) -> bool:
        """Whether the request ended with a result."""
        return self.result is not None

    @property
    def cached(self) -> bool:
        """Whether the result came from a store's result cache: no backtest ran for this
        request (it was never handed to a service, ``attempts == 0``)."""
        return self.result is not None and self.attempts == 0


_OutcomeDraft = _draft_of(Outcome)


def result_outcome(request: BacktestRequest, result: Metrics, attempts: int) -> Outcome:
    """``Outcome(request, result, None, "", attempts)`` built from a draft (see
    ``_new_draft``): the outcome of each result."""
    draft = _new_draft(_OutcomeDraft)
    draft.request = request
    draft.result = result
    draft.reason = None
    draft.detail = ""
    draft.attempts = attempts
    draft.__class__ = Outcome
    return draft  # type: ignore[no-any-return]  # (its class is Outcome now)


@dataclass(frozen=True, slots=True)
class DispatcherStats:
    """A snapshot of a dispatcher.

    Attributes:
        queue: the policy core's counters (queued, pending, sent, results, ...).
        endpoints: every endpoint the dispatcher connects to.
        endpoints_up: the endpoints whose service has completed a handshake.
        outcomes: outcomes delivered (results and failures).
        invalid_replies: replies that broke the protocol (bad JSON, wrong frames, ...).
        error_replies_without_id: ``ERROR`` replies the service could not tie to a request.
        would_block: sends refused with ``EAGAIN`` (high-water mark), put back in the queue.
        handshakes_refused: handshakes that failed (CURVE keys refused, mechanism mismatch).
        unread_outcomes: outcomes delivered that no caller has received yet.
        store_busy_waits: commits that found the store locked by another connection.
        store_busy: whether the store is locked by another connection right now (writes
            wait; ``submit`` raises ``StoreBusy`` after ``store_timeout``).
        closed: whether the dispatcher's block has ended.
    """

    queue: QueueStats
    endpoints: tuple[str, ...]
    endpoints_up: tuple[str, ...]
    outcomes: int
    invalid_replies: int
    error_replies_without_id: int
    would_block: int
    handshakes_refused: int
    unread_outcomes: int = 0
    store_busy_waits: int = 0
    store_busy: bool = False
    closed: bool = False
