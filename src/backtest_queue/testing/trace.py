"""A trace of what dispatchers did on a :class:`MemoryNetwork`, and the guarantees checked
over it.

:class:`TraceRecorder` is a :class:`~backtest_queue.testing.NetworkObserver`: add it to
``network.observers``, :meth:`~TraceRecorder.register` each dispatcher once it is open,
and it records every hand-over (with how many requests were in flight then, in all and
per service), every connect, every ``maybe_flush`` call, and each dispatcher's queue at
close. :func:`check_trace` then checks the recorded :class:`Trace` against
:class:`Limits` and returns the :class:`Violation` s, each naming its invariant:

``one-outcome``
    every request handed out (``asked``) was told back exactly once: none lost, none
    twice, none unknown;
``no-pending-leak``
    nothing was queued or pending when a dispatcher closed (no ``shutdown`` outcomes);
``in-flight``
    requests in flight over all dispatchers never above ``max_pending``, nor on one
    service above its ``per_service`` limit (its credit);
``rate``
    hand-overs in any window ``[t1, t2]`` never above ``burst + rate * (t2 - t1)``;
``flush-after-connect``
    when a service came up while a dispatcher had requests queued and was not
    throttled, it tried to send within ``clock_slack`` seconds;
``maybe-flush``
    (with ``require_maybe_flush``) each cycle of the loop, from one ``ask`` to the next,
    called ``maybe_flush`` at least once (the per-cycle contract of the design).

The checks are pure functions of the trace (no clock, no I/O): a user's own test can
record a run and call :func:`check_trace` on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..errors import UsageError
from ..outcome import Outcome
from ..protocol import BacktestRequest
from ..transport import Requester

if TYPE_CHECKING:
    from ..dispatcher import Dispatcher

__all__ = [
    "Asked",
    "Closed",
    "Connected",
    "Event",
    "Handover",
    "Limits",
    "MaybeFlushed",
    "SendTried",
    "Told",
    "Trace",
    "TraceRecorder",
    "Violation",
    "check_trace",
]

#: Relative slack on the rate check (the token bucket rounds to 1e-9 of a token).
RATE_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What the run must stay within, over all its dispatchers together.

    Attributes:
        max_pending: most requests in flight at once (``None``: unchecked).
        rate: most hand-overs per second (``None``: unchecked).
        burst: token-bucket size in requests (default ``max(1, rate)``).
        per_service: endpoint -> most requests in flight on that service at once (its
            credit); endpoints not named are unchecked.
        clock_slack: seconds of timing tolerance: a flush may come this late after a
            connect event, and hand-over times may be off by this much (the dispatcher
            reads the clock before it sends). 0 in virtual time; some on a real clock.
        require_maybe_flush: check that each cycle calls ``maybe_flush``.
    """

    max_pending: int | None = None
    rate: float | None = None
    burst: float | None = None
    per_service: Mapping[str, int] = field(default_factory=dict)
    clock_slack: float = 0.0
    require_maybe_flush: bool = False

    @property
    def bucket(self) -> float | None:
        """The effective burst (``None`` without a rate)."""
        if self.rate is None:
            return None
        return self.burst if self.burst is not None else max(1.0, self.rate)


@dataclass(frozen=True, slots=True)
class Handover:
    """A request handed to a service; in flight counts right after it, and the service's
    own limit then (from the recorder's ``service_limit``, e.g. its credit)."""

    at: float
    dispatcher: int
    endpoint: str
    request_id: str
    in_flight: int
    in_flight_on_service: int
    service_limit: int | None = None


@dataclass(frozen=True, slots=True)
class SendTried:
    """A dispatcher tried to send (``handed`` went; 0: the send would block)."""

    at: float
    dispatcher: int
    endpoint: str
    handed: int


@dataclass(frozen=True, slots=True)
class Connected:
    """A dispatcher was told ``endpoint`` came up; its queue then."""

    at: float
    dispatcher: int
    endpoint: str
    queued: int
    throttled: Literal["pending", "rate"] | None


@dataclass(frozen=True, slots=True)
class MaybeFlushed:
    at: float
    dispatcher: int


@dataclass(frozen=True, slots=True)
class Asked:
    """The loop asked for its next cycle and got ``request_ids`` (empty: the end)."""

    at: float
    request_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Told:
    """The loop told an outcome back."""

    at: float
    request_id: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class Closed:
    """A dispatcher's block ended with this much still queued and pending."""

    at: float
    dispatcher: int
    queued: int
    pending: int


