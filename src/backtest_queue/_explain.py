"""How the decoder explains a body it refuses (helpers of :mod:`backtest_queue.protocol`).

* :func:`translate` turns a msgspec validation error into ``(field, "<field>: <problem>")``,
  the one error shape of the protocol;
* :func:`scan_request_id` finds the top-level ``request_id`` of a body the decoder could
  not read (nested too deeply), without recursion.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from .errors import InvalidMessage

__all__ = ["scan_request_id", "translate"]

#: msgspec's "<problem> - at `$.path`" suffix.
_AT: Final = re.compile(r"(?s)(?P<text>.*) - at `\$(?P<path>[^`]*)`")
_MISSING: Final = re.compile(r"Object missing required field `(?P<name>[^`]*)`")
_SPECIAL: Final = re.compile(rb'[][{}:,"]')
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_id_decoder: Final = msgspec.json.Decoder(str)


def translate(exc: msgspec.ValidationError) -> tuple[str, str]:
    """A decoder's validation error as ``(field, "<field>: <problem>")``."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, InvalidMessage):  # our rules: the message is already field-first
        return cause.field, str(cause)
    text = str(exc)
    path = ""
    at = _AT.fullmatch(text)
    if at is not None:
        text, path = at.group("text"), at.group("path").lstrip(".")
    path = path.replace("[...]", "")
    missing = _MISSING.fullmatch(text)
    if missing is not None:
        field = f"{path}.{missing.group('name')}" if path else missing.group("name")
        return field, f"{field}: missing required field"
    if not path:
        return "", text
    return path, f"{path}: {text[:1].lower()}{text[1:]}"


def scan_request_id(body: bytes) -> str | None:
    """Find the top-level ``"request_id"`` string of a JSON object without recursion.

    Linear in ``len(body)``; the last one wins, as in the decoder. ``None`` when there is
    none or the body is malformed before it.
    """
    depth = 0
    key: bytes | None = None
    expect_key = False
    found: bytes | None = None
    pos = 0
    while (match := _SPECIAL.search(body, pos)) is not None:
        char = match.group()
        pos = match.end()
        if char == b'"':
            string = _STRING.match(body, match.start())
            if string is None:
                break  # an unterminated string: nothing after it can be read
            pos = string.end()
            if depth == 1:
                if expect_key:
                    key, expect_key = string.group(), False
                elif key == b'"request_id"':
                    found = string.group()
            continue
        if char in b"[{":
            if depth == 0 and char != b"{":
                return None  # not an object
            depth += 1
            expect_key = depth == 1
        elif char in b"]}":
            depth -= 1
        elif char == b"," and depth == 1:
            key, expect_key = None, True
        if depth <= 0:
            break
    if found is None:
        return None
    try:
        return _id_decoder.decode(found)
    except Exception:
        return None
