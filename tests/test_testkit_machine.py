"""The test kit's state machine on itself: user loops with planted bugs are each caught by
the invariant they break, a correct loop passes, on trio (virtual time) and asyncio.

The bug hunts skip shrinking (finding the bug is the point; ``test_a_failure_shrinks``
checks shrinking once). Each machine runs its own event loop, so these tests are sync.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import Phase, settings
from hypothesis.errors import FlakyFailure

from backtest_queue.testing import LoopEnv, dispatcher_machine
from backtest_queue.testing.machine import DispatcherMachine

BACKENDS = ["trio", "asyncio"]


@pytest.fixture(autouse=True)
def quiet_dispatcher_log() -> Iterator[None]:
    """Hundreds of faulty runs log thousands of warnings; they are not what is tested."""
    logger = logging.getLogger("backtest_queue")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


async def correct_loop(env: LoopEnv) -> None:
    async with env.open_dispatcher() as d:
        while batch := env.ask():
            for request in batch:
                await d.submit(request)
            d.maybe_flush()
            for request in batch:
                env.tell(await d.wait(request.request_id))


async def loses_failures(env: LoopEnv) -> None:
    """Tells the optimizer only about results: a failed outcome is lost."""
    async with env.open_dispatcher() as d:
        while batch := env.ask():
            for request in batch:
                await d.submit(request)
            d.maybe_flush()
            for request in batch:
                outcome = await d.wait(request.request_id)
                if outcome.ok:
                    env.tell(outcome)


async def forgets_the_last_wait(env: LoopEnv) -> None:
    """Pipelined (waits for the previous cycle after submitting the next) and forgets to
    wait for the last cycle before closing the dispatcher."""
    async with env.open_dispatcher() as d:
        previous: list[str] = []
        while batch := env.ask():
            for request in batch:
                await d.submit(request)
            d.maybe_flush()
            for rid in previous:
                env.tell(await d.wait(rid))
            previous = [r.request_id for r in batch]


async def exceeds_the_limit(env: LoopEnv) -> None:
    """Opens its dispatcher without the limits the services need, "for speed"."""
    async with env.open_dispatcher(rate=None, max_pending=None) as d:
        while batch := env.ask():
            for request in batch:
                await d.submit(request)
            d.maybe_flush()
            for request in batch:
                env.tell(await d.wait(request.request_id))


async def never_flushes(env: LoopEnv) -> None:
    """Leaves every flush to the dispatcher: never calls maybe_flush."""
    async with env.open_dispatcher() as d:
        while batch := env.ask():
            for request in batch:
                await d.submit(request)
            for request in batch:
                env.tell(await d.wait(request.request_id))


def hunt(machine: type[DispatcherMachine], backend: str, *, shrink: bool = False) -> None:
    examples = 150 if backend == "trio" else 100  # the real clock: more tries
    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    case = machine.TestCase
    case.settings = settings(case.settings, max_examples=examples, database=None, phases=phases,
                             derandomize=True, print_blob=False)  # fmt: skip
    case().runTest()


def broken(exc: BaseException) -> str:
    """The violations an exception reports, with those of a group's members (on the real
    clock a failure may not repeat when hypothesis replays it: a ``FlakyFailure``)."""
    text = str(exc)
    if isinstance(exc, BaseExceptionGroup):
        text += "\n".join(broken(e) for e in exc.exceptions)
    return text


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_correct_loop_passes(backend: str) -> None:
    hunt(dispatcher_machine(correct_loop, backend=backend), backend)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("loop", "invariant"),
    [
        (loses_failures, "one-outcome"),
        # closed with the last cycle pending, or (replies that came at once) unread
        (forgets_the_last_wait, "no-pending-leak|one-outcome"),
        (exceeds_the_limit, "rate|in-flight"),
        (never_flushes, "maybe-flush"),
    ],
    ids=["lost-outcome", "forgotten-wait", "exceeds-limit", "no-maybe-flush"],
)
def test_a_planted_bug_is_caught(loop: object, invariant: str, backend: str) -> None:
    # On the real clock a cycle must outrun the rate limit even on a loaded machine.
    size = 16 if backend == "asyncio" and loop is exceeds_the_limit else 6
    machine = dispatcher_machine(loop, backend=backend, max_cycle_size=size)  # type: ignore[arg-type]
    with pytest.raises((AssertionError, FlakyFailure)) as caught:
        hunt(machine, backend)
    assert re.search(rf"\[({invariant})\]", broken(caught.value)), broken(caught.value)


def test_exceeding_max_pending_alone_is_caught() -> None:
    """With no rate limit, the in-flight check catches a loop that lifts max_pending."""
    machine = dispatcher_machine(exceeds_the_limit, rate=None, max_pending=2)
    with pytest.raises(AssertionError, match=r"\[in-flight\]"):
        hunt(machine, "trio")


def test_a_per_service_limit_is_checked() -> None:
    """A service's own limit (its credit) is checked like max_pending: here the loop's
    dispatcher allows 4 in flight and may put them all on one service that takes 1."""
    machine = dispatcher_machine(correct_loop, rate=None, max_pending=4,
                                 per_service={"svc-a": 1})  # fmt: skip
    with pytest.raises(AssertionError, match=r"\[in-flight\].*svc-a"):
        hunt(machine, "trio")


def test_a_failure_shrinks_to_a_short_schedule() -> None:
    """The lost-outcome bug shrinks to a handful of steps: one cycle and the faults
    that make one request fail."""
    machine = dispatcher_machine(loses_failures)
    with pytest.raises(AssertionError, match=r"\[one-outcome\]") as caught:
        hunt(machine, "trio", shrink=True)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    steps = [line for line in notes.splitlines() if line.startswith("state.")]
    assert "state.cycle(size=1)" in steps, notes
    assert len(steps) <= 5, notes  # cycle, up to two faults, teardown


def test_a_loop_that_never_finishes_fails_in_virtual_time() -> None:
    async def waits_forever(env: LoopEnv) -> None:
        async with env.open_dispatcher() as d:
            batch = env.ask()
            for request in batch:
                await d.submit(request)
            d.maybe_flush()
            for _ in range(len(batch) + 1):  # one more outcome than there will be
                env.tell(await d.outcomes.receive())

    machine = dispatcher_machine(waits_forever, run_timeout=600)
    with pytest.raises(AssertionError, match=r"\[finishes\]"):
        hunt(machine, "trio")


def test_a_service_limit_read_at_each_handover_is_checked() -> None:
    """How a credit a service advertises plugs in: a function read at each hand-over."""
    machine = dispatcher_machine(correct_loop, rate=None, max_pending=4,
                                 service_limit=lambda ep: 1 if ep == "svc-b" else None)  # fmt: skip
    with pytest.raises(AssertionError, match=r"\[in-flight\].*svc-b"):
        hunt(machine, "trio")
