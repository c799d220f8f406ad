"""Checks for settings given by the caller (sans-IO, no dependencies).

Each check accepts exactly what its docstring says and raises
:class:`~backtest_queue.errors.UsageError` naming the setting, the value given and the
range accepted. ``bool`` is refused where a number is expected (``True`` is an ``int`` in
Python, never a sensible ``max_pending``), and so are strings, ``None`` (unless allowed),
NaN and infinities (unless allowed).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Final

from .errors import UsageError

__all__ = [
    "INT32_MAX",
    "MAX_HEARTBEAT_IVL",
    "MAX_RECONNECT_IVL",
    "check_choice",
    "check_count",
    "check_number",
]

_NO_LIMIT: Final = "None for no limit"

#: Largest value of a ZeroMQ ``int`` socket option (send_hwm, milliseconds options).
INT32_MAX: Final = 2**31 - 1
#: Largest heartbeat interval, seconds: ZMQ_HEARTBEAT_TTL (3 intervals) is at most
#: 6553.599 s (deciseconds in 16 bits).
MAX_HEARTBEAT_IVL: Final = 2000.0
#: Largest reconnect interval, seconds: ZMQ_RECONNECT_IVL is an int of milliseconds.
MAX_RECONNECT_IVL: Final = INT32_MAX / 1000


def check_count(
    name: str,
    value: object,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    allow_none: bool = False,
    allow_inf: bool = False,
) -> None:
    """Check that ``value`` is a whole number in range (or ``None``/``inf`` if allowed).

    Args:
        name: the setting's name, for the message.
        value: what the caller gave.
        minimum: the smallest accepted value.
        maximum: the largest accepted value (``None``: no bound).
        allow_none: whether ``None`` (no limit) is accepted.
        allow_inf: whether ``math.inf`` (no limit) is accepted.

    Raises:
        UsageError: ``value`` is not an ``int`` (a ``bool``, a ``float`` such as ``8.0``
            and a ``str`` such as ``"8"`` are refused), or is out of range.
    """
    if value is None and allow_none:
        return
    if allow_inf and isinstance(value, float) and value == math.inf:
        return
    if not isinstance(value, bool) and isinstance(value, Integral):
        n = int(value)
        if n >= minimum and (maximum is None or n <= maximum):
            return
    accepted = f"an int >= {minimum}" + ("" if maximum is None else f" and <= {maximum}")
    if allow_inf:
        accepted += ", or math.inf for no limit"
    if allow_none:
        accepted += f", or {_NO_LIMIT}"
    raise UsageError(f"{name} must be {accepted}; got {value!r}")


def check_number(
    name: str,
    value: object,
    *,
    unit: str,
    minimum: float,
    exclusive: bool = False,
    maximum: float = math.inf,
    allow_inf: bool = False,
    allow_none: bool = False,
) -> None:
    """Check that ``value`` is a real number in range (or ``None`` if allowed).

    Args:
        name: the setting's name, for the message.
        value: what the caller gave.
        unit: the unit, for the message (``"seconds"``, ``"requests per second"``).
        minimum: the lower bound.
        exclusive: the bound itself is refused (``> minimum`` rather than ``>=``).
        maximum: the upper bound, inclusive (``inf``: none).
        allow_inf: whether ``+inf`` is accepted (no limit); NaN never is.
        allow_none: whether ``None`` (no limit) is accepted.

    Raises:
        UsageError: ``value`` is not an ``int`` or ``float`` (``bool`` and ``str`` are
            refused), is NaN, is infinite where that is not allowed, or is out of range.
    """
    if value is None and allow_none:
        return
    if not isinstance(value, bool) and isinstance(value, Real):
        try:
            x = float(value)
        except OverflowError:  # an int too large for a float: out of any range here
            x = math.nan
        in_range = (x > minimum if exclusive else x >= minimum) and x <= maximum
        if in_range and not math.isnan(x) and (allow_inf or math.isfinite(x)):
            return
    bound = f"{'>' if exclusive else '>='} {minimum:g}"
    if maximum != math.inf:
        bound += f" and <= {maximum:g}"
    accepted = f"a {'' if allow_inf else 'finite '}number of {unit} {bound}"
    if allow_none:
        accepted += f", or {_NO_LIMIT}"
    raise UsageError(f"{name} must be {accepted}; got {value!r}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Check that ``value`` is one of the strings ``choices``.

    Raises:
        UsageError: it is not (the message lists the choices).
    """
    if isinstance(value, str) and value in choices:
        return
    listed = ", ".join(repr(c) for c in choices)
    raise UsageError(f"{name} must be one of {listed}; got {value!r}")
