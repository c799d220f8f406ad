"""A hypothesis state machine that drives *your* submit loop against faulty fake services.

Write your loop as ``async def my_loop(env: LoopEnv) -> None`` - open the dispatcher with
``env.open_dispatcher()``, take each cycle's requests from ``env.ask()`` (an empty list:
done), hand every outcome to ``env.tell()`` - and get a test case::

    TestMyLoop = dispatcher_machine(my_loop).TestCase

Rules build each example's schedule: cycles of requests for the loop, seeded
:class:`~.faults.Faults` on the fake services (one fault per step), service outages. The
machine runs the whole schedule once, in one event loop
(trio under ``MockClock(autojump_threshold=0)``: minutes of virtual time in milliseconds;
or asyncio on the real clock, with every duration scaled by ``time_unit``), and checks
the recorded trace (see :mod:`.trace`). Hypothesis shrinks a failure to the fewest rules
and the mildest faults that still break an invariant, and prints them as a short
schedule. A loop that does not finish within ``run_timeout`` seconds fails too.

Why the schedule runs at teardown: hypothesis's rules are synchronous, the dispatcher is
not; running each example as one ``anyio.run`` keeps a run deterministic under the mock
clock, and lets hypothesis shrink the schedule as plain data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal

import anyio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from ..dispatcher import Dispatcher
from ..lifecycle import open_dispatcher as _open_dispatcher
from ..outcome import Outcome
from ..protocol import BacktestRequest, Strategy
from .faults import Faults, uniform
from .network import MemoryNetwork, echo_result
from .trace import Limits, TraceRecorder, Violation, check_trace

__all__ = ["FAULT_KINDS", "DispatcherMachine", "LoopEnv", "UserLoop", "dispatcher_machine"]

#: The faults the machine's ``fault`` rule adds, one per step (``refuse`` never on the
#: first endpoint: some service must be able to serve, or a correct loop would hang).
FAULT_KINDS: tuple[str, ...] = (
    "latency", "jitter", "drop_request", "drop_reply", "duplicate_reply", "reorder",
    "error", "unavailable", "garbage", "unknown_id", "disconnect_after", "refuse",
)  # fmt: skip
_FAULT_VALUES: dict[str, tuple[float, ...]] = {
    "latency": (0.1, 1.0, 5.0),
    "jitter": (0.5, 3.0),
    "disconnect_after": (1, 3, 5),
    "refuse": (1,),
    "error": (0.25, 0.1),
    "unavailable": (0.25, 0.1),
    "garbage": (0.25, 0.1),
    "unknown_id": (0.25, 0.1),
}
for _kind in FAULT_KINDS:
    _FAULT_VALUES.setdefault(_kind, (1.0, 0.5, 0.1))


def _with_fault(faults: Faults | None, kind: str, value: float, seed: int) -> Faults:
    """``faults`` with one more fault (a repeated kind replaces the earlier value)."""
    base = faults if faults is not None else Faults()
    changes: dict[str, Any] = {"seed": seed}
    if kind == "jitter":
        changes["latency"] = uniform(0.0, value)
    elif kind == "disconnect_after":
        changes["disconnect_after"] = int(value)
    elif kind == "refuse":
        changes["refuse"] = True
    else:
        changes[kind] = value
    return dataclasses.replace(base, **changes)


class LoopEnv:
    """What the machine hands your loop: the network, the limits, an optimizer stand-in.

    Attributes:
        network: the fake services (already bound, faults and all).
        endpoints: their endpoints, to pass to ``open_dispatcher``.
        limits: what the run must stay within (checked over all dispatchers together).
        time_unit: real seconds per second of the machine's story (1 in virtual time).
        settings: the ``open_dispatcher`` keyword arguments the machine uses by default.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        endpoints: tuple[str, ...],
        limits: Limits,
        settings: dict[str, Any],
        cycles: list[int],
        recorder: TraceRecorder,
        time_unit: float,
    ) -> None:
        self.network = network
        self.endpoints = endpoints
        self.limits = limits
        self.settings = settings
        self.time_unit = time_unit
        self._cycles = list(cycles)
        self._recorder = recorder
        self._serial = 0

    def open_dispatcher(self, **overrides: Any) -> AbstractAsyncContextManager[Dispatcher]:
        """:func:`~backtest_queue.open_dispatcher` on the fake network with the machine's
        settings (``overrides`` replace them), watched by the checks."""
        return self._open({**self.settings, **overrides})

    @asynccontextmanager
    async def _open(self, kwargs: dict[str, Any]) -> AsyncIterator[Dispatcher]:
        kwargs.setdefault("network", self.network)
        endpoints = kwargs.pop("endpoints", list(self.endpoints))
        async with _open_dispatcher(endpoints, **kwargs) as dispatcher:
            self._recorder.register(dispatcher)
            try:
                yield dispatcher
            finally:
                self._recorder.closing(dispatcher)

    def ask(self) -> list[BacktestRequest]:
        """The next cycle's requests (fresh ids); ``[]`` once every cycle was handed out."""
        size = self._cycles.pop(0) if self._cycles else 0
        batch = [self._request() for _ in range(size)]
        self._recorder.asked(batch)
        return batch

    def tell(self, outcome: Outcome) -> None:
        """Report an outcome back (as you would tell your optimizer)."""
        self._recorder.told(outcome)

    def _request(self) -> BacktestRequest:
        n = self._serial
        self._serial += 1
        strategy = Strategy(name=f"cand-{n}", kind="sma_cross",
                            params={"fast": 5 + n % 7, "slow": 20 + n % 13})  # fmt: skip
        return BacktestRequest(strategy=strategy, data_id="EURUSD-H1", request_id=f"req-{n:04d}")