Event = Handover | SendTried | Connected | MaybeFlushed | Asked | Told | Closed


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken guarantee: which (``invariant``), when, and what happened."""

    invariant: str
    at: float
    detail: str

    def __str__(self) -> str:
        return f"[{self.invariant}] at t={self.at:.6g}: {self.detail}"


@dataclass(slots=True)
class Trace:
    """Events in the order they happened; ``opened``: how many dispatchers were
    registered."""

    events: list[Event] = field(default_factory=list)
    opened: int = 0


class TraceRecorder:
    """Records a :class:`Trace` from a network's callbacks and the dispatchers it is given.

    Args:
        clock: what ``at`` is read from for events the network does not time (asks,
            tells, closes); pass ``anyio.current_time``.
        service_limit: endpoint -> the most requests that service may hold *now* (e.g.
            the credit it advertised), read at each hand-over and checked like
            ``Limits.per_service`` (``None`` for an endpoint: unchecked).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        service_limit: Callable[[str], int | None] | None = None,
    ) -> None:
        self.trace = Trace()
        self._clock = clock
        self._service_limit = service_limit
        self._dispatchers: list[Dispatcher] = []
        self._open: set[int] = set()
        self._owner: dict[int, int] = {}  # id(requester) -> dispatcher index
        # endpoint -> (dispatcher index, request id) handed there and maybe still pending
        self._holding: dict[str, set[tuple[int, str]]] = {}

    def register(self, dispatcher: Dispatcher) -> int:
        """Start watching an open dispatcher; returns its index in the trace.

        Its ``maybe_flush`` calls are recorded from now on (the instance's method is
        wrapped).
        """
        index = len(self._dispatchers)
        self._dispatchers.append(dispatcher)
        self._open.add(index)
        self.trace.opened += 1
        for requester in dispatcher._sockets.values():
            self._owner[id(requester)] = index
        original = dispatcher.maybe_flush

        def maybe_flush() -> int:
            self.trace.events.append(MaybeFlushed(self._clock(), index))
            return original()

        setattr(dispatcher, "maybe_flush", maybe_flush)  # noqa: B010 (a method, wrapped)
        return index

    def closing(self, dispatcher: Dispatcher) -> None:
        """Record the dispatcher's queue as its block ends (call before it closes)."""
        index = self._index(dispatcher)
        q = dispatcher.queue
        self.trace.events.append(Closed(self._clock(), index, q.queued, q.pending))
        self._open.discard(index)

    def asked(self, requests: list[BacktestRequest]) -> None:
        """Record a cycle handed to the loop."""
        ids = tuple(r.request_id for r in requests)
        self.trace.events.append(Asked(self._clock(), ids))

    def told(self, outcome: Outcome) -> None:
        """Record an outcome the loop told back."""
        self.trace.events.append(Told(self._clock(), outcome.request_id, outcome.reason))

    def _index(self, dispatcher: Dispatcher) -> int:
        for index, known in enumerate(self._dispatchers):
            if known is dispatcher:
                return index
        raise UsageError("this dispatcher was never registered with the recorder")

    # -- NetworkObserver ----------------------------------------------------------

    def on_send(
        self, requester: Requester, endpoint: str, requests: list[BacktestRequest], now: float
    ) -> None:
        index = self._owner.get(id(requester), -1)
        events = self.trace.events
        events.append(SendTried(now, index, endpoint, len(requests)))
        if not requests:
            return
        holding = self._holding.setdefault(endpoint, set())
        holding.update((index, r.request_id) for r in requests)
        for key in list(holding):
            owner, rid = key
            if owner < 0 or self._dispatchers[owner].queue.connection_of(rid) != endpoint:
                holding.discard(key)
        total = sum(self._dispatchers[i].queue.pending for i in self._open)
        on_service = len(holding)
        cap = self._service_limit(endpoint) if self._service_limit is not None else None
        for r in requests:
            events.append(Handover(now, index, endpoint, r.request_id, total, on_service, cap))

    def on_event(
        self,
        requester: Requester,
        endpoint: str,
        kind: Literal["up", "down", "refused"],
        now: float,
    ) -> None:
        index = self._owner.get(id(requester))
        if kind != "up" or index is None or index not in self._open:
            return
        q = self._dispatchers[index].queue
        throttled = q.throttle(now).reason
        self.trace.events.append(Connected(now, index, endpoint, q.queued, throttled))


def check_trace(trace: Trace, limits: Limits) -> list[Violation]:
    """Check every invariant (see the module docs) over ``trace``; return what broke,
    earliest first within each invariant."""
    found: list[Violation] = []
    found += _one_outcome(trace)
    found += _no_pending_leak(trace)
    found += _in_flight(trace, limits)
    found += _rate(trace, limits)
    found += _flush_after_connect(trace, limits)
    if limits.require_maybe_flush:
        found += _maybe_flush(trace)
    return found


