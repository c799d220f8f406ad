"""argparse types that check a number's range (or an endpoint's form) at parse time.

A bad value is refused by argparse itself (exit status 2, the usage line and
``argument --seed: must be an integer from 0 to 4294967295, got '-1'``), before
anything starts, instead of failing deep inside a run. Every numeric option of the
command line uses one of these.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

__all__ = ["endpoint", "integer", "number"]

_HOST_PORT = re.compile(r"[\w.\-]+:(\d+|\*)|\[[0-9A-Fa-f:.]+\]:(\d+|\*)")


def endpoint(text: str) -> str:
    """An argparse ``type``: a ZeroMQ endpoint ``TRANSPORT://ADDRESS`` (``tcp://HOST:PORT``).

    Only the form is checked (libzmq checks the rest when it binds or connects), so
    ``localhost:5580`` is refused at once with the fix (``tcp://localhost:5580``) instead
    of failing after the run has started.

    Returns:
        ``text`` unchanged.

    Raises:
        argparse.ArgumentTypeError: ``text`` has no ``TRANSPORT://`` or nothing after it.
    """
    transport, separator, address = text.partition("://")
    if separator and transport and address:
        return text
    hint = f" (did you mean tcp://{text}?)" if _HOST_PORT.fullmatch(text) else ""
    raise argparse.ArgumentTypeError(
        f"must be a ZeroMQ endpoint such as tcp://HOST:PORT, got {text!r}{hint}"
    )


def integer(
    minimum: int | None = None, maximum: int | None = None, *, also: tuple[int, ...] = ()
) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in ``[minimum, maximum]`` (or one of ``also``).

    Args:
        minimum: the smallest value accepted, ``None``: no lower bound.
        maximum: the largest value accepted, ``None``: no upper bound.
        also: values accepted outside the range (e.g. 0 for "off").

    Returns:
        A function turning the option's text into the value, raising
        ``argparse.ArgumentTypeError`` with the accepted range when it is not one.
    """
    expected = _range_text("an integer", minimum, maximum, also)

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        if value in also:
            return value
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def number(
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    exclusive: bool = False,
    unit: str = "",
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``[minimum, maximum]``.

    Args:
        minimum: the smallest value accepted, ``None``: no lower bound.
        maximum: the largest value accepted, ``None``: no upper bound.
        exclusive: the bounds themselves are refused (``(minimum, maximum)``).
        unit: named in the message, e.g. ``"seconds"``.

    Returns:
        A function turning the option's text into the value; NaN and infinities are
        refused (``argparse.ArgumentTypeError``) like any value out of range.
    """
    low = "above" if exclusive else "at least"
    high = "below" if exclusive else "at most"
    parts = [f"{low} {minimum:g}"] if minimum is not None else []
    parts += [f"{high} {maximum:g}"] if maximum is not None else []
    expected = "a finite number" + (" " + " and ".join(parts) if parts else "")
    expected += f" ({unit})" if unit else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        bad = not math.isfinite(value)
        if minimum is not None:
            bad |= value <= minimum if exclusive else value < minimum
        if maximum is not None:
            bad |= value >= maximum if exclusive else value > maximum
        if bad:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def _range_text(kind: str, minimum: int | None, maximum: int | None, also: tuple[int, ...]) -> str:
    if minimum is not None and maximum is not None:
        text = f"{kind} from {minimum} to {maximum}"
    elif minimum is not None:
        text = f"{kind} >= {minimum}"
    elif maximum is not None:
        text = f"{kind} <= {maximum}"
    else:
        text = kind
    return text + "".join(f" or {value}" for value in also)