#: Your loop, as the machine calls it.
UserLoop = Callable[[LoopEnv], Awaitable[None]]


class DispatcherMachine(RuleBasedStateMachine):
    """The machine :func:`dispatcher_machine` subclasses (its class attributes say what
    to run; the subclass adds the rules ``cycle``, ``fault`` and ``outage``, which call
    :meth:`add_cycle`, :meth:`add_fault`, :meth:`add_outage`). Rules build a schedule;
    :meth:`teardown` runs it and checks the trace."""

    user_loop: UserLoop
    backend: Literal["trio", "asyncio"] = "trio"
    endpoints: tuple[str, ...] = ("svc-a", "svc-b")
    limits: Limits = Limits()
    dispatcher_settings: dict[str, Any] = {}  # noqa: RUF012 (replaced, never mutated)
    time_unit: float = 1.0
    run_timeout: float = 3600.0
    max_cycles: int = 4
    max_cycle_size: int = 6
    service_limit: Callable[[str], int | None] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.faults: dict[str, Faults] = {}
        self.cycles: list[int] = []
        self.outages: list[tuple[str, float, float]] = []

    def add_cycle(self, size: int) -> None:
        """One more cycle of ``size`` requests for the loop (beyond ``max_cycles``: none)."""
        if len(self.cycles) < self.max_cycles:
            self.cycles.append(size)

    def add_fault(self, endpoint: str, kind: str, level: int, seed: int) -> None:
        """One more fault on one service (faults compose; a repeated kind replaces the
        earlier one; ``refuse`` is ignored on the first endpoint)."""
        if kind == "refuse" and endpoint == self.endpoints[0]:
            return
        values = _FAULT_VALUES[kind]
        value = values[min(level, len(values) - 1)]
        self.faults[endpoint] = _with_fault(self.faults.get(endpoint), kind, value, seed)

    def add_outage(self, endpoint: str, at: float, duration: float) -> None:
        """The service on ``endpoint`` is unbound at ``at`` for ``duration`` story seconds."""
        self.outages.append((endpoint, at, duration))

    def teardown(self) -> None:
        if not self.cycles:
            return
        violations = self.run_schedule()
        if violations:
            lines = "\n  ".join(str(v) for v in violations[:10])
            raise AssertionError(f"{len(violations)} invariant(s) broken:\n  {lines}")

    def run_schedule(self) -> list[Violation]:
        """Run the schedule once (a fresh event loop) and return what the checks found."""
        recorder = TraceRecorder(anyio.current_time, service_limit=type(self).service_limit)
        timed_out: list[Violation] = []

        async def main() -> None:
            network = MemoryNetwork()
            network.observers.append(recorder)
            unit = self.time_unit
            faults = {ep: _scaled(f, unit) for ep, f in self.faults.items()}
            down_at_start = {ep for ep, at, _ in self.outages if at == 0.0}
            for endpoint in self.endpoints:
                if endpoint not in down_at_start:
                    network.bind(endpoint, echo_result, faults=faults.get(endpoint))
            env = LoopEnv(network, self.endpoints, _scaled_limits(self.limits, unit),
                          _scaled_settings(self.dispatcher_settings, unit), self.cycles,
                          recorder, unit)  # fmt: skip
            start = anyio.current_time()
            with anyio.move_on_after(self.run_timeout * unit) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_chaos, network, faults, self.outages, start, unit)
                    await type(self).user_loop(env)
                    tg.cancel_scope.cancel()
            if scope.cancelled_caught:
                timed_out.append(Violation("finishes", anyio.current_time() - start,
                                           f"the loop did not finish within {self.run_timeout:g} "
                                           "s (a wait that never returns?)"))  # fmt: skip

        if self.backend == "trio":
            from trio.testing import MockClock

            anyio.run(main, backend="trio",
                      backend_options={"clock": MockClock(autojump_threshold=0)})  # fmt: skip
        else:
            anyio.run(main, backend="asyncio")
        if timed_out:
            return timed_out
        return check_trace(recorder.trace, _scaled_limits(self.limits, self.time_unit))


