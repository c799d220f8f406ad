"""The value rules of wire protocol v1, shared by requesters and services.

One set of checks, run by every message struct of :mod:`backtest_queue.protocol` in its
``__post_init__`` - so on construction in Python *and* on decoding from the wire - and
so by both ends: a requester cannot build a request the service would refuse for these
reasons, and a service refuses the same values from the wire with the same message.

Every failure names the field's dotted path first, then the rule and the value:
``"strategy.sl: must be a finite fraction in (0, 1), got nan"``. The structs raise
:class:`~backtest_queue.errors.InvalidRequest` (requests and strategies) or
:class:`~backtest_queue.errors.InvalidMessage` (replies); the decoder turns either into a
:class:`~backtest_queue.errors.ProtocolError` ``invalid_request`` with the same text.

The rules (normative in ``docs/protocol.md``):

* **numbers** are ``int`` or ``float``, never ``bool``; floats are finite (no NaN, no
  infinity: JSON cannot carry them and they would travel as ``null``); integers fit in
  :data:`MAX_SAFE_INTEGER` (exact as a double, so every JSON reader agrees);
* **text** is ``str`` of bounded length, encodable as UTF-8 (no lone surrogates) and
  free of control characters (C0, DEL, C1: they would forge log lines);
* **ranges** are those the engine accepts that do not depend on the strategy kind:
  ``cash > 0``; ``commission`` in [0, :data:`MAX_COMMISSION`) (backtesting.py refuses
  10 % and more); ``sl`` / ``tp`` in (0, 1). Kind-specific rules (periods, RSI levels,
  the smallest bracket) belong to the service (:mod:`backtest_queue.service.strategies`)
  and use the same message shape.

Pure Python, no I/O: the sans-IO core may import it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Final

from .errors import InvalidMessage, InvalidRequest

__all__ = [
    "GOOD_DATA_IDS",
    "GOOD_NAMES",
    "GOOD_TIMES",
    "KNOWN_GOOD_LIMIT",
    "MAX_COMMISSION",
    "MAX_NAME_LENGTH",
    "MAX_REQUEST_ID_LENGTH",
    "MAX_SAFE_INTEGER",
    "check_data_id",
    "check_finite",
    "check_fraction",
    "check_int",
    "check_number",
    "check_params",
    "check_text",
    "problem",
    "remember",
]

MAX_REQUEST_ID_LENGTH: Final = 64
MAX_NAME_LENGTH: Final = 128
#: The largest integer magnitude a protocol number may have: 2**53, the last one a
#: double (a JSON number in most readers) holds exactly.
MAX_SAFE_INTEGER: Final = 2**53
#: Commission is a fraction of the trade value in [0, MAX_COMMISSION): backtesting.py
#: asserts ``-0.1 <= commission < 0.1``; rebates (negative) are not part of protocol v1.
MAX_COMMISSION: Final = 0.1

_DATA_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cs"})  # control characters, lone surrogates

Error = type[InvalidMessage]


def problem(field: str, rule: str, value: object, error: Error = InvalidRequest) -> InvalidMessage:
    """Build the error for ``field`` breaking ``rule``: ``"<field>: <rule>, got <value>"``.

    The value is shown with ``repr`` cut to 60 characters, so it is one line of ASCII-safe
    text whatever the peer sent.
    """
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return error(field, f"{field}: {rule}, got {shown}")


def _bad_character(text: str) -> str | None:
    """The first control character or lone surrogate in ``text``, else ``None``."""
    if text.isprintable():  # the fast path: C speed, true for almost every real name
        return None
    for char in text:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return char
    return None


def check_text(
    value: object,
    field: str,
    *,
    max_length: int | None,
    min_length: int = 1,
    error: Error = InvalidRequest,
) -> None:
    """Check a protocol string.

    Args:
        value: the value to check.
        field: its dotted path, for the message.
        max_length: most characters allowed (``None``: no cap but the message size).
        min_length: fewest characters allowed.
        error: the exception class to raise.

    Raises:
        InvalidMessage: (``error``) not a ``str``, too short or too long, or holding a
            control character or a lone surrogate (not encodable as UTF-8).
    """
    if (
        type(value) is str
        and min_length <= len(value) <= (max_length if max_length is not None else len(value))
        and value.isprintable()
    ):
        return  # the fast path: every real id and name
    if type(value) is not str:
        raise problem(field, "must be a string", value, error)
    if not (min_length <= len(value) and (max_length is None or len(value) <= max_length)):
        upper = "" if max_length is None else f"-{max_length}"
        plural = "s" if (max_length or min_length) != 1 else ""
        raise problem(field, f"must have {min_length}{upper} character{plural}", value, error)
    bad = _bad_character(value)
    if bad is not None:
        if "\ud800" <= bad <= "\udfff":
            detail = "has a lone surrogate, which UTF-8 cannot encode"
        else:
            detail = f"has the control character {bad!r}"
        raise problem(field, f"must be UTF-8 text without control characters ({detail})",
                      value, error)  # fmt: skip


def check_data_id(value: object, field: str = "data_id", error: Error = InvalidRequest) -> None:
    """Check a dataset id: 1-128 characters of ``[A-Za-z0-9._-]``, starting alphanumeric.

    Raises:
        InvalidMessage: (``error``) it is not such a string.
    """
    check_text(value, field, max_length=MAX_NAME_LENGTH, error=error)
    assert isinstance(value, str)
    if _DATA_ID.fullmatch(value) is None:
        raise problem(field, "must match [A-Za-z0-9][A-Za-z0-9._-]* (a dataset id)", value, error)


def check_number(value: object, field: str, error: Error = InvalidRequest) -> float | int:
    """Check a protocol number: an ``int`` within :data:`MAX_SAFE_INTEGER` or a finite
    ``float``; never a ``bool``.

    Returns:
        The value, unchanged.

    Raises:
        InvalidMessage: (``error``) not a number, a ``bool``, NaN, an infinity, or an
            integer too large to be exact as a double.
    """
    kind = type(value)
    if kind is float:
        if math.isfinite(value):  # type: ignore[arg-type]
            return value  # type: ignore[return-value]
        raise problem(field, "must be a finite number", value, error)
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:  # type: ignore[operator]
            return value  # type: ignore[return-value]
        raise problem(field, "must be an integer within +-2**53", value, error)
    raise problem(field, "must be a number (int or float, not bool)", value, error)


def check_finite(
    value: object,
    field: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "number",
    error: Error = InvalidRequest,
) -> float | int:
    """Check a number (see :func:`check_number`) against an optional range.

    Args:
        value: the value.
        field: its dotted path.
        low / high: the bounds (``None``: unbounded on that side).
        low_open / high_open: whether the bound itself is excluded.
        what: what the number is, for the message ("fraction", "amount of cash").
        error: the exception class to raise.

    Returns:
        The value, unchanged.

    Raises:
        InvalidMessage: (``error``) not a finite number, or out of the range.
    """
    number = check_number(value, field, error) if type(value) is not float else value
    ok = True
    if low is not None:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number < high if high_open else number <= high
    if not ok or not math.isfinite(number):
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise problem(field, f"must be a finite {what} in {left}{lo}, {hi}{right}", value, error)
    return number


def check_fraction(value: object, field: str, error: Error = InvalidRequest) -> float | int:
    """Check a stop loss / take profit fraction: finite, in (0, 1).

    Raises:
        InvalidMessage: (``error``) not a finite number in (0, 1).
    """
    return check_finite(
        value, field, low=0.0, high=1.0, low_open=True, high_open=True, what="fraction",
        error=error,
    )  # fmt: skip


def check_int(value: object, field: str, *, low: int = 0, error: Error = InvalidMessage) -> int:
    """Check a count: an ``int`` (not ``bool``), at least ``low``, within 2**53.

    Raises:
        InvalidMessage: (``error``) not such an integer.
    """
    if type(value) is not int or not low <= value <= MAX_SAFE_INTEGER:
        raise problem(field, f"must be an integer >= {low}", value, error)
    return value


#: Strings that passed a text rule, by rule. Kinds, parameter names, dataset ids and time
#: bounds repeat from request to request, so the structs look here before checking
#: (a set lookup instead of a scan). Each set is cleared when it reaches
#: :data:`KNOWN_GOOD_LIMIT` entries, so a peer cannot grow them without bound.
KNOWN_GOOD_LIMIT: Final = 4096
GOOD_NAMES: Final[set[str]] = set()  # 1-128 characters: kinds, parameter names
GOOD_DATA_IDS: Final[set[str]] = set()
GOOD_TIMES: Final[set[str]] = set()  # 4-40 characters: start, end


def remember(good: set[str], value: str) -> None:
    """Add ``value`` (which just passed the rule of ``good``) to ``good``, bounded."""
    if len(good) >= KNOWN_GOOD_LIMIT:
        good.clear()
    good.add(value)


def check_params(value: object, field: str = "strategy.params") -> None:
    """Check a strategy's parameters: a dict of parameter name -> number.

    Raises:
        InvalidRequest: not a dict, a bad name (see :func:`check_text`) or a bad number
            (see :func:`check_number`).
    """
    if type(value) is not dict:
        raise problem(field, "must be a dict of parameter name -> number", value)
    for name, number in value.items():
        if not (type(name) is str and name in GOOD_NAMES):
            check_text(name, f"{field} name", max_length=MAX_NAME_LENGTH)
            remember(GOOD_NAMES, name)
        kind = type(number)
        if kind is float:
            if math.isfinite(number):
                continue
        elif kind is int and -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
            continue
        check_number(number, f"{field}.{name}")
