"""Seeded, composable faults for the fake services of :class:`MemoryNetwork`.

``network.bind("svc", faults=Faults(latency=0.5, drop_reply=0.1, seed=7))`` makes the fake
service on ``"svc"`` answer half a second late and lose one reply in ten; every decision
comes from one ``random.Random`` per bound service, seeded from ``seed`` and the endpoint,
so a run with the same requests in the same order misbehaves in the same way. Under trio's
``MockClock(autojump_threshold=0)`` latencies and outages cost no real time; on asyncio
they are real seconds (keep them small there).

Every field is independent and they compose: a request may be delayed, its reply
duplicated and one copy dropped. Per request the decisions are drawn in a fixed order:
``drop_request``, the replacement answer, latency, then per reply body ``drop_reply``,
``duplicate_reply``, ``reorder``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..errors import UsageError

__all__ = ["Answer", "Faults", "Latency", "exponential", "uniform"]

#: A latency: fixed seconds, or a function drawing seconds from the service's generator.
Latency = float | Callable[[random.Random], float]

#: What a faulty answer replaces the service's own with.
Replacement = Literal["error", "unavailable", "garbage", "unknown_id"]


def uniform(low: float, high: float) -> Callable[[random.Random], float]:
    """A latency drawn uniformly from ``[low, high]`` seconds.

    Raises:
        UsageError: ``low`` is negative or above ``high``, or either is not finite.
    """
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
        raise UsageError(f"uniform latency needs 0 <= low <= high seconds, got {low}, {high}")

    def draw(rng: random.Random) -> float:
        return rng.uniform(low, high)

    return draw


def exponential(mean: float, *, cap: float = math.inf) -> Callable[[random.Random], float]:
    """A latency drawn from an exponential distribution with ``mean`` seconds, at most
    ``cap`` seconds (a long tail, as a loaded service has).

    Raises:
        UsageError: ``mean`` is not a positive finite number, or ``cap`` is negative.
    """
    if not (math.isfinite(mean) and mean > 0.0) or not cap >= 0.0:
        raise UsageError(f"exponential latency needs mean > 0 and cap >= 0 seconds, got {mean}")

    def draw(rng: random.Random) -> float:
        return min(cap, rng.expovariate(1.0 / mean))

    return draw


@dataclass(frozen=True, slots=True)
class Answer:
    """One reply a faulty service will send: its body, ``delay`` seconds after the request
    arrived; ``held``: reordered (sent after the next reply of this service)."""

    body: bytes
    delay: float
    held: bool = False


_PROBABILITIES = (
    "drop_request", "drop_reply", "duplicate_reply", "reorder",
    "error", "unavailable", "garbage", "unknown_id",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """How one fake service misbehaves. Probabilities are per request, in ``[0, 1]``.

    Attributes:
        latency: seconds between a request arriving and its reply leaving: fixed, or a
            distribution (:func:`uniform`, :func:`exponential`, or any
            ``Callable[[random.Random], float]``).
        drop_request: the request is lost on the way: the service never sees it.
        drop_reply: the reply is lost on the way back.
        duplicate_reply: the reply is sent twice.
        reorder: the reply is held back and sent right after the service's next reply
            (or ``reorder_window`` seconds late when no other reply follows).
        reorder_window: seconds a held-back reply waits at most.
        error: answered with ``ERROR`` ``engine_error`` (final for the request).
        unavailable: answered with ``ERROR`` ``unavailable`` (the requester retries).
        garbage: answered with bytes that are not a protocol message.
        unknown_id: answered with a result for a ``request_id`` never sent.
        disconnect_after: the connection drops after every this many requests (each
            requester sees a disconnect; requests the service held are lost).
        reconnect_after: seconds until a dropped connection comes back (``None``: it
            stays down until the test unbinds and binds the service again).
        refuse: every handshake is refused (as a CURVE key mismatch is).
        seed: seeds the service's generator (with its endpoint name).
    """

    latency: Latency = 0.0
    drop_request: float = 0.0
    drop_reply: float = 0.0
    duplicate_reply: float = 0.0
    reorder: float = 0.0
    reorder_window: float = 1.0
    error: float = 0.0
    unavailable: float = 0.0
    garbage: float = 0.0
    unknown_id: float = 0.0
    disconnect_after: int | None = None
    reconnect_after: float | None = 1.0
    refuse: bool = False
    seed: int = 0
    _replacement_total: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"Faults.{name} must be a probability, got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"Faults.{name} must be a probability in [0, 1], got {value!r}")
        total = self.error + self.unavailable + self.garbage + self.unknown_id
        if total > 1.0 + 1e-12:
            raise UsageError(
                "Faults.error + unavailable + garbage + unknown_id must be at most 1 (each "
                f"request gets at most one replacement answer), got {total}"
            )
        object.__setattr__(self, "_replacement_total", total)
        if not callable(self.latency):
            _check_seconds("latency", self.latency)
        _check_seconds("reorder_window", self.reorder_window)
        if self.reconnect_after is not None:
            _check_seconds("reconnect_after", self.reconnect_after)
        if self.disconnect_after is not None and (
            isinstance(self.disconnect_after, bool)
            or not isinstance(self.disconnect_after, int)
            or self.disconnect_after < 1
        ):
            raise UsageError(
                f"Faults.disconnect_after must be a count >= 1 or None, got "
                f"{self.disconnect_after!r}"
            )

    @property
    def healthy(self) -> bool:
        """Whether these faults change nothing (the service behaves as without them)."""
        return self == Faults(seed=self.seed, reconnect_after=self.reconnect_after,
                              reorder_window=self.reorder_window)  # fmt: skip

    def rng(self, endpoint: str) -> random.Random:
        """The generator a service bound to ``endpoint`` draws its decisions from."""
        return random.Random(f"{self.seed}:{endpoint}")

    def draw_latency(self, rng: random.Random) -> float:
        """Seconds until the reply leaves (never negative)."""
        latency = self.latency
        value = latency(rng) if callable(latency) else latency
        return max(0.0, float(value))

    def replacement(self, rng: random.Random) -> Replacement | None:
        """Draw which faulty answer, if any, replaces the service's own."""
        if self._replacement_total <= 0.0:
            return None
        x = rng.random()
        names: tuple[Replacement, ...] = ("error", "unavailable", "garbage", "unknown_id")
        for name in names:
            p: float = getattr(self, name)
            if x < p:
                return name
            x -= p
        return None

    def chance(self, rng: random.Random, p: float) -> bool:
        """Draw one yes/no with probability ``p`` (no draw at all for 0 or 1, so turning
        one fault off leaves the others' decisions as they were)."""
        if p <= 0.0:
            return False
        if p >= 1.0:
            return True
        return rng.random() < p


def _check_seconds(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise UsageError(f"Faults.{name} must be a finite number of seconds >= 0, got {value!r}")