async def _chaos(
    network: MemoryNetwork,
    faults: dict[str, Faults],
    outages: Sequence[tuple[str, float, float]],
    start: float,
    unit: float,
) -> None:
    """Unbind and rebind services as the outages say (overlapping ones merge)."""
    changes: list[tuple[float, int, str]] = []
    for endpoint, at, duration in outages:
        changes.append((at, 1, endpoint))
        changes.append((at + duration, -1, endpoint))
    changes.sort(key=lambda c: (c[0], -c[1]))
    down: dict[str, int] = {}
    for at, step, endpoint in changes:
        await anyio.sleep_until(start + at * unit)
        before = down.get(endpoint, 0)
        down[endpoint] = before + step
        if before == 0 and step > 0 and endpoint in network.services:
            network.unbind(endpoint)
        elif down[endpoint] == 0 and endpoint not in network.services:
            network.bind(endpoint, echo_result, faults=faults.get(endpoint))


def _scaled(faults: Faults, unit: float) -> Faults:
    if unit == 1.0:
        return faults
    latency = faults.latency
    scaled_latency: Any
    if callable(latency):

        def scaled_latency(rng: Any, draw: Any = latency) -> float:
            return float(draw(rng)) * unit

    else:
        scaled_latency = latency * unit
    return dataclasses.replace(
        faults, latency=scaled_latency, reorder_window=faults.reorder_window * unit,
        reconnect_after=None if faults.reconnect_after is None else faults.reconnect_after * unit,
    )  # fmt: skip


def _scaled_limits(limits: Limits, unit: float) -> Limits:
    if unit == 1.0 or limits.rate is None:
        return limits
    return dataclasses.replace(limits, rate=limits.rate / unit)


_TIMES = ("flush_interval", "result_timeout", "drain_timeout")


def _scaled_settings(settings: dict[str, Any], unit: float) -> dict[str, Any]:
    out = dict(settings)
    for key in _TIMES:
        if key in out and out[key] is not None:
            out[key] = out[key] * unit
    if out.get("rate") is not None:
        out["rate"] = out["rate"] / unit
    return out