def _one_outcome(trace: Trace) -> list[Violation]:
    asked: dict[str, float] = {}
    for e in trace.events:
        if isinstance(e, Asked):
            for rid in e.request_ids:
                asked.setdefault(rid, e.at)
    told = Counter[str]()
    out: list[Violation] = []
    for e in trace.events:
        if isinstance(e, Told):
            told[e.request_id] += 1
            if e.request_id not in asked:
                out.append(Violation("one-outcome", e.at, f"told {e.request_id!r}, never asked"))
            elif told[e.request_id] == 2:
                out.append(Violation("one-outcome", e.at, f"{e.request_id!r} told twice"))
    lost = [rid for rid in asked if told[rid] == 0]
    if lost:
        shown = ", ".join(map(repr, lost[:5])) + (" ..." if len(lost) > 5 else "")
        out.append(
            Violation(
                "one-outcome",
                asked[lost[0]],
                f"{len(lost)} request(s) never told an outcome: {shown}",
            )
        )
    return out


def _no_pending_leak(trace: Trace) -> list[Violation]:
    out: list[Violation] = []
    closed = 0
    for e in trace.events:
        if isinstance(e, Closed):
            closed += 1
            if e.queued or e.pending:
                out.append(
                    Violation(
                        "no-pending-leak",
                        e.at,
                        f"dispatcher {e.dispatcher} closed with {e.queued} queued and {e.pending} "
                        "pending (they get 'shutdown' outcomes: a wait was forgotten?)",
                    )
                )
    if closed < trace.opened:
        at = trace.events[-1].at if trace.events else 0.0
        out.append(
            Violation(
                "no-pending-leak", at, f"{trace.opened - closed} dispatcher(s) never seen closing"
            )
        )
    return out


def _in_flight(trace: Trace, limits: Limits) -> list[Violation]:
    out: list[Violation] = []
    for e in trace.events:
        if not isinstance(e, Handover):
            continue
        if limits.max_pending is not None and e.in_flight > limits.max_pending:
            out.append(
                Violation(
                    "in-flight",
                    e.at,
                    f"{e.in_flight} requests in flight after {e.request_id!r} "
                    f"went to {e.endpoint} (max_pending {limits.max_pending})",
                )
            )
            break
        cap = e.service_limit if e.service_limit is not None else limits.per_service.get(e.endpoint)
        if cap is not None and e.in_flight_on_service > cap:
            out.append(
                Violation(
                    "in-flight",
                    e.at,
                    f"{e.in_flight_on_service} requests in flight on {e.endpoint} "
                    f"(its limit is {cap})",
                )
            )
            break
    return out


def _rate(trace: Trace, limits: Limits) -> list[Violation]:
    bucket = limits.bucket
    if limits.rate is None or bucket is None:
        return []
    times = [e.at for e in trace.events if isinstance(e, Handover)]
    times.sort()
    rate = limits.rate
    for j, t2 in enumerate(times):
        for i in range(j + 1):
            allowed = bucket + rate * (t2 - times[i] + limits.clock_slack)
            count = j - i + 1
            if count > allowed * (1 + RATE_TOLERANCE) + RATE_TOLERANCE:
                return [
                    Violation(
                        "rate",
                        t2,
                        f"{count} hand-overs in [{times[i]:.6g}, {t2:.6g}] s; the "
                        f"limit allows {allowed:.6g} (rate {rate}/s, burst {bucket})",
                    )
                ]
    return []


def _flush_after_connect(trace: Trace, limits: Limits) -> list[Violation]:
    out: list[Violation] = []
    events = trace.events
    for n, e in enumerate(events):
        if not isinstance(e, Connected) or not e.queued or e.throttled is not None:
            continue
        until = e.at + limits.clock_slack
        tried = any(
            isinstance(later, SendTried) and later.dispatcher == e.dispatcher
            for later in _until(events, n + 1, until)
        )
        closed = any(
            isinstance(later, Closed) and later.dispatcher == e.dispatcher
            for later in _until(events, n + 1, until)
        )
        if not tried and not closed:
            out.append(
                Violation(
                    "flush-after-connect",
                    e.at,
                    f"dispatcher {e.dispatcher} had {e.queued} queued when "
                    f"{e.endpoint} came up and sent nothing within "
                    f"{limits.clock_slack:g} s",
                )
            )
    return out


def _until(events: list[Event], start: int, until: float) -> list[Event]:
    out: list[Event] = []
    for e in events[start:]:
        if e.at > until:
            break
        out.append(e)
    return out


def _maybe_flush(trace: Trace) -> list[Violation]:
    out: list[Violation] = []
    cycle_at: float | None = None
    flushed = False
    cycle = 0
    for e in trace.events:
        if isinstance(e, Asked):
            if cycle_at is not None and not flushed:
                out.append(
                    Violation(
                        "maybe-flush",
                        cycle_at,
                        f"cycle {cycle} never called maybe_flush (the design's per-cycle contract)",
                    )
                )
            if e.request_ids:
                cycle += 1
                cycle_at, flushed = e.at, False
            else:
                cycle_at = None
        elif isinstance(e, MaybeFlushed):
            flushed = True
    if cycle_at is not None and not flushed:
        out.append(Violation("maybe-flush", cycle_at, f"cycle {cycle} never called maybe_flush"))
    return out
