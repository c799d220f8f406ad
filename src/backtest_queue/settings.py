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

__all__ = ["check_choice", "check_count", "check_number"]

_NO_LIMIT: Final = "None for no limit"


def check_count(name: str, value: object, *, minimum: int = 1, allow_none: bool = False) -> None:
    """Check that ``value`` is a whole number ``>= minimum`` (or ``None`` if allowed).

    Args:
        name: the setting's name, for the message.
        value: what the caller gave.
        minimum: the smallest accepted value.
        allow_none: whether ``None`` (no limit) is accepted.

    Raises:
        UsageError: ``value`` is not an ``int`` (a ``bool``, a ``float`` such as ``8.0``
            and a ``str`` such as ``"8"`` are refused), or is below ``minimum``.
    """
    if value is None and allow_none:
        return
    if not isinstance(value, bool) and isinstance(value, Integral) and int(value) >= minimum:
        return
    accepted = f"an int >= {minimum}" + (f", or {_NO_LIMIT}" if allow_none else "")
    raise UsageError(f"{name} must be {accepted}; got {value!r}")


def check_number(
    name: str,
    value: object,
    *,
    unit: str,
    minimum: float,
    exclusive: bool = False,
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
        in_range = x > minimum if exclusive else x >= minimum
        if in_range and not math.isnan(x) and (allow_inf or math.isfinite(x)):
            return
    bound = f"{'>' if exclusive else '>='} {minimum:g}"
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