def dispatcher_machine(
    user_loop: UserLoop,
    *,
    backend: Literal["trio", "asyncio"] = "trio",
    endpoints: Sequence[str] = ("svc-a", "svc-b"),
    max_pending: int | None = 4,
    rate: float | None = 5.0,
    burst: float | None = None,
    per_service: dict[str, int] | None = None,
    service_limit: Callable[[str], int | None] | None = None,
    flush_interval: float = 1.0,
    result_timeout: float = 5.0,
    max_attempts: int = 3,
    require_maybe_flush: bool = True,
    time_unit: float | None = None,
    clock_slack: float | None = None,
    run_timeout: float = 3600.0,
    max_cycles: int = 4,
    max_cycle_size: int = 6,
    max_examples: int | None = None,
    max_steps: int = 12,
) -> type[DispatcherMachine]:
    """Make a state machine (use its ``.TestCase``) that checks ``user_loop``.

    Args:
        user_loop: ``async def loop(env: LoopEnv) -> None``.
        backend: the event loop: ``"trio"`` (virtual time) or ``"asyncio"`` (real clock).
        endpoints: the fake services' names.
        max_pending, rate, burst: the limits the run must respect over all its dispatchers
            (also ``env.open_dispatcher``'s defaults); ``rate`` in requests per second.
        per_service: endpoint -> most requests in flight on it (its credit), checked
            like ``max_pending``.
        service_limit: the same as a function read at each hand-over (a credit that
            changes during the run; see :class:`~.trace.TraceRecorder`).
        flush_interval, result_timeout, max_attempts: ``env.open_dispatcher`` defaults
            (seconds of story time).
        require_maybe_flush: check that each cycle calls ``maybe_flush``.
        time_unit: real seconds per story second (default 1 on trio, 0.02 on asyncio).
        clock_slack: timing tolerance in real seconds (see :class:`~.trace.Limits`;
            default 0 on trio, 0.5 on asyncio).
        run_timeout: story seconds the loop may take in all.
        max_cycles, max_cycle_size: how many cycles, and how large, a schedule holds.
        max_examples: hypothesis examples per test (default: the active profile's).
        max_steps: most rules per example (short schedules shrink fast).

    Returns:
        A :class:`DispatcherMachine` subclass.
    """
    unit = time_unit if time_unit is not None else (1.0 if backend == "trio" else 0.02)
    slack = clock_slack if clock_slack is not None else (0.0 if backend == "trio" else 0.5)
    limits = Limits(max_pending=max_pending, rate=rate, burst=burst,
                    per_service=dict(per_service or {}), clock_slack=slack,
                    require_maybe_flush=require_maybe_flush)  # fmt: skip
    dispatcher_settings: dict[str, Any] = {
        "max_pending": max_pending, "rate": rate, "burst": burst,
        "flush_interval": flush_interval, "result_timeout": result_timeout,
        "max_attempts": max_attempts,
    }  # fmt: skip
    namespace: dict[str, Any] = {
        "user_loop": staticmethod(user_loop),
        "backend": backend,
        "endpoints": tuple(endpoints),
        "limits": limits,
        "dispatcher_settings": dispatcher_settings,
        "time_unit": unit,
        "run_timeout": run_timeout,
        "max_cycles": max_cycles,
        "max_cycle_size": max_cycle_size,
        "service_limit": staticmethod(service_limit) if service_limit is not None else None,
    }
    names = tuple(endpoints)

    @rule(size=st.integers(1, max_cycle_size))
    def cycle(self: DispatcherMachine, size: int) -> None:
        self.add_cycle(size)

    @rule(endpoint=st.sampled_from(names), kind=st.sampled_from(FAULT_KINDS),
          level=st.integers(0, 2), seed=st.integers(0, 3))  # fmt: skip
    def fault(self: DispatcherMachine, endpoint: str, kind: str, level: int, seed: int) -> None:
        self.add_fault(endpoint, kind, level, seed)

    @rule(endpoint=st.sampled_from(names), at=st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0]),
          duration=st.sampled_from([0.5, 2.0, 5.0, 30.0]))  # fmt: skip
    def outage(self: DispatcherMachine, endpoint: str, at: float, duration: float) -> None:
        self.add_outage(endpoint, at, duration)

    namespace.update(cycle=cycle, fault=fault, outage=outage)
    name = f"{getattr(user_loop, '__name__', 'loop')}_{backend}_machine"
    machine: type[DispatcherMachine] = type(name, (DispatcherMachine,), namespace)
    options: dict[str, Any] = {"stateful_step_count": max_steps}
    if max_examples is not None:
        options["max_examples"] = max_examples
    machine.TestCase.settings = settings(machine.TestCase.settings, **options)
    return machine
